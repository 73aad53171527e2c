"""Proportional prioritized replay (uniform with alpha = 0) over a per-env frame ring.

Only the newest frame of each observation is stored; stacked observations, n-step
returns and discounts are rebuilt at sample time (see ``ring.py`` for the record layout
and the validity rule, ``segment_tree.py`` for the trees).
"""

from __future__ import annotations

import math
import mmap
import warnings
from typing import NamedTuple

import numba
import numpy as np
import psutil

from . import ring, segment_tree


class NonFiniteTDError(ValueError):
    """update_priorities was given a NaN or infinite TD error: the learner diverged."""


class ReplaySample(NamedTuple):
    """One sampled batch. All arrays are owned by the buffer and overwritten by the next
    ``sample()`` call with the same batch size and slot: copy (or move to the device) before that.

    ``obs`` / ``next_obs`` have shape (B, stack, *frame_shape), or (B, *frame_shape) when
    stack == 1 — the same layout ``add()`` receives. They may be strided views of one
    window buffer (see ``PrioritizedReplay.sample``). ``next_obs`` is exact wherever
    ``discounts > 0``; where the episode terminated (discount 0) its content is unspecified.
    With ``frames_device`` set, ``obs`` / ``next_obs`` are torch tensors on that device (same
    shapes, dtype and views); the other fields are NumPy arrays either way.
    """

    indices: np.ndarray  # (B,) int64, for update_priorities
    weights: np.ndarray  # (B,) float32 importance weights, max 1
    obs: np.ndarray  # or a torch.Tensor on frames_device
    actions: np.ndarray  # (B,) int64, or (B, *action_shape) float32 (continuous actions)
    returns: np.ndarray  # (B,) float32 n-step discounted reward sum
    discounts: np.ndarray  # (B,) float32: gamma^m, or 0 at a terminal
    next_obs: np.ndarray  # or a torch.Tensor on frames_device


class _Outputs:
    """Preallocated output arrays for one batch size (a fresh multi-MB array per call would
    page-fault on every call). The frame buffers come from ``_frame_buffer``: host memory
    here, device tensors in ``_DeviceOutputs``."""

    def __init__(self, batch: int, stack: int, n_step: int, frame_shape, dtype, use_window=True,
                 action_shape=()):
        frame_size = math.prod(frame_shape)
        # The window holds stack + n frames when obs and next_obs overlap (n < stack);
        # otherwise the two are gathered separately and the window is just obs.
        self.windowed = use_window and n_step < stack
        width = stack + n_step if self.windowed else stack
        self.uniforms = np.empty(batch, np.float64)
        self.indices = np.empty(batch, np.int64)
        self.weights = np.empty(batch, np.float32)
        self.actions = np.empty((batch, *action_shape), np.float32) if action_shape else np.empty(batch, np.int64)
        self.returns = np.empty(batch, np.float32)
        self.discounts = np.empty(batch, np.float32)
        self.horizon = np.empty(batch, np.int64)
        self.window = self._frame_buffer((batch, width, frame_size), dtype)
        self.next_window = self._frame_buffer((batch, stack, frame_size), dtype)

        def shaped(a, start):  # a view, for NumPy arrays and tensors alike
            v = a.reshape(batch, a.shape[1], *frame_shape)[:, start : start + stack]
            return v[:, 0] if stack == 1 else v

        head = (self.indices, self.weights)
        tail = (self.actions, self.returns, self.discounts)
        obs = shaped(self.window, 0)
        self.split = ReplaySample(*head, obs, *tail, shaped(self.next_window, 0))
        self.window_sample = (
            ReplaySample(*head, obs, *tail, shaped(self.window, n_step)) if self.windowed else None
        )

    def _frame_buffer(self, shape, dtype):
        return _zeros(shape, dtype)

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


class _Uploader:
    """Host buffers that carry small arrays to reused device buffers.

    On CUDA the host buffers are pinned and copied with ``non_blocking=True`` on the current
    stream, so the host never waits for the work queued before the copy (the learner's); it
    writes a host slot again only once the event recorded behind that slot's last copy has
    passed, and ``depth`` slots take turns so that this is normally long done. The device
    buffers are reused in stream order (every reader is queued on the same stream). On the
    CPU there is one plain slot and the copies are synchronous: the same code, run eagerly.
    """

    def __init__(self, torch, device, specs, depth: int = 4):
        cuda = device.type == "cuda"
        self.device_buffers = tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in specs)
        self._slots = [tuple(torch.zeros(shape, dtype=dtype, pin_memory=cuda) for shape, dtype in specs)
                       for _ in range(depth if cuda else 1)]
        self._views = [tuple(t.numpy() for t in slot) for slot in self._slots]
        self._events = [torch.cuda.Event() if cuda else None for _ in self._slots]
        self._stream = (lambda: torch.cuda.current_stream(device)) if cuda else None
        self._next = 0

    def host(self) -> tuple:
        """NumPy views of the next host slot, free to write (waits for its previous copy)."""
        event = self._events[self._next]
        if event is not None:
            event.synchronize()  # an event never recorded passes at once
        return self._views[self._next]

    def upload(self, count=None) -> list:
        """Queue the copy of that slot's first ``count`` rows (all with None) into the device
        buffers; returns the device views that will hold them."""
        sent = []
        for src, dst in zip(self._slots[self._next], self.device_buffers):
            if count is not None:
                src, dst = src[:count], dst[:count]
            dst.copy_(src, non_blocking=True)
            sent.append(dst)
        event = self._events[self._next]
        if event is not None:
            event.record(self._stream())
        self._next = (self._next + 1) % len(self._slots)
        return sent

    @property
    def nbytes(self) -> int:
        tensors = self.device_buffers + tuple(t for slot in self._slots for t in slot)
        return sum(t.element_size() * t.nelement() for t in tensors)


def _resolve_frames_device(frames_device):
    """(torch.device, torch module) for ``frames_device``; refuses a device without kernels."""
    import torch

    from . import native

    device = torch.device(frames_device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"frames_device must be a cpu or cuda device (or None), got {frames_device!r}")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())  # pin it: kernels check devices
    kernels = native.cuda_gather() if device.type == "cuda" else native.cpu_gather()
    if kernels is None:
        reason = native.unavailable_reason(device.type)
        raise RuntimeError(
            f"frames_device={str(device)!r} needs the native {device.type} replay kernels"
            f" (fastdqn.replay.native), which are not available: {reason}. Keep frames_device=None"
            " (the NumPy / Numba frame ring) on this machine")
    return device, torch


class _DeviceRing:
    """The frames (N, F) and a mirror of ``back`` (N,) uint8 as torch tensors on ``device``
    (``PrioritizedReplay(frames_device=...)``). ``native`` picks the kernels by the device
    of the frames: the CUDA kernels for a CUDA device, their C++ CPU twin for the CPU."""

    def __init__(self, torch, device, num_slots: int, frame_size: int, dtype, num_envs: int):
        from . import native

        self.torch, self.native, self.device = torch, native, device
        try:
            self.dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        except TypeError as e:
            raise TypeError(f"obs_dtype {np.dtype(dtype)} has no torch dtype: {e}") from None
        if device.type == "cpu":  # huge pages, as the host ring (zeroed like torch.zeros)
            self.frames = torch.from_numpy(_zeros((num_slots, frame_size), dtype))
        else:
            self.frames = torch.zeros((num_slots, frame_size), dtype=self.dtype, device=device)
        self.back = torch.zeros(num_slots, dtype=torch.uint8, device=device)
        # add(): the rows written, their back values and new frames, for up to num_envs envs.
        self.add_uploader = _Uploader(torch, device, [((num_envs,), torch.int64), ((num_envs,), torch.uint8),
                                                    ((num_envs, frame_size), self.dtype)])

    def store(self, rows, back, newest) -> None:
        """frames[rows] = newest (B, F) and back[rows] = back, on the device."""
        count = rows.shape[0]
        rows_h, back_h, frames_h = self.add_uploader.host()
        rows_h[:count] = rows
        back_h[:count] = back
        frames_h[:count] = newest
        rows_d, back_d, frames_d = self.add_uploader.upload(count)
        self.native.scatter_frames(self.frames, rows_d, frames_d)
        self.back.index_copy_(0, rows_d, back_d)

    def gather(self, out: "_DeviceOutputs", early: bool, lane: int, stack: int) -> ReplaySample:
        """obs / next_obs of the batch in out.indices (targets already in out): the device
        twin of the tail of PrioritizedReplay.sample's host path, branch for branch."""
        (host,) = out.uploader.host()
        host[0] = out.indices
        host[1] = out.horizon
        (sent,) = out.uploader.upload()
        indices, horizon = sent[0], sent[1]
        self.native.gather_window(indices, self.frames, self.back, lane, stack, out.window)
        if out.windowed and not early:
            return out.window_sample
        # obs is in out.window[:, :stack]; the next stacks go to their own buffer.
        self.native.gather_next(indices, horizon, self.frames, self.back, lane, stack, out.next_window)
        return out.split

    def stacks(self, indices, stack: int, lane: int) -> np.ndarray:
        """(B, stack, F) host array of the stacks at (already checked) records ``indices``."""
        out = self.torch.empty((indices.shape[0], stack, self.frames.shape[1]), dtype=self.dtype,
                               device=self.device)
        self.native.gather_window(self.torch.from_numpy(indices).to(self.device), self.frames, self.back,
                                  lane, stack, out)
        return out.cpu().numpy()

    def load(self, frames: np.ndarray, back: np.ndarray) -> None:
        with warnings.catch_warnings():  # a read-only state array (np.load mmap_mode="r") is only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            self.frames.copy_(self.torch.from_numpy(frames))
            self.back.copy_(self.torch.from_numpy(back))

    @property
    def nbytes(self) -> int:
        tensors = (self.frames, self.back)
        return sum(t.element_size() * t.nelement() for t in tensors) + self.add_uploader.nbytes


class _DeviceOutputs(_Outputs):
    """The _Outputs of a device ring: the targets in host arrays as there, obs / next_obs in
    tensors on the device, and the indices (and horizons) sent there through an _Uploader."""

    def __init__(self, ring_d: _DeviceRing, batch: int, stack: int, n_step: int, frame_shape,
                 use_window=True, action_shape=()):
        self._ring_d = ring_d
        super().__init__(batch, stack, n_step, frame_shape, ring_d.dtype, use_window, action_shape)
        self.uploader = _Uploader(ring_d.torch, ring_d.device, [((2, batch), ring_d.torch.int64)])  # indices, horizon

    def _frame_buffer(self, shape, dtype):
        return self._ring_d.torch.zeros(shape, dtype=dtype, device=self._ring_d.device)

    @property
    def nbytes(self) -> int:
        device = sum(t.element_size() * t.nelement() for t in (self.window, self.next_window))
        return super().nbytes + device + self.uploader.nbytes


def _storage_bytes(num_slots: int, frame_size: int, itemsize: int, num_envs: int, action_size: int = 1) -> int:
    per_slot = frame_size * itemsize + 4 * action_size + 4 + 1 + 1  # frame, action, reward, flags, back
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
        action_shape: () (default) for discrete actions, one int per record; (A,) for
            continuous ones, a float32 vector per record (DDPG / TD3), stored and sampled the
            same way (the action of record k + 1 goes with the transition sampled at k).
        frames_device: None (default) keeps the frames in host memory, written and gathered
            by the Numba kernels of ``ring.py``. A torch device (or its name: "cuda",
            "cuda:1", "cpu") keeps them, and a mirror of ``back``, in torch tensors on that
            device instead: ``add()`` sends each env step's newest frames there
            (``native.scatter_frames``) and ``sample()`` sends only the sampled indices and
            gathers the stacks there (``native.gather_window`` / ``gather_next``), returning
            ``obs`` / ``next_obs`` as tensors on the device. Every other array (actions,
            rewards, flags, back, the trees) stays in host memory, and the sampled indices and
            targets are the same, bit for bit, as with None. A CUDA device runs the CUDA
            kernels (work queued on the current stream: call add / sample on one stream); "cpu"
            runs the same code through their C++ twin (how it is tested without a GPU). Needs
            the native kernels: without them (no compiler, no CUDA) the constructor raises
            RuntimeError.
        window: None (default) samples from every stored record. A number of records W
            samples only from the newest W // num_envs of each lane, exactly as a buffer of
            capacity W would (the older records' frames stay stored, unsampled). The
            ``window`` attribute can be changed at any time, and the stored records it then
            covers are sampleable at once: narrowing it drops the records it leaves out;
            widening it brings back the stored ones it now covers (their frames were kept),
            at the mean priority of the records already in it.

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
                 obs_dtype=np.uint8, frames_device=None, window=None, action_shape=()):
        self.frame_shape = tuple(int(s) for s in obs_shape)
        self.action_shape = tuple(int(s) for s in action_shape)
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
        if len(self.action_shape) > 1 or min(self.action_shape, default=1) < 1:
            raise ValueError(f"action_shape must be () or (A,) with A >= 1, got {action_shape}")
        minimum = self.num_envs * (self.stack + self.n_step + 1)
        if self.capacity < minimum:
            raise ValueError(
                f"capacity {capacity} is too small: it needs at least num_envs * (stack + n_step + 1)"
                f" = {self.num_envs} * ({self.stack} + {self.n_step} + 1) = {minimum}")
        self.lane = self.capacity // self.num_envs
        num_slots = self.lane * self.num_envs
        frame_size = math.prod(self.frame_shape)
        action_size = math.prod(self.action_shape)
        self.frames_device = None
        self._ring_d: _DeviceRing | None = None
        if frames_device is None:
            needed = _storage_bytes(num_slots, frame_size, self.obs_dtype.itemsize, self.num_envs, action_size)
        else:
            self.frames_device, torch = _resolve_frames_device(frames_device)
            on_device = num_slots * (frame_size * self.obs_dtype.itemsize + 1)  # frames, back mirror
            needed = _storage_bytes(num_slots, 0, self.obs_dtype.itemsize, self.num_envs, action_size)
            if self.frames_device.type == "cuda":
                free = torch.cuda.mem_get_info(self.frames_device)[0]
                if on_device > free:
                    raise ValueError(
                        f"replay capacity {capacity} of {self.frame_shape} {self.obs_dtype} frames needs"
                        f" {on_device:,} bytes ({on_device / 2**30:.2f} GiB) on {self.frames_device} but"
                        f" only {free:,} bytes ({free / 2**30:.2f} GiB) of its memory are free; lower the"
                        " capacity")
            else:
                needed += on_device
        available = psutil.virtual_memory().available
        if needed > available:
            raise ValueError(
                f"replay capacity {capacity} of {self.frame_shape} {self.obs_dtype} frames needs"
                f" {needed:,} bytes ({needed / 2**30:.2f} GiB) but only {available:,} bytes"
                f" ({available / 2**30:.2f} GiB) of memory are available; lower the capacity")

        if frames_device is None:
            self._frames = _zeros((num_slots, frame_size), self.obs_dtype)
        else:
            # The frames live on the device. add_records gets this zero-width stand-in: it
            # derives lane from frames.shape[0] (so N rows it must have) and copies
            # frames.shape[1] = 0 bytes per record; everything else it writes is host metadata.
            # (Same Numba type, 2-D C-contiguous, as the host ring: no second compilation.)
            self._frames = np.empty((num_slots, 0), self.obs_dtype)
            self._ring_d = _DeviceRing(torch, self.frames_device, num_slots, frame_size, self.obs_dtype,
                                       self.num_envs)
        # One int32 per record, or a float32 row (the ring kernels copy a row as they copy an int).
        self._actions = np.zeros((num_slots, *self.action_shape), np.float32 if self.action_shape else np.int32)
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
        # batch size (slot 0) or (batch size, slot) -> preallocated outputs of sample()
        self._outputs: dict[int | tuple[int, int], _Outputs] = {}
        self._td_priorities = np.empty(0, np.float64)
        self._keep = self.lane  # sampling window per lane (see the window property)
        self.window = window

    @property
    def window(self) -> int | None:
        """Records sampled from, newest first (None = the whole capacity); see the class doc."""
        return None if self._keep == self.lane else self._keep * self.num_envs

    @window.setter
    def window(self, window: int | None) -> None:
        keep = self.lane if window is None else int(window) // self.num_envs
        if window is not None:
            smallest = self.num_envs * (self.stack + self.n_step + 1)
            if int(window) != window or not smallest <= window <= self.capacity:
                raise ValueError(f"window must be None or an int in [{smallest}, {self.capacity}] (num_envs *"
                                 f" (stack + n_step + 1) to the capacity), got {window}")
        if keep != self._keep:
            self._keep = keep
            self._apply_window()

    def _apply_window(self) -> None:
        """Make exactly the stored records in the window sampleable: the ones it leaves out
        get priority 0, and the ones that come into it (a wider window) the mean priority of
        the ones that stay in it (their own priorities were not kept)."""
        was_valid = (self._flags & ring.VALID) != 0
        ring.apply_window(self._flags, self._back, self._written, self.stack, self.n_step, self._keep)
        valid = (self._flags & ring.VALID) != 0
        entering, staying = valid & ~was_valid, valid & was_valid
        if entering.any():
            self._leaves[entering] = self._leaves[staying].mean() if staying.any() else self.max_priority
        self._leaves[~valid] = 0.0
        segment_tree.rebuild(self._sum, self._min)

    # ------------------------------------------------------------------ adding

    def add(self, obs, actions, rewards, terminated, truncated, reset_step, new_game, env_ids=None):
        """Append one record per env in ``env_ids``: exactly what the env step returned.

        Args:
            obs: (B, stack, *obs_shape) (or (B, *obs_shape) when stack == 1); only the
                newest frame ``obs[:, -1]`` is stored.
            actions: (B,) ints, the action sent on the previous step of each env (that led
                to this obs); ignored on reset steps. (B, *action_shape) floats for
                continuous actions.
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
        if self.action_shape:
            actions = self._action_vectors(actions, batch)
        else:
            actions = self._vector("actions", actions, batch, "iub", np.int64)
        rewards = self._vector("rewards", rewards, batch, "fiub", np.float32)
        terminated = self._vector("terminated", terminated, batch, "b", np.bool_)
        truncated = self._vector("truncated", truncated, batch, "b", np.bool_)
        reset_step = self._vector("reset_step", reset_step, batch, "b", np.bool_)
        new_game = self._vector("new_game", new_game, batch, "b", np.bool_)
        if batch == 0:
            return
        flat = obs.reshape(batch, self.stack, -1)
        if self._ring_d is not None:
            # The rows add_records is about to write (record written[e] of env e sits in slot
            # written[e] % lane); "clip" only keeps a bad env id (refused below) from raising
            # IndexError first.
            rows = env_ids * self.lane + np.take(self._written, env_ids, mode="clip") % self.lane
        count = ring.add_records(
            flat,
            env_ids, actions, rewards, terminated, truncated, reset_step, new_game,
            self._frames, self._actions, self._rewards, self._flags, self._back, self._written,
            self.stack, self.n_step, self.max_priority, self._keep, self._change_idx, self._change_val,
        )
        if count < 0:
            self._raise_add_error(count, env_ids, reset_step, new_game)
        segment_tree.update(self._sum, self._min, self._change_idx, self._change_val, count)
        if self._ring_d is not None:
            self._ring_d.store(rows, self._back[rows], flat[:, -1])

    @staticmethod
    def _vector(name, x, batch, kinds, dtype):
        x = np.asarray(x)
        if x.shape != (batch,):
            raise ValueError(f"{name} has shape {x.shape}, expected ({batch},)")
        if x.dtype.kind not in kinds:
            raise TypeError(f"{name} has dtype {x.dtype}, expected kind(s) {kinds!r} (e.g. {np.dtype(dtype)})")
        return np.ascontiguousarray(x, dtype)

    def _action_vectors(self, actions, batch):
        actions = np.asarray(actions)
        if actions.shape != (batch, *self.action_shape):
            raise ValueError(f"actions has shape {actions.shape}, expected {(batch, *self.action_shape)}")
        if actions.dtype.kind not in "fiu":
            raise TypeError(f"actions has dtype {actions.dtype}, expected floats (float32)")
        return np.ascontiguousarray(actions, np.float32)

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

    def sample(self, batch_size: int, beta: float, slot: int = 0) -> ReplaySample:
        """Draw ``batch_size`` transitions, one per equal stratum of the priority mass.

        Args:
            batch_size: transitions to draw.
            beta: importance-sampling exponent (annealed to 1 by the caller).
            slot: which set of preallocated outputs to write. Each slot keeps its own, so
                that K batches sampled ahead (a CUDA graph's group) with slots 0 .. K-1 are
                all valid at once without a copy of any.

        Importance weights are (N P(i))^-beta / max_j (N P(j))^-beta = (p_i / p_min)^-beta,
        with p_min from the min tree.

        The returned arrays are preallocated and OVERWRITTEN by the next call with the same
        batch size and slot (a fresh multi-MB array per call page-faults every time): copy
        them, move them to the device, or sample the next batch into another slot.

        When n_step < stack, ``obs`` and ``next_obs`` are normally two strided views of one
        (B, stack + n_step) window of frames: stack + n frame copies per sample instead of
        2 * stack (measured 4-8 % faster at 1M frames; the copy is the cost). A batch in which
        some sample was cut early by a truncation (its next stack sits m < n records ahead,
        which the window cannot hold when n < stack) gets its ``next_obs`` gathered into a
        separate buffer instead, so every bootstrapped ``next_obs`` is exact. With a 27k-step
        time limit that is under 2 % of batch-256 draws (fewer unless every episode reaches
        the limit), each costing one extra stack copy per sample.

        With ``frames_device`` set, the same indices and targets are computed on the host,
        the indices are sent to the device, and ``obs`` / ``next_obs`` are gathered there, by
        the same rule, into preallocated tensors (also overwritten by the next call; on CUDA
        the gathers are queued on the current stream, so a consumer on that stream needs no
        synchronization).
        """
        key = batch_size if slot == 0 else (batch_size, slot)
        out = self._outputs.get(key)
        if out is None:
            if int(batch_size) != batch_size or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {batch_size}")
            if int(slot) != slot or slot < 0:
                raise ValueError(f"slot must be an int >= 0, got {slot}")
            if self._ring_d is None:
                out = _Outputs(batch_size, self.stack, self.n_step, self.frame_shape, self.obs_dtype,
                               self._use_window, self.action_shape)
            else:
                out = _DeviceOutputs(self._ring_d, batch_size, self.stack, self.n_step, self.frame_shape,
                                     self._use_window, self.action_shape)
            self._outputs[key] = out
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
        if self._ring_d is not None:
            # The same targets as targets_and_window computes (both run _targets), then the
            # same window / next-stack logic as below, on the device.
            early = ring.nstep_targets(*common, self._actions, self._rewards, self._flags, self.lane,
                                       self.n_step, self.gamma, *targets)
            return self._ring_d.gather(out, early, self.lane, self.stack)
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
            bad = td_abs[~np.isfinite(td_abs)]
            raise NonFiniteTDError(f"the TD error became {bad[0] if len(bad) else 'NaN or inf'}")
        segment_tree.update(self._sum, self._min, indices, self._td_priorities, indices.shape[0])
        if top > self.max_priority:
            self.max_priority = top

    def stacked_obs(self, indices) -> np.ndarray:
        """The stacked observation of stored records (a new array, for tests and debugging).

        Works for any stored record whose stack is still intact, sampleable or not. A NumPy
        array with ``frames_device`` too (gathered there, then copied to the host).
        """
        indices = np.ascontiguousarray(indices, np.int64).reshape(-1)
        if self._ring_d is not None:
            # The host check of gather_stacks on the metadata alone: with the zero-width
            # stand-in for the frames it validates every index and copies nothing.
            bad = ring.gather_stacks(indices, self._frames, self._back, self._written, self.stack,
                                     np.empty((indices.shape[0], self.stack, 0), self.obs_dtype))
            if bad < 0:
                out = self._ring_d.stacks(indices, self.stack, self.lane)
        else:
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

    @property
    def rng(self) -> np.random.Generator:
        """The sampler's random stream (a checkpoint saves its state even without the replay)."""
        return self._rng

    def __len__(self) -> int:
        """Records stored (at most lane * num_envs)."""
        return int(np.minimum(self._written, self.lane).sum())

    @property
    def nbytes(self) -> int:
        """Bytes of every array the buffer holds, sample output buffers included (and, with
        ``frames_device``, the tensors on the device and their staging buffers)."""
        arrays = (self._frames, self._actions, self._rewards, self._flags, self._back, self._written,
                  self._sum, self._min, self._change_idx, self._change_val, self._td_priorities)
        device = self._ring_d.nbytes if self._ring_d is not None else 0
        return sum(a.nbytes for a in arrays) + device + sum(o.nbytes for o in self._outputs.values())

    def _config(self) -> dict:
        # action_shape only where there is one: a discrete buffer's state stays as it was.
        actions = {"action_shape": np.asarray(self.action_shape, np.int64)} if self.action_shape else {}
        return {
            **actions,
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
        buffer's own (not copies): save them before adding again. With ``frames_device``,
        ``frames`` is copied to host memory (a view of the tensor's memory on the CPU); the
        format is the same either way, so a state loads into a buffer of either kind."""
        rng = self._rng.bit_generator.state
        mask = (1 << 64) - 1
        rng_words = [rng["state"]["state"] >> 64, rng["state"]["state"] & mask,
                     rng["state"]["inc"] >> 64, rng["state"]["inc"] & mask,
                     rng["has_uint32"], rng["uinteger"]]
        return {
            **self._config(),
            "frames": self._frames if self._ring_d is None else self._ring_d.frames.cpu().numpy(),
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
        if "action_shape" in state and not self.action_shape:
            mismatched.append(f"action_shape: saved {np.asarray(state['action_shape']).tolist()} != () (discrete)")
        if mismatched:
            raise ValueError("replay state does not match this buffer: " + "; ".join(mismatched))
        targets = [("actions", self._actions), ("rewards", self._rewards), ("flags", self._flags),
                   ("back", self._back), ("written", self._written), ("priorities", self._leaves)]
        if self._ring_d is None:
            targets.insert(0, ("frames", self._frames))
        else:  # checked like the others, then copied straight to the device
            frames = np.asarray(state["frames"])
            expected = (self._back.shape[0], math.prod(self.frame_shape))
            if frames.shape != expected:
                raise ValueError(f"state 'frames' has shape {frames.shape}, expected {expected}")
            if not np.can_cast(frames.dtype, self.obs_dtype, "same_kind"):
                raise TypeError(f"state 'frames' has dtype {frames.dtype}, which cannot be cast to"
                                f" {self.obs_dtype} under the 'same_kind' rule")
        for key, target in targets:
            source = np.asarray(state[key])
            if source.shape != target.shape:
                raise ValueError(f"state {key!r} has shape {source.shape}, expected {target.shape}")
            np.copyto(target, source, casting="same_kind")
        if self._ring_d is not None:
            self._ring_d.load(np.ascontiguousarray(frames, self.obs_dtype), self._back)
        self.max_priority = float(state["max_priority"])
        self._apply_window()  # the state may have been saved with another window; rebuilds the trees
        words = [int(w) for w in np.asarray(state["rng_state"], np.uint64)]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": (words[0] << 64) | words[1], "inc": (words[2] << 64) | words[3]},
            "has_uint32": words[4],
            "uinteger": words[5],
        }
