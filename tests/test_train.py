"""End-to-end training behaviour: learning, resume after a hard kill, failures that lose nothing."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastdqn import checkpoint
from fastdqn.config import make_config
from fastdqn.train import TrainingDiverged, train


def fastdqn_cmd(*args):
    return [sys.executable, "-m", "fastdqn.cli", *args]


@pytest.mark.slow
def test_cartpole_preset_solves_within_its_budget(tmp_path):
    cfg = make_config("cartpole", run_dir=str(tmp_path / "run"))
    summary = train(cfg, progress=False)
    assert summary["best_eval_mean_return"] >= 475, summary["evals"]
    assert summary["agent_steps"] <= cfg.total_steps + cfg.env.num_envs
    for key in ("env_id", "agent_steps", "frames", "wall_seconds", "train_sps", "eval_mean_return",
                "eval_episodes", "best_eval_mean_return"):
        assert key in summary
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["best_eval_mean_return"] == summary["best_eval_mean_return"]


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_the_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--preset", "cartpole", "--run-dir", str(run_dir), "--no-progress", "--checkpoint-interval", "3000",
              "--eval-interval", "0"]
    proc = subprocess.Popen(fastdqn_cmd("train", *common), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run_dir / "checkpoint.pt"
    deadline = time.time() + 240
    steps_at_kill = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            steps_at_kill = checkpoint.load(ckpt)["counters"]["agent_steps"]
            if steps_at_kill >= 9000:
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    proc.stderr.close()
    saved = checkpoint.load(ckpt)
    assert saved["counters"]["agent_steps"] >= 9000
    out = subprocess.run(fastdqn_cmd("train", "--resume", *common), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed {ckpt} at step {saved['counters']['agent_steps']:,}" in out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    final = checkpoint.load(ckpt)
    assert final["counters"]["agent_steps"] >= summary["config"]["total_steps"]
    assert final["counters"]["updates"] > saved["counters"]["updates"]
    # learning unharmed: the resumed run still solves CartPole
    assert summary["best_eval_mean_return"] >= 475, summary


def test_corrupt_checkpoint_is_refused_and_the_previous_one_named(tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config("cartpole", run_dir=str(run_dir), total_steps=600, learning_starts=200,
                      checkpoint_interval=200, eval_interval=0, eval_episodes=1)
    train(cfg, progress=False)
    ckpt = run_dir / "checkpoint.pt"
    good_prev = ckpt.with_name("checkpoint.pt.prev").read_bytes()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    out = subprocess.run(fastdqn_cmd("train", "--resume", "--run-dir", str(run_dir), "--no-progress"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cannot read checkpoint" in out.stderr and "previous checkpoint is kept" in out.stderr
    assert ckpt.with_name("checkpoint.pt.prev").read_bytes() == good_prev  # nothing lost


def test_nan_loss_stops_the_run_with_a_clear_message(tmp_path, monkeypatch):
    from fastdqn.learner import Learner

    real_update = Learner.update

    def poisoned(self, batch):
        out = real_update(self, batch)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(Learner, "update", poisoned)
    cfg = make_config("cartpole", run_dir=str(tmp_path / "run"), total_steps=3000, learning_starts=300,
                      log_interval=500, checkpoint_interval=200, eval_interval=0)
    with pytest.raises(TrainingDiverged, match="nan.*last good checkpoint"):
        train(cfg, progress=False)


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = make_config("cartpole", run_dir=str(tmp_path / "run"), total_steps=300, learning_starts=100,
                      eval_interval=0, eval_episodes=1)
    train(cfg, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, progress=False)


def test_atari_run_end_to_end_with_eval_gif_and_plot(tmp_path):
    """A tiny Breakout run through the CLI: train, eval with a GIF, plot, TensorBoard scalars."""
    run_dir = tmp_path / "breakout"
    out = subprocess.run(fastdqn_cmd(
        "train", "--env-id", "Breakout-v5", "--num-envs", "4", "--run-dir", str(run_dir), "--no-progress",
        "--total-steps", "1200", "--buffer-size", "4000", "--learning-starts", "400", "--replay-ratio", "1",
        "--eval-interval", "600", "--eval-episodes", "2", "--eval-max-steps", "150", "--log-interval", "200",
        "--max-episode-steps", "100"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["agent_steps"] >= 1200 and summary["frames"] == 4 * summary["agent_steps"]
    assert len(summary["evals"]) == 2 and summary["updates"] > 0
    assert (run_dir / "eval.gif").stat().st_size > 0

    gif = tmp_path / "episode.gif"
    out = subprocess.run(fastdqn_cmd("eval", str(run_dir / "checkpoint.pt"), "--episodes", "2", "--max-steps", "120",
                                     "--gif", str(gif)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    import imageio.v2 as imageio

    frames = imageio.mimread(gif)
    assert len(frames) > 10 and frames[0].shape[:2] == (168, 168)

    out = subprocess.run(fastdqn_cmd("plot", str(run_dir)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    from fastdqn.plot import read_scalars

    tags = ["charts/episodic_return", "charts/SPS", "charts/epsilon", "losses/td_loss", "losses/q_values",
            "losses/td_abs", "replay/fill", "eval/mean_return", "charts/updates_per_second", "charts/FPS"]
    scalars = read_scalars(run_dir, tags)
    assert set(scalars) == set(tags)
    assert np.all(np.isfinite(scalars["losses/td_loss"][1]))


@pytest.mark.parametrize("batch_size", [0, 2], ids=["sync", "async"])
def test_updates_keep_the_replay_ratio(tmp_path, batch_size):
    """replay_ratio sampled transitions per agent step after learning_starts: the count of
    updates is fixed by the step count alone (the loop learns between send and recv)."""
    cfg = make_config(env=dict(env_id="CartPole-v1", num_envs=4, batch_size=batch_size), run_dir=str(tmp_path),
                      total_steps=2000, buffer_size=4000, learning_starts=400, replay_ratio=2.0, batch_size=32,
                      eval_interval=0, final_eval=False, torch_threads=1)
    summary = train(cfg, progress=False)
    steps_per_iteration = batch_size or 4
    expected = cfg.replay_ratio * (cfg.total_steps - cfg.learning_starts) / cfg.batch_size  # 100
    # learning starts within one iteration of learning_starts, and credit is spent in whole updates
    assert abs(summary["updates"] - expected) <= cfg.replay_ratio * steps_per_iteration / cfg.batch_size + 1


def test_device_resident_replay_trains_exactly_like_the_numpy_replay(tmp_path):
    """--replay-device cpu runs the GPU code path (frames in torch tensors, gathered by the
    native kernels, fed to the learner as tensors) on the CPU: same seeds, same run, bit for bit."""
    from fastdqn.replay import native

    if native.cpu_gather() is None:
        pytest.skip("the native CPU kernels cannot be built here (see the warning)")
    import torch

    weights = {}
    for replay_device in ("numpy", "cpu"):
        run_dir = tmp_path / replay_device
        cfg = make_config(env=dict(env_id="Breakout-v5", num_envs=4, max_episode_steps=100),
                          run_dir=str(run_dir), total_steps=1200, buffer_size=4000, learning_starts=400,
                          replay_ratio=2.0, eval_interval=0, final_eval=False, torch_threads=1,
                          replay_device=replay_device)
        summary = train(cfg, progress=False)
        assert summary["updates"] >= 40
        weights[replay_device] = checkpoint.load(run_dir / "checkpoint.pt")["learner"]["q_network"]
    assert weights["numpy"].keys() == weights["cpu"].keys()
    for name, value in weights["numpy"].items():
        assert torch.equal(value, weights["cpu"][name]), name
