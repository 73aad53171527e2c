"""The env layer: one factory over EnvPool, and the bookkeeping every consumer needs.

EnvPool quirks absorbed here, once (measured on envpool 1.2.5):

* Auto-reset happens on the step AFTER a done: the action sent for that env is ignored and
  the returned obs starts a new episode. Such steps are flagged ``reset_step`` so that the
  transition (last obs -> first obs) is never stored as something to learn from.
* With episodic life, a life loss is a training terminal (``terminated``) but not the end of
  the game; the following reset step does NOT clear the frame stack (it keeps shifting).
  A real game reset (first reset, game over, truncation) fills the stack with the first
  frame repeated; those steps are flagged ``new_game``.
* The true game score is the sum of the unclipped ``info["reward"]`` until game over
  (``info["terminated"]``) or truncation; ``EpisodeTracker`` reports exactly that.
* MuJoCo tasks (``HalfCheetah-v4``, ``Hopper-v4``, ...) have a Box action space: ``VecEnv``
  then has ``continuous``, ``action_dim``, ``action_low`` / ``action_high``, and ``send`` takes
  float actions (B, action_dim). EnvPool moves the body with the action clipped to the box but
  charges the control cost on the action as sent (an action of 5 on HalfCheetah costs 25x
  the cost of 1 for the same motion), so ``send`` clips to the box first. Their float64
  observations are handed on as float32 (half the replay memory; the networks compute in fp32).
  A task's score is the plain sum of its rewards, until termination or its time limit (1000).

Two evaluation protocols (``PROTOCOLS``) set the Atari options as a group; scores are only
comparable under the same one:

* ``v4`` (the default): the DQN / NoFrameskip-v4 settings used by the Nature DQN, Ape-X,
  CleanRL and Tianshou tables: no sticky actions, up to 30 no-op starts, the minimal action
  set, FIRE pressed at every reset, a life loss is a training terminal, 108k-frame games.
* ``machado``: Machado et al. (2018), "Revisiting the Arcade Learning Environment", as
  Dopamine runs it: sticky actions (p = 0.25), no no-op starts, the full 18-action set, no
  life information and no automatic FIRE, 108k-frame games (Dopamine's 27k-step cap).

Training and evaluation play the same game: evaluation only drops reward clipping. With
episodic life, EnvPool's reset after a lost life presses FIRE (and applies the no-op start)
exactly as in training, and the evaluation score still counts every life of the game.
Evaluating without episodic life instead would make the agent serve the ball itself after
each lost life in Breakout, something training never asked of it.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

import numpy as np


@dataclass
class EnvConfig:
    env_id: str = field(default="Breakout-v5", metadata={"help": "EnvPool task id, e.g. Breakout-v5, Pong-v5, CartPole-v1"})
    num_envs: int = field(default=16, metadata={"help": "number of environments in the pool"})
    batch_size: int = field(default=0, metadata={"help": "envs returned per step; 0 = num_envs (sync), fewer = async"})
    num_threads: int = field(default=0, metadata={"help": "EnvPool worker threads; 0 = EnvPool's default"})
    seed: int = field(default=0, metadata={"help": "base seed of the env pool"})
    protocol: str = field(default="v4", metadata={
        "help": "Atari evaluation protocol, setting the options below as a group (each can still be given): v4 = "
                "no sticky actions, up to 30 no-op starts, minimal action set, FIRE at reset, life loss as a training "
                "terminal; machado = sticky actions 0.25, no no-op starts, full action set, no FIRE at reset, no life "
                "information (Machado et al. 2018, as in Dopamine)", "choices": ("v4", "machado")})
    episodic_life: bool = field(default=True, metadata={
        "help": "Atari: a lost life ends the training episode (a terminal) and the next life starts with the reset's "
                "no-ops and FIRE; evaluation plays the same way and scores the whole game"})
    reward_clip: bool = field(default=True, metadata={"help": "Atari, training only: clip rewards to their sign"})
    noop_max: int = field(default=30, metadata={"help": "Atari: up to this many no-op actions at each reset"})
    repeat_action_probability: float = field(default=0.0, metadata={"help": "Atari: sticky-action probability (0 = v4 semantics)"})
    full_action_space: bool = field(default=False, metadata={"help": "Atari: all 18 actions instead of the game's minimal set"})
    use_fire_reset: bool = field(default=True, metadata={"help": "Atari: press FIRE at each reset, in games that have it"})
    max_episode_steps: int = field(default=27000, metadata={
        "help": "time limit in agent steps (27000 = 108k frames); classic control keeps the task's own (CartPole-v1: "
                "500) unless this is lower"})
    frame_skip: int = field(default=4, metadata={"help": "Atari: emulator frames per agent step"})
    stack_num: int = field(default=4, metadata={"help": "Atari: frames stacked into one observation"})
    frame_size: int = field(default=84, metadata={
        "help": "Atari: grey frames are resized to this many pixels square (84 as in the DQN papers; smaller "
                "is cheaper to learn from, and a change of the game's input: say so beside its scores)"})

    def for_evaluation(self, num_envs: int | None = None, seed: int | None = None) -> "EnvConfig":
        """The same game for scoring: unclipped rewards, synchronous stepping, its own seeds.
        The life handling stays as in training (see the module docstring); scores are full games."""
        return replace(
            self,
            reward_clip=False,
            num_envs=num_envs or self.num_envs,
            batch_size=0,
            seed=self.seed + 10_000 if seed is None else seed,
        )


# Nature torso: 36 -> 8 -> 3 -> 1 pixels; any smaller frame leaves a conv nothing to cover.
MIN_FRAME_SIZE = 36


# The options each protocol sets (the other EnvConfig fields are the same under both).
PROTOCOLS: dict[str, dict] = {
    "v4": dict(episodic_life=True, noop_max=30, repeat_action_probability=0.0, full_action_space=False,
               use_fire_reset=True, max_episode_steps=27_000),
    "machado": dict(episodic_life=False, noop_max=0, repeat_action_probability=0.25, full_action_space=True,
                    use_fire_reset=False, max_episode_steps=27_000),
}


def protocol_options(protocol: str) -> dict:
    """The env options that ``protocol`` sets; ValueError naming the choices for an unknown one."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return dict(PROTOCOLS[protocol])


# What the agent sees, the same under both protocols: every 4th frame, grey, 84x84, 4 stacked (the
# DQN papers'). Not set by --protocol; a change of it is a change of the game's input all the same.
GAME_INPUT = dict(frame_skip=4, stack_num=4, frame_size=84)


def protocol_deviations(cfg: "EnvConfig") -> dict:
    """The options where ``cfg`` departs from its named protocol and the standard game input:
    {name: (protocol's, cfg's)}."""
    return {name: (value, getattr(cfg, name)) for name, value in {**protocol_options(cfg.protocol), **GAME_INPUT}.items()
            if getattr(cfg, name) != value}


@functools.lru_cache(maxsize=1)
def _all_env_ids() -> tuple[str, ...]:
    import envpool

    return tuple(envpool.list_all_envs())


def is_atari(env_id: str) -> bool:
    import envpool

    return "episodic_life" in envpool.make_spec(env_id).config._fields


def is_continuous(env_id: str) -> bool:
    """Whether the task's actions are a Box (MuJoCo, Pendulum) rather than a set of choices."""
    import envpool

    return not hasattr(envpool.make_spec(env_id).action_space, "n")


def is_mujoco(env_id: str) -> bool:
    from envpool.registration import registry

    return registry.specs[env_id][0].startswith("envpool.mujoco")


def validate(cfg: EnvConfig, flag_of=lambda name: name) -> None:
    """Raise ValueError naming the problem, before anything is built; ``flag_of(field)`` names a
    field as the user typed it (the CLI's flags)."""
    if cfg.env_id not in _all_env_ids():
        close = difflib.get_close_matches(cfg.env_id, _all_env_ids(), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown EnvPool task {cfg.env_id!r}.{hint} (fastdqn envs lists all)")
    for name in ("num_envs", "max_episode_steps", "frame_skip", "stack_num"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{flag_of(name)} must be positive, got {getattr(cfg, name)}")
    if cfg.frame_size < MIN_FRAME_SIZE:
        raise ValueError(f"{flag_of('frame_size')} must be at least {MIN_FRAME_SIZE} (the smallest frame the "
                         f"conv torsos take), got {cfg.frame_size}")
    for name in ("batch_size", "num_threads", "noop_max"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{flag_of(name)} must be >= 0, got {getattr(cfg, name)}")
    if cfg.batch_size > cfg.num_envs:
        raise ValueError(f"{flag_of('batch_size')} ({cfg.batch_size}) cannot exceed {flag_of('num_envs')} "
                         f"({cfg.num_envs}): it is how many of the envs each step returns")
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"{flag_of('protocol')} must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
    if cfg.protocol != "v4" and not is_atari(cfg.env_id):
        raise ValueError(f"{flag_of('protocol')} {cfg.protocol} applies to Atari games; {cfg.env_id} is not one")
    if not 0.0 <= cfg.repeat_action_probability < 1.0:
        raise ValueError(f"{flag_of('repeat_action_probability')} must be in [0, 1), got {cfg.repeat_action_probability}")


class EnvStep(NamedTuple):
    """What one (batched) step hands downstream; rows are aligned with ``env_ids``."""

    obs: np.ndarray  # (B, *obs_shape): uint8 (B, 4, 84, 84) for Atari (frame_size 84)
    reward: np.ndarray  # (B,) float32: the training reward (clipped if reward_clip)
    terminated: np.ndarray  # (B,) bool: training terminal (life loss counts with episodic life)
    truncated: np.ndarray  # (B,) bool: time limit reached
    env_ids: np.ndarray  # (B,) int32
    reset_step: np.ndarray  # (B,) bool: obs starts an episode; the action sent before it was ignored
    new_game: np.ndarray  # (B,) bool: a real game reset; the frame stack was refilled
    game_over: np.ndarray  # (B,) bool: the full game ended at this step (game over or truncation)
    episode_returns: np.ndarray  # (B,) float64: full-game score where game_over, else 0
    episode_lengths: np.ndarray  # (B,) int64: agent steps of the game where game_over, else 0


class EpisodeTracker:
    """Per-env bookkeeping of true full-game scores and of which steps are auto-resets.

    ``update`` is called once per batch with the envs it contains, in any order (async).
    A game's length counts the steps whose action took effect (reset steps excluded),
    which equals EnvPool's ``elapsed_step`` at the end of the game.
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        # Before the first reset every env counts as "done", so its first obs is a reset step.
        self.done = np.ones(num_envs, bool)
        self.game_over = np.ones(num_envs, bool)

    def update(self, env_ids, raw_reward, terminated, truncated, game_over):
        reset_step = self.done[env_ids].copy()
        new_game = reset_step & self.game_over[env_ids]
        live = ~reset_step
        self.returns[env_ids] += np.where(live, raw_reward, 0.0)
        self.lengths[env_ids] += live
        finished_returns = np.where(game_over, self.returns[env_ids], 0.0)
        finished_lengths = np.where(game_over, self.lengths[env_ids], 0)
        ended = env_ids[game_over]
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        self.done[env_ids] = terminated | truncated
        self.game_over[env_ids] = game_over
        return reset_step, new_game, finished_returns, finished_lengths


class VecEnv:
    """An EnvPool pool (sync when batch_size == num_envs, else async) with true scores.

    ``reset()`` and ``step(actions)`` both return an ``EnvStep``; ``actions`` are aligned
    with the ``env_ids`` of the previous ``EnvStep``. With ``render=True``, ``render(env_id)``
    returns that env's current screen in RGB (Atari 210x160, CartPole 400x600); it does not
    change what the envs do.
    """

    def __init__(self, cfg: EnvConfig, render: bool = False):
        import envpool

        validate(cfg)
        self.cfg = cfg
        self.atari = is_atari(cfg.env_id)
        kwargs = dict(
            env_type="gymnasium",
            num_envs=cfg.num_envs,
            batch_size=cfg.batch_size or cfg.num_envs,
            num_threads=cfg.num_threads,
            seed=cfg.seed % 2**31,  # EnvPool takes an int32; derived seeds (evaluation: --seed + step) may not fit
        )
        if self.atari:
            kwargs.update(
                episodic_life=cfg.episodic_life,
                reward_clip=cfg.reward_clip,
                noop_max=cfg.noop_max,
                repeat_action_probability=cfg.repeat_action_probability,
                full_action_space=cfg.full_action_space,
                use_fire_reset=cfg.use_fire_reset,
                max_episode_steps=cfg.max_episode_steps,
                frame_skip=cfg.frame_skip,
                stack_num=cfg.stack_num,
                img_height=cfg.frame_size,
                img_width=cfg.frame_size,
            )
        else:  # (an evaluation's --eval-max-steps arrives here as a lower time limit)
            kwargs["max_episode_steps"] = classic_time_limit(cfg)
        if render:
            kwargs["render_mode"] = "rgb_array"
        self.env = envpool.make(cfg.env_id, **kwargs)
        self.num_envs = cfg.num_envs
        self.batch_size = cfg.batch_size or cfg.num_envs
        self.is_async = self.batch_size < self.num_envs
        self.obs_shape = tuple(self.env.observation_space.shape)
        self.obs_dtype = self.env.observation_space.dtype
        self._obs_float32 = self.obs_dtype == np.float64  # MuJoCo (see the module docstring)
        if self._obs_float32:
            self.obs_dtype = np.dtype(np.float32)
        space = self.env.action_space
        self.continuous = not hasattr(space, "n")
        if self.continuous:
            self.num_actions = None
            self.action_dim = int(np.prod(space.shape))
            self.action_low = np.asarray(space.low, np.float32).reshape(-1)
            self.action_high = np.asarray(space.high, np.float32).reshape(-1)
            self._box = (np.asarray(space.low, np.float64), np.asarray(space.high, np.float64))
        else:
            self.num_actions = int(space.n)
        self.stack = cfg.stack_num if self.atari else 1
        self.frame_shape = self.obs_shape[1:] if self.atari else self.obs_shape
        self.tracker = EpisodeTracker(self.num_envs)
        self._env_ids: np.ndarray | None = None

    def reset(self) -> EnvStep:
        self.tracker = EpisodeTracker(self.num_envs)
        self.env.async_reset()
        return self.recv()

    def step(self, actions: np.ndarray) -> EnvStep:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        """The first half of ``step``: hand the actions to EnvPool's threads and return at
        once, so that the caller can work while the envs step; ``recv()`` collects them."""
        if self._env_ids is None:
            raise RuntimeError("call reset() before step()")
        if self.continuous:
            actions = np.clip(np.asarray(actions, np.float64).reshape(-1, self.action_dim), *self._box)
        self.env.send(np.asarray(actions), self._env_ids)

    def recv(self) -> EnvStep:
        """The second half of ``step`` (and of ``reset``): wait for the next batch of envs."""
        obs, reward, terminated, truncated, info = self.env.recv()
        env_ids = np.asarray(info["env_id"], np.int32)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        if self.atari:
            raw_reward = np.asarray(info["reward"], np.float64)
            game_over = np.asarray(info["terminated"], bool) | truncated
        else:
            raw_reward = np.asarray(reward, np.float64)
            game_over = terminated | truncated
        reset_step, new_game, ep_ret, ep_len = self.tracker.update(
            env_ids, raw_reward, terminated, truncated, game_over
        )
        self._env_ids = env_ids
        return EnvStep(
            obs=obs.astype(np.float32) if self._obs_float32 else obs,
            reward=np.asarray(reward, np.float32),
            terminated=terminated,
            truncated=truncated,
            env_ids=env_ids,
            reset_step=reset_step,
            new_game=new_game,
            game_over=game_over,
            episode_returns=ep_ret,
            episode_lengths=ep_len,
        )

    def render(self, env_id: int) -> np.ndarray:
        return self.env.render(env_ids=[env_id])[0]

    def close(self) -> None:
        self.env.close()


def classic_time_limit(cfg: EnvConfig) -> int:
    """A classic-control task's time limit: its own (CartPole-v1: 500), or --max-episode-steps if lower."""
    import envpool

    return min(cfg.max_episode_steps, envpool.make_spec(cfg.env_id).config.max_episode_steps)


def describe_protocol(cfg: EnvConfig) -> str:
    """The protocol in words, for model cards and reports."""
    if not is_atari(cfg.env_id):
        import envpool

        own = envpool.make_spec(cfg.env_id).config.max_episode_steps
        limit = classic_time_limit(cfg)
        family = "MuJoCo" if is_mujoco(cfg.env_id) else "classic control"
        return (f"{cfg.env_id} (EnvPool {family}), episodes capped at "
                + ("the task's own limit" if limit == own else f"{limit} steps (the task's own: {own})"))
    sticky = f"sticky actions p={cfg.repeat_action_probability:g}" if cfg.repeat_action_probability else "no sticky actions"
    actions = "full 18-action set" if cfg.full_action_space else "minimal action set"
    lives = ("a lost life is a training terminal and the next life starts with a reset (no-ops, FIRE)"
             if cfg.episodic_life else "no life information")
    deviations = protocol_deviations(cfg)
    changed = (" (changed: " + ", ".join(f"{name} {now} instead of {was}" for name, (was, now) in deviations.items())
               + ")") if deviations else ""
    return (f"{cfg.protocol} protocol{changed}: {sticky}, frame skip {cfg.frame_skip}, up to {cfg.noop_max} no-op "
            f"starts, {actions}, {'FIRE at reset' if cfg.use_fire_reset else 'no FIRE at reset'}, {lives}; "
            f"{cfg.frame_size}x{cfg.frame_size} grey frames, {cfg.stack_num} stacked; {cfg.max_episode_steps:,} agent steps ({cfg.max_episode_steps * cfg.frame_skip:,} frames) at most per "
            f"game; training rewards {'clipped to their sign' if cfg.reward_clip else 'unclipped'}; evaluation plays "
            "the same game with unclipped rewards and scores it whole (all lives)")


def make_env(cfg: EnvConfig, evaluation: bool = False, **overrides) -> VecEnv:
    """Build the training pool, or (``evaluation=True``) the full-game scoring pool."""
    if evaluation:
        cfg = cfg.for_evaluation()
    if overrides:
        known = {f.name for f in fields(EnvConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown env options: {sorted(unknown)}")
        cfg = replace(cfg, **overrides)
    return VecEnv(cfg)
