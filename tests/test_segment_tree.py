"""The Numba sum / min trees against a plain NumPy reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdqn.replay import SumMinTree
from fastdqn.replay.segment_tree import tree_size


def reference_min(values):
    positive = values[values > 0]
    return positive.min() if positive.size else np.inf


def check_internal_nodes(tree):
    # every internal node is the sum / min of its two children
    size = tree.size
    for node in range(1, size):
        assert tree.sum_tree[node] == tree.sum_tree[2 * node] + tree.sum_tree[2 * node + 1]
        assert tree.min_tree[node] == min(tree.min_tree[2 * node], tree.min_tree[2 * node + 1])


# Priorities as multiples of 1/8 below 64: every partial sum is exact in float64, so the
# tree (summing in tree order) and np.cumsum (summing left to right) must agree bit for bit.
dyadic = st.integers(0, 512).map(lambda k: k / 8.0)


@st.composite
def operation_sequences(draw):
    n = draw(st.integers(1, 70))
    batches = draw(st.lists(
        st.lists(st.tuples(st.integers(0, n - 1), dyadic), min_size=1, max_size=40),
        min_size=1, max_size=12))
    return n, batches


@settings(max_examples=150, deadline=None)
@given(operation_sequences(), st.data())
def test_trees_match_numpy_reference_under_random_batched_updates(case, data):
    n, batches = case
    tree = SumMinTree(n)
    reference = np.zeros(n)
    for batch in batches:
        indices = np.array([i for i, _ in batch])
        values = np.array([v for _, v in batch])
        tree.update(indices, values)
        for i, v in batch:  # sequential writes: the last duplicate wins
            reference[i] = v
        np.testing.assert_array_equal(tree.values, reference)
        assert tree.total == reference.sum()
        assert tree.min == reference_min(reference)
        if reference.sum() > 0:
            cumsum = np.cumsum(reference)
            targets = np.array(data.draw(st.lists(
                st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=30))) * cumsum[-1]
            targets = np.concatenate([targets, cumsum[cumsum < cumsum[-1]]])  # exact boundaries
            np.testing.assert_array_equal(tree.find(targets), np.searchsorted(cumsum, targets, side="right"))
    check_internal_nodes(tree)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_stratified_search_is_searchsorted_of_stratum_targets(n, batch, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 40, n) / 4.0
    values[rng.integers(0, n)] = 1.0  # at least one positive leaf
    tree = SumMinTree(n)
    tree.update(np.arange(n), values)
    uniforms = rng.random(batch)
    expected_targets = (np.arange(batch) + uniforms) * (values.sum() / batch)
    found = tree.find_stratified(uniforms)
    np.testing.assert_array_equal(found, np.searchsorted(np.cumsum(values), expected_targets, side="right"))
    assert np.all(values[found] > 0)


def test_random_float_priorities_stay_consistent_after_many_updates():
    rng = np.random.default_rng(0)
    n = 1000
    tree = SumMinTree(n)
    reference = np.zeros(n)
    for _ in range(300):
        idx = rng.integers(0, n, 64)
        val = rng.random(64) * rng.choice([0.0, 1.0, 1e-6, 1e6], 64)
        tree.update(idx, val)
        for i, v in zip(idx, val):
            reference[i] = v
    np.testing.assert_array_equal(tree.values, reference)
    assert tree.total == pytest.approx(reference.sum(), rel=1e-12)
    assert tree.min == reference_min(reference)
    check_internal_nodes(tree)  # parents recomputed from children: no drift at all


def test_search_never_returns_a_zero_leaf_even_at_or_past_the_total():
    tree = SumMinTree(10)
    values = np.array([0, 0.1, 0, 0.2, 0, 0, 0.3, 0, 0, 0])
    tree.update(np.arange(10), values)
    targets = np.array([0.0, tree.total, tree.total * (1 + 1e-12), np.nextafter(tree.total, 0)])
    found = tree.find(targets)
    assert np.all(values[found] > 0)
    assert found[1] == found[2] == 6


def test_zero_leaves_are_ignored_by_the_min_tree():
    tree = SumMinTree(5)
    tree.update([0, 1, 2], [3.0, 0.5, 2.0])
    assert tree.min == 0.5
    tree.update([1], [0.0])
    assert tree.min == 2.0
    tree.update([0, 2], [0.0, 0.0])
    assert tree.min == np.inf and tree.total == 0.0


def test_tree_size_is_the_next_power_of_two():
    assert [tree_size(n) for n in (1, 2, 3, 4, 5, 1000, 1 << 20)] == [1, 2, 4, 4, 8, 1024, 1 << 20]


def test_bad_updates_are_refused():
    tree = SumMinTree(4)
    with pytest.raises(IndexError):
        tree.update([4], [1.0])
    with pytest.raises(ValueError):
        tree.update([0], [-1.0])
    with pytest.raises(ValueError):
        tree.update([0], [np.nan])
