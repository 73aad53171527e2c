"""The acting pipeline without learning: EnvPool + batched epsilon-greedy forward + replay add.

Compared, in the same run, with raw EnvPool on the same pool (random actions, nothing else)
and with the plain single-env baseline (fp32 forward per step, obs and next_obs stored).

    python bench/collect.py
    fastdqn bench collect --num-envs 64 --batch-size 32 --seconds 10 --rounds 5

Defaults, measured on the 2-core machine of the README: an async pool of 96 envs stepped
32 at a time (EnvPool steps the others while the forward runs) and ONE torch thread for
the forward. A sweep there (medians of 3 rounds each, one after the other) gave 2,118
agent steps/s for 64/32, 2,519 for 96/32, 2,456 for 128/32. Two torch threads on two cores
already busy with EnvPool's threads made the pipeline 25 % slower (OpenMP threads wait on
each other while EnvPool holds the cores).
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse

import numpy as np
import torch

from fastdqn.acting import select_actions
from fastdqn.envs import EnvConfig, VecEnv
from fastdqn.hardware import resolve_precision
from fastdqn.networks import make_q_network
from fastdqn.replay import PrioritizedReplay
from .baselines import plain_loop
from .common import interleaved_ratio, machine, print_machine, progress, rate, table, write_json
from .env import measure as raw_env_sps


def pipeline_sps(game: str, num_envs: int, batch_size: int, num_threads: int, seconds: float,
                 epsilon: float, precision: str, capacity: int) -> float:
    env = VecEnv(EnvConfig(env_id=game, num_envs=num_envs, batch_size=batch_size, num_threads=num_threads))
    q_network = make_q_network(env.obs_shape, env.num_actions, dueling=True)
    replay = PrioritizedReplay(capacity, num_envs, env.frame_shape, stack=env.stack)
    rng = np.random.default_rng(0)
    device = torch.device("cpu")
    last_action = np.zeros(num_envs, np.int64)
    state = {"step": env.reset()}

    def one_batch():
        step = state["step"]
        replay.add(step.obs, last_action[step.env_ids], step.reward, step.terminated, step.truncated,
                   step.reset_step, step.new_game, step.env_ids)
        actions = select_actions(q_network, step.obs, epsilon, env.num_actions, rng, device, precision)
        last_action[step.env_ids] = actions
        state["step"] = env.step(actions)

    rate(one_batch, 0.5)  # warm-up (JIT, allocator)
    calls_per_s, _ = rate(one_batch, seconds)
    env.close()
    return calls_per_s * env.batch_size


def run(game="Breakout-v5", num_envs=96, batch_size=32, num_threads=2, seconds=5.0, epsilon=0.0,
        precision="auto", capacity=100_000, baseline_steps=1500, show_progress=True, torch_threads=1,
        rounds=3) -> dict:
    """Raw EnvPool and the pipeline are timed in interleaved rounds (raw, pipeline, raw, ...),
    ``seconds`` each, so that the machine's drift reaches both alike; the headline figures
    are the medians over the rounds, and the ratio is theirs."""
    precision = resolve_precision(precision, torch.device("cpu")).name  # auto -> fp32 | bf16
    threads_before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        measured = interleaved_ratio(f"collect {num_envs}/{batch_size}", {
            "raw_env_steps_per_s": lambda: raw_env_sps(game, num_envs, batch_size, num_threads, seconds),
            "pipeline_steps_per_s": lambda: pipeline_sps(game, num_envs, batch_size, num_threads, seconds,
                                                         epsilon, precision, capacity),
        }, ("pipeline_vs_raw_env", "pipeline_steps_per_s", "raw_env_steps_per_s"), rounds, show_progress)
    finally:
        torch.set_num_threads(threads_before)  # later benchmarks in `bench all` pick their own
    progress("collect: plain single-env baseline (torch's default threads)", show_progress)
    plain = plain_loop(game, learn=False, warmup_steps=200, measure_steps=baseline_steps, epsilon=epsilon)
    return {
        "benchmark": "collect", "game": game, "machine": machine(), "num_envs": num_envs,
        "batch_size": batch_size, "num_threads": num_threads, "torch_threads": torch_threads,
        "epsilon": epsilon, "precision": precision, "rounds": rounds, "seconds": seconds, **measured,
        "baseline_steps_per_s": plain["steps_per_s"],
        "pipeline_vs_baseline": measured["pipeline_steps_per_s"] / plain["steps_per_s"],
    }


def report(r: dict) -> None:
    print_machine(r["machine"])
    table(f"Collect pipeline, {r['game']} (pool {r['num_envs']}/{r['batch_size']}, {r['num_threads']} EnvPool threads, "
          f"{r.get('torch_threads', 2)} torch thread(s), epsilon {r['epsilon']}: every step takes a "
          f"{r['precision']} forward)",
          ["what", "agent steps/s", "frames/s", "ratio"],
          [["raw EnvPool, random actions", r["raw_env_steps_per_s"], 4 * r["raw_env_steps_per_s"], 1.0],
           ["fastdqn: act + step + replay add", r["pipeline_steps_per_s"], 4 * r["pipeline_steps_per_s"],
            r["pipeline_vs_raw_env"]],
           ["plain baseline: one env, fp32, obs+next_obs stored", r["baseline_steps_per_s"],
            4 * r["baseline_steps_per_s"], r["baseline_steps_per_s"] / r["raw_env_steps_per_s"]]])
    if "per_round" in r:
        low, high = r["pipeline_vs_raw_env_range"]
        print(f"medians of {r['rounds']} interleaved rounds of {r['seconds']:g} s;"
              f" pipeline / raw within each round: {low:.2f}-{high:.2f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="fastdqn bench collect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Breakout-v5")
    parser.add_argument("--num-envs", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32, help="EnvPool batch (async when < num-envs)")
    parser.add_argument("--num-threads", type=int, default=2, help="EnvPool threads")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads for the forward")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (raw, pipeline, ...)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="of the acting forward; auto: bf16 only where the hardware has it")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        result = run(args.game, 4, 2, 1, 0.2, precision=args.precision, capacity=2_000, baseline_steps=50,
                     show_progress=False, rounds=1)
    else:
        result = run(args.game, args.num_envs, args.batch_size, args.num_threads, args.seconds,
                     precision=args.precision, show_progress=not args.no_progress,
                     torch_threads=args.torch_threads, rounds=args.rounds)
    report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
