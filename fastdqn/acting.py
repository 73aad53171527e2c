"""Exploration schedules and batched epsilon-greedy acting (one forward for all envs)."""

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
                   device: torch.device, precision: str = "fp32") -> np.ndarray:
    """Greedy actions from one batched forward, each replaced by a random one with prob. epsilon.

    ``precision`` is a resolved one (fp32 | bf16); Q and its argmax are fp32 either way.
    """
    batch = len(obs)
    explore = rng.random(batch) < epsilon
    actions = rng.integers(0, num_actions, batch)
    if not explore.all():
        with autocast(device, precision):
            q = q_network(torch.as_tensor(obs, device=device))
        greedy = q.argmax(dim=1).cpu().numpy()
        actions = np.where(explore, actions, greedy)
    return actions.astype(np.int32)
