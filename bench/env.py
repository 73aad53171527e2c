"""Raw EnvPool throughput with random actions: sync and async, a sweep of pool shapes.

The baseline is the newcomer's way: one environment stepped at a time.

    python bench/env.py                 # Breakout-v5, a few seconds per configuration
    fastdqn bench env --game Pong-v5 --seconds 10 --json env.json
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse

import numpy as np

from .common import machine, print_machine, progress, rate, table, write_json

# (num_envs, batch_size, num_threads); batch_size < num_envs is async mode
DEFAULT_SWEEP = [(1, 1, 1), (8, 8, 2), (16, 16, 2), (32, 16, 2), (32, 8, 2), (64, 32, 2), (96, 32, 2)]
QUICK_SWEEP = [(1, 1, 1), (4, 4, 2), (8, 4, 2)]


def measure(game: str, num_envs: int, batch_size: int, num_threads: int, seconds: float, seed: int = 0) -> float:
    """Agent steps per second of one EnvPool pool stepped with random actions."""
    import envpool

    env = envpool.make(game, env_type="gymnasium", num_envs=num_envs, batch_size=batch_size,
                       num_threads=num_threads, seed=seed)
    rng = np.random.default_rng(seed)
    n = env.action_space.n
    env.async_reset()
    state = {"ids": env.recv()[-1]["env_id"]}

    def step():
        env.send(rng.integers(0, n, len(state["ids"])).astype(np.int32), state["ids"])
        state["ids"] = env.recv()[-1]["env_id"]

    rate(step, 0.3)  # warm-up
    calls_per_s, _ = rate(step, seconds)
    env.close()
    return calls_per_s * batch_size


def run(game: str = "Breakout-v5", sweep=DEFAULT_SWEEP, seconds: float = 3.0, frame_skip: int = 4,
        show_progress: bool = True) -> dict:
    rows = []
    for num_envs, batch_size, threads in sweep:
        mode = "sync" if batch_size == num_envs else "async"
        progress(f"env {game} {mode} num_envs={num_envs} batch={batch_size} threads={threads}", show_progress)
        sps = measure(game, num_envs, batch_size, threads, seconds)
        rows.append({"mode": mode, "num_envs": num_envs, "batch_size": batch_size, "num_threads": threads,
                     "steps_per_s": sps, "frames_per_s": sps * frame_skip})
    baseline = rows[0]["steps_per_s"]
    for row in rows:
        row["vs_one_env"] = row["steps_per_s"] / baseline
    return {"benchmark": "env", "game": game, "seconds": seconds, "machine": machine(), "baseline": "one env at a time",
            "rows": rows}


def report(result: dict) -> None:
    print_machine(result["machine"])
    table(f"EnvPool {result['game']}, random actions ({result['seconds']} s each; first row = baseline)",
          ["mode", "num_envs", "batch", "threads", "steps/s", "frames/s", "x one env"],
          [[r["mode"], r["num_envs"], r["batch_size"], r["num_threads"], r["steps_per_s"], r["frames_per_s"],
            r["vs_one_env"]] for r in result["rows"]])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="fastdqn bench env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Breakout-v5")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per configuration")
    parser.add_argument("--quick", action="store_true", help="tiny sweep, for tests")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.game, QUICK_SWEEP if args.quick else DEFAULT_SWEEP, 0.2 if args.quick else args.seconds,
                 show_progress=not args.no_progress)
    report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
