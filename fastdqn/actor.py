"""The actor: an EnvPool pool and the policy that acts in it, producing the replay's records.

Both training modes run it. The single-process trainer (train.py) steps one in-process Actor
between its learning steps; the distributed trainer (distributed.py) runs one inside each Ray
actor and ships what it produces, in chunks, to the learner. Either way the learner stores
exactly the ``Records`` an Actor made, with ``store``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastdqn.envs import EnvStep, VecEnv


class Records(NamedTuple):
    """One env step of some envs of a pool in the replay's record format (what
    ``PrioritizedReplay.add`` keeps), plus the game-end figures the learner logs. Rows align
    with ``env_ids``; ``Records(*(np.concatenate(f) for f in zip(*many)))`` joins steps."""

    frames: np.ndarray  # (B, *frame_shape): the NEWEST frame of each obs; the replay rebuilds the stacks
    actions: np.ndarray  # (B,) int64 (continuous: (B, A) float32): the action sent on the env's previous step
    #                      (ignored on reset steps)
    rewards: np.ndarray  # (B,) float32: the training reward (clipped on Atari)
    terminated: np.ndarray  # (B,) bool: training terminal (a lost life counts with episodic life)
    truncated: np.ndarray  # (B,) bool: time limit
    reset_step: np.ndarray  # (B,) bool: the obs starts an episode; no transition leads into it
    new_game: np.ndarray  # (B,) bool: the stack was refilled with this frame (first reset, new game)
    env_ids: np.ndarray  # (B,) int32: the env's index in its pool
    game_over: np.ndarray  # (B,) bool: a full game ended here
    episode_returns: np.ndarray  # (B,) float64: its full-game score where game_over, else 0
    episode_lengths: np.ndarray  # (B,) int64: its length in agent steps where game_over, else 0


def store(replay, records: Records, first_lane: int = 0) -> None:
    """Append ``records`` to the replay, env ``e`` of the pool going to lane ``first_lane + e``."""
    frames = records.frames
    if replay.stack > 1:
        # add() takes stacked obs and keeps only their newest frame: a (B, stack, ...) view in
        # which every position is that frame (stride 0, no copy) gives it just that.
        frames = np.broadcast_to(frames[:, None], (len(frames), replay.stack, *frames.shape[1:]))
    env_ids = records.env_ids + first_lane if first_lane else records.env_ids
    replay.add(frames, records.actions, records.rewards, records.terminated, records.truncated,
               records.reset_step, records.new_game, env_ids)


class Actor:
    """An agent's acting rule (fastdqn.acting: epsilon-greedy, Gaussian exploration) in an EnvPool
    pool, one forward for each batch of envs.

    ``reset()`` and ``recv()`` return the ``Records`` of what the pool returned; ``send(eps)``
    picks the actions for the obs received last and hands them to EnvPool's threads, which
    step the envs while the caller does something else (learns) until ``recv()``. ``eps`` is
    one epsilon for every env, or one per env of the pool (an array indexed by env id).
    ``policy.network`` holds the weights it acts with.
    """

    def __init__(self, env: VecEnv, policy, rng: np.random.Generator):
        self.env = env
        self.policy = policy
        self.rng = rng
        # what each env was last sent
        self.last_action = np.zeros((env.num_envs, *policy.action_shape), policy.action_dtype)
        self._step: EnvStep | None = None

    def reset(self) -> Records:
        return self._records(self.env.reset())

    def send(self, epsilon) -> int:
        """Act on the obs received last and send the actions; returns the agent steps taken."""
        step = self._step
        eps = epsilon[step.env_ids] if np.ndim(epsilon) else epsilon
        actions = self.policy(step.obs, eps, self.rng)
        self.last_action[step.env_ids] = actions
        self.env.send(actions)
        return len(actions)

    def recv(self) -> Records:
        return self._records(self.env.recv())

    def _records(self, step: EnvStep) -> Records:
        self._step = step  # its obs are what the next send() acts on
        frames = step.obs[:, -1] if self.env.atari else step.obs
        return Records(frames, self.last_action[step.env_ids], step.reward, step.terminated, step.truncated,
                       step.reset_step, step.new_game, step.env_ids, step.game_over, step.episode_returns,
                       step.episode_lengths)

    def close(self) -> None:
        self.env.close()


class LocalSource:
    """One in-process actor: the single-process trainer's source of records (train.py's
    docstring says what a source is; distributed.RaySource is the other one)."""

    def __init__(self, actor: Actor, epsilon_at):
        self.actor, self._epsilon_at = actor, epsilon_at  # epsilon_at(schedule_steps): the schedule

    def reset(self, stop=None) -> list[Records]:
        return [self.actor.reset()]

    def epsilon(self, schedule_steps: int) -> float:
        return self._epsilon_at(schedule_steps)

    def act(self, epsilon: float) -> int:
        return self.actor.send(epsilon)

    def recv(self, idle=None, stop=None) -> list[Records]:
        return [self.actor.recv()]

    def scalars(self) -> dict:
        return {}

    def summary(self) -> dict:
        return {}

    def close(self) -> None:
        self.actor.close()
