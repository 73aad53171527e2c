"""PQN (Gallici et al. 2024, "Simplifying Deep Temporal Difference Learning"): Q-learning for
vectorized envs with no replay and no target network; LayerNorm in the network keeps the
bootstrapped targets stable, Q(lambda) returns over short rollouts of many envs carry the reward.

One learning step on a full rollout of T steps x N envs (fastdqn.rollout):

    next_t = max_a Q(s_{t+1}, a)                       (recorded while acting: no extra forward)
    G_t    = lambda_returns(r, terminals, next, gamma, lambda)      (Peng's Q(lambda))
    K epochs, each over the T * N transitions in a fresh random order, split in M minibatches:
        loss = mean_i w_i (Q(s_i, a_i) - G_i)^2       (G a constant; w_i = 0 before a reset)
        clip the gradient norm, optimizer step

The targets are computed once per rollout, from the weights that acted in it, as CleanRL's PQN does:
the training rule (``acting_rule(record=True)``) keeps max_a Q of every obs it acts on, and the loop
acts on each row of the rollout right after storing it, the last row included, before this step. So
the last T entries recorded since the previous step are next_0 .. next_{T-1}. An entry is None where
acting ran no forward (every env explored: with epsilon near 1, most rows), and rows acted on by no
training rule at all (the first rollout after a resume, a rollout given to ``learn`` directly) have
none: those rows get one forward each here, of the acting forward's shape, so the numbers are the
same either way (a resumed run stays bit-identical). The minibatch order comes from the store's own
stream (checkpointed).

Acting: epsilon-greedy over the env batch (fastdqn.acting.EpsilonGreedy, the DQN rule) with the
run's epsilon schedule; evaluation with --eval-eps.

Results under the DQN learner's keys: loss (mean over the minibatches), mean_q = mean Q(s, a) of
the last minibatch, td_abs = mean |G - Q(s, a)| of the last minibatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fastdqn.acting import EpsilonGreedy
from fastdqn.agents.onpolicy import OnPolicyAgent, Torso
from fastdqn.networks import _exact, _init_linear
from fastdqn.rollout import lambda_returns

__all__ = ["PQN", "LayerNormQNetwork"]


class LayerNormQNetwork(nn.Module):
    """obs -> Q (B, A) fp32: a torso with LayerNorm before every ReLU, then a linear Q head."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, hidden: int = 512, torso: str = "nature"):
        super().__init__()
        self.torso = Torso(obs_shape, hidden, torso, layer_norm=True)
        self.q = _init_linear(nn.Linear(hidden, num_actions), 1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return _exact(self.q, self.torso(obs))


class PQN(OnPolicyAgent):
    """Owns the Q-network and its optimizer; ``learn(batch)`` is K epochs x M minibatches on a rollout.

    Args:
        network: a LayerNormQNetwork (or any module obs -> Q (B, A)).
        num_actions: for the acting rules.
        gamma, q_lambda: the Q(lambda) returns.
        epochs, minibatches: K and M; M must divide T * N.
        optimizer, lr, adam_eps, max_grad_norm, precision, device: see fastdqn.agents.onpolicy.
    """

    def __init__(self, network: nn.Module, num_actions: int, *, gamma: float = 0.99, q_lambda: float = 0.65,
                 epochs: int = 4, minibatches: int = 4, optimizer: str = "radam", lr: float = 2.5e-4,
                 adam_eps: float = 1e-8, max_grad_norm: float | None = 10.0, precision: str = "auto", device=None,
                 batch_size: int | None = None):
        if epochs < 1 or minibatches < 1:
            raise ValueError(f"epochs and minibatches must be >= 1, got {epochs} and {minibatches}")
        self.num_actions = int(num_actions)
        self.gamma, self.q_lambda = float(gamma), float(q_lambda)
        self.epochs, self.minibatches = int(epochs), int(minibatches)
        self._acted_values: list[torch.Tensor | None] = []  # max_a Q (N,) of each obs acted on (or None)
        self._setup(network, optimizer=optimizer, lr=lr, adam_eps=adam_eps, max_grad_norm=max_grad_norm,
                    precision=precision, device=device, batch_size=batch_size)

    @property
    def q_network(self) -> nn.Module:
        return self.network

    def acting_rule(self, record: bool = False) -> EpsilonGreedy:
        """Epsilon-greedy on the Q-network; ``record``: the training loop's rule, which keeps the values
        the next learning step's targets take (evaluation, ``fastdqn eval``: a plain one)."""
        return EpsilonGreedy(self.network, self.num_actions, self.device, self.precision,
                             record=self.record_values if record else None)

    def record_values(self, q: torch.Tensor | None) -> None:
        """Keep max_a Q of an obs batch of the pool (Q (N, A) of the acting forward; None: it ran none)
        for the targets."""
        self._acted_values.append(None if q is None else q.max(dim=1).values)

    def targets(self, b: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The Q(lambda) returns (T, N) of a rollout on the device (no gradient); next_t as the module
        docstring says: recorded while acting on obs[t + 1], else one forward of obs[t + 1]."""
        steps = b["actions"].shape[0]
        recorded, self._acted_values = self._acted_values[-steps:], []  # of obs rows T - len + 1 .. T
        recorded = [None] * (steps - len(recorded)) + recorded  # recorded[t]: of obs row t + 1, or None
        with torch.no_grad(), self.autocast():
            next_q = torch.stack([self.network(b["obs"][1 + t]).float().max(dim=1).values if value is None
                                  else value for t, value in enumerate(recorded)])
        return lambda_returns(b["rewards"], b["terminated"], b["chain"], next_q, self.gamma, self.q_lambda)

    def learn(self, batch: Mapping[str, Any], rng) -> dict[str, Any]:
        """K epochs x M minibatches on a full rollout (RolloutStore.batch()); ``rng`` (NumPy) draws
        each epoch's order. Device tensors under the loop's keys, plus updates (K * M) and sampled
        (K * T * N transitions)."""
        b = self._tensors(batch)
        steps, envs = b["actions"].shape[:2]
        returns = self.targets(b).flatten()
        obs = b["obs"][:steps].flatten(0, 1)
        actions, weights = b["actions"].flatten().long(), b["valid"].flatten().float()
        total = steps * envs
        size = total // self.minibatches
        losses = []
        for _ in range(self.epochs):
            order = torch.as_tensor(rng.permutation(total), device=self.device)
            for start in range(0, size * self.minibatches, size):
                idx = order[start:start + size]
                with self.autocast():
                    q_all = self.network(obs[idx])
                q = q_all.float().gather(1, actions[idx].unsqueeze(1)).squeeze(1)
                w = weights[idx]
                delta = q - returns[idx]
                loss = (w * delta.square()).sum() / w.sum().clamp(min=1.0)
                self._step(loss)
                losses.append(loss.detach())
        count = w.sum().clamp(min=1.0)
        return {"loss": torch.stack(losses).mean(), "mean_q": (w * q.detach()).sum() / count,
                "td_abs": (w * delta.detach().abs()).sum() / count,
                "updates": self.epochs * self.minibatches, "sampled": self.epochs * total}
