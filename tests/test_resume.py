"""Resume continues the same run: what a checkpoint restores, and what a resumed train() does.

EnvPool cannot save games in progress, so a resumed run's envs start new games and its
trajectory differs from an uninterrupted run's. What must be identical is everything else: the
learner (online and target nets, optimizer), the replay and its sampler, the acting stream, the
schedules and the replay-ratio credit. The first test checks exactly that: the same learning
steps from the live objects of the uninterrupted process at its checkpoint and from the objects
a resume rebuilds out of that checkpoint give identical weights, bit for bit.
"""

import json

import numpy as np
import pytest
import torch

from fastdqn import checkpoint
from fastdqn.acting import epsilon_at
from fastdqn.config import make_config
from fastdqn.envs import VecEnv
from fastdqn.train import (ReplayLearning, beta_at, build_learner, build_replay, make_rngs, new_counters, restore,
                           train)


def small_cartpole(run_dir, **changes):
    # sync pool (env batch = num_envs); replay ratio 3 at batch 32: 0.375 updates of credit per
    # iteration, so the checkpoint holds a fractional credit
    options = dict(run_dir=str(run_dir), total_steps=1200, learning_starts=300, replay_ratio=3.0, batch_size=32,
                   checkpoint_interval=400, eval_interval=0, final_eval=False, torch_threads=1)
    return make_config("cartpole", **{**options, **changes})


def _stats():
    return {"loss": torch.zeros(()), "q": torch.zeros(()), "td": torch.zeros(()), "n": 0}


def _continue(cfg, learner, replay, rng, counters, iterations=12):
    """What the loop does after a checkpoint, minus the envs: act draws, schedule, learning."""
    draws = []
    for _ in range(iterations):
        draws.append(rng.random(4))
        counters["agent_steps"] += 4
        counters["schedule_steps"] += 4
        ReplayLearning()(cfg, learner, replay, counters, 4, _stats())
    return np.concatenate(draws)


@pytest.mark.parametrize("head", ["scalar", "c51"])
def test_restore_continues_learning_exactly_like_the_uninterrupted_process(tmp_path, last_checkpoint_objects,
                                                                         one_torch_thread, head):
    live = last_checkpoint_objects
    cfg = small_cartpole(tmp_path / "run", head=head, v_min=0.0, v_max=100.0)
    train(cfg, progress=False)  # its last checkpoint (at the end, with the replay) is the one spied
    assert live["counters"]["credit"] % 1 != 0 and live["counters"]["updates"] > 50

    # a resume: fresh objects from other seeds, then the checkpoint put back into them
    env = VecEnv(cfg.env)
    env.close()
    learner = build_learner(cfg, env.obs_shape, env.num_actions, torch.device("cpu"))
    rng, sampling_seed = make_rngs(cfg.seed + 1)
    replay = build_replay(cfg, env, torch.device("cpu"), sampling_seed)
    counters = new_counters(cfg)
    path = tmp_path / "run" / "checkpoint.pt"
    state = checkpoint.load(path)
    replay_state, why = checkpoint.load_replay(path, state)
    assert replay_state is not None, why
    restore(state, replay_state, learner, replay, rng, counters)

    assert epsilon_at(cfg, counters["schedule_steps"]) == epsilon_at(cfg, live["counters"]["schedule_steps"])
    assert beta_at(cfg, counters["schedule_steps"]) == beta_at(cfg, live["counters"]["schedule_steps"])
    draws_live = _continue(cfg, live["agent"], live["store"], live["rng"], live["counters"])
    draws_resumed = _continue(cfg, learner, replay, rng, counters)
    np.testing.assert_array_equal(draws_resumed, draws_live)  # the acting stream
    assert counters["updates"] == live["counters"]["updates"] and counters["credit"] == live["counters"]["credit"]
    for name in ("q_network", "target_network"):
        ours, theirs = getattr(learner, name).state_dict(), getattr(live["agent"], name).state_dict()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (name, key)
    ours, theirs = learner.optimizer.state_dict()["state"], live["agent"].optimizer.state_dict()["state"]
    for key in theirs:
        for field in theirs[key]:
            assert torch.equal(ours[key][field], theirs[key][field]), (key, field)
    np.testing.assert_array_equal(replay.priorities(), live["store"].priorities())  # the same samples were drawn

    # without the replay's contents, the sampler's stream is still restored (from the checkpoint)
    empty = build_replay(cfg, env, torch.device("cpu"), make_rngs(cfg.seed + 2)[1])
    restore(state, None, build_learner(cfg, env.obs_shape, env.num_actions, torch.device("cpu")), empty,
            make_rngs(0)[0], new_counters(cfg))
    assert empty.rng.bit_generator.state == state["replay_rng"]
    assert state["replay_rng"] != state["numpy_rng"]  # two streams, not one seed twice


def test_resume_without_the_replay_pauses_the_schedules_and_keeps_one_evaluation_per_step(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = small_cartpole(run_dir, eval_interval=400, eval_episodes=2, eval_max_steps=50, save_replay="never")
    first = train(cfg, progress=False)
    assert first["agent_steps"] == first["config"]["total_steps"]
    saved = checkpoint.load(run_dir / "checkpoint.pt")
    end = saved["counters"]
    assert end["schedule_steps"] == end["agent_steps"]
    # what a process killed after this checkpoint would have left: an evaluation the checkpoint never saw
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["evals"].append({"agent_steps": end["agent_steps"] + 100, "wall_seconds": 1.0, "mean_return": 9.0})
    summary["learning_sps"] = 1e9
    summary_path.write_text(json.dumps(summary))
    capsys.readouterr()

    resumed = train(small_cartpole(run_dir, total_steps=2000, eval_interval=400, eval_episodes=2, eval_max_steps=50,
                                   save_replay="never", resume=True), progress=False)
    err = capsys.readouterr().err
    assert f"resumed {run_dir / 'checkpoint.pt'} at step {end['agent_steps']:,}" in err
    assert "not restored: games in progress" in err and "the replay (this checkpoint was saved without" in err
    acting = np.random.default_rng()
    acting.bit_generator.state = saved["numpy_rng"]
    env_seed = int(acting.integers(2**31 - 1))  # new games, not the opening games of the first run again
    assert f"seeded {env_seed} from the saved acting stream" in err and env_seed != cfg.env.seed
    counters = checkpoint.load(run_dir / "checkpoint.pt")["counters"]
    # epsilon and beta waited while the lost replay refilled (learning_starts steps, one 4-env step either way)
    refill = counters["agent_steps"] - counters["schedule_steps"]
    assert cfg.learning_starts - 4 <= refill <= cfg.learning_starts + 4, refill
    assert counters["updates"] > end["updates"] and counters["resumes"] == 1
    steps = [e["agent_steps"] for e in resumed["evals"]]
    assert steps == sorted(set(steps)) and end["agent_steps"] + 100 not in steps
    assert resumed["learning_sps"] < 1e9


def test_resume_with_the_replay_restores_it_and_says_so(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(small_cartpole(run_dir), progress=False)
    capsys.readouterr()
    train(small_cartpole(run_dir, total_steps=1600, resume=True), progress=False)
    err = capsys.readouterr().err
    assert "replay of 1,200 transitions" in err and "the replay (" not in err
    counters = checkpoint.load(run_dir / "checkpoint.pt")["counters"]
    assert counters["schedule_steps"] == counters["agent_steps"]  # learning went on at once
