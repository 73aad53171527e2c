"""The on-policy rollout store and its returns: lambda_returns against the textbook definitions
(weighted n-step returns; GAE's sum of TD errors), terminals, truncations, the rollout's last step,
EnvPool's reset steps, and the frame stacks rebuilt exactly as EnvPool returned them."""

import numpy as np
import pytest
import torch

from fastdqn.actor import Actor, store
from fastdqn.acting import EpsilonGreedy
from fastdqn.envs import EnvConfig, VecEnv
from fastdqn.rollout import RolloutStore, continues, lambda_returns


def _chain_end(chain, t):
    """L: the chain from step t runs through steps t .. t + L."""
    length = 0
    while chain[t + length]:
        length += 1
    return length


def reference_lambda_return(rewards, terminated, chain, next_values, gamma, lam, t):
    """The lambda-return of step t of one env by its definition: (1 - lam) sum_n lam^(n-1) G^(n) over
    the n-step returns that stay in the episode, the rest of the weight on the longest one."""
    length = _chain_end(chain, t)

    def n_step(n):  # r_t + ... + gamma^(n-1) r_{t+n-1} + gamma^n * bootstrap of step t+n-1
        last = t + n - 1
        total = sum(gamma ** i * rewards[t + i] for i in range(n))
        return total + (0.0 if terminated[last] else gamma ** n * next_values[last])

    mixed = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, length + 1))
    return mixed + lam ** length * n_step(length + 1)


def reference_gae(rewards, terminated, chain, values, next_values, gamma, lam, t):
    """GAE(lambda) as Schulman et al. write it: sum_k (gamma lam)^k delta_{t+k} along the episode."""
    length = _chain_end(chain, t)
    delta = [rewards[j] + (0.0 if terminated[j] else gamma * next_values[j]) - values[j] for j in range(len(rewards))]
    return sum((gamma * lam) ** k * delta[t + k] for k in range(length + 1))


def random_rollout(steps=9, envs=5, seed=0):
    """Flags as EnvPool makes them: after a terminal or a truncation the next row is a reset step."""
    rng = np.random.default_rng(seed)
    terminated = rng.random((steps, envs)) < 0.15
    truncated = ~terminated & (rng.random((steps, envs)) < 0.1)
    valid = np.ones((steps, envs), bool)
    valid[1:] = ~(terminated[:-1] | truncated[:-1])
    valid[4, 0] = False  # a resume's new games: a reset after a step that did not end
    terminated &= valid
    truncated &= valid
    rewards = rng.normal(size=(steps, envs)).astype(np.float32)
    next_values = rng.normal(size=(steps, envs)).astype(np.float32) * 3
    values = rng.normal(size=(steps, envs)).astype(np.float32)
    return rewards, terminated, truncated, valid, next_values, values


@pytest.mark.parametrize("lam", [0.0, 0.65, 0.95, 1.0])
def test_lambda_returns_match_the_weighted_n_step_definition(lam):
    rewards, terminated, truncated, valid, next_values, _ = random_rollout()
    chain = continues(terminated, truncated, valid)
    got = lambda_returns(*map(torch.as_tensor, (rewards, terminated, chain, next_values)), 0.9, lam).numpy()
    for env in range(rewards.shape[1]):
        for t in range(rewards.shape[0]):
            if not valid[t, env]:
                continue  # (no transition: never learned from)
            want = reference_lambda_return(rewards[:, env], terminated[:, env], chain[:, env], next_values[:, env],
                                           0.9, lam, t)
            assert got[t, env] == pytest.approx(want, rel=1e-5, abs=1e-5), (t, env)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_return_minus_the_value_is_gae(lam):
    rewards, terminated, truncated, valid, next_values, values = random_rollout(seed=3)
    chain = continues(terminated, truncated, valid)
    # V(s_{t+1}) is V of the next row where the chain goes on (a real value function is consistent so)
    next_values[:-1] = np.where(chain[:-1], values[1:], next_values[:-1])
    returns = lambda_returns(*map(torch.as_tensor, (rewards, terminated, chain, next_values)), 0.99, lam).numpy()
    for env in range(rewards.shape[1]):
        for t in np.flatnonzero(valid[:, env]):
            want = reference_gae(rewards[:, env], terminated[:, env], chain[:, env], values[:, env], next_values[:, env],
                                 0.99, lam, t)
            assert returns[t, env] - values[t, env] == pytest.approx(want, rel=1e-5, abs=1e-5), (t, env)


def test_terminals_stop_the_bootstrap_truncations_and_the_last_step_bootstrap():
    # one env, 4 steps: step 0 is truncated (bootstraps from the value of its final obs), step 1 is
    # the reset after it (no transition), step 2 terminates, step 3 is cut by the rollout's end.
    rewards = torch.tensor([[1.0], [0.0], [2.0], [3.0]])
    terminated = torch.tensor([[False], [False], [True], [False]])
    truncated = np.array([[True], [False], [False], [False]])
    valid = np.array([[True], [False], [True], [True]])
    chain = torch.as_tensor(continues(terminated.numpy(), truncated, valid))
    assert chain.flatten().tolist() == [False, True, False, False]
    next_values = torch.tensor([[10.0], [20.0], [30.0], [40.0]])
    for lam in (0.0, 0.5, 1.0):
        g = lambda_returns(rewards, terminated, chain, next_values, 0.5, lam).flatten()
        assert g[0] == 1.0 + 0.5 * 10.0  # truncated: r + gamma V(final obs), never past the episode
        assert g[2] == 2.0  # terminal: no bootstrap
        assert g[3] == 3.0 + 0.5 * 40.0  # the rollout's last step: bootstrap from V(s_T)
    # Peng's Q(lambda) at lam = 0.5 along a chain: G_0 = r_0 + gamma ((1 - lam) next_0 + lam G_1)
    rewards, terminated = torch.tensor([[1.0], [1.0]]), torch.tensor([[False], [False]])
    chain = torch.tensor([[True], [False]])
    g = lambda_returns(rewards, terminated, chain, torch.tensor([[4.0], [8.0]]), 0.5, 0.5).flatten()
    assert g[1] == 1.0 + 0.5 * 8.0 and g[0] == 1.0 + 0.5 * (0.5 * 4.0 + 0.5 * 5.0)


def _records(store_, rows):
    """Add rows of (obs, action, reward, terminated, truncated, reset) for 2 vector envs."""
    for obs, action, reward, term, trunc, reset in rows:
        store_.add(np.asarray(obs, np.float32), np.asarray(action), np.asarray(reward, np.float32),
                   np.asarray(term), np.asarray(trunc), np.asarray(reset), np.asarray(reset))


def test_the_rollout_pairs_each_transition_with_the_action_that_led_to_its_next_row_and_carries_its_end():
    store_ = RolloutStore(3, 2, (1,), obs_dtype=np.float32)
    f, t = False, True
    _records(store_, [([[0], [10]], [0, 0], [0, 0], [f, f], [f, f], [t, t]),
                      ([[1], [11]], [5, 6], [1, 2], [f, t], [f, f], [f, f]),
                      ([[2], [12]], [7, 8], [3, 4], [f, f], [t, f], [f, t])])
    assert not store_.full and len(store_) == 4
    _records(store_, [([[3], [13]], [9, 4], [5, 6], [f, f], [f, f], [t, f])])
    assert store_.full and len(store_) == 6
    b = store_.batch()
    assert b["actions"].tolist() == [[5, 6], [7, 8], [9, 4]]
    assert b["rewards"].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert b["valid"].tolist() == [[t, t], [t, f], [f, t]]  # the steps into reset rows are no transitions
    # (env 1's step 1 is no transition: its chain is read by nobody, step 0 ended its episode)
    assert b["chain"].tolist() == [[t, f], [f, t], [f, f]]
    with pytest.raises(RuntimeError, match="full"):
        _records(store_, [([[4], [14]], [0, 0], [0, 0], [f, f], [f, f], [f, f])])
    store_.start_next()
    assert len(store_) == 0 and store_.obs[0].tolist() == [[3], [13]] and store_.reset_step[0].tolist() == [t, f]
    with pytest.raises(ValueError, match="all 2 envs"):
        store_.add(np.zeros((1, 1), np.float32), [0], [0.0], [f], [f], [f], [f], env_ids=[1])


def test_the_rollout_rebuilds_envpool_frame_stacks_across_life_losses_game_overs_and_rollouts():
    env = VecEnv(EnvConfig(env_id="Breakout-v5", num_envs=3, seed=5, max_episode_steps=150))
    rng = np.random.default_rng(0)

    class Random(EpsilonGreedy):  # uniformly random actions (epsilon 1), no network needed
        def __init__(self):
            super().__init__(None, env.num_actions, torch.device("cpu"))

    actor = Actor(env, Random(), rng)
    store_ = RolloutStore(16, env.num_envs, env.frame_shape, env.stack, env.obs_dtype)
    records, seen = actor.reset(), {"life": 0, "new_game": 0}
    step = actor._step
    for _ in range(400):
        store(store_, records)
        np.testing.assert_array_equal(store_.obs[store_.rows - 1, step.env_ids], step.obs)
        seen["new_game"] += int(step.new_game.sum())
        seen["life"] += int((step.reset_step & ~step.new_game).sum())
        if store_.full:
            store_.start_next()
        actor.send(1.0)
        records = actor.recv()
        step = actor._step
    env.close()
    assert seen["life"] > 3 and seen["new_game"] > env.num_envs  # life losses and new games (game over, time limit)
