"""The replay's sampling window against a plain buffer of the window's capacity."""

import numpy as np
import pytest

from fastdqn.replay import PrioritizedReplay
from test_replay import FakeEnvs, check_sample, record_of

NUM_ENVS, STACK, N_STEP, GAMMA = 3, 4, 3, 0.9
KEEP = 25  # records per lane in the window


def build(capacity, window=None, seed=5):
    return PrioritizedReplay(capacity=capacity, num_envs=NUM_ENVS, obs_shape=(3,), stack=STACK, n_step=N_STEP,
                             gamma=GAMMA, alpha=0.6, seed=seed, window=window)


def sampleable(rb):
    """{(env, record number): priority} of every record that may be sampled."""
    leaves = rb.priorities()
    return {record_of(rb, i): float(leaves[i]) for i in np.flatnonzero(leaves > 0)}


def slot_of(rb, env, k):
    return env * rb.lane + k % rb.lane


def add_to_all(buffers, envs, rng, synchronous=False):
    ids = np.arange(NUM_ENVS) if synchronous else rng.permutation(NUM_ENVS)[: rng.integers(1, NUM_ENVS + 1)]
    step = envs.step(ids)
    for rb in buffers:
        rb.add(**step)


def learn_in_both(sampled, other, rng):
    """Sample from one buffer and give the same records the same new priorities in the
    other, which holds them too (found by env and record number: their slots differ)."""
    s = sampled.sample(16, beta=0.5)
    td = rng.random(16) * 3
    sampled.update_priorities(s.indices, td)
    records = [record_of(sampled, i) for i in s.indices]
    other.update_priorities([slot_of(other, e, k) for e, k in records], td)
    return s


def fake_envs(seed):
    return FakeEnvs(NUM_ENVS, STACK, (3,), seed=seed, p_life_loss=0.08, p_game_over=0.04, p_truncate=0.03)


def test_a_window_samples_exactly_like_a_buffer_of_that_capacity():
    windowed, reference = build(4 * NUM_ENVS * KEEP, window=NUM_ENVS * KEEP), build(NUM_ENVS * KEEP)
    envs, rng = fake_envs(1), np.random.default_rng(2)
    compared = 0
    for step in range(400):  # the reference's lanes wrap many times, the windowed ones too
        add_to_all((windowed, reference), envs, rng)
        if step > 20 and step % 3 == 0:
            s = learn_in_both(windowed, reference, rng)
            check_sample(windowed, envs, s, N_STEP, GAMMA)  # the frames outside the window are intact
        if step > 20:
            assert sampleable(windowed) == sampleable(reference)
            assert windowed.max_priority == reference.max_priority
            compared += 1
    assert compared > 300 and len(sampleable(reference)) > NUM_ENVS * KEEP // 2  # not a trivial comparison


@pytest.mark.parametrize("how", ["attribute", "load_state_dict"])
def test_widening_the_window_brings_back_the_stored_records_it_covers(how):
    envs, rng = fake_envs(3), np.random.default_rng(4)
    windowed = build(4 * NUM_ENVS * KEEP, window=NUM_ENVS * KEEP)
    plain, small = build(4 * NUM_ENVS * KEEP), build(NUM_ENVS * KEEP)
    everything = (windowed, plain, small)
    for step in range(300):  # about 200 records per lane: some lanes have wrapped, some not
        add_to_all(everything, envs, rng)
        if step > 20 and step % 3 == 0:
            learn_in_both(windowed, small, rng)
    before = sampleable(windowed)
    if how == "attribute":
        widened = windowed
        widened.window = None
    else:  # a state saved with a window, loaded into a buffer without one
        widened = build(4 * NUM_ENVS * KEEP)
        widened.load_state_dict(windowed.state_dict())
    after = sampleable(widened)
    assert after.keys() == sampleable(plain).keys()
    assert len(after) > 2 * len(before)
    mean = np.mean(list(before.values()))
    for record, priority in after.items():  # the ones that stay keep theirs; the others get the mean
        assert priority == before.get(record, pytest.approx(mean, rel=1e-12))
    for _ in range(40):  # from here on it samples like the plain buffer
        add_to_all((widened, plain, small), envs, rng)
        assert sampleable(widened).keys() == sampleable(plain).keys()
    widened.window = NUM_ENVS * KEEP  # and narrowed again, like the small one
    assert sampleable(widened).keys() == sampleable(small).keys()


@pytest.mark.parametrize("how", ["attribute", "load_state_dict"])
def test_narrowing_the_window_drops_the_records_it_leaves_out_at_once(how):
    envs, rng = fake_envs(5), np.random.default_rng(6)
    wide, reference = build(4 * NUM_ENVS * KEEP), build(NUM_ENVS * KEEP)
    for step in range(200):
        add_to_all((wide, reference), envs, rng)
        if step > 20 and step % 4 == 0:  # the reference holds fewer records: sample from it
            learn_in_both(reference, wide, rng)
    assert len(sampleable(wide)) > len(sampleable(reference))
    if how == "attribute":
        narrowed = wide
        narrowed.window = NUM_ENVS * KEEP
    else:  # a state saved without a window, loaded into a buffer with one
        narrowed = build(4 * NUM_ENVS * KEEP, window=NUM_ENVS * KEEP)
        narrowed.load_state_dict(wide.state_dict())
    assert sampleable(narrowed) == sampleable(reference)
    for _ in range(60):
        add_to_all((narrowed, reference), envs, rng)
        learn_in_both(narrowed, reference, rng)
        assert sampleable(narrowed) == sampleable(reference)


@pytest.mark.parametrize("window", [0, NUM_ENVS * (STACK + N_STEP + 1) - 1, 4 * NUM_ENVS * KEEP + 1, 100.5, -3])
def test_a_window_outside_its_range_is_refused(window):
    with pytest.raises(ValueError, match="window must be None or an int in"):
        build(4 * NUM_ENVS * KEEP, window=window)
