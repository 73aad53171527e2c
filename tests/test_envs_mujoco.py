"""EnvPool's MuJoCo tasks through the env layer: a Box action space, float actions, true returns."""

import numpy as np
import pytest

from fastdqn.envs import EnvConfig, describe_protocol, is_continuous, make_env


@pytest.mark.parametrize("batch_size", [0, 3], ids=["sync", "async"])
def test_mujoco_pool_steps_random_actions_and_reports_the_sum_of_rewards(batch_size):
    # Hopper falls over under random actions (terminations); a 20-step cap truncates the rest.
    cfg = EnvConfig(env_id="Hopper-v4", num_envs=6, batch_size=batch_size, seed=0, max_episode_steps=20)
    env = make_env(cfg)
    assert env.continuous and env.num_actions is None and env.action_dim == 3
    np.testing.assert_array_equal(env.action_low, -np.ones(3, np.float32))
    np.testing.assert_array_equal(env.action_high, np.ones(3, np.float32))
    assert env.obs_shape == (11,) and env.obs_dtype == np.float32 and env.stack == 1
    rng = np.random.default_rng(1)
    returns = np.zeros(cfg.num_envs)
    lengths = np.zeros(cfg.num_envs, int)
    done_before = np.ones(cfg.num_envs, bool)
    ends = []
    step = env.reset()
    for t in range(500):
        if t:
            actions = rng.uniform(env.action_low, env.action_high, (len(step.env_ids), env.action_dim))
            step = env.step(actions.astype(np.float32))
        assert step.obs.dtype == np.float32 and step.obs.shape == (len(step.env_ids), 11)
        for i, e in enumerate(step.env_ids):
            if done_before[e]:  # the reset step: its reward belongs to no episode
                assert step.reset_step[i] and step.new_game[i]
                returns[e], lengths[e] = 0.0, 0
            else:
                returns[e] += step.reward[i]
                lengths[e] += 1
            if step.game_over[i]:
                assert step.episode_returns[i] == pytest.approx(returns[e], rel=1e-6, abs=1e-4)
                assert step.episode_lengths[i] == lengths[e]
                ends.append((bool(step.terminated[i]), lengths[e]))
            else:
                assert step.episode_returns[i] == 0.0
            done_before[e] = step.terminated[i] or step.truncated[i]
    assert any(terminated for terminated, _ in ends)  # fell over
    assert (False, 20) in ends  # reached the cap
    assert all(length <= 20 for _, length in ends)
    env.close()


def test_actions_outside_the_box_are_clipped_before_they_reach_envpool():
    # EnvPool would charge HalfCheetah's control cost on the raw action (25x at 5 than at 1).
    rewards = []
    for value in (5.0, 1.0):
        env = make_env(EnvConfig(env_id="HalfCheetah-v4", num_envs=2, seed=3))
        env.reset()
        rewards.append(env.step(np.full((2, env.action_dim), value, np.float32)).reward)
        env.close()
    np.testing.assert_array_equal(rewards[0], rewards[1])


def test_continuous_tasks_are_recognised_and_listed(capsys):
    assert is_continuous("HalfCheetah-v4") and is_continuous("Walker2d-v4") and is_continuous("Pendulum-v1")
    assert not is_continuous("CartPole-v1") and not is_continuous("Breakout-v5")
    assert "EnvPool MuJoCo" in describe_protocol(EnvConfig(env_id="HalfCheetah-v4"))
    assert "classic control" in describe_protocol(EnvConfig(env_id="CartPole-v1"))
    from fastdqn.cli import main

    assert main(["envs"]) == 0
    listing = capsys.readouterr().out
    mujoco = listing[listing.index("MuJoCo"):]
    for task in ("HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "Ant-v4"):
        assert task in mujoco
