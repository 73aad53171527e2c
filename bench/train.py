"""End-to-end training throughput while learning, against the plain single-env baseline.

All sides: Breakout, Nature CNN, Adam, replay ratio 8 (on average 8 sampled transitions
per agent step: batch 32 every 4 agent steps), timed over a fixed number of agent steps
after the warm-up. fastdqn runs its real `train()` loop (EnvPool pool, prioritized n-step
replay, dueling double Q, the precision asked for: auto by default); two baselines, fp32
eager with one env (bench/baselines.py): "plain" (the same dueling double-Q update) and
"cleanrl" (CleanRL's dqn_atari update: no dueling, max over the target net, two forwards).

The three are timed in interleaved rounds (fastdqn, plain, cleanrl, fastdqn, ...), each a
fresh run with its own warm-up, so that the machine's drift (this 2-core VM's update time
moves by a quarter within minutes) reaches all alike; the headline figures are the medians
over the rounds and their ratios, and every round is kept in the JSON. Every side runs with
glibc's allocator tuned (fastdqn.hardware.keep_freed_memory, a process setting that
fastdqn's learner makes), so the baselines' figures are, if anything, flattered.

    python bench/train.py                          # or python -m bench.train, fastdqn bench train
    python bench/train.py --rounds 5 --measure-steps 4000 --precision fp32
    python bench/train.py --device cuda --replay-device cuda   # frames on the GPU

Sizes follow the device (``--device auto``: cuda when torch sees a GPU): on a CPU the 2-core
machine's (16 envs, 2 EnvPool threads, 2 torch threads); on a GPU the learner no longer holds
the CPU, so EnvPool gets every core but one (the main loop's: acting, replay), 64 envs or 4
per thread, and longer rounds (see defaults_for). Every size can still be given. On a GPU the
baselines update on the GPU too, as CleanRL does.
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import os
import tempfile

import torch

from fastdqn.config import make_config
from fastdqn.hardware import keep_freed_memory
from fastdqn.train import resolve_device, train
from .baselines import plain_loop
from .common import interleaved_ratio, machine, print_machine, table, write_json


# --algorithm cleanrl: fastdqn's loop running CleanRL's own update (like for like with the
# cleanrl baseline): no dueling head, max over the target net, MSE, 1-step, uniform replay.
ALGORITHMS = {"fastdqn": {}, "cleanrl": dict(dueling=False, double_q=False, loss="mse", n_step=1, per_alpha=0.0)}


def defaults_for(device: torch.device, cores: int | None = None) -> dict:
    """The sizes that fit the machine, for every option given as None."""
    if device.type != "cuda":  # the 2-core CPU of the README's tables
        return dict(num_envs=16, num_threads=2, torch_threads=2, warmup_steps=2_000, measure_steps=2_000,
                    baseline_steps=500)
    threads = max(1, (cores or os.cpu_count() or 1) - 1)
    # At 5,000 agent steps/s (docs/gpu.md) a round of 40k steps lasts about 8 s.
    return dict(num_envs=max(64, 4 * threads), num_threads=threads, torch_threads=1, warmup_steps=10_000,
                measure_steps=40_000, baseline_steps=1_000)


def fastdqn_sps(game, num_envs, env_batch, num_threads, replay_ratio, batch_size, precision, warmup_steps,
                measure_steps, buffer_size, replay_device="numpy", algorithm="fastdqn", device="cpu",
                overlap_updates="auto") -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = make_config(
            env=dict(env_id=game, num_envs=num_envs, batch_size=env_batch, num_threads=num_threads),
            run_dir=run_dir, device=str(device), total_steps=warmup_steps + measure_steps, learning_starts=warmup_steps,
            buffer_size=buffer_size, replay_ratio=replay_ratio, batch_size=batch_size, precision=precision,
            replay_device=replay_device, overlap_updates=overlap_updates, eval_interval=0, final_eval=False, checkpoint_interval=0,
            log_interval=10**9, save_replay="never", **ALGORITHMS[algorithm],
        )
        summary = train(cfg, progress=False)
    return {"steps_per_s": summary["learning_sps"], "updates": summary["updates"],
            "precision_used": summary["precision_used"]}


def run(game="Breakout-v5", num_envs=16, env_batch=0, num_threads=2, replay_ratio=8.0, batch_size=32,
        precision="auto", warmup_steps=2_000, measure_steps=2_000, baseline_steps=500, buffer_size=100_000,
        rounds=3, replay_device="numpy", show_progress=True, algorithm="fastdqn", device="cpu",
        torch_threads=2, overlap_updates="auto") -> dict:
    """``measure_steps`` / ``baseline_steps`` are per round."""
    device = torch.device(device)
    torch.set_num_threads(torch_threads)
    keep_freed_memory()  # set before any side runs (see the module docstring)
    train_every = max(1, round(batch_size / replay_ratio))
    used = {}

    def fastdqn():
        result = fastdqn_sps(game, num_envs, env_batch, num_threads, replay_ratio, batch_size, precision,
                             warmup_steps, measure_steps, buffer_size, replay_device, algorithm, device,
                             overlap_updates)
        used["precision"] = result["precision_used"]
        return result["steps_per_s"]

    def baseline(kind):
        return lambda: plain_loop(game, learn=True, warmup_steps=max(batch_size, 200), measure_steps=baseline_steps,
                                  train_every=train_every, batch_size=batch_size, kind=kind,
                                  device=device)["steps_per_s"]

    measured = interleaved_ratio("train", {
        "fastdqn_steps_per_s": fastdqn,
        "baseline_steps_per_s": baseline("plain"),
        "cleanrl_steps_per_s": baseline("cleanrl"),
    }, [("speedup", "fastdqn_steps_per_s", "baseline_steps_per_s"),
        ("speedup_vs_cleanrl", "fastdqn_steps_per_s", "cleanrl_steps_per_s")], rounds, show_progress)
    return {
        "benchmark": "train", "game": game, "machine": machine(), "device": str(device), "replay_ratio": replay_ratio,
        "batch_size": batch_size, "precision": precision, "precision_used": used["precision"], "algorithm": algorithm,
        "num_envs": num_envs, "env_batch": env_batch or num_envs, "num_threads": num_threads,
        "torch_threads": torch_threads, "warmup_steps": warmup_steps,
        "replay_device": replay_device, "overlap_updates": overlap_updates, "rounds": rounds,
        "measure_steps": measure_steps,
        "baseline_steps": baseline_steps, "baseline_replay_ratio": batch_size / train_every, **measured,
    }


def report(r: dict) -> None:
    print_machine(r["machine"])

    def spread(key):
        values = [x[key] for x in r["per_round"]]
        return f"{min(values):.1f}-{max(values):.1f}"

    on = "" if r.get("device", "cpu") == "cpu" else f" on {r['device']}"
    replay = "" if r["replay_device"] == "numpy" else f", frames on {r['replay_device']}"
    if r.get("overlap_updates", "auto") != "auto":
        replay += f", --overlap-updates {r['overlap_updates']}"
    algorithm = ("PER n-step, dueling double Q" if r.get("algorithm", "fastdqn") == "fastdqn"
                 else "uniform, DQN max target (CleanRL's update)")
    table(f"Training throughput while learning, {r['game']}, replay ratio {r['replay_ratio']:g} "
          f"(batch {r['batch_size']}); medians of {r['rounds']} interleaved rounds of {r['measure_steps']:,} "
          f"(fastdqn) and {r['baseline_steps']:,} (baseline) steps after warm-up",
          ["what", "agent steps/s", "rounds", "frames/s", "x plain", "x cleanrl"],
          [[f"fastdqn ({r['num_envs']} envs, {algorithm}, {r['precision_used']}{on}{replay})", r["fastdqn_steps_per_s"],
            spread("fastdqn_steps_per_s"), 4 * r["fastdqn_steps_per_s"], r["speedup"], r["speedup_vs_cleanrl"]],
           [f"plain baseline (1 env, uniform, dueling double Q, fp32 eager{on})", r["baseline_steps_per_s"],
            spread("baseline_steps_per_s"), 4 * r["baseline_steps_per_s"], 1.0, ""],
           [f"cleanrl baseline (1 env, uniform, DQN max target, fp32 eager{on})", r["cleanrl_steps_per_s"],
            spread("cleanrl_steps_per_s"), 4 * r["cleanrl_steps_per_s"], "", 1.0]])
    for key, name in (("speedup", "plain"), ("speedup_vs_cleanrl", "cleanrl")):
        low, high = r[f"{key}_range"]
        print(f"ratio to {name} within each round: {low:.2f}-{high:.2f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="fastdqn bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Breakout-v5")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where fastdqn (and the baselines) learn; auto: cuda if torch sees a GPU")
    parser.add_argument("--num-envs", type=int, default=None,
                        help="default: 16 on a CPU, max(64, 4 x threads) on a GPU")
    parser.add_argument("--env-batch", type=int, default=0, help="EnvPool batch; 0 = num-envs (sync)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="EnvPool threads; default: 2 on a CPU, all cores but one on a GPU")
    parser.add_argument("--torch-threads", type=int, default=None, help="default: 2 on a CPU, 1 on a GPU")
    parser.add_argument("--replay-ratio", type=float, default=8.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="fastdqn's precision (the baselines are fp32); auto: bf16 only where the hardware has it")
    parser.add_argument("--algorithm", default="fastdqn", choices=sorted(ALGORITHMS),
                        help="fastdqn's side: its own algorithm (PER n-step, dueling double Q) or CleanRL's "
                             "update (no dueling, max target, MSE, 1-step, uniform): like for like with the cleanrl baseline")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: 2,000 on a CPU, 10,000 on a GPU")
    parser.add_argument("--measure-steps", type=int, default=None,
                        help="fastdqn agent steps timed per round; default: 2,000 on a CPU, 40,000 on a GPU")
    parser.add_argument("--baseline-steps", type=int, default=None,
                        help="baseline agent steps timed per round; default: 500 on a CPU, 1,000 on a GPU")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fastdqn, baseline, ...)")
    parser.add_argument("--replay-device", default="numpy", choices=("numpy", "cuda", "cpu"),
                        help="where the replay's frames live (see fastdqn train --help); cuda needs a GPU")
    parser.add_argument("--overlap-updates", default="auto", choices=("auto", "on", "off"),
                        help="fastdqn's updates overlapped with the next group's sampling (see fastdqn train "
                             "--help; auto: on with CUDA graphs): run it both ways to see what it gains")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.replay_device == "cuda" and args.device == "cpu":
        parser.error("--replay-device cuda needs --device cuda (or auto on a machine with a GPU)")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    if args.replay_device == "cuda" and device.type != "cuda":
        parser.error("--replay-device cuda needs a CUDA GPU, and torch sees none")
    sizes = defaults_for(device)
    if args.quick:
        sizes.update(num_envs=4, num_threads=1, warmup_steps=200, measure_steps=200, baseline_steps=60)
    sizes.update({name: getattr(args, name) for name in sizes if getattr(args, name) is not None})  # given ones win
    options = dict(env_batch=args.env_batch, replay_ratio=args.replay_ratio, batch_size=args.batch_size,
                   precision=args.precision, rounds=args.rounds, replay_device=args.replay_device,
                   show_progress=not args.no_progress, algorithm=args.algorithm, device=device,
                   overlap_updates=args.overlap_updates)
    if args.quick:
        options.update(batch_size=8, buffer_size=2_000, rounds=1, show_progress=False)
    result = run(args.game, **sizes, **options)
    report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
