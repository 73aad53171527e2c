"""Distributional heads (C51, QR-DQN), checked against plain NumPy references.

- the C51 projection, atom by atom, against the textbook loop (Bellemare et al. 2017, Alg. 1);
- the quantile Huber loss against a double loop over (i, j);
- double-Q selection by the online mean where the mean and the mode (or median) disagree;
- the priorities sent back to the replay are the per-sample losses;
- bf16 autocast picks the fp32 greedy action.
"""

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from fastdqn import train as train_mod
from fastdqn.config import make_config
from fastdqn.learner import Learner, project_onto_support, quantile_huber_loss
from fastdqn.networks import QHead, make_q_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_projection(probs, returns, discounts, support):
    """Bellemare et al. (2017), Algorithm 1, one atom at a time, in float64."""
    probs, support = np.asarray(probs, np.float64), np.asarray(support, np.float64)
    v_min, v_max, n = support[0], support[-1], len(support)
    dz = (v_max - v_min) / (n - 1)
    out = np.zeros_like(probs)
    for i in range(len(probs)):
        for j in range(n):
            tz = min(max(returns[i] + discounts[i] * support[j], v_min), v_max)
            b = (tz - v_min) / dz
            lower, upper = math.floor(b), math.ceil(b)
            if lower == upper:  # on a support point: all of it there
                out[i, lower] += probs[i, j]
            else:
                out[i, lower] += probs[i, j] * (upper - b)
                out[i, upper] += probs[i, j] * (b - lower)
    return out


def _project(probs, returns, discounts, support):
    as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    return project_onto_support(as_t(probs), as_t(returns), as_t(discounts), as_t(support)).numpy()


@pytest.mark.parametrize("case, returns, discounts", [
    ("terminal: all mass onto R", [1.3, -0.7, 25.0], [0.0, 0.0, 0.0]),
    ("truncated / bootstrapped one step", [0.5, -1.0, 0.0], [0.99, 0.99, 0.99]),
    ("n-step discount gamma^3", [2.9701, 0.0, -1.0], [0.99 ** 3] * 3),
    ("targets beyond v_min and v_max", [9.5, -9.5, 30.0], [0.99, 0.99, 1.0]),
    ("on support points (R a multiple of dz, d = 1)", [0.4, -0.8, 2.0], [1.0, 1.0, 1.0]),
])
def test_c51_projection_matches_the_atom_by_atom_reference(case, returns, discounts):
    rng = np.random.default_rng(0)
    support = np.linspace(-10.0, 10.0, 51)
    logits = rng.normal(size=(3, 51)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = _project(probs, returns, discounts, support)
    want = reference_projection(probs, returns, discounts, support)
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=case)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_c51_projection_of_a_terminal_puts_the_reward_between_its_two_neighbours():
    support = np.linspace(-1.0, 1.0, 5)  # spacing 0.5
    probs = np.full((2, 5), 0.2)
    got = _project(probs, [0.2, 1.0], [0.0, 0.0], support)
    # 0.2 lies 0.4 of the way from atom 2 (0.0) to atom 3 (0.5); 1.0 is atom 4 exactly
    np.testing.assert_allclose(got[0], [0, 0, 0.6, 0.4, 0], atol=1e-6)
    np.testing.assert_allclose(got[1], [0, 0, 0, 0, 1], atol=1e-6)


def reference_quantile_huber(quantiles, targets):
    quantiles, targets = np.asarray(quantiles, np.float64), np.asarray(targets, np.float64)
    batch, n = quantiles.shape
    out = np.zeros(batch)
    for b in range(batch):
        for i in range(n):
            tau = (2 * i + 1) / (2 * n)
            for j in range(targets.shape[1]):
                u = targets[b, j] - quantiles[b, i]
                huber = 0.5 * u * u if abs(u) <= 1 else abs(u) - 0.5
                out[b] += abs(tau - (u < 0)) * huber / targets.shape[1]
    return out


def test_quantile_huber_loss_matches_the_double_loop_reference():
    rng = np.random.default_rng(1)
    quantiles = np.sort(rng.normal(size=(4, 8)) * 2, axis=1)
    targets = rng.normal(size=(4, 8)) * 2 + 0.5
    got = quantile_huber_loss(torch.tensor(quantiles, dtype=torch.float32),
                              torch.tensor(targets, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, reference_quantile_huber(quantiles, targets), rtol=1e-5)


def test_quantile_huber_loss_weighs_over_and_underestimates_by_tau():
    # two quantiles (taus 1/4 and 3/4), both below the targets by 0.5: huber 0.125 each, weighted
    # tau when the target is above (u > 0), 1 - tau when below
    got = quantile_huber_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 0.5]])).item()
    assert got == pytest.approx(0.25 * 0.125 + 0.75 * 0.125)
    got = quantile_huber_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[-0.5, -0.5]])).item()
    assert got == pytest.approx(0.75 * 0.125 + 0.25 * 0.125)
    got = quantile_huber_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0]])).item()
    assert got == pytest.approx(0.25 * 2.5 + 0.75 * 1.5)  # |u| > 1: linear part


class TableNet(nn.Module):
    """A real QHead over one-hot states: hidden layer = identity, so the output layer's column s
    holds state s's outputs (A * N of them), set by hand with ``set_state``."""

    def __init__(self, num_states, num_actions, **head):
        super().__init__()
        self.head = QHead(num_states, num_states, num_actions, dueling=False, **head)
        with torch.no_grad():
            self.head.q[0].weight.copy_(torch.eye(num_states))
            self.head.q[0].bias.zero_()
            self.head.q[2].weight.zero_()
            self.head.q[2].bias.zero_()

    def set_state(self, state, outputs):
        with torch.no_grad():
            self.head.q[2].weight[:, state] = torch.as_tensor(np.asarray(outputs, np.float32).reshape(-1))

    def forward(self, obs):
        return self.head(obs.float())

    def outputs(self, obs):
        return self.head.outputs(obs.float())


def _learner(online, target, **kwargs):
    learner = Learner(online, lr=0.0, device="cpu", precision="fp32", target_update_period=10**6, **kwargs)
    learner.target_network.load_state_dict(target.state_dict())
    return learner


def _batch(rows):
    """rows: (state, action, R, discount, next_state) over 2 one-hot states."""
    s, a, r, d, s2 = map(np.array, zip(*rows))
    eye = np.eye(2, dtype=np.float32)
    return {"obs": eye[s], "actions": a.astype(np.int64), "returns": r.astype(np.float32),
            "discounts": d.astype(np.float32), "next_obs": eye[s2], "weights": np.ones(len(rows), np.float32)}


def test_c51_double_q_picks_a_star_by_the_online_mean_not_the_mode():
    head = dict(head="c51", num_atoms=3, v_min=-1.0, v_max=1.0)
    online, target = TableNet(2, 2, **head), TableNet(2, 2, **head)
    # s' = state 1. Online: action 0 [0.48, 0.001, 0.519] has mean 0.039 but its most likely atom
    # is +1; action 1 [0.05, 0.5, 0.45] has mean 0.4 and mode 0 (and a lower top probability).
    # By the mean a* = 1; by the mode or the top probability it would be 0.
    online.set_state(1, np.log([[0.48, 0.001, 0.519], [0.05, 0.5, 0.45]]))
    online.set_state(0, np.log([[0.2, 0.3, 0.5], [1 / 3] * 3]))  # s = state 0, action 0 taken
    target_probs = np.array([[0.98, 0.01, 0.01], [0.01, 0.01, 0.98]])  # a* = 0 or 1 tell apart
    target.set_state(1, np.log(target_probs))
    learner = _learner(online, target)
    _, per_sample, mean_q = learner.compute_loss(_batch([(0, 0, 0.0, 1.0, 1)]))  # R 0, d 1: no move
    want = -(target_probs[1] * np.log([0.2, 0.3, 0.5])).sum()  # a* = 1
    assert per_sample.item() == pytest.approx(want, rel=1e-5)
    assert mean_q.item() == pytest.approx(0.3, abs=1e-5)  # E[Z(s, 0)] = -0.2 + 0.5
    # without double Q, a* is the target net's own best by the mean: with the target's two rows
    # swapped that is action 0 (mass on +1), where the online mean still says action 1
    target.set_state(1, np.log(target_probs[::-1]))
    plain = _learner(online, target, double_q=False)
    _, per_sample, _ = plain.compute_loss(_batch([(0, 0, 0.0, 1.0, 1)]))
    assert per_sample.item() == pytest.approx(-(target_probs[1] * np.log([0.2, 0.3, 0.5])).sum(), rel=1e-5)


def test_qr_double_q_picks_a_star_by_the_online_mean_not_the_median():
    head = dict(head="qr", num_atoms=3)
    online, target = TableNet(2, 2, **head), TableNet(2, 2, **head)
    # s': action 0's quantiles (-3, 1, 1.5) have median 1 but mean -0.17; action 1's (0.2, 0.3,
    # 0.4) median and mean 0.3: by the mean a* = 1, by the median 0.
    online.set_state(1, [[-3.0, 1.0, 1.5], [0.2, 0.3, 0.4]])
    online.set_state(0, [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]])
    target.set_state(1, [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    learner = _learner(online, target)
    _, per_sample, mean_q = learner.compute_loss(_batch([(0, 0, 1.0, 0.5, 1)]))
    want = reference_quantile_huber([[0.0, 0.5, 1.0]], [[1.0 + 0.5 * 5.0] * 3])  # a* = 1
    assert per_sample.item() == pytest.approx(want[0], rel=1e-5)
    assert mean_q.item() == pytest.approx(0.5)


@pytest.mark.parametrize("head", ["c51", "qr"])
def test_priorities_sent_to_the_replay_are_the_per_sample_losses(head):
    torch.manual_seed(0)
    cfg = make_config("cartpole", head=head, v_min=0.0, v_max=100.0, batch_size=8, per_alpha=0.6)
    learner = train_mod.build_learner(cfg, (4,), 2, torch.device("cpu"))
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(8, 4)).astype(np.float32), "actions": rng.integers(0, 2, 8),
             "returns": rng.uniform(0, 3, 8).astype(np.float32), "discounts": np.where(np.arange(8) % 3, 0.97, 0.0)
             .astype(np.float32), "next_obs": rng.normal(size=(8, 4)).astype(np.float32),
             "weights": rng.uniform(0.3, 1, 8).astype(np.float32), "indices": np.arange(8)}
    # the per-sample losses by the references, from the networks as they are before the update
    with torch.no_grad():
        obs, next_obs = torch.tensor(batch["obs"]), torch.tensor(batch["next_obs"])
        taken = learner.q_network.outputs(obs)[np.arange(8), batch["actions"]].numpy()
        best = learner.q_network(next_obs).argmax(1).numpy()
        next_outputs = learner.target_network.outputs(next_obs)[np.arange(8), best].numpy()
    if head == "c51":
        support = learner.q_network.head.support.numpy()
        next_probs = np.exp(next_outputs) / np.exp(next_outputs).sum(1, keepdims=True)
        target = reference_projection(next_probs, batch["returns"], batch["discounts"], support)
        log_p = taken - np.log(np.exp(taken).sum(1, keepdims=True))
        want = -(target * log_p).sum(1)
    else:
        want = reference_quantile_huber(taken, batch["returns"][:, None] + batch["discounts"][:, None] * next_outputs)

    class OneBatchReplay:
        def sample(self, batch_size, beta, slot=0):
            return type("Sample", (), batch)()

        def update_priorities(self, indices, priorities):
            self.sent = (indices, priorities)

    replay = OneBatchReplay()
    stats = {"loss": torch.zeros(()), "q": torch.zeros(()), "td": torch.zeros(()), "n": 0}
    train_mod.ReplayLearning().update(cfg, learner, replay, {"updates": 0, "schedule_steps": 0}, 0.4, stats)
    np.testing.assert_array_equal(replay.sent[0], np.arange(8))
    np.testing.assert_allclose(replay.sent[1], want, rtol=1e-4)
    # the loss is their importance-weighted mean
    assert stats["loss"].item() == pytest.approx(float((batch["weights"] * want).mean()), rel=1e-4)


@pytest.mark.parametrize("head", ["c51", "qr"])
def test_bf16_greedy_action_equals_fp32_on_the_distributional_heads(head):
    torch.manual_seed(0)
    net = make_q_network((4, 84, 84), 6, dueling=True, hidden=256, torso="nips", head=head)
    with torch.no_grad():  # Q of a few units with action gaps of a few thousandths to hundredths
        if head == "c51":  # (logits rising with the atom: mass on the upper atoms)
            net.head.value[2].bias.copy_(torch.linspace(0.0, 3.0, 51))
            net.head.advantage[2].weight.mul_(0.05)
        else:  # (a mean over 200 quantiles already averages the advantages' spread down)
            net.head.value[2].bias.fill_(5.0)
    x = torch.randint(0, 256, (512, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        q32 = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q16 = net(x)
    assert q16.dtype == torch.float32 and 2.0 < float(q32.mean()) < 8.0
    top2 = q32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) >= 1e-3
    assert int(clear.sum()) >= 0.8 * len(x)
    agreement = float((q16.argmax(1) == q32.argmax(1))[clear].float().mean())
    assert agreement >= 0.999, agreement


@pytest.mark.parametrize("head, atoms", [("c51", 51), ("qr", 200)])
@pytest.mark.parametrize("dueling", [True, False])
def test_distributional_head_shapes_and_q_is_the_mean(head, atoms, dueling):
    net = make_q_network((6,), 3, dueling=dueling, head=head)
    x = torch.randn(5, 6)
    outputs = net.outputs(x)
    assert outputs.shape == (5, 3, atoms)
    if head == "c51":
        want = (outputs.softmax(-1) * torch.linspace(-10, 10, 51)).sum(-1)
    else:
        want = outputs.mean(-1)
    torch.testing.assert_close(net(x), want)
    if dueling:  # the advantages are mean-centred per atom / quantile: the mean over actions is V
        value = net.head._stream(net.head.value, net.torso(x)).view(5, 1, atoms)
        torch.testing.assert_close(outputs.mean(dim=1, keepdim=True), value)


@pytest.mark.parametrize("overrides, message", [
    (dict(head="c51", loss="mse"), "--loss mse is for the scalar head"),
    (dict(num_atoms=51), "--num-atoms 51 needs --head c51 or qr"),
    (dict(head="qr", num_atoms=1), "--num-atoms of at least 2"),
    (dict(head="c51", v_min=5.0, v_max=5.0), "--v-min (5.0) must be below --v-max (5.0)"),
    (dict(replay_ratio_early=16.0), "--replay-ratio-early and --replay-ratio-early-steps go together"),
])
def test_bad_head_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_config("cartpole", **overrides)


def test_replay_ratio_follows_the_agent_step(monkeypatch):
    cfg = make_config("cartpole", replay_ratio=4.0, replay_ratio_early=16.0, replay_ratio_early_steps=1000)
    assert [train_mod.replay_ratio_at(cfg, s) for s in (0, 999, 1000, 5000)] == [16.0, 16.0, 4.0, 4.0]
    # the credit follows it: 100 agent steps buy 16 * 100 / 64 = 25 updates early, 4 * 100 / 64 = 6 later
    calls = []
    monkeypatch.setattr(train_mod.ReplayLearning, "update", lambda *args: calls.append(1))
    cpu_learner = type("CpuLearner", (), {"cuda_graph": False, "updates_per_graph": 1})()
    spent = []
    for steps in (0, 2000):
        calls.clear()
        train_mod.ReplayLearning()(cfg, cpu_learner, None, {"credit": 0.0, "schedule_steps": steps}, 100, {})
        spent.append(len(calls))
    assert spent == [25, 6]


def test_learner_bench_times_every_head_in_one_run(capsys):
    from bench import learner as bench

    report = bench.main(["--quick", "--device", "cpu", "--torso", "nips", "--hidden", "256",
                         "--heads", "scalar,c51,qr", "--replay-ratio", "4"])
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {f"{mode}{head}" for mode in ("fp32-eager", "bf16-eager") for head in ("", ":c51", ":qr")}
    for r in rows.values():  # per agent step at ratio 4 in batches of 4: one update per agent step
        assert r["ms_per_agent_step"] == pytest.approx(r["ms_per_update"] * 4 / 4, rel=0.01)
    assert rows["fp32-eager"]["ratio"] == 1.0 and "ms/agent step" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--device", "cpu", "--heads", "iqn"])


@pytest.mark.slow
def test_c51_cartpole_solves(tmp_path):
    # CartPole's discounted returns reach ~100 (gamma 0.99, reward 1 per step): the support is [0, 100].
    # With the preset's settings seeds 0, 1 and 2 first averaged >= 475 at 55k, 60k and 40k agent
    # steps (2-core Zen3, 2026-12-07): 80k leaves a margin; the run stops at its first 500.
    cfg = make_config("cartpole", head="c51", v_min=0.0, v_max=100.0, total_steps=80_000, run_dir=str(tmp_path / "run"))
    summary = train_mod.train(cfg, progress=False)
    assert summary["best_eval_mean_return"] >= 475, summary["evals"]


def test_a_c51_agent_goes_through_eval_hub_export_and_ape_x_actors(tmp_path, capsys, monkeypatch):
    pytest.importorskip("safetensors")
    from fastdqn import distributed, hub
    from fastdqn.cli import main
    from test_distributed import FakeRay, cartpole_actors

    def eval_returns(source):
        assert main(["eval", str(source), "--episodes", "3", "--eps", "0.05", "--seed", "3", "--device", "cpu"]) == 0
        return json.loads(capsys.readouterr().out)["returns"]

    run = tmp_path / "run"
    cfg = make_config("cartpole", head="c51", v_min=0.0, v_max=100.0, run_dir=str(run), total_steps=1500,
                      learning_starts=300, eval_interval=0, eval_episodes=2, checkpoint_interval=0, torch_threads=1)
    train_mod.train(cfg, progress=False)
    capsys.readouterr()
    from_checkpoint = eval_returns(run)
    folder = hub.export(run, tmp_path / "upload", "someone/cartpole-c51")
    assert eval_returns(folder) == from_checkpoint  # the exported weights are the checkpoint's c51 network
    assert "with a C51 head (51 atoms on [0, 100])" in (folder / "README.md").read_text()
    # Ape-X actors (in-process stand-ins for Ray's) act with the c51 network the learner publishes
    monkeypatch.setattr(distributed, "require_ray", lambda: FakeRay(0))
    summary = train_mod.train(cartpole_actors(tmp_path / "apex", head="c51", v_min=0.0, v_max=100.0), progress=False)
    assert summary["updates"] > 0 and summary["distributed"]["weights_version"] > 5


def _vector_batches(n, batch_size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [{"obs": rng.normal(size=(batch_size, 4)).astype(np.float32), "actions": rng.integers(0, 2, batch_size),
             "returns": rng.normal(size=batch_size).astype(np.float32),
             "discounts": np.where(rng.random(batch_size) < 0.2, 0.0, 0.97).astype(np.float32),
             "next_obs": rng.normal(size=(batch_size, 4)).astype(np.float32),
             "weights": rng.uniform(0.2, 1.0, batch_size).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("head", ["c51", "qr"])
def test_graph_body_of_a_distributional_head_equals_eager_updates_on_the_cpu(head):
    # What a CUDA graph captures (_graph_updates: in_graph=True, the device-side target sync), run
    # eagerly on the CPU against plain updates: the distributional losses hold no host sync that
    # would freeze in a graph.
    from fastdqn.learner import BATCH_FIELDS, _as_tensor

    torch.manual_seed(0)
    net = make_q_network((4,), 2, dueling=True, hidden=(32, 32), head=head, num_atoms=11)
    graph_like = Learner(copy.deepcopy(net), lr=1e-3, target_update_period=3, device="cpu")
    eager = Learner(copy.deepcopy(net), lr=1e-3, target_update_period=3, device="cpu")
    batches, k = _vector_batches(6), 2
    out = torch.empty(k, 16 + 2)
    for i in range(0, len(batches), k):
        group = batches[i:i + k]
        stacked = {name: torch.stack([_as_tensor(b[name], name, b) for b in group]) for name in BATCH_FIELDS}
        graph_like._graph_updates(stacked, out)
        graph_like.num_updates += k
        ref = [eager.update(b) for b in group]
        torch.testing.assert_close(out[:, :16], torch.stack([r["td_abs"] for r in ref]))
        torch.testing.assert_close(out[:, 16], torch.stack([r["loss"] for r in ref]))
    for a, b in zip(graph_like.q_network.parameters(), eager.q_network.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("head", ["c51", "qr"])
def test_cuda_graph_of_a_distributional_head_equals_eager_updates(head, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # eager and graph: the same kernels
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    net = make_q_network((4, 84, 84), 6, dueling=True, hidden=256, torso="nips", head=head)
    kwargs = dict(lr=1e-3, precision="fp32", target_update_period=6)
    graph = Learner(copy.deepcopy(net), device="cuda", cuda_graph=True, updates_per_graph=4, **kwargs)
    eager = Learner(copy.deepcopy(net), device="cuda", **kwargs)
    rng = np.random.default_rng(0)
    batches = [{"obs": rng.integers(0, 256, (32, 4, 84, 84), dtype=np.uint8), "actions": rng.integers(0, 6, 32),
                "returns": rng.normal(size=32).astype(np.float32),
                "discounts": np.where(rng.random(32) < 0.1, 0.0, 0.97).astype(np.float32),
                "next_obs": rng.integers(0, 256, (32, 4, 84, 84), dtype=np.uint8),
                "weights": rng.uniform(0.2, 1.0, 32).astype(np.float32)} for _ in range(12)]
    for i in range(0, 12, 4):
        out = graph.update_many(batches[i:i + 4])
        ref = [eager.update(b) for b in batches[i:i + 4]]
        torch.testing.assert_close(out["td_abs"], torch.stack([r["td_abs"] for r in ref]), rtol=1e-4, atol=1e-5)
    for a, b in zip(graph.q_network.parameters(), eager.q_network.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_quantile_huber_loss_gradient_matches_finite_differences():
    # the loss carries its own gradient (one pass over the pairs): checked against torch's numerical one
    rng = np.random.default_rng(2)
    quantiles = torch.tensor(rng.normal(size=(3, 5)) * 1.5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor(rng.normal(size=(3, 7)) * 1.5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: quantile_huber_loss(q, targets), (quantiles,))
    with pytest.raises(ValueError, match="constants"):
        quantile_huber_loss(quantiles, targets.requires_grad_())
