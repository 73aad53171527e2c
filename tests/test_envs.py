"""The env layer against independent references: the game's own score counter in RAM,
EnvPool's elapsed_step, and EnvPool's own frame stacks."""

import numpy as np
import pytest

from fastdqn.envs import EnvConfig, EpisodeTracker, make_env, validate


def bcd(byte):
    return (byte >> 4) * 10 + (byte & 15)


# Where each game keeps its score in RAM (the ALE reads the same bytes): (low, high) BCD.
SCORE_RAM = {"SpaceInvaders-v5": (104, 102), "Breakout-v5": (77, 76)}


class InfoRecorder:
    """Wraps the EnvPool object to keep the last raw info dict (for RAM and elapsed_step)."""

    def __init__(self, env):
        self._env, self.info = env, None

    def recv(self):
        out = self._env.recv()
        self.info = out[-1]
        return out

    def __getattr__(self, name):
        return getattr(self._env, name)


def run_random(cfg, steps, seed=0):
    """Step random actions; yield (EnvStep, raw info) pairs, starting with the reset."""
    env = make_env(cfg)
    env.env = recorder = InfoRecorder(env.env)
    rng = np.random.default_rng(seed)
    try:
        step = env.reset()
        yield step, recorder.info
        for _ in range(steps):
            step = env.step(rng.integers(0, env.num_actions, len(step.env_ids)))
            yield step, recorder.info
    finally:  # also when the caller stops early
        env.close()


@pytest.mark.parametrize("batch_size", [0, 3], ids=["sync", "async"])
def test_full_game_score_is_ram_score_across_life_losses(batch_size):
    game = "SpaceInvaders-v5"
    lo, hi = SCORE_RAM[game]
    cfg = EnvConfig(env_id=game, num_envs=6, batch_size=batch_size, seed=1)
    life_losses = np.zeros(cfg.num_envs, int)
    games = []
    # In async mode which envs come back is up to thread timing, so the number of games
    # finished in a fixed step count varies: step until enough games end (with a cap).
    for step, info in run_random(cfg, 8000):
        if len(games) >= 6:
            break
        assert set(step.env_ids) <= set(range(cfg.num_envs))
        assert len(step.env_ids) == (batch_size or cfg.num_envs)
        life_losses[step.env_ids] += step.terminated & ~step.game_over
        for i in np.flatnonzero(step.game_over):
            ram = info["ram"][i].astype(int)
            env_id = step.env_ids[i]
            games.append(
                (step.episode_returns[i], bcd(ram[lo]) + 100 * bcd(ram[hi]),
                 step.episode_lengths[i], info["elapsed_step"][i], life_losses[env_id])
            )
            life_losses[env_id] = 0
    assert len(games) >= 6
    for ret, ram_score, length, elapsed, losses in games:
        assert ret == ram_score
        assert length == elapsed
        assert losses <= 2  # SpaceInvaders has 3 lives: the third loss is the game over
    # Several training terminals inside one reported game. Not in every game: random play
    # sometimes lets the invaders land, which ends the game with lives left (in async mode
    # the games, like the actions, depend on thread timing).
    assert max(g[4] for g in games) == 2
    # Scores far above the clipped sum: the rewards reported are the unclipped ones.
    assert max(g[0] for g in games) > 50


@pytest.mark.parametrize("batch_size", [0, 3], ids=["sync", "async"])
def test_auto_reset_step_is_flagged_for_every_env(batch_size):
    cfg = EnvConfig(num_envs=5, batch_size=batch_size, seed=2, max_episode_steps=150)
    done_before = np.ones(cfg.num_envs, bool)  # the first obs of every env is a reset
    game_over_before = np.ones(cfg.num_envs, bool)
    last_obs = {}
    seen = {"life": 0, "game": 0}
    for step, info in run_random(cfg, 1200):
        for i, e in enumerate(step.env_ids):
            assert step.reset_step[i] == done_before[e]
            assert step.new_game[i] == (done_before[e] and game_over_before[e])
            if step.reset_step[i]:
                assert step.reward[i] == 0
            if step.new_game[i]:  # a real game reset: the first frame repeated
                assert all((step.obs[i, k] == step.obs[i, 0]).all() for k in range(4))
                assert info["elapsed_step"][i] == 0
                seen["game"] += e in last_obs
            elif step.reset_step[i]:  # reset after a life loss: the stack keeps shifting
                assert (step.obs[i, :3] == last_obs[e][1:]).all()
                seen["life"] += 1
            done_before[e] = step.terminated[i] or step.truncated[i]
            game_over_before[e] = step.game_over[i]
            last_obs[e] = step.obs[i].copy()
    assert seen["life"] > 0 and seen["game"] > 0


def test_truncation_ends_a_game_at_max_episode_steps():
    cfg = EnvConfig(num_envs=2, seed=0, max_episode_steps=100, episodic_life=False)
    ends = []
    for step, info in run_random(cfg, 400):
        for i in np.flatnonzero(step.game_over):
            ends.append((step.truncated[i], step.terminated[i], step.episode_lengths[i]))
    assert ends, "no game ended"
    for truncated, terminated, length in ends:
        assert truncated or terminated
        if truncated:
            assert length == 100
    assert any(t for t, _, _ in ends)


@pytest.mark.parametrize("batch_size", [0, 5], ids=["sync", "async"])
def test_cartpole_episodes_report_their_real_lengths(batch_size):
    cfg = EnvConfig(env_id="CartPole-v1", num_envs=8, batch_size=batch_size, seed=0)
    env = make_env(cfg)
    assert not env.atari and env.stack == 1 and env.obs_shape == (4,)
    # Reference: count the steps of every env by hand, from the raw dones.
    steps_in_episode = np.zeros(cfg.num_envs, int)
    done_before = np.ones(cfg.num_envs, bool)
    rng = np.random.default_rng(0)
    step = env.reset()
    lengths = []
    for t in range(600):
        if t:
            step = env.step(rng.integers(0, 2, len(step.env_ids)))
        for i, e in enumerate(step.env_ids):
            steps_in_episode[e] = 0 if done_before[e] else steps_in_episode[e] + 1
            if step.game_over[i]:
                assert step.episode_lengths[i] == steps_in_episode[e]
                assert step.episode_returns[i] == steps_in_episode[e]  # +1 per step
                lengths.append(steps_in_episode[e])
            done_before[e] = step.terminated[i] or step.truncated[i]
    assert len(lengths) > 20 and len(set(lengths)) > 5


def test_episode_tracker_alone():
    tracker = EpisodeTracker(2)
    ids = np.array([0, 1])
    f = np.zeros(2, bool)
    # reset: both are reset steps and new games
    reset, new, _, _ = tracker.update(ids, np.zeros(2), f, f, f)
    assert reset.all() and new.all()
    # env 0 loses a life (terminal, not game over), env 1 scores 7
    reset, new, ret, _ = tracker.update(ids, np.array([3.0, 7.0]), np.array([True, False]), f, f)
    assert not reset.any() and (ret == 0).all()
    # env 0 auto-resets (reward must be ignored), env 1 ends its game
    reset, new, ret, length = tracker.update(ids[::-1], np.array([1.0, 100.0]), f, np.array([True, False]),
                                              np.array([True, False]))
    assert reset.tolist() == [False, True] and new.tolist() == [False, False]
    assert ret.tolist() == [8.0, 0.0] and length.tolist() == [2, 0]


def test_unknown_game_suggests_close_names():
    with pytest.raises(ValueError, match="Breakout-v5"):
        validate(EnvConfig(env_id="Breakuot-v5"))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_envs=4, batch_size=8), "batch_size"),
        (dict(num_envs=0), "num_envs"),
        (dict(num_envs=-3), "num_envs"),
        (dict(batch_size=-1), "batch_size"),
        (dict(max_episode_steps=0), "max_episode_steps"),
        (dict(frame_size=20), "frame_size"),
        (dict(repeat_action_probability=1.5), "repeat_action_probability"),
    ],
)
def test_bad_settings_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        validate(EnvConfig(**changes))


def test_evaluation_settings_play_the_training_game_with_real_rewards():
    env = make_env(EnvConfig(num_envs=2), evaluation=True)
    cfg = env.env.spec.config
    assert cfg.episodic_life and cfg.use_fire_reset and not cfg.reward_clip and cfg.noop_max == 30
    assert cfg.repeat_action_probability == 0.0 and cfg.max_episode_steps == 27000
    assert not env.is_async


def test_frame_size_resizes_the_same_screen():
    """--frame-size 42 plays the same game as 84: each 42x42 frame is the 84x84 frame at half
    the resolution (EnvPool resizes the 210x160 screen to each size; 2x2 means as reference)."""
    frames = {}
    for size in (84, 42):
        steps = list(run_random(EnvConfig(num_envs=2, num_threads=1, frame_size=size), 40))
        frames[size] = np.stack([step.obs for step, _ in steps]).astype(np.float64)
    assert frames[42].shape == (41, 2, 4, 42, 42)
    pooled = frames[84].reshape(41, 2, 4, 42, 2, 42, 2).mean(axis=(4, 6))
    assert np.abs(pooled - frames[42]).max() <= 1.0  # rounding to whole grey levels
