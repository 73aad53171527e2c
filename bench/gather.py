"""Gather benchmark: stacked (stack + n)-frame windows per second from the frame ring.

    python bench/gather.py                    # 1M Atari frames (about 7 GB), 16 envs, batch 32 and 256
    python bench/gather.py --json out.json    # also write the figures as JSON
    python bench/gather.py --quick            # a tiny run (seconds) that checks the path

Compares, on the same ring, the same random indices and the same output buffer, the Numba
kernel ``ring.gather_window`` (what ``PrioritizedReplay.sample`` runs) with its C++ twin
(``fastdqn.replay.native``). With CUDA it also measures the two ways of getting a batch to
the GPU: the device gather from a ring kept in GPU memory (only the indices cross the bus)
and the host path (Numba gather into pinned memory, then a host-to-device copy). Before any
timing, every kernel must reproduce the Numba windows of one batch that includes the ring's
last records (``identical_to_numba``; ``checked_up_to_byte``: past 4 GiB at 1M frames). Each call
of a CUDA figure ends with a synchronize, so those are latencies, not overlapped throughput.
The tree is not part of it: indices are uniform over the ring (see bench/replay.py for
sample + update). Rates are the best of a few interleaved rounds; next to each, how many
cores other processes kept busy meanwhile (0 = a quiet machine).
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import itertools
import time

import numpy as np
import torch

from fastdqn.replay import native, ring
from fastdqn.replay.buffer import _zeros
from .common import OtherLoad, fmt, machine, print_machine, progress, rate, table, write_json


def make_ring(num_slots: int, frame_size: int, stack: int, seed: int = 0):
    """A ring of `num_slots` frames, every page touched, and a `back` array with a new game
    about every 500 records (so some windows are padded)."""
    rng = np.random.default_rng(seed)
    frames = _zeros((num_slots, frame_size), np.uint8)
    ramp = np.arange(frame_size).astype(np.uint8)
    for start in range(0, num_slots, 1 << 14):
        ids = np.arange(start, min(start + (1 << 14), num_slots)) % 251
        frames[start : start + ids.shape[0]] = ids.astype(np.uint8)[:, None] + ramp  # wraps mod 256
    back = np.full(num_slots, stack - 1, np.uint8)
    for start in rng.integers(0, num_slots, max(1, num_slots // 500)):
        for d in range(stack - 1):  # 0 at the new game, then 1, 2, ... up to stack - 1
            back[(start + d) % num_slots] = min(back[(start + d) % num_slots], d)
    return frames, back


def run(capacity: int = 1_000_000, num_envs: int = 16, batch_sizes=(32, 256), stack: int = 4, n_step: int = 3,
        frame_shape=(84, 84), seconds: float = 3.0, rounds: int = 3, show_progress: bool = True) -> dict:
    """Samples/s of each gather at each batch size; returns the figures as a dict."""
    t0 = time.perf_counter()
    lane = capacity // num_envs
    num_slots = lane * num_envs
    frame_size = int(np.prod(frame_shape))
    width = stack + n_step
    progress(f"gather: filling a ring of {num_slots:,} frames ({num_slots * frame_size / 2**30:.2f} GiB)",
             show_progress)
    frames, back = make_ring(num_slots, frame_size, stack)
    frames_t, back_t = torch.from_numpy(frames), torch.from_numpy(back)

    progress("gather: building / loading the native kernels", show_progress)
    have_cpp = native.cpu_gather() is not None
    cuda = torch.cuda.is_available() and native.cuda_gather() is not None
    if cuda:
        frames_d, back_d = torch.empty(frames_t.shape, dtype=torch.uint8, device="cuda"), back_t.cuda()
        for start in range(0, num_slots, 1 << 16):
            frames_d[start : start + (1 << 16)].copy_(frames_t[start : start + (1 << 16)])

    rng = np.random.default_rng(1)
    rows = []
    for batch in batch_sizes:
        # A pool of index batches, cycled, so that no figure reads the same frames twice in a row.
        pool = itertools.cycle([torch.from_numpy(rng.integers(0, num_slots, batch)) for _ in range(64)])
        window = torch.from_numpy(_zeros((batch, width, frame_size), np.uint8))
        window_np = window.numpy()
        reference = np.empty_like(window_np)
        methods = {"numba": lambda: ring.gather_window(next(pool).numpy(), frames, back, lane, stack, window_np)}
        if have_cpp:
            methods["cpp"] = lambda: native.gather_window(next(pool), frames_t, back_t, lane, stack, window)
        if cuda:
            index_host = torch.empty(batch, dtype=torch.int64).pin_memory()
            index_d = torch.empty(batch, dtype=torch.int64, device="cuda")
            window_d = torch.empty(window.shape, dtype=torch.uint8, device="cuda")
            window_pinned = torch.empty(window.shape, dtype=torch.uint8).pin_memory()

            def device_gather():
                index_host.copy_(next(pool))
                index_d.copy_(index_host, non_blocking=True)
                native.gather_window(index_d, frames_d, back_d, lane, stack, window_d)
                torch.cuda.synchronize()

            def host_then_copy():
                ring.gather_window(next(pool).numpy(), frames, back, lane, stack, window_pinned.numpy())
                window_d.copy_(window_pinned, non_blocking=True)
                torch.cuda.synchronize()

            methods.update(cuda_gather=device_gather, host_gather_copy=host_then_copy)

        # Every method must produce the Numba window on one batch before it is timed: random
        # records and the ring's first and last ones (at 1M Atari frames these sit past 4 GiB,
        # so the kernels' 64-bit offsets are checked too).
        indices = next(pool).clone()
        edges = torch.tensor([0, lane - 1, num_slots - lane, num_slots - 2, num_slots - 1])[:batch]
        indices[:len(edges)] = edges
        ring.gather_window(indices.numpy(), frames, back, lane, stack, reference)
        identical = {}
        if have_cpp:
            native.gather_window(indices, frames_t, back_t, lane, stack, window)
            identical["cpp"] = bool(np.array_equal(window_np, reference))
        if cuda:
            native.gather_window(indices.cuda(), frames_d, back_d, lane, stack, window_d)
            identical["cuda_gather"] = bool(np.array_equal(window_d.cpu().numpy(), reference))

        best = {name: {"samples_per_s": 0.0, "round_samples_per_s": []} for name in methods}
        for r in range(rounds):
            for name, fn in methods.items():
                load = OtherLoad()
                calls_per_s, _ = rate(fn, seconds / rounds)
                figure = best[name]
                figure["round_samples_per_s"].append(calls_per_s * batch)
                if calls_per_s * batch > figure["samples_per_s"]:
                    figure.update(samples_per_s=calls_per_s * batch, other_busy_cores=load.cores())
            progress(f"gather: batch {batch}, round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {v['round_samples_per_s'][-1]:,.0f}/s" for k, v in best.items()), show_progress)
        for figure in best.values():
            figure["bytes_per_s"] = figure["samples_per_s"] * width * frame_size
        rows.append({"batch_size": batch, "identical_to_numba": identical,
                     "checked_up_to_byte": (int(indices.max()) + 1) * frame_size, **best})

    return {
        "benchmark": "gather",
        "config": {"capacity": num_slots, "num_envs": num_envs, "lane": lane, "stack": stack, "n_step": n_step,
                   "window": width, "frame_shape": list(frame_shape), "batch_sizes": list(batch_sizes),
                   "seconds": seconds, "rounds": rounds},
        "machine": machine(),
        "native_cpu": have_cpp,
        "native_cuda": cuda,
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def report(result: dict) -> None:
    print_machine(result["machine"])
    cfg = result["config"]
    names = [n for n in ("numba", "cpp", "cuda_gather", "host_gather_copy") if n in result["rows"][0]]
    header = ["batch", *(f"{n} samples/s" for n in names), *["cpp / numba"] * ("cpp" in names),
              "cores busy elsewhere"]
    lines = []
    for row in result["rows"]:
        line = [row["batch_size"]] + [row[n]["samples_per_s"] for n in names]
        if "cpp" in names:
            line.append(f"{row['cpp']['samples_per_s'] / row['numba']['samples_per_s']:.2f}x")
        line.append(" / ".join(fmt(row[n].get("other_busy_cores")) for n in names))
        lines.append(line)
    table(f"gather of {cfg['window']}-frame windows (stack {cfg['stack']} + n {cfg['n_step']}) from "
          f"{cfg['capacity']:,} frames {tuple(cfg['frame_shape'])}, {cfg['num_envs']} envs "
          f"(best of {cfg['rounds']} interleaved rounds, {result['when']})", header, lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=1_000_000, help="frames in the ring (default 1,000,000)")
    parser.add_argument("--num-envs", type=int, default=16, help="lanes of the ring (default 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256], help="gather batch sizes")
    parser.add_argument("--n-step", type=int, default=3, help="window = stack + n_step frames (stack 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per figure, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure (best reported)")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny and fast (used by the tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    kwargs = dict(capacity=args.capacity, num_envs=args.num_envs, batch_sizes=tuple(args.batch_sizes),
                  n_step=args.n_step, seconds=args.seconds, rounds=args.rounds, show_progress=not args.no_progress)
    if args.quick:
        kwargs.update(capacity=4096, batch_sizes=(32, 64), seconds=0.2, rounds=1)
    result = run(**kwargs)
    report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
