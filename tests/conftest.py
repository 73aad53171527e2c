import os
import re

import pytest
import torch

# On a CPU machine the CUDA tests skip; on a GPU machine a skip (no nvcc, kernels that did
# not build, a GPU torch does not see) would leave a green run that verified nothing. With
# --require-cuda or FASTDQN_REQUIRE_CUDA=1 every such skip is an error instead: a test marked
# `cuda`, or one whose skip reason names CUDA, a GPU, nvcc, a compiler or the native kernels.
CUDA_SKIP_REASON = re.compile(r"cuda|gpu|nvcc|compiler|native", re.IGNORECASE)


def pytest_addoption(parser):
    parser.addoption("--require-cuda", action="store_true",
                     default=os.environ.get("FASTDQN_REQUIRE_CUDA", "0") not in ("", "0"),
                     help="fail every test that skips for want of CUDA (GPU, nvcc, native kernels); "
                          "also set by FASTDQN_REQUIRE_CUDA=1")


def _cuda_skip_reason(report, marked_cuda: bool = False) -> str | None:
    """The reason of a skip that a CUDA machine must not take, or None."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason if marked_cuda or CUDA_SKIP_REASON.search(reason) else None


def _fail_cuda_skip(config, report, marked_cuda: bool = False) -> None:
    reason = _cuda_skip_reason(report, marked_cuda) if config.getoption("require_cuda") else None
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"--require-cuda (FASTDQN_REQUIRE_CUDA): a CUDA skip counts as a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_cuda_skip(item.config, outcome.get_result(), item.get_closest_marker("cuda") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a whole module skipped at import (pytest.importorskip, allow_module_level)
    _fail_cuda_skip(collector.config, outcome.get_result())


# A test that skips where there is no GPU is a CUDA test, marked `cuda` or not
# (tests/test_native.py's kernel tests carry only their skipif).
NEEDS_GPU_REASON = re.compile(r"cuda|gpu", re.IGNORECASE)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cuda") is None and any(
                NEEDS_GPU_REASON.search(str(mark.kwargs.get("reason", ""))) for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(scope="session", autouse=True)
def _no_gpu_by_default():
    """The whole session runs as on a machine without a GPU (see _cpu_unless_marked_cuda),
    from before the first fixture of any scope: a module or session fixture (cartpole_run)
    must not train on CUDA either. Applied here, after collection, so that the CUDA tests'
    skipif conditions still see the GPU."""
    real = torch.cuda.is_available, os.environ.get("CUDA_VISIBLE_DEVICES")
    patch = pytest.MonkeyPatch()
    patch.setattr(torch.cuda, "is_available", lambda: False)
    patch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield real
    patch.undo()


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch, _no_gpu_by_default):
    """Every test not marked `cuda` runs as on a machine without a GPU, so that the suite
    gives the same answers on a GPU machine: `--device auto` (and bench's defaults) resolve
    to the CPU instead of moving a run to CUDA and comparing it with CPU learners. A test
    marked `cuda` gets the GPU back.

    Two switches, as neither covers both cases: torch.cuda.is_available() patched to False
    reaches every check in this process (fastdqn.train.resolve_device, bench, native,
    hardware.machine) even after CUDA was initialised by an earlier test, when
    CUDA_VISIBLE_DEVICES no longer has any effect here; CUDA_VISIBLE_DEVICES="" reaches the
    processes a test starts (the CLI, benches), which do not inherit the patch. A test may
    still patch is_available itself (tests/test_gpu_check.py fakes a GPU).

    Every test, marked or not, starts with deterministic cuDNN and without its benchmark
    mode (tests compare results bit for bit; the learner turns benchmark mode on for speed
    on CUDA), and the flags are put back afterwards so that one test's choice does not
    leak into the next."""
    cudnn = torch.backends.cudnn
    flags = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    if request.node.get_closest_marker("cuda") is not None:
        is_available, visible = _no_gpu_by_default
        monkeypatch.setattr(torch.cuda, "is_available", is_available)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    yield
    cudnn.deterministic, cudnn.benchmark = flags


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two intra-op threads on a 2-core machine shared with other jobs can run 20x slower
    (OpenMP barriers); small-network tests use one thread, which is plenty and steady."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def cartpole_run(tmp_path_factory):
    """A short CartPole run directory (checkpoint, summary, events, one eval video): a few seconds."""
    pytest.importorskip("imageio_ffmpeg")
    from fastdqn.config import make_config
    from fastdqn.train import train

    run_dir = tmp_path_factory.mktemp("cartpole") / "run"
    previous = torch.get_num_threads()
    cfg = make_config("cartpole", run_dir=str(run_dir), total_steps=1500, learning_starts=300, eval_interval=0,
                      eval_episodes=2, checkpoint_interval=0, capture_video=True, torch_threads=1)
    train(cfg, progress=False)
    torch.set_num_threads(previous)
    return run_dir


@pytest.fixture
def last_checkpoint_objects(monkeypatch):
    """The training process's own objects at its last checkpoint (agent, store, rng, counters as
    they were) and its acting rule: what a restore from that checkpoint must reproduce."""
    from fastdqn import train as train_mod

    live = {}
    real_payload, real_build = train_mod.checkpoint_payload, train_mod.build_agent

    def spy(cfg, agent, store, rng, counters, env):
        live.update(agent=agent, store=store, rng=rng, counters=dict(counters))
        return real_payload(cfg, agent, store, rng, counters, env)

    def build_spy(*args, **kwargs):
        agent, acting, evaluating = real_build(*args, **kwargs)
        live["acting"] = acting
        return agent, acting, evaluating

    monkeypatch.setattr(train_mod, "checkpoint_payload", spy)
    monkeypatch.setattr(train_mod, "build_agent", build_spy)
    return live
