"""Continuous actions in PrioritizedReplay (action_shape=(A,)): float32 vectors stored beside the
frames, sampled with the batch, checked against brute force from the episodes' logs."""

import numpy as np
import pytest

from fastdqn.replay import PrioritizedReplay, native
from test_replay import FakeEnvs, expected_transition, record_of, reference_valid

ACTION_DIM = 3


class ContinuousEnvs(FakeEnvs):
    """FakeEnvs whose actions are float32 vectors (each one distinct)."""

    def step(self, env_ids):
        out = super().step(env_ids)
        out["actions"] = self.rng.uniform(-1, 1, (len(env_ids), ACTION_DIM)).astype(np.float32)
        for i, e in enumerate(env_ids):
            self.log[e]["action"][-1] = out["actions"][i]
        return out


def check(rb, envs, s, n, gamma):
    assert s.actions.dtype == np.float32 and s.actions.shape == (len(s.indices), ACTION_DIM)
    for i, index in enumerate(s.indices):
        want = expected_transition(envs, *record_of(rb, index), n, gamma)
        np.testing.assert_array_equal(s.actions[i], want["action"])
        np.testing.assert_array_equal(s.obs[i], want["obs"][0])
        assert s.returns[i] == pytest.approx(want["ret"], rel=1e-6, abs=1e-6)
        assert s.discounts[i] == pytest.approx(want["discount"], rel=1e-6)
        if want["discount"] > 0:
            np.testing.assert_array_equal(s.next_obs[i], want["next_obs"][0])


def frames_devices():
    return [None, pytest.param("cpu", marks=pytest.mark.skipif(
        native.cpu_gather() is None, reason="the native CPU replay kernels are unavailable (no C++ compiler)"))]


@pytest.mark.parametrize("frames_device", frames_devices())
@pytest.mark.parametrize("n_step,alpha", [(1, 0.0), (3, 0.0), (3, 0.6)])
def test_float_actions_round_trip_through_add_and_sample(n_step, alpha, frames_device):
    gamma, num_envs, shape = 0.9, 3, (5,)
    rb = PrioritizedReplay(capacity=num_envs * 40, num_envs=num_envs, obs_shape=shape, stack=1, n_step=n_step,
                           gamma=gamma, alpha=alpha, seed=1, obs_dtype=np.float32, action_shape=(ACTION_DIM,),
                           frames_device=frames_device)
    envs = ContinuousEnvs(num_envs, 1, shape, np.float32, seed=2, p_life_loss=0.06, p_game_over=0.03,
                          p_truncate=0.05, p_explicit_reset=0.02)
    rng = np.random.default_rng(3)
    for _ in range(6):  # lanes of 40 records wrap several times
        for _ in range(30):
            ids = rng.permutation(num_envs)[: rng.integers(1, num_envs + 1)]
            rb.add(**envs.step(ids))
        valid = reference_valid(rb, envs, n_step, 1)
        if alpha == 0.0:  # every valid record is drawn exactly twice
            s = rb.sample(2 * len(valid), beta=0.5)
            assert set(s.indices.tolist()) == valid
        else:
            s = rb.sample(64, beta=0.5)
            assert set(s.indices.tolist()) <= valid
            rb.update_priorities(s.indices, rng.uniform(0, 3, len(s.indices)))
        check(rb, envs, s, n_step, gamma)
        check(rb, envs, rb.sample(8, beta=0.5, slot=1), n_step, gamma)


def test_float_actions_survive_state_dict_and_are_checked():
    rb = PrioritizedReplay(capacity=60, num_envs=2, obs_shape=(4,), stack=1, n_step=2, obs_dtype=np.float32,
                           action_shape=(ACTION_DIM,))
    envs = ContinuousEnvs(2, 1, (4,), np.float32, seed=4)
    for _ in range(50):
        rb.add(**envs.step(np.arange(2)))
    other = PrioritizedReplay(capacity=60, num_envs=2, obs_shape=(4,), stack=1, n_step=2, obs_dtype=np.float32,
                              action_shape=(ACTION_DIM,))
    other.load_state_dict({k: np.copy(v) for k, v in rb.state_dict().items()})
    a, b = rb.sample(16, beta=0.4), other.sample(16, beta=0.4)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.actions, b.actions)
    check(other, envs, b, 2, other.gamma)

    discrete = PrioritizedReplay(capacity=60, num_envs=2, obs_shape=(4,), stack=1, n_step=2, obs_dtype=np.float32)
    with pytest.raises(ValueError, match=r"action_shape: saved \[3\] != \(\)"):
        discrete.load_state_dict(rb.state_dict())
    with pytest.raises(KeyError, match="action_shape"):
        other.load_state_dict(discrete.state_dict())
    with pytest.raises(ValueError, match="action_shape"):
        other.load_state_dict({**discrete.state_dict(), "action_shape": np.array([2])})
    step = envs.step(np.arange(2))
    with pytest.raises(ValueError, match=r"actions has shape \(2,\), expected \(2, 3\)"):
        rb.add(**{**step, "actions": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="action_shape"):
        PrioritizedReplay(capacity=60, num_envs=2, obs_shape=(4,), stack=1, action_shape=(2, 2))
