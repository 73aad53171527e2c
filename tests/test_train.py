"""End-to-end training behaviour: learning, resume after a hard kill, failures that lose nothing."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fastdqn import checkpoint
from fastdqn.config import make_config
from fastdqn import train as train_module
from fastdqn.train import TrainingDiverged, lr_at, train


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


def test_replay_window_holds_the_sampled_range_back_until_its_step(tmp_path, monkeypatch):
    seen = []  # (agent steps, the replay's window, records it may sample) at every check
    original = train_module.update_replay_window

    def spy(cfg, replay, agent_steps):
        original(cfg, replay, agent_steps)
        seen.append((agent_steps, replay.window, int(np.count_nonzero(replay.priorities()))))

    monkeypatch.setattr(train_module, "update_replay_window", spy)
    cfg = make_config("cartpole", run_dir=str(tmp_path / "run"), total_steps=3000, buffer_size=4000,
                      replay_window=800, replay_window_steps=2000, learning_starts=200, eval_interval=0,
                      final_eval=False, torch_threads=1)
    train(cfg, progress=False)
    before = [s for s in seen if s[0] < 2000]
    after = [s for s in seen if s[0] >= 2000]
    assert before and after
    assert all(window == 800 and sampleable <= 800 for _, window, sampleable in before)
    assert max(sampleable for *_, sampleable in before) > 700  # the window was full
    assert all(window is None for _, window, _ in after)
    assert after[0][2] > 1500  # and opened at once onto all it stored (~2000 records written by then)


def test_corrupt_checkpoint_resumes_from_the_previous_one_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config("cartpole", run_dir=str(run_dir), total_steps=600, learning_starts=200,
                      checkpoint_interval=200, eval_interval=0, final_eval=False, torch_threads=1)
    train(cfg, progress=False)
    ckpt = run_dir / "checkpoint.pt"
    prev_steps = checkpoint.load(ckpt.with_name("checkpoint.pt.prev"))["counters"]["agent_steps"]
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    out = subprocess.run(fastdqn_cmd("train", "--resume", "--run-dir", str(run_dir), "--no-progress",
                                     "--total-steps", "800"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"cannot read checkpoint {ckpt}" in out.stderr and "resuming from the previous checkpoint" in out.stderr
    assert f"resumed {ckpt}.prev at step {prev_steps:,}" in out.stderr
    assert "weights_only" not in out.stderr
    assert checkpoint.load(ckpt)["counters"]["agent_steps"] == 800


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
    protocol = summary["protocol"]
    assert protocol["name"] == "v4" and protocol["changed"] == {"max_episode_steps": 100}
    assert protocol["options"]["noop_max"] == 30 and protocol["options"]["eval_episodes"] == 2

    gif = tmp_path / "episode.gif"
    out = subprocess.run(fastdqn_cmd("eval", str(run_dir / "checkpoint.pt"), "--episodes", "2", "--max-steps", "120",
                                     "--gif", str(gif), "--no-episodic-life"), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert result["episodic_life"] is False  # the flag reached the evaluation envs (trained with episodic life)
    import imageio.v2 as imageio

    frames = imageio.mimread(gif)
    assert len(frames) > 10 and frames[0].shape[:2] == (168, 168)

    out = subprocess.run(fastdqn_cmd("plot", str(run_dir)), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    from fastdqn.plot import read_scalars

    tags = ["charts/episodic_return", "charts/SPS", "charts/epsilon", "losses/td_loss", "losses/q_values",
            "losses/td_abs", "replay/fill", "eval/mean_return", "charts/updates_per_second", "charts/FPS",
            "charts/learning_rate"]
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


def test_lr_schedule_is_constant_then_linear_then_constant():
    cfg = make_config(preset="cartpole", lr=1e-3, lr_final=2e-4, lr_decay_start=1000, lr_decay_end=3000)
    reference = {0: 1e-3, 1000: 1e-3, 1500: 8e-4, 2000: 6e-4, 3000: 2e-4, 10_000: 2e-4}
    assert {step: lr_at(cfg, step) for step in reference} == pytest.approx(reference)
    constant = make_config(preset="cartpole", lr=1e-3, lr_final=2e-4)  # no --lr-decay-end: no schedule
    assert lr_at(constant, 10_000) == 1e-3


def test_lr_decayed_to_zero_stops_learning_where_the_schedule_ends(tmp_path):
    """With --lr-final 0 the weights stop changing at --lr-decay-end: running on past it ends
    with the same network, bit for bit, as stopping there (an lr the learner never saw would not)."""
    import torch

    weights = {}
    for total_steps in (1200, 2000):
        run_dir = tmp_path / str(total_steps)
        cfg = make_config(env=dict(env_id="CartPole-v1", num_envs=4), run_dir=str(run_dir), total_steps=total_steps,
                          buffer_size=4000, learning_starts=400, replay_ratio=2.0, batch_size=32, lr=1e-3,
                          lr_final=0.0, lr_decay_start=800, lr_decay_end=1200, eval_interval=0, final_eval=False,
                          torch_threads=1, seed=3, per_beta0=1.0)  # (beta's schedule follows --total-steps)
        summary = train(cfg, progress=False)
        assert summary["updates"] >= 40
        weights[total_steps] = checkpoint.load(run_dir / "checkpoint.pt")["learner"]["q_network"]
    for name, value in weights[1200].items():
        assert torch.equal(value, weights[2000][name]), name


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
