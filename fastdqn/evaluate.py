"""Full-game evaluation: the training game (same protocol and life handling, see fastdqn.envs)
with unclipped rewards and the evaluation epsilon; a score is the whole game, every life.

Each of ``episodes`` envs plays exactly one game and its first game is the one counted, so
short games are not over-represented. Optionally the game of env 0 is saved as a GIF made
of the agent's own 84x84 observations (Atari only), and recorded in RGB by a ``GameRecorder``
(rendering does not change the games, so the scores are the same with or without it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastdqn.acting import EpsilonGreedy
from fastdqn.envs import EnvConfig, VecEnv
from fastdqn.video import GameRecorder, write_gif


def evaluate(policy, env_cfg: EnvConfig, *, episodes: int, epsilon: float, max_steps: int,
             device: torch.device, precision: str = "fp32", seed: int = 12345,
             gif_path: str | Path | None = None, recorder: GameRecorder | None = None,
             on_game_end: Callable[[int, int, float], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict | None:
    """``policy`` is an acting rule (fastdqn.acting), or a Q-network to act epsilon-greedily with
    (on ``device``, in ``precision``). ``on_game_end(games_done, episodes, mean_so_far)`` is called
    as games finish. When ``should_stop()`` turns true (Ctrl-C) the evaluation is dropped at once:
    None."""
    cfg = env_cfg.for_evaluation(num_envs=episodes, seed=seed)
    cfg = replace(cfg, max_episode_steps=min(cfg.max_episode_steps, max_steps), num_threads=0)
    env = VecEnv(cfg, render=recorder is not None)
    if isinstance(policy, torch.nn.Module):
        policy = EpsilonGreedy(policy, env.num_actions, device, precision)
    network = policy.network
    rng = np.random.default_rng(seed)
    returns = np.full(episodes, np.nan)
    lengths = np.zeros(episodes, np.int64)
    frames = []
    was_training = network.training
    network.eval()
    step = env.reset()
    while np.isnan(returns).any():
        if should_stop is not None and should_stop():
            env.close()
            network.train(was_training)
            return None
        if gif_path is not None and env.atari and np.isnan(returns[0]):
            rows = np.flatnonzero(step.env_ids == 0)
            if len(rows):
                frames.append(step.obs[rows[0], -1])
        if recorder is not None and np.isnan(returns[0]) and 0 in step.env_ids:
            recorder.add(env.render(0))
        for i in np.flatnonzero(step.game_over):
            e = step.env_ids[i]
            if np.isnan(returns[e]):
                returns[e], lengths[e] = step.episode_returns[i], step.episode_lengths[i]
                if on_game_end is not None:
                    done = ~np.isnan(returns)
                    on_game_end(int(done.sum()), episodes, float(returns[done].mean()))
        actions = policy(step.obs, epsilon, rng)
        step = env.step(actions)
    env.close()
    network.train(was_training)
    if gif_path is not None and frames:
        write_gif(gif_path, frames)
    return {
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "mean_length": float(lengths.mean()),
        "episodes": episodes,
    }
