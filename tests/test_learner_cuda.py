"""The CUDA-graph learner against the eager one (skipped without a CUDA GPU).

A graph replays what was captured: these tests pin that K graph updates equal K eager
updates on the same batches, and that what must change between replays (update counter,
target-sync decision, lr) does change.
"""

import copy

import numpy as np
import pytest
import torch

from fastdqn.learner import Learner
from fastdqn.networks import make_q_network

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


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
    """(graph learner, eager learner) from the same initial weights."""
    kwargs.setdefault("lr", 1e-3)
    graph = Learner(copy.deepcopy(net), device="cuda", cuda_graph=True, updates_per_graph=k,
                    **kwargs)
    eager = Learner(copy.deepcopy(net), device="cuda", **kwargs)
    return graph, eager


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_same(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


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
