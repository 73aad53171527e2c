"""The benchmark code paths at tiny sizes, so they cannot rot. Nothing here asserts on time."""

import json
import subprocess
import sys

from fastdqn.bench import collect, env, train


def test_env_bench_sweeps_sync_and_async(tmp_path):
    out = tmp_path / "env.json"
    result = env.main(["--quick", "--no-progress", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    modes = {row["mode"] for row in result["rows"]}
    assert modes == {"sync", "async"}
    for row in result["rows"]:
        assert row["steps_per_s"] > 0 and row["frames_per_s"] == 4 * row["steps_per_s"]
    assert result["rows"][0]["num_envs"] == 1 and result["rows"][0]["vs_one_env"] == 1.0


def test_collect_bench_reports_pipeline_raw_and_baseline(capsys):
    result = collect.main(["--quick"])
    for key in ("raw_env_steps_per_s", "pipeline_steps_per_s", "baseline_steps_per_s"):
        assert result[key] > 0
    assert result["pipeline_vs_raw_env"] == result["pipeline_steps_per_s"] / result["raw_env_steps_per_s"]
    assert "raw EnvPool" in capsys.readouterr().out


def test_train_bench_runs_all_loops_at_the_same_replay_ratio(capsys):
    result = train.main(["--quick", "--replay-ratio", "8"])
    for side in ("fastdqn", "baseline", "cleanrl"):
        assert result[f"{side}_steps_per_s"] > 0
    assert result["baseline_replay_ratio"] == result["replay_ratio"] == 8
    assert result["precision"] == "auto" and result["precision_used"] in ("fp32", "bf16")
    (only_round,) = result["per_round"]  # --quick: one round, so the medians are that round
    for key, base in (("speedup", "baseline"), ("speedup_vs_cleanrl", "cleanrl")):
        assert result[key] == only_round["fastdqn_steps_per_s"] / only_round[f"{base}_steps_per_s"]
        assert result[f"{key}_range"] == [only_round[key]] * 2
    out = capsys.readouterr().out
    assert "plain baseline" in out and "cleanrl baseline" in out and "flags:" in out


def test_fastdqn_bench_command_dispatches_and_writes_json(tmp_path):
    out = tmp_path / "env.json"
    proc = subprocess.run([sys.executable, "-m", "fastdqn.cli", "bench", "env", "--quick", "--no-progress",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "EnvPool Breakout-v5" in proc.stdout
    assert json.loads(out.read_text())["benchmark"] == "env"
