"""Learner throughput: Nature-CNN double-DQN updates per second, per execution mode.

    python bench/learner.py                      # batch 32 and 256, all modes of this machine
    python bench/learner.py --json out.json --threads 2 --seconds 20
    python -m bench.learner --quick              # tiny smoke run (from the repository root)
    python -m bench.learner --torso nips --hidden 256 --modes fp32-eager   # the 2013 network
    python -m bench.learner --torso nips --hidden 256 --modes fp32-eager --heads scalar,c51,qr \
        --batch-sizes 64 --replay-ratio 4      # every Q-head in one run, also per agent step

Modes: ``<precision>-<path>`` with precision fp32 | bf16 and path eager | compile | graph
(graph: CUDA only, K updates per replay): fastdqn's Learner (dueling Nature CNN, Adam,
Huber, double Q, hard target every 8000). Two baselines, fp32 eager on the same device, written plainly
(bench/baselines.py PlainUpdate): ``plain`` (the same algorithm: dueling, double Q, three
forwards) and ``cleanrl`` (CleanRL's dqn_atari update: no dueling, max over the target
net, two forwards, MSE). All train from the same seed on random uint8 batches (4, 84, 84),
6 actions. ``--heads`` times the Learner's modes with each Q-head (networks.HEADS: scalar,
c51, qr) as ``MODE:HEAD`` (``fp32-eager:c51``); with ``--replay-ratio R`` each row also gives
the learner's ms per agent step at that ratio (ms per update x R / batch size). Ratios are to ``plain`` (to ``fp32-eager`` with ``--torso nips``: the baselines are
the Nature CNN only). One process setting reaches every mode alike: the
Learner tunes glibc's allocator (fastdqn.hardware.keep_freed_memory) when the first one is
built, so the baselines run without page faults too (on their own they can fault thousands
of pages per update, see --profile: their ratios here are conservative for fastdqn).

The modes are timed in interleaved rounds (fp32, bf16, ..., fp32, bf16, ...) so that a
load from another process spreads over all of them alike. Ratios are to ``plain`` of the
same batch size, measured in the same run. Each round also records how many cores other
processes kept busy meanwhile: on a 2-core machine one busy core can slow a 2-thread
PyTorch update down 20x (OpenMP threads wait on each other), so the headline figure is the
median over the quiet rounds (others < 0.1 cores), or over all rounds if none was quiet
("quiet 0/N" in the table).
Compile / capture time is reported apart (``warmup_s``) and never timed as throughput.
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import copy
import itertools
import sys
import time

import numpy as np
import torch

from fastdqn.hardware import keep_freed_memory, resolve_precision
from fastdqn.learner import Learner
from fastdqn.networks import HEADS, TORSOS, channels_last, make_q_network
from .baselines import PlainUpdate
from .common import OtherLoad, machine, print_machine, write_json

BASELINES = PlainUpdate.KINDS  # ("plain", "cleanrl")
CPU_MODES = BASELINES + ("fp32-eager", "bf16-eager", "fp32-compile", "bf16-compile")
GPU_MODES = CPU_MODES + ("fp32-graph", "bf16-graph")
NUM_ACTIONS = 6


def random_batches(n: int, batch_size: int, seed: int = 0, frame_size: int = 84) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames = (batch_size, 4, frame_size, frame_size)
    return [{
        "obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "actions": rng.integers(0, NUM_ACTIONS, batch_size),
        "returns": rng.normal(size=batch_size).astype(np.float32),
        "discounts": np.where(rng.random(batch_size) < 0.02, 0.0, 0.99**3).astype(np.float32),
        "next_obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "weights": rng.uniform(0.1, 1.0, batch_size).astype(np.float32),
    } for _ in range(n)]


def _make(mode: str, net: torch.nn.Module, device: torch.device, k: int):
    if mode in BASELINES:
        torch.manual_seed(0)
        return PlainUpdate(mode, (4, 84, 84), NUM_ACTIONS, device=device)
    precision, path = mode.split(":")[0].split("-")
    return Learner(copy.deepcopy(net), precision=precision, compile=path == "compile",
                   cuda_graph=path == "graph", updates_per_graph=k, device=device)


def _baseline_batch(batch: dict) -> tuple[torch.Tensor, ...]:
    """A replay batch as PlainUpdate takes it: obs, actions, rewards, next_obs, dones."""
    dones = (batch["discounts"] == 0).astype(np.float32)
    return tuple(torch.as_tensor(x) for x in (batch["obs"], batch["actions"], batch["returns"],
                                              batch["next_obs"], dones))


def _step(learner, batches, mode: str) -> int:
    """One timed call; returns the number of updates it made."""
    if mode in BASELINES:
        learner(*_baseline_batch(batches[0]))
        return 1
    if mode.split(":")[0].endswith("-graph"):
        learner.update_many(batches)
        return len(batches)
    learner.update(batches[0])
    return 1


def _baselines_fit(torso: str, frame_size: int) -> bool:
    """The plain/cleanrl baselines are written for the Nature CNN on 84x84 frames only."""
    return torso == "nature" and frame_size == 84


def _without_foreign_baselines(modes, torso: str, frame_size: int = 84) -> list[str]:
    """The modes that time ``torso`` on ``frame_size`` frames (see _baselines_fit)."""
    return [m for m in modes if _baselines_fit(torso, frame_size) or m not in BASELINES]


def run(batch_sizes=(32, 256), modes=None, seconds: float = 6.0, progress: bool = True,
        device: str | None = None, threads: int | None = None, rounds: int = 3,
        updates_per_graph: int = 4, torso: str = "nature", hidden: int = 512, frame_size: int = 84,
        heads=("scalar",), replay_ratio: float | None = None) -> dict:
    """Time each mode at each batch size; returns a JSON-ready dict (see main).

    ``torso``/``hidden``: fastdqn's network (networks.TORSOS); ``frame_size``: its square input
    (``--frame-size`` of training). The plain and cleanrl baselines are the Nature CNN on 84x84
    only, so another torso or frame size times the Learner's modes alone.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    if modes is None:
        modes = _without_foreign_baselines(GPU_MODES if device.type == "cuda" else CPU_MODES, torso, frame_size)
    modes = list(modes)
    if not _baselines_fit(torso, frame_size) and set(modes) & set(BASELINES):
        raise ValueError(f"the {'/'.join(BASELINES)} baselines are the Nature CNN on 84x84 frames; with torso "
                         f"{torso!r} on {frame_size}x{frame_size} time fastdqn's modes only (e.g. fp32-eager)")
    base_mode = "plain" if "plain" in modes else "fp32-eager"
    if base_mode not in modes:
        modes.insert(0, base_mode)  # the baseline of every ratio
    for head in heads:
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}: one of {', '.join(HEADS)}")
    # each Learner mode once per head (the scalar one keeps its plain name), baselines once
    modes = [m for m in modes if m in BASELINES or "scalar" in heads] + [
        f"{m}:{head}" for m in modes if m not in BASELINES for head in heads if head != "scalar"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cpu":
        keep_freed_memory()  # what every CPU Learner sets; set first, so all modes share it
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)

    results = []
    for batch_size in batch_sizes:
        nets = {}
        for head in ("scalar", *heads):
            torch.manual_seed(0)
            nets[head] = make_q_network((4, frame_size, frame_size), NUM_ACTIONS, dueling=True, hidden=hidden,
                                        torso=torso, head=head)
        net = nets["scalar"]
        batches = random_batches(updates_per_graph, batch_size, frame_size=frame_size)
        learners, warmup = {}, {}
        for mode in modes:
            t0 = time.perf_counter()
            head = mode.split(":")[1] if ":" in mode else "scalar"
            learners[mode] = _make(mode, nets[head], device, updates_per_graph)
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
        base = headline[base_mode][0]
        base_best = max(rates[base_mode])
        for mode in modes:
            ups, quiet = headline[mode]
            best = max(rates[mode])
            results.append({
                "batch_size": batch_size, "mode": mode,
                "updates_per_s": round(ups, 2), "samples_per_s": round(ups * batch_size, 1),
                "ms_per_update": round(1e3 / ups, 2), "ratio": round(ups / base, 3),
                "best_updates_per_s": round(best, 2), "best_ratio": round(best / base_best, 3),
                "quiet_rounds": quiet, "rounds": [round(x, 2) for x in rates[mode]],
                "other_processes_cpu_cores": others[mode], "warmup_s": round(warmup[mode], 2),
            })
            if replay_ratio:
                results[-1]["ms_per_agent_step"] = round(1e3 / ups * replay_ratio / batch_size, 3)
        del learners
    return {
        "benchmark": "learner",
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else machine()["cpu"]),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "network": f"dueling Q-network (torso {torso}, fc {hidden}) (4,{frame_size},{frame_size}) uint8, 6 actions; "
                   "Adam, Huber, double Q",
        "parameters": sum(p.numel() for p in net.parameters()),
        "ratio_to": base_mode,
        "auto_precision": "{} ({})".format(*resolve_precision("auto", device)[:2]),
        "updates_per_graph": updates_per_graph,
        "replay_ratio": replay_ratio,
        "results": results,
    }


def profile(batch_size: int = 32, modes=("plain", "fp32-eager"), updates: int = 20,
            top: int = 12, device: str = "cpu", torso: str = "nature", hidden: int = 512) -> dict:
    """Where an update's time goes, per mode: minor page faults per update, and torch.profiler's
    ops by self CPU time (ms per update, calls per update, input shapes).

    Run it twice to see the allocator's share: as is, and with FASTDQN_DEFAULT_MALLOC=1
    (glibc's defaults: fresh pages mapped on every update).
    """
    import resource

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(device)
    tuned = keep_freed_memory() if device.type == "cpu" else False
    torch.manual_seed(0)
    net = make_q_network((4, 84, 84), NUM_ACTIONS, dueling=True, hidden=hidden, torso=torso)
    batches = random_batches(1, batch_size)
    report = {"batch_size": batch_size, "updates": updates, "allocator_tuned": tuned, "torso": torso,
              "machine": machine(), "threads": torch.get_num_threads(), "modes": {}}
    for mode in modes:
        learner = _make(mode, net, device, 1)
        for _ in range(3):
            _step(learner, batches, mode)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for _ in range(updates):
            _step(learner, batches, mode)
        ms = 1e3 * (time.perf_counter() - t0) / updates
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / updates
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(updates):
                _step(learner, batches, mode)
        events = sorted(prof.key_averages(group_by_input_shape=True),
                        key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / updates / 1e3
        report["modes"][mode] = {
            "ms_per_update": round(ms, 2), "page_faults_per_update": round(faults, 1),
            "profiled_self_cpu_ms_per_update": round(total, 2),
            "top_ops": [{"op": e.key, "self_ms_per_update": round(e.self_cpu_time_total / updates / 1e3, 3),
                         "calls_per_update": round(e.count / updates, 2),
                         "shapes": str(e.input_shapes)[:80]} for e in events[:top]],
        }
    return report


def time_reorder(batch_size: int = 64, repeats: int = 200) -> dict:
    """ms per reorder of a (B, 4, 84, 84) uint8 batch to channels_last: torch's strided copy
    against fastdqn.networks.channels_last, for a contiguous batch and for the replay's
    strided view (obs = window[:, :4] of a (B, 7, 84, 84) window of frames)."""
    window = torch.from_numpy(random_batches(1, batch_size)[0]["obs"]).repeat(1, 2, 1, 1)[:, :7]
    inputs = {"contiguous": window[:, :4].contiguous(), "replay view": window[:, :4]}
    ways = {"torch": lambda x: x.contiguous(memory_format=torch.channels_last), "fastdqn": channels_last}
    report = {"batch_size": batch_size, "machine": machine(), "threads": torch.get_num_threads(), "ms": {}}
    for (input_name, x), (way, reorder) in itertools.product(inputs.items(), ways.items()):
        reorder(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            reorder(x)
        report["ms"][f"{way}, {input_name}"] = round(1e3 * (time.perf_counter() - t0) / repeats, 3)
    return report


def format_profile(report: dict) -> str:
    lines = [f"profile at batch {report['batch_size']}, {report['updates']} updates, "
             f"{report['threads']} threads; allocator tuned: {report['allocator_tuned']}"]
    for mode, r in report["modes"].items():
        lines.append(f"\n{mode}: {r['ms_per_update']:.1f} ms/update (unprofiled), "
                     f"{r['page_faults_per_update']:.0f} page faults/update, profiled self CPU "
                     f"{r['profiled_self_cpu_ms_per_update']:.1f} ms/update")
        for op in r["top_ops"]:
            lines.append(f"  {op['self_ms_per_update']:7.2f} ms  {op['calls_per_update']:4.1f}x  "
                         f"{op['op']:<32} {op['shapes']}")
    return "\n".join(lines)


QUIET = 0.1  # a round is quiet when other processes used less than this many cores


def _headline(rates: list[float], others: list[float | None]) -> tuple[float, int]:
    """(median updates/s over the quiet rounds, their count); all rounds if none was quiet."""
    quiet = [r for r, o in zip(rates, others) if o is not None and o < QUIET]
    return float(np.median(quiet or rates)), len(quiet)


def format_table(report: dict) -> str:
    ratio_to = report["ratio_to"]
    per_step = bool(report.get("replay_ratio"))
    step_column = f" {'ms/agent step':>13}" if per_step else ""
    lines = [f"learner on {report['device']} ({report['device_name']}), torch {report['torch']}, "
             f"{report['threads']} threads; precision auto here: {report['auto_precision']}",
             f"{'batch':>5}  {'mode':<16} {'ms/update':>10} {'updates/s':>10} {'samples/s':>10} "
             f"{'x ' + ratio_to:>8} {'(best)':>7} {'quiet':>7} {'warm-up s':>9}{step_column}"]
    for r in report["results"]:
        quiet = f"{r['quiet_rounds']}/{len(r['rounds'])}"
        step = f" {r['ms_per_agent_step']:>13.3f}" if per_step else ""
        lines.append(f"{r['batch_size']:>5}  {r['mode']:<16} {r['ms_per_update']:>10.2f} "
                     f"{r['updates_per_s']:>10.1f} {r['samples_per_s']:>10.0f} "
                     f"{r['ratio']:>8.2f} {r['best_ratio']:>7.2f} "
                     f"{quiet:>7} {r['warmup_s']:>9.1f}{step}")
    if per_step:
        lines.append(f"ms/agent step: the learner's time per agent step at replay ratio {report['replay_ratio']:g} "
                     "(ms/update x ratio / batch size)")
    lines.append(f"figures: median over the quiet rounds (other processes < {QUIET} cores; all "
                 "rounds if none was quiet); (best): ratio of the best rounds; plain / cleanrl: "
                 "the fp32 eager baselines (bench/baselines.py)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (batch 4, eager modes, a fraction of a second): a smoke test")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--batch-sizes", default="32,256", help="comma-separated")
    parser.add_argument("--modes", default=None,
                        help="comma-separated, e.g. plain,cleanrl,fp32-eager,bf16-eager "
                             "(default: all of this device)")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per mode")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--updates-per-graph", type=int, default=4, help="K of the graph modes")
    parser.add_argument("--torso", default="nature", choices=sorted(TORSOS),
                        help="fastdqn's conv torso; the plain/cleanrl baselines exist for nature only")
    parser.add_argument("--hidden", type=int, default=512, help="fc width per dueling stream")
    parser.add_argument("--heads", default="scalar",
                        help="comma-separated Q-heads to time each Learner mode with: scalar, c51, qr")
    parser.add_argument("--replay-ratio", type=float, default=None,
                        help="also report the learner's ms per agent step at this replay ratio")
    parser.add_argument("--frame-size", type=int, default=84,
                        help="square frames of this many pixels (training's --frame-size); baselines need 84")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: torch.profiler's top ops and the page faults per update "
                             "of each mode (default modes plain,fp32-eager) at the first batch size; "
                             "FASTDQN_DEFAULT_MALLOC=1 shows them with glibc's default allocator")
    parser.add_argument("--reorder", action="store_true",
                        help="instead of timing updates: ms per channels_last reorder of one uint8 batch "
                             "(first batch size), torch's copy against fastdqn's")
    args = parser.parse_args(argv)
    if args.reorder:
        report = time_reorder(int(args.batch_sizes.split(",")[0]), repeats=10 if args.quick else 200)
        print_machine(report["machine"])
        for name, ms in report["ms"].items():
            print(f"{name:<24} {ms:7.3f} ms")
        write_json(args.json, report)
        return report
    if args.profile:
        modes = args.modes.split(",") if args.modes else ["plain", "fp32-eager"]
        if args.threads:
            torch.set_num_threads(args.threads)
        report = profile(int(args.batch_sizes.split(",")[0]), modes, device=args.device or "cpu",
                         updates=4 if args.quick else 20, torso=args.torso, hidden=args.hidden)
        print_machine(report["machine"])
        print(format_profile(report))
        write_json(args.json, report)
        return report

    kwargs = dict(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                  modes=args.modes.split(",") if args.modes else None, seconds=args.seconds,
                  device=args.device, threads=args.threads, rounds=args.rounds,
                  updates_per_graph=args.updates_per_graph, torso=args.torso, hidden=args.hidden,
                  frame_size=args.frame_size, heads=tuple(args.heads.split(",")), replay_ratio=args.replay_ratio)
    if args.quick:
        quick_modes = ["plain", "cleanrl", "fp32-eager", "bf16-eager"]
        kwargs.update(batch_sizes=(4,), seconds=0.2, rounds=1, modes=_without_foreign_baselines(quick_modes, args.torso, args.frame_size))
    try:
        report = run(**kwargs)
    except ValueError as e:
        parser.error(str(e))
    print_machine(report["machine"])
    print(format_table(report))
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
