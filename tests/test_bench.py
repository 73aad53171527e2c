"""The benchmark code paths at tiny sizes, so they cannot rot. Nothing here asserts on time.

The benchmarks are imported as the checkout's package `bench` (what exists without an
install); `fastdqn.bench` is the same code as an installed package sees it.
"""

import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import apex, collect, env, train

ROOT = Path(__file__).resolve().parents[1]


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
    assert result["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    (only_round,) = result["per_round"]  # --quick: one round, so the medians are that round
    for key, base in (("speedup", "baseline"), ("speedup_vs_cleanrl", "cleanrl")):
        assert result[key] == only_round["fastdqn_steps_per_s"] / only_round[f"{base}_steps_per_s"]
        assert result[f"{key}_range"] == [only_round[key]] * 2
    out = capsys.readouterr().out
    assert "plain baseline" in out and "cleanrl baseline" in out and "flags:" in out


@pytest.mark.skipif(importlib.util.find_spec("fastdqn.bench") is None,
                    reason="`fastdqn bench` needs the package installed (pip install -e .)")
def test_fastdqn_bench_command_dispatches_and_writes_json(tmp_path):
    out = tmp_path / "env.json"
    proc = subprocess.run([sys.executable, "-m", "fastdqn.cli", "bench", "env", "--quick", "--no-progress",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "EnvPool Breakout-v5" in proc.stdout
    assert json.loads(out.read_text())["benchmark"] == "env"


def test_train_bench_device_options(capsys):
    with pytest.raises(SystemExit):
        train.main(["--device", "cpu", "--replay-device", "cuda"])
    assert "--replay-device cuda needs --device cuda" in capsys.readouterr().err
    if not torch.cuda.is_available():
        for argv in (["--device", "cuda"], ["--replay-device", "cuda"]):
            with pytest.raises(SystemExit):
                train.main(argv)
            assert "torch sees no" in capsys.readouterr().err  # (no CUDA GPU / none)


def test_train_bench_sizes_follow_the_device():
    cpu = train.defaults_for(torch.device("cpu"))
    assert (cpu["num_envs"], cpu["num_threads"], cpu["torch_threads"]) == (16, 2, 2)  # the README's 2-core CPU
    gpu = train.defaults_for(torch.device("cuda"), cores=16)
    assert (gpu["num_envs"], gpu["num_threads"], gpu["torch_threads"]) == (64, 15, 1)  # EnvPool: all cores but one
    assert train.defaults_for(torch.device("cuda"), cores=64)["num_envs"] == 4 * 63
    assert gpu["measure_steps"] > cpu["measure_steps"]


def bare_python(*args, cwd):
    """This Python with site-packages on PYTHONPATH but no site processing: an installed
    fastdqn (an editable install's path hook) is invisible, as on a machine without one."""
    paths = site.getsitepackages() + [site.getusersitepackages()]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=environ)


def test_bench_scripts_run_from_a_bare_checkout(tmp_path):
    assert bare_python("-c", "import fastdqn", cwd=tmp_path).returncode != 0  # nothing installed, as promised
    for args, cwd in (([str(ROOT / "bench" / "train.py"), "--help"], tmp_path),  # from anywhere
                      (["-m", "bench.train", "--help"], ROOT)):
        proc = bare_python(*args, cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "--replay-device" in proc.stdout
    proc = bare_python("bench/gpu_check.py", cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip() == "no CUDA GPU: nothing verified"


# --------------------------------------------------------------------------- apex: distributed vs single-process

@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="fastdqn bench apex needs the ray extra")
def test_apex_bench_times_actors_against_single_process_within_the_band(tmp_path, capsys):
    out = tmp_path / "apex.json"
    result = apex.main(["--game", "CartPole-v1", "--quick", "--no-progress", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == result["rows"]
    single, actors = result["rows"]
    assert (single["side"], single["actors"], actors["side"], actors["actors"]) == ("single", 0, "actors_1", 1)
    ratio, batch, tolerance = result["replay_ratio"], result["batch_size"], result["ratio_tolerance"]
    for row in (single, actors):
        assert row["steps_per_s"] > 0
        # updates/s is timed over the same windows as steps/s: the replay ratio links them
        assert row["updates_per_s"] == pytest.approx(row["steps_per_s"] * ratio / batch, rel=0.25)
        assert abs(row["replay_ratio_measured"] / ratio - 1) <= tolerance and row["ratio_in_band"]
    (only_round,) = result["per_round"]  # --quick: one round, so the medians are that round
    assert actors["x_single"] == only_round["actors_1"] / only_round["single"] == actors["steps_per_s"] / single["steps_per_s"]
    assert actors["actor_acting_steps_per_s"] > 0 and 0 < actors["actors_busy"] <= 1.5
    assert actors["weights_lag"] >= 0 and 0 <= actors["learner_wait_fraction"] <= 1 and actors["restarts"] == 0
    (run,) = result["runs"]["actors_1"]
    assert run["timed_steps"] >= result["measure_steps"] // 2 and run["weights_version"] > 1  # weights published
    transport = result["transport"]
    assert transport["frame_bytes_per_record"] == 16  # CartPole: 4 float32
    assert transport["records_per_chunk"] >= result["chunk_steps"] and transport["bytes_per_record"] > 16
    assert transport["us_per_record"] > 0
    printed = capsys.readouterr().out
    assert "x single" in printed and "--actors 1 (1 x 4 envs)" in printed and "bytes/record" in printed


def test_apex_bench_without_ray_says_so_in_one_line_and_bench_goes_on():
    code = ("import sys; sys.modules['ray'] = None; from fastdqn import cli; "
            "sys.exit(cli.main(['bench', 'apex', '--quick']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]  # (so that `fastdqn bench all` goes on)
    assert proc.stderr.strip() == "apex: skipped: fastdqn bench apex needs ray: pip install 'fastdqn[ray]'"


def test_apex_bench_runs_from_a_bare_checkout(tmp_path):
    proc = bare_python(str(ROOT / "bench" / "apex.py"), "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--actor-cpus" in proc.stdout
