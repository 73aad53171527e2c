"""PrioritizedReplay(frames_device=...) against the default NumPy / Numba ring, in lockstep.

A "cpu" frames device runs the device code path (frames in torch tensors, written by
native.scatter_frames, gathered by native.gather_window / gather_next) through the C++ CPU
twin of the CUDA kernels; a CUDA device runs the same code on the CUDA kernels. Both buffers
get the identical add() stream and seed, so every sample must be identical: indices, targets
and the bytes of obs / next_obs. Like test_native.py, the CPU tests skip only when no C++
compiler is on PATH (with one, the kernels must build); the CUDA test needs a GPU and nvcc.
"""

import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils import cpp_extension

from fastdqn.replay import PrioritizedReplay, native

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or cpp_extension.CUDA_HOME is None,
                                reason="needs a CUDA GPU and the CUDA toolkit (nvcc)")


@pytest.fixture(scope="module")
def cpu_kernels():
    module = native.cpu_gather()
    if module is None:
        if not HAS_COMPILER:
            pytest.skip("no C++ compiler on PATH: the native CPU kernels (and so frames_device) are unavailable")
        pytest.fail("a C++ compiler is on PATH, so the native CPU kernels must build")
    return module


def env_steps(num_envs, stack, frame_shape, dtype, rng, count, p_term=0.08, p_trunc=0.05, p_explicit=0.02,
              asynchronous=True):
    """add() keyword arguments of `count` synthetic env steps that follow the env contract:
    random subsets of envs in random order (sometimes all, env_ids omitted), episodes that end
    by termination (a life loss, or game over) or truncation, explicit resets mid-episode, and
    stacks built the way EnvPool builds them (a new game fills the stack with its first frame)."""
    done, game_over = np.ones(num_envs, bool), np.ones(num_envs, bool)
    started = np.zeros(num_envs, bool)
    stacks = np.zeros((num_envs, stack, *frame_shape), dtype)
    for _ in range(count):
        everyone = not asynchronous or rng.random() < 0.2
        ids = np.arange(num_envs) if everyone else rng.permutation(num_envs)[: rng.integers(1, num_envs + 1)]
        batch = len(ids)
        forced = started[ids] & ~done[ids] & (rng.random(batch) < p_explicit)  # e.g. VecEnv.reset()
        reset = done[ids] | forced
        new_game = reset & (game_over[ids] | forced)
        if np.issubdtype(dtype, np.integer):
            frames = rng.integers(0, 256, (batch, *frame_shape)).astype(dtype)
        else:
            frames = rng.standard_normal((batch, *frame_shape)).astype(dtype)
        for i, e in enumerate(ids):
            if new_game[i]:
                stacks[e] = frames[i]
            else:
                stacks[e, :-1] = stacks[e, 1:].copy()
                stacks[e, -1] = frames[i]
        term = ~reset & (rng.random(batch) < p_term)
        trunc = ~reset & ~term & (rng.random(batch) < p_trunc)
        game_over[ids] = trunc | (term & (rng.random(batch) < 0.3))
        done[ids] = term | trunc
        started[ids] = True
        obs = stacks[ids].copy()
        step = dict(obs=obs if stack > 1 else obs[:, 0], actions=rng.integers(0, 6, batch),
                    rewards=rng.integers(-1, 2, batch).astype(np.float32), terminated=term, truncated=trunc,
                    reset_step=reset, new_game=new_game)
        if not everyone:
            step["env_ids"] = ids
        yield step


def as_bytes(x):
    x = x.cpu().numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(x).view(np.uint8)


def assert_same_sample(host, dev, device):
    for name in ("indices", "weights", "actions", "returns", "discounts"):
        a, b = getattr(host, name), getattr(dev, name)
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape, name
        np.testing.assert_array_equal(as_bytes(b), as_bytes(a), err_msg=name)  # bit for bit
    for name in ("obs", "next_obs"):
        a, b = getattr(host, name), getattr(dev, name)
        # by type: a CUDA tensor is on "cuda:0", and torch.device("cuda:0") != torch.device("cuda")
        assert isinstance(b, torch.Tensor) and b.device.type == torch.device(device).type, name
        assert tuple(b.shape) == a.shape and b.dtype == torch.from_numpy(a[:0]).dtype, name
        np.testing.assert_array_equal(as_bytes(b), as_bytes(a), err_msg=name)


def assert_same_storage(host, dev):
    """The whole ring: the device's frames and back mirror equal the host ring's arrays."""
    np.testing.assert_array_equal(as_bytes(dev._ring_d.frames), as_bytes(host._frames))
    np.testing.assert_array_equal(dev._ring_d.back.cpu().numpy(), host._back)
    for name in ("_actions", "_rewards", "_flags", "_back", "_written"):
        np.testing.assert_array_equal(getattr(dev, name), getattr(host, name), err_msg=name)
    np.testing.assert_array_equal(dev.priorities(), host.priorities())


def run_lockstep(device, stack, n_step, frame_shape, dtype, num_envs=4, lane=20, steps=260, seed=0):
    """Feed both buffers one stream; returns how many batches had a sample cut early (their
    next_obs gathered separately) and how many were served as window views."""
    rng = np.random.default_rng(seed)
    kwargs = dict(capacity=num_envs * lane, num_envs=num_envs, obs_shape=frame_shape, stack=stack,
                  n_step=n_step, gamma=0.9, alpha=0.6, seed=5, obs_dtype=dtype)
    host = PrioritizedReplay(**kwargs)
    dev = PrioritizedReplay(**kwargs, frames_device=device)
    assert dev.frames_device.type == torch.device(device).type
    modes = {"window": 0, "split": 0}
    for t, step in enumerate(env_steps(num_envs, stack, frame_shape, dtype, rng, steps)):  # lanes wrap ~10x
        host.add(**step)
        dev.add(**step)
        if t % 5 == 0:
            assert_same_storage(host, dev)
        if host.priorities().sum() == 0:
            continue
        for batch in (32, 5):
            beta = float(rng.uniform(0.3, 1.0))
            a, b = host.sample(batch, beta), dev.sample(batch, beta)
            assert_same_sample(a, b, device)
            window = np.shares_memory(a.obs, a.next_obs)
            # the device path takes the same branch: window views, or a separate next buffer
            assert (b.obs.untyped_storage().data_ptr() == b.next_obs.untyped_storage().data_ptr()) == window
            modes["window" if window else "split"] += 1
            td = rng.exponential(1.0, batch)
            host.update_priorities(a.indices, td)
            dev.update_priorities(b.indices, td)
            assert host.max_priority == dev.max_priority
    assert_same_storage(host, dev)
    # every stored record's stack, and the same refusals for records whose stack is gone
    for index in range(-1, num_envs * lane + 2):
        try:
            expected = host.stacked_obs([index])
        except IndexError:
            with pytest.raises(IndexError, match="not stored or its stack was overwritten"):
                dev.stacked_obs([index])
            continue
        got = dev.stacked_obs([index])
        assert isinstance(got, np.ndarray) and got.shape == expected.shape
        np.testing.assert_array_equal(as_bytes(got), as_bytes(expected))
    return modes


@pytest.mark.parametrize("stack,n_step,frame_shape,dtype", [
    (4, 3, (6, 5), np.uint8),  # Atari-like: window views, and split batches after early cuts
    (1, 3, (4,), np.float32),  # CartPole-like vectors: n >= stack, always split
    (2, 5, (3,), np.uint8),  # n >= stack with a stack
])
def test_cpu_device_ring_samples_exactly_what_the_numpy_ring_samples(cpu_kernels, stack, n_step, frame_shape,
                                                                      dtype):
    modes = run_lockstep("cpu", stack, n_step, frame_shape, dtype)
    if n_step < stack:
        assert modes["window"] > 0 and modes["split"] > 0  # batches with early-cut samples occurred
    else:
        assert modes["window"] == 0 and modes["split"] > 0


def test_cpu_device_ring_without_the_window(cpu_kernels, monkeypatch):
    # _use_window = False (bench/replay.py's alternative) is mirrored on the device too.
    monkeypatch.setattr(PrioritizedReplay, "_use_window", False)
    modes = run_lockstep("cpu", 4, 3, (6, 5), np.uint8, steps=120)
    assert modes["window"] == 0 and modes["split"] > 0


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("stack,n_step,frame_shape,dtype", [
    (4, 3, (6, 5), np.uint8),
    (4, 3, (84, 84), np.uint8),
    (1, 3, (4,), np.float32),
])
def test_cuda_device_ring_samples_exactly_what_the_numpy_ring_samples(stack, n_step, frame_shape, dtype):
    assert native.cuda_gather() is not None, "CUDA and nvcc are available, so the CUDA kernels must build"
    modes = run_lockstep("cuda", stack, n_step, frame_shape, dtype, steps=200 if frame_shape == (84, 84) else 260)
    assert modes["split"] > 0
    torch.cuda.synchronize()


def test_state_dict_of_a_device_ring_round_trips_and_resumes_identically(cpu_kernels, tmp_path):
    num_envs, stack, n_step, frame_shape = 3, 4, 3, (6, 5)
    kwargs = dict(capacity=num_envs * 20, num_envs=num_envs, obs_shape=frame_shape, stack=stack, n_step=n_step,
                  seed=7)
    rng = np.random.default_rng(1)
    stream = env_steps(num_envs, stack, frame_shape, np.uint8, rng, 200)
    dev = PrioritizedReplay(**kwargs, frames_device="cpu")
    for _ in range(70):
        dev.add(**next(stream))
    s = dev.sample(16, 0.4)
    dev.update_priorities(s.indices, rng.random(16))
    state = dev.state_dict()
    assert state["frames"].shape == (dev.lane * num_envs, 30) and state["frames"].dtype == np.uint8
    np.savez(tmp_path / "rb.npz", **state)
    loaded = dict(np.load(tmp_path / "rb.npz", allow_pickle=False))
    resumed = PrioritizedReplay(**kwargs, frames_device="cpu")
    resumed.load_state_dict({**loaded, "frames": np.lib.stride_tricks.as_strided(loaded["frames"], writeable=False)})
    host = PrioritizedReplay(**kwargs)  # the format is shared: a NumPy ring resumes it too
    host.load_state_dict(loaded)
    back_to_device = PrioritizedReplay(**kwargs, frames_device="cpu")
    back_to_device.load_state_dict(host.state_dict())
    others = (resumed, back_to_device)
    for other in others:
        assert len(other) == len(dev) and other.max_priority == dev.max_priority
        assert_same_storage(host, other)
    for _ in range(60):  # the lanes wrap again after the restore
        step = next(stream)
        for buffer in (dev, host, *others):
            buffer.add(**step)
        expected = host.sample(16, 0.6)
        td = rng.exponential(1.0, 16)
        host.update_priorities(expected.indices, td)
        for buffer in (dev, *others):
            got = buffer.sample(16, 0.6)
            assert_same_sample(expected, got, "cpu")
            buffer.update_priorities(got.indices, td)
    with pytest.raises(ValueError, match=r"state 'frames' has shape"):
        PrioritizedReplay(**kwargs, frames_device="cpu").load_state_dict({**loaded, "frames": loaded["frames"][:, :5]})


def test_nbytes_and_len_count_the_device_ring(cpu_kernels):
    rb = PrioritizedReplay(capacity=2 * 10, num_envs=2, obs_shape=(84, 84), stack=4, n_step=3, frames_device="cpu")
    assert rb._frames.shape == (20, 0)  # no host frames: add_records only gets this stand-in
    assert rb.nbytes >= 20 * (84 * 84 + 1)
    for step in env_steps(2, 4, (84, 84), np.uint8, np.random.default_rng(0), 13, asynchronous=False):
        rb.add(**step)
    assert len(rb) == 20
    before = rb.nbytes
    rb.sample(2, 0.5)
    assert rb.nbytes > before + 2 * 7 * 84 * 84  # the device window buffer counts too


def test_returned_device_tensors_are_reused_between_calls(cpu_kernels):
    rb = PrioritizedReplay(capacity=2 * 20, num_envs=2, obs_shape=(3,), stack=4, n_step=3, frames_device="cpu")
    for step in env_steps(2, 4, (3,), np.uint8, np.random.default_rng(0), 15, p_term=0, p_trunc=0, p_explicit=0,
                          asynchronous=False):
        rb.add(**step)
    a, b = rb.sample(8, 0.5), rb.sample(8, 0.5)
    assert a.obs is b.obs and a.indices is b.indices
    assert a.obs.shape == (8, 4, 3) and a.next_obs.shape == (8, 4, 3)


def test_bad_add_arguments_write_nothing_to_the_device_ring(cpu_kernels):
    rb = PrioritizedReplay(capacity=2 * 10, num_envs=2, obs_shape=(3,), stack=4, n_step=3, frames_device="cpu")
    step = next(env_steps(2, 4, (3,), np.uint8, np.random.default_rng(0), 1, asynchronous=False))
    step["obs"] = np.full((2, 4, 3), 9, np.uint8)
    for ids, pattern in (([0, 5], r"env_ids must be in \[0, 2\)"), ([0, -1], r"env_ids must be in \[0, 2\)"),
                         ([1, 1], "env_ids must be distinct")):
        with pytest.raises(ValueError, match=pattern):
            rb.add(**{**step, "env_ids": np.array(ids)})
    assert len(rb) == 0 and not rb._ring_d.frames.any() and not rb._ring_d.back.any()


def test_capacity_beyond_available_memory_is_refused_for_a_device_ring(cpu_kernels):
    with pytest.raises(ValueError, match=r"needs [\d,]+ bytes .* only [\d,]+ bytes"):
        PrioritizedReplay(capacity=10**12, num_envs=16, obs_shape=(84, 84), frames_device="cpu")


def test_a_frames_device_without_native_kernels_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(native, "_modules", {"cpu": None})
    monkeypatch.setattr(native, "_reasons", {"cpu": "no C++ compiler: 'c++' is not on PATH"})
    with pytest.raises(RuntimeError, match=r"frames_device='cpu' needs the native cpu replay kernels .*"
                                           r"not available: no C\+\+ compiler: 'c\+\+' is not on PATH"):
        PrioritizedReplay(capacity=40, num_envs=2, obs_shape=(3,), frames_device="cpu")
    PrioritizedReplay(capacity=40, num_envs=2, obs_shape=(3,))  # the NumPy ring needs none
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"native cuda replay kernels .* torch.cuda.is_available\(\) is False"):
            PrioritizedReplay(capacity=40, num_envs=2, obs_shape=(3,), frames_device="cuda")
    with pytest.raises(ValueError, match="frames_device must be a cpu or cuda device"):
        PrioritizedReplay(capacity=40, num_envs=2, obs_shape=(3,), frames_device="meta")


@pytest.mark.parametrize("frames_device", [None, "cpu"])
def test_batches_sampled_ahead_into_slots_equal_copies_of_batches_sampled_in_turn(frames_device, request):
    # A CUDA graph's group of K batches: sampled into slots 0 .. K-1 they need no copy.
    if frames_device is not None:
        request.getfixturevalue("cpu_kernels")
    num_envs, stack, n_step, frame_shape = 3, 4, 3, (6, 5)
    kwargs = dict(capacity=num_envs * 20, num_envs=num_envs, obs_shape=frame_shape, stack=stack, n_step=n_step,
                  seed=3, frames_device=frames_device)
    ahead, in_turn = PrioritizedReplay(**kwargs), PrioritizedReplay(**kwargs)
    rng = np.random.default_rng(2)
    for step in env_steps(num_envs, stack, frame_shape, np.uint8, rng, 120):
        ahead.add(**step)
        in_turn.add(**step)
    for _ in range(5):
        slots = [ahead.sample(8, 0.5, slot=k) for k in range(4)]
        copies = [[a.clone() if isinstance(a, torch.Tensor) else a.copy() for a in in_turn.sample(8, 0.5)]
                  for _ in range(4)]
        for batch, copy in zip(slots, copies):
            for got, want in zip(batch, copy):
                np.testing.assert_array_equal(as_bytes(got), as_bytes(want))
        td = rng.exponential(1.0, (4, 8))
        for batch, copy, t in zip(slots, copies, td):
            ahead.update_priorities(batch.indices, t)
            in_turn.update_priorities(copy[0], t)
    assert len({id(s.indices) for s in slots}) == 4 and ahead.sample(8, 0.5, slot=3).indices is slots[3].indices
    with pytest.raises(ValueError, match="slot must be an int >= 0"):
        ahead.sample(8, 0.5, slot=-1)
