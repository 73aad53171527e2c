"""One command that verifies fastdqn's whole GPU path and writes a results folder.

    python bench/gpu_check.py                          # -> docs/results/gpu-<device>/
    python bench/gpu_check.py --out DIR --steps build,cuda-tests

From a bare checkout (no pip install): torch with CUDA, numpy, numba, tensorboard, psutil,
pytest, ninja and nvcc; envpool for the training steps (without it they fail, saying so).
Each step runs in its own process with its own timeout, and a failing step does not stop
the ones after it (see STEPS; docs/gpu.md says what each verifies and what to expect):

  environment         versions: python, torch, CUDA, cuDNN, driver, nvcc, GPU, numba, envpool
  build               the native kernels (CUDA, and the C++ twin) built explicitly, compiler output in the log
  cuda-tests          the CUDA tests, with every CUDA skip counted as a failure (--require-cuda)
  gather              bench/gather.py at 1M frames: CUDA and C++ gathers identical to Numba past 4 GiB
  learner             bench/learner.py: fp32/bf16 x eager/graph and the CleanRL-style update, batch 32 and 256
  same-weights        two short Breakout runs, frames on the host / on the GPU, deterministic: equal weights
  train-host-ring     bench/train.py on the GPU, frames on the host: agent steps/s
  train-device-ring   the same with the frames on the GPU
  memcheck            compute-sanitizer memcheck of the CUDA kernel tests (skipped without the tool)

Writes summary.json and summary.md (pass / fail and seconds per step, the figures against
their targets), logs/<step>.log, the JSON of every benchmark and junit XML of the pytest
steps; the summary is rewritten after each step. All steps together get --max-minutes (10);
a step that would start with less than 10 s left fails as not run. Exit status: 0 when every
step passed (skipped ones aside), 1 when one failed, 2 at once on a machine without a CUDA GPU.
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
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = "no CUDA GPU: nothing verified"
CUDA_TESTS = ["tests/test_learner_cuda.py", "tests/test_native.py", "tests/test_replay_device.py"]
LEARNER_MODES = ("fp32-eager", "fp32-graph", "bf16-eager", "bf16-graph")
TARGETS = {"graph_over_eager_b32": 5.0, "device_ring_steps_per_s": 5_000.0}  # issue 17


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
    if code is None:
        return {**result, "reason": f"timed out after {step.timeout_s:g} s"}
    if code != 0:
        return {**result, "reason": f"exit status {code}: {_last_line(log)}"}
    reason = step.check(out) if step.check else None
    return {**result, "status": "failed" if reason else "passed", "reason": reason or ""}


def run_steps(steps: list[Step], out: Path, info: dict, budget_s: float | None = None, show=print) -> dict:
    """Every step in order, whatever the others did; the summary is rewritten after each.
    With a budget, a step gets at most the time left, and none is started without 10 s."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"verdict": "running", **info, "steps": []}
    start = time.perf_counter()
    for i, step in enumerate(steps, 1):
        show(f"[{i}/{len(steps)}] {step.name}: {step.what} ...")
        left = math.inf if budget_s is None else budget_s - (time.perf_counter() - start)
        if left < 10:
            result = {"name": step.name, "what": step.what, "status": "failed", "seconds": 0.0, "log": "",
                      "command": " ".join(step.command), "reason": "not run: the time budget (--max-minutes) is spent"}
        else:
            timeout_s = step.timeout_s if left >= step.timeout_s else int(left)
            result = run_step(dataclasses.replace(step, timeout_s=timeout_s), out)
        summary["steps"].append(result)
        show(f"[{i}/{len(steps)}] {step.name}: {result['status']} in {result['seconds']:.1f} s"
             + (f" ({result['reason']})" if result["reason"] else ""))
        summary["wall_s"] = round(time.perf_counter() - start, 1)
        write_summary(summary, out)
    failed = [r["name"] for r in summary["steps"] if r["status"] == "failed"]
    summary["verdict"] = "failed" if failed else "passed"
    summary["figures"] = figures(out)
    write_summary(summary, out)
    return summary


def write_summary(summary: dict, out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
    lines += ["", "Each step's output: `logs/<step>.log`; benchmarks: `*.json`; pytest: `junit-*.xml`."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _show(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
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
    """The headline figures of the benchmarks that ran, and whether they meet the targets."""
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
        for p in ("fp32", "bf16"):
            ratio = figs.get(f"graph / eager, {p}, batch 32")
            if ratio is not None:
                figs[f"target: graph >= {TARGETS['graph_over_eager_b32']:g}x eager at batch 32, {p}"] = (
                    "met" if ratio >= TARGETS["graph_over_eager_b32"] else "NOT met")
    for ring in ("host", "device"):
        train = _load(out / f"train-{ring}-ring.json")
        if train:
            figs[f"training, frames on the {ring}: agent steps/s"] = train["fastdqn_steps_per_s"]
    device_sps = figs.get("training, frames on the device: agent steps/s")
    if device_sps is not None:
        figs[f"target: >= {TARGETS['device_ring_steps_per_s']:,.0f} agent steps/s with the device ring"] = (
            "met" if device_sps >= TARGETS["device_ring_steps_per_s"] else "NOT met")
    gather = _load(out / "gather.json")
    if gather:
        for row in gather["rows"]:
            figs[f"gather samples/s, batch {row['batch_size']}"] = {
                k: row[k]["samples_per_s"] for k in ("numba", "cpp", "cuda_gather", "host_gather_copy") if k in row}
    same = _load(out / "same-weights.json")
    if same:
        figs["host ring vs device ring, final weights"] = "identical" if same["identical"] else "DIFFERENT"
    return figs


# ------------------------------------------------------------------------------ steps

def steps(out: Path, python: str = sys.executable) -> list[Step]:
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
        Step("environment", "versions of everything the GPU path uses", inner("environment"), 60),
        Step("build", "build the native CUDA and C++ kernels (fails loudly)", inner("build"), 300),
        Step("cuda-tests", "CUDA tests, skips count as failures", pytest("junit-cuda-tests.xml", *CUDA_TESTS), 300,
             needs=("pytest",), check=check_junit("junit-cuda-tests.xml"), env=require),
        Step("gather", "gather at 1M frames identical to Numba past 4 GiB; samples/s",
             [python, "-m", "bench.gather", "--no-progress", "--seconds", "2", "--rounds", "2",
              "--json", str(out / "gather.json")], 180, check=check_gather),
        Step("learner", "updates/s: fp32/bf16 x eager/graph, CleanRL-style, batch 32 and 256",
             [python, "-m", "bench.learner", "--device", "cuda", "--batch-sizes", "32,256", "--seconds", "3",
              "--rounds", "2", "--modes", ",".join((*LEARNER_MODES, "cleanrl")), "--json", str(out / "learner.json")],
             240, check=check_learner),
        Step("same-weights", "Breakout, host ring vs device ring, deterministic: identical weights",
             inner("same-weights"), 180, needs=("envpool",), env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}),
        Step("train-host-ring", "Breakout training on the GPU, frames on the host: agent steps/s",
             train("host", "numpy"), 180, needs=("envpool",), check=check_train("train-host-ring.json")),
        Step("train-device-ring", "Breakout training on the GPU, frames on the GPU: agent steps/s",
             train("device", "cuda"), 180, needs=("envpool",), check=check_train("train-device-ring.json")),
        Step("memcheck", "compute-sanitizer memcheck of the CUDA kernel tests",
             [sanitizer or "compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1", "--report-api-errors",
              "no", *pytest("junit-memcheck.xml", "tests/test_native.py", "-k", "cuda and not nvcc")], 240,
             needs=("pytest",), skip=None if sanitizer else "compute-sanitizer not found",
             check=check_junit("junit-memcheck.xml"),
             # every tensor its own allocation, so that a read past one is caught
             env={**require, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}),
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
            modules[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            modules[name] = None
    info = {
        "python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "gpu": props.name, "capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1), "gpus": torch.cuda.device_count(),
        "driver": _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "cuda_home": cpp_extension.CUDA_HOME, "nvcc": _output([str(Path(cpp_extension.CUDA_HOME or "", "bin", "nvcc")),
                                                               "--version"], last=True),
        "ninja": cpp_extension.is_ninja_available(), "cxx": shutil.which(os.environ.get("CXX", "c++")),
        "compute_sanitizer": find_tool("compute-sanitizer"), "cpu": cpu_info(), "modules": modules,
    }
    (out / "environment.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    missing = [name for name, ok in (("nvcc", info["nvcc"]), ("ninja", info["ninja"]), ("a C++ compiler", info["cxx"]),
                                     ("envpool", modules["envpool"]), ("pytest", modules["pytest"])) if not ok]
    if missing:
        print("missing: " + ", ".join(missing))
    return 1 if missing else 0


def _output(command: list[str], last: bool = False) -> str | None:
    try:
        lines = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return (lines[-1] if last else lines[0]) if lines else None


def build(out: Path) -> int:
    from torch.utils import cpp_extension

    from fastdqn.replay import native

    # native.py builds through cpp_extension.load: verbose, the compiler's output lands in this log.
    cpp_extension.load = functools.partial(cpp_extension.load, verbose=True)
    status = 0
    for kind, load in (("cuda", native.cuda_gather), ("cpu", native.cpu_gather)):
        start = time.perf_counter()
        module = load()
        if module is None:
            print(f"FAILED: the native {kind} kernels did not build: {native.unavailable_reason(kind)}")
            status = 1
        else:
            print(f"built the native {kind} kernels in {time.perf_counter() - start:.1f} s: {module.__file__}")
    return status


def same_weights(out: Path) -> int:
    """Two short Breakout runs on the GPU from the same seeds, frames on the host and on the
    GPU, with deterministic kernels: the final networks must be bit for bit the same (the
    replay samples the same bytes either way; tests/test_replay_device.py checks that)."""
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
        for ring in ("numpy", "cuda"):
            cfg = make_config(env=dict(env_id="Breakout-v5", num_envs=8), run_dir=f"{tmp}/{ring}", device="cuda",
                              replay_device=ring, total_steps=6_000, buffer_size=10_000, learning_starts=1_000,
                              target_update_period=200, eval_interval=0, final_eval=False, checkpoint_interval=0,
                              save_replay="never", log_interval=10**9)
            start = time.perf_counter()
            summary = train(cfg, progress=False)
            weights[ring] = checkpoint.load(Path(tmp, ring, "checkpoint.pt"))["learner"]["q_network"]
            report["runs"][ring] = {"updates": summary["updates"], "precision": summary["precision_used"],
                                    "seconds": round(time.perf_counter() - start, 1)}
    host, device = weights["numpy"], weights["cuda"]
    differ = {name: float((host[name].float() - device[name].float()).abs().max())
              for name in host if not torch.equal(host[name], device[name])}
    report.update(identical=not differ, differing_tensors_max_abs=differ)
    (out / "same-weights.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if not differ else 1


INNER = {"environment": environment, "build": build, "same-weights": same_weights}


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': the default results folder's suffix."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="results folder (default docs/results/gpu-<device>/)")
    parser.add_argument("--steps", help="comma-separated subset of the steps, in their order (default: all)")
    parser.add_argument("--max-minutes", type=float, default=10.0,
                        help="time budget of all steps together: each gets at most what is left (default 10)")
    parser.add_argument("--inner", choices=sorted(INNER), help=argparse.SUPPRESS)  # a step's own process
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    out = (args.out or ROOT / "docs" / "results" / f"gpu-{slug(device)}").resolve()
    if args.inner:
        return INNER[args.inner](out)
    selected = steps(out)
    if args.steps:
        wanted = args.steps.split(",")
        unknown = sorted(set(wanted) - {s.name for s in selected})
        if unknown:
            parser.error(f"unknown steps {unknown}; the steps: {', '.join(s.name for s in selected)}")
        selected = [s for s in selected if s.name in wanted]
    info = {"device": device, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["python bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])}
    print(f"GPU check on {device}: {len(selected)} steps, results in {out}")
    summary = run_steps(selected, out, info, budget_s=60 * args.max_minutes if args.max_minutes else None)
    print(f"{summary['verdict'].upper()}: see {out / 'summary.md'}")
    return 0 if summary["verdict"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
