"""What this machine is, and the choices that follow from it: precision, allocator.

bf16 pays only where the hardware computes in it: CUDA GPUs of compute capability 8.0 or
newer, and CPUs with ``avx512_bf16`` or AMX. Elsewhere torch emulates bf16 on the CPU, and
a bf16 update runs several times SLOWER than fp32 (bench/learner.py: 14-17x here with the
ISA capped to AVX2; 3-8x on a reviewer's AVX2 EPYC).
oneDNN's and ATen's own ISA caps (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) are
honoured: with them set below AVX-512 the bf16 instructions are not used even where the
CPU has them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = ["cpu_info", "parse_cpuinfo", "machine", "cpu_label", "Precision", "resolve_precision", "autocast", "keep_freed_memory"]

# The flags worth printing beside a CPU figure: vector width and bf16 / int8 support.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_bf16", "amx_tile", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# ONEDNN_MAX_CPU_ISA values under which oneDNN may use the bf16 instructions.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                     "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
                     "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"model", "cpu_id", "cores", "flags" (the VECTOR_FLAGS present), "isa_cap"} of this CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: the model from platform, the flags unknown
        text = ""
    cap = {name: os.environ[name] for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
           if os.environ.get(name)}
    return {**parse_cpuinfo(text), "cores": os.cpu_count(), "isa_cap": cap}


def parse_cpuinfo(text: str) -> dict:
    """Model name, CPU id and vector flags of the first CPU in a /proc/cpuinfo text.

    ``cpu_id`` ("family 25 model 1") tells CPU generations apart where a VM shows only a
    brand ("AMD EPYC" is Zen3 as family 25 model 1, Zen4 as model 17); None where unknown.
    """
    first_cpu = text.split("\n\n")[0].splitlines()
    fields = dict(line.split(":", 1) for line in first_cpu if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    family, model = fields.get("cpu family"), fields.get("model")
    return {"model": fields.get("model name", platform.processor() or "unknown"),
            "cpu_id": f"family {family} model {model}" if family and model else None,
            "flags": [f for f in VECTOR_FLAGS if f in flags]}


def machine(device: torch.device | str | None = None) -> dict:
    """What a figure or a run was measured on: the CPU (model, cores, vector and bf16
    flags, ISA caps) and the GPU, if ``device`` is one or, with no device, if torch sees one."""
    info = cpu_info()
    gpu = None
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device if device is not None else 0)
    return {"cpu": info["model"], "cpu_id": info.get("cpu_id"), "cores": info["cores"], "cpu_flags": info["flags"],
            "isa_cap": info["isa_cap"], "gpu": gpu}


def cpu_label(record: dict) -> str:
    """A machine record's CPU as printed beside a figure: "AMD EPYC (family 25 model 1)",
    or the model alone in records written before ``cpu_id`` existed."""
    return f"{record['cpu']} ({record['cpu_id']})" if record.get("cpu_id") else record["cpu"]


def cpu_has_fast_bf16(info: dict | None = None) -> tuple[bool, str]:
    """(whether bf16 computes natively on this CPU, why)."""
    info = info or cpu_info()
    present = [f for f in BF16_FLAGS if f in info["flags"]]
    if not present:
        return False, f"{info['model']} has no bf16 instructions (no {' / '.join(BF16_FLAGS)})"
    cap = info["isa_cap"]
    onednn = cap.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    aten = cap.get("ATEN_CPU_CAPABILITY", "avx512").lower()
    if onednn not in _ONEDNN_BF16_ISAS or aten in ("default", "avx2"):
        return False, (f"{info['model']} has {present[0]} but it is capped off "
                       f"({', '.join(f'{k}={v}' for k, v in cap.items())})")
    return True, f"{info['model']} has {present[0]}"


# --precision auto on a CUDA GPU with bf16, when the batch size is known: fp32 below this
# batch, bf16 from it. A rule from counts, to be replaced by the GPU check's measurement
# (bench/learner.py times fp32 and bf16 graphs at batch 32 and 256; bench/gpu_check.py says
# whether the rule picked the faster): at batch 32 an update (3.5 GFLOP) is microseconds of
# arithmetic and is bound by its kernel launches, and the bf16 graph launches 158 kernels
# against fp32's 120 (the casts), ~40 more at 2-4 us each; bf16 halves the arithmetic, which
# saves more than those launches cost only from about 4x that batch (14 GFLOP at batch 128).
CUDA_BF16_MIN_BATCH = 128


class Precision(NamedTuple):
    name: str  # fp32 | bf16
    reason: str  # one line: why this one
    slow: bool  # bf16 asked for where the hardware only emulates it: warn the user


def resolve_precision(requested: str, device: torch.device, *, conv_net: bool = True,
                      info: dict | None = None, batch_size: int | None = None) -> Precision:
    """The precision to use for ``requested`` in auto | fp32 | bf16, and why.

    auto: bf16 on a CUDA GPU with native bf16 (compute capability >= 8.0) and on a CPU with
    bf16 instructions, for the CNN; fp32 everywhere else and for MLPs, whose layers are too
    small for bf16 to save anything but whose casts would still cost. On such a GPU, given
    the update's ``batch_size``, fp32 below CUDA_BF16_MIN_BATCH (launch-bound updates, which
    bf16's casts only lengthen); without it, bf16 as before.
    """
    if requested in ("fp32", "bf16"):
        if requested == "bf16" and device.type == "cpu":
            fast, why = cpu_has_fast_bf16(info)
            if not fast:
                return Precision("bf16", f"asked for, but SLOW here: {why}, so torch emulates "
                                         "bf16 (3-17x slower than fp32; --precision auto avoids it)", True)
        return Precision(requested, "asked for", False)
    if requested != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    if not conv_net:
        return Precision("fp32", "auto: a small MLP gains nothing from bf16", False)
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if major >= 8 and batch_size is not None and batch_size < CUDA_BF16_MIN_BATCH:
            return Precision("fp32", f"auto: {name} computes in bf16 (compute capability {major}.x), but at batch "
                                     f"{batch_size} (< {CUDA_BF16_MIN_BATCH}) an update is bound by kernel launches, "
                                     "which bf16's casts add to", False)
        if major >= 8:
            at = f", and batch {batch_size} >= {CUDA_BF16_MIN_BATCH}" if batch_size is not None else ""
            return Precision("bf16", f"auto: {name} computes in bf16 (compute capability {major}.x{at})", False)
        return Precision("fp32", f"auto: {name} has no native bf16 (compute capability {major}.x < 8.0)", False)
    fast, why = cpu_has_fast_bf16(info)
    return Precision("bf16" if fast else "fp32", f"auto: {why}", False)


def autocast(device: torch.device, precision: str):
    """The context every forward runs in: bf16 autocast, or nothing for fp32.

    Autocast's weight-cast cache stays off on CUDA, where it may not be used inside a CUDA
    graph capture.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=device.type != "cuda")


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MB for reuse (Linux, once per process).

    By default glibc serves every allocation above 128 KB-32 MB with a fresh mmap and returns
    it to the OS on free. A CPU update allocates its activations and gradients afresh every
    time (a 32 x 4 x 84 x 84 fp32 input is 3.6 MB, a dueling fc layer's gradient 6.4 MB), so
    an update could page-fault thousands of fresh pages in (4,716 per update in
    docs/learner-profile.md; `fastdqn bench learner --profile` counts them). Raising the mmap threshold and the trim threshold keeps those blocks
    in the heap, where the next update finds them already mapped. Larger blocks (the replay's
    gigabytes) are still mmapped as before. Returns whether the setting took.
    FASTDQN_DEFAULT_MALLOC=1 in the environment leaves glibc's defaults alone.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux") or os.environ.get("FASTDQN_DEFAULT_MALLOC") == "1":
        return _ALLOCATOR_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1  # 32 MB: glibc's maximum on 64-bit
    ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
    _ALLOCATOR_TUNED = ok
    return ok
