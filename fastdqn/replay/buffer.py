"""Proportional prioritized replay (uniform with alpha = 0) over a per-env frame ring.

Only the newest frame of each observation is stored; stacked observations, n-step
returns and discounts are rebuilt at sample time (see ``ring.py`` for the record layout
and the validity rule, ``segment_tree.py`` for the trees).
"""

from __future__ import annotations

import math
import mmap
from typing import NamedTuple

import numba
import numpy as np
import psutil

from . import ring, segment_tree


class ReplaySample(NamedTuple):
    """One sampled batch. All arrays are owned by the buffer and overwritten by the next
    ``sample()`` call with the same batch size: copy (or move to the device) before that.

    ``obs`` / ``next_obs`` have shape (B, stack, *frame_shape), or (B, *frame_shape) when
    stack == 1 — the same layout ``add()`` receives. They may be strided views of one
    window buffer (see ``PrioritizedReplay.sample``). ``next_obs`` is exact wherever
    ``discounts > 0``; where the episode terminated (discount 0) its content is unspecified.
    """

    indices: np.ndarray  # (B,) int64, for update_priorities
    weights: np.ndarray  # (B,) float32 importance weights, max 1
    obs: np.ndarray
    actions: np.ndarray  # (B,) int64
    returns: np.ndarray  # (B,) float32 n-step discounted reward sum
    discounts: np.ndarray  # (B,) float32: gamma^m, or 0 at a terminal
    next_obs: np.ndarray


class _Outputs:
    """Preallocated output arrays for one batch size (a fresh multi-MB array per call would
    page-fault on every call)."""

    def __init__(self, batch: int, stack: int, n_step: int, frame_shape, dtype, use_window=True):
        frame_size = math.prod(frame_shape)
        # The window holds stack + n frames when obs and next_obs overlap (n < stack);
        # otherwise the two are gathered separately and the window is just obs.
        self.windowed = use_window and n_step < stack
        width = stack + n_step if self.windowed else stack
        self.uniforms = np.empty(batch, np.float64)
        self.indices = np.empty(batch, np.int64)
        self.weights = np.empty(batch, np.float32)
        self.actions = np.empty(batch, np.int64)
        self.returns = np.empty(batch, np.float32)
        self.discounts = np.empty(batch, np.float32)
        self.horizon = np.empty(batch, np.int64)
        self.window = _zeros((batch, width, frame_size), dtype)
        self.next_window = _zeros((batch, stack, frame_size), dtype)

        def shaped(a, start):
            v = a.reshape(batch, a.shape[1], *frame_shape)[:, start : start + stack]
            return v[:, 0] if stack == 1 else v

        head = (self.indices, self.weights)
        tail = (self.actions, self.returns, self.discounts)
        obs = shaped(self.window, 0)
        self.split = ReplaySample(*head, obs, *tail, shaped(self.next_window, 0))
        self.window_sample = (
            ReplaySample(*head, obs, *tail, shaped(self.window, n_step)) if self.windowed else None
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray))


@numba.njit(cache=True, nogil=True)
def _priorities_from_td(indices, td_abs, flags, alpha, eps, out):
    """out[i] = (|td_i| + eps)^alpha for still-valid records, 0 for records that died since
    they were sampled (they must stay unsampleable). Returns the largest priority, or -1.0
    for an index out of range, -2.0 for a non-finite td."""
    n = flags.shape[0]
    for i in range(indices.shape[0]):
        if indices[i] < 0 or indices[i] >= n:
            return -1.0
        if not np.isfinite(td_abs[i]):
            return -2.0
    top = 0.0
    for i in range(indices.shape[0]):
        if flags[indices[i]] & ring.VALID:
            p = (abs(td_abs[i]) + eps) ** alpha
            out[i] = p
            if p > top:
                top = p
        else:
            out[i] = 0.0
    return top


def _zeros(shape, dtype, fill=0) -> np.ndarray:
    """np.zeros for large arrays, backed by transparent huge pages where the OS offers them.

    The frame ring is gigabytes read at random: with 4 KiB pages its first fill page-faults
    once per 4 KiB (measured 66k inserts/s at 1M frames) and every sampled window misses the
    TLB; with 2 MiB pages (MADV_HUGEPAGE) the first fill measured 835k inserts/s and the
    batch-256 gather ~10 % faster. Small arrays, and systems without madvise, get np.zeros.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < 1 << 22 or advice is None:
        return np.full(shape, fill, dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        memory.madvise(advice)
    except OSError:  # THP disabled: still correct, only slower
        pass
    array = np.frombuffer(memory, dtype).reshape(shape)  # anonymous memory starts zeroed
    if fill != 0:
        array.fill(fill)
    return array


def _storage_bytes(num_slots: int, frame_size: int, itemsize: int, num_envs: int) -> int:
    per_slot = frame_size * itemsize + 4 + 4 + 1 + 1  # frame, action, reward, flags, back
    trees = 2 * 2 * segment_tree.tree_size(num_slots) * 8
    return num_slots * per_slot + trees + num_envs * 8


class PrioritizedReplay:
    """Proportional prioritized replay with n-step returns over single stored frames.

    Args:
        capacity: records kept in total (one per env step); each env gets a lane of
            ``capacity // num_envs`` records.
        num_envs: number of environments feeding the buffer (env ids 0 .. num_envs-1).
        obs_shape: shape of ONE frame: (84, 84) for Atari, (4,) for CartPole.
        stack: frames per observation (4 for Atari, 1 for vector observations).
        n_step: n of the n-step return (>= 1).
        gamma: discount factor.
        alpha: priority exponent; 0 gives uniform replay (every priority is 1).
        eps: added to |td| before the exponent (> 0, keeps every transition sampleable).
        seed: seed of the sampling RNG (its state is part of ``state_dict``).
        obs_dtype: dtype of the observations (uint8 for Atari, float32 for CartPole).

    Not thread-safe: call add / sample / update_priorities from one thread at a time. The
    kernels are single-threaded on purpose: a parallel (prange) gather only helps while the
    other cores are idle, and in training they are not (EnvPool threads, the learner); on
    this 2-core machine it was measured 5-50x SLOWER whenever the other core was busy.
    """

    # Gather obs and next_obs as two views of one (stack + n)-frame window when n < stack.
    # Set to False (before the first sample) only to measure the alternative (bench/replay.py).
    _use_window = True

    def __init__(self, capacity: int, num_envs: int, obs_shape, stack: int = 4, n_step: int = 3,
                 gamma: float = 0.99, alpha: float = 0.6, eps: float = 0.01, seed: int = 0,
                 obs_dtype=np.uint8):
        self.frame_shape = tuple(int(s) for s in obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.capacity = int(capacity)
        self.num_envs = int(num_envs)
        self.stack = int(stack)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.eps = float(eps)
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not 1 <= self.stack <= 255:
            raise ValueError(f"stack must be in [1, 255], got {stack}")
        if self.n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if self.alpha < 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not self.eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not self.frame_shape or min(self.frame_shape) < 1:
            raise ValueError(f"obs_shape must be the non-empty shape of one frame, got {obs_shape}")
        minimum = self.num_envs * (self.stack + self.n_step + 1)
        if self.capacity < minimum:
            raise ValueError(
                f"capacity {capacity} is too small: it needs at least num_envs * (stack + n_step + 1)"
                f" = {self.num_envs} * ({self.stack} + {self.n_step} + 1) = {minimum}")
        self.lane = self.capacity // self.num_envs
        num_slots = self.lane * self.num_envs
        frame_size = math.prod(self.frame_shape)
        needed = _storage_bytes(num_slots, frame_size, self.obs_dtype.itemsize, self.num_envs)
        available = psutil.virtual_memory().available
        if needed > available:
            raise ValueError(
                f"replay capacity {capacity} of {self.frame_shape} {self.obs_dtype} frames needs"
                f" {needed:,} bytes ({needed / 2**30:.2f} GiB) but only {available:,} bytes"
                f" ({available / 2**30:.2f} GiB) of memory are available; lower the capacity")

        self._frames = _zeros((num_slots, frame_size), self.obs_dtype)
        self._actions = np.zeros(num_slots, np.int32)
        self._rewards = np.zeros(num_slots, np.float32)
        self._flags = np.zeros(num_slots, np.uint8)
        self._back = np.zeros(num_slots, np.uint8)
        self._written = np.zeros(self.num_envs, np.int64)
        self._tree_size = segment_tree.tree_size(num_slots)
        self._sum = _zeros(2 * self._tree_size, np.float64)
        self._min = _zeros(2 * self._tree_size, np.float64, fill=np.inf)
        self._leaves = self._sum[self._tree_size : self._tree_size + num_slots]
        self.max_priority = 1.0
        self._rng = np.random.Generator(np.random.PCG64(seed))
        # Per add(): at most `stack` records die and one becomes valid, per env.
        self._change_idx = np.empty(self.num_envs * (self.stack + 1), np.int64)
        self._change_val = np.empty(self.num_envs * (self.stack + 1), np.float64)
        self._outputs: dict[int, _Outputs] = {}
        self._td_priorities = np.empty(0, np.float64)

    # ------------------------------------------------------------------ adding

    def add(self, obs, actions, rewards, terminated, truncated, reset_step, new_game, env_ids=None):
        """Append one record per env in ``env_ids``: exactly what the env step returned.

        Args:
            obs: (B, stack, *obs_shape) (or (B, *obs_shape) when stack == 1); only the
                newest frame ``obs[:, -1]`` is stored.
            actions: (B,) ints, the action sent on the previous step of each env (that led
                to this obs); ignored on reset steps.
            rewards: (B,) the (clipped) reward of that transition.
            terminated: (B,) bool, training terminal (a life loss counts with episodic life).
            truncated: (B,) bool, time limit.
            reset_step: (B,) bool, this obs starts an episode (EnvPool auto-reset or first
                reset): the transition into it is never sampled.
            new_game: (B,) bool, EnvPool refilled the frame stack with this frame (first
                reset, after game over or truncation); implies reset_step.
            env_ids: (B,) distinct env ids, any subset in any order; None = all envs in order.
        """
        obs = np.asarray(obs)
        batch = obs.shape[0] if obs.ndim else 0
        if env_ids is None:
            env_ids = np.arange(self.num_envs)
        env_ids = self._vector("env_ids", env_ids, batch, "iu", np.int64)
        expected = (batch, self.stack, *self.frame_shape) if self.stack > 1 else (batch, *self.frame_shape)
        if obs.shape != expected:
            raise ValueError(f"obs has shape {obs.shape}, expected {expected} (B, stack, *obs_shape)"
                             if self.stack > 1 else
                             f"obs has shape {obs.shape}, expected {expected} (B, *obs_shape)")
        if obs.dtype != self.obs_dtype:
            raise TypeError(f"obs has dtype {obs.dtype}, expected {self.obs_dtype}")
        if batch > self.num_envs:
            raise ValueError(f"obs has {batch} rows but the buffer has only {self.num_envs} envs")
        actions = self._vector("actions", actions, batch, "iub", np.int64)
        rewards = self._vector("rewards", rewards, batch, "fiub", np.float32)
        terminated = self._vector("terminated", terminated, batch, "b", np.bool_)
        truncated = self._vector("truncated", truncated, batch, "b", np.bool_)
        reset_step = self._vector("reset_step", reset_step, batch, "b", np.bool_)
        new_game = self._vector("new_game", new_game, batch, "b", np.bool_)
        if batch == 0:
            return
        count = ring.add_records(
            obs.reshape(batch, self.stack, -1),
            env_ids, actions, rewards, terminated, truncated, reset_step, new_game,
            self._frames, self._actions, self._rewards, self._flags, self._back, self._written,
            self.stack, self.n_step, self.max_priority, self._change_idx, self._change_val,
        )
        if count < 0:
            self._raise_add_error(count, env_ids, reset_step, new_game)
        segment_tree.update(self._sum, self._min, self._change_idx, self._change_val, count)

    @staticmethod
    def _vector(name, x, batch, kinds, dtype):
        x = np.asarray(x)
        if x.shape != (batch,):
            raise ValueError(f"{name} has shape {x.shape}, expected ({batch},)")
        if x.dtype.kind not in kinds:
            raise TypeError(f"{name} has dtype {x.dtype}, expected kind(s) {kinds!r} (e.g. {np.dtype(dtype)})")
        return np.ascontiguousarray(x, dtype)

    def _raise_add_error(self, code, env_ids, reset_step, new_game):
        if code == ring.ERR_ENV_RANGE:
            raise ValueError(f"env_ids must be in [0, {self.num_envs}), got {env_ids.tolist()}")
        if code == ring.ERR_ENV_DUPLICATE:
            raise ValueError(f"env_ids must be distinct, got {env_ids.tolist()}")
        if code == ring.ERR_NEW_GAME_NOT_RESET:
            raise ValueError("new_game is True where reset_step is False (a new game is a reset step)")
        if code == ring.ERR_FIRST_NOT_NEW_GAME:
            first = env_ids[(self._written[env_ids] == 0) & ~new_game]
            raise ValueError(f"new_game must be True on the first record of an env (envs {first.tolist()})")
        raise RuntimeError(f"add_records failed with code {code}")

    # ------------------------------------------------------------------ sampling

    def sample(self, batch_size: int, beta: float) -> ReplaySample:
        """Draw ``batch_size`` transitions, one per equal stratum of the priority mass.

        Args:
            batch_size: transitions to draw.
            beta: importance-sampling exponent (annealed to 1 by the caller).

        Importance weights are (N P(i))^-beta / max_j (N P(j))^-beta = (p_i / p_min)^-beta,
        with p_min from the min tree.

        The returned arrays are preallocated and OVERWRITTEN by the next call with the same
        batch size (a fresh multi-MB array per call page-faults every time): copy them, or
        move them to the device, before sampling again (e.g. when sampling several batches
        ahead).

        When n_step < stack, ``obs`` and ``next_obs`` are normally two strided views of one
        (B, stack + n_step) window of frames: stack + n frame copies per sample instead of
        2 * stack (measured 4-8 % faster at 1M frames; the copy is the cost). A batch in which
        some sample was cut early by a truncation (its next stack sits m < n records ahead,
        which the window cannot hold when n < stack) gets its ``next_obs`` gathered into a
        separate buffer instead, so every bootstrapped ``next_obs`` is exact. With a 27k-step
        time limit that is under 2 % of batch-256 draws (fewer unless every episode reaches
        the limit), each costing one extra stack copy per sample.
        """
        out = self._outputs.get(batch_size)
        if out is None:
            if int(batch_size) != batch_size or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {batch_size}")
            out = self._outputs[batch_size] = _Outputs(
                batch_size, self.stack, self.n_step, self.frame_shape, self.obs_dtype, self._use_window)
        if not self._sum[1] > 0.0:
            raise ValueError(
                "nothing to sample yet: a record becomes sampleable once n_step more records of"
                f" its env are stored (n_step={self.n_step}); {len(self)} records are stored")
        if not beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self._rng.random(out=out.uniforms)
        segment_tree.find_stratified(self._sum, out.uniforms, out.indices)
        common = (out.indices, self._leaves, self._min[1], float(beta))
        targets = (out.weights, out.actions, out.returns, out.discounts, out.horizon)
        if out.windowed:
            early = ring.targets_and_window(*common, self._frames, self._back, self._actions, self._rewards,
                                            self._flags, self.lane, self.stack, self.n_step, self.gamma,
                                            *targets, out.window)
            if not early:
                return out.window_sample
        else:
            ring.nstep_targets(*common, self._actions, self._rewards, self._flags, self.lane, self.n_step,
                               self.gamma, *targets)
            ring.gather_window(out.indices, self._frames, self._back, self.lane, self.stack, out.window)
        # obs is in out.window[:, :stack]; the next stacks go to their own buffer.
        ring.gather_next(out.indices, out.horizon, self._frames, self._back, self.lane, self.stack,
                         out.next_window)
        return out.split

    def update_priorities(self, indices, td_abs) -> None:
        """Set the priorities of sampled records to (|td| + eps)^alpha; track the max.

        ``indices`` come from ``sample()``. Records that died since (their slot, or a slot
        their stack reads, was overwritten) stay unsampleable: their priority stays 0. With
        duplicate indices the last value wins. (A slot that was overwritten AND became valid
        again in between, which takes a whole lane of adds, gets the priority: harmless.)
        """
        indices = np.ascontiguousarray(indices, np.int64)
        td_abs = np.ascontiguousarray(td_abs, np.float64)
        if indices.ndim != 1 or td_abs.shape != indices.shape:
            raise ValueError(f"indices {indices.shape} and td_abs {td_abs.shape} must be equal 1-D shapes")
        if self._td_priorities.shape[0] < indices.shape[0]:
            self._td_priorities = np.empty(indices.shape[0], np.float64)
        top = _priorities_from_td(indices, td_abs, self._flags, self.alpha, self.eps, self._td_priorities)
        if top == -1.0:
            raise IndexError(f"indices out of range [0, {self._flags.shape[0]})")
        if top == -2.0:
            raise ValueError("td_abs contains NaN or inf")
        segment_tree.update(self._sum, self._min, indices, self._td_priorities, indices.shape[0])
        if top > self.max_priority:
            self.max_priority = top

    def stacked_obs(self, indices) -> np.ndarray:
        """The stacked observation of stored records (a new array, for tests and debugging).

        Works for any stored record whose stack is still intact, sampleable or not.
        """
        indices = np.ascontiguousarray(indices, np.int64).reshape(-1)
        out = np.empty((indices.shape[0], self.stack, math.prod(self.frame_shape)), self.obs_dtype)
        bad = ring.gather_stacks(indices, self._frames, self._back, self._written, self.stack, out)
        if bad >= 0:
            raise IndexError(f"record {indices[bad]} is not stored or its stack was overwritten")
        out = out.reshape(indices.shape[0], self.stack, *self.frame_shape)
        return out[:, 0] if self.stack == 1 else out

    def priorities(self) -> np.ndarray:
        """Priority of every slot (0 = not sampleable), a read-only view."""
        view = self._leaves.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ bookkeeping

    def __len__(self) -> int:
        """Records stored (at most lane * num_envs)."""
        return int(np.minimum(self._written, self.lane).sum())

    @property
    def nbytes(self) -> int:
        """Bytes of every array the buffer holds, sample output buffers included."""
        arrays = (self._frames, self._actions, self._rewards, self._flags, self._back, self._written,
                  self._sum, self._min, self._change_idx, self._change_val, self._td_priorities)
        return sum(a.nbytes for a in arrays) + sum(o.nbytes for o in self._outputs.values())

    def _config(self) -> dict:
        return {
            "capacity": np.int64(self.capacity),
            "num_envs": np.int64(self.num_envs),
            "obs_shape": np.asarray(self.frame_shape, np.int64),
            "stack": np.int64(self.stack),
            "n_step": np.int64(self.n_step),
            "gamma": np.float64(self.gamma),
            "alpha": np.float64(self.alpha),
            "eps": np.float64(self.eps),
            "obs_dtype": np.asarray(self.obs_dtype.str),
        }

    def state_dict(self) -> dict:
        """Everything needed to resume, as NumPy arrays and scalars only (no pickled objects;
        ``np.savez`` / ``np.load(allow_pickle=False)`` round-trip it). The big arrays are the
        buffer's own (not copies): save them before adding again."""
        rng = self._rng.bit_generator.state
        mask = (1 << 64) - 1
        rng_words = [rng["state"]["state"] >> 64, rng["state"]["state"] & mask,
                     rng["state"]["inc"] >> 64, rng["state"]["inc"] & mask,
                     rng["has_uint32"], rng["uinteger"]]
        return {
            **self._config(),
            "frames": self._frames,
            "actions": self._actions,
            "rewards": self._rewards,
            "flags": self._flags,
            "back": self._back,
            "written": self._written,
            "priorities": self._leaves,
            "max_priority": np.float64(self.max_priority),
            "rng_state": np.asarray(rng_words, np.uint64),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` taken from a buffer built with the same arguments."""
        mismatched = []
        for key, value in self._config().items():
            if key not in state:
                raise KeyError(f"state dict has no {key!r}")
            if not np.array_equal(np.asarray(state[key]), value):
                mismatched.append(f"{key}: saved {np.asarray(state[key]).tolist()} != {value.tolist()}")
        if mismatched:
            raise ValueError("replay state does not match this buffer: " + "; ".join(mismatched))
        for key, target in (("frames", self._frames), ("actions", self._actions),
                            ("rewards", self._rewards), ("flags", self._flags), ("back", self._back),
                            ("written", self._written), ("priorities", self._leaves)):
            source = np.asarray(state[key])
            if source.shape != target.shape:
                raise ValueError(f"state {key!r} has shape {source.shape}, expected {target.shape}")
            np.copyto(target, source, casting="same_kind")
        segment_tree.rebuild(self._sum, self._min)
        self.max_priority = float(state["max_priority"])
        words = [int(w) for w in np.asarray(state["rng_state"], np.uint64)]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": (words[0] << 64) | words[1], "inc": (words[2] << 64) | words[3]},
            "has_uint32": words[4],
            "uinteger": words[5],
        }
