"""Evaluation plays the training game, and --protocol sets EnvPool's options as documented
(read back from the env EnvPool built)."""

import json

import numpy as np
import pytest
import torch

from fastdqn.cli import build_parser
from fastdqn.config import from_arguments, make_config
from fastdqn.envs import EnvConfig, VecEnv
from fastdqn.evaluate import evaluate

NOOP = 0


def lives_lost_by_noop_play(cfg: EnvConfig, steps: int) -> int:
    """Lives lost (read from EnvPool's own ``lives`` counter) by a policy that never presses FIRE."""
    env = VecEnv(cfg)
    env.env.async_reset()
    _, _, _, _, info = env.env.recv()
    lives = np.asarray(info["lives"]).copy()
    lost = 0
    for _ in range(steps):
        _, _, _, _, info = env.env.step(np.full(cfg.num_envs, NOOP), np.asarray(info["env_id"]))
        now = np.asarray(info["lives"])
        lost += int(np.sum(np.clip(lives - now, 0, None)))  # a new game's lives go up, not down
        lives = now.copy()
    env.close()
    return lost


def test_a_policy_that_never_fires_loses_lives_at_the_same_pace_in_training_and_evaluation():
    # Breakout needs FIRE to serve. Training's episodic life resets after each lost life and the
    # reset presses FIRE; evaluation must do the same, or its games stall after the first life.
    train_cfg = EnvConfig(env_id="Breakout-v5", num_envs=2, seed=3)
    train_lost = lives_lost_by_noop_play(train_cfg, steps=1500)
    eval_lost = lives_lost_by_noop_play(train_cfg.for_evaluation(seed=4), steps=1500)
    assert train_lost >= 40  # a missed ball every ~60 steps per env
    assert abs(eval_lost - train_lost) <= 0.15 * train_lost, (train_lost, eval_lost)


# The protocols as published: the DQN / NoFrameskip-v4 settings, and Machado et al. (2018)
# as Dopamine runs them.
PUBLISHED = {
    "v4": dict(repeat_action_probability=0.0, noop_max=30, full_action_space=False, use_fire_reset=True,
               episodic_life=True, max_episode_steps=27000, frame_skip=4, reward_clip=True),
    "machado": dict(repeat_action_probability=0.25, noop_max=0, full_action_space=True, use_fire_reset=False,
                    episodic_life=False, max_episode_steps=27000, frame_skip=4, reward_clip=True),
}


@pytest.mark.parametrize("protocol", ["v4", "machado"])
def test_protocol_sets_envpool_options_as_published(protocol):
    args = build_parser().parse_args(["train", "--env-id", "Breakout-v5", "--num-envs", "2", "--protocol", protocol])
    cfg = from_arguments(args)
    env = VecEnv(cfg.env)
    built = env.env.spec.config
    for name, value in PUBLISHED[protocol].items():
        assert getattr(built, name) == value, name
    assert env.num_actions == (18 if protocol == "machado" else 4)
    env.close()
    evaluation = VecEnv(cfg.env.for_evaluation(num_envs=2)).env.spec.config
    for name, value in PUBLISHED[protocol].items():
        assert getattr(evaluation, name) == (False if name == "reward_clip" else value), name


def test_an_option_given_by_itself_wins_over_the_protocol_and_is_recorded_as_a_change():
    from fastdqn.config import protocol_record

    cfg = make_config(env=dict(env_id="Pong-v5", protocol="machado", noop_max=7))
    assert cfg.env.noop_max == 7 and cfg.env.repeat_action_probability == 0.25
    record = protocol_record(cfg)
    assert record["name"] == "machado" and record["changed"] == {"noop_max": 7}
    assert "changed: noop_max 7 instead of 0" in record["description"]
    json.dumps(record)  # goes into summary.json as it is


def test_protocol_errors_name_the_flag():
    with pytest.raises(ValueError, match="--protocol machado applies to Atari games; CartPole-v1"):
        make_config("cartpole", env=dict(protocol="machado"))
    with pytest.raises(ValueError, match="--protocol must be one of v4, machado"):
        make_config(env=dict(protocol="v5"))


class AlwaysNoop(torch.nn.Module):
    def __init__(self, num_actions: int):
        super().__init__()
        self.num_actions = num_actions

    def forward(self, obs):
        q = torch.zeros(len(obs), self.num_actions)
        q[:, NOOP] = 1.0
        return q


@pytest.mark.parametrize("episodic_life", [True, False])
def test_evaluation_of_a_policy_that_never_fires(episodic_life):
    # With the training game's life handling each life is served by the reset, so the NOOP policy
    # misses five balls and the game ends in a few hundred steps; without it, the game stalls after
    # the first life until the step cap.
    cfg = EnvConfig(env_id="Breakout-v5", num_envs=2, episodic_life=episodic_life)
    result = evaluate(AlwaysNoop(4), cfg, episodes=2, epsilon=0.0, max_steps=3000, device=torch.device("cpu"))
    if episodic_life:
        assert max(result["lengths"]) < 1000, result
    else:
        assert min(result["lengths"]) == 3000, result
