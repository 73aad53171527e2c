"""Distributed training (Ape-X actors on Ray, --actors N) against single-process, on this machine.

Every side runs the real `train()` loop on the same game and settings (Breakout, Nature CNN, PER
n-step, dueling double Q, replay ratio 8 = batch 32 every 4 agent steps, the precision asked
for): single-process (one in-process actor, EnvPool stepping while the learner learns), then
`--actors N` for each N asked (N Ray actors of --num-envs envs each, one learner in this
process). Each run fills the replay for --warmup-steps, learns for one settling window, and is
timed over the next --measure-steps agent steps, from its own TensorBoard windows:

    agent steps/s      agent steps reaching the replay (ingest), per second of the timed windows
    updates/s          learner updates per second, same windows
    replay ratio       sampled / inserted transitions since learning started (summary.json's
                       replay_ratio_measured), and whether it is within +-ratio_tolerance
    acting steps/s     each actor's speed while it acts (not while back-pressure holds it)
    actors busy        the share of the timed windows each actor spent acting: near 1, the
                       learner waits for data; low, the actors wait for the learner
    weights lag        learner weights version minus the version each chunk was acted with
                       (one version every --weights-every updates)
    learner waits      the share of the timed windows the learner spent waiting for a chunk

The sides run in interleaved rounds (single, 1 actor, 2 actors, single, ...), each a fresh run;
the figures are medians over the rounds, "x single" the ratio of the medians of agent steps/s
(with the range of the per-round ratios). One local Ray (all the machine's CPUs) is started
first and kept for all sides, so Ray's own daemons run beside the single-process side too. On
the actor sides, "cores busy elsewhere" in the JSON's rounds counts the actors themselves.

Then the transport alone: one real chunk (--chunk-steps agent steps of --num-envs envs) is sent
from a Ray actor to this process and fetched, repeatedly: its size and its round trip per record.

    python bench/apex.py                           # or python -m bench.apex, fastdqn bench apex
    python bench/apex.py --actors 1,2 --replay-ratio 2 --rounds 5
    python bench/apex.py --game CartPole-v1 --quick

Needs the ray extra (pip install 'fastdqn[ray]'); without it this says so in one line (and
`fastdqn bench all` goes on with the others).
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import itertools
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastdqn.extras import MissingExtra, require
from .common import interleaved_ratio, machine, print_machine, progress, table, write_json

SINGLE = "single"


def default_actor_counts(cores: int, actor_cpus: float = 1.0) -> list[int]:
    """1, 2, 4, ... actors while they leave the learner a core (1 and 2 on a small machine)."""
    counts = [1, 2]
    while 2 * counts[-1] * actor_cpus <= cores - 1:
        counts.append(2 * counts[-1])
    return counts


def side_name(actors: int) -> str:
    return SINGLE if actors == 0 else f"actors_{actors}"


def make_cfg(o: dict, actors: int, run_dir: str):
    """The run of one side: the same game and learning settings for all, warm-up, one settling
    window, the timed steps; no evaluation, no periodic checkpoints, no saved replay."""
    from fastdqn.config import make_config

    window = log_window(o)
    env = dict(env_id=o["game"], num_envs=o["num_envs"])
    if not actors:  # (each actor's EnvPool threads follow --actor-cpus)
        env["num_threads"] = o["num_threads"]
    extra = dict(actors=actors, actor_cpus=o["actor_cpus"], chunk_steps=o["chunk_steps"],
                 max_inflight=o["max_inflight"], weights_every=o["weights_every"],
                 ratio_tolerance=o["ratio_tolerance"]) if actors else {}
    return make_config(env=env, run_dir=run_dir, total_steps=o["warmup_steps"] + window + o["measure_steps"],
                       learning_starts=o["warmup_steps"], buffer_size=o["buffer_size"],
                       replay_ratio=o["replay_ratio"], batch_size=o["batch_size"], precision=o["precision"],
                       torch_threads=o["torch_threads"], eval_interval=0, final_eval=False, checkpoint_interval=0,
                       save_replay="never", log_interval=window, **extra)


def log_window(o: dict) -> int:
    return max(1, o["measure_steps"] // o["windows"])


def timed_windows(run_dir: str, start: int, actors: int) -> dict:
    """The run's figures over its log windows that begin at ``start`` or later (from the TensorBoard
    scalars train() logs at every --log-interval: each a rate over the window since the last log)."""
    from fastdqn.plot import read_scalars

    per_actor = [f"actors/{k}/{what}" for k in range(actors) for what in ("steps_per_second", "acting_sps")]
    tags = ["charts/SPS", "charts/updates_per_second", "distributed/weights_lag",
            "distributed/learner_wait_fraction", *per_actor]
    data = {tag: dict(zip(steps.tolist(), values.tolist())) for tag, (steps, values) in read_scalars(run_dir, tags).items()}
    logged = sorted(data["charts/SPS"])
    windows = [(end, end - begin, (end - begin) / data["charts/SPS"][end])  # (logged at, agent steps, seconds)
               for begin, end in itertools.pairwise(logged) if begin >= start and data["charts/SPS"][end] > 0]
    if not windows:
        raise RuntimeError(f"no log window after step {start:,} in {run_dir}: raise --measure-steps")
    seconds = sum(dt for _, _, dt in windows)

    def time_mean(tag):  # a rate or fraction, weighted by each window's seconds; None where never logged
        known = [(data[tag][end], dt) for end, _, dt in windows if end in data.get(tag, {})]
        return sum(v * dt for v, dt in known) / sum(dt for _, dt in known) if known else None

    out = {"timed_steps": sum(n for _, n, _ in windows), "timed_seconds": seconds, "windows": len(windows),
           "steps_per_s": sum(n for _, n, _ in windows) / seconds,
           "updates_per_s": time_mean("charts/updates_per_second")}
    if actors:
        acting, busy = [], []
        for k in range(actors):
            steps = {end: data[f"actors/{k}/steps_per_second"][end] * dt for end, _, dt in windows}
            speed = data.get(f"actors/{k}/acting_sps", {})
            acting_seconds = sum(steps[end] / speed[end] for end in steps if speed.get(end))
            if acting_seconds:
                acting.append(sum(steps[end] for end in steps if speed.get(end)) / acting_seconds)
            busy.append(acting_seconds / seconds)
        out.update(actor_acting_steps_per_s=float(np.mean(acting)) if acting else None,
                   actors_busy=float(np.mean(busy)), weights_lag=time_mean("distributed/weights_lag"),
                   learner_wait_fraction=time_mean("distributed/learner_wait_fraction"))
    return out


def run_side(o: dict, actors: int) -> dict:
    from fastdqn.train import train

    with tempfile.TemporaryDirectory() as run_dir:
        summary = train(make_cfg(o, actors, run_dir), progress=False)
        if summary["stop_reason"] == "interrupted":  # Ctrl-C / SIGTERM: stop the benchmark, not just this side
            raise KeyboardInterrupt
        figures = timed_windows(run_dir, o["warmup_steps"] + log_window(o), actors)
    ratio = summary.get("replay_ratio_measured")
    figures.update(replay_ratio_measured=ratio, precision_used=summary["precision_used"], device=summary["device"],
                   learning_sps=summary.get("learning_sps"), updates=summary["updates"],
                   ratio_in_band=ratio is not None and abs(ratio / o["replay_ratio"] - 1) <= o["ratio_tolerance"])
    if actors:
        d = summary["distributed"]
        figures.update(restarts=sum(d["restarts"]), weights_version=d["weights_version"],
                       acting_steps_per_s_whole_run=[a["acting_sps"] for a in d["per_actor"]])
    return figures


class Echo:
    """A Ray actor that returns the chunk it holds: an actor's request without the acting."""

    def __init__(self, chunk):
        self.chunk = chunk

    def get(self):
        return self.chunk


def transport_cost(o: dict, ray, calls: int) -> dict:
    """Bytes and round-trip time per record of a real chunk, actor -> object store -> learner."""
    from fastdqn.distributed import RemoteActor
    from fastdqn.envs import VecEnv

    cfg = make_cfg(o, 1, tempfile.gettempdir())
    probe = VecEnv(cfg.env)
    obs_shape, num_actions = probe.obs_shape, probe.num_actions
    probe.close()
    maker = RemoteActor(cfg, 0, obs_shape, num_actions, seed=0, restarted=False)
    maker.collect(o["chunk_steps"])  # (past the reset records)
    chunk = maker.collect(o["chunk_steps"])
    maker.actor.close()
    records = len(chunk.records.env_ids)
    echo = ray.remote(num_cpus=0)(Echo).remote(chunk)
    for _ in range(3):  # the actor's start, first transfers
        ray.get(echo.get.remote())
    start = time.perf_counter()
    for _ in range(calls):
        ray.get(echo.get.remote())
    elapsed = (time.perf_counter() - start) / calls
    ray.kill(echo)
    return {"records_per_chunk": records, "agent_steps_per_chunk": chunk.steps,
            "bytes_per_record": len(pickle.dumps(chunk, protocol=5)) / records,
            "frame_bytes_per_record": chunk.records.frames[0].nbytes, "us_per_record": 1e6 * elapsed / records,
            "ms_per_chunk": 1e3 * elapsed, "calls": calls}


def worker_path() -> str:
    """PYTHONPATH for the Ray workers: where this process's fastdqn (and bench) come from, so the
    actors run the same code (a bare checkout too), then whatever PYTHONPATH already holds."""
    import fastdqn

    root = str(Path(fastdqn.__file__).resolve().parents[1])
    return os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def run(game="Breakout-v5", actor_counts=(1, 2), replay_ratio=8.0, batch_size=32, num_envs=16, num_threads=2,
        actor_cpus=1.0, torch_threads=0, precision="auto", chunk_steps=256, max_inflight=2, weights_every=100,
        ratio_tolerance=0.1, warmup_steps=2_000, measure_steps=2_000, windows=8, buffer_size=100_000, rounds=3,
        transport_calls=50, show_progress=True) -> dict:
    o = dict(locals())
    import ray
    import torch

    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()  # (each side sets its own, as train does; given back at the end)
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="warning", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": worker_path()}})
    try:
        details: dict[str, list[dict]] = {}

        def measure(actors):
            def once():
                figures = run_side(o, actors)
                details.setdefault(side_name(actors), []).append(figures)
                return figures["steps_per_s"]
            return once

        sides = [0, *actor_counts]
        measured = interleaved_ratio("apex", {side_name(n): measure(n) for n in sides},
                                     [(f"{side_name(n)}_x_single", side_name(n), SINGLE) for n in actor_counts],
                                     rounds, show_progress)
        progress(f"apex: transport, {transport_calls} chunks", show_progress)
        transport = transport_cost(o, ray, transport_calls)
        cluster_cpus = ray.cluster_resources().get("CPU", 0)
    finally:
        torch.set_num_threads(threads)
        if own_ray:
            ray.shutdown()
    rows = []
    for n in sides:
        name, runs = side_name(n), details[side_name(n)]
        median = _medians(runs)
        row = {"side": name, "actors": n, "steps_per_s": measured[name],
               "steps_per_s_range": [min(r["steps_per_s"] for r in runs), max(r["steps_per_s"] for r in runs)],
               "updates_per_s": median("updates_per_s"), "replay_ratio_measured": median("replay_ratio_measured"),
               "replay_ratio_range": [min(r["replay_ratio_measured"] for r in runs),
                                      max(r["replay_ratio_measured"] for r in runs)],
               "ratio_in_band": all(r["ratio_in_band"] for r in runs),
               "precision_used": runs[0]["precision_used"], "device": runs[0]["device"]}
        if n:
            row.update(x_single=measured[f"{name}_x_single"], x_single_range=measured[f"{name}_x_single_range"],
                       actor_acting_steps_per_s=median("actor_acting_steps_per_s"), actors_busy=median("actors_busy"),
                       weights_lag=median("weights_lag"), learner_wait_fraction=median("learner_wait_fraction"),
                       restarts=sum(r["restarts"] for r in runs))
        else:
            row.update(x_single=1.0)
        rows.append(row)
    return {"benchmark": "apex", "game": game, "machine": machine(), "ray": ray.__version__,
            "ray_cpus": cluster_cpus, **{k: v for k, v in o.items() if k != "show_progress"},
            "actor_counts": list(actor_counts), "rows": rows, "transport": transport, "runs": details, **measured}


def _medians(runs: list[dict]):
    def median(key):  # over the rounds; None where never measured
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None
    return median


def report(r: dict) -> None:
    print_machine(r["machine"])
    print(f"ray {r['ray']}, local, {r['ray_cpus']:g} CPUs; each actor: --actor-cpus {r['actor_cpus']:g}, "
          f"{r['num_envs']} envs, chunks of {r['chunk_steps']} agent steps, at most {r['max_inflight']} in flight; "
          f"weights every {r['weights_every']} updates")

    def cell(value, form="{:.2f}"):
        return "" if value is None else form.format(value)

    rows = []
    for row in r["rows"]:
        what = (f"single-process ({r['num_envs']} envs, {r['num_threads']} EnvPool threads)" if not row["actors"]
                else f"--actors {row['actors']} ({row['actors']} x {r['num_envs']} envs)")
        low, high = row["steps_per_s_range"]
        on = "" if row["device"] == "cpu" else f" on {row['device']}"
        rows.append([f"{what}, {row['precision_used']}{on}", row["steps_per_s"], f"{low:.1f}-{high:.1f}",
                     row["x_single"] if row["actors"] else 1.0, row["updates_per_s"],
                     f"{row['replay_ratio_measured']:.2f}{'' if row['ratio_in_band'] else ' (out of band)'}",
                     cell(row.get("actor_acting_steps_per_s"), "{:.0f}"), cell(row.get("actors_busy")),
                     cell(row.get("weights_lag"), "{:.1f}"), cell(row.get("learner_wait_fraction"))])
    table(f"Distributed (Ape-X actors on a local Ray) vs single-process, {r['game']}, replay ratio "
          f"{r['replay_ratio']:g} (batch {r['batch_size']}); medians of {r['rounds']} interleaved rounds of "
          f"{r['measure_steps']:,} agent steps after {r['warmup_steps']:,} of warm-up",
          ["what", "agent steps/s", "rounds", "x single", "updates/s", "replay ratio", "acting steps/s (each)",
           "actors busy", "weights lag", "learner waits"], rows)
    for row in r["rows"][1:]:
        low, high = row["x_single_range"]
        print(f"--actors {row['actors']}: ratio to single-process within each round {low:.2f}-{high:.2f}"
              + (f"; actor restarts: {row['restarts']}" if row["restarts"] else ""))
    t = r["transport"]
    table(f"Transport, actor -> object store -> learner ({t['records_per_chunk']} records a chunk, "
          f"{t['calls']} round trips)", ["bytes/record", "of it the frame", "µs/record", "ms/chunk"],
          [[t["bytes_per_record"], t["frame_bytes_per_record"], t["us_per_record"], t["ms_per_chunk"]]])


def parse_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of actor counts >= 1, got {text!r}")
    return counts


def main(argv=None) -> dict:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(prog="fastdqn bench apex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Breakout-v5")
    parser.add_argument("--actors", type=parse_counts, default=None,
                        help=f"actor counts to compare with single-process, e.g. 1,2,4; default here "
                             f"{','.join(map(str, default_actor_counts(cores)))} (1, 2, 4, ... leaving the learner a core)")
    parser.add_argument("--replay-ratio", type=float, default=8.0, help="sampled transitions per agent step, all sides")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-envs", type=int, default=None,
                        help="envs of the single-process pool and of each actor's (16)")
    parser.add_argument("--num-threads", type=int, default=cores,
                        help="single-process EnvPool threads (default: all cores); an actor's follow --actor-cpus")
    parser.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs Ray reserves for each actor")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="the learner's torch threads; 0 = as train does (all cores single-process, the cores "
                             "the actors leave with --actors)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--chunk-steps", type=int, default=None, help="agent steps per chunk an actor ships (256)")
    parser.add_argument("--max-inflight", type=int, default=2, help="chunk requests outstanding per actor")
    parser.add_argument("--weights-every", type=int, default=None, help="updates between weight publications (100)")
    parser.add_argument("--ratio-tolerance", type=float, default=0.1,
                        help="the band of the replay ratio, as train's --ratio-tolerance")
    parser.add_argument("--warmup-steps", type=int, default=None, help="agent steps filling the replay, untimed (2,000)")
    parser.add_argument("--measure-steps", type=int, default=None, help="agent steps timed per side and round (2,000)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (single, 1 actor, 2 actors, ...) (3)")
    parser.add_argument("--transport-calls", type=int, default=None, help="chunk round trips timed (50)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round, 1 actor (for tests)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        require("ray", "ray", "fastdqn bench apex")
    except MissingExtra as exc:  # one line, and `fastdqn bench all` goes on with the others
        print(f"apex: skipped: {exc}", file=sys.stderr)
        return {"benchmark": "apex", "skipped": str(exc)}
    counts = args.actors or ([1] if args.quick else default_actor_counts(cores, args.actor_cpus))
    if max(counts) * args.actor_cpus > cores:
        parser.error(f"--actors {max(counts)} x --actor-cpus {args.actor_cpus:g} needs more CPUs than the "
                     f"{cores} here: lower --actor-cpus (e.g. 0.5) or the actor counts")
    sizes = dict(num_envs=16, chunk_steps=256, weights_every=100, warmup_steps=2_000, measure_steps=2_000, rounds=3,
                 transport_calls=50)
    if args.quick:
        sizes.update(num_envs=4, chunk_steps=32, weights_every=10, warmup_steps=200, measure_steps=400, rounds=1,
                     transport_calls=5)
    sizes.update({name: getattr(args, name) for name in sizes if getattr(args, name) is not None})  # given ones win
    options = dict(replay_ratio=args.replay_ratio, batch_size=args.batch_size, num_threads=args.num_threads,
                   actor_cpus=args.actor_cpus, torch_threads=args.torch_threads, precision=args.precision,
                   max_inflight=args.max_inflight, ratio_tolerance=args.ratio_tolerance,
                   show_progress=not args.no_progress)
    if args.quick:
        options.update(batch_size=8, buffer_size=2_000, windows=4, show_progress=False)
    if sizes["measure_steps"] < 2 * sizes["chunk_steps"]:
        parser.error(f"--measure-steps ({sizes['measure_steps']}) must be at least 2 x --chunk-steps "
                     f"({sizes['chunk_steps']}): a chunk is the smallest step the learner sees from an actor")
    result = run(args.game, counts, **sizes, **options)
    report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(2 if "skipped" in main() else 0)
