"""Replay benchmark: insert rate, sample + priority-update rate, bytes per transition.

    python bench/replay.py                      # 1M Atari frames, 16 envs (about 7.1 GB)
    python bench/replay.py --json out.json      # also write the figures as JSON
    python bench/replay.py --quick              # a tiny run (seconds) that checks the path

Atari-shaped data: (16, 4, 84, 84) uint8 obs batches go into add(), one per vectorized
step, with life losses and time limits sprinkled in. Rates are measured in short chunks;
the median chunk of the best of a few interleaved rounds is reported (robust to another
process or a noisy VM neighbour briefly taking the core or the memory bus). Next to each
figure: how many cores other processes kept busy meanwhile (from /proc/stat; 0 = a quiet
machine) — on a shared machine the copy-bound sample rates drop by up to 40 % when they
are not 0. The first fill pages in the whole ring; the rate at which this machine hands
out fresh memory (a bare page-touch loop) is printed beside it as its bound.
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import os
import sys
import time

import numpy as np

from fastdqn.replay import PrioritizedReplay
from fastdqn.replay.buffer import _zeros
from .common import OtherLoad, write_json


def _rates(step, items_per_step: int, seconds: float, chunk: float = 0.1) -> dict:
    """Run step() for `seconds`; items/s as median over `chunk`-second chunks and overall,
    and how many cores OTHER processes kept busy meanwhile (0 = a quiet machine)."""
    chunks = []
    done = 0
    load = OtherLoad()
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        k = 0
        while time.perf_counter() - t0 < chunk:
            step()
            k += 1
        chunks.append(k * items_per_step / (time.perf_counter() - t0))
        done += k
        if time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    others = load.cores()
    return {"median": float(np.median(chunks)), "mean": done * items_per_step / elapsed,
            "best": float(np.max(chunks)), "chunks": len(chunks), "other_busy_cores": others}


class _Stream:
    """Synthetic vectorized Atari steps following the env-layer contract."""

    def __init__(self, num_envs: int, stack: int, frame_shape, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.num_envs = num_envs
        self.obs = [rng.integers(0, 256, (num_envs, stack, *frame_shape), dtype=np.uint8) for _ in range(8)]
        self.actions = rng.integers(0, 4, (64, num_envs))
        self.rewards = rng.integers(0, 2, (64, num_envs)).astype(np.float32)
        # A life loss about every 250 steps, a game over every 5th, and a time limit at the
        # rate of the default max_episode_steps (27,000) as if every game reached it: an upper
        # bound on the batches that need a separate next_obs gather (see sample()).
        self.terminated = rng.random((1 << 16, num_envs)) < 1 / 250
        self.truncated = rng.random((1 << 16, num_envs)) < 1 / 27_000
        self.env_ids = np.arange(num_envs)
        self.done = np.ones(num_envs, bool)
        self.game_over = np.ones(num_envs, bool)
        self.t = 0

    def step(self):
        t = self.t
        self.t += 1
        reset = self.done
        new_game = reset & self.game_over
        term = self.terminated[t % (1 << 16)] & ~reset
        trunc = self.truncated[t % (1 << 16)] & ~reset
        self.done = term | trunc
        self.game_over = trunc | (term & (t % 5 == 0))
        return (self.obs[t % 8], self.actions[t % 64], self.rewards[t % 64], term, trunc, reset, new_game,
                self.env_ids)


def _warm_up(frame_shape, stack: int, n_step: int) -> None:
    """Compile (or load from Numba's cache) every kernel, both gather paths included, so that
    no measurement below pays for it."""
    rb = PrioritizedReplay(2 * (stack + n_step + 4), 2, frame_shape, stack=stack, n_step=n_step)
    obs = np.zeros((2, stack, *frame_shape), np.uint8)
    ids = np.arange(2)
    never, always = np.zeros(2, bool), np.ones(2, bool)
    rb.add(obs, ids, np.zeros(2), never, never, always, always, ids)
    for t in range(stack + n_step + 6):
        truncated = always if t == n_step else never  # cuts an n-step window early
        rb.add(obs, ids, np.zeros(2), never, truncated, never, never, ids)
    for use_window in (True, False):
        rb._outputs.clear()
        rb._use_window = use_window
        s = rb.sample(64, 0.4)
        rb.update_priorities(s.indices, np.ones(64))
        rb.sample(1, 0.4)


def _fresh_memory_rate(nbytes: int) -> float:
    """Bytes/s at which the OS hands out fresh memory: one write per 4 KiB page of a new
    buffer allocated like the frame ring. It bounds the first fill, which must page in the
    whole ring (on a VM the hypervisor backs each page on first touch too)."""
    memory = _zeros(nbytes, np.uint8)
    start = time.perf_counter()
    memory[::4096] = 1
    return nbytes / (time.perf_counter() - start)


def _best_round(rounds: list[dict]) -> dict:
    """The round with the highest median chunk, with every round's median beside it."""
    best = dict(max(rounds, key=lambda r: r["median"]))
    best["round_medians"] = [r["median"] for r in rounds]
    return best


def run(capacity: int = 1_000_000, num_envs: int = 16, batch_sizes=(32, 256), seconds: float = 3.0,
        n_step: int = 3, progress: bool = True, stack: int = 4, frame_shape=(84, 84),
        compare_split: bool = True, rounds: int = 3) -> dict:
    """Measure the replay at `capacity` Atari frames; returns the figures as a dict.

    Each rate is measured in `rounds` rounds of seconds / rounds each, the figures
    interleaved (insert, batch 32, batch 256, insert, ...), and the best round's median chunk
    is reported (as timeit reports its best repeat): on a shared VM a slow phase of a few
    seconds then costs one round, not a whole figure. Every round's median is in the JSON.
    """

    def say(msg):
        if progress:
            print(f"[replay bench] {msg}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    _warm_up(frame_shape, stack, n_step)
    rb = PrioritizedReplay(capacity, num_envs, frame_shape, stack=stack, n_step=n_step, seed=0)
    stream = _Stream(num_envs, stack, frame_shape)

    # First fill: every slot written once, which pages in the whole ring.
    say(f"filling {capacity:,} frames ({rb.nbytes / 2**30:.2f} GiB)")
    lane_steps = rb.lane
    t1 = time.perf_counter()
    for _ in range(lane_steps):
        rb.add(*stream.step())
    first_fill = lane_steps * num_envs / (time.perf_counter() - t1)
    say(f"first fill {first_fill:,.0f} inserts/s")
    fresh_rate = _fresh_memory_rate(rb._frames.nbytes)
    first_fill_ceiling = fresh_rate / rb._frames[0].nbytes
    say(f"fresh memory {fresh_rate / 1e9:.2f} GB/s: at most {first_fill_ceiling:,.0f} first-fill inserts/s")

    td = np.abs(np.random.default_rng(1).standard_normal(max(batch_sizes))).astype(np.float32)

    def sample_update(batch):
        def step():
            s = rb.sample(batch, 0.4)
            rb.update_priorities(s.indices, td[:batch])
        return step

    def measure(label: str) -> dict:
        # Steady state: the ring is full, every insert overwrites (and invalidates) old records.
        figures = {"insert": [], **{str(b): [] for b in batch_sizes}}
        for batch in batch_sizes:
            sample_update(batch)()  # allocate the outputs, compile
        for r in range(rounds):
            figures["insert"].append(_rates(lambda: rb.add(*stream.step()), num_envs, seconds / rounds))
            for batch in batch_sizes:
                figures[str(batch)].append(_rates(sample_update(batch), batch, seconds / rounds))
            say(f"{label}round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {v[-1]['median']:,.0f}/s" for k, v in figures.items()))
        return {k: _best_round(v) for k, v in figures.items()}

    window = measure("")
    insert = window.pop("insert")
    samples = window

    split = {}
    if compare_split and n_step < stack:
        # The alternative: obs and next_obs gathered separately (2 * stack frames per sample).
        rb._outputs.clear()
        rb._use_window = False
        split = measure("split gather, ")
        split.pop("insert")
        rb._outputs.clear()
        rb._use_window = True

    result = {
        "config": {"capacity": capacity, "num_envs": num_envs, "stack": stack, "n_step": n_step,
                   "frame_shape": list(frame_shape), "batch_sizes": list(batch_sizes), "seconds": seconds,
                   "rounds": rounds},
        "insert_per_s": insert["median"],
        "insert": insert,
        "first_fill_insert_per_s": first_fill,
        "fresh_memory_bytes_per_s": fresh_rate,
        "first_fill_ceiling_insert_per_s": first_fill_ceiling,
        "sample_update_per_s": {b: r["median"] for b, r in samples.items()},
        "sample_update": samples,
        "split_gather_sample_update_per_s": {b: r["median"] for b, r in split.items()},
        "split_gather": split,
        "bytes_per_transition": rb.nbytes / capacity,
        "nbytes": rb.nbytes,
        "loadavg_1min": [load_before, os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "wall_s": time.perf_counter() - t0,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return result


def format_table(r: dict) -> str:
    def others(m):
        busy = m.get("other_busy_cores")
        return "" if busy is None else f"{busy:.2f}"

    rows = [("insert (steady, transitions/s)", f"{r['insert_per_s']:,.0f}", others(r["insert"])),
            ("insert (first fill, transitions/s)", f"{r['first_fill_insert_per_s']:,.0f}", ""),
            ("  page-in of fresh memory alone, {:.2f} GB/s".format(r["fresh_memory_bytes_per_s"] / 1e9),
             f"{r['first_fill_ceiling_insert_per_s']:,.0f}", "")]
    for b, v in r["sample_update_per_s"].items():
        rows.append((f"sample+update batch {b} (samples/s)", f"{v:,.0f}", others(r["sample_update"][b])))
    for b, v in r["split_gather_sample_update_per_s"].items():
        rows.append((f"  same, split gather, batch {b}", f"{v:,.0f}", others(r["split_gather"][b])))
    rows.append(("bytes per transition", f"{r['bytes_per_transition']:,.0f}", ""))
    rows.append(("load average before / after", "{:.2f} / {:.2f}".format(*r["loadavg_1min"]), ""))
    width = max(len(k) for k, _, _ in rows)
    cfg = r["config"]
    head = (f"replay: capacity {cfg['capacity']:,}, {cfg['num_envs']} envs, stack {cfg['stack']}, "
            f"n_step {cfg['n_step']}, frames {tuple(cfg['frame_shape'])} ({r['when']})")
    title = (f"  {'(best of ' + str(cfg.get('rounds', 1)) + ' interleaved rounds)':<{width}}  {'':>12}"
             "  cores busy elsewhere")
    return "\n".join([head, title] + [f"  {k:<{width}}  {v:>12}  {o:>8}" for k, v, o in rows])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=1_000_000, help="frames stored (default 1,000,000)")
    parser.add_argument("--num-envs", type=int, default=16, help="envs feeding the buffer (default 16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256], help="sample batch sizes")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per figure, over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per figure (best reported)")
    parser.add_argument("--n-step", type=int, default=3, help="n of the n-step return")
    parser.add_argument("--no-split", action="store_true", help="skip the split-gather comparison")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny and fast (used by the tests)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    kwargs = dict(capacity=args.capacity, num_envs=args.num_envs, batch_sizes=tuple(args.batch_sizes),
                  seconds=args.seconds, n_step=args.n_step, progress=not args.quiet,
                  compare_split=not args.no_split, rounds=args.rounds)
    if args.quick:
        kwargs.update(capacity=16_384, batch_sizes=(32, 64), seconds=0.4, rounds=2)
    result = run(**kwargs)
    print(format_table(result))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
