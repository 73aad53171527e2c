"""The plain baselines every fastdqn figure is compared with, in the same run.

Written the way a newcomer would write them (CleanRL-style): one environment stepped at a
time, the stacked observation AND the stacked next observation stored for every transition,
uniform sampling with NumPy fancy indexing, an fp32 eager update (on the GPU where fastdqn
runs on one, as CleanRL does: batches sampled on the host, then copied). Same game and replay
ratio as the fastdqn side; nothing is slowed down on purpose. Two updates (PlainUpdate):

- "plain": fastdqn's algorithm written plainly: dueling Nature CNN, double-Q target (three
  forwards), Huber loss, Adam.
- "cleanrl": CleanRL's dqn_atari update: plain Nature CNN (no dueling), target = max over
  the target net (two forwards), MSE loss, Adam.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from fastdqn.networks import make_q_network


class PlainUpdate:
    """One fp32 eager update of the kind above; ``__call__`` takes a batch of tensors (moved
    to ``device`` first, if they are elsewhere)."""

    KINDS = ("plain", "cleanrl")

    def __init__(self, kind: str, obs_shape, n_actions: int, gamma: float = 0.99, lr: float = 1e-4,
                 device: str | torch.device = "cpu"):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.gamma, self.device = kind, gamma, torch.device(device)
        dueling = kind == "plain"
        self.q_network = make_q_network(obs_shape, n_actions, dueling=dueling).to(self.device)
        self.target_network = make_q_network(obs_shape, n_actions, dueling=dueling).to(self.device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=lr, eps=1.5e-4)

    def __call__(self, obs, actions, rewards, next_obs, dones) -> None:
        obs, actions, rewards, next_obs, dones = (x.to(self.device) for x in (obs, actions, rewards, next_obs, dones))
        with torch.no_grad():
            if self.kind == "plain":  # double Q
                next_actions = self.q_network(next_obs).argmax(1, keepdim=True)
                next_q = self.target_network(next_obs).gather(1, next_actions).squeeze(1)
            else:
                next_q = self.target_network(next_obs).max(dim=1).values
            td_target = rewards + self.gamma * next_q * (1 - dones)
        q = self.q_network(obs).gather(1, actions[:, None]).squeeze(1)
        if self.kind == "plain":
            loss = F.smooth_l1_loss(q, td_target)
        else:
            loss = F.mse_loss(q, td_target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def sync_target(self) -> None:
        self.target_network.load_state_dict(self.q_network.state_dict())


class PlainReplay:
    """obs and next_obs stacked per transition: ~57 KB per Atari transition."""

    def __init__(self, capacity: int, obs_shape, dtype):
        self.obs = np.zeros((capacity, *obs_shape), dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.dones = np.zeros(capacity, np.float32)
        self.capacity, self.pos, self.full = capacity, 0, False

    def add(self, obs, next_obs, action, reward, done):
        i = self.pos
        self.obs[i], self.next_obs[i] = obs, next_obs
        self.actions[i], self.rewards[i], self.dones[i] = action, reward, done
        self.pos = (i + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def sample(self, batch_size, rng):
        idx = rng.integers(0, self.capacity if self.full else self.pos, batch_size)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx]


def _make_single_env(game: str, seed: int):
    import envpool

    return envpool.make(game, env_type="gymnasium", num_envs=1, seed=seed, episodic_life=True,
                        reward_clip=True, repeat_action_probability=0.0)


def plain_loop(game: str = "Breakout-v5", *, learn: bool, warmup_steps: int, measure_steps: int,
               train_every: int = 4, batch_size: int = 32, capacity: int = 20_000, epsilon: float = 0.05,
               gamma: float = 0.99, seed: int = 0, kind: str = "plain", device: str | torch.device = "cpu") -> dict:
    """Single-env acting (+ learning when `learn`, with the PlainUpdate ``kind``): agent steps
    per second after warm-up. Replay ratio = batch_size / train_every (8 with the defaults).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = _make_single_env(game, seed)
    n_actions = env.action_space.n
    update = PlainUpdate(kind, env.observation_space.shape, n_actions, gamma, device=device)
    q_network = update.q_network
    rb = PlainReplay(capacity, env.observation_space.shape, env.observation_space.dtype)
    obs, _ = env.reset()
    start = None
    for step in range(warmup_steps + measure_steps):
        if step == warmup_steps:
            start = time.perf_counter()
        if rng.random() < epsilon:
            action = np.array([rng.integers(n_actions)])
        else:
            with torch.no_grad():
                action = q_network(torch.as_tensor(obs, device=update.device)).argmax(1).cpu().numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = terminated[0] or truncated[0]
        # EnvPool auto-resets on the next step; the newcomer stores every transition as it comes
        rb.add(obs[0], next_obs[0], action[0], reward[0], float(terminated[0]))
        obs = next_obs
        if done:
            obs, _ = env.step(np.zeros(1, np.int32))[:2]  # the auto-reset step
        if learn and step % train_every == 0 and step >= batch_size:
            update(*(torch.as_tensor(x) for x in rb.sample(batch_size, rng)))
            if step % 1000 == 0:
                update.sync_target()
    elapsed = time.perf_counter() - start
    env.close()
    return {"steps_per_s": measure_steps / elapsed, "measure_steps": measure_steps,
            "bytes_per_transition": (rb.obs.nbytes + rb.next_obs.nbytes) / capacity + 17}
