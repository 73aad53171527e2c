"""The GPU check's own logic, on the CPU: its step runner (timeouts, failure accounting, the
summary it writes), the checks it makes of the benchmarks' outputs, its exit without a GPU,
and the --require-cuda switch of tests/conftest.py that its pytest steps rely on."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench.gpu_check import Step

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


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


def test_main_runs_the_steps_named_and_its_exit_status_says_whether_all_passed(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU 9000")
    fakes = [Step("a", "", py("pass"), 30), Step("b", "", py("raise SystemExit(1)"), 30)]
    monkeypatch.setattr(gpu_check, "steps", lambda out: fakes)
    assert gpu_check.main(["--out", str(tmp_path / "x"), "--steps", "a"]) == 0
    assert [r["name"] for r in json.loads((tmp_path / "x" / "summary.json").read_text())["steps"]] == ["a"]
    assert gpu_check.main(["--out", str(tmp_path / "y")]) == 1
    summary = json.loads((tmp_path / "y" / "summary.json").read_text())
    assert summary["device"] == "Fake GPU 9000" and summary["verdict"] == "failed"
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path / "z"), "--steps", "a,nonsense"])
    assert gpu_check.slug("Fake GPU 9000") == "fake-gpu-9000"
    assert gpu_check.slug("NVIDIA H200") == "nvidia-h200"


def test_the_real_steps_in_order_with_what_they_need(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "find_tool", lambda name: None)
    steps = gpu_check.steps(tmp_path)
    assert [s.name for s in steps] == ["environment", "build", "cuda-tests", "gather", "learner", "same-weights",
                                       "train-host-ring", "train-device-ring", "memcheck"]
    by_name = {s.name: s for s in steps}
    for name in ("same-weights", "train-host-ring", "train-device-ring"):
        assert "envpool" in by_name[name].needs
    assert by_name["memcheck"].skip == "compute-sanitizer not found"
    for name in ("cuda-tests", "memcheck"):
        assert "--require-cuda" in by_name[name].command
    for path in gpu_check.CUDA_TESTS:
        assert path in by_name["cuda-tests"].command and (ROOT / path).is_file()
    for step in steps:  # every module a step runs exists in this checkout
        if "-m" in step.command:
            module = step.command[step.command.index("-m") + 1]
            assert module == "pytest" or (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    assert sum(s.timeout_s for s in steps) <= 40 * 60


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


def test_the_learner_and_train_checks_and_the_figures_against_the_targets(tmp_path):
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
    assert figs["target: graph >= 5x eager at batch 32, fp32"] == "met"
    assert figs["target: >= 5,000 agent steps/s with the device ring"] == "NOT met"
    assert figs["host ring vs device ring, final weights"] == "identical"
    gpu_check.write_summary({"verdict": "passed", "steps": [], "figures": figs}, tmp_path)
    assert "- graph / eager, bf16, batch 32: 6.00" in (tmp_path / "summary.md").read_text()


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
    assert result == dict.fromkeys(("test_unmarked_tests_run_as_without_a_gpu",
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
