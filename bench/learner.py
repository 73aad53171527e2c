"""Learner throughput: Nature-CNN double-DQN updates per second, per execution mode.

    python bench/learner.py                      # batch 32 and 256, all modes of this machine
    python bench/learner.py --json out.json --threads 2 --seconds 20
    python -m fastdqn.bench.learner --quick      # tiny smoke run

Modes: ``<precision>-<path>`` with precision fp32 | bf16 and path eager | compile | graph
(graph: CUDA only, K updates per replay). ``-cl`` appended runs the network in
channels_last memory format (an experiment; the learner itself does not use it).
Every mode trains its own learner (Adam, Huber, double Q, hard target every 8000) from
the same initial weights on random uint8 batches (4, 84, 84), 6 actions.

The modes are timed in interleaved rounds (fp32, bf16, ..., fp32, bf16, ...) so that a
load from another process spreads over all of them alike. Ratios are to fp32-eager of the
same batch size, measured in the same run. Each round also records how many cores other
processes kept busy meanwhile: on a 2-core machine one busy core can slow a 2-thread
PyTorch update down 20x (OpenMP threads wait on each other), so the headline figure is the
median over the quiet rounds (others < 0.1 cores), or over all rounds if none was quiet
("quiet 0/N" in the table).
Compile / capture time is reported apart (``warmup_s``) and never timed as throughput.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

from fastdqn.bench.common import OtherLoad, machine, write_json
from fastdqn.learner import Learner
from fastdqn.networks import make_q_network

CPU_MODES = ("fp32-eager", "bf16-eager", "fp32-compile", "bf16-compile")
GPU_MODES = CPU_MODES + ("fp32-graph", "bf16-graph")
NUM_ACTIONS = 6


def random_batches(n: int, batch_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames = (batch_size, 4, 84, 84)
    return [{
        "obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "actions": rng.integers(0, NUM_ACTIONS, batch_size),
        "returns": rng.normal(size=batch_size).astype(np.float32),
        "discounts": np.where(rng.random(batch_size) < 0.02, 0.0, 0.99**3).astype(np.float32),
        "next_obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "weights": rng.uniform(0.1, 1.0, batch_size).astype(np.float32),
    } for _ in range(n)]


def _make(mode: str, net: torch.nn.Module, device: torch.device, k: int) -> Learner:
    parts = mode.split("-")
    precision, path = parts[0], parts[1]
    net = copy.deepcopy(net)
    if "cl" in parts[2:]:
        net = net.to(memory_format=torch.channels_last)
    return Learner(net, precision=precision, compile=path == "compile",
                   cuda_graph=path == "graph", updates_per_graph=k, device=device)


def _step(learner: Learner, batches, mode: str) -> int:
    """One timed call; returns the number of updates it made."""
    if mode.split("-")[1] == "graph":
        learner.update_many(batches)
        return len(batches)
    learner.update(batches[0])
    return 1


def run(batch_sizes=(32, 256), modes=None, seconds: float = 6.0, progress: bool = True,
        device: str | None = None, threads: int | None = None, rounds: int = 3,
        updates_per_graph: int = 4) -> dict:
    """Time each mode at each batch size; returns a JSON-ready dict (see main)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    if modes is None:
        modes = GPU_MODES if device.type == "cuda" else CPU_MODES
    modes = list(modes)
    if "fp32-eager" not in modes:
        modes.insert(0, "fp32-eager")  # the baseline of every ratio
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)

    results = []
    for batch_size in batch_sizes:
        torch.manual_seed(0)
        net = make_q_network((4, 84, 84), NUM_ACTIONS)
        batches = random_batches(updates_per_graph, batch_size)
        learners, warmup = {}, {}
        for mode in modes:
            t0 = time.perf_counter()
            learners[mode] = _make(mode, net, device, updates_per_graph)
            for _ in range(2):  # compile / capture / first-call allocations
                _step(learners[mode], batches, mode)
            sync()
            warmup[mode] = time.perf_counter() - t0
            say(f"batch {batch_size} {mode}: ready in {warmup[mode]:.1f} s")
        rates = {m: [] for m in modes}  # updates/s of each round
        others = {m: [] for m in modes}  # cores other processes used during that round
        for r in range(rounds):
            for mode in modes:
                n, load, t0 = 0, OtherLoad(), time.perf_counter()
                while True:
                    n += _step(learners[mode], batches, mode)
                    sync()
                    if time.perf_counter() - t0 >= seconds / rounds:
                        break
                rates[mode].append(n / (time.perf_counter() - t0))
                others[mode].append(load.cores())
            say(f"batch {batch_size}: round {r + 1}/{rounds} done")
        headline = {m: _headline(rates[m], others[m]) for m in modes}
        base = headline["fp32-eager"][0]
        base_best = max(rates["fp32-eager"])
        for mode in modes:
            ups, quiet = headline[mode]
            best = max(rates[mode])
            results.append({
                "batch_size": batch_size, "mode": mode,
                "updates_per_s": round(ups, 2), "samples_per_s": round(ups * batch_size, 1),
                "ms_per_update": round(1e3 / ups, 2), "ratio_to_fp32_eager": round(ups / base, 3),
                "best_updates_per_s": round(best, 2),
                "best_ratio_to_fp32_eager": round(best / base_best, 3),
                "quiet_rounds": quiet, "rounds": [round(x, 2) for x in rates[mode]],
                "other_processes_cpu_cores": others[mode], "warmup_s": round(warmup[mode], 2),
            })
        del learners
    return {
        "benchmark": "learner",
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else machine()["cpu"]),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "network": "NatureCNN (4,84,84) uint8, 6 actions; Adam, Huber, double Q",
        "updates_per_graph": updates_per_graph,
        "results": results,
    }


QUIET = 0.1  # a round is quiet when other processes used less than this many cores


def _headline(rates: list[float], others: list[float | None]) -> tuple[float, int]:
    """(median updates/s over the quiet rounds, their count); all rounds if none was quiet."""
    quiet = [r for r, o in zip(rates, others) if o is not None and o < QUIET]
    return float(np.median(quiet or rates)), len(quiet)


def format_table(report: dict) -> str:
    lines = [f"learner on {report['device']} ({report['device_name']}), torch {report['torch']}, "
             f"{report['threads']} threads",
             f"{'batch':>5}  {'mode':<16} {'ms/update':>10} {'updates/s':>10} {'samples/s':>10} "
             f"{'x fp32':>7} {'(best)':>7} {'quiet':>7} {'warm-up s':>9}"]
    for r in report["results"]:
        quiet = f"{r['quiet_rounds']}/{len(r['rounds'])}"
        lines.append(f"{r['batch_size']:>5}  {r['mode']:<16} {r['ms_per_update']:>10.2f} "
                     f"{r['updates_per_s']:>10.1f} {r['samples_per_s']:>10.0f} "
                     f"{r['ratio_to_fp32_eager']:>7.2f} {r['best_ratio_to_fp32_eager']:>7.2f} "
                     f"{quiet:>7} {r['warmup_s']:>9.1f}")
    lines.append(f"figures: median over the quiet rounds (other processes < {QUIET} cores; all "
                 "rounds if none was quiet); (best): ratio of the best rounds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (batch 4, eager modes, a fraction of a second): a smoke test")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--batch-sizes", default="32,256", help="comma-separated")
    parser.add_argument("--modes", default=None,
                        help="comma-separated, e.g. fp32-eager,bf16-eager,bf16-eager-cl "
                             "(default: all of this device)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per mode")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--updates-per-graph", type=int, default=4, help="K of the graph modes")
    args = parser.parse_args(argv)

    kwargs = dict(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                  modes=args.modes.split(",") if args.modes else None, seconds=args.seconds,
                  device=args.device, threads=args.threads, rounds=args.rounds,
                  updates_per_graph=args.updates_per_graph)
    if args.quick:
        kwargs.update(batch_sizes=(4,), modes=["fp32-eager", "bf16-eager"], seconds=0.2,
                      rounds=1)
    report = run(**kwargs)
    print(format_table(report))
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
