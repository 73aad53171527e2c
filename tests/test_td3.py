"""DDPG / TD3 (fastdqn/agents/td3.py) against hand computations and NumPy references.

The worked DDPG example (linear networks, zero biases, plain SGD) goes through the agent's own
update: critic target, critic step, actor step through the stepped critic, soft target update.
"""

import io

import numpy as np
import pytest
import torch
from torch import nn

from fastdqn.agents import TD3, Actor, Critic, make_agent


def needs_cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


class LinearCritic(nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.linear = nn.Linear(len(weights), 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([weights]))
            self.linear.bias.zero_()

    def forward(self, obs, actions):
        return self.linear(torch.cat([obs, actions], dim=1)).squeeze(1)


def linear_actor(weights):  # weights (obs_dim, action_dim): mu(s) = s @ W
    actor = nn.Linear(*np.shape(weights))
    with torch.no_grad():
        actor.weight.copy_(torch.tensor(weights).T)
        actor.bias.zero_()
    return actor


def worked_example_agent():
    return TD3(linear_actor([[2.0, -1.0], [1.0, 3.0], [4.0, -3.0]]), [LinearCritic([1.0, 3.0, 2.0, 1.0, -3.0])],
               low=[-100.0, -100.0], high=[100.0, 100.0], optimizer="sgd", actor_lr=0.001, critic_lr=0.01,
               policy_delay=1, target_noise=0.0, tau=0.1, precision="fp32", device="cpu")


WORKED_BATCH = {"obs": np.array([[3.0, 2.0, 1.0]], np.float32), "actions": np.array([[6.0, 5.0]], np.float32),
                "returns": np.array([3.0], np.float32), "discounts": np.array([0.1], np.float32),
                "next_obs": np.array([[4.0, 3.0, 2.0]], np.float32)}


def test_worked_ddpg_example_through_the_update():
    agent = worked_example_agent()
    s, a = torch.tensor(WORKED_BATCH["obs"]), torch.tensor(WORKED_BATCH["actions"])
    s_next = torch.tensor(WORKED_BATCH["next_obs"])
    with torch.no_grad():
        next_action = agent.target_actions(s_next, None)
        torch.testing.assert_close(next_action, torch.tensor([[19.0, -1.0]]))
        torch.testing.assert_close(agent.target_critics[0](s_next, next_action), torch.tensor([39.0]))
        torch.testing.assert_close(agent.critics[0](s, a), torch.tensor([2.0]))

    out = agent.update(WORKED_BATCH)
    close = dict(rtol=0, atol=2e-5)
    torch.testing.assert_close(out["loss"], torch.tensor(24.01), **close)  # (2 - 6.9)^2
    torch.testing.assert_close(out["td_abs"], torch.tensor([4.9]), **close)
    torch.testing.assert_close(out["mean_q"], torch.tensor(2.0), **close)
    critic = agent.critics[0].linear
    torch.testing.assert_close(critic.weight.detach(), torch.tensor([[1.294, 3.196, 2.098, 1.588, -2.51]]), **close)
    torch.testing.assert_close(critic.bias.detach(), torch.tensor([0.098]), **close)
    # The actor step read the stepped critic: mu(s) = [12, 0], Q(s, mu(s)) = 31.526.
    torch.testing.assert_close(out["actor_loss"], torch.tensor(-31.526), **close)
    actor = agent.actor
    torch.testing.assert_close(actor.weight.detach().T, torch.tensor(
        [[2.004764, -1.00753], [1.003176, 2.99498], [4.001588, -3.00251]]), **close)
    torch.testing.assert_close(actor.bias.detach(), torch.tensor([0.001588, -0.00251]), **close)
    with torch.no_grad():
        torch.testing.assert_close(agent.critics[0](s, agent.actor(s)), torch.tensor([31.658]), rtol=0, atol=5e-4)
    target = agent.target_critics[0].linear
    torch.testing.assert_close(target.weight, torch.tensor([[1.0294, 3.0196, 2.0098, 1.0588, -2.951]]), **close)
    torch.testing.assert_close(target.bias, torch.tensor([0.0098]), **close)
    # The target actor moved by the same rule: 0.9 old + 0.1 new.
    old = torch.tensor([[2.0, -1.0], [1.0, 3.0], [4.0, -3.0]])
    torch.testing.assert_close(agent.target_actor.weight.T, 0.9 * old + 0.1 * actor.weight.detach().T, **close)


# ------------------------------------------------------------------ NumPy references

def numpy_mlp(sequential, x):
    layers = [m for m in sequential if isinstance(m, nn.Linear)]
    for i, layer in enumerate(layers):
        x = x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def numpy_actor(actor, obs):
    center, half = actor.center.double().numpy(), actor.half_range.double().numpy()
    return center + half * np.tanh(numpy_mlp(actor.net, obs))


def numpy_critic(critic, obs, actions):
    return numpy_mlp(critic.net, np.concatenate([obs, actions], axis=1))[:, 0]


LOW, HIGH = np.array([-1.0, -2.0], np.float32), np.array([2.0, 0.5], np.float32)


def small_agent(algorithm="td3", seed=0, **options):
    torch.manual_seed(seed)
    options = {"precision": "fp32", "device": "cpu", **options}
    return make_agent(algorithm, 3, LOW, HIGH, hidden=(16, 16), **options)


def random_batch(rng, batch=8, terminal_every=3):
    discounts = np.full(batch, 0.99**3, np.float32)
    discounts[::terminal_every] = 0.0
    return {"obs": rng.normal(size=(batch, 3)).astype(np.float32) * 2,
            "actions": rng.uniform(LOW, HIGH, (batch, 2)).astype(np.float32),
            "returns": rng.normal(size=batch).astype(np.float32),
            "discounts": discounts,
            "next_obs": rng.normal(size=(batch, 3)).astype(np.float32) * 2,
            "weights": rng.uniform(0.2, 1.0, batch).astype(np.float32)}


def test_clipped_double_q_target_and_smoothing_noise_against_numpy():
    # sigma 0.8 against c 0.5 and a narrow box: both clips are active in this batch.
    agent = small_agent(target_noise=0.8, noise_clip=0.5)
    with torch.no_grad():
        agent.target_critics[1].net[-1].bias += 0.4  # so that the min picks either twin
    batch = random_batch(np.random.default_rng(1), batch=64)
    batch["next_obs"][::2] *= 20  # there mu'(s') is near the bounds: the smoothing noise crosses them
    torch.manual_seed(123)
    noise = torch.randn(64, 2).double().numpy()  # the update's first draw: the smoothing noise

    smoothing = np.clip(0.8 * noise, -0.5, 0.5)
    assert (np.abs(0.8 * noise) > 0.5).any()
    unclipped = numpy_actor(agent.target_actor, batch["next_obs"]) + (HIGH - LOW) / 2 * smoothing
    next_actions = np.clip(unclipped, LOW, HIGH)
    assert ((unclipped < LOW) | (unclipped > HIGH)).any()
    q_next = [numpy_critic(c, batch["next_obs"], next_actions) for c in agent.target_critics]
    assert (q_next[0] < q_next[1]).any() and (q_next[1] < q_next[0]).any()
    y = batch["returns"] + batch["discounts"] * np.minimum(*q_next)
    q = np.stack([numpy_critic(c, batch["obs"], batch["actions"]) for c in agent.critics])
    delta = q - y
    loss = np.mean(batch["weights"] * (delta**2).sum(axis=0))

    torch.manual_seed(123)
    out = agent.update(batch)
    np.testing.assert_allclose(out["loss"].numpy(), loss, rtol=1e-5)
    np.testing.assert_allclose(out["td_abs"].numpy(), np.abs(delta).max(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["mean_q"].numpy(), q[0].mean(), rtol=1e-5, atol=1e-6)


def test_ddpg_target_is_one_critic_without_smoothing():
    agent = small_agent("ddpg")
    assert len(agent.critics) == 1 and agent.policy_delay == 1 and agent.target_noise == 0.0
    batch = random_batch(np.random.default_rng(2))
    mu_next = numpy_actor(agent.target_actor, batch["next_obs"])
    y = batch["returns"] + batch["discounts"] * numpy_critic(agent.target_critics[0], batch["next_obs"], mu_next)
    delta = numpy_critic(agent.critics[0], batch["obs"], batch["actions"]) - y
    out = agent.update(batch)
    np.testing.assert_allclose(out["loss"].numpy(), np.mean(batch["weights"] * delta**2), rtol=1e-5)
    assert np.isfinite(out["actor_loss"].numpy())  # d = 1: the actor moves on every update


def flat(module):
    return torch.cat([t.detach().reshape(-1).clone() for t in module.state_dict().values()])


def test_delayed_actor_and_target_updates_are_counted():
    agent = small_agent(policy_delay=3)
    rng = np.random.default_rng(3)
    moved = []
    for _ in range(7):
        actor, target_actor, target_critics = flat(agent.actor), flat(agent.target_actor), flat(agent.target_critics)
        critics = flat(agent.critics)
        out = agent.update(random_batch(rng))
        actor_moved = not torch.equal(actor, flat(agent.actor))
        assert actor_moved == np.isfinite(out["actor_loss"].item())
        assert actor_moved == (not torch.equal(target_actor, flat(agent.target_actor)))
        assert actor_moved == (not torch.equal(target_critics, flat(agent.target_critics)))
        assert not torch.equal(critics, flat(agent.critics))  # every update steps the critics
        moved.append(actor_moved)
    assert moved == [False, False, True, False, False, True, False]
    assert agent.num_updates == int(agent._num_updates_t) == 7


def test_polyak_targets_against_reference():
    tau = 0.05
    agent = small_agent(policy_delay=2, tau=tau)
    rng = np.random.default_rng(4)
    expected = {name: flat(getattr(agent, name)).double() for name in ("target_actor", "target_critics")}
    for step in range(1, 7):
        agent.update(random_batch(rng))
        if step % 2 == 0:
            for name, online in (("target_actor", agent.actor), ("target_critics", agent.critics)):
                expected[name] = (1 - tau) * expected[name] + tau * flat(online).double()
        for name, value in expected.items():
            torch.testing.assert_close(flat(getattr(agent, name)).double(), value, rtol=0, atol=1e-6)


def test_hard_target_copies_every_c_updates():
    agent = small_agent(tau=0.0, target_update_period=3, policy_delay=2)
    rng = np.random.default_rng(5)
    target = flat(agent.target_critics)
    for step in range(1, 8):
        agent.update(random_batch(rng))
        if step % 3 == 0:
            target = flat(agent.critics)
            assert torch.equal(flat(agent.target_actor), flat(agent.actor))
        assert torch.equal(flat(agent.target_critics), target)


def test_actions_respect_the_bounds():
    agent = small_agent()
    obs = np.random.default_rng(6).normal(size=(4000, 3)).astype(np.float32) * 100  # saturates tanh
    rng = np.random.default_rng(7)
    greedy = agent.act(obs)
    assert greedy.dtype == np.float32 and greedy.shape == (4000, 2)
    assert (greedy >= LOW).all() and (greedy <= HIGH).all()
    noisy = agent.act(obs, noise_scale=1.0, rng=rng)
    assert (noisy >= LOW).all() and (noisy <= HIGH).all()
    assert (noisy == LOW).any() and (noisy == HIGH).any()  # clipped, not rejected
    # The noise is Gaussian with std noise_scale * half the range, per dimension.
    calm = np.zeros((20000, 3), np.float32)
    center = agent.act(calm[:1])
    noisy = agent.act(calm, noise_scale=0.05, rng=np.random.default_rng(8))
    inside = (noisy > LOW) & (noisy < HIGH)
    std = [(noisy - center)[inside[:, j], j].std() for j in range(2)]
    np.testing.assert_allclose(std, 0.05 * (HIGH - LOW) / 2, rtol=0.05)
    # Target smoothing keeps a' in the box too, however large the noise.
    next_obs = torch.as_tensor(obs[:512])
    with torch.no_grad():
        a = agent.target_actions(next_obs, torch.randn(512, 2) * 100)
    assert (a >= torch.as_tensor(LOW)).all() and (a <= torch.as_tensor(HIGH)).all()
    assert (a == torch.as_tensor(HIGH)).any()


def test_actor_is_scaled_to_the_box():
    actor = Actor(2, LOW, HIGH, hidden=(8,))
    actor.net = nn.Identity()  # mu(s) = center + half_range * tanh(s)
    with torch.no_grad():
        out = actor(torch.tensor([[-1e4, -1e4], [0.0, 0.0], [1e4, 1e4], [0.5, -0.3]]))
    center, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    expected = np.stack([LOW, center, HIGH, center + half * np.tanh([0.5, -0.3])]).astype(np.float32)
    torch.testing.assert_close(out, torch.as_tensor(expected))
    assert Critic(3, 2)(torch.zeros(5, 3), torch.zeros(5, 2)).shape == (5,)


def _stacked(batches):
    return {name: torch.stack([torch.as_tensor(b[name]).float() for b in batches]) for name in batches[0]}


@pytest.mark.parametrize("options", [dict(tau=0.01), dict(tau=0.0, target_update_period=3)], ids=["polyak", "hard"])
def test_graph_body_with_device_side_delay_equals_eager_updates(options):
    # What a CUDA graph captures (the delay and target decisions on the device, the actor step
    # undone by torch.where where it must not move), run on the CPU against eager updates.
    k, delay = 3, 2  # groups of 3 against a delay of 2: the actor step falls on either side of a group
    rng = np.random.default_rng(9)
    batches = [random_batch(rng) for _ in range(9)]
    graph_like, eager = small_agent(policy_delay=delay, **options), small_agent(policy_delay=delay, **options)
    out = torch.empty(k, 8 + 3)
    torch.manual_seed(10)
    graph_rows = []
    for i in range(0, len(batches), k):
        graph_like._graph_updates(_stacked(batches[i:i + k]), out)  # one "replay"
        graph_like.num_updates += k
        graph_rows.append(out.clone())
    torch.manual_seed(10)
    eager_rows = [TD3._pack([_eager_step(eager, b)]) for b in batches]
    graph_out = torch.cat(graph_rows)
    torch.testing.assert_close(graph_out, torch.cat(eager_rows), rtol=0, atol=0, equal_nan=True)
    assert np.isnan(graph_out[:, -2].numpy()).tolist() == [(i + 1) % delay != 0 for i in range(9)]
    for name in ("actor", "critics", "target_actor", "target_critics"):
        assert torch.equal(flat(getattr(graph_like, name)), flat(getattr(eager, name))), name
    for a, b in ((graph_like.actor_optimizer, eager.actor_optimizer), (graph_like.critic_optimizer, eager.critic_optimizer)):
        for x, y in zip(_state(a), _state(b)):
            assert torch.equal(x, y)
    assert int(graph_like._num_updates_t) == eager.num_updates == 9


def _eager_step(agent, batch):
    out = agent._train_step(*(torch.as_tensor(batch[n]).float() for n in
                              ("obs", "actions", "returns", "discounts", "next_obs", "weights")))
    agent.num_updates += 1
    return out


def _state(optimizer):
    return [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]


def test_set_lr_reaches_both_optimizers():
    agent = small_agent(optimizer="sgd", actor_lr=0.1, critic_lr=0.2)
    agent.set_lr(0.0)  # nothing moves at lr 0
    before = {name: flat(getattr(agent, name)) for name in ("actor", "critics")}
    for b in [random_batch(np.random.default_rng(15)) for _ in range(2)]:
        agent.update(b)
    for name, value in before.items():
        assert torch.equal(flat(getattr(agent, name)), value), name


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(11)
    batches = [random_batch(rng) for _ in range(5)]
    agent = small_agent()
    for b in batches[:3]:
        agent.update(b)
    saved = io.BytesIO()
    torch.save(agent.state_dict(), saved)  # as a checkpoint: no tensor shared with the agent
    saved.seek(0)
    other = small_agent(seed=99)
    other.load_state_dict(torch.load(saved))
    assert other.num_updates == 3 and int(other._num_updates_t) == 3
    torch.manual_seed(12)
    ours = [agent.update(b) for b in batches[3:]]
    torch.manual_seed(12)
    theirs = [other.update(b) for b in batches[3:]]
    for x, y in zip(ours, theirs):
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, equal_nan=True)
    for name in ("actor", "critics", "target_actor", "target_critics"):
        assert torch.equal(flat(getattr(agent, name)), flat(getattr(other, name)))


# ---------------------------------------------------------------------------- CUDA

@needs_cuda
def test_cuda_graph_group_equals_eager_updates(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the same fp32 matmuls in both
    rng = np.random.default_rng(13)
    batches = [random_batch(rng, batch=32) for _ in range(8)]
    options = dict(policy_delay=2, target_noise=0.0, tau=0.01, device="cuda")
    graphed, eager = small_agent(cuda_graph=True, updates_per_graph=4, **options), small_agent(**options)
    for i in range(0, 8, 4):
        g = graphed.update_many(batches[i:i + 4])
        e = eager.update_many(batches[i:i + 4])
        for key in g:
            torch.testing.assert_close(g[key], e[key], equal_nan=True)
    assert graphed._graph is not None and graphed.num_updates == int(graphed._num_updates_t.cpu()) == 8
    for name in ("actor", "critics", "target_actor", "target_critics"):
        torch.testing.assert_close(flat(getattr(graphed, name)), flat(getattr(eager, name)))


@needs_cuda
def test_cuda_graph_draws_fresh_smoothing_noise_on_every_replay():
    # lr 0: nothing moves, so two replays on the same batches differ only by their noise.
    rng = np.random.default_rng(14)
    batches = [random_batch(rng, batch=32) for _ in range(2)]
    agent = small_agent(cuda_graph=True, updates_per_graph=2, actor_lr=0.0, critic_lr=0.0, device="cuda")
    first = agent.update_many(batches)["loss"]
    second = agent.update_many(batches)["loss"]
    assert torch.isfinite(first).all() and not torch.equal(first, second)
    quiet = small_agent(target_noise=0.0, actor_lr=0.0, critic_lr=0.0, device="cuda")
    assert torch.equal(quiet.update_many(batches)["loss"], quiet.update_many(batches)["loss"])


def test_continuous_bench_quick_path_reports_both_updates(tmp_path):
    import json

    from bench import continuous as bench

    out = tmp_path / "continuous.json"
    report = bench.main(["--quick", "--device", "cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
    assert report["benchmark"] == "continuous" and report["modes"] == ["plain", "fastdqn"]
    (row,) = report["results"]
    assert row["batch_size"] == 8 and row["plain"] > 0 and row["fastdqn"] > 0
    assert row["fastdqn_vs_plain"] == pytest.approx(row["fastdqn"] / row["plain"])
