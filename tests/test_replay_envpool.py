"""The replay rebuilds, byte for byte, the stacked obs EnvPool returned: real Breakout runs
with life losses, game overs, time limits and auto-resets, in sync and async mode.

Written against envpool directly (with its own tiny reset bookkeeping) so that it pins the
replay's contract with EnvPool itself, independently of the env layer.
"""

import numpy as np
import pytest

envpool = pytest.importorskip("envpool")

from fastdqn.replay import PrioritizedReplay  # noqa: E402

STACK, N_STEP, GAMMA = 4, 3, 0.99


def run_breakout(num_envs, batch_size, steps, lane, seed):
    env = envpool.make("Breakout-v5", env_type="gymnasium", num_envs=num_envs, batch_size=batch_size,
                       episodic_life=True, reward_clip=True, max_episode_steps=200,
                       repeat_action_probability=0.0, seed=seed)
    rb = PrioritizedReplay(capacity=num_envs * lane, num_envs=num_envs, obs_shape=(84, 84), stack=STACK,
                           n_step=N_STEP, gamma=GAMMA, alpha=0.6, seed=seed)
    rng = np.random.default_rng(seed)
    log = [dict(obs=[], action=[], reward=[], term=[], trunc=[], reset=[]) for _ in range(num_envs)]
    done = np.ones(num_envs, bool)  # before the first obs every env counts as done
    game_over = np.ones(num_envs, bool)
    last_action = np.zeros(num_envs, np.int64)
    counts = dict(life_loss=0, game_over=0, truncated=0, sampled=0, bootstrapped_early=0)

    env.async_reset()
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.recv()
        ids = np.asarray(info["env_id"])
        reset_step = done[ids].copy()
        new_game = reset_step & game_over[ids]
        rb.add(obs, last_action[ids], reward, terminated, truncated, reset_step, new_game, ids)
        for i, e in enumerate(ids):
            log[e]["obs"].append(obs[i].copy())
            log[e]["action"].append(last_action[e])
            log[e]["reward"].append(float(reward[i]))
            log[e]["term"].append(bool(terminated[i]))
            log[e]["trunc"].append(bool(truncated[i]))
            log[e]["reset"].append(bool(reset_step[i]))
            # every stored step, right when it is stored (before the ring can overwrite it)
            k = len(log[e]["obs"]) - 1
            np.testing.assert_array_equal(rb.stacked_obs([e * rb.lane + k % rb.lane])[0], obs[i])
        done[ids] = terminated | truncated
        game_over[ids] = np.asarray(info["terminated"], bool) | truncated
        counts["life_loss"] += int((terminated & ~np.asarray(info["terminated"], bool)).sum())
        counts["game_over"] += int(np.asarray(info["terminated"], bool).sum())
        counts["truncated"] += int(truncated.sum())

        if len(rb) > 8 * num_envs and rng.random() < 0.2:
            s = rb.sample(32, beta=0.5)
            check_sample(rb, log, s, counts)
            rb.update_priorities(s.indices, rng.exponential(1.0, 32))

        actions = rng.integers(0, 4, len(ids))
        last_action[ids] = actions
        env.send(actions, ids)
    env.close()

    # and again at the end, every record still stored (its stack still in the ring)
    for e in range(num_envs):
        w = len(log[e]["obs"])
        for k in range(max(0, w - rb.lane + STACK - 1), w):
            np.testing.assert_array_equal(rb.stacked_obs([e * rb.lane + k % rb.lane])[0], log[e]["obs"][k])
    return counts


def check_sample(rb, log, s, counts):
    for i, index in enumerate(s.indices):
        e, slot = divmod(int(index), rb.lane)
        w = len(log[e]["obs"])
        k = w - 1 - (w - 1 - slot) % rb.lane
        lg = log[e]
        assert not lg["reset"][k + 1] and k + N_STEP < w
        ret, m, discount = 0.0, N_STEP, GAMMA ** N_STEP
        for j in range(1, N_STEP + 1):
            ret += GAMMA ** (j - 1) * lg["reward"][k + j]
            if lg["term"][k + j]:
                m, discount = j, 0.0
                break
            if lg["trunc"][k + j]:
                m, discount = j, GAMMA ** j
                break
        np.testing.assert_array_equal(s.obs[i], lg["obs"][k])
        assert s.actions[i] == lg["action"][k + 1]
        assert s.returns[i] == pytest.approx(ret, abs=1e-6)
        assert s.discounts[i] == pytest.approx(discount, rel=1e-6)
        if discount > 0:
            np.testing.assert_array_equal(s.next_obs[i], lg["obs"][k + m])
            counts["bootstrapped_early"] += m < N_STEP
        counts["sampled"] += 1


@pytest.mark.parametrize("num_envs,batch_size,steps", [(4, 4, 900), (6, 3, 1500)], ids=["sync", "async"])
def test_rebuilt_stacks_equal_envpool_obs_on_every_stored_step(num_envs, batch_size, steps):
    # lanes of 150 records: each env writes 450-750, so every lane wraps several times
    counts = run_breakout(num_envs, batch_size, steps, lane=150, seed=3)
    assert counts["life_loss"] > 10 and counts["game_over"] > 0 and counts["truncated"] > 0, counts
    assert counts["sampled"] > 1000, counts
