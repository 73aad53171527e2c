"""The DQN update, checked against values worked out by hand on a tiny linear Q-network.

The tiny network: Q(s) = W s, s in R^2, 2 actions, no bias, so Q(s, a) = W[a] . s and
dQ(s, a)/dW[a] = s. Unless a test says otherwise:

    online W = [[1, 0],      target W' = [[4, 0],
                [0, 1]]                   [0, 1]]

Batch used by several tests (rows A and B):

    A: s = (4, 0), a = 0, R = 1,  discount = 0.5, s' = (1, 2)
    B: s = (0, 1), a = 1, R = -1, discount = 0 (terminal), s' = (100, 100)

    Q(s_A, 0) = 4            Q(s_B, 1) = 1            mean Q = 2.5
    Q_online(s'_A) = (1, 2) -> argmax a* = 1
    Q_target(s'_A) = (4, 2)
    double Q:  y_A = 1 + 0.5 * Q_target(s'_A, a*=1) = 1 + 0.5 * 2 = 2   delta_A = 4 - 2 = 2
    plain DQN: y_A = 1 + 0.5 * max(4, 2)           = 1 + 0.5 * 4 = 3   delta_A = 4 - 3 = 1
    terminal:  y_B = -1 + 0 * (...)                = -1                delta_B = 1 + 1 = 2
    Huber(d) = 0.5 d^2 if |d| <= 1 else |d| - 0.5:  Huber(2) = 1.5, Huber(1) = 0.5
    double loss = (1.5 + 1.5) / 2 = 1.5,  |TD| = (2, 2)
    plain  loss = (0.5 + 1.5) / 2 = 1.0,  |TD| = (1, 2)
"""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from fastdqn.learner import Learner, elementwise_loss
from fastdqn.networks import make_q_network


pytestmark = pytest.mark.usefixtures("one_torch_thread")


ONLINE_W = [[1.0, 0.0], [0.0, 1.0]]
TARGET_W = [[4.0, 0.0], [0.0, 1.0]]


class LinearQ(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(weight))

    def forward(self, obs):
        return self.lin(obs.float())


def tiny_learner(target_w=TARGET_W, **kwargs):
    kwargs.setdefault("lr", 0.1)
    learner = Learner(LinearQ(ONLINE_W), device="cpu", **kwargs)
    with torch.no_grad():
        learner.target_network.lin.weight.copy_(torch.tensor(target_w))
    return learner


def make_batch(rows, weights=None):
    """rows: (s, a, R, discount, s') tuples -> the replay's NumPy batch."""
    s, a, r, d, s2 = zip(*rows)
    n = len(rows)
    return {
        "obs": np.array(s, dtype=np.float32),
        "actions": np.array(a, dtype=np.int64),
        "returns": np.array(r, dtype=np.float32),
        "discounts": np.array(d, dtype=np.float32),
        "next_obs": np.array(s2, dtype=np.float32),
        "weights": np.ones(n, np.float32) if weights is None else np.array(weights, np.float32),
    }


ROW_A = ((4.0, 0.0), 0, 1.0, 0.5, (1.0, 2.0))
ROW_B = ((0.0, 1.0), 1, -1.0, 0.0, (100.0, 100.0))


def test_double_q_target_and_huber_loss_worked_example():
    out = tiny_learner().update(make_batch([ROW_A, ROW_B]))
    assert float(out["loss"]) == pytest.approx(1.5, abs=1e-6)
    np.testing.assert_allclose(out["td_abs"].numpy(), [2.0, 2.0], atol=1e-6)
    assert float(out["mean_q"]) == pytest.approx(2.5, abs=1e-6)


def test_plain_dqn_target_takes_the_max_of_the_target_net():
    out = tiny_learner(double_q=False).update(make_batch([ROW_A, ROW_B]))
    assert float(out["loss"]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out["td_abs"].numpy(), [1.0, 2.0], atol=1e-6)


def test_double_and_plain_agree_when_both_nets_pick_the_same_action():
    # target W' = 2 I: Q_target(s'_A) = (2, 4), argmax 1 == online argmax -> same y = 1 + 0.5*4
    same = [[2.0, 0.0], [0.0, 2.0]]
    for double_q in (True, False):
        out = tiny_learner(target_w=same, double_q=double_q).update(make_batch([ROW_A]))
        np.testing.assert_allclose(out["td_abs"].numpy(), [1.0], atol=1e-6)  # |4 - 3|


def test_terminal_transition_does_not_bootstrap():
    # Row B: discount 0, so y = R = -1 whatever Q(s') is (here 100 and 400 for the nets).
    out = tiny_learner().update(make_batch([ROW_B]))
    np.testing.assert_allclose(out["td_abs"].numpy(), [2.0], atol=1e-6)
    # the same row with a non-zero discount would bootstrap: y = -1 + 0.5 * Q'(s', a*)
    # a* = argmax (100, 100) = 0 (first), Q'(s', 0) = 400 -> y = 199, |TD| = 198
    bootstrapped = ((0.0, 1.0), 1, -1.0, 0.5, (100.0, 100.0))
    out = tiny_learner().update(make_batch([bootstrapped]))
    np.testing.assert_allclose(out["td_abs"].numpy(), [198.0], atol=1e-3)


def test_n_step_return_and_discount_are_applied_as_given():
    # 3-step transition with gamma = 0.5 and rewards 1, 1, 1:
    #   R = 1 + 0.5 + 0.25 = 1.75,  discount = 0.5^3 = 0.125
    #   y = 1.75 + 0.125 * Q'(s', a*=1) = 1.75 + 0.125 * 2 = 2.0;  Q(s, 0) = 4 -> |TD| = 2
    # (a one-step discount 0.5 would give y = 2.75, |TD| = 1.25)
    row = ((4.0, 0.0), 0, 1.75, 0.125, (1.0, 2.0))
    out = tiny_learner().update(make_batch([row]))
    np.testing.assert_allclose(out["td_abs"].numpy(), [2.0], atol=1e-6)


def _grad(learner, batch):
    learner.q_network.zero_grad(set_to_none=True)
    loss, _, _ = learner.compute_loss(batch)
    loss.backward()
    return learner.q_network.lin.weight.grad.clone(), float(loss.detach())


def test_importance_weights_scale_each_samples_gradient():
    # Row A alone: delta = 2 > 1, Huber slope 1, so dL/dW[0] = w * 1 * s_A / B = w * (4, 0).
    learner = tiny_learner()
    g1, loss1 = _grad(learner, make_batch([ROW_A], weights=[1.0]))
    g2, loss2 = _grad(learner, make_batch([ROW_A], weights=[2.0]))
    torch.testing.assert_close(g1, torch.tensor([[4.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(g2, torch.tensor([[8.0, 0.0], [0.0, 0.0]]))
    assert (loss1, loss2) == (pytest.approx(1.5), pytest.approx(3.0))
    # Rows A and B with weights (2, 1): loss = (2 * 1.5 + 1 * 1.5) / 2 = 2.25,
    # dL/dW[0] = 2 * (4, 0) / 2 = (4, 0);  dL/dW[1] = 1 * (0, 1) / 2 = (0, 0.5)
    g, loss = _grad(learner, make_batch([ROW_A, ROW_B], weights=[2.0, 1.0]))
    torch.testing.assert_close(g, torch.tensor([[4.0, 0.0], [0.0, 0.5]]))
    assert loss == pytest.approx(2.25)


def test_missing_weights_mean_uniform_replay():
    batch = make_batch([ROW_A, ROW_B])
    del batch["weights"]
    assert float(tiny_learner().update(batch)["loss"]) == pytest.approx(1.5, abs=1e-6)


def test_elementwise_losses_match_their_formulas():
    d = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0])
    expected_huber = [2.5, 0.5, 0.125, 0.0, 0.03125, 0.5, 1.5]
    torch.testing.assert_close(elementwise_loss(d, "huber"), torch.tensor(expected_huber))
    torch.testing.assert_close(elementwise_loss(d, "huber"),
                               nn.functional.huber_loss(d, torch.zeros_like(d), reduction="none"))
    torch.testing.assert_close(elementwise_loss(d, "mse"), 0.5 * d**2)
    torch.testing.assert_close(elementwise_loss(d, "pseudo_huber"), torch.sqrt(d**2 + 1) - 1)
    with pytest.raises(ValueError):
        elementwise_loss(d, "l1")


@pytest.mark.parametrize("kind, expected", [
    # Rows A, B (double Q): delta = (2, 2)
    ("huber", 1.5),                   # |2| - 0.5
    ("mse", 2.0),                     # 0.5 * 2^2
    ("pseudo_huber", 5**0.5 - 1),     # sqrt(2^2 + 1) - 1
])
def test_learner_uses_the_chosen_loss(kind, expected):
    out = tiny_learner(loss=kind).update(make_batch([ROW_A, ROW_B]))
    assert float(out["loss"]) == pytest.approx(expected, abs=1e-6)


def test_gradient_norm_is_clipped():
    # Row A: raw gradient [[4, 0], [0, 0]], norm 4. max_grad_norm=1 rescales it to norm 1
    # (the clipped gradient is what stays in .grad after the step).
    learner = tiny_learner(max_grad_norm=1.0)
    learner.update(make_batch([ROW_A]))
    torch.testing.assert_close(learner.q_network.lin.weight.grad,
                               torch.tensor([[1.0, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
    learner = tiny_learner(max_grad_norm=10.0)  # norm 4 < 10: untouched
    learner.update(make_batch([ROW_A]))
    torch.testing.assert_close(learner.q_network.lin.weight.grad,
                               torch.tensor([[4.0, 0.0], [0.0, 0.0]]))
    learner = tiny_learner(max_grad_norm=None)
    learner.update(make_batch([ROW_A]))
    torch.testing.assert_close(learner.q_network.lin.weight.grad,
                               torch.tensor([[4.0, 0.0], [0.0, 0.0]]))


def _weights(net):
    return net.lin.weight.detach().clone()


def test_hard_target_update_copies_only_every_C_updates():
    learner = tiny_learner(target_update_period=3)
    batch = make_batch([ROW_A, ROW_B])
    initial_target = _weights(learner.target_network)
    online_after = []
    for step in range(1, 7):
        learner.update(batch)
        online_after.append(_weights(learner.q_network))
        target = _weights(learner.target_network)
        if step < 3:
            assert torch.equal(target, initial_target), step
        elif step < 6:
            assert torch.equal(target, online_after[2]), step  # the copy made at update 3
        else:
            assert torch.equal(target, online_after[5]), step  # and the next at update 6
    assert not torch.equal(online_after[2], online_after[5])  # the online net did move
    assert learner.num_updates == 6


def test_polyak_target_update_moves_tau_of_the_way_every_update():
    learner = tiny_learner(tau=0.1, target_update_period=1)  # tau > 0 wins over C
    batch = make_batch([ROW_A, ROW_B])
    target = torch.tensor(TARGET_W)
    for _ in range(3):
        learner.update(batch)
        online = _weights(learner.q_network)
        target = 0.9 * target + 0.1 * online
        torch.testing.assert_close(_weights(learner.target_network), target, rtol=0, atol=1e-6)
    # e.g. W'[0, 0] after one update: 0.9 * 4 + 0.1 * (1 - lr * ...) -- not a copy
    assert not torch.allclose(_weights(learner.target_network), _weights(learner.q_network))


def test_rmsprop_step_is_the_nature_dqn_centered_rmsprop_worked_by_hand():
    # Row A alone: delta = 2 > 1, so the Huber gradient w.r.t. Q(s_A, 0) is 1 and the gradient
    # of W is [[4, 0], [0, 0]] (norm 4 < 10: not clipped). Centered RMSprop, alpha 0.95,
    # eps 0.01, first step from zero state:
    #   square_avg = 0.05 * 16 = 0.8,  grad_avg = 0.05 * 4 = 0.2
    #   denom = sqrt(0.8 - 0.2^2) + 0.01 = sqrt(0.76) + 0.01,  W[0,0] -= 0.1 * 4 / denom
    # (non-centered would give 1 - 0.4 / (sqrt(0.8) + 0.01); alpha 0.99 or another eps differ too)
    learner = tiny_learner(optimizer="rmsprop")
    assert isinstance(learner.optimizer, torch.optim.RMSprop)
    learner.update(make_batch([ROW_A]))
    expected = 1.0 - 0.1 * 4.0 / (math.sqrt(0.76) + 0.01)  # 0.546372...
    torch.testing.assert_close(learner.q_network.lin.weight,
                               torch.tensor([[expected, 0.0], [0.0, 1.0]]), rtol=0, atol=1e-6)


def test_adam_eps_option():
    learner = tiny_learner(adam_eps=1e-3)
    assert isinstance(learner.optimizer, torch.optim.Adam)
    assert learner.optimizer.param_groups[0]["eps"] == 1e-3
    with pytest.raises(ValueError):
        tiny_learner(optimizer="sgd")


def test_set_lr_changes_the_step_size():
    learner = tiny_learner()
    learner.set_lr(0.0)
    before = _weights(learner.q_network)
    learner.update(make_batch([ROW_A]))
    assert torch.equal(_weights(learner.q_network), before)
    learner.set_lr(0.1)
    learner.update(make_batch([ROW_A]))
    assert not torch.equal(_weights(learner.q_network), before)


def test_update_many_on_cpu_equals_consecutive_updates():
    batches = [make_batch([ROW_A, ROW_B], weights=[w, 1.0]) for w in (1.0, 0.5, 2.0)]
    a, b = tiny_learner(target_update_period=2), tiny_learner(target_update_period=2)
    many = a.update_many(batches)
    single = [b.update(x) for x in batches]
    assert many["td_abs"].shape == (3, 2) and many["loss"].shape == (3,)
    for key in ("loss", "td_abs", "mean_q"):
        torch.testing.assert_close(many[key], torch.stack([s[key] for s in single]))
    assert torch.equal(_weights(a.q_network), _weights(b.q_network))
    assert torch.equal(_weights(a.target_network), _weights(b.target_network))


def test_state_dict_round_trip_continues_identically():
    batch = make_batch([ROW_A, ROW_B])
    a = tiny_learner(target_update_period=3)
    for _ in range(2):
        a.update(batch)
    b = tiny_learner(target_w=[[0.0, 0.0], [0.0, 0.0]], target_update_period=3)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.num_updates == 2
    for _ in range(2):  # the 3rd update syncs the target in both
        out_a, out_b = a.update(batch), b.update(batch)
        torch.testing.assert_close(out_a["td_abs"], out_b["td_abs"], rtol=0, atol=0)
    assert torch.equal(_weights(a.q_network), _weights(b.q_network))
    assert torch.equal(_weights(a.target_network), _weights(b.target_network))


def _atari_batch(batch_size, seed):
    rng = np.random.default_rng(seed)
    frames = (batch_size, 4, 84, 84)
    return {
        "obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "actions": rng.integers(0, 6, batch_size),
        "returns": rng.normal(size=batch_size).astype(np.float32),
        "discounts": np.where(rng.random(batch_size) < 0.1, 0.0, 0.99**3).astype(np.float32),
        "next_obs": rng.integers(0, 256, frames, dtype=np.uint8),
        "weights": rng.uniform(0.2, 1.0, batch_size).astype(np.float32),
    }


def test_bf16_update_stays_close_to_fp32():
    torch.manual_seed(0)
    net = make_q_network((4, 84, 84), 6)
    learners = {p: Learner(copy.deepcopy(net), precision=p, device="cpu", lr=1e-4)
                for p in ("fp32", "bf16")}
    bf16_net = learners["bf16"].q_network
    with learners["bf16"].autocast():  # bf16 really is in use in the trunk, Q is fp32
        assert bf16_net.torso(torch.zeros(1, 4, 84, 84)).dtype == torch.bfloat16
        assert bf16_net(torch.zeros(1, 4, 84, 84, dtype=torch.uint8)).dtype == torch.float32
    batch = _atari_batch(32, seed=1)
    start = [p.detach().clone() for p in net.parameters()]
    out = {p: learner.update(batch) for p, learner in learners.items()}
    assert out["bf16"]["loss"].dtype == torch.float32
    assert float(out["bf16"]["loss"]) == pytest.approx(float(out["fp32"]["loss"]), rel=0.02)
    torch.testing.assert_close(out["bf16"]["td_abs"], out["fp32"]["td_abs"], rtol=0.05,
                               atol=0.02)
    assert float(out["bf16"]["mean_q"]) == pytest.approx(float(out["fp32"]["mean_q"]), abs=0.02)
    # the weight changes point the same way (Adam's first step is ~lr * sign(grad))
    step = {p: torch.cat([(q.detach() - s).flatten() for q, s in
                          zip(learner.q_network.parameters(), start)])
            for p, learner in learners.items()}
    cosine = torch.nn.functional.cosine_similarity(step["bf16"], step["fp32"], dim=0)
    assert cosine > 0.9, float(cosine)


@pytest.mark.slow  # torch.compile takes ~15 s on a 2-core machine
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from inside torch.compile
def test_compiled_update_matches_eager():
    torch.manual_seed(0)
    net = make_q_network((4,), 2)
    rng = np.random.default_rng(0)
    batches = [{
        "obs": rng.normal(size=(16, 4)).astype(np.float32),
        "actions": rng.integers(0, 2, 16),
        "returns": rng.normal(size=16).astype(np.float32),
        "discounts": np.full(16, 0.99, np.float32),
        "next_obs": rng.normal(size=(16, 4)).astype(np.float32),
        "weights": rng.uniform(0.5, 1.0, 16).astype(np.float32),
    } for _ in range(3)]
    eager = Learner(copy.deepcopy(net), device="cpu", target_update_period=2)
    compiled = Learner(copy.deepcopy(net), device="cpu", target_update_period=2, compile=True)
    for batch in batches:
        out_e, out_c = eager.update(batch), compiled.update(batch)
        torch.testing.assert_close(out_c["td_abs"], out_e["td_abs"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out_c["loss"], out_e["loss"], rtol=1e-5, atol=1e-6)
    for p_e, p_c in zip(eager.target_network.parameters(), compiled.target_network.parameters()):
        torch.testing.assert_close(p_c, p_e, rtol=1e-5, atol=1e-6)


# The CUDA graph's own code, run eagerly on the CPU (tests/test_learner_cuda.py replays the
# real graph where a GPU exists): the device-side target sync and counter, and the warm-up's
# save / restore, must reproduce plain eager updates.

def _stacked(batches):
    from fastdqn.learner import BATCH_FIELDS, _as_tensor
    return {name: torch.stack([_as_tensor(b[name], name, b) for b in batches])
            for name in BATCH_FIELDS}


def test_graph_body_with_device_side_sync_equals_eager_updates():
    k, C = 2, 3
    batches = [make_batch([ROW_A, ROW_B], weights=[w, 1.0]) for w in (1.0, 0.5, 2.0, 1.5, 1.0, 0.7)]
    graph_like, eager = tiny_learner(target_update_period=C), tiny_learner(target_update_period=C)
    out = torch.empty(k, 2 + 2)
    for i in range(0, len(batches), k):
        graph_like._graph_updates(_stacked(batches[i:i + k]), out)  # one "replay"
        graph_like.num_updates += k
        ref = [eager.update(b) for b in batches[i:i + k]]
        torch.testing.assert_close(out[:, :2], torch.stack([r["td_abs"] for r in ref]))
        torch.testing.assert_close(out[:, 2], torch.stack([r["loss"] for r in ref]))
        assert torch.equal(_weights(graph_like.target_network), _weights(eager.target_network))
        assert int(graph_like._num_updates_t) == eager.num_updates
    assert torch.equal(_weights(graph_like.q_network), _weights(eager.q_network))


@pytest.mark.parametrize("warm_before", [False, True])
def test_warm_up_snapshot_restore_leaves_no_trace(warm_before):
    batches = [make_batch([ROW_A, ROW_B], weights=[w, 1.0]) for w in (1.0, 0.5, 2.0)]
    learner, reference = tiny_learner(), tiny_learner()
    if warm_before:  # optimizer state exists already: it is copied back
        learner.update(batches[0])
        reference.update(batches[0])
    saved = learner._snapshot()
    out = torch.empty(2, 4)
    for _ in range(2):  # what _capture's warm-up does
        learner._graph_updates(_stacked(batches[1:]), out)
    learner._restore(saved)
    assert int(learner._num_updates_t) == reference.num_updates
    for b in batches[1:]:
        torch.testing.assert_close(learner.update(b)["td_abs"], reference.update(b)["td_abs"],
                                   rtol=0, atol=0)
    assert torch.equal(_weights(learner.q_network), _weights(reference.q_network))
    assert torch.equal(_weights(learner.target_network), _weights(reference.target_network))


def test_learner_bench_quick_path_reports_every_mode(tmp_path, capsys):
    import json

    from bench import learner as bench

    out = tmp_path / "learner.json"
    report = bench.main(["--quick", "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["benchmark"] == "learner" and report["device"] == "cpu"
    rows = {(r["batch_size"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(4, "plain"), (4, "cleanrl"), (4, "fp32-eager"), (4, "bf16-eager")}
    for r in rows.values():
        assert {"updates_per_s", "samples_per_s", "ms_per_update", "ratio", "warmup_s"} <= set(r)
        assert len(r["rounds"]) >= 1 and all(x > 0 for x in r["rounds"])
    assert report["ratio_to"] == "plain" and rows[(4, "plain")]["ratio"] == 1.0
    table = capsys.readouterr().out
    assert "bf16-eager" in table and "cleanrl" in table
    assert "flags:" in table  # the CPU's vector / bf16 flags are printed with the figures


def test_gradient_clip_takes_the_norm_over_every_parameter():
    # The CPU path computes the norm itself; torch's clip_grad_norm_ is the reference, on
    # gradients spread over several tensors (the tiny net above has all of it in one).
    torch.manual_seed(0)
    learner = Learner(make_q_network((4,), 3, hidden=(32, 32)), max_grad_norm=0.5, device="cpu")
    reference = copy.deepcopy(learner.q_network)
    for p, q in zip(learner.q_network.parameters(), reference.parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    learner._clip_grad_norm(in_graph=False)
    nn.utils.clip_grad_norm_(list(reference.parameters()), 0.5)
    for p, q in zip(learner.q_network.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_bf16_target_kept_cast_gives_the_same_numbers_as_casting_every_time():
    # CPU bf16 with hard updates keeps a bf16 copy of the target (refreshed at each sync)
    # instead of letting autocast cast it on every forward: same rounding, same results.
    torch.manual_seed(0)
    net = make_q_network((4,), 3, hidden=(32, 32))
    kept, recast = (Learner(copy.deepcopy(net), precision="bf16", device="cpu",
                            target_update_period=2) for _ in range(2))
    assert kept._target_bf16 is not None
    recast._target_bf16 = None  # autocast casts the fp32 target on every forward
    rng = np.random.default_rng(0)
    for _ in range(5):  # syncs after updates 2 and 4
        batch = {"obs": rng.normal(size=(8, 4)).astype(np.float32),
                 "actions": rng.integers(0, 3, 8),
                 "returns": rng.normal(size=8).astype(np.float32),
                 "discounts": np.full(8, 0.9, np.float32),
                 "next_obs": rng.normal(size=(8, 4)).astype(np.float32)}
        torch.testing.assert_close(kept.update(batch)["td_abs"], recast.update(batch)["td_abs"],
                                   rtol=0, atol=0)
    for a, b in zip(kept.target_network.parameters(), recast.target_network.parameters()):
        assert torch.equal(a, b)


def test_learner_bench_profile_reports_top_ops_and_page_faults(capsys):
    from bench import learner as bench

    report = bench.main(["--profile", "--quick", "--device", "cpu", "--batch-sizes", "4",
                         "--modes", "plain,fp32-eager"])
    assert set(report["modes"]) == {"plain", "fp32-eager"} and report["batch_size"] == 4
    for mode in report["modes"].values():
        assert mode["ms_per_update"] > 0 and mode["page_faults_per_update"] >= 0
        ops = [op["op"] for op in mode["top_ops"]]
        assert any("conv" in op for op in ops)  # the update's convolutions were profiled
    assert "page faults/update" in capsys.readouterr().out


def test_learner_bench_times_the_network_it_is_given():
    from bench import learner as bench

    report = bench.main(["--quick", "--device", "cpu", "--torso", "nips", "--hidden", "256"])
    nips = make_q_network((4, 84, 84), 6, dueling=True, hidden=256, torso="nips")
    assert report["parameters"] == sum(p.numel() for p in nips.parameters()) and "torso nips" in report["network"]
    assert {r["mode"] for r in report["results"]} == {"fp32-eager", "bf16-eager"}  # no Nature-only baselines
    with pytest.raises(SystemExit):  # a baseline of another network would give a meaningless ratio
        bench.main(["--device", "cpu", "--torso", "nips", "--modes", "plain,fp32-eager"])


def test_learner_bench_times_the_frame_size_it_is_given():
    from bench import learner as bench

    report = bench.main(["--quick", "--device", "cpu", "--torso", "nips", "--hidden", "256", "--frame-size", "42"])
    small = make_q_network((4, 42, 42), 6, dueling=True, hidden=256, torso="nips")
    assert report["parameters"] == sum(p.numel() for p in small.parameters()) and "(4,42,42)" in report["network"]
    with pytest.raises(SystemExit):  # the baselines are written for 84x84 frames
        bench.main(["--device", "cpu", "--frame-size", "42", "--modes", "plain,fp32-eager"])


def test_learner_bench_profiles_and_reorders_the_network_it_is_given(capsys):
    from bench import learner as bench

    report = bench.main(["--profile", "--quick", "--device", "cpu", "--batch-sizes", "4", "--modes", "fp32-eager",
                         "--torso", "nips", "--hidden", "256"])
    shapes = " ".join(op["shapes"] for op in report["modes"]["fp32-eager"]["top_ops"])
    assert report["torso"] == "nips" and "[16, 4, 8, 8]" in shapes  # the 2013 conv1, not the Nature one
    report = bench.main(["--reorder", "--quick", "--batch-sizes", "4"])
    assert set(report["ms"]) == {f"{way}, {x}" for way in ("torch", "fastdqn") for x in ("contiguous", "replay view")}
    assert "fastdqn, replay view" in capsys.readouterr().out
