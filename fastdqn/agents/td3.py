"""DDPG and TD3: a deterministic actor mu(s), one or two critics Q(s, a), target copies of all.

One update on a batch of n-step transitions (s, a, R, gamma^m, s', w) from the replay::

    a'    = clip(mu'(s') + h * clip(sigma * eps, -c, c), low, high)   eps ~ N(0, I), h = (high - low) / 2
    y     = R + gamma^m * min_j Q'_j(s', a')                         (gamma^m = 0 at terminals)
    critic loss = mean_i w_i * sum_j (Q_j(s_i, a_i) - y_i)^2         (y is a constant)
    critic step; then on every d-th update (d = policy_delay), with the stepped critics:
    actor loss  = -mean_i Q_1(s_i, mu(s_i))                          (gradient into the actor only)
    actor step, then the targets: Polyak theta' <- theta' + tau * (theta - theta') (tau > 0),
    or a hard copy after every C-th update (tau = 0, C = target_update_period)

DDPG (Lillicrap et al. 2016) is this update with one critic, sigma = 0 and d = 1; TD3
(Fujimoto et al. 2018) has twin critics, target smoothing sigma = 0.2 clipped at c = 0.5
(both in units of h, half the action range) and d = 2. ``make_agent`` builds either.

The critic loss is the plain squared error (no 1/2), summed over the critics, as in the TD3
authors' code and CleanRL (one mean-squared error per critic): its gradient is 2 * delta.
The DQN learner's "mse" has a 1/2; the worked DDPG example in tests/test_td3.py pins this one.
The priority for a prioritized replay is max_j |delta_j| (as LAP, Fujimoto et al. 2020).

Precision and execution follow the DQN learner (fastdqn/learner.py): "auto" goes through
hardware.resolve_precision (fp32 for MLPs), forwards run under its autocast and every Q-value,
target and loss is fp32; Adam is its fused kernel (capturable, with a device lr, on CUDA);
``update_many`` captures K updates in one CUDA graph when ``cuda_graph=True``, with the delay
and target decisions taken on the device (see _train_step).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from fastdqn import hardware
from fastdqn.learner import BATCH_FIELDS, GroupedUpdates, Learner, ResultsToHost, _field

__all__ = ["ALGORITHMS", "Actor", "Critic", "GaussianExploration", "TD3", "make_agent"]

ALGORITHMS = ("ddpg", "td3")


def _mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, out_features))


class Actor(nn.Module):
    """mu(s) = center + half_range * tanh(MLP(s)), (B, A): always inside [low, high]."""

    def __init__(self, obs_dim: int, low, high, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        low = torch.as_tensor(np.asarray(low, np.float32)).reshape(-1)
        high = torch.as_tensor(np.asarray(high, np.float32)).reshape(-1)
        self.net = _mlp(obs_dim, hidden, low.numel())
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.center + self.half_range * torch.tanh(self.net(obs.float()))


class Critic(nn.Module):
    """Q(s, a) = MLP([s, a]), (B,)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = _mlp(obs_dim + action_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs.float(), actions.float()], dim=1)).squeeze(1)


def make_agent(algorithm: str, obs_dim: int, low, high, *, hidden: Sequence[int] = (256, 256),
               **options) -> "TD3":
    """A DDPG or TD3 agent with fresh MLPs of widths ``hidden`` for an action box [low, high];
    ``options`` are TD3's keywords. DDPG always has d = 1 and no target smoothing."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    action_dim = int(np.size(low))
    twins = 2 if algorithm == "td3" else 1
    if algorithm == "ddpg":
        options = {**options, "policy_delay": 1, "target_noise": 0.0}
    return TD3(Actor(obs_dim, low, high, hidden), [Critic(obs_dim, action_dim, hidden) for _ in range(twins)],
               low, high, **options)


class GaussianExploration:
    """The continuous agents' acting rule (fastdqn.acting says what a rule is): with probability
    ``epsilon`` per env a uniform random action in the box (the random warm-up before learning
    starts is epsilon 1), else mu(s) plus Gaussian noise of std ``noise_scale`` * half the range,
    clipped to the box; float32 (B, A). ``noise_scale`` 0: the deterministic policy (evaluation)."""

    action_dtype = np.float32

    def __init__(self, network: nn.Module, low, high, noise_scale: float, device: torch.device, precision: str):
        self.network, self.noise_scale, self.device, self.precision = network, float(noise_scale), device, precision
        self.low, self.high = np.asarray(low, np.float32).reshape(-1), np.asarray(high, np.float32).reshape(-1)
        self.action_shape = self.low.shape

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, epsilon, rng: np.random.Generator) -> np.ndarray:
        batch = len(obs)
        explore = rng.random(batch) < epsilon if np.any(epsilon) else np.zeros(batch, bool)
        actions = rng.uniform(self.low, self.high, (batch, *self.action_shape)) if explore.any() else None
        if not explore.all():
            with hardware.autocast(self.device, self.precision):
                mu = self.network(torch.as_tensor(obs, device=self.device)).float().cpu().numpy()
            if self.noise_scale > 0.0:
                mu = mu + rng.standard_normal(mu.shape) * (self.noise_scale * (self.high - self.low) / 2)
            actions = mu if actions is None else np.where(explore[:, None], actions, mu)
        return np.clip(actions, self.low, self.high).astype(np.float32)


def _tensor(batch: Any, name: str) -> torch.Tensor:
    """A batch field as a float CPU tensor (zero-copy for float32 NumPy); weights default to ones."""
    x = _field(batch, name)
    if x is None:
        if name != "weights":
            raise KeyError(f"batch has no {name!r}")
        x = np.ones(np.shape(_field(batch, "returns")), dtype=np.float32)
    return torch.as_tensor(x).float()


def _adam(params: list[nn.Parameter], lr: float, eps: float, device: torch.device) -> torch.optim.Optimizer:
    # The DQN learner's optimizer construction (fused Adam; capturable with a device lr on CUDA).
    # It reads only these three attributes of its learner.
    owner = SimpleNamespace(_params=params, _is_cuda=device.type == "cuda", device=device)
    return Learner._make_optimizer(owner, "adam", lr, eps)


class TD3(GroupedUpdates):
    """Owns the actor, the critics, their targets and the two optimizers; runs the update.

    Args:
        actor: mu(s) -> (B, A); critics: one (DDPG) or two (TD3) modules Q(s, a) -> (B,).
            Targets are deep copies. Any modules will do (the tests use linear ones).
        low, high: the action box (A,): exploration and target actions are clipped to it.
        actor_lr, critic_lr: learning rates; optimizer: "adam" (eps ``adam_eps``) or "sgd".
        policy_delay: d, actor and target updates on every d-th critic update.
        target_noise, noise_clip: sigma and c of the target smoothing, in units of half the
            action range; 0 noise turns smoothing off.
        tau: Polyak rate of the targets (> 0), or 0 for hard copies every
            ``target_update_period`` updates.
        max_grad_norm: clip each network's gradient norm to this; None or 0 disables.
        precision, cuda_graph, updates_per_graph, device, batch_size: as the DQN Learner.
    """

    def __init__(self, actor: nn.Module, critics: Sequence[nn.Module], low, high, *, actor_lr: float = 3e-4,
                 critic_lr: float = 3e-4, optimizer: str = "adam", adam_eps: float = 1e-8, policy_delay: int = 2,
                 target_noise: float = 0.2, noise_clip: float = 0.5, tau: float = 0.005,
                 target_update_period: int = 1, max_grad_norm: float | None = None, precision: str = "auto",
                 cuda_graph: bool = False, updates_per_graph: int = 4, device: str | torch.device | None = None,
                 batch_size: int | None = None):
        if not 1 <= len(critics) <= 2:
            raise ValueError(f"one critic (DDPG) or two (TD3), got {len(critics)}")
        if policy_delay < 1 or target_update_period < 1 or updates_per_graph < 1:
            raise ValueError("policy_delay, target_update_period and updates_per_graph must be >= 1")
        if not 0.0 <= tau <= 1.0 or target_noise < 0.0 or noise_clip < 0.0:
            raise ValueError("tau must be in [0, 1], target_noise and noise_clip >= 0")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.device = torch.device(device if device is not None else next(actor.parameters()).device)
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        self.precision_choice = hardware.resolve_precision(precision, self.device, conv_net=False,
                                                            batch_size=batch_size)
        self.precision = self.precision_choice.name
        self.actor = actor.to(self.device)
        self.critics = nn.ModuleList(critics).to(self.device)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        self.low = torch.as_tensor(np.asarray(low, np.float32), device=self.device).reshape(-1)
        self.high = torch.as_tensor(np.asarray(high, np.float32), device=self.device).reshape(-1)
        self.half_range = (self.high - self.low) / 2
        self._low_np, self._high_np = self.low.cpu().numpy(), self.high.cpu().numpy()
        self.policy_delay = int(policy_delay)
        self.target_noise, self.noise_clip = float(target_noise), float(noise_clip)
        self.tau, self.target_update_period = float(tau), int(target_update_period)
        self.max_grad_norm = max_grad_norm or None
        self.cuda_graph, self.updates_per_graph = cuda_graph, int(updates_per_graph)
        self.num_updates = 0  # host count; the same on the device for code inside a graph
        self._num_updates_t = torch.zeros((), dtype=torch.int64, device=self.device)

        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critics.parameters())
        self._online = self._tensors(self.actor) + self._tensors(self.critics)
        self._targets = self._tensors(self.target_actor) + self._tensors(self.target_critics)
        if optimizer == "adam":
            self.actor_optimizer = _adam(self._actor_params, actor_lr, adam_eps, self.device)
            self.critic_optimizer = _adam(self._critic_params, critic_lr, adam_eps, self.device)
        else:
            self.actor_optimizer = torch.optim.SGD(self._actor_params, lr=actor_lr)
            self.critic_optimizer = torch.optim.SGD(self._critic_params, lr=critic_lr)
        for opt in (self.actor_optimizer, self.critic_optimizer):
            _create_state(opt)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, torch.Tensor] | None = None
        self._graph_out: torch.Tensor | None = None
        self._results = ResultsToHost(self.device)

    @staticmethod
    def _tensors(module: nn.Module) -> list[torch.Tensor]:
        return list(module.parameters()) + list(module.buffers())

    def autocast(self):
        return hardware.autocast(self.device, self.precision)

    def set_lr(self, lr: float) -> None:
        """One learning rate for the actor and the critics (a schedule's); in place where it is
        a device tensor (CUDA), so a captured graph sees it."""
        for opt in (self.actor_optimizer, self.critic_optimizer):
            for group in opt.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(float(lr))
                else:
                    group["lr"] = float(lr)

    # ------------------------------------------------------------------------ acting

    def acting_rule(self, noise_scale: float) -> GaussianExploration:
        """The rule the loop acts (``noise_scale`` > 0) and evaluates (0) with, on this actor."""
        return GaussianExploration(self.actor, self._low_np, self._high_np, noise_scale, self.device, self.precision)

    def act(self, obs: np.ndarray, noise_scale: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
        """mu(s) for a batch of observations, plus Gaussian noise of std ``noise_scale`` * half
        the action range when > 0 (exploration), clipped to the bounds; float32 (B, A)."""
        return self.acting_rule(noise_scale)(obs, 0.0, rng)

    # ----------------------------------------------------------------------- the update

    def target_actions(self, next_obs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """a' = clip(mu'(s') + h * clip(sigma * noise, -c, c), low, high); ``noise`` (B, A) is
        standard normal, or None for no smoothing."""
        next_actions = self.target_actor(next_obs).float()
        if noise is not None:
            smoothing = (self.target_noise * noise).clamp(-self.noise_clip, self.noise_clip)
            next_actions = next_actions + self.half_range * smoothing
        return torch.clamp(next_actions, self.low, self.high)

    def critic_loss(self, obs, actions, returns, discounts, next_obs, weights, noise=None):
        """(loss, max_j |delta_j| (B,), mean Q_1(s, a)); the loss has its graph."""
        with self.autocast():
            with torch.no_grad():
                next_actions = self.target_actions(next_obs, noise)
                next_q = torch.stack([q(next_obs, next_actions).float() for q in self.target_critics])
                td_target = returns + discounts * next_q.min(dim=0).values
            q = torch.stack([critic(obs, actions).float() for critic in self.critics])  # (J, B)
        delta = q - td_target
        loss = (weights * delta.square().sum(dim=0)).mean()
        return loss, delta.detach().abs().max(dim=0).values, q[0].detach().mean()

    def actor_loss(self, obs) -> torch.Tensor:
        with self.autocast():
            return -self.critics[0](obs, self.actor(obs)).float().mean()

    def _smoothing_noise(self, actions: torch.Tensor) -> torch.Tensor | None:
        return torch.randn(actions.shape, device=self.device) if self.target_noise > 0.0 else None

    def _train_step(self, obs, actions, returns, discounts, next_obs, weights, *, in_graph=False):
        """One update on device tensors: (critic loss, |TD| (B,), actor loss or NaN, mean Q).

        Eager, the host counter decides whether the actor and targets move. Inside a graph a
        Python ``if`` would be decided once, at capture: there the actor step always runs and
        torch.where keeps or undoes it by the device counter (selection, no arithmetic: the
        same numbers as eager).
        """
        critic_loss, td_abs, mean_q = self.critic_loss(obs, actions, returns, discounts, next_obs, weights,
                                                       self._smoothing_noise(actions))
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self._clip(self._critic_params)
        self.critic_optimizer.step()
        self._num_updates_t += 1
        nan = torch.full((), float("nan"), device=self.device)
        if in_graph:
            if self.policy_delay == 1:
                actor_loss, move = self._actor_step(obs, None), True
            else:
                move = (self._num_updates_t % self.policy_delay) == 0
                actor_loss = torch.where(move, self._actor_step(obs, move), nan)
            self._update_targets(move, (self._num_updates_t % self.target_update_period) == 0)
            return critic_loss.detach(), td_abs, actor_loss, mean_q
        count = self.num_updates + 1
        actor_loss = nan
        if count % self.policy_delay == 0:
            actor_loss = self._actor_step(obs, None)
        self._update_targets(count % self.policy_delay == 0, count % self.target_update_period == 0)
        return critic_loss.detach(), td_abs, actor_loss, mean_q

    def _actor_step(self, obs, keep_if: torch.Tensor | None) -> torch.Tensor:
        """Step the actor on -Q_1(s, mu(s)); with a device bool ``keep_if``, undo the step
        (parameters and optimizer state) where it is False."""
        loss = self.actor_loss(obs)
        self.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self._actor_params)  # no gradient into the critics
        self._clip(self._actor_params)
        if keep_if is None:
            self.actor_optimizer.step()
            return loss.detach()
        state = self._actor_params + _state_tensors(self.actor_optimizer)
        before = [t.clone() for t in state]
        self.actor_optimizer.step()
        with torch.no_grad():
            for t, old in zip(state, before):
                t.copy_(torch.where(keep_if, t, old))
        return loss.detach()

    @torch.no_grad()
    def _update_targets(self, move, sync) -> None:
        """Polyak (tau > 0) when ``move``, hard copy (tau = 0) when ``sync``: host bools
        eagerly, device bools inside a graph."""
        if self.tau > 0.0:
            if isinstance(move, torch.Tensor):
                moved = torch._foreach_lerp(self._targets, self._online, self.tau)
                for target, new in zip(self._targets, moved):
                    target.copy_(torch.where(move, new, target))
            elif move:
                # theta' + tau * (theta - theta') == (1 - tau) theta' + tau theta
                torch._foreach_lerp_(self._targets, self._online, self.tau)
        elif isinstance(sync, torch.Tensor):
            for target, online in zip(self._targets, self._online):
                target.copy_(torch.where(sync, online, target))
        elif sync:
            torch._foreach_copy_(self._targets, self._online)

    def _clip(self, params) -> None:
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, self.max_grad_norm)  # on the device: no host sync

    def update(self, batch) -> dict[str, torch.Tensor]:
        """One eager update. Host tensors, under the DQN Learner's keys (so the loop's update
        code serves both) plus one: loss () (the critic loss), td_abs (B,), mean_q () and
        actor_loss () (NaN on an update without an actor step)."""
        args = [_tensor(batch, name).to(self.device, non_blocking=True) for name in BATCH_FIELDS]
        out = self._train_step(*args)
        self.num_updates += 1
        return _results(self._pack([out]), single=True)

    def launch(self, batches: Sequence[Any]) -> None:
        """Start K consecutive updates; one CUDA graph replay when enabled and K == updates_per_graph
        (queued: this returns at once), else eager. ``finish()`` returns host tensors loss (K,),
        actor_loss (K,), td_abs (K, B), mean_q (K,)."""
        self._check_idle()
        batches = list(batches)
        if not (self.cuda_graph and len(batches) == self.updates_per_graph):
            self._launch_eagerly(batches)
            return
        if self._graph is None or not self._matches(batches):
            self._capture(batches)
        else:
            self._load(batches)
        self._graph.replay()
        self.num_updates += len(batches)
        self._results.queue(self._graph_out)
        self._pending = lambda: _results(self._results.wait())

    @staticmethod
    def _pack(outs) -> torch.Tensor:
        """(K, B + 3) = [|TD|..., critic loss, actor loss, mean Q] per update, on the host."""
        rows = [torch.cat([td, torch.stack([c, a, q])]) for c, td, a, q in outs]
        return torch.stack(rows).cpu()

    # ------------------------------------------------------------------ the CUDA graph

    def _matches(self, batches) -> bool:
        return all(self._static[name].shape[1:] == _tensor(batches[0], name).shape for name in BATCH_FIELDS) \
            and self._static["obs"].shape[0] == len(batches)

    def _load(self, batches) -> None:
        for name in BATCH_FIELDS:
            for k, batch in enumerate(batches):
                self._static[name][k].copy_(_tensor(batch, name), non_blocking=True)

    def _capture(self, batches) -> None:
        """Capture K updates in one CUDA graph: static inputs (``_static``, refilled before each
        replay) and outputs (``_graph_out``); the counter, the delay and target decisions, the
        Adam steps and lrs live in device tensors changed in place; the smoothing noise comes
        from the CUDA generator, which a graph advances on every replay. A warm-up on a side
        stream builds cuBLAS state outside the graph; what it trains is put back after, RNG too."""
        self._graph = None
        k = len(batches)
        self._static = {name: torch.empty((k, *_tensor(batches[0], name).shape), device=self.device)
                        for name in BATCH_FIELDS}
        self._load(batches)
        self._graph_out = torch.empty((k, self._static["returns"].shape[1] + 3), device=self.device)
        tensors = self._online + self._targets + [self._num_updates_t]
        tensors += _state_tensors(self.actor_optimizer) + _state_tensors(self.critic_optimizer)
        saved = [(t, t.detach().clone()) for t in tensors]
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._graph_updates(self._static, self._graph_out)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for t, old in saved:
                t.copy_(old)
        torch.cuda.set_rng_state(rng, self.device)
        for opt in (self.actor_optimizer, self.critic_optimizer):
            opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_updates(self._static, self._graph_out)
        self._graph = graph  # capture runs nothing: the first replay does this call's work

    def _graph_updates(self, static: Mapping[str, torch.Tensor], out: torch.Tensor) -> None:
        """What one graph holds: K updates on static[...][i]; results into out (K, B + 3)."""
        b = out.shape[1] - 3
        for i in range(out.shape[0]):
            critic_loss, td_abs, actor_loss, mean_q = self._train_step(
                *(static[name][i] for name in BATCH_FIELDS), in_graph=True)
            out[i, :b] = td_abs
            out[i, b] = critic_loss
            out[i, b + 1] = actor_loss
            out[i, b + 2] = mean_q

    # ------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critics": self.critics.state_dict(),
            "target_actor": self.target_actor.state_dict(),
            "target_critics": self.target_critics.state_dict(),
            "actor_optimizer": _optimizer_state(self.actor_optimizer),
            "critic_optimizer": _optimizer_state(self.critic_optimizer),
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Networks load in place; the optimizers' state tensors are replaced, so a captured
        graph is recaptured on next use. The optimizers keep this agent's settings (lr, kernels)."""
        for name in ("actor", "critics", "target_actor", "target_critics"):
            getattr(self, name).load_state_dict(state[name])
        for opt, key in ((self.actor_optimizer, "actor_optimizer"), (self.critic_optimizer, "critic_optimizer")):
            own = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            opt.load_state_dict(state[key])
            for group, settings in zip(opt.param_groups, own):
                group.update(settings)
        self.num_updates = int(state["num_updates"])
        self._num_updates_t.fill_(self.num_updates)
        self._graph = None


def _results(packed: torch.Tensor, single: bool = False) -> dict[str, torch.Tensor]:
    """The dict of update / update_many from packed rows (K, B + 3); ``single``: no K axis."""
    if single:
        packed = packed[0]
    return {"loss": packed[..., -3], "actor_loss": packed[..., -2], "td_abs": packed[..., :-3],
            "mean_q": packed[..., -1]}


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for group in optimizer.param_groups for p in group["params"]
            for v in optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)]


def _create_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state now, as a fresh optimizer would on its first step (zeros),
    without moving a parameter: so that a masked step (_actor_step) always has state to keep,
    and a graph never allocates it."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    kept = [p.detach().clone() for p in params]
    optimizer.step()
    with torch.no_grad():
        for p, old in zip(params, kept):
            p.copy_(old)
        for t in _state_tensors(optimizer):
            t.zero_()
    optimizer.zero_grad(set_to_none=True)


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"].item())
    return state
