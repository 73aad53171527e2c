"""Nothing lost, nothing silent (issue #41): a stop signal under Ray ends with the final
checkpoint, resumed runs obey their flags, divergence and full disks end with the last good
checkpoint named, and a flag that cannot be honoured is refused by name before any work."""

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastdqn import checkpoint
from fastdqn import train as train_mod
from fastdqn.cli import main
from fastdqn.config import make_config
from fastdqn.replay import PrioritizedReplay
from fastdqn.train import TrainingDiverged, train


def wait_for(predicate, seconds: float, proc=None):
    """Poll ``predicate`` until it holds (True) or ``seconds`` pass (False); stops early if ``proc`` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


# --------------------------------------------------------------------------- 1. SIGTERM under Ray

def test_sigterm_to_a_ray_run_ends_it_with_the_final_checkpoint_at_the_stop_step(tmp_path):
    """ray.init installs its own SIGTERM handler; the run's stop handling must survive it (a real
    SIGTERM to a real --actors 1 run, as a cluster's preemption or docker stop sends it)."""
    pytest.importorskip("ray")
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "fastdqn.cli", "train", "--preset", "cartpole", "--actors", "1", "--actor-cpus",
            "0.5", "--total-steps", "200000", "--learning-starts", "300", "--checkpoint-interval", "0",
            "--eval-interval", "0", "--chunk-steps", "64", "--replay-ratio", "4", "--torch-threads", "1",
            "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the first checkpoint is written when learning starts: the actors run, the learner learns
        started = wait_for(lambda: (run_dir / "checkpoint.pt").exists(), 300, proc)
        assert started, proc.communicate(timeout=60)
        first = checkpoint.load(run_dir / "checkpoint.pt")["counters"]["agent_steps"]
        time.sleep(2)  # a little more training after it
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted"
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["counters"]["agent_steps"] == summary["agent_steps"] >= first
    assert checkpoint.load_replay(run_dir / "checkpoint.pt", state)[0] is not None


# --------------------------------------------------------------------------- 3. resume obeys --lr / --adam-eps

def cartpole(run_dir, **changes):
    options = dict(run_dir=str(run_dir), total_steps=600, learning_starts=300, checkpoint_interval=0,
                   eval_interval=0, final_eval=False, eval_episodes=2, eval_max_steps=100, torch_threads=1)
    return make_config("cartpole", **{**options, **changes})


def test_a_resume_with_a_new_lr_and_adam_eps_trains_with_them(tmp_path, capsys):
    cfg = cartpole(tmp_path / "run")
    train(cfg, progress=False)
    group = checkpoint.load(tmp_path / "run" / "checkpoint.pt")["learner"]["optimizer"]["param_groups"][0]
    assert (group["lr"], group["eps"]) == (cfg.lr, cfg.adam_eps)
    train(dataclasses.replace(cfg, resume=True, total_steps=700, lr=1e-3, adam_eps=1e-6), progress=False)
    assert "lr 0.001" in capsys.readouterr().err  # what the resume line says is what the optimizer uses
    group = checkpoint.load(tmp_path / "run" / "checkpoint.pt")["learner"]["optimizer"]["param_groups"][0]
    assert (group["lr"], group["eps"]) == (1e-3, 1e-6)


# --------------------------------------------------------------------------- 4. divergence is the divergence error

@pytest.fixture
def poisoned_td(monkeypatch):
    """While ``poison["on"]``, every TD error handed to the replay after the first ``poison["after"]`` is
    NaN (a learner that diverged)."""
    poison = {"on": True, "after": 0, "calls": 0}
    real = PrioritizedReplay.update_priorities

    def update_priorities(self, indices, td_abs):
        poison["calls"] += 1
        bad = poison["on"] and poison["calls"] > poison["after"]
        return real(self, indices, np.asarray(td_abs) * np.nan if bad else td_abs)

    monkeypatch.setattr(PrioritizedReplay, "update_priorities", update_priorities)
    return poison


def test_a_nan_td_error_raises_the_divergence_error_naming_the_last_checkpoint(tmp_path, poisoned_td):
    poisoned_td["after"] = 20  # after the checkpoint written when learning starts
    with pytest.raises(TrainingDiverged, match=r"the TD error became nan at step [\d,]+; the last good checkpoint "
                                               r"is .*checkpoint.pt \(try a lower --lr\)"):
        train(cartpole(tmp_path / "run", checkpoint_interval=0), progress=False)


def test_a_suite_goes_on_past_a_game_whose_learner_diverged_and_reports(tmp_path, poisoned_td, monkeypatch, capsys):
    from tests.test_suite import TINY

    real_train = train_mod.train
    games = []

    def train_first_diverges(cfg, progress=True):
        games.append(cfg.env.env_id)
        poisoned_td["on"] = len(games) == 1
        return real_train(cfg, progress)

    monkeypatch.setattr(train_mod, "train", train_first_diverges)
    out = tmp_path / "suite"
    assert main(["suite", "--steps", "600", "--out", str(out), *TINY]) == 3
    said = capsys.readouterr().out
    assert "[1/2] Pong: diverged: the TD error became nan" in said and "[2/2] Breakout: done" in said
    report = json.loads((out / "suite.json").read_text())
    rows = {row["game"]: row for row in report["games"]}
    assert rows["Pong"]["stop_reason"] == "diverged" and rows["Pong"]["score"] is None
    assert rows["Breakout"]["score"] is not None and report["games_with_hns"] == 1


# --------------------------------------------------------------------------- 5. a full disk

def test_a_full_disk_at_the_replay_write_keeps_the_final_checkpoint(tmp_path, monkeypatch, capsys):
    """ENOSPC while the final replay is written: the weights, counters and optimizer of the last step
    still go in place (without the replay); the run ends normally, saying the replay was not saved."""
    run_dir = tmp_path / "run"

    def full_disk(file, **arrays):
        file.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.np, "savez", full_disk)
    summary = train(cartpole(run_dir), progress=False)
    assert summary["stop_reason"] == "total_steps reached"
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["counters"]["agent_steps"] == summary["agent_steps"]
    assert checkpoint.load_replay(run_dir / "checkpoint.pt", state) == (None, "this checkpoint was saved without "
                                                                               "the replay")
    assert "warning: the replay could not be written" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.glob("checkpoint*")) == ["checkpoint.pt", "checkpoint.pt.prev"]


# --------------------------------------------------------------------------- 7. resuming a finished run

def test_resuming_a_finished_run_neither_repeats_nor_purges_its_final_evaluation(tmp_path):
    from fastdqn.plot import read_scalars

    run_dir = tmp_path / "run"
    cfg = cartpole(run_dir, eval_interval=300, final_eval=True, eval_max_steps=30)
    first = train(cfg, progress=False)
    assert [e["agent_steps"] for e in first["evals"]] == [300, 600]
    resumed = train(dataclasses.replace(cfg, resume=True, total_steps=900), progress=False)
    assert [e["agent_steps"] for e in resumed["evals"]] == [300, 600, 900]
    steps, _ = read_scalars(run_dir, ["eval/mean_return"])["eval/mean_return"]
    assert steps.tolist() == [300, 600, 900]


# --------------------------------------------------------------------------- 9, 10, 12, 13. flags refused by name

REFUSED = [
    (["--learning-starts", "0"], "--learning-starts 0 is too few: the first update needs a transition to sample"),
    (["--learning-starts", "10"], "--learning-starts 10 is too few"),
    (["--learning-starts", "3000", "--total-steps", "3000"], "--learning-starts 3000 is not below --total-steps 3000"),
    (["--replay-ratio", "nan"], "--replay-ratio must be a finite number, got nan"),
    (["--replay-ratio", "inf"], "--replay-ratio must be a finite number, got inf"),
    (["--max-minutes", "nan"], "--max-minutes must be a finite number, got nan"),
    (["--per-alpha", "nan"], "--per-alpha must be a finite number, got nan"),
    (["--target-score", "nan"], "--target-score must be a finite number, got nan"),
    (["--repeat-action-probability", "nan"], "--repeat-action-probability must be a finite number"),
    (["--seed", "-1"], "--seed must be in [0, 2**63), got -1"),
    (["--seed", str(2**63)], "--seed must be in [0, 2**63)"),
    (["--env-seed", str(2**31)], "--env-seed must be in [0, 2**31) (EnvPool takes an int32 seed)"),
    (["--actors", "2", "--replay-window", "20", "--replay-window-steps", "1000"],
     "--replay-window 20 must be in [40, --buffer-size 50000] for --actors 2 x --num-envs 4"),
]


@pytest.mark.parametrize("flags, message", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_a_flag_that_cannot_be_honoured_is_refused_in_one_line_and_nothing_is_created(flags, message, tmp_path,
                                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "cartpole", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_suite_budget_below_learning_starts_is_refused_before_any_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("fastdqn.train.train", lambda *a, **k: pytest.fail("trained"))
    assert main(["suite", "--games", "Pong", "--steps", "50000", "--out", str(tmp_path / "suite")]) == 2
    err = capsys.readouterr().err
    assert "--steps 50000 is not more than --learning-starts 80000: every game would be scored untrained" in err
    assert not (tmp_path / "suite").exists()


def float_flags():
    from fastdqn.config import TrainConfig, _env_flag, _flag
    from fastdqn.envs import EnvConfig

    for owner, flag_of in ((EnvConfig, _env_flag), (TrainConfig, _flag)):
        for f in dataclasses.fields(owner):
            if isinstance(f.default, float):
                yield owner is EnvConfig, f.name, flag_of(f.name)


@pytest.mark.parametrize("in_env, name, flag", list(float_flags()), ids=[flag for _, _, flag in float_flags()])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_float_flag_refuses_nan_and_infinities(in_env, name, flag, bad):
    changes = dict(env={name: bad}) if in_env else {name: bad}
    if name == "target_score" and bad == math.inf:  # its default: never stop on a score
        make_config("cartpole", **changes)
        return
    with pytest.raises(ValueError, match=f"^{flag} must be a finite number"):
        make_config("cartpole", **changes)


def test_a_seed_beyond_int32_trains_and_evaluates(tmp_path):
    summary = train(cartpole(tmp_path / "run", seed=2**40, final_eval=True, eval_max_steps=20), progress=False)
    assert [e["agent_steps"] for e in summary["evals"]] == [600]


# --------------------------------------------------------------------------- 2. a chunk lost from a live actor

def test_a_chunk_lost_from_a_live_actor_is_not_bridged_in_the_replay():
    """Actor chunks carry their number; after a gap (a request that failed after the actor ran it)
    each of the actor's lanes takes records again only from its env's next new game."""
    from fastdqn.actor import store
    from fastdqn.distributed import Lanes, RemoteActor
    from fastdqn.envs import VecEnv
    from fastdqn.train import build_q_network

    cfg = make_config("cartpole", actors=1, chunk_steps=40, apex_eps=0.9, torch_threads=1,
                      env=dict(num_envs=3))
    probe = VecEnv(cfg.env)
    obs_shape, num_actions = probe.obs_shape, probe.num_actions
    probe.close()
    actor = RemoteActor(cfg, 0, obs_shape, num_actions, seed=0, restarted=False)
    weights = build_q_network(cfg, obs_shape, num_actions).state_dict()
    lanes = Lanes(1, 3)
    replay = PrioritizedReplay(3000, 3, obs_shape, stack=1, n_step=3, gamma=0.99, seed=0, obs_dtype=np.float32)
    after_gap = []  # per stored env step after the gap: (lanes, new_game)
    for seq in range(6):
        chunk = actor.collect(cfg.chunk_steps, [weights], version=1)
        assert chunk.seq == seq
        if seq == 2:
            continue  # lost on the way
        records, _ = lanes.split(chunk)
        assert lanes.lost == (1 if seq == 3 else 0)
        for r in records:
            store(replay, r)
            if seq >= 3:
                after_gap.append((r.env_ids.tolist(), r.new_game.tolist()))
    actor.actor.close()
    for lane in range(3):  # each lane's first record after the gap starts a new game
        firsts = [new for ids, news in after_gap for e, new in zip(ids, news) if e == lane]
        assert firsts and firsts[0], (lane, firsts[:3])


# --------------------------------------------------------------------------- 8. --eval-max-steps on classic control

def test_eval_max_steps_caps_classic_control_games():
    import torch

    from fastdqn.envs import EnvConfig, VecEnv
    from fastdqn.evaluate import evaluate
    from fastdqn.networks import make_q_network

    env = VecEnv(EnvConfig(env_id="CartPole-v1", num_envs=2, max_episode_steps=5))
    env.reset()
    lengths = []
    for _ in range(40):
        step = env.step(np.ones(2, np.int64) * (len(lengths) % 2))
        lengths += step.episode_lengths[step.game_over].tolist()
    env.close()
    assert lengths and max(lengths) <= 5
    # random play lasts more than 7 steps (a pole falls after 8 at the soonest): --eval-max-steps 7 cuts every game
    q_network = make_q_network((4,), 2, hidden=(8, 8))
    result = evaluate(q_network, EnvConfig(env_id="CartPole-v1", num_envs=4), episodes=4, epsilon=1.0, max_steps=7,
                      device=torch.device("cpu"), seed=1)
    assert max(result["lengths"]) <= 7, result["lengths"]


# --------------------------------------------------------------------------- 11. the game's input in the protocol

def test_frame_size_and_stack_num_are_recorded_as_changes_of_the_protocol():
    from fastdqn.config import protocol_record

    record = protocol_record(make_config(env=dict(env_id="Breakout-v5", frame_size=42, stack_num=2)))
    assert record["changed"] == {"stack_num": 2, "frame_size": 42}
    assert record["options"]["frame_size"] == 42 and record["options"]["stack_num"] == 2
    assert "(changed: stack_num 2 instead of 4, frame_size 42 instead of 84)" in record["description"]
    assert "42x42 grey frames, 2 stacked" in record["description"]
    assert protocol_record(make_config(env=dict(env_id="Breakout-v5")))["changed"] == {}


# --------------------------------------------------------------------------- 6. resume memory

def test_loading_a_saved_replay_does_not_hold_a_second_copy_of_it_in_memory(tmp_path):
    """A resume reads the saved replay into the replay it built: the frames are never all in memory
    twice (measured with tracemalloc, which sees NumPy's allocations, against the replay's size)."""
    import tracemalloc

    def new_replay(seed):
        return PrioritizedReplay(8000, 4, (84, 84), stack=4, n_step=3, gamma=0.99, seed=seed)

    replay = new_replay(0)
    rng = np.random.default_rng(0)
    for t in range(600):
        replay.add(rng.integers(0, 255, (4, 4, 84, 84), np.uint8), np.zeros(4, np.int64), np.ones(4, np.float32),
                   np.zeros(4, bool), np.zeros(4, bool), np.full(4, t == 0), np.full(4, t == 0))
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"counters": {"agent_steps": 600}}, replay.state_dict())
    loaded = new_replay(1)
    tracemalloc.start()
    try:
        state, note = checkpoint.load_replay(path, checkpoint.load(path))
        loaded.load_state_dict(state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    frames = replay.state_dict()["frames"].nbytes
    assert peak < frames / 10, (peak, frames)
    for key, value in replay.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)


# --------------------------------------------------------------------------- 14. the lesser ones

def test_a_second_process_in_a_run_directory_is_refused_naming_the_first(tmp_path):
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as held:  # another process's lock (flock is per open file)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        with pytest.raises(ValueError, match=r"--run-dir .*run is in use by another fastdqn process \(pid 4242\)"):
            train(cartpole(run_dir), progress=False)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written
    assert train(cartpole(run_dir, total_steps=400), progress=False)["agent_steps"] == 400  # released: it runs


def test_after_a_resume_from_prev_the_damaged_checkpoint_never_becomes_prev(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = cartpole(run_dir, checkpoint_interval=100)
    train(cfg, progress=False)
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    train(dataclasses.replace(cfg, resume=True, total_steps=700), progress=False)
    assert "resuming from the previous checkpoint" in capsys.readouterr().err
    assert checkpoint.load(ckpt)["counters"]["agent_steps"] == 700
    checkpoint.load(ckpt.with_name("checkpoint.pt.prev"))  # loadable: not the damaged file
    assert (run_dir / "checkpoint.pt.unreadable").exists()  # kept aside for a look


def test_losing_every_actor_ends_the_run_with_its_final_checkpoint(tmp_path, monkeypatch):
    from fastdqn.actor import LocalSource

    real_recv = LocalSource.recv
    calls = []

    def recv(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 100:  # (past the learning start at step 300: 4 envs a step)
            raise train_mod.SourceLost("every actor died and Ray could not restart them (--actor-restarts 10)")
        return real_recv(self, *args, **kwargs)

    monkeypatch.setattr(LocalSource, "recv", recv)
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "cartpole", "--run-dir", str(run_dir), "--total-steps", "2000",
                 "--learning-starts", "300", "--eval-interval", "0", "--checkpoint-interval", "0", "--torch-threads",
                 "1", "--no-progress"]) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"].startswith("every actor died")
    assert checkpoint.load(run_dir / "checkpoint.pt")["counters"]["agent_steps"] == summary["agent_steps"] == 400
    assert "evals" not in summary  # no final evaluation of a run cut short


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("small") / "run"
    train(cartpole(run_dir, total_steps=400), progress=False)
    return run_dir


GAME = [(["--frame-skip", "2"], "--frame-skip"), (["--repeat-action-probability", "0.25"], "--repeat-action-probability"),
        (["--no-episodic-life"], "--episodic-life"), (["--no-reward-clip"], "--reward-clip"),
        (["--noop-max", "5"], "--noop-max"), (["--no-use-fire-reset"], "--use-fire-reset"),
        (["--max-episode-steps", "100"], "--max-episode-steps")]


@pytest.mark.parametrize("flags, flag", GAME, ids=[flag for _, flag in GAME])
def test_the_game_cannot_change_on_resume(flags, flag, small_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in small_run.iterdir()}
    assert main(["train", "--resume", "--run-dir", str(small_run), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} cannot change on --resume") and err.count("\n") == 1, err
    assert {p.name: p.stat().st_mtime_ns for p in small_run.iterdir()} == before


def test_an_unreachable_ray_address_is_refused_at_once(tmp_path, monkeypatch, capsys):
    import socket

    pytest.importorskip("ray")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "cartpole", "--actors", "1", "--ray-address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ray-address 127.0.0.1:{port}: nothing answers there") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_the_resume_line_of_an_apex_run_names_the_actors_epsilon_ladder():
    from pathlib import Path

    from fastdqn.train import describe_resume, new_counters

    cfg = make_config("cartpole", actors=2)
    counters = new_counters(cfg)
    line = describe_resume(cfg, Path("checkpoint.pt"), {}, counters, None, "saved without it", 0)
    assert "the actors' epsilon ladder 0.4 ... 0.000655 (--apex-eps, --apex-alpha)" in line
    assert "epsilon 1.000" not in line
