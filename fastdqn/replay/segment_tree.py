"""Sum and min segment trees over flat arrays, with batched Numba kernels.

Layout: a tree over ``n`` leaves is an array of ``2 * size`` float64 values, where
``size`` is the smallest power of two >= n. Node 1 is the root, node ``i`` has the
children ``2i`` and ``2i + 1``, and leaf ``j`` lives at ``size + j``; entry 0 is unused.
Leaves past ``n`` stay at the neutral value (0 in the sum tree, +inf in the min tree).

The two trees are always updated together. Every parent is recomputed from its two
children (never adjusted by a delta), so sums do not drift however many updates run,
and a node is positive exactly when some leaf below it is positive.

The min tree holds the minimum over the *positive* leaves only (a zero leaf stores +inf
there): in the replay a zero priority means "not sampleable", and the smallest
sampleable priority gives the largest importance weight.

Kernels are plain functions of arrays; the small ``SumMinTree`` class wraps them for
Python callers and tests. The replay calls them from Python rather than from its own Numba
kernels on purpose: Numba's on-disk cache (cache=True) only notices edits to the file of the
function it compiled, so a kernel that called into this module would keep a stale copy.
"""

from __future__ import annotations

import numba
import numpy as np


def tree_size(n: int) -> int:
    """Number of leaves of the padded tree: the smallest power of two >= n (at least 1)."""
    size = 1
    while size < n:
        size *= 2
    return size


@numba.njit(cache=True, nogil=True)
def update(sum_tree, min_tree, indices, values, count):
    """Set leaf ``indices[i]`` to ``values[i]`` for i < count, then fix the ancestors.

    Duplicate indices are allowed: leaves are written in order, so the last write wins,
    and every touched path is recomputed afterwards from the final leaves.
    """
    size = sum_tree.shape[0] // 2
    nodes = np.empty(count, np.int64)
    for i in range(count):
        leaf = size + indices[i]
        v = values[i]
        sum_tree[leaf] = v
        min_tree[leaf] = v if v > 0.0 else np.inf
        nodes[i] = leaf // 2
    # All leaves sit at the same depth, so the paths climb in lockstep, one level per pass:
    # a parent is recomputed only after all its children below have been, and the loads of
    # one pass are independent (their cache misses overlap).
    level = size // 2
    while level >= 1:
        for i in range(count):
            node = nodes[i]
            left = 2 * node
            sum_tree[node] = sum_tree[left] + sum_tree[left + 1]
            a = min_tree[left]
            b = min_tree[left + 1]
            min_tree[node] = a if a < b else b
            nodes[i] = node // 2
        level //= 2


@numba.njit(cache=True, nogil=True)
def rebuild(sum_tree, min_tree):
    """Recompute every internal node from the sum-tree leaves (after a bulk load)."""
    size = sum_tree.shape[0] // 2
    for leaf in range(size, 2 * size):
        v = sum_tree[leaf]
        min_tree[leaf] = v if v > 0.0 else np.inf
    for node in range(size - 1, 0, -1):
        left = 2 * node
        sum_tree[node] = sum_tree[left] + sum_tree[left + 1]
        a = min_tree[left]
        b = min_tree[left + 1]
        min_tree[node] = a if a < b else b


@numba.njit(cache=True, nogil=True)
def _descend(sum_tree, target, out):
    # Walk every target down to the leaf whose prefix-sum interval holds it, one level per
    # pass over the batch (independent loads per pass, so cache misses overlap). Only
    # nodes with a positive sum are entered, so the leaf reached always has a positive
    # value, even when rounding pushes a target to (or past) the total.
    size = sum_tree.shape[0] // 2
    batch = out.shape[0]
    for i in range(batch):
        out[i] = 1
    level = 1
    while level < size:
        for i in range(batch):
            left = 2 * out[i]
            left_sum = sum_tree[left]
            t = target[i]
            if t < left_sum or sum_tree[left + 1] <= 0.0:
                out[i] = left
            else:
                target[i] = t - left_sum
                out[i] = left + 1
        level *= 2
    for i in range(batch):
        out[i] -= size


@numba.njit(cache=True, nogil=True)
def find_prefix(sum_tree, targets, out):
    """out[i] = the first leaf j with prefix_sum(0..j) > targets[i] (0 <= targets[i] < total).

    In exact arithmetic this is ``np.searchsorted(np.cumsum(leaves), targets, side="right")``.
    """
    _descend(sum_tree, targets.copy(), out)


@numba.njit(cache=True, nogil=True)
def find_stratified(sum_tree, uniforms, out):
    """Stratified search: split [0, total) into len(out) equal strata, draw one leaf in each.

    Sample i uses the target (i + uniforms[i]) * total / batch with uniforms in [0, 1).
    """
    batch = out.shape[0]
    segment = sum_tree[1] / batch
    target = np.empty(batch, np.float64)
    for i in range(batch):
        target[i] = (i + uniforms[i]) * segment
    _descend(sum_tree, target, out)


class SumMinTree:
    """A sum tree and a min tree over ``n`` leaves (all zero at first)."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"a tree needs at least one leaf, got n={n}")
        self.n = int(n)
        self.size = tree_size(self.n)
        self.sum_tree = np.zeros(2 * self.size, np.float64)
        self.min_tree = np.full(2 * self.size, np.inf, np.float64)

    def update(self, indices, values) -> None:
        """Set leaves ``indices`` to ``values`` (>= 0); with duplicates the last one wins."""
        indices = np.ascontiguousarray(indices, np.int64)
        values = np.ascontiguousarray(values, np.float64)
        if indices.shape != values.shape or indices.ndim != 1:
            raise ValueError(f"indices {indices.shape} and values {values.shape} must be equal 1-D shapes")
        if indices.size and (indices.min() < 0 or indices.max() >= self.n):
            raise IndexError(f"leaf index out of range [0, {self.n})")
        if not np.all(values >= 0.0) or not np.all(np.isfinite(values)):
            raise ValueError("values must be finite and >= 0")
        update(self.sum_tree, self.min_tree, indices, values, indices.shape[0])

    def find(self, targets) -> np.ndarray:
        """Leaf index for each prefix-sum target in [0, total)."""
        targets = np.ascontiguousarray(targets, np.float64)
        out = np.empty(targets.shape[0], np.int64)
        find_prefix(self.sum_tree, targets, out)
        return out

    def find_stratified(self, uniforms) -> np.ndarray:
        """One leaf per equal stratum of [0, total), given uniforms in [0, 1)."""
        uniforms = np.ascontiguousarray(uniforms, np.float64)
        out = np.empty(uniforms.shape[0], np.int64)
        find_stratified(self.sum_tree, uniforms, out)
        return out

    @property
    def total(self) -> float:
        return float(self.sum_tree[1])

    @property
    def min(self) -> float:
        """Smallest positive leaf (+inf when none is positive)."""
        return float(self.min_tree[1])

    @property
    def values(self) -> np.ndarray:
        """The leaves (a view)."""
        return self.sum_tree[self.size : self.size + self.n]
