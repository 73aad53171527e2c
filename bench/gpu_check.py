"""One command that verifies fastdqn's whole GPU path within one short loan of a GPU machine.

    python bench/gpu_check.py --out DIR               # default $OUT, else docs/results/gpu-<device>/
    python bench/gpu_check.py --out DIR --steps build-cuda,build-cpu,cuda-tests

From a bare checkout (no pip install): torch with CUDA, numpy, numba, tensorboard, psutil,
pytest, ninja and nvcc. envpool comes from the bundle folder (``--bundle``, default
<repo>/gpu-bundle, made by ``python -m bench.gpu_bundle`` on a machine with a network) when
it is not installed. Each step runs in its own process with its own timeout, and a failing
step does not stop the others. Steps of one group run at the same time (builds; the
correctness steps, none of which is timed); the timed benchmarks run alone, in turn:

  group build    environment  versions; nvcc's CUDA major version against torch's, in one line
                 build-cuda   the CUDA kernels, built for this GPU, compiler output in the log
                 build-cpu    their C++ twin
                 numba        the replay's Numba kernels compiled into their cache
  group correct  cuda-tests   the CUDA tests, with every CUDA skip counted as a failure
                 memcheck     compute-sanitizer memcheck of the CUDA kernel tests; a sanitizer
                              that cannot attach ("Device not supported") is a skip, said so
                 same-weights two short Breakout runs, host ring + serial updates / device ring + overlapped: equal weights
  timed          learner      fp32/bf16 x eager/graph and the CleanRL-style update, batch 32 and 256
                 train-device-ring  Breakout training, frames on the GPU: agent steps/s
                 gather       CUDA and C++ gathers identical to Numba past 4 GiB; samples/s
                 train-host-ring    the same training with the frames on the host

Everything a step writes (logs/<step>.log, each benchmark's JSON, junit XML) goes to a work
folder (--work, default a fresh temporary one). --out receives three files, rewritten after
every group, so that a run cut short still leaves what it did: summary.md, summary.json and
gpu-check-<device>.tar.gz (the whole work folder). All steps together get --max-minutes (8,
well under a 10-minute command limit, so that the last archive is always written); the plan
expects about 6.5 minutes. The last lines printed are a one-screen summary whose verdict says
which targets (docs/gpu.md) were met or missed. Exit status: 0 when every step passed (skipped
ones aside) and every target was met; 1 when a step failed; 3 when all were correct but a
target was missed; 2 at once on a machine without a CUDA GPU.
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = "no CUDA GPU: nothing verified"
CUDA_TESTS = ["tests/test_learner_cuda.py", "tests/test_native.py", "tests/test_replay_device.py"]
LEARNER_MODES = ("fp32-eager", "fp32-graph", "bf16-eager", "bf16-graph")
TARGETS = {"graph_over_eager_b32": 5.0, "device_ring_steps_per_s": 5_000.0}  # issue 17, docs/gpu.md
PLANNED_S = 7 * 60  # what the default steps are expected to take together (their expect_s)
MAX_MINUTES = 8.0
# compute-sanitizer's answer where it cannot attach to the GPU (some GPUs, MIG slices, VMs)
SANITIZER_CANNOT_ATTACH = r"[Dd]evice (is )?not supported"


@dataclass
class Step:
    name: str
    what: str
    command: list[str]
    timeout_s: float
    needs: tuple[str, ...] = ()  # modules that must import, else the step fails: "envpool missing"
    skip: str | None = None  # why the step cannot run here (a missing tool): skipped, not failed
    check: Callable[[Path], str | None] | None = None  # after exit 0: why it failed, or None
    env: dict = field(default_factory=dict)
    group: str = ""  # consecutive steps of one group run at the same time
    expect_s: float = 0.0  # the plan's estimate (docs/gpu.md), for PLANNED_S
    skip_when: tuple[tuple[str, str], ...] = ()  # (regex in the output of a failing run, why): skipped


def run_step(step: Step, out: Path) -> dict:
    """Run one step (its output into logs/<name>.log); returns its result for the summary."""
    result = {"name": step.name, "what": step.what, "status": "failed", "seconds": 0.0, "reason": "",
              "log": f"logs/{step.name}.log", "command": " ".join(step.command)}
    missing = [m for m in step.needs if importlib.util.find_spec(m) is None]
    if missing:
        return {**result, "reason": ", ".join(missing) + " missing"}
    if step.skip:
        return {**result, "status": "skipped", "reason": step.skip}
    log = out / result["log"]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {result['command']}\n")
        f.flush()
        # A session of its own, so that a timeout kills the step's children too.
        proc = subprocess.Popen(step.command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **step.env})
        try:
            code = proc.wait(timeout=step.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    result["seconds"] = round(time.perf_counter() - start, 1)
    if step.skip_when and code != 0:  # (a step that passed is never turned into a skip)
        text = log.read_text(errors="replace")
        why = next((why for pattern, why in step.skip_when if re.search(pattern, text)), None)
        if why:
            return {**result, "status": "skipped", "reason": why}
    if code is None:
        return {**result, "reason": f"timed out after {step.timeout_s:g} s"}
    if code != 0:
        return {**result, "reason": f"exit status {code}: {_last_line(log)}"}
    reason = step.check(out) if step.check else None
    return {**result, "status": "failed" if reason else "passed", "reason": reason or ""}


def groups(steps: list[Step]) -> list[list[Step]]:
    """Consecutive steps of one (non-empty) group together; every other step alone."""
    out: list[list[Step]] = []
    for step in steps:
        if out and step.group and out[-1][0].group == step.group:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def planned_s(steps: list[Step]) -> float:
    """The plan's estimate of a run: each group takes as long as its longest step."""
    return sum(max(s.expect_s for s in group) for group in groups(steps))


def clear_build_locks(extensions_dir: str | None) -> list[Path]:
    """Remove torch's build locks under ``extensions_dir``: called when no step runs, so any
    lock there was left by a build that a timeout (or an earlier run's end) killed, and
    every later step that loads the kernels would wait on it until its own timeout."""
    locks = sorted(Path(extensions_dir).glob("*/lock")) if extensions_dir else []
    for lock in locks:
        lock.unlink(missing_ok=True)
    return locks


def run_steps(steps: list[Step], work: Path, info: dict, budget_s: float | None = None, show=print,
              out: Path | None = None) -> dict:
    """Every step, whatever the others did, a group's steps at the same time; the summary (and,
    with ``out``, the summary and the archive there) is rewritten after each group. With a
    budget, a step gets at most the time left, and none is started with less than 10 s."""
    work.mkdir(parents=True, exist_ok=True)
    summary = {"verdict": "running", **info, "steps": []}
    start = time.perf_counter()
    n, done = len(steps), 0
    for group in groups(steps):
        left = math.inf if budget_s is None else budget_s - (time.perf_counter() - start)
        runs = []
        for i, step in enumerate(group, done + 1):
            show(f"[{i}/{n}] {step.name}: {step.what} ...")
            if left < 10:
                runs.append({"name": step.name, "what": step.what, "status": "failed", "seconds": 0.0, "log": "",
                             "command": " ".join(step.command),
                             "reason": "not run: the time budget (--max-minutes) is spent"})
            else:
                timeout_s = step.timeout_s if left >= step.timeout_s else int(left)
                runs.append(dataclasses.replace(step, timeout_s=timeout_s))
        with ThreadPoolExecutor(max_workers=len(group)) as pool:
            results = list(pool.map(lambda r: run_step(r, work) if isinstance(r, Step) else r, runs))
        for i, (step, result) in enumerate(zip(group, results), done + 1):
            summary["steps"].append(result)
            show(f"[{i}/{n}] {step.name}: {result['status']} in {result['seconds']:.1f} s"
                 + (f" ({result['reason']})" if result["reason"] else ""))
        done += len(group)
        if any(r["reason"].startswith("timed out") for r in results):
            for lock in clear_build_locks(os.environ.get("TORCH_EXTENSIONS_DIR")):
                show(f"removed {lock}, left by a build that was stopped")
        summary["wall_s"] = round(time.perf_counter() - start, 1)
        write_summary(summary, work, out)
    summary["figures"] = figures(work)
    summary["targets"] = targets(summary["figures"], {s.name for s in steps})
    summary["verdict"] = verdict(summary)
    write_summary(summary, work, out)
    return summary


def verdict(summary: dict) -> str:
    """failed (a step failed), targets missed (all correct, a target missed or not measured),
    or passed."""
    if any(r["status"] == "failed" for r in summary["steps"]):
        return "failed"
    if any(t["state"] != "met" for t in summary.get("targets", [])):
        return "targets missed"
    return "passed"


def verdict_line(summary: dict) -> str:
    """One line: the verdict, what failed or was skipped and why, and each target met or missed."""
    counts = {k: sum(r["status"] == k for r in summary["steps"]) for k in ("passed", "failed", "skipped")}
    parts = [f"{counts['passed']} steps passed"]
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed ({', '.join(r['name'] for r in summary['steps'] if r['status'] == 'failed')})")
    skipped = [f"{r['name']}: {r['reason']}" for r in summary["steps"] if r["status"] == "skipped"]
    if skipped:
        parts.append(f"{len(skipped)} skipped ({'; '.join(skipped)})")
    marks = [f"{t['target']}: {t['state']}" + (f" ({_show(t['value'])})" if t["value"] is not None else "")
             for t in summary.get("targets", [])]
    return (f"VERDICT: {summary['verdict'].upper()}: " + ", ".join(parts)
            + ("; targets: " + "; ".join(marks) if marks else ""))


def write_summary(summary: dict, work: Path, out: Path | None = None) -> None:
    text = json.dumps(summary, indent=2) + "\n"
    lines = [f"# GPU check: {summary['verdict'].upper()}", "",
             f"{summary.get('device', '?')}, {summary.get('started', '')}, {summary.get('wall_s', 0):.0f} s in all; "
             f"`{summary.get('command', '')}`", "",
             "| step | result | seconds | what | why |", "| --- | --- | ---: | --- | --- |"]
    for r in summary["steps"]:
        why = r["reason"].replace("|", "/")
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | {r['what']} | {why} |")
    figs = summary.get("figures") or {}
    if figs:
        lines += ["", "## Figures", ""] + [f"- {name}: {_show(value)}" for name, value in figs.items()]
    if summary.get("targets"):
        lines += ["", verdict_line(summary)]
    lines += ["", "Each step's output: `logs/<step>.log`; benchmarks: `*.json`; pytest: `junit-*.xml` "
              "(in the archive, gpu-check-<device>.tar.gz)."]
    for folder in (work, out) if out else (work,):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(text)
        (folder / "summary.md").write_text("\n".join(lines) + "\n")
    if out:
        archive(work, out / f"gpu-check-{slug(summary.get('device', 'gpu'))}.tar.gz")


def archive(work: Path, path: Path) -> None:
    """The whole work folder as one .tar.gz, written beside and then renamed over the last one."""
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(work, arcname=path.name.removesuffix(".tar.gz"))
    partial.replace(path)


def print_summary(summary: dict, out: Path, show=print) -> None:
    """The end of the run on one screen: each step, the headline figures, the verdict."""
    show("")
    show(f"GPU check on {summary.get('device', '?')}: {summary.get('wall_s', 0) / 60:.1f} min")
    for r in summary["steps"]:
        show(f"  {r['name']:18s} {r['status']:8s} {r['seconds']:6.1f} s  {r['reason'][:90]}")
    for name, value in (summary.get("figures") or {}).items():
        show(f"  {name}: {_show(value)}"[:160])
    show(verdict_line(summary))
    show(f"results: {out}")


def _show(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------- checks of the outputs

def check_junit(name: str) -> Callable[[Path], str | None]:
    def check(out: Path) -> str | None:
        counts = junit_counts(out / name)
        if counts is None:
            return f"{name} is missing"
        if counts["tests"] == 0:
            return "no test ran"
        return None
    return check


def junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    return {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}


def check_gather(out: Path) -> str | None:
    result = _load(out / "gather.json")
    if result is None:
        return "gather.json is missing"
    if not result.get("native_cuda"):
        return "the CUDA gather did not run"
    problems = []
    for row in result["rows"]:
        for kernel in ("cuda_gather", "cpp"):
            if row["identical_to_numba"].get(kernel) is not True:
                problems.append(f"{kernel} differs from Numba at batch {row['batch_size']}")
        if row.get("checked_up_to_byte", 0) <= 2**32:
            problems.append(f"batch {row['batch_size']} checked only {row.get('checked_up_to_byte', 0):,} bytes")
    return "; ".join(problems) or None


def check_learner(out: Path) -> str | None:
    result = _load(out / "learner.json")
    if result is None:
        return "learner.json is missing"
    measured = {(r["batch_size"], r["mode"]) for r in result["results"] if r["updates_per_s"] > 0}
    missing = [f"{mode} b{b}" for b in (32, 256) for mode in LEARNER_MODES if (b, mode) not in measured]
    return "not measured: " + ", ".join(missing) if missing else None


def check_train(name: str) -> Callable[[Path], str | None]:
    def check(out: Path) -> str | None:
        result = _load(out / name)
        if result is None:
            return f"{name} is missing"
        return None if result.get("fastdqn_steps_per_s", 0) > 0 else "no agent steps/s measured"
    return check


def figures(out: Path) -> dict:
    """The headline figures of the benchmarks that ran."""
    from fastdqn.hardware import CUDA_BF16_MIN_BATCH

    figs = {}
    learner = _load(out / "learner.json")
    if learner:
        ups = {(r["batch_size"], r["mode"]): r["updates_per_s"] for r in learner["results"]}
        for b in (32, 256):
            figs[f"learner updates/s, batch {b}"] = {m: ups[(b, m)] for m in (*LEARNER_MODES, "cleanrl")
                                                     if (b, m) in ups}
            for p in ("fp32", "bf16"):
                if ups.get((b, f"{p}-eager")) and (b, f"{p}-graph") in ups:
                    figs[f"graph / eager, {p}, batch {b}"] = round(ups[(b, f"{p}-graph")] / ups[(b, f"{p}-eager")], 2)
            fp32, bf16 = ups.get((b, "fp32-graph")), ups.get((b, "bf16-graph"))
            if fp32 and bf16:  # does --precision auto's rule (fastdqn/hardware.py) pick the faster graph?
                rule = "fp32" if b < CUDA_BF16_MIN_BATCH else "bf16"
                faster, ratio = ("fp32", fp32 / bf16) if fp32 >= bf16 else ("bf16", bf16 / fp32)
                figs[f"precision auto at batch {b} picks {rule}"] = (
                    f"{'right' if rule == faster else 'WRONG'}: {faster} graph {ratio:.2f}x faster")
    for ring in ("host", "device"):
        train = _load(out / f"train-{ring}-ring.json")
        if train:
            figs[f"training, frames on the {ring}: agent steps/s"] = train["fastdqn_steps_per_s"]
    gather = _load(out / "gather.json")
    if gather:
        for row in gather["rows"]:
            figs[f"gather samples/s, batch {row['batch_size']}"] = {
                k: row[k]["samples_per_s"] for k in ("numba", "cpp", "cuda_gather", "host_gather_copy") if k in row}
    same = _load(out / "same-weights.json")
    if same:
        figs["host ring + serial vs device ring + overlapped, final weights"] = "identical" if same["identical"] else "DIFFERENT"
    return figs


def targets(figs: dict, ran: set[str]) -> list[dict]:
    """docs/gpu.md's targets whose step ran (``ran``: step names) against the figures: met,
    MISSED or not measured. The graph's is judged in fp32, what --precision auto runs at batch 32."""
    graph, steps_per_s = TARGETS["graph_over_eager_b32"], TARGETS["device_ring_steps_per_s"]
    rows = [("learner", f"graph >= {graph:g}x eager at batch 32 (fp32)", figs.get("graph / eager, fp32, batch 32"),
             graph),
            ("train-device-ring", f">= {steps_per_s:,.0f} agent steps/s with the device ring",
             figs.get("training, frames on the device: agent steps/s"), steps_per_s)]
    return [{"target": name, "value": value, "threshold": threshold,
             "state": "not measured" if value is None else "met" if value >= threshold else "MISSED"}
            for step, name, value, threshold in rows if step in ran]


# ------------------------------------------------------------------------------ steps

def steps(out: Path, python: str = sys.executable) -> list[Step]:
    """The check's steps in order, writing into the work folder ``out``; expect_s are the
    plan's estimates on an H100 / H200 with 16 cores (docs/gpu.md), timeout_s their limits."""
    def inner(name):
        return [python, "-m", "bench.gpu_check", "--inner", name, "--out", str(out)]

    def pytest(junit, *args):
        return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "--require-cuda",
                f"--junitxml={out / junit}", *args]

    def train(ring, device):
        return [python, "-m", "bench.train", "--device", "cuda", "--replay-device", device, "--rounds", "1",
                "--measure-steps", "30000", "--no-progress", "--json", str(out / f"train-{ring}-ring.json")]

    sanitizer = find_tool("compute-sanitizer")
    require = {"FASTDQN_REQUIRE_CUDA": "1"}
    return [
        Step("environment", "versions of everything the GPU path uses; nvcc against torch's CUDA",
             inner("environment"), 60, group="build", expect_s=10),
        Step("build-cuda", "build the CUDA kernels for this GPU (fails loudly)", inner("build-cuda"), 240,
             group="build", expect_s=90),
        Step("build-cpu", "build their C++ twin (fails loudly)", inner("build-cpu"), 240, group="build",
             expect_s=60),
        Step("numba", "compile the replay's Numba kernels into their cache", inner("numba"), 180,
             group="build", expect_s=45),
        Step("cuda-tests", "CUDA tests, skips count as failures", pytest("junit-cuda-tests.xml", *CUDA_TESTS), 240,
             needs=("pytest",), check=check_junit("junit-cuda-tests.xml"), env=require, group="correct",
             expect_s=90),
        Step("memcheck", "compute-sanitizer memcheck of the CUDA kernel tests",
             [sanitizer or "compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1", "--report-api-errors",
              "no", *pytest("junit-memcheck.xml", "tests/test_native.py", "-k", "cuda and not nvcc")], 240,
             needs=("pytest",), skip=None if sanitizer else "compute-sanitizer not found",
             check=check_junit("junit-memcheck.xml"),
             # every tensor its own allocation, so that a read past one is caught
             env={**require, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, group="correct", expect_s=75,
             skip_when=((SANITIZER_CANNOT_ATTACH, 'compute-sanitizer cannot attach to this GPU ("Device not '
                                                  'supported"): memory accesses not checked'),)),
        Step("same-weights", "Breakout, host ring + serial vs device ring + overlapped updates: identical weights",
             inner("same-weights"), 180, needs=("envpool",), env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
             group="correct", expect_s=60),
        Step("learner", "updates/s: fp32/bf16 x eager/graph, CleanRL-style, batch 32 and 256",
             [python, "-m", "bench.learner", "--device", "cuda", "--batch-sizes", "32,256", "--seconds", "1.5",
              "--rounds", "2", "--modes", ",".join((*LEARNER_MODES, "cleanrl")), "--json", str(out / "learner.json")],
             150, check=check_learner, expect_s=50),
        Step("train-device-ring", "Breakout training on the GPU, frames on the GPU: agent steps/s",
             train("device", "cuda"), 150, needs=("envpool",), check=check_train("train-device-ring.json"),
             expect_s=60),
        Step("gather", "gather at 1M frames identical to Numba past 4 GiB; samples/s",
             [python, "-m", "bench.gather", "--no-progress", "--seconds", "2", "--rounds", "2",
              "--json", str(out / "gather.json")], 120, check=check_gather, expect_s=40),
        Step("train-host-ring", "Breakout training on the GPU, frames on the host: agent steps/s",
             train("host", "numpy"), 150, needs=("envpool",), check=check_train("train-host-ring.json"),
             expect_s=60),
    ]


def find_tool(name: str) -> str | None:
    """`name` on PATH or in the CUDA toolkit's bin/."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates = [shutil.which(name)] + [str(Path(h, "bin", name)) for h in homes if h]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


# ------------------------------------------------- steps that run in a process of their own

def environment(out: Path) -> int:
    import torch
    from torch.utils import cpp_extension

    from fastdqn.hardware import cpu_info

    props = torch.cuda.get_device_properties(0)
    modules = {}
    for name in ("numpy", "numba", "envpool", "tensorboard", "psutil", "pytest", "ninja"):
        try:
            module = __import__(name)
            where = Path(module.__file__).parent.parent if getattr(module, "__file__", None) else "?"
            modules[name] = f"{getattr(module, '__version__', '?')} ({where})"
        except ImportError:
            modules[name] = None
    nvcc = _output([str(Path(cpp_extension.CUDA_HOME or "", "bin", "nvcc")), "--version"], last=False, whole=True)
    cuda_ok, cuda_line = cuda_versions(nvcc, torch.version.cuda)
    info = {
        "python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "gpu": props.name, "capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1), "gpus": torch.cuda.device_count(),
        "driver": _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "cuda_home": cpp_extension.CUDA_HOME, "nvcc": nvcc.splitlines()[-1] if nvcc else None,
        "nvcc_vs_torch": cuda_line, "ninja": cpp_extension.is_ninja_available(),
        "cxx": shutil.which(os.environ.get("CXX", "c++")), "compute_sanitizer": find_tool("compute-sanitizer"),
        "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR"), "cpu": cpu_info(), "modules": modules,
    }
    (out / "environment.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    print(cuda_line)
    missing = [name for name, ok in (("ninja", info["ninja"]), ("a C++ compiler", info["cxx"]),
                                     ("envpool", modules["envpool"]), ("pytest", modules["pytest"])) if not ok]
    if missing:
        print("missing: " + ", ".join(missing))
    return 1 if missing or not cuda_ok else 0


def cuda_versions(nvcc_version: str | None, torch_cuda: str | None) -> tuple[bool, str]:
    """(whether nvcc can build extensions for this torch, one line saying so): torch refuses
    to build with an nvcc whose major CUDA version differs from the one it was built with."""
    if torch_cuda is None:
        return False, "torch is a CPU build (torch.version.cuda is None): no CUDA kernels"
    match = re.search(r"release (\d+)\.(\d+)", nvcc_version or "")
    if match is None:
        return False, f"nvcc not found (CUDA_HOME or PATH): the CUDA kernels cannot be built for torch's CUDA {torch_cuda}"
    nvcc = f"{match[1]}.{match[2]}"
    if match[1] != torch_cuda.split(".")[0]:
        return False, (f"nvcc {nvcc} against torch built with CUDA {torch_cuda}: major versions differ, the kernels will "
                       f"not build (put a CUDA {torch_cuda.split('.')[0]} nvcc first: CUDA_HOME or PATH)")
    return True, f"nvcc {nvcc} and torch's CUDA {torch_cuda}: same major version"


def _output(command: list[str], last: bool = False, whole: bool = False) -> str | None:
    try:
        text = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    lines = text.splitlines()
    if whole:
        return text or None
    return (lines[-1] if last else lines[0]) if lines else None


def build(kind: str) -> int:
    """Build one kind of native kernels ("cuda" or "cpu"), the compiler's output in the log."""
    from torch.utils import cpp_extension

    from fastdqn.replay import native

    # native.py builds through cpp_extension.load: verbose, the compiler's output lands in this log.
    cpp_extension.load = functools.partial(cpp_extension.load, verbose=True)
    start = time.perf_counter()
    module = native.cuda_gather() if kind == "cuda" else native.cpu_gather()
    if module is None:
        print(f"FAILED: the native {kind} kernels did not build: {native.unavailable_reason(kind)}")
        return 1
    print(f"built the native {kind} kernels in {time.perf_counter() - start:.1f} s: {module.__file__}")
    return 0


def warm_numba(out: Path) -> int:
    """Compile the replay's Numba kernels (cache=True) for Atari frames and vectors, so that
    the steps after this one load them from the cache instead of each compiling them."""
    import numpy as np

    from fastdqn.replay import PrioritizedReplay

    start = time.perf_counter()
    for shape, dtype in (((84, 84), np.uint8), ((4,), np.float32)):
        stack = 4 if len(shape) == 2 else 1
        rb = PrioritizedReplay(capacity=2 * 64, num_envs=2, obs_shape=shape, stack=stack, n_step=3, obs_dtype=dtype)
        for t in range(40):
            first = np.full(2, t == 0)
            rb.add(obs=np.zeros((2, stack, *shape) if stack > 1 else (2, *shape), dtype), actions=np.zeros(2, np.int64),
                   rewards=np.ones(2, np.float32), terminated=np.zeros(2, bool), truncated=np.zeros(2, bool),
                   reset_step=first, new_game=first)
        batch = rb.sample(8, 0.4)
        rb.update_priorities(batch.indices, np.ones(8))
    print(f"compiled the Numba kernels in {time.perf_counter() - start:.1f} s")
    return 0


def same_weights(out: Path) -> int:
    """Two short Breakout runs on the GPU from the same seeds, with deterministic kernels: frames
    on the host with serial updates, and frames on the GPU with overlapped ones (the next group
    sampled while the GPU runs the last). The final networks must be bit for bit the same: the
    replay samples the same bytes either way (tests/test_replay_device.py checks that), and with
    uniform replay (--per-alpha 0) writing the priorities one group late changes no update."""
    import torch

    # Deterministic convolutions; cuBLAS is made so by CUBLAS_WORKSPACE_CONFIG (the step's
    # environment). Not torch.use_deterministic_algorithms: some of its replacements sync
    # with the host, which a CUDA graph capture refuses.
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    from fastdqn import checkpoint
    from fastdqn.config import make_config
    from fastdqn.train import train

    weights, report = {}, {"runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for ring, overlap in (("numpy", "off"), ("cuda", "on")):
            cfg = make_config(env=dict(env_id="Breakout-v5", num_envs=8), run_dir=f"{tmp}/{ring}", device="cuda",
                              replay_device=ring, overlap_updates=overlap, per_alpha=0.0, total_steps=6_000, buffer_size=10_000, learning_starts=1_000,
                              target_update_period=200, eval_interval=0, final_eval=False, checkpoint_interval=0,
                              save_replay="never", log_interval=10**9)
            start = time.perf_counter()
            summary = train(cfg, progress=False)
            weights[ring] = checkpoint.load(Path(tmp, ring, "checkpoint.pt"))["learner"]["q_network"]
            report["runs"][ring] = {"overlap_updates": overlap, "updates": summary["updates"], "precision": summary["precision_used"],
                                    "seconds": round(time.perf_counter() - start, 1)}
    host, device = weights["numpy"], weights["cuda"]
    differ = {name: float((host[name].float() - device[name].float()).abs().max())
              for name in host if not torch.equal(host[name], device[name])}
    report.update(identical=not differ, differing_tensors_max_abs=differ)
    (out / "same-weights.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if not differ else 1


INNER = {"environment": environment, "build-cuda": lambda out: build("cuda"), "build-cpu": lambda out: build("cpu"),
         "numba": warm_numba, "same-weights": same_weights}


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': the default results folder's suffix."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def use_bundle(bundle: Path | None) -> str:
    """Put the envpool bundle (bench/gpu_bundle.py) on the path of this process and of every
    step, where envpool is not installed; returns one line on where envpool comes from."""
    if importlib.util.find_spec("envpool") is not None:
        return f"envpool: installed ({Path(importlib.util.find_spec('envpool').origin).parent})"
    if bundle is None or not (bundle / "envpool").is_dir():
        return (f"envpool: MISSING, and no bundle at {bundle}: make one with `python -m bench.gpu_bundle --out "
                "gpu-bundle` where there is a network (the training steps fail without it)")
    sys.path.insert(0, str(bundle))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(bundle), os.environ.get("PYTHONPATH")) if p)
    python = (_load(bundle / "BUNDLE.json") or {}).get("python")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    mismatch = f"; it was made for Python {python}, this is {here}: its native modules will not load" \
        if python and python != here else ""
    return f"envpool: from the bundle {bundle}{mismatch}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where summary.md, summary.json and the archive go "
                                                 "(default $OUT if set, else docs/results/gpu-<device>/)")
    parser.add_argument("--work", type=Path, help="where the steps write (default: a new folder in the temp dir)")
    parser.add_argument("--steps", help="comma-separated subset of the steps, in their order (default: all)")
    parser.add_argument("--max-minutes", type=float, default=MAX_MINUTES,
                        help=f"time budget of all steps together: each gets at most what is left (default "
                             f"{MAX_MINUTES:g}; the archive is written after it)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "gpu-bundle",
                        help="envpool bundle to use where envpool is not installed (default <repo>/gpu-bundle)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "fastdqn-gpu-check",
                        help="kept between runs: the kernels' builds (TORCH_EXTENSIONS_DIR)")
    parser.add_argument("--inner", choices=sorted(INNER), help=argparse.SUPPRESS)  # a step's own process
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    if args.inner:
        return INNER[args.inner](args.out.resolve())
    device = torch.cuda.get_device_name(0)
    default_out = os.environ.get("OUT") or ROOT / "docs" / "results" / f"gpu-{slug(device)}"
    out = Path(args.out or default_out).resolve()
    work = (args.work or Path(tempfile.gettempdir(), f"fastdqn-gpu-check-{time.strftime('%Y%m%d-%H%M%S')}-"
                                                     f"{os.getpid()}")).resolve()  # made by run_steps
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(args.cache / "torch_extensions"))
    Path(os.environ["TORCH_EXTENSIONS_DIR"]).mkdir(parents=True, exist_ok=True)
    stale = clear_build_locks(os.environ["TORCH_EXTENSIONS_DIR"])  # no step runs yet: left by a killed run
    envpool_line = use_bundle(args.bundle)
    selected = steps(work)
    if args.steps:
        wanted = args.steps.split(",")
        unknown = sorted(set(wanted) - {s.name for s in selected})
        if unknown:
            parser.error(f"unknown steps {unknown}; the steps: {', '.join(s.name for s in selected)}")
        selected = [s for s in selected if s.name in wanted]
    info = {"device": device, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["python bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "envpool": envpool_line, "max_minutes": args.max_minutes, "planned_s": planned_s(selected)}
    print(f"GPU check on {device}: {len(selected)} steps in {len(groups(selected))} groups, planned "
          f"{planned_s(selected) / 60:.1f} min (budget {args.max_minutes:g}); work in {work}, results to {out}")
    print(envpool_line)
    for lock in stale:
        print(f"removed {lock}, left by a build that was stopped")
    summary = run_steps(selected, work, info, budget_s=60 * args.max_minutes if args.max_minutes else None, out=out)
    print_summary(summary, out)
    return {"passed": 0, "targets missed": 3}.get(summary["verdict"], 1)


if __name__ == "__main__":
    sys.exit(main())
