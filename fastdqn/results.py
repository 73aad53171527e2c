"""The results archive, built from the runs' own files: no figure is typed by hand.

    fastdqn results            # rewrites docs/results/README.md and README.md's marked blocks
    fastdqn results --check    # exits 1, naming the file, when either is out of date

A run is a folder under docs/results holding the `summary.json` that `fastdqn train` wrote, and a
short `note.md` whose first lines are `key: value` pairs (until the first blank line):

    date: 2026-12-03                  when it ran
    what: the preset's hour, seed 1   what it tried, in a few words
    cpu_id: family 25 model 1         or generation: Zen4, where summary.json predates cpu_id
    caveat: ...                       why today's command would not repeat it (kept off README.md)

(runs written before summary.json had a machine or protocol record name them with `cpu`, `cores`,
`flags` and `protocol` lines).

Each row of the archive: the game, the preset and the flags that differ from it today, the
protocol, the machine (CPU model, generation, vector / bf16 flags, ISA caps), the precision, agent
steps/s while learning, agent steps and minutes to human level and to 100 (the first evaluation
at or above), the best and the final evaluation. README.md's Results table is a filtered view
of the same rows (`front_rows`); its Performance table comes from the training benchmark's JSON
files (`fastdqn bench train --json docs/results/train-*.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the source checkout this package runs from
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
TARGET = 100.0  # the second milestone of every Atari row (Breakout's "100 within the hour")
# Flags that pick a seed, a budget or what is written, not what is trained: not part of a setting.
RUN_ONLY = {"seed", "env_seed", "max_minutes", "save_replay", "total_steps"}
BYTES_PER_TRANSITION_SMALL = 44  # action, reward, flags, priority beside each stored frame
GENERATIONS = {  # cpu_id (/proc/cpuinfo) -> the name the vendor gives the generation
    "family 23 model 1": "Zen1", "family 23 model 49": "Zen2", "family 25 model 1": "Zen3",
    "family 25 model 17": "Zen4", "family 6 model 143": "Sapphire Rapids", "family 6 model 207": "Emerald Rapids",
}


@dataclasses.dataclass
class Run:
    folder: str  # relative to the results folder (docs/results)
    env_id: str
    date: str
    what: str
    caveat: str  # why today's command would not repeat it exactly ("" when it would)
    preset: str | None
    flags: list[str]  # flags beyond the preset that change what is trained
    run_flags: list[str]  # seed, budget, what is saved
    protocol: str
    machine: str  # short: "AMD EPYC Zen4, capped to AVX2"
    machine_long: str  # model, generation, flags, caps
    precision: str
    sps: float | None  # agent steps/s while learning
    agent_steps: int
    first: float | None  # the first milestone: the human score (Atari), else the run's target score
    to_first: tuple[int, float] | None  # (agent steps, minutes) at the first evaluation >= first
    to_target: tuple[int, float] | None
    best: float | None
    final: float | None

    @property
    def has_human(self) -> bool:
        """Whether the game has a human reference score (Atari), so the milestones are human level and 100."""
        return human_score(self.env_id) is not None

    def rank(self) -> tuple:
        """Sort key, best first: agent steps to 100, then to the first milestone (human level), then
        the best evaluation, then minutes to 100 and to the first milestone."""
        far = float("inf")
        return (self.to_target[0] if self.to_target else far, self.to_first[0] if self.to_first else far,
                -(self.best or 0.0), self.to_target[1] if self.to_target else far,
                self.to_first[1] if self.to_first else far)


def read_note(folder: Path) -> dict:
    """The `key: value` lines at the top of folder/note.md ({} without one)."""
    path = folder / "note.md"
    fields: dict = {}
    if not path.exists():
        return fields
    for line in path.read_text().splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def crossing(evals: list[dict], score: float | None) -> tuple[int, float] | None:
    """(agent steps, minutes) of the first evaluation whose mean is at least ``score``."""
    if score is None:
        return None
    for e in evals:
        if e["mean_return"] >= score:
            return int(e["agent_steps"]), e["wall_seconds"] / 60
    return None


def human_score(env_id: str) -> float | None:
    from fastdqn.suite import REFERENCE_SCORES

    scores = REFERENCE_SCORES.get(env_id.split("-")[0])
    return scores[1] if scores else None


def machine_record(summary_machine: dict | None, note: dict) -> dict | None:
    """The machine a run names: summary.json's record, with what its note adds where the record is
    silent (``cpu_id`` or ``generation`` for runs written before cpu_id existed; the whole record
    for runs written before there was one)."""
    machine = dict(summary_machine or {})
    if not machine and "cpu" not in note:
        return None
    for key in ("cpu", "cpu_id", "generation", "cores"):
        if not machine.get(key) and note.get(key):
            machine[key] = note[key]
    if "cpu_flags" not in machine and note.get("flags"):
        machine["cpu_flags"] = note["flags"].split()
    return machine


def machine_labels(machine: dict | None) -> tuple[str, str]:
    """(short, long) description of a machine record: "AMD EPYC Zen4, capped to AVX2" and the
    model, generation and cpu_id, cores, vector / bf16 flags, ISA caps and GPU."""
    if not machine:
        return "not recorded", "not recorded"
    cpu = machine["cpu"].replace("(R)", "").replace("(TM)", "")
    cpu_id = machine.get("cpu_id")
    generation = GENERATIONS.get(cpu_id or "") or machine.get("generation", "")
    if not generation and cpu.startswith("AMD") and "avx512_bf16" in machine.get("cpu_flags", []):
        generation = "Zen4+"  # the first AMD generation with avx512_bf16
    ident = ", ".join(x for x in (generation, cpu_id) if x) or "generation not recorded"
    cap = machine.get("isa_cap") or {}
    flags = " ".join(machine.get("cpu_flags", [])) or "flags not recorded"
    gpu = machine.get("gpu")
    short = " ".join(x for x in (cpu, generation) if x)
    if cap:
        short += ", capped to " + next(iter(cap.values())).upper()
    if gpu:
        short += f", {gpu}"
    long = f"{cpu} ({ident}), {machine.get('cores', '?')} cores; {flags}"
    long += "; cap " + " ".join(f"{k}={v}" for k, v in cap.items()) if cap else ""
    long += f"; GPU {gpu}" if gpu else ""
    return short, long


def preset_and_flags(config: dict) -> tuple[str | None, list[str], list[str]]:
    """(preset, flags that change the training, seed/budget/output flags) that rebuild a run's
    saved ``config`` on top of a preset as it is today: the preset that needs the fewest flags
    (on a tie, the more specific one, which sets more)."""
    from fastdqn import config as config_lib

    cfg = _config_of(config)
    best = None
    for preset in (None, *config_lib.PRESETS):
        flags = _differences(cfg, _preset_config(preset))
        key = (len(flags), -len(config_lib.PRESETS.get(preset or "", {})))
        if best is None or key < best[0]:
            best = (key, preset, flags)
    _, preset, flags = best
    setting = [f for f in flags if f.split()[0][2:].replace("-", "_") not in RUN_ONLY]
    return preset, setting, [f for f in flags if f not in setting]


def _config_of(saved: dict):
    """A TrainConfig from summary.json's config, as saved (fields since removed are dropped, new ones
    take their defaults). Not validated: validation asks EnvPool for the game's spec, ~0.2 s a run."""
    from fastdqn import config as config_lib
    from fastdqn.envs import EnvConfig

    data = dict(saved)
    env = {k: v for k, v in data.pop("env").items() if k in {f.name for f in dataclasses.fields(EnvConfig)}}
    known = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    data = config_lib._upgrade({k: v for k, v in data.items() if k in known})
    return config_lib.TrainConfig(env=EnvConfig(**env), **data)


@functools.lru_cache(maxsize=None)
def _preset_config(preset: str | None):
    from fastdqn import config as config_lib

    return config_lib.make_config(preset)


def _differences(cfg, base) -> list[str]:
    """The flags, one string each ("--lr 0.0005"), that turn ``base`` into ``cfg``; fields that say
    where a run is watched (run dir, tracking) are not compared, as in config.command_line."""
    from fastdqn import config as config_lib

    flags = []
    for owner, reference, flag_of in ((cfg.env, base.env, config_lib._env_flag), (cfg, base, config_lib._flag)):
        for f in dataclasses.fields(owner):
            value = getattr(owner, f.name)
            if f.name == "env" or f.name in config_lib._NOT_REPRODUCED or value == getattr(reference, f.name):
                continue
            flags.append(" ".join(config_lib._flag_words(f.name, value, flag_of)))
    return flags


def read_run(folder: Path, results: Path = RESULTS) -> Run:
    summary = json.loads((folder / "summary.json").read_text())
    note = read_note(folder)
    evals = sorted(summary.get("evals", []), key=lambda e: e["agent_steps"])
    env_id = summary["env_id"]
    preset, flags, run_flags = preset_and_flags(summary["config"])
    protocol = (summary.get("protocol") or {}).get("name") or note.get("protocol", "not recorded")
    short, long = machine_labels(machine_record(summary.get("machine"), note))
    human = human_score(env_id)
    target = summary["config"].get("target_score")
    first = human if human is not None else target if target and target != float("inf") else None
    returns = [e["mean_return"] for e in evals]
    return Run(
        folder=folder.relative_to(results).as_posix(),
        env_id=env_id, date=note.get("date", ""), what=note.get("what", ""), caveat=note.get("caveat", ""),
        preset=preset, flags=flags, run_flags=run_flags, protocol=protocol, machine=short, machine_long=long,
        precision=summary.get("precision_used") or summary["config"].get("precision", "?"),
        sps=summary.get("learning_sps") or summary.get("train_sps"),
        agent_steps=int(summary.get("agent_steps", evals[-1]["agent_steps"] if evals else 0)),
        first=first, to_first=crossing(evals, first), to_target=crossing(evals, TARGET) if human is not None else None,
        best=max(returns) if returns else summary.get("best_eval_mean_return"),
        final=returns[-1] if returns else summary.get("eval_mean_return"))


def collect(results: Path = RESULTS) -> list[Run]:
    """Every run under ``results`` (a folder with a summary.json), newest first, then by folder."""
    runs = [read_run(p.parent, results) for p in sorted(results.glob("**/summary.json")) if _is_run(p)]
    return sorted(runs, key=lambda r: (r.env_id, r.date, r.folder), reverse=True)


def _is_run(path: Path) -> bool:
    """Whether a summary.json is a training run's (bench/gpu_check.py writes one of its own)."""
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return False
    return isinstance(summary, dict) and "env_id" in summary and "config" in summary


def front_rows(runs: list[Run]) -> list[Run]:
    """README's view: for each game, preset, machine and precision, the best run of the preset as it
    is (no flag beyond seed and budget) and, when it ranks higher, the best run with flags."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.caveat:  # today's command would not repeat it
            continue
        groups.setdefault((run.env_id, run.preset, run.machine, run.precision), []).append(run)
    rows = []
    for members in groups.values():
        plain = sorted((r for r in members if not r.flags), key=Run.rank)
        best = sorted(members, key=Run.rank)[0]
        if plain:
            rows.append(plain[0])
        if not plain or best.rank() < plain[0].rank():
            rows.append(best)
    return sorted(rows, key=lambda r: (r.env_id, r.preset or "", r.rank()))


# --- markdown


def _num(x: float | None, digits: int = 1) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def _steps(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.0f}k" if n >= 1000 else str(n)


def _reached(run: Run, which: str) -> str:
    """"400k / 18.6" (agent steps / minutes at the first evaluation at or above the milestone),
    "not reached", or "" where the milestone does not apply; ``which`` is "first" (human level, or
    "500: ..." for a game scored against its target) or "target" (100, Atari only)."""
    if which == "target" and not run.has_human or which == "first" and run.first is None:
        return ""
    reached = run.to_target if which == "target" else run.to_first
    text = "not reached" if reached is None else f"{_steps(reached[0])} / {reached[1]:.1f}"
    return text if which == "target" or run.has_human else f"{run.first:g}: {text}"


def _command(run: Run) -> str:
    words = ([f"--preset {run.preset}"] if run.preset else []) + run.flags
    return "`" + " ".join(words) + "`" if words else ""


ARCHIVE_HEAD = """# Results archive

Every committed run, one row each, generated by `fastdqn results` from the runs' `summary.json`
and `note.md` (do not edit by hand). Runs are judged in agent steps first (one agent step = 4
frames on Atari), minutes second, on the machine named. "to human" and "to 100": agent steps /
minutes at the first evaluation whose mean is at least the human reference score (Breakout 30.5,
DQN Zoo's table) or 100; games without a human score show their preset's target score instead.
Evaluations are full games with real scores under the protocol named (v4: no sticky actions, up
to 30 no-op starts, 108k-frame games; [docs/evaluation.md](../evaluation.md)); minutes count from
the start of the run, evaluations included. "preset + flags" rebuilds the run on top of the preset
as it is today, with the seed and budget beside it; what each run tried: its folder's `note.md`.
What was tried on Breakout, what won and why: [breakout-cpu/TUNING.md](breakout-cpu/TUNING.md).
"""


def archive_markdown(runs: list[Run]) -> str:
    lines = [ARCHIVE_HEAD]
    for env_id in sorted({r.env_id for r in runs}):
        members = [r for r in runs if r.env_id == env_id]
        human = human_score(env_id)
        first = f"to human ({human:g})" if human is not None else "to target"
        lines += [f"## {env_id}", "",
                  f"| date | run | preset + flags | seed, budget, output | protocol | machine | precision | "
                  f"agent steps/s | {first} | to {TARGET:g} | best | final (agent steps) |",
                  "| --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in members:
            what = f"<br>{r.what}" if r.what else ""
            caveat = f"<br>*{r.caveat}*" if r.caveat else ""
            lines.append(
                f"| {r.date} | [{r.folder.split('/')[-1]}]({r.folder}/){what}{caveat} | {_command(r)} | "
                f"{' '.join(r.run_flags)} | {r.protocol} | {r.machine_long} | {r.precision} | {_num(r.sps)} | "
                f"{_reached(r, 'first')} | {_reached(r, 'target')} | {_num(r.best)} | "
                f"{_num(r.final)} ({_steps(r.agent_steps)}) |")
        lines.append("")
    return "\n".join(lines)


def front_markdown(runs: list[Run], link_prefix: str = "docs/results/") -> str:
    lines = ["| game | `fastdqn train` flags | machine, precision | to human level: agent steps / minutes | "
             "to 100 | best / final eval (at agent steps) | agent steps/s | run |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in front_rows(runs):
        lines.append(
            f"| {r.env_id.split('-')[0]} | {_command(r)} | {r.machine}, {r.precision} | {_reached(r, 'first')} | "
            f"{_reached(r, 'target')} | {_num(r.best)} / {_num(r.final)} ({_steps(r.agent_steps)}) | "
            f"{_num(r.sps, 0)} | [{r.date or r.folder.split('/')[-1]}]({link_prefix}{r.folder}/) |")
    return "\n".join(lines)


def performance_markdown(results: Path = RESULTS, link_prefix: str = "docs/results/") -> str:
    """One row per training benchmark file (`fastdqn bench train --json`): fastdqn against the plain
    and the CleanRL-style loops, each ratio from the same rounds of the same process."""
    lines = ["| machine | precision | update | fastdqn agent steps/s | plain loop | fastdqn / plain (rounds) | "
             "CleanRL-style loop | fastdqn / CleanRL-style (rounds) | file |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for path in sorted(results.glob("train-*.json")):
        b = json.loads(path.read_text())
        short, _ = machine_labels(b.get("machine"))
        flags = " ".join(f for f in (b.get("machine") or {}).get("cpu_flags", []) if "bf16" in f or f == "avx2")
        update = "CleanRL's (`--algorithm cleanrl`)" if b.get("algorithm") == "cleanrl" else "dueling double Q, PER, 3-step"
        lo, hi = b["speedup_range"]
        clo, chi = b["speedup_vs_cleanrl_range"]
        # running CleanRL's update, the plain loop (dueling double Q) is not the same algorithm
        plain = ("| |" if b.get("algorithm") == "cleanrl" else
                 f"{b['baseline_steps_per_s']:.1f} | **{b['speedup']:.2f}x** ({lo:.2f}-{hi:.2f}) |")
        lines.append(
            f"| {short}; flags {flags} | {b['precision_used']} | {update} | {b['fastdqn_steps_per_s']:.1f} | {plain} "
            f"{b['cleanrl_steps_per_s']:.1f} | **{b['speedup_vs_cleanrl']:.2f}x** ({clo:.2f}-{chi:.2f}) | "
            f"[{path.name}]({link_prefix}{path.name}) |")
    return "\n".join(lines)


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with what lies between <!-- name:begin --> and <!-- name:end --> replaced."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text)


def best_known(runs: list[Run], preset: str) -> list[Run]:
    """For `fastdqn presets`: the best run of the preset as it is and, when it ranks higher, the
    best run with flags on top of it, over every machine."""
    members = sorted((r for r in runs if r.preset == preset and not r.caveat), key=Run.rank)
    plain = [r for r in members if not r.flags][:1]
    return plain + [r for r in members[:1] if not plain or r.rank() < plain[0].rank()]


def replay_bytes(preset: str) -> int:
    """Replay memory of a preset: one stored observation (an Atari frame, not a stack) plus the
    small fields per transition, times its buffer size (about 7.1 KB x buffer_size on Atari)."""
    import envpool
    import numpy as np

    from fastdqn import config as config_lib
    from fastdqn.envs import is_atari

    cfg = config_lib.make_config(preset)
    if is_atari(cfg.env.env_id):
        frame = cfg.env.frame_size ** 2  # uint8 grey
    else:
        space = envpool.make_spec(cfg.env.env_id).observation_space
        frame = int(np.prod(space.shape)) * np.dtype(space.dtype).itemsize
    return cfg.buffer_size * (frame + BYTES_PER_TRANSITION_SMALL)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def describe_preset(name: str, runs: list[Run]) -> list[str]:
    """`fastdqn presets`' lines for one preset after its name: what it is for, its replay memory,
    and what committed runs of it reached, on which machine."""
    from fastdqn import config as config_lib

    purpose = getattr(config_lib, "PRESET_PURPOSE", {}).get(name, "")
    cfg = config_lib.make_config(name)
    lines = [f"for: {purpose}"] if purpose else []
    if cfg.algorithm in config_lib.ON_POLICY:  # no replay: T + 1 rows of whole observations per env
        rows = (cfg.rollout_steps + 1) * cfg.env.num_envs
        from fastdqn.envs import is_atari

        stack = cfg.env.stack_num if is_atari(cfg.env.env_id) else 1
        observation = replay_bytes(name) // cfg.buffer_size - BYTES_PER_TRANSITION_SMALL
        per_row = observation * stack + BYTES_PER_TRANSITION_SMALL
        lines.append(f"memory: no replay; a rollout of {cfg.rollout_steps} steps x {cfg.env.num_envs} envs, about "
                     f"{_size(rows * per_row)}")
    else:
        lines.append(f"memory: replay {cfg.buffer_size:,} transitions, about {_size(replay_bytes(name))}")
    known = best_known(runs, name)
    for r in known:
        how = "as it is" if not r.flags else "with " + " ".join(r.flags)
        milestones = [_milestone(r, "first"), _milestone(r, "target")]
        reached = "; ".join(m for m in milestones if m)
        lines.append(f"known to reach ({how}): {reached}; best {_num(r.best)}, final {_num(r.final)} at "
                     f"{_steps(r.agent_steps)} agent steps; {r.machine}, {r.precision}, {r.date} "
                     f"(docs/results/{r.folder})")
    if not known:
        lines.append("known to reach: no committed run yet")
    return lines


def _milestone(run: Run, which: str) -> str:
    """"human level (30.5) at 400k agent steps, minute 18.6", "100 not reached", or ""."""
    if which == "target" and not run.has_human or which == "first" and run.first is None:
        return ""
    score = TARGET if which == "target" else run.first
    name = f"human level ({score:g})" if which == "first" and run.has_human else f"{score:g}"
    reached = run.to_target if which == "target" else run.to_first
    if reached is None:
        return f"{name} not reached"
    return f"{name} at {_steps(reached[0])} agent steps, minute {reached[1]:.1f}"


def outputs(results: Path = RESULTS, readme: Path = README) -> dict[Path, str]:
    runs = collect(results)
    text = readme.read_text()
    text = replace_block(text, "results", front_markdown(runs))
    text = replace_block(text, "performance", performance_markdown(results))
    return {results / "README.md": archive_markdown(runs), readme: text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdqn results", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the runs' folder (default docs/results)")
    parser.add_argument("--readme", type=Path, default=README, help="the front page whose blocks are rewritten")


def run(args: argparse.Namespace) -> int:
    stale = []
    for path, content in outputs(args.results, args.readme).items():
        if path.exists() and path.read_text() == content:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(content)
    for path in stale:
        shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        print(f"{shown}: {'out of date (run `fastdqn results`)' if args.check else 'written'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
