"""DDPG / TD3 through the one training loop: --algorithm, learning on a MuJoCo task, resume."""

import numpy as np
import pytest
import torch

from fastdqn import checkpoint
from fastdqn.agents import GaussianExploration
from fastdqn.config import PRESETS, make_config
from fastdqn.envs import VecEnv
from fastdqn.train import ReplayLearning, build_agent, default_cpu_threads, build_replay, make_rngs, new_counters, restore, train


def small_td3(run_dir, **changes):
    # InvertedPendulum-v4: a random policy keeps the pole up 5.9 steps on average (200 games with
    # uniform actions: median 5, 99th percentile 17, longest 24); 500 random steps, then one update
    # of batch 64 per agent step.
    options = dict(algorithm="td3", env=dict(env_id="InvertedPendulum-v4", num_envs=2), run_dir=str(run_dir),
                   total_steps=4000, buffer_size=20_000, learning_starts=500, batch_size=64, replay_ratio=64.0,
                   n_step=1, per_alpha=0.0, hidden=64, lr=1e-3, adam_eps=1e-8, max_grad_norm=0.0, tau=0.005,
                   eps_start=1.0, eps_mid=1.0, eps_mid_steps=500, eps_final=0.0, eps_final_steps=500, eval_eps=0.0,
                   eval_interval=2000, eval_episodes=4, eval_max_steps=1000, log_interval=500,
                   checkpoint_interval=2000, torch_threads=1)
    return make_config(None, **{**options, **changes})


def test_td3_learns_to_balance_the_pendulum_through_the_loop_and_resumes(tmp_path):
    cfg = small_td3(tmp_path / "run")
    summary = train(cfg, progress=False)
    # twice the longest of 200 random games, 8x their mean: the policy learned (70-80 here, in ~20 s)
    assert summary["best_eval_mean_return"] >= 50, summary["evals"]
    assert summary["updates"] >= 3000 and summary["stop_reason"] == "total_steps reached"

    from fastdqn.config import resume_config
    import argparse

    resumed = resume_config(str(tmp_path / "run"), argparse.Namespace(**{"TrainConfig.total_steps": 5000}))
    summary = train(resumed, progress=False)
    assert summary["agent_steps"] == 5000 and summary["updates"] >= 4000
    assert [e["agent_steps"] for e in summary["evals"]] == [2000, 4000, 5000]


def test_td3_restore_continues_learning_exactly_like_the_uninterrupted_process(tmp_path, last_checkpoint_objects):
    live = last_checkpoint_objects
    cfg = small_td3(tmp_path / "run", total_steps=1200, eval_interval=0, final_eval=False, replay_ratio=24.0,
                    checkpoint_interval=400)
    train(cfg, progress=False)
    assert live["counters"]["updates"] > 100

    env = VecEnv(cfg.env)
    env.close()
    agent, acting, _ = build_agent(cfg, env, torch.device("cpu"))
    rng, sampling_seed = make_rngs(cfg.seed + 1)
    replay = build_replay(cfg, env, torch.device("cpu"), sampling_seed, acting.action_shape)
    counters = new_counters(cfg)
    path = tmp_path / "run" / "checkpoint.pt"
    state = checkpoint.load(path)
    replay_state, why = checkpoint.load_replay(path, state)
    assert replay_state is not None, why
    restore(state, replay_state, agent, replay, rng, counters)
    assert torch.equal(torch.get_rng_state(), state["torch_rng"])  # the smoothing noise's stream

    def go_on(agent, replay, rng, counters):  # the loop's learning steps (the smoothing noise: torch's stream)
        torch.set_rng_state(state["torch_rng"])
        stats = {"loss": torch.zeros(()), "q": torch.zeros(()), "td": torch.zeros(()), "n": 0}
        for _ in range(6):
            counters["agent_steps"] += 2
            counters["schedule_steps"] += 2
            ReplayLearning()(cfg, agent, replay, counters, 2, stats)
        return rng.random(4)

    np.testing.assert_array_equal(go_on(agent, replay, rng, counters),
                                  go_on(live["agent"], live["store"], live["rng"], live["counters"]))
    assert agent.num_updates == live["agent"].num_updates
    for name in ("actor", "critics", "target_actor", "target_critics"):
        ours, theirs = getattr(agent, name).state_dict(), getattr(live["agent"], name).state_dict()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), (name, key)
    np.testing.assert_array_equal(replay.priorities(), live["store"].priorities())


def test_the_algorithm_must_fit_the_task():
    with pytest.raises(ValueError, match="HalfCheetah-v4 has continuous actions: train it with --algorithm td3"):
        make_config(None, env=dict(env_id="HalfCheetah-v4"))
    with pytest.raises(ValueError, match="--algorithm td3 is for continuous actions; CartPole-v1"):
        make_config("cartpole", algorithm="td3")
    with pytest.raises(ValueError, match="--actors .* dqn only for now, not ddpg"):
        make_config("halfcheetah", algorithm="ddpg", actors=2)
    with pytest.raises(ValueError, match="--policy-delay must be at least 1"):
        make_config("hopper", policy_delay=0)
    for name in ("halfcheetah", "hopper", "walker2d"):
        cfg = make_config(name)
        assert cfg.algorithm == "td3" and cfg.exp_name == name and PRESETS[name]["env"]["num_envs"] == 1
    assert make_config(None, algorithm="ddpg", env=dict(env_id="Hopper-v4")).exp_name == "ddpg"


def test_torch_threads_by_default_one_for_small_mlp_updates_all_cores_for_td3_and_cnns():
    vector, frames = (17,), (4, 84, 84)
    assert default_cpu_threads(make_config("cartpole"), (4,), cores=2) == 1  # batch 64 x 128 units
    assert default_cpu_threads(make_config("cartpole-pqn"), (4,), cores=2) == 1
    assert default_cpu_threads(make_config("halfcheetah"), vector, cores=2) == 2  # batch 256 x 256 units
    assert default_cpu_threads(make_config("halfcheetah", batch_size=32), vector, cores=8) == 1
    assert default_cpu_threads(make_config("halfcheetah", batch_size=64), vector, cores=8) == 8
    assert default_cpu_threads(make_config("breakout-cpu", batch_size=32), frames, cores=2) == 2  # a CNN: any batch


def test_ddpg_builds_one_critic_without_delay_or_smoothing(tmp_path):
    cfg = small_td3(tmp_path / "run", algorithm="ddpg", policy_delay=3, target_noise=0.3)
    env = VecEnv(cfg.env)
    env.close()
    agent, acting, evaluating = build_agent(cfg, env, torch.device("cpu"))
    assert len(agent.critics) == 1 and agent.policy_delay == 1 and agent.target_noise == 0.0
    assert acting.noise_scale == cfg.exploration_noise and evaluating.noise_scale == 0.0


def test_gaussian_exploration_takes_random_actions_with_probability_epsilon():
    network = torch.nn.Linear(3, 2)
    low, high = np.array([-1.0, 0.0], np.float32), np.array([1.0, 4.0], np.float32)
    rule = GaussianExploration(network, low, high, 0.0, torch.device("cpu"), "fp32")
    obs = np.random.default_rng(0).normal(size=(5000, 3)).astype(np.float32) * 0.1
    with torch.no_grad():
        mu = np.clip(network(torch.as_tensor(obs)).numpy(), low, high)
    np.testing.assert_array_equal(rule(obs, 0.0, np.random.default_rng(1)), mu)
    random = rule(obs, 1.0, np.random.default_rng(1))
    assert (random >= low).all() and (random <= high).all()
    np.testing.assert_allclose(random.mean(0), (low + high) / 2, atol=0.05)  # uniform over the box
    np.testing.assert_allclose(random.std(0), (high - low) / np.sqrt(12), rtol=0.05)
    half = rule(obs, 0.5, np.random.default_rng(1))
    from_policy = (half == mu).all(axis=1)
    assert 0.45 < from_policy.mean() < 0.55


def test_the_algorithm_cannot_change_on_resume_and_runs_from_before_it_are_dqn():
    from fastdqn.config import check_resumable, to_dict

    with pytest.raises(ValueError, match="--algorithm cannot change on --resume .* started with --algorithm td3"):
        check_resumable(to_dict(make_config("hopper")), make_config("hopper", algorithm="ddpg"), "run")
    older = to_dict(make_config("cartpole"))
    del older["algorithm"]
    check_resumable(older, make_config("cartpole"), "run")
