"""A2C: the synchronous form of A3C (Mnih et al. 2016). A3C's worker threads become the envs of one
EnvPool pool stepped in C++ threads; their asynchronous gradient steps become one step per rollout.

One update on a full rollout of T steps x N envs (fastdqn.rollout):

    logits, V = network(s_t) for every row (one forward; V(s_T) bootstraps the rollout's end)
    G_t   = lambda_returns(r, terminals, V(s_{t+1}), gamma, lambda)   (lambda = 1: n-step returns)
    A_t   = G_t - V(s_t)                                             (a constant: no gradient)
    policy loss  = -mean_t w_t log pi(a_t | s_t) A_t
    entropy      =  mean_t w_t H(pi(. | s_t))
    value loss   =  mean_t w_t (G_t - V(s_t))^2
    loss  = policy loss - beta * entropy + c_v * value loss
    clip the gradient norm, one optimizer step

w_t is 0 for the step before an EnvPool reset (no transition) and 1 elsewhere; the means are over
the steps with w = 1. The network is one torso with a policy head (logits) and a value head
(``shared=False``: two torsos of the same shape, the A3C seed's separate policy and value networks).

Acting: training samples a ~ pi(. | s); evaluation takes the most probable action. Neither uses
epsilon. The first action of each rollout was chosen by the weights of one update before: the
loop sends the next actions before it learns, so that EnvPool steps while the learner works (1 in
T steps is one update stale; A3C's workers act on weights many updates older).

Results under the DQN learner's keys (loss, mean_q = mean V(s), td_abs = mean |A|), with the
policy loss, value loss and entropy beside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fastdqn.agents.onpolicy import OnPolicyAgent, Torso
from fastdqn.hardware import autocast
from fastdqn.networks import _exact, _init_linear
from fastdqn.rollout import lambda_returns

__all__ = ["A2C", "ActorCritic", "PolicyActing", "a2c_loss"]


class ActorCritic(nn.Module):
    """obs -> (logits (B, A), V (B,)), both fp32. Policy head initialised small (gain 0.01: a near
    uniform first policy), value head with gain 1."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, hidden: int = 512, torso: str = "nature",
                 shared: bool = True):
        super().__init__()
        self.torso = Torso(obs_shape, hidden, torso)
        self.value_torso = None if shared else Torso(obs_shape, hidden, torso)
        self.policy = _init_linear(nn.Linear(hidden, num_actions), 0.01)
        self.value = _init_linear(nn.Linear(hidden, 1), 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.torso(obs)
        value_features = features if self.value_torso is None else self.value_torso(obs)
        return _exact(self.policy, features), _exact(self.value, value_features).squeeze(-1)


class PolicyActing:
    """A2C's acting rule (fastdqn.acting says what a rule is): a sample of pi(. | s) per env
    (``greedy``: its most probable action); ``epsilon`` is not used. The draws come from the
    acting stream ``rng``, so a resume continues them."""

    action_shape: tuple = ()
    action_dtype = np.int64

    def __init__(self, network: ActorCritic, device: torch.device, precision: str, greedy: bool):
        self.network, self.device, self.precision, self.greedy = network, device, precision, greedy

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, epsilon, rng: np.random.Generator) -> np.ndarray:
        with autocast(self.device, self.precision):
            logits, _ = self.network(torch.as_tensor(obs, device=self.device))
        if self.greedy:
            return logits.argmax(dim=1).cpu().numpy().astype(np.int32)
        probs = logits.softmax(dim=1).double().cpu().numpy()
        cumulative = probs.cumsum(axis=1)
        u = rng.random(len(obs)) * cumulative[:, -1]
        return np.minimum((cumulative < u[:, None]).sum(axis=1), probs.shape[1] - 1).astype(np.int32)


def a2c_loss(logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
             weights: torch.Tensor, entropy_coef: float, value_coef: float) -> dict[str, torch.Tensor]:
    """The losses of one A2C step on B transitions (see the module docstring): logits (B, A), values
    (B,) with their graphs; actions (B,) long; returns, weights (B,). The advantage G - V is a
    constant. Returns loss (to minimise), policy_loss, value_loss, entropy, advantage (B,)."""
    log_probs = logits.log_softmax(dim=1)
    taken = log_probs.gather(1, actions.long().unsqueeze(1)).squeeze(1)
    advantage = (returns - values).detach()
    count = weights.sum().clamp(min=1.0)
    policy_loss = -(weights * taken * advantage).sum() / count
    entropy = -(weights * (log_probs.exp() * log_probs).sum(dim=1)).sum() / count
    value_loss = (weights * (returns - values).square()).sum() / count
    loss = policy_loss - entropy_coef * entropy + value_coef * value_loss
    return {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
            "advantage": advantage}


class A2C(OnPolicyAgent):
    """Owns the actor-critic network and its optimizer; ``learn(batch)`` is one A2C step on a rollout.

    Args:
        network: an ActorCritic (or any module obs -> (logits, V)).
        gamma, gae_lambda: the returns (lambda 1: n-step to the rollout's end).
        entropy_coef, value_coef: beta and c_v of the loss.
        optimizer, lr, adam_eps, max_grad_norm, precision, device: see fastdqn.agents.onpolicy.
    """

    def __init__(self, network: nn.Module, *, gamma: float = 0.99, gae_lambda: float = 1.0,
                 entropy_coef: float = 0.01, value_coef: float = 0.5, optimizer: str = "rmsprop", lr: float = 7e-4,
                 adam_eps: float = 1e-5, max_grad_norm: float | None = 0.5, precision: str = "auto", device=None,
                 batch_size: int | None = None):
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self.entropy_coef, self.value_coef = float(entropy_coef), float(value_coef)
        self._setup(network, optimizer=optimizer, lr=lr, adam_eps=adam_eps, max_grad_norm=max_grad_norm,
                    precision=precision, device=device, batch_size=batch_size)

    def acting_rule(self, greedy: bool) -> PolicyActing:
        return PolicyActing(self.network, self.device, self.precision, greedy)

    def learn(self, batch: Mapping[str, Any], rng=None) -> dict[str, Any]:
        """One step on a full rollout (RolloutStore.batch(); ``rng`` unused: no minibatches). Device
        tensors (no host sync) under the loop's keys, plus updates (1) and sampled (T * N)."""
        b = self._tensors(batch)
        steps, envs = b["actions"].shape[:2]
        obs = b["obs"].flatten(0, 1)  # (T + 1) * N rows
        with self.autocast():
            logits, values = self.network(obs)
        values = values.view(steps + 1, envs)
        with torch.no_grad():
            returns = lambda_returns(b["rewards"], b["terminated"], b["chain"], values[1:].detach(), self.gamma,
                                     self.gae_lambda)
        out = a2c_loss(logits.view(steps + 1, envs, -1)[:steps].flatten(0, 1), values[:steps].flatten(),
                       b["actions"].flatten(), returns.flatten(), b["valid"].flatten().float(),
                       self.entropy_coef, self.value_coef)
        self._step(out["loss"])
        weights = b["valid"].flatten().float()
        count = weights.sum().clamp(min=1.0)
        return {"loss": out["loss"].detach(), "policy_loss": out["policy_loss"].detach(),
                "value_loss": out["value_loss"].detach(), "entropy": out["entropy"].detach(),
                "mean_q": (weights * values[:steps].detach().flatten()).sum() / count,
                "td_abs": (weights * out["advantage"].abs()).sum() / count,
                "updates": 1, "sampled": steps * envs}
