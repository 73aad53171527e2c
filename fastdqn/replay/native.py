"""Native frame-ring kernels (csrc/): a C++ CPU twin of the Numba gathers, and CUDA kernels
that gather stacks from a frame ring kept in GPU memory.

Each extension is compiled by ``torch.utils.cpp_extension.load`` (ninja) on first use and
cached under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); later
processes only load it. A machine that cannot build it (no compiler, no ninja, a build
error) gets None from ``cpu_gather()`` / ``cuda_gather()`` and one RuntimeWarning with the
reason: callers then keep the Numba path. The CUDA extension is only tried when
``torch.cuda.is_available()``, and is built for the present GPU's compute capability only
(``cuda_arch_flags``; ``TORCH_CUDA_ARCH_LIST`` set by the user is left to torch).

torch serialises builds with a ``lock`` file in the build folder and waits for it without
end; a build killed midway (a timeout, Ctrl-C) leaves it behind. A lock older than
``STALE_LOCK_S`` is therefore taken as left by a dead build and removed, with a warning.

The gathers read the ring layout of ``ring.py`` (frames (N, F), back (N,) uint8, lanes of
``lane`` rows) and write into a caller-provided contiguous buffer:

    gather_window(indices, frames, back, lane, stack, out)   # out (B, W, F): W window positions
    gather_next(indices, horizon, frames, back, lane, stack, out)  # stack at indices + horizon
    scatter_frames(frames, rows, new_frames)                 # frames[rows] = new_frames

They run on the device of ``frames`` (CPU or CUDA; CUDA work is queued on the current stream)
and accept NumPy arrays or tensors (NumPy arrays are wrapped without a copy). The CPU kernels
check that every index is in range; the CUDA kernels do not (that would cost a host sync):
pass them indices from the sum tree only.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
import warnings
from pathlib import Path

import numpy as np
import torch

_PACKAGE = Path(__file__).resolve().parents[1]
# An installed wheel ships the sources as fastdqn/csrc; a checkout has them in <repo>/csrc.
_CSRC = next((d for d in (_PACKAGE / "csrc", _PACKAGE.parent / "csrc") if (d / "ring_index.h").is_file()),
             _PACKAGE.parent / "csrc")

# No build of these one-file extensions takes this long (1-3 min on a GPU machine): a lock
# this old was left by a build that was killed.
STALE_LOCK_S = 600.0

# kind ("cpu" / "cuda") -> loaded module, or None after a failed attempt (never retried).
_modules: dict[str, object] = {}
# kind -> why its module is None (the reason the warning gave), for later error messages.
_reasons: dict[str, str] = {}


def cpu_gather():
    """The C++ CPU kernels, built on first use; None (after one warning) if they cannot be."""
    if "cpu" not in _modules:
        _modules["cpu"] = _load("cpu", ["gather_cpu.cpp"])
    return _modules["cpu"]


def cuda_gather():
    """The CUDA kernels, built on first use; None without CUDA, or (after one warning) if
    they cannot be built."""
    if "cuda" not in _modules:
        if torch.cuda.is_available():
            _modules["cuda"] = _load("cuda", ["gather_cuda.cu"])
        else:
            _modules["cuda"] = None
            _reasons["cuda"] = "torch.cuda.is_available() is False"
    return _modules["cuda"]


def unavailable_reason(kind: str) -> str | None:
    """Why ``cpu_gather()`` / ``cuda_gather()`` (kind "cpu" / "cuda") returned None, or None
    if it was not tried yet or did not fail."""
    return _reasons.get(kind) if _modules.get(kind, True) is None else None


def _load(kind: str, sources: list[str]):
    try:
        from torch.utils import cpp_extension

        reason = _missing_tool(cpp_extension)
        if reason is None:
            name = f"fastdqn_gather_{kind}"
            _remove_stale_build_lock(cpp_extension, name)
            arch = []
            if kind == "cuda" and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
                arch = cuda_arch_flags(torch.cuda.get_device_capability(), torch.cuda.get_arch_list())
            return cpp_extension.load(
                name=name,
                sources=[str(_CSRC / s) for s in sources],
                extra_include_paths=[str(_CSRC)],
                extra_cflags=["-O3"],
                # (the flags land in the cached build.ninja: on another GPU ninja sees a
                # changed command and rebuilds)
                extra_cuda_cflags=["-O3", *arch],
            )
    except Exception as e:  # a build error, or a broken toolchain
        reason = _failure(e)
    _reasons[kind] = reason
    warnings.warn(f"fastdqn: the native {kind} replay kernels could not be built ({reason}); "
                  "using the Numba path", RuntimeWarning, stacklevel=3)
    return None


def cuda_arch_flags(capability: tuple[int, int], torch_archs: list[str]) -> list[str]:
    """nvcc flags that build for one GPU: its compute capability, e.g. (9, 0) ->
    ``-gencode=arch=compute_90,code=sm_90``, instead of torch's default of every visible
    GPU's. A GPU newer than the newest ``sm_XY`` torch was built for (``torch_archs``, from
    ``torch.cuda.get_arch_list()``; torch assumes nvcc matches its own CUDA) gets that
    newest one, plus its PTX, which the driver compiles for the newer GPU (as torch does)."""
    built = [(int(a[3:-1]), int(a[-1])) for a in torch_archs if a.startswith("sm_") and a[3:].isdigit()]
    major, minor = capability
    if built and (major, minor) > max(built):
        major, minor = max(built)
        return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}",
                f"-gencode=arch=compute_{major}{minor},code=compute_{major}{minor}"]
    return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]


def remove_stale_lock(lock: Path, older_than_s: float = STALE_LOCK_S) -> bool:
    """Remove torch's build lock ``lock`` if it is older than ``older_than_s`` (a build
    killed midway left it, and torch would wait on it for ever); returns whether it did."""
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False
    if age < older_than_s:
        return False
    lock.unlink(missing_ok=True)
    warnings.warn(f"fastdqn: removed {lock}, left {age:.0f} s ago by a native kernel build that did not finish",
                  RuntimeWarning, stacklevel=3)
    return True


def _remove_stale_build_lock(cpp_extension, name: str) -> None:
    try:  # torch's own (private) rule for the build folder; without it, no lock is removed
        build_directory = cpp_extension._get_build_directory(name, False)
    except Exception:
        return
    remove_stale_lock(Path(build_directory) / "lock")


def _failure(e: Exception) -> str:
    """One line on why a build failed: the summary and the compiler's first error, not the
    whole ninja log (cpp_extension puts that log into the exception's message)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    summary = lines[0].split(": [", 1)[0][:300]  # "Error building extension 'name'", no log
    error = next((line for line in lines[1:] if "error" in line.lower()), None)
    return f"{summary}: {error[:300]}" if error else summary


def _missing_tool(cpp_extension) -> str | None:
    """Why the build cannot even start, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} is not on PATH"
    if not cpp_extension.is_ninja_available():
        # `pip install ninja` puts it next to the interpreter, which is not on PATH when the
        # venv's python is run without activating the venv.
        scripts = sysconfig.get_path("scripts")
        if (Path(scripts) / "ninja").is_file():
            os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
        if not cpp_extension.is_ninja_available():
            return "ninja is not on PATH (pip install ninja)"
    return None


def _tensor(x) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def _module(frames: torch.Tensor):
    module = cuda_gather() if frames.is_cuda else cpu_gather()
    if module is None:
        kind = frames.device.type
        raise RuntimeError(f"the native {kind} replay kernels are not available ({unavailable_reason(kind)});"
                           " use the Numba kernels of fastdqn.replay.ring")
    return module


# The wrappers only wrap NumPy arrays and pick the module: the shapes are checked in C++
# (frames (N, *frame_shape), out (B, W, *frame_shape)), where it costs nothing per call.

def gather_window(indices, frames, back, lane: int, stack: int, out) -> None:
    """out[i, p] = frame at position p of the window of record indices[i] (p - (stack - 1)
    records from it, padded with the game's first frame); the twin of ``ring.gather_window``.
    With out.shape[1] == stack + n: obs = out[:, :stack], next obs (if not cut) out[:, n:]."""
    frames = _tensor(frames)
    _module(frames).gather_window(_tensor(indices), frames, _tensor(back), lane, stack, _tensor(out))


def gather_next(indices, horizon, frames, back, lane: int, stack: int, out) -> None:
    """out[i] = stack at record indices[i] + horizon[i]; the twin of ``ring.gather_next``."""
    frames = _tensor(frames)
    _module(frames).gather_next(_tensor(indices), _tensor(horizon), frames, _tensor(back), lane, stack,
                                _tensor(out))


def scatter_frames(frames, rows, new_frames) -> None:
    """frames[rows[i]] = new_frames[i] (rows distinct): one env step's newest frames into
    their slots of the ring."""
    frames = _tensor(frames)
    _module(frames).scatter_frames(frames, _tensor(rows), _tensor(new_frames))
