"""fastdqn: train DQN-family agents on EnvPool games, evaluate them, plot them, benchmark.

  fastdqn train --preset cartpole          solve CartPole-v1 in a couple of minutes
  fastdqn train --preset breakout-cpu      Breakout on a small CPU (60 minutes)
  fastdqn eval RUN_DIR --video game.mp4    full-game evaluation of a run's checkpoint
  fastdqn push RUN_DIR --repo-id USER/NAME share it on the Hugging Face Hub; fastdqn eval hf://USER/NAME
  fastdqn plot RUN_DIR [RUN_DIR ...]       learning-curve PNG from the runs' logs (several: overlaid)
  fastdqn suite --games atari5 --steps N   one run per game, human-normalised scores (median, IQM)
  fastdqn presets | fastdqn envs           what each preset is for, reaches and sets; the games
  fastdqn results                          rebuild the results tables from the committed runs
  fastdqn bench all                        the frames-per-second tables
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path

BENCHMARKS = ("env", "collect", "replay", "gather", "learner", "continuous", "onpolicy", "train", "apex")


def _train(args: argparse.Namespace) -> int:
    from fastdqn import config as config_lib
    from fastdqn.train import SOURCE_LOST, TrainingDiverged, train

    if getattr(args, "TrainConfig.resume"):
        run_dir = getattr(args, "TrainConfig.run_dir")
        if not run_dir:
            raise ValueError("--resume needs --run-dir: the directory of the run to continue")
        cfg = config_lib.resume_config(run_dir, args)
    else:
        cfg = config_lib.from_arguments(args)
    try:
        summary = train(cfg, progress=not args.no_progress)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    if summary.get("stop_reason", "").startswith(SOURCE_LOST):  # (ended early, its checkpoint written)
        return 1
    return 130 if summary.get("stop_reason") == "interrupted" else 0


def _eval(args: argparse.Namespace) -> int:
    from fastdqn.envs import is_atari
    from fastdqn.evaluate import evaluate
    from fastdqn.hub import load_policy
    from fastdqn.paths import require_writable
    from fastdqn.train import resolve_device
    from fastdqn.video import GameRecorder, real_time_fps, require_encoder

    # everything that could fail after the games are played is checked before
    if args.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
    if args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {args.max_steps}")
    if not 0 <= args.eps <= 1:
        raise ValueError(f"--eps must be in [0, 1], got {args.eps}")
    for flag, path in (("--gif", args.gif), ("--video", args.video)):
        if path is not None:
            require_writable(path, flag)
    if args.video:
        require_encoder()
    device = resolve_device(args.device)
    cfg, policy = load_policy(args.checkpoint, device)
    if args.episodic_life is not None:
        cfg.env = replace(cfg.env, episodic_life=args.episodic_life)
    if args.gif and not is_atari(cfg.env.env_id):
        raise ValueError(f"--gif shows the agent's grey Atari frames; {cfg.env.env_id} has none: use --video "
                         "for an MP4 of any game")
    recording = GameRecorder(args.video, real_time_fps(cfg.env)) if args.video else None
    result = evaluate(policy, cfg.env, episodes=args.episodes, epsilon=args.eps, max_steps=args.max_steps,
                      device=device, seed=args.seed, gif_path=args.gif, recorder=recording)
    if is_atari(cfg.env.env_id):
        result["episodic_life"] = cfg.env.episodic_life
    if recording is not None:
        recording.close()
        result["video"] = str(args.video)
    if args.gif:
        result["gif"] = str(args.gif)
    print(json.dumps(result, indent=2))
    return 0


def _push(args: argparse.Namespace) -> int:
    from fastdqn import hub

    if args.local_dir:
        print(f"wrote {hub.export(args.run_dir, args.local_dir, args.repo_id)} (nothing uploaded)")
    else:
        print(hub.push(args.run_dir, args.repo_id, private=args.private))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from fastdqn import results
    from fastdqn.config import PRESETS, preset_flags

    runs = results.collect()
    for name in sorted(PRESETS):
        # a no-break space keeps each flag on one line with its value
        flags = " ".join(flag.replace(" ", "\xa0") for flag in preset_flags(name))
        print(f"{name}:")
        print(textwrap.fill(flags, width=100, initial_indent="  ", subsequent_indent="  ",
                            break_on_hyphens=False).replace("\xa0", " "))
        for line in results.describe_preset(name, runs):
            print(textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="    ",
                                break_on_hyphens=False))
    print("\nfastdqn train --preset NAME [flags]: flags given on the command line win over the preset's. "
          "Every committed run: docs/results/README.md")
    return 0


def _results(args: argparse.Namespace) -> int:
    from fastdqn import results

    return results.run(args)


def _envs(args: argparse.Namespace) -> int:
    from envpool.registration import registry

    kinds = {"envpool.atari": "Atari (frame skip 4, 84x84 grey, stacked 4)", "envpool.classic_control": "classic control",
             "envpool.mujoco.gym": "MuJoCo (continuous actions: DDPG / TD3)"}
    for module, title in kinds.items():
        names = sorted(task for task, spec in registry.specs.items() if spec[0] == module)
        print(f"{title}, {len(names)} tasks:")
        print(textwrap.fill(" ".join(names), width=100, initial_indent="  ", subsequent_indent="  "))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from fastdqn.paths import require_writable
    from fastdqn.plot import plot_runs

    for run_dir in args.run_dir:
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"no run directory at {run_dir}")
    default = Path(args.run_dir[0]) / "learning_curve.png" if len(args.run_dir) == 1 else Path("learning_curves.png")
    require_writable(args.out or default, "--out")
    print(plot_runs(args.run_dir, args.out or default))
    return 0


def _suite(args: argparse.Namespace) -> int:
    from fastdqn import suite

    return suite.run(args)


def _bench(args: argparse.Namespace, rest: list[str], bench_parser: argparse.ArgumentParser) -> int:
    if args.help and args.which in (None, "all"):
        bench_parser.print_help()
        return 0
    if args.which is None:
        bench_parser.error(f"name a benchmark: {', '.join(BENCHMARKS + ('all',))}")
    if args.help:  # fastdqn bench NAME --help: that benchmark's own help
        rest = ["--help"]
    names = BENCHMARKS if args.which == "all" else (args.which,)
    if args.which == "all" and set(rest) - {"--quick"}:
        raise ValueError(f"'fastdqn bench all' takes only --quick and --json (got {' '.join(rest)}); "
                         "run one benchmark for its own options, e.g. fastdqn bench replay --help")
    if args.json and len(names) == 1:
        rest = rest + ["--json", args.json]
    results = {}
    for name in names:
        try:
            module = importlib.import_module(f"fastdqn.bench.{name}")
        except ModuleNotFoundError:  # a bare checkout run as `python -m fastdqn.cli`: bench/ is at the top
            module = importlib.import_module(f"bench.{name}")
        results[name] = module.main(rest)
    if args.json and len(names) > 1:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fastdqn.config import add_arguments
    from fastdqn.suite import add_arguments as suite_arguments

    parser = argparse.ArgumentParser(prog="fastdqn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an agent (every hyper-parameter is a flag)",
                       description="Train an agent. Flags override the preset, which overrides the defaults.")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_arguments(p)

    p = sub.add_parser("eval", help="full-game evaluation of a checkpoint (the training game, real scores)")
    p.add_argument("checkpoint", help="a checkpoint.pt, a run directory, a folder written by fastdqn push "
                                      "--local-dir, or hf://USER/NAME (needs the hub extra)")
    p.add_argument("--episodes", type=int, default=10, help="games to play (one per env)")
    p.add_argument("--eps", type=float, default=0.01, help="evaluation epsilon: a random action with this probability (A2C ignores it: it "
                                                     "plays its most probable action)")
    p.add_argument("--max-steps", type=int, default=27_000, help="agent steps at most per game")
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation envs")
    p.add_argument("--gif", type=Path, default=None, help="write env 0's game as a GIF (Atari)")
    p.add_argument("--video", type=Path, default=None, help="record env 0's game as an MP4 in RGB at real speed "
                                                          "(needs the video extra)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--episodic-life", action=argparse.BooleanOptionalAction, default=None,
                   help="Atari: start each life with the reset's no-ops and FIRE, as in training (default: as the "
                        "run was trained). --no-episodic-life makes the agent serve for itself after a lost life, "
                        "as fastdqn evaluated before 0.2: scores are not comparable")

    p = sub.add_parser("push", help="share a trained agent on the Hugging Face Hub (weights, config, scores, "
                                    "learning curve, video, model card)")
    p.add_argument("run_dir", help="a run directory (checkpoint.pt, summary.json)")
    p.add_argument("--repo-id", required=True, help="USER/NAME of the Hub model repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--local-dir", type=Path, default=None,
                   help="write the folder that would be uploaded here, and upload nothing")

    sub.add_parser("presets", help="each preset: what it is for, its replay memory, what it is known to reach "
                                   "and where, the flags it sets")
    p = sub.add_parser("results", help="rebuild docs/results/README.md and README.md's Results and Performance "
                                       "tables from the committed runs' summary.json and bench JSON files")
    from fastdqn.results import add_arguments as results_arguments

    results_arguments(p)
    sub.add_parser("envs", help="EnvPool's Atari, classic-control and MuJoCo tasks")

    p = sub.add_parser("plot", help="learning-curve PNG from run directories (several: overlaid, one colour each)")
    p.add_argument("run_dir", nargs="+", help="run directories (TensorBoard events)")
    p.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/learning_curve.png for one run, "
                                               "./learning_curves.png for several)")

    p = sub.add_parser("suite", help="train one run per game (Atari-5 by default) and report human-normalised scores",
                       description="Train each game in OUT/<Game>, then write OUT/suite.md, suite.json, suite.png "
                       "and curves.png. Running the same command again skips finished games and resumes an "
                       "interrupted one. Every `fastdqn train` flag applies to each game.")
    suite_arguments(p)

    p = sub.add_parser("bench", help="benchmarks; options after the name go to that benchmark "
                                     "(e.g. fastdqn bench replay --help)", add_help=False)
    # -h after a benchmark's name is that benchmark's help (handled in _bench)
    p.add_argument("-h", "--help", action="store_true", help="this help; after a NAME, that benchmark's help")
    p.add_argument("which", nargs="?", choices=BENCHMARKS + ("all",), help="which benchmark")
    p.add_argument("--json", default=None, help="with 'all': write every result to this JSON file")
    parser.bench_parser = p
    return parser


def main(argv: list[str] | None = None) -> int:
    # EnvPool's classic-control specs declare float64 bounds: gymnasium warns (4 lines) on each
    # env it makes, through the progress bar
    warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32", category=UserWarning)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    commands = {"train": _train, "eval": _eval, "push": _push, "presets": _presets, "results": _results, "envs": _envs,
                "plot": _plot,
                "suite": _suite,
                "bench": lambda a: _bench(a, rest, parser.bench_parser)}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt as exc:  # outside training (which handles its own), or a second Ctrl-C there
        from fastdqn.interrupts import Abort

        if not isinstance(exc, Abort):  # (train has said what an abort left)
            print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from fastdqn.checkpoint import CheckpointError
        from fastdqn.extras import MissingExtra

        if isinstance(exc, (CheckpointError, MissingExtra)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
