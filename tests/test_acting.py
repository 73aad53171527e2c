import math

import numpy as np
import pytest
import torch

from fastdqn.acting import epsilon_at, exponential, linear_two_phase, select_actions
from fastdqn.config import make_config


def test_linear_schedule_has_two_phases():
    kw = dict(start=1.0, mid=0.1, mid_steps=100, final=0.01, final_steps=1000)
    assert linear_two_phase(0, **kw) == 1.0
    assert linear_two_phase(50, **kw) == pytest.approx(0.55)
    assert linear_two_phase(100, **kw) == pytest.approx(0.1)
    assert linear_two_phase(550, **kw) == pytest.approx(0.055)  # halfway through the slow phase
    assert linear_two_phase(1000, **kw) == pytest.approx(0.01)
    assert linear_two_phase(10**9, **kw) == 0.01


def test_exponential_schedule_decays_to_its_floor():
    assert exponential(0, 1.0, 0.01, 100) == 1.0
    assert exponential(100, 1.0, 0.01, 100) == pytest.approx(0.01 + 0.99 / math.e)
    assert exponential(10**6, 1.0, 0.01, 100) == pytest.approx(0.01)


def test_config_picks_the_schedule():
    cfg = make_config("cartpole", eps_schedule="exp", eps_decay_steps=10, eps_final=0.0)
    assert epsilon_at(cfg, 10) == pytest.approx(math.exp(-1))
    cfg = make_config("cartpole")
    assert epsilon_at(cfg, cfg.eps_final_steps) == pytest.approx(cfg.eps_final)


class Fixed(torch.nn.Module):
    """Q-values that prefer action 2 for every observation."""

    def forward(self, obs):
        return torch.tensor([0.0, 1.0, 5.0, 2.0]).expand(len(obs), 4)


def test_epsilon_greedy_acting():
    rng = np.random.default_rng(0)
    obs = np.zeros((4000, 3), np.float32)
    greedy = select_actions(Fixed(), obs, 0.0, 4, rng, torch.device("cpu"))
    assert (greedy == 2).all()
    mixed = select_actions(Fixed(), obs, 0.4, 4, rng, torch.device("cpu"))
    # a random action is the greedy one a quarter of the time: P(action != 2) = 0.4 * 3/4
    assert np.mean(mixed != 2) == pytest.approx(0.3, abs=0.03)
    assert set(np.unique(mixed)) == {0, 1, 2, 3}
