"""Exploration schedules and batched epsilon-greedy acting (one forward for all envs).

An acting rule is what the Actor and evaluation call, whatever the agent: ``rule(obs, epsilon,
rng)`` -> actions for the batch, with ``rule.network`` (the weights it acts with),
``rule.action_shape`` and ``rule.action_dtype``. EpsilonGreedy is DQN's; fastdqn.agents.td3 has
the continuous one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fastdqn.hardware import autocast


def linear_two_phase(step: int, start: float, mid: float, mid_steps: int, final: float, final_steps: int) -> float:
    """start -> mid linearly over [0, mid_steps], then mid -> final over [mid_steps, final_steps]."""
    if step <= mid_steps:
        return start + (mid - start) * step / max(mid_steps, 1)
    if step >= final_steps:
        return final
    return mid + (final - mid) * (step - mid_steps) / (final_steps - mid_steps)


def exponential(step: int, start: float, final: float, decay_steps: int) -> float:
    """start decays toward the floor `final` with time constant decay_steps."""
    return final + (start - final) * math.exp(-step / decay_steps)


def epsilon_at(cfg, step: int) -> float:
    if cfg.eps_schedule == "exp":
        return exponential(step, cfg.eps_start, cfg.eps_final, cfg.eps_decay_steps)
    return linear_two_phase(step, cfg.eps_start, cfg.eps_mid, cfg.eps_mid_steps, cfg.eps_final, cfg.eps_final_steps)


@torch.no_grad()
def select_actions(q_network, obs: np.ndarray, epsilon: float, num_actions: int, rng: np.random.Generator,
                   device: torch.device, precision: str = "fp32", record=None) -> np.ndarray:
    """Greedy actions from one batched forward, each replaced by a random one with prob. epsilon.

    ``precision`` is a resolved one (fp32 | bf16); Q and its argmax are fp32 either way. The
    forward is skipped when every env explores. ``record``, if given, receives what the forward
    computed, Q (B, A) fp32 on the device, or None where it was skipped.
    """
    batch = len(obs)
    explore = rng.random(batch) < epsilon
    actions = rng.integers(0, num_actions, batch)
    q = None
    if not explore.all():
        with autocast(device, precision):
            q = q_network(torch.as_tensor(obs, device=device)).float()
        greedy = q.argmax(dim=1).cpu().numpy()
        actions = np.where(explore, actions, greedy)
    if record is not None:
        record(q)
    return actions.astype(np.int32)


class EpsilonGreedy:
    """DQN's acting rule, as the Actor and evaluation call every agent's: ``rule(obs, epsilon, rng)``
    -> actions (B,) int32 (select_actions on ``network``, the Q-network). ``record``: see
    select_actions (PQN keeps the values its targets need)."""

    action_shape: tuple = ()
    action_dtype = np.int64

    def __init__(self, network, num_actions: int, device: torch.device, precision: str = "fp32", record=None):
        self.network, self.num_actions, self.device, self.precision = network, num_actions, device, precision
        self.record = record

    def __call__(self, obs: np.ndarray, epsilon, rng: np.random.Generator) -> np.ndarray:
        return select_actions(self.network, obs, epsilon, self.num_actions, rng, self.device, self.precision,
                              self.record)
