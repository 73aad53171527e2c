"""What every benchmark shares: the machine's description, timing, tables and JSON."""

from __future__ import annotations

import json
import statistics
import os
import platform
import sys
import time
from pathlib import Path


def machine() -> dict:
    """CPU (model, cores, vector / bf16 flags, ISA caps), GPU and library versions: printed
    above every table."""
    import numpy
    import torch

    from fastdqn.hardware import machine as hardware

    info = {
        **hardware(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    for name in ("envpool", "numba"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def rate(fn, seconds: float, min_calls: int = 3) -> tuple[float, int]:
    """Call fn() repeatedly for about `seconds`; return (calls per second, calls)."""
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= min_calls:
            return calls / elapsed, calls


def table(title: str, header: list[str], rows: list[list], file=None) -> None:
    file = file or sys.stdout  # looked up at call time (tests and callers may redirect it)
    cells = [[str(c) for c in header]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}", file=file)
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) if k else c.ljust(w) for c, w in zip(row, widths)), file=file)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=file)


def fmt(value) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_machine(info: dict, file=None) -> None:
    from fastdqn.hardware import cpu_label

    file = file or sys.stdout
    gpu = info["gpu"] or "no GPU"
    flags = " ".join(info.get("cpu_flags", [])) or "none known"
    cap = "".join(f", {k}={v}" for k, v in info.get("isa_cap", {}).items())
    print(f"machine: {cpu_label(info)}, {info['cores']} cores (flags: {flags}{cap}), {gpu}; python {info['python']}, "
          f"torch {info['torch']}, envpool {info['envpool']}, numba {info['numba']}, numpy {info['numpy']}", file=file)


def write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def interleaved_ratio(label: str, measures: dict, ratio: tuple[str, str, str] | list[tuple[str, str, str]],
                      rounds: int, show_progress: bool = True) -> dict:
    """Time the measures (name -> zero-argument function returning a rate) in interleaved
    rounds (a, b, a, b, ... in the dict's order), so that the machine's drift reaches all alike.

    ``ratio`` = (key, numerator, denominator) names a ratio (or a list of them). Returns
    ``{name: median over the rounds, key: median of numerator / median of denominator,
    key + "_range": [min, max] of the per-round ratios, "per_round": [...]}``; each round
    holds the rates, their ratios and the cores other processes kept busy during each measure.
    """
    ratios = [ratio] if isinstance(ratio, tuple) else list(ratio)
    per_round = []
    for r in range(1, rounds + 1):
        figures, busy = {}, []
        for name, measure in measures.items():
            progress(f"{label}: round {r}/{rounds}: {name}", show_progress)
            load = OtherLoad()
            figures[name] = measure()
            busy.append(load.cores())
        for key, numerator, denominator in ratios:
            figures[key] = figures[numerator] / figures[denominator]
        per_round.append({**figures, "cores_busy_elsewhere": busy})
        progress(f"{label}: round {r}/{rounds}: " + ", ".join(f"{n} {figures[n]:,.1f}" for n in measures),
                 show_progress)
    result = {name: statistics.median(x[name] for x in per_round) for name in measures}
    for key, numerator, denominator in ratios:
        per_round_ratios = [x[key] for x in per_round]
        result[key] = result[numerator] / result[denominator]
        result[f"{key}_range"] = [min(per_round_ratios), max(per_round_ratios)]
    return {**result, "per_round": per_round}


def progress(message: str, enabled: bool = True) -> None:
    if enabled:
        print(f"... {message}", file=sys.stderr, flush=True)


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process); Linux only."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    machine_busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return machine_busy, time.process_time()


class OtherLoad:
    """How many cores OTHER processes kept busy since construction (None where unknown).

    On a 2-core machine one busy core slows a 2-thread PyTorch update many times over, so
    benchmarks report this beside their figures.
    """

    def __init__(self):
        self._start, self._t0 = _cpu_seconds(), time.perf_counter()

    def cores(self) -> float | None:
        end = _cpu_seconds()
        if self._start is None or end is None:
            return None
        wall = time.perf_counter() - self._t0
        others = (end[0] - self._start[0]) - (end[1] - self._start[1])
        return round(max(0.0, others) / max(wall, 1e-9), 2)
