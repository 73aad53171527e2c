"""Agents other than the DQN family's learner: networks, acting rule, update and state of each.

    td3       DDPG and TD3 (continuous actions): Actor, Critic, TD3, GaussianExploration, make_agent
    a2c       A2C (on-policy actor-critic, discrete actions): A2C, ActorCritic, PolicyActing, a2c_loss
    pqn       PQN (on-policy Q(lambda), discrete actions): PQN, LayerNormQNetwork
    onpolicy  what A2C and PQN share: Torso, OnPolicyAgent, make_optimizer

The on-policy modules are imported by name (fastdqn.agents.a2c, ...), not here.
"""

from .td3 import ALGORITHMS, TD3, Actor, Critic, GaussianExploration, make_agent

__all__ = ["ALGORITHMS", "TD3", "Actor", "Critic", "GaussianExploration", "make_agent"]
