"""fastdqn suite: one ordinary run per game, then human-normalised scores over the games.

Each game trains in OUT/<Game> through ``train(cfg)``. Running the same command again skips
the games that finished, resumes one that was interrupted (Ctrl-C, a crash, a reboot) from its
checkpoint, and writes the report again: OUT/suite.md, suite.json, suite.png (HNS per game) and
curves.png (each game's learning curve).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
from pathlib import Path

import numpy as np

from fastdqn import config as config_lib

# Aitchison, Sweetser and Hutter (2023), "Atari-5: Distilling the Arcade Learning Environment
# down to Five Games" (ICML).
ATARI5 = ("BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert")

# (random, human) scores of the 57 games, from DQN Zoo's dqn_zoo/atari_data.py: the table Agent57
# (Badia et al. 2020) uses, measured with up to 30 no-op starts and 108k-frame games.
REFERENCE_SOURCE = "DQN Zoo's atari_data.py (random and human scores as in Agent57, Badia et al. 2020)"
REFERENCE_SCORES = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0), "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7), "Atlantis": (12850.0, 29028.1), "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5), "BeamRider": (363.9, 16926.5), "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7), "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5), "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8), "CrazyClimber": (10780.5, 35829.4), "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0), "DoubleDunk": (-18.6, -16.4), "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7), "Freeway": (0.0, 29.6), "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4), "Hero": (1027.0, 30826.4), "IceHockey": (-11.2, 0.9), "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5), "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3), "MsPacman": (307.3, 6951.6), "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6), "Pitfall": (-229.4, 6463.7), "Pong": (-20.7, 14.6), "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0), "Riverraid": (1338.5, 17118.0), "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9), "Seaquest": (68.4, 42054.7), "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7), "SpaceInvaders": (148.0, 1668.7), "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5), "Tennis": (-23.8, -8.3), "TimePilot": (3568.0, 5229.2), "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2), "Venture": (0.0, 1187.5), "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5), "YarsRevenge": (3092.9, 54576.9), "Zaxxon": (32.5, 9173.3),
}

# `fastdqn train` flags the suite sets itself, and what to use instead.
SET_BY_THE_SUITE = {
    "EnvConfig.env_id": "--games names the games", "TrainConfig.run_dir": "--out names the suite's directory",
    "TrainConfig.total_steps": "use --steps", "TrainConfig.max_minutes": "use --minutes",
    "TrainConfig.resume": "running the same command again resumes by itself",
}
# Settings that may change between two runs of the same suite: where and how it runs, not what it trains.
MAY_CHANGE = {*config_lib.HELP_GROUPS["hardware"], *config_lib.HELP_GROUPS["logging"],
              *config_lib.HELP_GROUPS["checkpoints"], "run_dir", "exp_name", "capture_video", "num_threads",
              "ray_address", "actor_cpus", "actor_restarts"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    suite = parser.add_argument_group("suite")
    suite.add_argument("--games", default="atari5", help="atari5 (BattleZone, DoubleDunk, NameThisGame, Phoenix, "
                       "Qbert: Aitchison et al. 2023) or a comma-separated list, e.g. Pong,Breakout (default: atari5)")
    suite.add_argument("--steps", type=int, default=None, help="agent steps per game")
    suite.add_argument("--minutes", type=float, default=None,
                       help="minutes per game (or until --total-steps of the preset, whichever comes first)")
    suite.add_argument("--out", default=None, help="the suite's directory, one run per game in OUT/<Game> "
                       "(default: runs/suite-<games>)")
    suite.add_argument("--no-progress", action="store_true", help="no progress bar")
    config_lib.add_arguments(parser)  # every `fastdqn train` flag applies to each game
    for action in parser._actions:
        if action.dest in SET_BY_THE_SUITE:
            action.help = argparse.SUPPRESS


def atari_games() -> dict[str, str]:
    """{lower-case name: EnvPool's name without -v5} for EnvPool's Atari games."""
    from envpool.registration import registry

    return {task[:-3].lower(): task[:-3] for task, spec in registry.specs.items()
            if spec[0] == "envpool.atari" and task.endswith("-v5")}


def resolve_games(spec: str) -> list[str]:
    """'atari5' or 'Pong,breakout-v5,...' -> ['Pong', 'Breakout', ...]; ValueError naming an unknown game."""
    names = ATARI5 if spec.strip().lower() == "atari5" else [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ValueError("--games is empty: give atari5 or game names, e.g. --games Pong,Breakout")
    known = atari_games()
    games = []
    for name in names:
        key = name.lower().removesuffix("-v5")
        if key not in known:
            close = [known[k] for k in difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)]
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"--games: {name!r} is not one of EnvPool's Atari games.{hint} (fastdqn envs lists them)")
        if known[key] not in games:
            games.append(known[key])
    return games


def budget_of(args: argparse.Namespace) -> dict:
    """The TrainConfig fields of --steps N (max_minutes 0) or --minutes M (the preset's total_steps)."""
    if args.steps is not None and args.minutes is not None:
        raise ValueError("give --steps or --minutes, not both: one budget per game")
    if args.steps is None and args.minutes is None:
        raise ValueError("give a budget per game: --steps N (agent steps) or --minutes M")
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be positive, got {args.steps}")
        return {"total_steps": args.steps, "max_minutes": 0.0}
    if not args.minutes > 0:
        raise ValueError(f"--minutes must be positive, got {args.minutes}")
    return {"max_minutes": args.minutes}


def describe_budget(total_steps: int, max_minutes: float) -> str:
    if max_minutes:
        return f"{max_minutes:g} minutes per game (at most {total_steps:,} agent steps)"
    return f"{total_steps:,} agent steps per game"


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle half, int(n/4) values cut from each end, as
    scipy.stats.trim_mean(x, 0.25) and rliable compute it."""
    x = np.sort(np.asarray(values, dtype=float))
    cut = int(0.25 * len(x))
    return float(x[cut:len(x) - cut].mean())


def score_table(scores: dict[str, float | None]) -> dict:
    """Per game its raw score, the random and human references and HNS = (score - random) /
    (human - random) (None without a score or references); the median and IQM of the HNS."""
    rows = []
    for game, score in scores.items():
        random, human = REFERENCE_SCORES.get(game, (None, None))
        hns = None if score is None or random is None else (score - random) / (human - random)
        rows.append(dict(game=game, score=score, random=random, human=human, hns=hns))
    values = [row["hns"] for row in rows if row["hns"] is not None]
    return dict(games=rows, median_hns=float(np.median(values)) if values else None,
                iqm_hns=iqm(values) if values else None, games_with_hns=len(values))


def _read_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _finished(summary: dict | None) -> bool:
    return bool(summary) and summary.get("stop_reason") not in (None, "interrupted")


def _require_same_settings(saved: dict, cfg: config_lib.TrainConfig, run_dir: Path) -> None:
    """ValueError when the run already in run_dir was trained otherwise than this suite asks:
    one table holds one budget and one protocol."""
    now = config_lib.to_dict(cfg)
    before, after = (describe_budget(d["total_steps"], d["max_minutes"]) for d in (saved, now))
    differences = [] if before == after else [("budget", before, after)]
    skip = MAY_CHANGE | {"env", "total_steps", "max_minutes"}
    for old, new, flag_of in ((saved, now, config_lib._flag), (saved.get("env", {}), now["env"], config_lib._env_flag)):
        differences += [(flag_of(name), old[name], value) for name, value in new.items()
                        if name in old and name not in skip and old[name] != value]
    if differences:
        what, was, asked = differences[0]
        raise ValueError(f"{run_dir} was trained with {what} {was}, this suite asks for {asked}: run the suite as it "
                         "was started, or give another --out")


def plan(args: argparse.Namespace) -> tuple[Path, list[dict]]:
    """Check everything and decide, per game, train / resume / skip, before any training."""
    from fastdqn.checkpoint import prev_path
    from fastdqn.paths import require_writable

    for dest, instead in SET_BY_THE_SUITE.items():
        if getattr(args, dest, None) is not None:
            flag = "--" + dest.split(".")[1].replace("_", "-")
            raise ValueError(f"{flag} is set by the suite for each game: {instead}")
    games = resolve_games(args.games)
    budget = budget_of(args)
    name = "atari5" if args.games.strip().lower() == "atari5" else "-".join(games)
    out = Path(args.out or f"runs/suite-{name}")
    require_writable(out, "--out", directory=True)
    if "total_steps" in budget:  # said as the suite's flags, before train's own check names --total-steps
        starts = config_lib.from_arguments(argparse.Namespace(**{**vars(args), "EnvConfig.env_id": f"{games[0]}-v5"}))
        if budget["total_steps"] <= starts.learning_starts:
            raise ValueError(f"--steps {budget['total_steps']} is not more than --learning-starts "
                             f"{starts.learning_starts}: every game would be scored untrained; raise --steps or "
                             "lower --learning-starts")
    jobs = []
    for game in games:
        run_dir = out / game
        fresh = argparse.Namespace(**vars(args))
        setattr(fresh, "EnvConfig.env_id", f"{game}-v5")
        setattr(fresh, "TrainConfig.run_dir", str(run_dir))
        for field, value in budget.items():
            setattr(fresh, f"TrainConfig.{field}", value)
        cfg = config_lib.from_arguments(fresh)
        summary = _read_summary(run_dir)
        if _finished(summary):
            _require_same_settings(summary["config"], cfg, run_dir)
            jobs.append(dict(game=game, run_dir=run_dir, action="skip", cfg=cfg, summary=summary))
        elif (run_dir / "checkpoint.pt").exists() or prev_path(run_dir / "checkpoint.pt").exists():
            # the saved config with only the flags that may change on top, so that any other difference shows
            may_change = {k: v for k, v in vars(args).items() if "." in k and k.split(".")[1] in MAY_CHANGE}
            resumed = config_lib.resume_config(str(run_dir), argparse.Namespace(**may_change))
            _require_same_settings(config_lib.to_dict(resumed), cfg, run_dir)
            jobs.append(dict(game=game, run_dir=run_dir, action="resume", cfg=resumed, summary=summary))
        else:
            jobs.append(dict(game=game, run_dir=run_dir, action="train", cfg=cfg, summary=None))
    return out, jobs


def run(args: argparse.Namespace) -> int:
    """`fastdqn suite`: 0 when every game has its score, 3 when one diverged, 130 on Ctrl-C."""
    from fastdqn.train import TrainingDiverged, train

    out, jobs = plan(args)
    cfg = jobs[0]["cfg"]
    say(f"suite of {len(jobs)} games in {out}: {describe_budget(cfg.total_steps, cfg.max_minutes)}, "
        f"{cfg.env.protocol} protocol")
    diverged = False
    for i, job in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {job['game']}:"
        if job["action"] == "skip":
            say(f"{tag} skipped, finished before ({job['summary']['stop_reason']}; {_result(job['summary'])})")
            continue
        if job["action"] == "resume":
            say(f"{tag} resuming its interrupted run in {job['run_dir']}")
        else:
            again = " (again: the run there stopped before its first checkpoint)" if job["run_dir"].exists() else ""
            say(f"{tag} training in {job['run_dir']}{again}")
        try:
            job["summary"] = train(job["cfg"], progress=not args.no_progress)
        except TrainingDiverged as exc:
            say(f"{tag} diverged: {exc}")
            partial = _read_summary(job["run_dir"]) or {}
            job["summary"] = {**partial, "eval_mean_return": None, "stop_reason": "diverged"}
            diverged = True
            continue
        if job["summary"].get("stop_reason") == "interrupted":
            say(f"{tag} interrupted at step {job['summary']['agent_steps']:,}: run the same command again to resume")
            return 130
        say(f"{tag} done, {job['summary']['stop_reason']}; {_result(job['summary'])}")
    report = write_report(out, jobs, args)
    say(f"median HNS {_number(report['median_hns'], 3)}, IQM HNS {_number(report['iqm_hns'], 3)} over "
        f"{report['games_with_hns']} games: {out / 'suite.md'}")
    return 3 if diverged else 0


def say(line: str) -> None:
    print(line, flush=True)


def _result(summary: dict) -> str:
    score = summary.get("eval_mean_return")
    return (f"eval mean {_number(score, 1)} after {summary.get('agent_steps', 0):,} steps, "
            f"{summary.get('wall_seconds', 0) / 60:.1f} min")


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def write_report(out: Path, jobs: list[dict], args: argparse.Namespace) -> dict:
    """OUT/suite.json, suite.md, suite.png (HNS per game) and curves.png; returns what suite.json holds."""
    summaries = {job["game"]: job["summary"] or {} for job in jobs}
    table = score_table({game: s.get("eval_mean_return") for game, s in summaries.items()})
    for row in table["games"]:
        s = summaries[row["game"]]
        row.update(env_id=f"{row['game']}-v5", run_dir=row["game"], agent_steps=s.get("agent_steps"),
                   frames=s.get("frames"), wall_minutes=round(s.get("wall_seconds", 0) / 60, 2),
                   eval_episodes=s.get("eval_episodes"), stop_reason=s.get("stop_reason"))
    cfg = jobs[0]["cfg"]
    machines = []
    for s in summaries.values():
        if s.get("machine") and s["machine"] not in machines:
            machines.append(s["machine"])
    protocol = config_lib.protocol_record(cfg)
    report = dict(
        **table, protocol=protocol["name"], protocol_description=protocol["description"],
        budget=dict(total_steps=cfg.total_steps, max_minutes=cfg.max_minutes,
                    description=describe_budget(cfg.total_steps, cfg.max_minutes)),
        preset=args.preset, seed=cfg.seed, machine=machines[0] if len(machines) == 1 else machines,
        reference_scores=REFERENCE_SOURCE,
    )
    (out / "suite.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "suite.md").write_text(markdown(report))
    plot_hns(report, out / "suite.png")
    plot_curves([out / job["game"] for job in jobs], out / "curves.png")
    return report


def markdown(report: dict) -> str:
    from fastdqn import hardware  # imports torch: only where a report is written

    machines = report["machine"] if isinstance(report["machine"], list) else [report["machine"]]
    lines = ["# fastdqn suite", "",
             f"- Protocol: {report['protocol_description']}",
             f"- Budget: {report['budget']['description']}; preset {report['preset'] or '(none)'}; seed {report['seed']}"]
    lines += [f"- Machine: {hardware.cpu_label(m)} ({m['cores']} cores), {'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}"
              for m in machines]
    lines += ["", "| game | score | random | human | HNS | agent steps | minutes | stopped |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in report["games"]:
        lines.append(f"| {row['game']} | {_number(row['score'], 1)} | {_number(row['random'], 1)} | "
                     f"{_number(row['human'], 1)} | {_number(row['hns'], 3)} | {_number(row['agent_steps'], 0)} | "
                     f"{row['wall_minutes']:.1f} | {row['stop_reason']} |")
    lines += ["", (f"**Median HNS {_number(report['median_hns'], 3)}, IQM HNS {_number(report['iqm_hns'], 3)}** "
                   f"over the {report['games_with_hns']} games with a score and reference scores."), "",
              ("Score: the final evaluation's mean over full games. HNS (human-normalised score) = (score - random) / "
               f"(human - random), with the random and human scores of {report['reference_scores']}. IQM: the mean "
               "of the middle half of the games (scipy.stats.trim_mean(x, 0.25), as rliable). These are statistics "
               "over the games played here, not the Atari-5 paper's regression estimate of the 57-game median.")]
    missing = [row["game"] for row in report["games"] if row["random"] is None]
    if missing:
        lines += ["", f"No reference scores for {', '.join(missing)}: raw score only, HNS left blank."]
    return "\n".join(lines) + "\n"


def plot_hns(report: dict, out: Path) -> None:
    from fastdqn.plot import pyplot

    plt = pyplot()
    rows = report["games"]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 4), dpi=110)
    try:
        hns = [row["hns"] if row["hns"] is not None else math.nan for row in rows]
        ax.bar(range(len(rows)), hns, color=["tab:blue" if h >= 0 else "tab:red" for h in np.nan_to_num(hns)])
        ax.set_xticks(range(len(rows)), [row["game"] + ("" if row["hns"] is not None else "\n(no HNS)")
                                         for row in rows])
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(1, color="gray", ls="--", lw=0.8, label="human")
        ax.set_ylabel("human-normalised score")
        ax.set_title(f"median {_number(report['median_hns'], 3)}, IQM {_number(report['iqm_hns'], 3)} "
                     f"({report['budget']['description']}, {report['protocol']} protocol)", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)


def plot_curves(run_dirs: list[Path], out: Path) -> None:
    """Each game's learning curve in its own panel (the scores differ by orders of magnitude)."""
    from fastdqn.plot import draw_run, pyplot

    plt = pyplot()
    cols = min(3, len(run_dirs))
    rows = math.ceil(len(run_dirs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), dpi=100, squeeze=False)
    try:
        for ax, run_dir in zip(axes.flat, run_dirs):
            try:
                draw_run(ax, run_dir)
            except (ValueError, FileNotFoundError):  # a game that diverged before it scored
                ax.text(0.5, 0.5, "no scores", ha="center", transform=ax.transAxes)
            ax.set_title(run_dir.name)
        for ax in axes.flat[len(run_dirs):]:
            ax.set_visible(False)
        axes.flat[0].legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
