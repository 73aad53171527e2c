"""The GPU check's own logic, on the CPU: its step runner (timeouts, failure accounting, the
summary it writes), the checks it makes of the benchmarks' outputs, its exit without a GPU,
and the --require-cuda switch of tests/conftest.py that its pytest steps rely on."""

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench.gpu_check import Step

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
real_steps = gpu_check.steps  # (some tests replace gpu_check.steps)


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_without_a_gpu_it_exits_at_once_with_one_line(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([PY, "bench/gpu_check.py", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip() == "no CUDA GPU: nothing verified"
    assert not out.exists()


def test_every_step_runs_and_each_failure_is_counted_with_its_reason(tmp_path):
    steps = [
        Step("ok", "prints", py("print('hello from ok')"), 30),
        Step("exits", "fails", py("print('first'); print('boom: the last line'); raise SystemExit(3)"), 30),
        Step("hangs", "sleeps", py("import time; time.sleep(60)"), 1),
        Step("wrong", "exits 0, wrong output", py("pass"), 30, check=lambda out: "figure out of range"),
        Step("envpool", "needs a module", py("pass"), 30, needs=("fastdqn_no_such_module",)),
        Step("tool", "needs a tool", py("pass"), 30, skip="compute-sanitizer not found"),
        Step("last", "still runs", py("import os; print(os.environ['FASTDQN_MARK'])"), 30, env={"FASTDQN_MARK": "x1"}),
    ]
    shown = []
    start = time.perf_counter()
    summary = gpu_check.run_steps(steps, tmp_path, {"device": "Fake GPU", "started": "now", "command": "c"},
                                  show=shown.append)
    assert time.perf_counter() - start < 30  # the hanging step was stopped at its timeout
    results = {r["name"]: r for r in summary["steps"]}
    assert [r["name"] for r in summary["steps"]] == [s.name for s in steps]
    assert {n: r["status"] for n, r in results.items()} == {
        "ok": "passed", "exits": "failed", "hangs": "failed", "wrong": "failed", "envpool": "failed",
        "tool": "skipped", "last": "passed"}
    assert results["exits"]["reason"] == "exit status 3: boom: the last line"
    assert results["hangs"]["reason"] == "timed out after 1 s" and 1 <= results["hangs"]["seconds"] < 10
    assert results["wrong"]["reason"] == "figure out of range"
    assert results["envpool"]["reason"] == "fastdqn_no_such_module missing"
    assert results["tool"]["reason"] == "compute-sanitizer not found"
    assert "hello from ok" in (tmp_path / "logs" / "ok.log").read_text()
    assert "x1" in (tmp_path / "logs" / "last.log").read_text()
    assert summary["verdict"] == "failed"
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == summary["steps"]
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# GPU check: FAILED") and "Fake GPU" in md
    assert "| hangs | failed | " in md and "| tool | skipped | 0.0 |" in md
    assert len(shown) == 2 * len(steps)


def test_skipped_steps_do_not_fail_the_verdict(tmp_path):
    summary = gpu_check.run_steps([Step("ok", "", py("pass"), 30), Step("tool", "", py("pass"), 30, skip="no tool")],
                                  tmp_path, {}, show=lambda *a: None)
    assert summary["verdict"] == "passed"


def test_a_timeout_stops_the_steps_children_too(tmp_path):
    marker = tmp_path / "grandchild-finished"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"
    step = Step("spawns", "", py(f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
                                 "time.sleep(60)"), 1)
    assert gpu_check.run_step(step, tmp_path)["status"] == "failed"
    time.sleep(4)
    assert not marker.exists()


def test_the_time_budget_caps_the_steps_and_leaves_the_rest_not_run(tmp_path):
    steps = [Step("long", "", py("import time; time.sleep(60)"), 600), Step("next", "", py("pass"), 600)]
    summary = gpu_check.run_steps(steps, tmp_path, {}, budget_s=11, show=lambda *a: None)
    first, second = summary["steps"]
    assert first["reason"] in ("timed out after 10 s", "timed out after 11 s") and first["seconds"] < 13  # not 600
    assert second["status"] == "failed" and second["reason"].startswith("not run: the time budget")


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """main() on a faked GPU, its build cache in tmp_path."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU 9000")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv("OUT", raising=False)
    return monkeypatch


def test_main_runs_the_steps_named_and_its_exit_status_says_whether_all_passed(tmp_path, fake_gpu):
    fakes = [Step("a", "", py("pass"), 30), Step("b", "", py("raise SystemExit(1)"), 30)]
    fake_gpu.setattr(gpu_check, "steps", lambda work: fakes)
    assert gpu_check.main(["--out", str(tmp_path / "x"), "--work", str(tmp_path / "wx"), "--steps", "a"]) == 0
    assert [r["name"] for r in json.loads((tmp_path / "x" / "summary.json").read_text())["steps"]] == ["a"]
    assert gpu_check.main(["--out", str(tmp_path / "y"), "--work", str(tmp_path / "wy")]) == 1
    summary = json.loads((tmp_path / "y" / "summary.json").read_text())
    assert summary["device"] == "Fake GPU 9000" and summary["verdict"] == "failed"
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path / "z"), "--steps", "a,nonsense"])
    assert gpu_check.slug("Fake GPU 9000") == "fake-gpu-9000"
    assert gpu_check.slug("NVIDIA H200") == "nvidia-h200"


def test_results_default_to_OUT_and_are_three_files_one_an_archive_of_everything(tmp_path, fake_gpu, capsys):
    fake_gpu.setenv("OUT", str(tmp_path / "out"))
    fake_gpu.setattr(gpu_check, "steps", lambda work: [
        Step(f"s{i}", "", py(f"print('log of s{i}')"), 30, group="g") for i in range(12)])
    assert gpu_check.main(["--work", str(tmp_path / "work")]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check-fake-gpu-9000.tar.gz", "summary.json", "summary.md"]
    with tarfile.open(out / "gpu-check-fake-gpu-9000.tar.gz") as tar:
        names = tar.getnames()
        log = tar.extractfile("gpu-check-fake-gpu-9000/logs/s11.log").read().decode()
    assert "gpu-check-fake-gpu-9000/summary.json" in names and "log of s11" in log
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith("VERDICT: PASSED: 12 steps passed") and printed[-1] == f"results: {out}"


def test_a_stale_build_lock_is_removed_before_the_steps_and_after_a_step_is_killed(tmp_path, fake_gpu):
    lock = tmp_path / "ext" / "fastdqn_gather_cuda" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()  # left by an earlier run that was killed
    check_lock = py(f"import os, sys; sys.exit(os.path.exists({str(lock)!r}))")
    fake_gpu.setattr(gpu_check, "steps", lambda work: [Step("sees-no-lock", "", check_lock, 30)])
    assert gpu_check.main(["--out", str(tmp_path / "o1"), "--work", str(tmp_path / "w1")]) == 0
    # a build killed by its timeout leaves its lock; the next group must not find it
    hang = py(f"open({str(lock)!r}, 'w'); import time; time.sleep(60)")
    fake_gpu.setattr(gpu_check, "steps", lambda work: [Step("build", "", hang, 1), Step("next", "", check_lock, 30)])
    assert gpu_check.main(["--out", str(tmp_path / "o2"), "--work", str(tmp_path / "w2")]) == 1
    results = json.loads((tmp_path / "o2" / "summary.json").read_text())["steps"]
    assert [r["status"] for r in results] == ["failed", "passed"]


def test_the_real_steps_in_order_with_what_they_need_within_the_plan(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "find_tool", lambda name: None)
    steps = gpu_check.steps(tmp_path)
    assert [s.name for s in steps] == ["environment", "build-cuda", "build-cpu", "numba", "cuda-tests", "memcheck",
                                       "same-weights", "learner", "train-device-ring", "gather", "train-host-ring"]
    assert [[s.name for s in g] for g in gpu_check.groups(steps)][:2] == [
        ["environment", "build-cuda", "build-cpu", "numba"], ["cuda-tests", "memcheck", "same-weights"]]
    assert all(len(g) == 1 for g in gpu_check.groups(steps)[2:])  # the timed steps run alone
    by_name = {s.name: s for s in steps}
    for name in ("same-weights", "train-host-ring", "train-device-ring"):
        assert "envpool" in by_name[name].needs
    assert by_name["memcheck"].skip == "compute-sanitizer not found"
    for name in ("cuda-tests", "memcheck"):
        assert "--require-cuda" in by_name[name].command
    for path in gpu_check.CUDA_TESTS:
        assert path in by_name["cuda-tests"].command and (ROOT / path).is_file()
    for step in steps:  # every module a step runs exists in this checkout, every inner step too
        if "-m" in step.command:
            module = step.command[step.command.index("-m") + 1]
            assert module == "pytest" or (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
        if "--inner" in step.command:
            assert step.command[step.command.index("--inner") + 1] in gpu_check.INNER
        assert step.expect_s > 0 and step.timeout_s <= 240
    # one loan: the plan within 7 minutes, the budget well under a 10-minute command
    assert gpu_check.planned_s(steps) <= gpu_check.PLANNED_S == 7 * 60
    assert gpu_check.MAX_MINUTES <= 8


def test_steps_of_a_group_run_at_the_same_time_and_the_rest_in_turn(tmp_path):
    sleep = py("import time; time.sleep(2)")
    steps = [Step("a", "", sleep, 30, group="g", expect_s=2), Step("b", "", sleep, 30, group="g", expect_s=1),
             Step("c", "", sleep, 30, expect_s=2), Step("d", "", sleep, 30, group="h", expect_s=3)]
    assert [[s.name for s in g] for g in gpu_check.groups(steps)] == [["a", "b"], ["c"], ["d"]]
    assert gpu_check.planned_s(steps) == 2 + 2 + 3
    start = time.perf_counter()
    summary = gpu_check.run_steps(steps, tmp_path, {}, show=lambda *a: None)
    assert 6 <= time.perf_counter() - start < 9  # three rounds of 2 s, not four
    assert [r["name"] for r in summary["steps"]] == ["a", "b", "c", "d"]
    assert {r["status"] for r in summary["steps"]} == {"passed"}


def test_a_sanitizer_that_cannot_attach_is_a_skip_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "find_tool", lambda name: sys.executable)
    memcheck = next(s for s in gpu_check.steps(tmp_path) if s.name == "memcheck")
    answer = "========= COMPUTE-SANITIZER\n========= Error: Device not supported\n"
    fake = dataclasses.replace(memcheck, command=py(f"print({answer!r}); raise SystemExit(1)"), needs=())
    result = gpu_check.run_step(fake, tmp_path)
    assert result["status"] == "skipped"
    assert result["reason"].startswith('compute-sanitizer cannot attach to this GPU ("Device not supported")')
    real_error = dataclasses.replace(fake, command=py("print('========= Invalid __global__ read'); raise SystemExit(1)"))
    assert gpu_check.run_step(real_error, tmp_path)["status"] == "failed"
    attached = dataclasses.replace(fake, command=py(f"print({answer!r})"), check=None)  # exit 0: ran after all
    assert gpu_check.run_step(attached, tmp_path)["status"] == "passed"


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def gather_result(**row_changes):
    row = {"batch_size": 32, "identical_to_numba": {"cpp": True, "cuda_gather": True},
           "checked_up_to_byte": 7_056_000_000, "numba": {"samples_per_s": 3e5}, "cpp": {"samples_per_s": 3e5},
           "cuda_gather": {"samples_per_s": 2e6}, "host_gather_copy": {"samples_per_s": 1e5}}
    return {"native_cuda": True, "rows": [{**row, **row_changes}]}


def test_the_gather_check_wants_every_kernel_identical_past_4_gib(tmp_path):
    assert gpu_check.check_gather(tmp_path) == "gather.json is missing"
    write(tmp_path / "gather.json", gather_result())
    assert gpu_check.check_gather(tmp_path) is None
    write(tmp_path / "gather.json", gather_result(identical_to_numba={"cpp": True, "cuda_gather": False}))
    assert gpu_check.check_gather(tmp_path) == "cuda_gather differs from Numba at batch 32"
    write(tmp_path / "gather.json", gather_result(checked_up_to_byte=2**32))
    assert "checked only 4,294,967,296 bytes" in gpu_check.check_gather(tmp_path)
    write(tmp_path / "gather.json", {**gather_result(), "native_cuda": False})
    assert gpu_check.check_gather(tmp_path) == "the CUDA gather did not run"


def learner_result(modes, ups=100.0):
    return {"results": [{"batch_size": b, "mode": m, "updates_per_s": ups * (6 if "graph" in m else 1)}
                        for b in (32, 256) for m in modes]}


def test_the_learner_and_train_checks_and_the_figures(tmp_path):
    write(tmp_path / "learner.json", learner_result(("fp32-eager", "fp32-graph", "bf16-eager")))
    assert gpu_check.check_learner(tmp_path) == "not measured: bf16-graph b32, bf16-graph b256"
    write(tmp_path / "learner.json", learner_result((*gpu_check.LEARNER_MODES, "cleanrl")))
    assert gpu_check.check_learner(tmp_path) is None
    check = gpu_check.check_train("train-device-ring.json")
    assert check(tmp_path) == "train-device-ring.json is missing"
    write(tmp_path / "train-device-ring.json", {"fastdqn_steps_per_s": 0})
    assert check(tmp_path) == "no agent steps/s measured"
    write(tmp_path / "train-device-ring.json", {"fastdqn_steps_per_s": 4_200.0})
    assert check(tmp_path) is None
    write(tmp_path / "same-weights.json", {"identical": True})
    figs = gpu_check.figures(tmp_path)
    assert figs["graph / eager, bf16, batch 32"] == 6.0
    assert figs["host ring + serial vs device ring + overlapped, final weights"] == "identical"
    gpu_check.write_summary({"verdict": "passed", "steps": [], "figures": figs}, tmp_path)
    assert "- graph / eager, bf16, batch 32: 6.00" in (tmp_path / "summary.md").read_text()


def test_the_figures_say_whether_precision_auto_picked_the_faster_graph(tmp_path):
    rows = {(32, "fp32-graph"): 3000.0, (32, "bf16-graph"): 2400.0, (256, "fp32-graph"): 900.0,
            (256, "bf16-graph"): 1000.0}
    write(tmp_path / "learner.json", {"results": [{"batch_size": b, "mode": m, "updates_per_s": v}
                                                  for (b, m), v in rows.items()]})
    figs = gpu_check.figures(tmp_path)
    assert figs["precision auto at batch 32 picks fp32"] == "right: fp32 graph 1.25x faster"
    assert figs["precision auto at batch 256 picks bf16"] == "right: bf16 graph 1.11x faster"
    rows[(256, "fp32-graph")] = 1200.0
    write(tmp_path / "learner.json", {"results": [{"batch_size": b, "mode": m, "updates_per_s": v}
                                                  for (b, m), v in rows.items()]})
    assert gpu_check.figures(tmp_path)["precision auto at batch 256 picks bf16"] == "WRONG: fp32 graph 1.20x faster"


def passed(*names):
    return [{"name": n, "what": "", "status": "passed", "seconds": 1.0, "reason": ""} for n in names]


def test_the_verdict_says_which_targets_were_met_or_missed():
    figs = {"graph / eager, fp32, batch 32": 6.0, "training, frames on the device: agent steps/s": 4200.0}
    ran = {"learner", "train-device-ring"}
    summary = {"steps": passed("learner", "train-device-ring"), "targets": gpu_check.targets(figs, ran)}
    assert [(t["target"], t["state"]) for t in summary["targets"]] == [
        ("graph >= 5x eager at batch 32 (fp32)", "met"), (">= 5,000 agent steps/s with the device ring", "MISSED")]
    summary["verdict"] = gpu_check.verdict(summary)
    assert summary["verdict"] == "targets missed"  # correct, not fast enough
    assert gpu_check.verdict_line(summary) == (
        "VERDICT: TARGETS MISSED: 2 steps passed; targets: graph >= 5x eager at batch 32 (fp32): met (6.00); "
        ">= 5,000 agent steps/s with the device ring: MISSED (4,200)")
    figs["training, frames on the device: agent steps/s"] = 5100.0
    summary["targets"] = gpu_check.targets(figs, ran)
    assert gpu_check.verdict(summary) == "passed"
    summary["steps"] += [{"name": "gather", "what": "", "status": "failed", "seconds": 3.0, "reason": "x"},
                         {"name": "memcheck", "what": "", "status": "skipped", "seconds": 1.0,
                          "reason": "compute-sanitizer cannot attach"}]
    summary["verdict"] = gpu_check.verdict(summary)
    assert gpu_check.verdict_line(summary).startswith(
        "VERDICT: FAILED: 2 steps passed, 1 failed (gather), 1 skipped (memcheck: compute-sanitizer cannot attach); "
        "targets: graph")
    # a target whose step ran without a figure is not met; one whose step did not run is not judged
    assert [t["state"] for t in gpu_check.targets({}, ran)] == ["not measured", "not measured"]
    assert gpu_check.verdict({"steps": passed("learner"), "targets": gpu_check.targets({}, {"learner"})}) == (
        "targets missed")
    assert gpu_check.targets({}, {"cuda-tests"}) == []


def test_a_run_whose_targets_are_missed_exits_3_and_prints_one_screen(tmp_path, fake_gpu, capsys):
    learner = learner_result((*gpu_check.LEARNER_MODES, "cleanrl"), ups=100.0)  # graph 6x eager
    def writes(name, data):
        return py(f"open({str(tmp_path / 'work' / name)!r}, 'w').write({json.dumps(data)!r})")
    fake_gpu.setattr(gpu_check, "steps", lambda work: [
        Step(s.name, s.what, py("pass"), 30, group=s.group, expect_s=s.expect_s) for s in real_steps(work)
        if s.name not in ("learner", "train-device-ring")] + [
        Step("learner", "", writes("learner.json", learner), 30),
        Step("train-device-ring", "", writes("train-device-ring.json", {"fastdqn_steps_per_s": 4200.0}), 30)])
    assert gpu_check.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 3
    printed = capsys.readouterr().out.splitlines()
    screen = printed[printed.index(""):]
    assert len(screen) <= 30 and max(map(len, screen)) <= 200
    assert screen[-2].startswith("VERDICT: TARGETS MISSED: 11 steps passed; targets: graph >= 5x eager at batch 32 "
                                 "(fp32): met (6.00); >= 5,000 agent steps/s with the device ring: MISSED (4,200)")
    assert "VERDICT: TARGETS MISSED" in (tmp_path / "out" / "summary.md").read_text()



def test_nvcc_against_torchs_cuda_in_one_line():
    nvcc = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n"
    assert gpu_check.cuda_versions(nvcc, "13.0") == (True, "nvcc 13.0 and torch's CUDA 13.0: same major version")
    assert gpu_check.cuda_versions(nvcc.replace("13.0", "12.8"), "13.0") == (
        False, "nvcc 12.8 against torch built with CUDA 13.0: major versions differ, the kernels will not build "
               "(put a CUDA 13 nvcc first: CUDA_HOME or PATH)")
    assert gpu_check.cuda_versions(nvcc, "13.1")[0] is True
    assert gpu_check.cuda_versions(None, "13.0")[1].startswith("nvcc not found")
    assert gpu_check.cuda_versions(nvcc, None)[1].startswith("torch is a CPU build")


def test_the_envpool_bundle_goes_on_the_path_only_where_envpool_is_missing(tmp_path, monkeypatch):
    import importlib.util

    assert gpu_check.use_bundle(tmp_path).startswith("envpool: installed")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "envpool"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert gpu_check.use_bundle(tmp_path).startswith("envpool: MISSING, and no bundle at")
    (tmp_path / "envpool").mkdir()
    (tmp_path / "BUNDLE.json").write_text(json.dumps({"python": "3.12"}))
    line = gpu_check.use_bundle(tmp_path)
    assert sys.path[0] == str(tmp_path) and os.environ["PYTHONPATH"] == f"{tmp_path}{os.pathsep}/elsewhere"
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert line == f"envpool: from the bundle {tmp_path}" + (
        "" if here == "3.12" else f"; it was made for Python 3.12, this is {here}: its native modules will not load")


def test_junit_counts_are_read_from_pytest_xml(tmp_path):
    (tmp_path / "j.xml").write_text('<testsuites><testsuite tests="7" failures="1" errors="2" skipped="0"/>'
                                    '</testsuites>')
    assert gpu_check.junit_counts(tmp_path / "j.xml") == {"tests": 7, "failures": 1, "errors": 2, "skipped": 0}
    assert gpu_check.check_junit("j.xml")(tmp_path) is None
    (tmp_path / "k.xml").write_text('<testsuite tests="0" failures="0" errors="0" skipped="3"/>')
    assert gpu_check.check_junit("k.xml")(tmp_path) == "no test ran"
    assert gpu_check.check_junit("none.xml")(tmp_path) == "none.xml is missing"


# ------------------------------------------------------ --require-cuda (tests/conftest.py)

SKIPS = '''
import pytest

def test_passes():
    pass

@pytest.mark.skip(reason="needs a CUDA GPU")
def test_no_gpu():
    pass

@pytest.mark.skipif(True, reason="needs nvcc")
def test_no_nvcc():
    pass

def test_kernels_not_built():
    pytest.skip("the native cuda kernels could not be built")

@pytest.mark.cuda
@pytest.mark.skip(reason="any reason at all")
def test_marked_cuda():
    pass

@pytest.mark.skip(reason="needs the Atari ROMs")
def test_unrelated():
    pass

@pytest.mark.xfail(reason="a CUDA quirk")
def test_expected_failure():
    assert False
'''


def outcomes(tmp_path, *args, env=None):
    """{test name: passed | failed | error | skipped | xfailed}, from pytest's junit XML."""
    import xml.etree.ElementTree as ET

    junit = tmp_path / "junit.xml"
    # (CUDA_VISIBLE_DEVICES="" is what conftest.py gives this very test)
    environ = {k: v for k, v in os.environ.items() if k not in ("FASTDQN_REQUIRE_CUDA", "CUDA_VISIBLE_DEVICES")}
    proc = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**environ, **(env or {})})
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        kind = kinds[0] if kinds else "passed"
        if kind == "skipped" and "xfail" in (case.find("skipped").get("type") or ""):
            kind = "xfailed"
        result[case.get("name")] = {"failure": "failed"}.get(kind, kind)
    return proc.returncode, result


def test_require_cuda_turns_every_cuda_skip_into_a_failure(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: needs a CUDA GPU\n")
    (tmp_path / "test_skips.py").write_text(SKIPS)
    code, plain = outcomes(tmp_path)
    assert code == 0
    assert plain == {"test_passes": "passed", "test_no_gpu": "skipped", "test_no_nvcc": "skipped",
                     "test_kernels_not_built": "skipped", "test_marked_cuda": "skipped",
                     "test_unrelated": "skipped", "test_expected_failure": "xfailed"}
    required = {**plain, "test_no_gpu": "error", "test_no_nvcc": "error", "test_kernels_not_built": "failed",
                "test_marked_cuda": "error"}  # (a skip at set-up is reported as an error)
    for args, env in (((), {"FASTDQN_REQUIRE_CUDA": "1"}), (("--require-cuda",), None)):
        code, result = outcomes(tmp_path, *args, env=env)
        assert code == 1 and result == required


# ------------------------------- the CPU unless marked `cuda` fixture (tests/conftest.py)

ON_A_GPU_MACHINE = '''
import os
import subprocess
import sys

import pytest
import torch

torch.backends.cudnn.benchmark = True  # as a learner on CUDA leaves it


@pytest.fixture(scope="module")
def device_of_a_module_fixture():
    from fastdqn.train import resolve_device

    return resolve_device("auto").type


def test_module_fixtures_run_as_without_a_gpu_too(device_of_a_module_fixture):
    assert device_of_a_module_fixture == "cpu"


def test_unmarked_tests_run_as_without_a_gpu():
    from fastdqn.train import resolve_device

    assert not torch.cuda.is_available() and resolve_device("auto").type == "cpu"
    child = subprocess.run([sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"],
                           capture_output=True, text=True)
    assert child.stdout.strip() == "''"  # processes it starts see no GPU either


def test_every_test_starts_with_deterministic_cudnn():
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


@pytest.mark.cuda
def test_marked_cuda_sees_the_gpu():
    assert torch.cuda.is_available() and "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.skipif(False, reason="needs a CUDA GPU")
def test_a_test_that_skips_without_a_gpu_is_a_cuda_test():
    assert torch.cuda.is_available()
'''


def test_on_a_gpu_machine_only_cuda_tests_see_the_gpu(tmp_path):
    fake_gpu = "import torch\n\ntorch.cuda.is_available = lambda: True  # a GPU machine, faked\n\n"
    (tmp_path / "conftest.py").write_text(fake_gpu + (ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: needs a CUDA GPU\n")
    (tmp_path / "test_gpu_machine.py").write_text(ON_A_GPU_MACHINE)
    code, result = outcomes(tmp_path)
    assert result == dict.fromkeys(("test_module_fixtures_run_as_without_a_gpu_too",
                                    "test_unmarked_tests_run_as_without_a_gpu",
                                    "test_every_test_starts_with_deterministic_cudnn", "test_marked_cuda_sees_the_gpu",
                                    "test_a_test_that_skips_without_a_gpu_is_a_cuda_test"), "passed")
    assert code == 0


# ------------------------------------- the native kernels' build (fastdqn/replay/native.py)

def test_the_cuda_kernels_are_built_for_the_present_gpu_only():
    from fastdqn.replay.native import cuda_arch_flags

    torch_archs = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
    assert cuda_arch_flags((9, 0), torch_archs) == ["-gencode=arch=compute_90,code=sm_90"]
    assert cuda_arch_flags((8, 9), torch_archs) == ["-gencode=arch=compute_89,code=sm_89"]
    assert cuda_arch_flags((10, 0), torch_archs) == ["-gencode=arch=compute_100,code=sm_100"]
    # newer than torch's newest: that one and its PTX, which the driver compiles for the GPU
    assert cuda_arch_flags((12, 1), ["sm_80", "sm_90"]) == ["-gencode=arch=compute_90,code=sm_90",
                                                            "-gencode=arch=compute_90,code=compute_90"]


@pytest.fixture
def fake_cuda_build(monkeypatch, tmp_path):
    """native's CUDA build on a faked H100, cpp_extension.load recording what it was asked."""
    from torch.utils import cpp_extension

    from fastdqn.replay import native

    calls = []
    monkeypatch.setattr(native, "_modules", {})
    monkeypatch.setattr(native, "_missing_tool", lambda cpp_extension: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_80", "sm_90"])
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs) or "module")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    return native, calls, tmp_path / "fastdqn_gather_cuda" / "lock"


def test_the_cuda_build_passes_the_gpus_architecture_as_flags(fake_cuda_build, monkeypatch):
    native, calls, _ = fake_cuda_build
    assert native.cuda_gather() == "module"
    assert calls[-1]["extra_cuda_cflags"] == ["-O3", "-gencode=arch=compute_90,code=sm_90"]
    monkeypatch.setattr(native, "_modules", {})
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")  # the user's choice is left to torch
    native.cuda_gather()
    assert calls[-1]["extra_cuda_cflags"] == ["-O3"]


def test_a_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_kept(fake_cuda_build, monkeypatch):
    native, calls, lock = fake_cuda_build
    lock.parent.mkdir(parents=True)
    lock.touch()
    assert native.remove_stale_lock(lock) is False and lock.exists()  # a build may be running
    old = time.time() - native.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="left .* by a native kernel build that did not finish"):
        assert native.cuda_gather() == "module"
    assert not lock.exists() and len(calls) == 1
    assert native.remove_stale_lock(lock) is False  # none there


# ------------------------------------------- --precision auto on a GPU (fastdqn/hardware.py)

def test_auto_precision_on_a_gpu_is_fp32_below_the_batch_where_bf16_pays(monkeypatch):
    from fastdqn import hardware

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    small = hardware.resolve_precision("auto", cuda, batch_size=32)
    assert small.name == "fp32" and "at batch 32 (< 128) an update is bound by kernel launches" in small.reason
    assert hardware.resolve_precision("auto", cuda, batch_size=hardware.CUDA_BF16_MIN_BATCH - 1).name == "fp32"
    large = hardware.resolve_precision("auto", cuda, batch_size=hardware.CUDA_BF16_MIN_BATCH)
    assert large.name == "bf16" and "batch 128 >= 128" in large.reason
    assert hardware.resolve_precision("auto", cuda).name == "bf16"  # no batch size given: as before
    assert hardware.resolve_precision("bf16", cuda, batch_size=32) == ("bf16", "asked for", False)
    assert hardware.resolve_precision("auto", cuda, conv_net=False, batch_size=256).name == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert hardware.resolve_precision("auto", cuda, batch_size=256).name == "fp32"  # no native bf16


def test_the_environment_step_on_a_faked_gpu_fails_on_an_nvcc_of_another_major(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from torch.utils import cpp_extension

    props = SimpleNamespace(name="Fake H100", major=9, minor=0, multi_processor_count=132, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(tmp_path / "cuda"))
    monkeypatch.setenv("CXX", "sh")
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    for release, status, line in (("13.0", 0, "nvcc 13.0 and torch's CUDA 13.0: same major version"),
                                  ("12.8", 1, "nvcc 12.8 against torch built with CUDA 13.0: major versions differ")):
        nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
        nvcc.chmod(0o755)
        assert gpu_check.environment(tmp_path) == status
        assert any(printed.startswith(line) for printed in capsys.readouterr().out.splitlines())  # a line of its own
        info = json.loads((tmp_path / "environment.json").read_text())
        assert info["gpu"] == "Fake H100" and info["capability"] == "9.0" and info["nvcc_vs_torch"].startswith(line)
        assert info["modules"]["envpool"].startswith("1.2.5 (")
