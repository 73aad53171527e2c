"""Agents other than the DQN family's learner: networks, acting rule, update and state of each.

    td3   DDPG and TD3 (continuous actions): Actor, Critic, TD3, make_agent
"""

from .td3 import TD3, Actor, Critic, make_agent

__all__ = ["TD3", "Actor", "Critic", "make_agent"]
