"""Precision by hardware (flags mocked), the allocator setting, and the CPU learner's
channels_last path checked against a plain contiguous double-Q update."""

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastdqn import hardware
from fastdqn.learner import Learner
from fastdqn.networks import make_q_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def _cpu(flags, cap=None):
    return {"model": "Test CPU", "cores": 2, "flags": list(flags), "isa_cap": dict(cap or {})}


@pytest.mark.parametrize("flags, cap, expected", [
    (["avx2", "fma"], None, "fp32"),  # AVX2 only: bf16 would be emulated
    (["avx2", "avx512f", "avx512_vnni"], None, "fp32"),  # AVX-512 without bf16
    (["avx2", "avx512f", "avx512_bf16"], None, "bf16"),  # Zen4, Cooper Lake and later
    (["avx2", "avx512f", "amx_bf16", "amx_tile"], None, "bf16"),  # Sapphire Rapids
    (["avx2", "avx512f", "avx512_bf16"], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "fp32"),  # capped off
    (["avx2", "avx512f", "avx512_bf16"], {"ATEN_CPU_CAPABILITY": "avx2"}, "fp32"),
    (["avx2", "avx512f", "avx512_bf16"], {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "bf16"),
])
def test_auto_precision_follows_the_cpu_flags(flags, cap, expected):
    choice = hardware.resolve_precision("auto", CPU, info=_cpu(flags, cap))
    assert choice.name == expected and not choice.slow
    assert choice.reason.startswith("auto: Test CPU")


def test_auto_is_fp32_for_mlps_and_explicit_choices_are_kept():
    bf16_cpu = _cpu(["avx512_bf16"])
    assert hardware.resolve_precision("auto", CPU, conv_net=False, info=bf16_cpu).name == "fp32"
    assert hardware.resolve_precision("fp32", CPU, info=bf16_cpu) == ("fp32", "asked for", False)
    assert hardware.resolve_precision("bf16", CPU, info=bf16_cpu) == ("bf16", "asked for", False)
    slow = hardware.resolve_precision("bf16", CPU, info=_cpu(["avx2"]))
    assert slow.name == "bf16" and slow.slow and "SLOW" in slow.reason  # kept, with a warning
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        hardware.resolve_precision("fp16", CPU)


@pytest.mark.parametrize("flags, expected", [(["avx2"], "fp32"), (["avx2", "avx512_bf16"], "bf16")])
def test_learner_resolves_auto_from_the_machine(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_info", lambda: _cpu(flags))
    learner = Learner(make_q_network((4, 84, 84), 4), device="cpu")  # precision="auto"
    assert learner.precision == expected
    assert learner.precision_choice.reason.startswith("auto:")
    assert Learner(make_q_network((4,), 2), device="cpu").precision == "fp32"  # an MLP


def test_cpu_info_reads_model_and_flags():
    info = hardware.cpu_info()
    assert info["model"] and info["cores"] >= 1
    assert set(info["flags"]) <= set(hardware.VECTOR_FLAGS)


_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma sha_ni

processor\t: 1
cpu family\t: 25
model\t\t: 17
flags\t\t: avx512f avx512_bf16
"""


def test_parse_cpuinfo_names_the_first_cpus_generation_and_flags():
    info = hardware.parse_cpuinfo(_ZEN3)
    assert info == {"model": "AMD EPYC", "cpu_id": "family 25 model 1", "flags": ["avx2", "fma"]}
    zen4 = _ZEN3.replace("model\t\t: 1\n", "model\t\t: 17\n", 1).replace("sha_ni", "avx512f avx512_bf16")
    assert hardware.parse_cpuinfo(zen4)["cpu_id"] == "family 25 model 17"
    assert hardware.parse_cpuinfo(zen4)["flags"] == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert hardware.parse_cpuinfo("")["cpu_id"] is None  # no /proc/cpuinfo: unknown, not a guess


def test_keep_freed_memory_stops_the_updates_page_faults():
    # A fresh process: minor page faults per CPU update of the Nature CNN at batch 32 under
    # glibc's static default (blocks over 128 KB mmapped afresh and unmapped on free; glibc
    # may or may not lift that threshold by itself, so the test pins it), then after the
    # setting. Each update allocates its activations and gradients anew.
    script = textwrap.dedent("""
        import ctypes, resource, numpy as np, torch
        torch.set_num_threads(1)
        from fastdqn import hardware
        tune = hardware.keep_freed_memory
        hardware.keep_freed_memory = lambda: False  # the learner must not set it yet
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: glibc's default
        from fastdqn.learner import Learner
        from fastdqn.networks import make_q_network
        rng = np.random.default_rng(0)
        frames = (32, 4, 84, 84)
        batch = {"obs": rng.integers(0, 256, frames, dtype=np.uint8),
                 "actions": rng.integers(0, 6, 32), "returns": np.zeros(32, np.float32),
                 "discounts": np.full(32, 0.9, np.float32),
                 "next_obs": rng.integers(0, 256, frames, dtype=np.uint8)}
        learner = Learner(make_q_network((4, 84, 84), 6, dueling=True), precision="fp32",
                          device="cpu")
        def faults_per_update(n=8):
            for _ in range(3):
                learner.update(batch)  # blocks first mapped here are not counted
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(n):
                learner.update(batch)
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / n
        before = faults_per_update()
        assert tune()
        print(before, faults_per_update())
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc only")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(float, out.stdout.split())
    assert before > 1000  # ~3,100 fresh 4 KB pages mapped on every update
    assert after < before / 10


def _reference_update(net, target, optimizer, batch, gamma_n_discounts=True):
    """fastdqn's update written plainly, contiguous NCHW, fp32: dueling double Q, Huber,
    importance weights, grad-norm clip 10, one Adam step. Returns |TD|."""
    obs, next_obs = (torch.as_tensor(batch[k]) for k in ("obs", "next_obs"))
    actions = torch.as_tensor(batch["actions"]).long()
    returns, discounts, weights = (torch.as_tensor(batch[k]).float()
                                   for k in ("returns", "discounts", "weights"))
    with torch.no_grad():
        best = net(next_obs).argmax(1, keepdim=True)
        y = returns + discounts * target(next_obs).gather(1, best).squeeze(1)
    q = net(obs).gather(1, actions[:, None]).squeeze(1)
    delta = q - y
    loss = (weights * F.huber_loss(q, y, reduction="none", delta=1.0)).mean()
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
    optimizer.step()
    return delta.detach().abs(), loss.detach()


def test_cpu_learner_channels_last_update_equals_the_plain_contiguous_update():
    torch.manual_seed(0)
    net = make_q_network((4, 84, 84), 6, dueling=True)
    reference, ref_target = copy.deepcopy(net), copy.deepcopy(net)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-3, eps=1.5e-4)
    learner = Learner(copy.deepcopy(net), precision="fp32", device="cpu", lr=1e-3,
                      max_grad_norm=10.0, target_update_period=1000)
    conv = learner.q_network.torso[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {"obs": rng.integers(0, 256, (16, 4, 84, 84), dtype=np.uint8),
                 "actions": rng.integers(0, 6, 16),
                 "returns": rng.normal(size=16).astype(np.float32),
                 "discounts": np.where(rng.random(16) < 0.2, 0.0, 0.97).astype(np.float32),
                 "next_obs": rng.integers(0, 256, (16, 4, 84, 84), dtype=np.uint8),
                 "weights": rng.uniform(0.2, 1.0, 16).astype(np.float32)}
        td_ref, loss_ref = _reference_update(reference, ref_target, ref_opt, batch)
        out = learner.update(batch)
        torch.testing.assert_close(out["td_abs"], td_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["loss"], loss_ref, rtol=1e-4, atol=1e-6)
    for mine, ref in zip(learner.q_network.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)


def test_training_prints_and_records_the_precision_it_chose(tmp_path, capsys, monkeypatch):
    from fastdqn.config import make_config
    from fastdqn.train import train

    monkeypatch.setattr(hardware, "cpu_info", lambda: _cpu(["avx2"]))  # a CPU without bf16
    cfg = make_config("cartpole", run_dir=str(tmp_path / "run"), total_steps=300, learning_starts=100,
                      eval_interval=0, final_eval=False, checkpoint_interval=0, precision="bf16")
    summary = train(cfg, progress=False)
    assert cfg.precision == "bf16" and summary["precision_used"] == "bf16"
    assert "SLOW" in summary["precision_reason"]
    assert summary["machine"]["cpu"] == "Test CPU" and summary["machine"]["cpu_flags"] == ["avx2"]
    assert "warning: precision bf16: asked for, but SLOW here" in capsys.readouterr().err
