"""Agents other than the DQN family's learner: networks, acting rule, update and state of each.

    td3   DDPG and TD3 (continuous actions): Actor, Critic, TD3, GaussianExploration, make_agent
"""

from .td3 import ALGORITHMS, TD3, Actor, Critic, GaussianExploration, make_agent

__all__ = ["ALGORITHMS", "TD3", "Actor", "Critic", "GaussianExploration", "make_agent"]
