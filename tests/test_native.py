"""The native frame-ring kernels (csrc/) against the Numba kernels of ring.py, byte for byte.

The C++ CPU twin is built on first use (cached afterwards). These tests skip only when no
C++ compiler is on PATH; with a compiler, a failing build fails them. The CUDA kernels are
tested on a GPU, and compiled with a bare nvcc where one is installed.
"""

import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils import cpp_extension

from fastdqn.replay import PrioritizedReplay, native, ring

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
# Like the C++ compiler for the CPU twin: with a GPU and nvcc, the CUDA kernels must build.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or cpp_extension.CUDA_HOME is None,
                                reason="needs a CUDA GPU and the CUDA toolkit (nvcc)")


@pytest.fixture(scope="module")
def cpu_kernels():
    if not HAS_COMPILER:
        _assert_falls_back_with_one_warning("no C\\+\\+ compiler")
        pytest.skip("no C++ compiler on PATH: the Numba path is used (and says so once)")
    module = native.cpu_gather()
    assert module is not None, "a C++ compiler is on PATH, so the CPU kernels must build"
    return module


def _assert_falls_back_with_one_warning(reason):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every warning, not Python's first per place
        assert native.cpu_gather() is None
        assert native.cpu_gather() is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "Numba path" in messages[0]
    assert re.search(reason, messages[0]), messages


def random_ring(num_envs, lane, stack, frame_shape, dtype, rng, p_new_game=0.2):
    """frames (N, F) of random content and `back` as add_records writes it: per lane,
    records 0 .. written-1 with new games at random, record k in slot k % lane. Every lane
    has wrapped (written > lane), so its write head sits mid-lane and a game may run
    across the end of the lane."""
    size = int(np.prod(frame_shape))
    num_slots = num_envs * lane
    if np.issubdtype(dtype, np.integer):
        frames = rng.integers(0, 256, (num_slots, size)).astype(dtype)
    else:
        frames = rng.standard_normal((num_slots, size)).astype(dtype)
    back = np.zeros(num_slots, np.uint8)
    for e in range(num_envs):
        b = 0
        for k in range(int(rng.integers(lane + 1, 3 * lane))):
            b = 0 if k == 0 or rng.random() < p_new_game else min(b + 1, stack - 1)
            back[e * lane + k % lane] = b
    return frames, back


def random_indices(num_envs, lane, rng, batch=64):
    """Random slots, the first and last two slots of every lane (windows that wrap), and
    duplicates."""
    edges = [e * lane + s for e in range(num_envs) for s in (0, 1, lane - 2, lane - 1)]
    drawn = rng.integers(0, num_envs * lane, batch)
    indices = np.concatenate([drawn, edges, drawn[:7], edges[:3]])
    return rng.permutation(indices).astype(np.int64)


def as_bytes(a):
    return np.ascontiguousarray(a).view(np.uint8)


RINGS = [  # stack, n_step, frame_shape, dtype, num_envs, lane
    (4, 3, (84, 84), np.uint8, 3, 8),  # Atari, the tightest lane (stack + n + 1)
    (4, 3, (5, 7), np.uint8, 4, 13),  # rows of 35 bytes: no aligned copy unit
    (1, 3, (4,), np.float32, 3, 5),  # vector observations (CartPole)
    (2, 5, (3,), np.uint8, 2, 9),  # n >= stack: the buffer gathers next stacks separately
]


@pytest.mark.parametrize("stack,n_step,frame_shape,dtype,num_envs,lane", RINGS)
def test_cpu_gathers_equal_numba_byte_for_byte(cpu_kernels, stack, n_step, frame_shape, dtype, num_envs, lane):
    rng = np.random.default_rng(stack * 100 + n_step)
    for _ in range(3):
        frames, back = random_ring(num_envs, lane, stack, frame_shape, dtype, rng)
        indices = random_indices(num_envs, lane, rng)
        horizon = rng.integers(1, n_step + 1, indices.shape[0])
        batch, size = indices.shape[0], frames.shape[1]
        for width in (stack, stack + n_step):
            expected = np.empty((batch, width, size), dtype)
            ring.gather_window(indices, frames, back, lane, stack, expected)
            out = np.full((batch, width, size), 77, dtype)
            native.gather_window(indices, frames, back, lane, stack, out)
            np.testing.assert_array_equal(as_bytes(out), as_bytes(expected))
        expected = np.empty((batch, stack, size), dtype)
        ring.gather_next(indices, horizon, frames, back, lane, stack, expected)
        out = torch.from_numpy(np.full((batch, stack, *frame_shape), 77, dtype))  # tensors work too
        native.gather_next(torch.from_numpy(indices), torch.from_numpy(horizon), torch.from_numpy(frames),
                           torch.from_numpy(back), lane, stack, out)
        np.testing.assert_array_equal(as_bytes(out.numpy().reshape(batch, stack, size)), as_bytes(expected))


def test_padding_at_a_game_start_and_the_lane_wrap_spelled_out(cpu_kernels):
    # One lane of 8 slots, frame k = [k]. A game starts at slot 6 (back 0, 1, then 2, 3, 3...),
    # so the window of slot 7 repeats frame 6 for the offsets before the game, and its
    # records ahead wrap around to slots 0, 1, 2.
    frames = np.arange(8, dtype=np.uint8)[:, None]
    back = np.array([2, 3, 3, 3, 3, 3, 0, 1], np.uint8)
    out = np.empty((1, 7, 1), np.uint8)
    native.gather_window(np.array([7]), frames, back, 8, 4, out)
    assert out[0, :, 0].tolist() == [6, 6, 6, 7, 0, 1, 2]
    next_stack = np.empty((1, 4, 1), np.uint8)
    native.gather_next(np.array([7]), np.array([2]), frames, back, 8, 4, next_stack)
    assert next_stack[0, :, 0].tolist() == [6, 7, 0, 1]  # record at slot 1: back 3 reaches slot 6


@pytest.mark.parametrize("stack,n_step,frame_shape,dtype", [
    (4, 3, (6, 5), np.uint8),  # window path, with batches cut early by truncations
    (1, 3, (4,), np.float32),
])
def test_cpu_gathers_equal_what_prioritized_replay_samples(cpu_kernels, stack, n_step, frame_shape, dtype):
    num_envs, batch = 4, 48
    rng = np.random.default_rng(3)
    rb = PrioritizedReplay(capacity=num_envs * 30, num_envs=num_envs, obs_shape=frame_shape, stack=stack,
                           n_step=n_step, alpha=0.6, seed=5, obs_dtype=dtype)
    done, game_over = np.ones(num_envs, bool), np.ones(num_envs, bool)
    cut_early = 0
    for step in range(200):  # the lanes wrap several times
        reset = done
        terminated = ~reset & (rng.random(num_envs) < 0.08)
        truncated = ~reset & ~terminated & (rng.random(num_envs) < 0.05)
        obs = (rng.integers(0, 256, (num_envs, stack, *frame_shape))).astype(dtype)
        rb.add(obs if stack > 1 else obs[:, 0], rng.integers(0, 4, num_envs), rng.random(num_envs),
               terminated, truncated, reset, reset & game_over)
        game_over = truncated | (terminated & (rng.random(num_envs) < 0.3))
        done = terminated | truncated
        if step < 20:
            continue
        s = rb.sample(batch, 0.4)
        horizon = rb._outputs[batch].horizon  # the buffer's own horizons m of this batch
        size = rb._frames.shape[1]
        window = np.empty((batch, stack + n_step, size), dtype)
        native.gather_window(s.indices, rb._frames, rb._back, rb.lane, stack, window)
        np.testing.assert_array_equal(window[:, :stack].reshape(s.obs.shape), s.obs)
        next_obs = np.empty((batch, stack, size), dtype)
        native.gather_next(s.indices, horizon, rb._frames, rb._back, rb.lane, stack, next_obs)
        bootstrapped = s.discounts > 0  # elsewhere next_obs is unspecified
        np.testing.assert_array_equal(next_obs.reshape(s.next_obs.shape)[bootstrapped], s.next_obs[bootstrapped])
        full = bootstrapped & (horizon == n_step)  # the next stack sits in the window
        np.testing.assert_array_equal(window[:, n_step:].reshape(s.next_obs.shape)[full], s.next_obs[full])
        cut_early += int((bootstrapped & (horizon < n_step)).sum())
    assert cut_early > 0  # next stacks that the window cannot hold were compared too


def test_cpu_scatter_writes_rows(cpu_kernels):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 21), dtype=np.uint8)
    expected = frames.copy()
    rows = rng.permutation(40)[:16]
    new = rng.integers(0, 256, (16, 3, 7), dtype=np.uint8)  # (B, *frame_shape)
    native.scatter_frames(frames, rows, new)
    expected[rows] = new.reshape(16, 21)
    np.testing.assert_array_equal(frames, expected)


def test_cpu_kernels_refuse_bad_arguments_before_copying(cpu_kernels):
    frames, back = np.zeros((16, 3), np.uint8), np.zeros(16, np.uint8)
    out = np.full((2, 4, 3), 9, np.uint8)
    with pytest.raises(RuntimeError, match=r"indices\[1\] = 16 is out of range \[0, 16\)"):
        native.gather_window(np.array([0, 16]), frames, back, 8, 4, out)
    with pytest.raises(RuntimeError, match=r"horizon\[0\] = -1 is negative"):
        native.gather_next(np.array([0, 1]), np.array([-1, 1]), frames, back, 8, 4, out)
    with pytest.raises(RuntimeError, match="lane must divide"):
        native.gather_window(np.array([0, 1]), frames, back, 5, 4, out)
    with pytest.raises(RuntimeError, match="dtype and frame size of frames"):
        native.gather_window(np.array([0, 1]), frames, back, 8, 4, out.astype(np.float32))
    with pytest.raises(RuntimeError, match="dtype and frame size of frames"):
        native.gather_window(np.array([0, 1]), frames, back, 8, 4, out[:, :, :2].copy())
    with pytest.raises(RuntimeError, match=r"rows\[0\] = -1 is out of range"):
        native.scatter_frames(frames, np.array([-1]), np.zeros((1, 3), np.uint8))
    assert (out == 9).all() and (frames == 0).all()


def test_a_machine_without_a_compiler_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(native, "_modules", {})
    monkeypatch.setenv("CXX", "fastdqn-no-such-compiler")
    _assert_falls_back_with_one_warning("no C\\+\\+ compiler: 'fastdqn-no-such-compiler' is not on PATH")
    with pytest.raises(RuntimeError, match="native cpu replay kernels are not available"):
        native.gather_window(np.zeros(1, np.int64), np.zeros((8, 1), np.uint8), np.zeros(8, np.uint8), 8, 1,
                             np.zeros((1, 1, 1), np.uint8))


@pytest.mark.skipif(not HAS_COMPILER, reason="needs a C++ compiler")
def test_a_build_error_falls_back_with_one_warning(monkeypatch, tmp_path):
    sources = tmp_path / "csrc"
    sources.mkdir()
    (sources / "gather_cpu.cpp").write_text("#error this build is meant to fail\n")
    monkeypatch.setattr(native, "_modules", {})
    monkeypatch.setattr(native, "_CSRC", sources)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    _assert_falls_back_with_one_warning("Error building extension")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_kernels_compile_with_a_bare_nvcc(tmp_path):
    # gather_kernels.cuh includes no torch header, so nvcc checks it without a CUDA torch.
    source = tmp_path / "check.cu"
    source.write_text('#include "gather_kernels.cuh"\n'
                      "auto* gather = &fastdqn::launch_gather;  // instantiates every kernel\n"
                      "auto* scatter = &fastdqn::launch_scatter;\n")
    csrc = Path(native._CSRC)
    proc = subprocess.run(["nvcc", "-std=c++17", f"-I{csrc}", "-c", str(source), "-o", str(tmp_path / "check.o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@needs_cuda
@pytest.mark.parametrize("stack,n_step,frame_shape,dtype,num_envs,lane", RINGS)
def test_cuda_gathers_equal_numba_byte_for_byte(stack, n_step, frame_shape, dtype, num_envs, lane):
    assert native.cuda_gather() is not None, "CUDA and nvcc are available, so the CUDA kernels must build"
    rng = np.random.default_rng(stack * 100 + n_step)
    frames, back = random_ring(num_envs, lane, stack, frame_shape, dtype, rng)
    indices = random_indices(num_envs, lane, rng)
    horizon = rng.integers(1, n_step + 1, indices.shape[0])
    batch, size = indices.shape[0], frames.shape[1]
    frames_d, back_d = torch.from_numpy(frames).cuda(), torch.from_numpy(back).cuda()
    indices_d, horizon_d = torch.from_numpy(indices).cuda(), torch.from_numpy(horizon).cuda()
    for width in (stack, stack + n_step):
        expected = np.empty((batch, width, size), dtype)
        ring.gather_window(indices, frames, back, lane, stack, expected)
        out = torch.full((batch, width, size), 77, device="cuda").to(frames_d.dtype)
        native.gather_window(indices_d, frames_d, back_d, lane, stack, out)
        np.testing.assert_array_equal(as_bytes(out.cpu().numpy()), as_bytes(expected))
    expected = np.empty((batch, stack, size), dtype)
    ring.gather_next(indices, horizon, frames, back, lane, stack, expected)
    out = torch.full((batch, stack, size), 77, device="cuda").to(frames_d.dtype)
    native.gather_next(indices_d, horizon_d, frames_d, back_d, lane, stack, out)
    np.testing.assert_array_equal(as_bytes(out.cpu().numpy()), as_bytes(expected))


@needs_cuda
@pytest.mark.parametrize("frame_shape,dtype", [((84, 84), np.uint8), ((5, 7), np.uint8), ((4,), np.float32)])
def test_cuda_scatter_writes_rows(frame_shape, dtype):
    rng = np.random.default_rng(1)
    size = int(np.prod(frame_shape))
    frames = rng.integers(0, 256, (64, size)).astype(dtype)
    rows = rng.permutation(64)[:16]
    new = rng.integers(0, 256, (16, *frame_shape)).astype(dtype)
    frames_d = torch.from_numpy(frames).cuda()
    native.scatter_frames(frames_d, torch.from_numpy(rows).cuda(), torch.from_numpy(new).cuda())
    frames[rows] = new.reshape(16, size)
    np.testing.assert_array_equal(as_bytes(frames_d.cpu().numpy()), as_bytes(frames))


def test_gather_bench_quick_runs_and_checks_the_kernels_agree(tmp_path, capsys):
    from bench import gather as bench

    path = tmp_path / "gather.json"
    result = bench.main(["--quick", "--no-progress", "--json", str(path)])
    assert json.loads(path.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert [row["batch_size"] for row in result["rows"]] == [32, 64]
    for row in result["rows"]:
        assert row["numba"]["samples_per_s"] > 0
        if result["native_cpu"]:
            assert row["cpp"]["samples_per_s"] > 0 and row["identical_to_numba"]["cpp"] is True
        if result["native_cuda"]:
            assert row["identical_to_numba"]["cuda_gather"] is True
    assert result["native_cpu"] == HAS_COMPILER
    assert "gather of 7-frame windows" in capsys.readouterr().out
