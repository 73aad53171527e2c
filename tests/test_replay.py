"""PrioritizedReplay against brute-force references on synthetic episodes."""

import json

import numpy as np
import pytest
from scipy import stats

from fastdqn.replay import PrioritizedReplay


class FakeEnvs:
    """Synthetic vectorized episodes that follow the env-layer contract.

    Every frame is unique (it encodes env and step). The stack handed to add() is built
    the way EnvPool builds it: a new game fills it with the first frame, every other step
    (life-loss auto-resets included) shifts it. Everything is logged per env so that any
    transition can be recomputed by brute force.
    """

    def __init__(self, num_envs, stack, frame_shape=(3,), dtype=np.uint8, seed=0,
                 p_life_loss=0.04, p_game_over=0.02, p_truncate=0.02, p_explicit_reset=0.005):
        self.rng = np.random.default_rng(seed)
        self.num_envs, self.stack, self.frame_shape, self.dtype = num_envs, stack, frame_shape, dtype
        self.p = (p_life_loss, p_game_over, p_truncate, p_explicit_reset)
        self.stacks = np.zeros((num_envs, stack, *frame_shape), dtype)
        self.done = np.ones(num_envs, bool)
        self.game_over = np.ones(num_envs, bool)
        self.log = [dict(obs=[], action=[], reward=[], term=[], trunc=[], reset=[], game_start=[])
                    for _ in range(num_envs)]

    def frame(self, env, k):
        f = np.zeros(int(np.prod(self.frame_shape)), np.int64)
        f[0], f[1 % f.size] = env, k
        f[2:] = self.rng.integers(0, 100, max(f.size - 2, 0))
        if np.issubdtype(self.dtype, np.integer):
            f[1 % f.size] %= 256
            if f.size > 2:
                f[2] = k // 256
        return f.reshape(self.frame_shape).astype(self.dtype)

    def step(self, env_ids):
        """One add() worth of records for the envs in env_ids."""
        life, over, trunc_p, explicit = self.p
        batch = len(env_ids)
        out = dict(obs=np.zeros((batch, self.stack, *self.frame_shape), self.dtype),
                   actions=self.rng.integers(0, 6, batch), rewards=self.rng.integers(-1, 2, batch).astype(np.float32),
                   terminated=np.zeros(batch, bool), truncated=np.zeros(batch, bool),
                   reset_step=np.zeros(batch, bool), new_game=np.zeros(batch, bool), env_ids=np.asarray(env_ids))
        for i, e in enumerate(env_ids):
            k = len(self.log[e]["obs"])
            forced = k > 0 and not self.done[e] and self.rng.random() < explicit  # e.g. VecEnv.reset()
            reset = self.done[e] or forced
            new_game = reset and (self.game_over[e] or forced)
            frame = self.frame(e, k)
            if new_game:
                self.stacks[e] = frame
            else:
                self.stacks[e, :-1] = self.stacks[e, 1:]
                self.stacks[e, -1] = frame
            u = self.rng.random()
            term = not reset and u < life + over
            game_over = not reset and u < over
            trunc = not reset and self.rng.random() < trunc_p
            self.done[e] = term or trunc
            self.game_over[e] = game_over or trunc
            out["obs"][i] = self.stacks[e]
            out["terminated"][i], out["truncated"][i] = term, trunc
            out["reset_step"][i], out["new_game"][i] = reset, new_game
            log = self.log[e]
            log["obs"].append(self.stacks[e].copy())
            log["action"].append(out["actions"][i])
            log["reward"].append(out["rewards"][i])
            log["term"].append(term)
            log["trunc"].append(trunc)
            log["reset"].append(reset)
            log["game_start"].append(k if new_game else log["game_start"][-1])
        if self.stack == 1:
            out["obs"] = out["obs"][:, 0]
        return out


def expected_transition(envs, e, k, n, gamma):
    """Brute force: the transition sampled at record k of env e."""
    log = envs.log[e]
    ret, m, discount = 0.0, n, None
    for j in range(1, n + 1):
        ret += gamma ** (j - 1) * log["reward"][k + j]
        if log["term"][k + j]:
            m, discount = j, 0.0
            break
        if log["trunc"][k + j] or (j < n and log["reset"][k + j + 1]):
            m, discount = j, gamma ** j
            break
    if discount is None:
        discount = gamma ** n
    return dict(obs=log["obs"][k], action=log["action"][k + 1], ret=ret, discount=discount,
                next_obs=log["obs"][k + m])


def record_of(rb, index):
    """(env, record number k) held by a global slot index."""
    e, slot = divmod(int(index), rb.lane)
    w = int(rb._written[e])
    return e, w - 1 - (w - 1 - slot) % rb.lane


def reference_valid(rb, envs, n, stack):
    """Set of global slot indices that may be sampled, from first principles: the records
    the transition reads (stack frames of its game, the n records after it) are all still
    stored, and the record after it is not a reset step."""
    valid = set()
    for e in range(rb.num_envs):
        log = envs.log[e]
        w = len(log["obs"])
        oldest = max(0, w - rb.lane)
        for k in range(oldest, w - n):
            if log["reset"][k + 1]:
                continue
            first_needed = max(k - stack + 1, log["game_start"][k])
            if first_needed >= oldest:
                valid.add(e * rb.lane + k % rb.lane)
    return valid


def check_sample(rb, envs, s, n, gamma):
    for i, index in enumerate(s.indices):
        e, k = record_of(rb, index)
        want = expected_transition(envs, e, k, n, gamma)
        obs = s.obs[i] if rb.stack > 1 else s.obs[i][None]
        np.testing.assert_array_equal(obs, want["obs"])
        assert s.actions[i] == want["action"]
        assert s.returns[i] == pytest.approx(want["ret"], rel=1e-6, abs=1e-6)
        assert s.discounts[i] == pytest.approx(want["discount"], rel=1e-6)
        if want["discount"] > 0:  # bootstrapped: next_obs must be exact
            next_obs = s.next_obs[i] if rb.stack > 1 else s.next_obs[i][None]
            np.testing.assert_array_equal(next_obs, want["next_obs"])


def fill(rb, envs, steps, rng, asynchronous=True):
    for _ in range(steps):
        if asynchronous:
            ids = rng.permutation(rb.num_envs)[: rng.integers(1, rb.num_envs + 1)]
        else:
            ids = np.arange(rb.num_envs)
        rb.add(**envs.step(ids))


@pytest.mark.parametrize("stack,n_step,frame_shape,dtype", [
    (4, 3, (3,), np.uint8),      # window path (n < stack), split batches after early truncation cuts
    (4, 1, (2, 3), np.uint8),
    (2, 5, (3,), np.uint8),      # n >= stack: always split
    (1, 3, (4,), np.float32),    # vector observations (CartPole-like)
])
def test_every_valid_transition_matches_brute_force_across_wraps(stack, n_step, frame_shape, dtype):
    gamma = 0.9
    num_envs = 3
    rb = PrioritizedReplay(capacity=num_envs * 40, num_envs=num_envs, obs_shape=frame_shape, stack=stack,
                           n_step=n_step, gamma=gamma, alpha=0.0, seed=1, obs_dtype=dtype)
    envs = FakeEnvs(num_envs, stack, frame_shape, dtype, seed=2, p_life_loss=0.08, p_game_over=0.04,
                    p_truncate=0.06, p_explicit_reset=0.02)
    rng = np.random.default_rng(3)
    modes = set()
    for _ in range(6):  # lanes of 40 records wrap several times
        fill(rb, envs, 30, rng)
        valid = reference_valid(rb, envs, n_step, stack)
        # alpha = 0: every valid record has priority 1, so a stratified batch of 2x the
        # number of valid records draws each of them exactly twice.
        s = rb.sample(2 * len(valid), beta=0.5)
        assert set(s.indices.tolist()) == valid
        assert np.all(s.weights == 1.0)
        check_sample(rb, envs, s, n_step, gamma)
        for _ in range(20):  # small batches: mostly the window path when n < stack
            s = rb.sample(4, beta=0.5)
            modes.add(np.shares_memory(s.obs, s.next_obs))
            check_sample(rb, envs, s, n_step, gamma)
    # window views when n < stack; separate buffers when some sample was cut early by a
    # truncation (impossible with n = 1) or when n >= stack
    assert modes == ({True} if n_step == 1 else {True, False} if n_step < stack else {False})


def test_stacked_obs_of_every_stored_record_equals_what_the_env_returned():
    rb = PrioritizedReplay(capacity=4 * 25, num_envs=4, obs_shape=(3,), stack=4, n_step=3)
    envs = FakeEnvs(4, 4, seed=5)
    rng = np.random.default_rng(0)
    for _ in range(120):
        ids = rng.permutation(4)[: rng.integers(1, 5)]
        rb.add(**envs.step(ids))
        for e in ids:  # the newest record, right after it was stored
            k = len(envs.log[e]["obs"]) - 1
            np.testing.assert_array_equal(rb.stacked_obs([e * rb.lane + k % rb.lane])[0], envs.log[e]["obs"][k])
    for e in range(4):
        w = len(envs.log[e]["obs"])
        for k in range(max(0, w - rb.lane), w):
            idx = e * rb.lane + k % rb.lane
            if max(k - 3, envs.log[e]["game_start"][k]) >= w - rb.lane:  # stack still stored
                np.testing.assert_array_equal(rb.stacked_obs([idx])[0], envs.log[e]["obs"][k])


def test_no_invalid_index_in_a_million_draws_while_the_ring_wraps():
    num_envs, stack, n_step = 4, 4, 3
    rb = PrioritizedReplay(capacity=num_envs * 16, num_envs=num_envs, obs_shape=(1,), stack=stack,
                           n_step=n_step, alpha=0.6, seed=0)
    envs = FakeEnvs(num_envs, stack, (3,), seed=1, p_life_loss=0.15, p_game_over=0.1, p_truncate=0.1)
    rng = np.random.default_rng(0)

    def add_steps(count):
        for _ in range(count):
            step = envs.step(rng.permutation(num_envs)[: rng.integers(1, num_envs + 1)])
            step["obs"] = step["obs"][..., :1]  # frame content is not checked here
            rb.add(**step)

    def reference():
        valid = np.zeros(rb.lane * num_envs, bool)
        valid[list(reference_valid(rb, envs, n_step, stack))] = True
        return valid

    draws = 0
    while draws < 1_000_000:
        add_steps(2)
        valid = reference()
        if not valid.any():
            with pytest.raises(ValueError, match="nothing to sample yet"):
                rb.sample(5000, beta=0.4)
            continue
        s = rb.sample(5000, beta=0.4)
        assert valid[s.indices].all(), sorted(set(s.indices[~valid[s.indices]].tolist()))
        draws += 5000
        # Records die between sample() and update_priorities() (the learner is a step
        # behind); their new priorities must not bring them back.
        add_steps(1)
        rb.update_priorities(s.indices, rng.exponential(1.0, 5000))
        valid = reference()
        assert np.all(rb.priorities()[~valid] == 0) and np.all(rb.priorities()[valid] > 0)


def test_sampled_frequencies_follow_priorities_chi_square():
    rb = PrioritizedReplay(capacity=2 * 60, num_envs=2, obs_shape=(1,), stack=2, n_step=1, alpha=0.6, eps=0.01)
    envs = FakeEnvs(2, 2, (1,), seed=0, p_life_loss=0, p_game_over=0, p_truncate=0, p_explicit_reset=0)
    for _ in range(50):
        rb.add(**envs.step([0, 1]))
    valid = np.flatnonzero(rb.priorities() > 0)
    assert len(valid) == 2 * 49
    td = np.random.default_rng(0).exponential(1.0, len(valid))
    rb.update_priorities(valid, td)
    expected_p = (np.abs(td) + 0.01) ** 0.6
    np.testing.assert_allclose(rb.priorities()[valid], expected_p)
    counts = np.zeros(rb.priorities().shape[0])
    for _ in range(200):
        s = rb.sample(100, beta=0.7)
        np.add.at(counts, s.indices, 1)
        # importance weights: (N P(i))^-beta normalised by the largest = (p_i / p_min)^-beta
        p = rb.priorities()[s.indices]
        np.testing.assert_allclose(s.weights, (p / expected_p.min()) ** -0.7, rtol=1e-5)
    expected = expected_p / expected_p.sum() * counts.sum()
    chi2, pvalue = stats.chisquare(counts[valid], expected)
    assert pvalue > 1e-3, (chi2, pvalue)
    # and a wrong law is rejected: uniform frequencies are not what we drew
    assert stats.chisquare(counts[valid], np.full(len(valid), counts.sum() / len(valid)))[1] < 1e-6


def test_new_records_get_the_max_priority_and_updates_track_it():
    rb = PrioritizedReplay(capacity=2 * 30, num_envs=2, obs_shape=(1,), stack=2, n_step=2, alpha=0.5, eps=0.01)
    envs = FakeEnvs(2, 2, (1,), seed=0, p_life_loss=0, p_game_over=0, p_truncate=0, p_explicit_reset=0)
    for _ in range(6):
        rb.add(**envs.step([0, 1]))
    assert np.all(rb.priorities()[rb.priorities() > 0] == 1.0)
    idx = np.flatnonzero(rb.priorities() > 0)
    rb.update_priorities(idx[:2], [8.0, 0.5])
    assert rb.max_priority == pytest.approx(8.01 ** 0.5)
    rb.update_priorities(idx[:2], [0.0, 0.0])  # the max is a running max, not recomputed
    assert rb.max_priority == pytest.approx(8.01 ** 0.5)
    rb.add(**envs.step([0, 1]))
    new = np.setdiff1d(np.flatnonzero(rb.priorities() > 0), idx)
    assert len(new) == 2 and np.allclose(rb.priorities()[new], 8.01 ** 0.5)
    rb.update_priorities([idx[2], idx[2]], [1.0, 3.0])  # duplicates: the last one wins
    assert rb.priorities()[idx[2]] == pytest.approx(3.01 ** 0.5)


def test_uniform_replay_with_alpha_zero_ignores_td():
    rb = PrioritizedReplay(capacity=2 * 20, num_envs=2, obs_shape=(1,), stack=1, n_step=1, alpha=0.0)
    envs = FakeEnvs(2, 1, (1,), seed=0, p_life_loss=0, p_game_over=0, p_truncate=0, p_explicit_reset=0)
    for _ in range(10):
        rb.add(**envs.step([0, 1]))
    s = rb.sample(8, beta=1.0)
    rb.update_priorities(s.indices, np.arange(8) * 10.0)
    assert set(rb.priorities()[rb.priorities() > 0]) == {1.0}
    assert np.all(rb.sample(8, beta=1.0).weights == 1.0)


def test_state_dict_round_trips_through_npz_and_resumes_identically(tmp_path):
    def build():
        return PrioritizedReplay(capacity=3 * 20, num_envs=3, obs_shape=(2, 2), stack=3, n_step=2, seed=7)

    rb = build()
    envs = FakeEnvs(3, 3, (2, 2), seed=4)
    rng = np.random.default_rng(0)
    fill(rb, envs, 50, rng)
    s = rb.sample(16, 0.4)
    rb.update_priorities(s.indices, rng.random(16))
    state = rb.state_dict()
    np.savez(tmp_path / "rb.npz", **state)
    loaded = dict(np.load(tmp_path / "rb.npz", allow_pickle=False))
    assert all(isinstance(v, np.ndarray) for v in loaded.values())
    other = build()
    other.load_state_dict(loaded)
    assert len(other) == len(rb)
    np.testing.assert_array_equal(other.priorities(), rb.priorities())
    assert other.max_priority == rb.max_priority
    step = envs.step([2, 0])
    for buffer in (rb, other):
        buffer.add(**step)
    a, b = rb.sample(16, 0.4), other.sample(16, 0.4)  # same RNG state, same data
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="n_step"):
        PrioritizedReplay(capacity=60, num_envs=3, obs_shape=(2, 2), stack=3, n_step=3).load_state_dict(state)


def test_large_arrays_come_from_huge_page_memory_and_behave_like_numpy_zeros():
    from fastdqn.replay.buffer import _zeros

    big = _zeros((1 << 20, 8), np.uint8)  # 8 MiB: the mmap path
    assert big.shape == (1 << 20, 8) and big.dtype == np.uint8 and big.flags.writeable
    assert big.flags.c_contiguous and not big.any()
    big[-1] = 7
    assert big.sum() == 56
    inf = _zeros(1 << 20, np.float64, fill=np.inf)  # the min tree's initial value
    assert inf.shape == (1 << 20,) and np.isposinf(inf).all()
    small = _zeros((3, 4), np.float32, fill=2.0)
    np.testing.assert_array_equal(small, np.full((3, 4), 2.0, np.float32))


def test_len_and_nbytes():
    rb = PrioritizedReplay(capacity=2 * 10, num_envs=2, obs_shape=(84, 84), stack=4, n_step=3)
    envs = FakeEnvs(2, 4, (84, 84), seed=0)
    assert len(rb) == 0
    for _ in range(13):
        rb.add(**envs.step([0, 1]))
    assert len(rb) == 20
    assert rb.nbytes >= 20 * 84 * 84
    before = rb.nbytes
    rb.sample(2, 0.5)
    assert rb.nbytes > before + 2 * 7 * 84 * 84  # the preallocated outputs count too


def test_returned_arrays_are_reused_between_calls():
    rb = PrioritizedReplay(capacity=2 * 20, num_envs=2, obs_shape=(3,), stack=4, n_step=3)
    envs = FakeEnvs(2, 4, seed=0, p_truncate=0, p_explicit_reset=0)
    for _ in range(15):
        rb.add(**envs.step([0, 1]))
    a, b = rb.sample(8, 0.5), rb.sample(8, 0.5)
    assert a.obs is b.obs and a.indices is b.indices


# ---------------------------------------------------------------- bad input


def test_capacity_beyond_available_memory_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"needs [\d,]+ bytes .* only [\d,]+ bytes"):
        PrioritizedReplay(capacity=10**12, num_envs=16, obs_shape=(84, 84))


def test_capacity_too_small_for_the_windows_is_refused():
    with pytest.raises(ValueError, match=r"num_envs \* \(stack \+ n_step \+ 1\)"):
        PrioritizedReplay(capacity=16 * 8 - 1, num_envs=16, obs_shape=(84, 84), stack=4, n_step=3)
    PrioritizedReplay(capacity=16 * 8, num_envs=16, obs_shape=(84, 84), stack=4, n_step=3)


def test_sampling_before_anything_is_valid_is_a_clear_error():
    rb = PrioritizedReplay(capacity=2 * 10, num_envs=2, obs_shape=(3,), stack=4, n_step=3)
    with pytest.raises(ValueError, match="nothing to sample yet"):
        rb.sample(4, 0.4)
    envs = FakeEnvs(2, 4, seed=0, p_truncate=0, p_life_loss=0, p_game_over=0, p_explicit_reset=0)
    for _ in range(3):
        rb.add(**envs.step([0, 1]))
    with pytest.raises(ValueError, match="nothing to sample yet"):
        rb.sample(4, 0.4)
    rb.add(**envs.step([0, 1]))
    rb.sample(4, 0.4)


@pytest.mark.parametrize("field,value,error,pattern", [
    ("obs", np.zeros((2, 3, 3), np.uint8), ValueError, "obs has shape"),
    ("obs", np.zeros((2, 4, 3), np.float32), TypeError, "obs has dtype"),
    ("actions", np.zeros(3, np.int64), ValueError, "actions has shape"),
    ("actions", np.zeros(2, np.float32), TypeError, "actions has dtype"),
    ("rewards", np.zeros((2, 1), np.float32), ValueError, "rewards has shape"),
    ("terminated", np.zeros(2, np.int64), TypeError, "terminated has dtype"),
    ("truncated", np.zeros(1, bool), ValueError, "truncated has shape"),
    ("reset_step", np.zeros(2, np.float32), TypeError, "reset_step has dtype"),
    ("new_game", np.zeros(3, bool), ValueError, "new_game has shape"),
    ("env_ids", np.array([0, 0]), ValueError, "env_ids must be distinct"),
    ("env_ids", np.array([0, 5]), ValueError, r"env_ids must be in \[0, 2\)"),
    ("env_ids", np.array([0.0, 1.0]), TypeError, "env_ids has dtype"),
])
def test_bad_add_arguments_name_the_argument(field, value, error, pattern):
    rb = PrioritizedReplay(capacity=2 * 10, num_envs=2, obs_shape=(3,), stack=4, n_step=3)
    step = FakeEnvs(2, 4, seed=0).step([0, 1])
    step[field] = value
    with pytest.raises(error, match=pattern):
        rb.add(**step)
    assert len(rb) == 0  # nothing was written


def test_contract_violations_in_flags_are_refused():
    rb = PrioritizedReplay(capacity=2 * 10, num_envs=2, obs_shape=(3,), stack=4, n_step=3)
    step = FakeEnvs(2, 4, seed=0).step([0, 1])
    step["new_game"] = np.array([True, False])
    step["reset_step"] = np.array([True, False])
    with pytest.raises(ValueError, match=r"new_game must be True on the first record of an env \(envs \[1\]\)"):
        rb.add(**step)
    step["new_game"] = np.array([True, True])
    with pytest.raises(ValueError, match="new_game is True where reset_step is False"):
        rb.add(**step)


def test_bench_quick_runs_and_reports_its_figures(tmp_path):
    from bench import replay as bench

    path = tmp_path / "replay.json"
    bench.main(["--quick", "--json", str(path)])
    result = json.loads(path.read_text())
    assert result["config"]["capacity"] > 0
    assert result["insert_per_s"] > 0
    assert set(result["sample_update_per_s"]) == {str(b) for b in result["config"]["batch_sizes"]}
    assert all(v > 0 for v in result["sample_update_per_s"].values())
    assert 84 * 84 <= result["bytes_per_transition"] < 2 * 84 * 84
