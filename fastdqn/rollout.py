"""The on-policy agents' store (A2C, PQN): the last T steps of every env, and the returns over them.

An on-policy agent learns from what its current policy just did, once, then throws it away: T
agent steps of each of the N envs of the pool (a rollout), one update (A2C) or K epochs of
minibatches (PQN), then the next T steps. The loop stores into a ``RolloutStore`` exactly what
it stores into the replay (``actor.store``: the Records of each env step), and the agent's
learning step (train.learn_from_rollout) runs when the rollout is full.

Rows: ``obs[0..T]`` (T + 1 rows of N envs). Row 0 is the previous rollout's last row, so the T
transitions t = 0..T-1 go from obs[t] to obs[t + 1] with the action, reward and flags stored in
row t + 1 (a record carries the action that led to its obs). A row that is an EnvPool reset
step (``reset_step``) has no transition leading into it (the action sent was ignored): the step
before it is not ``valid`` and gets no weight in any loss.

Frames: the records carry only the newest frame of each Atari obs; ``add`` rebuilds the stack
as EnvPool built it (a new game fills it with the frame, anything else shifts it, life losses
too) and keeps whole stacks. Stacks-by-index (the replay's single-frame ring) does not pay here:
the store holds T + 1 rows, not a million. Whole stacks cost 4x the bytes of single frames
(128 envs x 33 rows x 28 KB = 119 MB at most, CleanRL's PQN size) and give each minibatch a
plain row gather with no index arithmetic and no window that could cross a rollout's start.

Returns, one function for both agents (``lambda_returns``): the lambda-return of each step with
a bootstrap ``next_values`` (A2C: V(s_{t+1}), whose lambda-return minus V(s_t) is the GAE(lambda)
advantage; PQN: max_a Q(s_{t+1}, a), Peng's Q(lambda) as in Gallici et al. 2024). A terminal
stops the bootstrap; a truncation (time limit) bootstraps from the value of the truncated step's
final observation, which EnvPool returns on that step (its reset comes one step later), so it
is obs[t + 1] of the store; the chain of lambda never crosses an episode's end.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RolloutStore", "lambda_returns", "continues"]


def lambda_returns(rewards: torch.Tensor, terminated: torch.Tensor, chain: torch.Tensor, next_values: torch.Tensor,
                   gamma: float, lam: float) -> torch.Tensor:
    """The lambda-returns G_t (T, N), computed backwards:

        G_t = r_t + gamma (1 - term_t) [ next_t + lam chain_t (G_{t+1} - next_t) ]

    rewards, next_values (T, N) float; terminated, chain (T, N) bool. ``next_values[t]`` is the
    bootstrap value of obs t + 1; ``chain[t]``: step t + 1 continues step t's episode inside the
    rollout (never on the last row, so G_{T-1} = r + gamma next_{T-1}: the rollout's end
    bootstraps). lam = 1 gives n-step returns to the rollout's end (A2C's); lam = 0 one-step
    targets. Pure: no state, any device.
    """
    returns = torch.empty_like(rewards)
    ahead = torch.zeros_like(rewards[0])  # G_{t+1}; read only where chain[t]
    for t in reversed(range(rewards.shape[0])):
        blended = torch.where(chain[t], next_values[t] + lam * (ahead - next_values[t]), next_values[t])
        returns[t] = rewards[t] + gamma * (~terminated[t]) * blended
        ahead = returns[t]
    return returns


def continues(terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """chain for lambda_returns (T, N) bool: step t did not end its episode and step t + 1 is a real
    transition of the same one (not after a reset, nor after a resume's new games); False on the
    last row."""
    chain = np.zeros_like(valid)
    chain[:-1] = ~(terminated[:-1] | truncated[:-1]) & valid[1:]
    return chain


class RolloutStore:
    """T steps x N envs of records, in place of the replay for on-policy agents.

    The loop's view is the replay's: ``add`` (through actor.store), ``len``, ``stack``, ``nbytes``,
    ``rng``, ``state_dict`` / ``load_state_dict`` (a checkpoint taken mid-rollout resumes it exactly);
    the agent's: ``full``, ``batch()``, ``start_next()``. ``rng`` draws PQN's minibatch order.
    Every add must hold every env of the pool once (a synchronous pool).
    """

    window = None  # (the replay's sampling window: nothing to hold back here)

    def __init__(self, steps: int, num_envs: int, frame_shape, stack: int = 1, obs_dtype=np.uint8,
                 action_shape=(), action_dtype=np.int64, seed=None):
        if steps < 1 or num_envs < 1:
            raise ValueError(f"a rollout needs at least one step and one env, got {steps} x {num_envs}")
        self.steps, self.num_envs, self.stack = int(steps), int(num_envs), int(stack)
        obs_shape = (stack, *frame_shape) if stack > 1 else tuple(frame_shape)
        rows = self.steps + 1
        self.obs = np.zeros((rows, num_envs, *obs_shape), obs_dtype)
        self.actions = np.zeros((rows, num_envs, *action_shape), action_dtype)
        self.rewards = np.zeros((rows, num_envs), np.float32)
        self.terminated = np.zeros((rows, num_envs), bool)
        self.truncated = np.zeros((rows, num_envs), bool)
        self.reset_step = np.zeros((rows, num_envs), bool)
        self.rows = 0  # rows written in this rollout (row 0 included)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        """Transitions held: the rows after row 0, of every env."""
        return max(self.rows - 1, 0) * self.num_envs

    @property
    def full(self) -> bool:
        return self.rows == self.steps + 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays().values())

    def add(self, obs, actions, rewards, terminated, truncated, reset_step, new_game, env_ids=None) -> None:
        """One record per env of the pool (the replay's ``add``): ``obs`` (B, stack, ...) of which only
        the newest frame is read (or (B, ...) when stack == 1)."""
        if self.full:
            raise RuntimeError("the rollout is full: learn from it (and start_next) before adding")
        env_ids = np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids)
        if len(env_ids) != self.num_envs:
            raise ValueError(f"a rollout takes a step of all {self.num_envs} envs at once (a synchronous pool), "
                             f"got {len(env_ids)}")
        row = self.rows
        if self.stack > 1:
            newest = np.asarray(obs)[:, -1]
            stacks = np.empty((len(env_ids), *self.obs.shape[2:]), self.obs.dtype)
            if row:  # the previous row's stacks, shifted by one frame (a life loss keeps shifting)
                stacks[:, :-1] = self.obs[row - 1, env_ids, 1:]
            stacks[:, -1] = newest
            fresh = np.asarray(new_game, bool) | (row == 0)  # (row 0 only ever follows a reset: new games)
            stacks[fresh] = newest[fresh, None]
            self.obs[row, env_ids] = stacks
        else:
            self.obs[row, env_ids] = obs
        self.actions[row, env_ids] = actions
        self.rewards[row, env_ids] = rewards
        self.terminated[row, env_ids] = terminated
        self.truncated[row, env_ids] = truncated
        self.reset_step[row, env_ids] = reset_step
        self.rows += 1

    def batch(self) -> dict[str, np.ndarray]:
        """The full rollout as transitions: obs (T + 1, N, ...) (s_t = obs[t], s_{t+1} = obs[t + 1]);
        actions, rewards, terminated, truncated, valid, chain (T, N). Views, not copies."""
        if not self.full:
            raise RuntimeError(f"the rollout holds {self.rows} of {self.steps + 1} rows")
        valid = ~self.reset_step[1:]
        return {"obs": self.obs, "actions": self.actions[1:], "rewards": self.rewards[1:],
                "terminated": self.terminated[1:], "truncated": self.truncated[1:], "valid": valid,
                "chain": continues(self.terminated[1:], self.truncated[1:], valid)}

    def start_next(self) -> None:
        """The last row becomes row 0 of the next rollout (its obs is where the next one starts)."""
        for array in self._arrays().values():
            array[0] = array[-1]
        self.rows = 1

    # ------------------------------------------------------------------- checkpointing

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"obs": self.obs, "actions": self.actions, "rewards": self.rewards, "terminated": self.terminated,
                "truncated": self.truncated, "reset_step": self.reset_step}

    def state_dict(self) -> dict:
        """NumPy arrays only (checkpoint.save writes them with np.savez). ``written``, ``capacity`` and
        ``num_envs`` are the keys a checkpoint reads to say how many transitions it holds."""
        return {**self._arrays(), "rows": np.int64(self.rows), "written": np.full(self.num_envs, self.rows),
                "capacity": np.int64(self.obs.shape[0] * self.num_envs), "num_envs": np.int64(self.num_envs)}

    def load_state_dict(self, state: dict) -> None:
        for name, array in self._arrays().items():
            if tuple(np.shape(state[name])) != array.shape:
                raise ValueError(f"the saved rollout's {name} has shape {np.shape(state[name])}, this one "
                                 f"{array.shape}: --rollout-steps and --num-envs cannot change on --resume")
            array[...] = state[name]
        self.rows = int(state["rows"])
