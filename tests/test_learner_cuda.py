"""The CUDA-graph learner against the eager one (skipped without a CUDA GPU).

A graph replays what was captured: these tests pin that K graph updates equal K eager
updates on the same batches (and the CPU reference update), and that what must change
between replays (update counter, target-sync decision, lr) does change. One test runs on
the CPU: update_many's schedule of graph replays and hard target copies, with the graph
replaced by the code it captures.
"""

import copy

import numpy as np
import pytest
import torch

from fastdqn.learner import BATCH_FIELDS, Learner, _as_tensor
from fastdqn.networks import make_q_network


def needs_cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(autouse=True)
def _same_kernels_everywhere():
    # Deterministic cuDNN, no TF32: eager and graph then run identical fp32 arithmetic.
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = flags


def atari_batches(n, batch_size=32, seed=0):
    rng = np.random.default_rng(seed)
    frames = (batch_size, 4, 84, 84)
    return [{
        "obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "actions": rng.integers(0, 6, batch_size),
        "returns": rng.normal(size=batch_size).astype(np.float32),
        "discounts": np.where(rng.random(batch_size) < 0.1, 0.0, 0.97).astype(np.float32),
        "next_obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "weights": rng.uniform(0.2, 1.0, batch_size).astype(np.float32),
    } for _ in range(n)]


def vector_batches(n, batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [{
        "obs": rng.normal(size=(batch_size, 4)).astype(np.float32),
        "actions": rng.integers(0, 2, batch_size),
        "returns": rng.normal(size=batch_size).astype(np.float32),
        "discounts": np.full(batch_size, 0.99, np.float32),
        "next_obs": rng.normal(size=(batch_size, 4)).astype(np.float32),
        "weights": np.ones(batch_size, np.float32),
    } for _ in range(n)]


def pair(net, k, **kwargs):
    """(graph learner, eager learner) from the same initial weights; fp32 unless asked
    (precision auto would be bf16 on most GPUs)."""
    kwargs.setdefault("lr", 1e-3)
    kwargs.setdefault("precision", "fp32")
    graph = Learner(copy.deepcopy(net), device="cuda", cuda_graph=True, updates_per_graph=k,
                    **kwargs)
    eager = Learner(copy.deepcopy(net), device="cuda", **kwargs)
    return graph, eager


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


@needs_cuda
def test_graph_replays_equal_eager_updates_fp32():
    torch.manual_seed(0)
    k = 4
    # C = 6: hard copies at updates 6 and 12, in the middle and at the end of a replay.
    graph, eager = pair(make_q_network((4, 84, 84), 6), k, target_update_period=6)
    batches = atari_batches(3 * k)
    for i in range(3):
        chunk = batches[i * k:(i + 1) * k]
        out = graph.update_many(chunk)
        ref = [eager.update(b) for b in chunk]
        assert out["td_abs"].device.type == "cpu" and out["td_abs"].shape == (k, 32)
        torch.testing.assert_close(out["td_abs"], torch.stack([r["td_abs"] for r in ref]),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["loss"], torch.stack([r["loss"] for r in ref]),
                                   rtol=1e-5, atol=1e-6)
        assert_same(params(graph.q_network), params(eager.q_network))
        assert_same(params(graph.target_network), params(eager.target_network))
    assert graph.num_updates == eager.num_updates == 3 * k
    for p_g, p_e in zip(graph.q_network.parameters(), eager.q_network.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(graph.optimizer.state[p_g][key],
                                       eager.optimizer.state[p_e][key], rtol=1e-5, atol=1e-8)


@needs_cuda
def test_target_sync_and_counter_change_between_replays():
    torch.manual_seed(0)
    # K = 2, C = 3: replay 1 = updates 1-2 (no copy), replay 2 = updates 3-4 (copy after 3,
    # not after 4), replay 3 = updates 5-6 (copy after 6). A sync decision frozen at
    # capture would copy never or every replay.
    graph, eager = pair(make_q_network((4,), 2), 2, target_update_period=3)
    initial_target = params(graph.target_network)
    batches = vector_batches(6)
    online_after = []
    for b in batches:
        eager.update(b)
        online_after.append(params(eager.q_network))

    graph.update_many(batches[0:2])
    assert_same(params(graph.target_network), initial_target, rtol=0, atol=0)
    assert int(graph._num_updates_t) == graph.num_updates == 2

    graph.update_many(batches[2:4])
    assert_same(params(graph.target_network), online_after[2])  # copied after update 3
    assert_same(params(graph.q_network), online_after[3])
    assert not torch.allclose(params(graph.target_network)[0], online_after[3][0])
    assert int(graph._num_updates_t) == 4

    graph.update_many(batches[4:6])
    assert_same(params(graph.target_network), online_after[5])  # copied after update 6
    assert int(graph._num_updates_t) == graph.num_updates == 6


@needs_cuda
def test_set_lr_between_replays_reaches_the_graph():
    torch.manual_seed(0)
    net = make_q_network((4,), 2)
    graph, eager = pair(net, 2)
    untouched, _ = pair(net, 2)
    batches = vector_batches(4)
    for learner in (graph, untouched):
        learner.update_many(batches[:2])
    eager.update(batches[0])
    eager.update(batches[1])
    graph.set_lr(1e-2)
    eager.set_lr(1e-2)
    graph.update_many(batches[2:])
    untouched.update_many(batches[2:])
    eager.update(batches[2])
    eager.update(batches[3])
    assert_same(params(graph.q_network), params(eager.q_network))
    assert not torch.allclose(params(graph.q_network)[0], params(untouched.q_network)[0])


@needs_cuda
def test_polyak_and_bf16_graph_match_eager():
    torch.manual_seed(0)
    graph, eager = pair(make_q_network((4, 84, 84), 6), 2, tau=0.05, precision="bf16")
    batches = atari_batches(4, seed=3)
    for i in range(2):
        out = graph.update_many(batches[2 * i:2 * i + 2])
        ref = [eager.update(b) for b in batches[2 * i:2 * i + 2]]
        torch.testing.assert_close(out["loss"], torch.stack([r["loss"] for r in ref]),
                                   rtol=1e-3, atol=1e-4)
    assert_same(params(graph.q_network), params(eager.q_network), rtol=1e-3, atol=1e-5)
    assert_same(params(graph.target_network), params(eager.target_network), rtol=1e-3,
                atol=1e-5)


@needs_cuda
def test_checkpoint_reload_recaptures_and_continues():
    torch.manual_seed(0)
    graph, eager = pair(make_q_network((4,), 2), 2, target_update_period=3)
    batches = vector_batches(6)
    graph.update_many(batches[:2])
    for b in batches[:2]:
        eager.update(b)
    fresh = Learner(make_q_network((4,), 2), device="cuda", cuda_graph=True, lr=1e-3,
                    updates_per_graph=2, target_update_period=3)
    fresh.load_state_dict(copy.deepcopy(graph.state_dict()))
    fresh.update_many(batches[2:4])
    fresh.update_many(batches[4:6])
    for b in batches[2:]:
        eager.update(b)
    assert_same(params(fresh.q_network), params(eager.q_network))
    assert_same(params(fresh.target_network), params(eager.target_network))


@needs_cuda
def test_other_batch_counts_run_eagerly_and_sizes_recapture():
    torch.manual_seed(0)
    graph, eager = pair(make_q_network((4,), 2), 2)
    three = vector_batches(3)
    out = graph.update_many(three)  # 3 != K: eager loop
    assert out["td_abs"].shape == (3, 16) and graph.num_updates == 3
    bigger = vector_batches(2, batch_size=32, seed=1)
    out = graph.update_many(bigger)  # graph for B = 32
    assert out["td_abs"].shape == (2, 32)
    out = graph.update_many(vector_batches(2, seed=2))  # B = 16: captured anew
    assert out["td_abs"].shape == (2, 16) and graph.num_updates == 7
    for b in three + bigger + vector_batches(2, seed=2):
        eager.update(b)
    assert_same(params(graph.q_network), params(eager.q_network))


def grad_norm(module):
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                       for p in module.parameters()])))


@needs_cuda
def test_adam_on_cuda_is_the_fused_capturable_kernel():
    graph, _ = pair(make_q_network((4,), 2), 2)
    group = graph.optimizer.param_groups[0]
    assert group["fused"] and group["capturable"] and isinstance(group["lr"], torch.Tensor)


@needs_cuda
def test_gradient_clipping_is_active_inside_the_graph():
    torch.manual_seed(0)
    net = make_q_network((4, 84, 84), 6)
    batches = atari_batches(4, seed=5)
    probe = Learner(copy.deepcopy(net), device="cuda", precision="fp32")
    probe.compute_loss(batches[0])[0].backward()
    max_norm = 0.01
    assert grad_norm(probe.q_network) > 20 * max_norm  # so the clip must act on every update
    graph, eager = pair(net, 2, max_grad_norm=max_norm)
    for i in (0, 2):
        graph.update_many(batches[i:i + 2])
        for b in batches[i:i + 2]:
            eager.update(b)
        # the graph's gradients are those of its last captured update, clipped to max_norm
        assert grad_norm(graph.q_network) == pytest.approx(max_norm, rel=1e-4)
        assert_same(params(graph.q_network), params(eager.q_network))
    assert_same([p.grad for p in graph.q_network.parameters()], [p.grad for p in eager.q_network.parameters()])


@needs_cuda
def test_rmsprop_graph_matches_eager():
    torch.manual_seed(0)
    # C = 4 = 2K: the hard copy after update 4 falls at the end of a replay (made on the host)
    graph, eager = pair(make_q_network((4, 84, 84), 6), 2, optimizer="rmsprop", target_update_period=4)
    assert graph.optimizer.param_groups[0]["capturable"]
    batches = atari_batches(6, seed=7)
    for i in range(0, 6, 2):
        out = graph.update_many(batches[i:i + 2])
        ref = [eager.update(b) for b in batches[i:i + 2]]
        torch.testing.assert_close(out["td_abs"], torch.stack([r["td_abs"] for r in ref]), rtol=1e-5, atol=1e-5)
        assert_same(params(graph.q_network), params(eager.q_network))
        assert_same(params(graph.target_network), params(eager.target_network))
    for p_g, p_e in zip(graph.q_network.parameters(), eager.q_network.parameters()):
        for key in ("square_avg", "grad_avg", "step"):
            torch.testing.assert_close(graph.optimizer.state[p_g][key], eager.optimizer.state[p_e][key],
                                       rtol=1e-5, atol=1e-8)


@needs_cuda
def test_hard_copies_outside_the_graph_and_misaligned_groups_match_eager():
    torch.manual_seed(0)
    # C = 4, K = 2: copies wait for the end of a replay. One eager update first shifts the
    # groups off C: updates 2-3 replay, 4-5 hold a copy after 4 and run eagerly, 6-7 replay.
    graph, eager = pair(make_q_network((4,), 2), 2, target_update_period=4)
    batches = vector_batches(9)
    graph.update(batches[0])
    eager.update(batches[0])
    for i in range(1, 9, 2):
        graph.update_many(batches[i:i + 2])
        for b in batches[i:i + 2]:
            eager.update(b)
        assert_same(params(graph.q_network), params(eager.q_network))
        assert_same(params(graph.target_network), params(eager.target_network))
    assert graph.num_updates == eager.num_updates == 9 and graph._graph is not None


@needs_cuda
def test_graph_matches_the_cpu_reference_update():
    torch.manual_seed(0)
    net = make_q_network((4, 84, 84), 6)
    k = 2
    graph = Learner(copy.deepcopy(net), device="cuda", cuda_graph=True, updates_per_graph=k, lr=1e-3,
                    target_update_period=3, precision="fp32")
    cpu = Learner(copy.deepcopy(net), device="cpu", lr=1e-3, target_update_period=3, precision="fp32")
    batches = atari_batches(3 * k, seed=11)
    for i in range(0, 3 * k, k):
        out = graph.update_many(batches[i:i + k])
        ref = [cpu.update(b) for b in batches[i:i + k]]
        torch.testing.assert_close(out["td_abs"], torch.stack([r["td_abs"] for r in ref]), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out["loss"], torch.stack([r["loss"] for r in ref]), rtol=1e-4, atol=1e-5)
    cpu_params = [p.contiguous() for p in params(cpu.q_network)]  # (the CPU's fp32 net is channels_last)
    assert_same([p.cpu() for p in params(graph.q_network)], cpu_params, rtol=1e-4, atol=1e-5)
    assert_same([p.cpu() for p in params(graph.target_network)],
                [p.contiguous() for p in params(cpu.target_network)], rtol=1e-4, atol=1e-5)


@needs_cuda
def test_batches_already_on_the_device_go_through_the_staging():
    # What a device-resident replay hands over: obs and next_obs as CUDA tensors.
    torch.manual_seed(0)
    graph, eager = pair(make_q_network((4, 84, 84), 6), 2)
    batches = atari_batches(4, seed=13)
    on_device = [{**b, "obs": torch.from_numpy(b["obs"]).cuda(), "next_obs": torch.from_numpy(b["next_obs"]).cuda()}
                 for b in batches]
    for i in (0, 2):
        out = graph.update_many(on_device[i:i + 2])
        ref = [eager.update(b) for b in batches[i:i + 2]]
        torch.testing.assert_close(out["td_abs"], torch.stack([r["td_abs"] for r in ref]), rtol=1e-5, atol=1e-5)
    assert_same(params(graph.q_network), params(eager.q_network))
    out = graph.update(on_device[0])  # the eager path takes them too
    ref = eager.update(batches[0])
    torch.testing.assert_close(out["td_abs"], ref["td_abs"], rtol=1e-5, atol=1e-5)


class _GraphBody:
    """Stands in for the captured graph on the CPU: replay() runs the code it would capture."""

    def __init__(self, learner, batches):
        self.learner, self.replays = learner, []
        learner._graph_staging = self
        learner._graph_out = torch.empty(len(batches), batches[0]["actions"].shape[0] + 2)
        self.load(batches)

    def matches(self, batches):
        return len(batches) == self.learner._graph_out.shape[0]

    def load(self, batches):
        self.dev = {name: torch.stack([_as_tensor(b[name], name, b) for b in batches]) for name in BATCH_FIELDS}
        return self.dev

    def replay(self):
        self.replays.append(self.learner.num_updates)
        self.learner._graph_updates(self.dev, self.learner._graph_out)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("C,K,lead,replays", [
    (4, 2, 0, [0, 2, 4, 6, 8]),  # copies after the replays ending at 4 and 8, made by the host
    (4, 2, 1, [1, 5, 9]),  # shifted by one: groups 3-4 and 7-8 hold a copy and run eagerly
    (3, 2, 0, [0, 2, 4, 6, 8]),  # C not a multiple of K: the graph decides each copy itself
])
def test_update_many_schedules_replays_and_hard_copies_like_eager_updates(C, K, lead, replays):
    torch.manual_seed(0)
    net = make_q_network((4,), 2)
    graph = Learner(copy.deepcopy(net), device="cpu", lr=1e-3, target_update_period=C, updates_per_graph=K)
    eager = Learner(copy.deepcopy(net), device="cpu", lr=1e-3, target_update_period=C)
    graph.cuda_graph = True  # what update_many checks; the graph itself is _GraphBody
    graph._capture = lambda batches: setattr(graph, "_graph", _GraphBody(graph, batches))
    graph._to_host = lambda packed: packed.clone()
    batches = vector_batches(lead + 10)
    for b in batches[:lead]:
        graph.update(b)
    for i in range(lead, lead + 10, K):
        graph.update_many(batches[i:i + K])
    for b in batches:
        eager.update(b)
    assert graph._graph.replays == replays
    assert graph.num_updates == eager.num_updates == lead + 10
    assert_same(params(graph.q_network), params(eager.q_network), rtol=0, atol=0)
    assert_same(params(graph.target_network), params(eager.target_network), rtol=0, atol=0)
