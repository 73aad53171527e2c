"""A CartPole run SIGKILLed at reproducible random moments (acting, in the middle of checkpoint
writes, in the middle of evaluations) and resumed each time ends like an uninterrupted one."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fastdqn import checkpoint

KILLS = 11
CHECKPOINT_INTERVAL = 2000  # agent steps; short, so that 11 kills come before CartPole is solved
EVAL_INTERVAL = 2500
NUM_ENVS = 4  # the cartpole preset's


def kill_plan(seed: int = 11) -> list[tuple[str, int]]:
    rnd = random.Random(seed)
    plan = []
    for i in range(KILLS):
        kind = ("steps", "file_op", "eval_game")[i % 3]
        low = 2500 if i == 0 else 300  # the first kill after the first checkpoint (learning starts at 2000)
        plan.append((kind, {"steps": rnd.randint(low, low + 2500), "file_op": rnd.randint(1, 14),
                            "eval_game": rnd.randint(1, 12)}[kind]))
    return plan


@pytest.mark.slow
def test_cartpole_killed_at_random_moments_resumes_each_time_and_still_solves(tmp_path):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoint.pt"
    common = ["--preset", "cartpole", "--run-dir", str(run_dir), "--no-progress",
              "--checkpoint-interval", str(CHECKPOINT_INTERVAL), "--eval-interval", str(EVAL_INTERVAL)]
    switch = [sys.executable, str(Path(__file__).with_name("kill_switch.py"))]
    start, lost, resumed_at, updates = 0, [], [], []
    for i, (kind, n) in enumerate(kill_plan()):
        report = tmp_path / f"kill{i}.json"
        # (no early stop at the target score while killing: every kill must find the run going)
        args = common + (["--resume"] if i else []) + ["--target-score", "1e9"]
        out = subprocess.run(switch + [kind, str(n), str(report), "--"] + ["train", *args], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == -9, f"kill {i} ({kind} {n}) did not happen: {out.stderr[-2000:]}"
        if i:
            assert "restored:" in out.stderr and "replay of" in out.stderr, out.stderr[-2000:]
        killed_at = start + json.loads(report.read_text())["steps_taken"]
        state = checkpoint.load(ckpt)  # never absent, never partial, whatever the kill interrupted
        counters = state["counters"]
        lost.append((kind, n, killed_at, killed_at - counters["agent_steps"]))
        assert checkpoint.load_replay(ckpt, state)[0] is not None
        resumed_at.append(counters["agent_steps"])
        updates.append(counters["updates"])
        start = counters["agent_steps"]
    print("\nkill (kind, n, step killed at, steps lost):\n" + "\n".join(map(str, lost)))
    assert resumed_at == sorted(resumed_at) and updates == sorted(updates)  # monotone counters
    assert resumed_at[-1] > resumed_at[0]
    assert all(0 <= steps_lost <= CHECKPOINT_INTERVAL + NUM_ENVS for *_, steps_lost in lost), lost

    out = subprocess.run([sys.executable, "-m", "fastdqn.cli", "train", "--resume", *common, "--target-score", "500"],
                         capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [e["agent_steps"] for e in summary["evals"]]
    assert steps == sorted(set(steps)), steps  # no evaluation twice
    assert checkpoint.load(ckpt)["counters"]["agent_steps"] == summary["agent_steps"] >= resumed_at[-1]
    assert summary["best_eval_mean_return"] >= 475, summary["evals"]
