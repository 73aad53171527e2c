"""The training loop. It reads in the order of the algorithm:

    act (the agent's acting rule, one forward for the whole env batch) -> step EnvPool -> store
    the newest frame -> sample prioritized n-step batches -> the agent's update -> priorities back
    (the agent syncs its target nets itself) -> log, evaluate, checkpoint.

The agent is built once (build_agent: the DQN Learner, a DDPG / TD3 agent for continuous
actions, or an on-policy A2C / PQN agent) and is all the loop knows of the algorithm: an acting
rule for training and one for evaluation (fastdqn.acting), set_lr, state_dict, and, with it, its
store and learning step (build_store): the replay and a ReplayLearning (the replay ratio's credit
spent in groups of updates) for the replay agents, a rollout (fastdqn.rollout) and
``learn_from_rollout`` (one learning step per T steps of every env) for the on-policy ones.

The acting half is an Actor (actor.py: env pool + policy -> records in the replay's format)
behind a source, the loop's only view of where records come from:

    LocalSource    one in-process Actor, stepped between learning steps (the default)
    RaySource      Ray actors shipping chunks of records (distributed.py, --actors N)

    source.reset(stop) / source.recv(idle, stop) -> [Records]: the records to store next
    source.act(epsilon) -> agent steps to credit to the replay ratio
    source.epsilon(schedule_steps), scalars(), summary(), close()

Everything else (replay, rate-limited updates, priorities, target sync, logging, evaluation,
checkpoints) is the same code in both modes (the on-policy agents run in the local one).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from fastdqn import checkpoint, hardware
from fastdqn.acting import EpsilonGreedy, epsilon_at, linear_two_phase
from fastdqn.actor import Actor, LocalSource, store
from fastdqn.config import ON_POLICY, REPLAY_IN_PERIODIC_GB, SMALL_MLP_UPDATE, TrainConfig, check_resumable, new_run_dir, protocol_record, to_dict
from fastdqn.envs import VecEnv
from fastdqn.evaluate import evaluate
from fastdqn.interrupts import Abort, StopRequests
from fastdqn.learner import Learner
from fastdqn.networks import make_q_network
from fastdqn.paths import require_writable
from fastdqn.progress import Progress
from fastdqn.replay import PrioritizedReplay
from fastdqn.replay.buffer import NonFiniteTDError
from fastdqn.rollout import RolloutStore
from fastdqn.runlog import RunLog
from fastdqn.tracking import require_wandb
from fastdqn.video import GameRecorder, real_time_fps, require_encoder

WARMUP_UPDATES = 20  # updates left out of learning_sps (compilation, allocator warm-up)


class TrainingDiverged(RuntimeError):
    pass


class SourceLost(RuntimeError):
    """The records' source can give no more (every Ray actor died and Ray could not restart them)."""


SOURCE_LOST = "every actor died"  # the summary's stop_reason starts so


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU")
    return device


def default_cpu_threads(cfg: TrainConfig, obs_shape, cores: int) -> int:
    """--torch-threads 0 on a CPU: one thread for a small MLP's update, all the cores for a CNN's or a
    wide MLP's."""
    small = len(obs_shape) == 1 and cfg.batch_size * cfg.hidden < SMALL_MLP_UPDATE
    return 1 if small else cores


def build_q_network(cfg: TrainConfig, obs_shape, num_actions: int) -> torch.nn.Module:
    head = dict(dueling=cfg.dueling, head=cfg.head, num_atoms=cfg.num_atoms, v_min=cfg.v_min, v_max=cfg.v_max)
    if len(obs_shape) == 3:
        return make_q_network(obs_shape, num_actions, hidden=cfg.hidden, torso=cfg.torso, **head)
    return make_q_network(obs_shape, num_actions, hidden=(cfg.hidden, cfg.hidden), **head)


def build_learner(cfg: TrainConfig, obs_shape, num_actions: int, device: torch.device) -> Learner:
    return Learner(
        build_q_network(cfg, obs_shape, num_actions),
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        adam_eps=cfg.adam_eps,
        loss=cfg.loss,
        max_grad_norm=cfg.max_grad_norm,
        double_q=cfg.double_q,
        target_update_period=cfg.target_update_period,
        tau=cfg.tau,
        precision=cfg.precision,
        compile=cfg.compile,
        cuda_graph=cfg.cuda_graph and device.type == "cuda",
        updates_per_graph=cfg.updates_per_graph,
        device=device,
        batch_size=cfg.batch_size,
    )


def build_agent(cfg: TrainConfig, env, device: torch.device):
    """(agent, acting rule for training, acting rule for evaluation): with build_store, the one place
    the loop names the algorithm. The agent is the DQN Learner, a fastdqn.agents DDPG / TD3 agent,
    or an on-policy one: A2C (samples its policy while training, greedy in evaluation) or PQN
    (epsilon-greedy, as DQN)."""
    if cfg.algorithm == "dqn":
        learner = build_learner(cfg, env.obs_shape, env.num_actions, device)
        rule = EpsilonGreedy(learner.q_network, env.num_actions, device, learner.precision)
        return learner, rule, rule
    if cfg.algorithm in ON_POLICY:
        return build_on_policy_agent(cfg, env, device)
    from fastdqn.agents import make_agent

    agent = make_agent(
        cfg.algorithm, env.obs_shape[0], env.action_low, env.action_high, hidden=(cfg.hidden, cfg.hidden),
        actor_lr=cfg.lr, critic_lr=cfg.lr, adam_eps=cfg.adam_eps, policy_delay=cfg.policy_delay,
        target_noise=cfg.target_noise, noise_clip=cfg.noise_clip, tau=cfg.tau,
        target_update_period=cfg.target_update_period, max_grad_norm=cfg.max_grad_norm, precision=cfg.precision,
        cuda_graph=cfg.cuda_graph and device.type == "cuda", updates_per_graph=cfg.updates_per_graph,
        device=device, batch_size=cfg.batch_size)
    return agent, agent.acting_rule(cfg.exploration_noise), agent.acting_rule(0.0)


def build_on_policy_agent(cfg: TrainConfig, env, device: torch.device):
    common = dict(optimizer=cfg.optimizer, lr=cfg.lr, adam_eps=cfg.adam_eps, max_grad_norm=cfg.max_grad_norm,
                  precision=cfg.precision, device=device, batch_size=cfg.rollout_steps * env.num_envs)
    if cfg.algorithm == "a2c":
        from fastdqn.agents.a2c import A2C, ActorCritic

        network = ActorCritic(env.obs_shape, env.num_actions, cfg.hidden, cfg.torso, shared=cfg.shared_torso)
        agent = A2C(network, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, entropy_coef=cfg.entropy_coef,
                    value_coef=cfg.value_coef, **common)
        return agent, agent.acting_rule(greedy=False), agent.acting_rule(greedy=True)
    from fastdqn.agents.pqn import PQN, LayerNormQNetwork

    network = LayerNormQNetwork(env.obs_shape, env.num_actions, cfg.hidden, cfg.torso)
    agent = PQN(network, env.num_actions, gamma=cfg.gamma, q_lambda=cfg.q_lambda, epochs=cfg.update_epochs,
                minibatches=cfg.num_minibatches, **common)
    return agent, agent.acting_rule(record=True), agent.acting_rule()


# The counters a checkpoint carries. schedule_steps drives epsilon, beta and the lr: it follows
# agent_steps, except while a replay lost on resume refills (the schedules wait for learning).
# budget_from: the wall second at which --max-minutes started counting (moved to the resume
# when a resume raises --total-steps).
def new_counters(cfg: TrainConfig) -> dict:
    return {"agent_steps": 0, "schedule_steps": 0, "updates": 0, "games": 0, "wall_seconds": 0.0,
            "budget_from": 0.0, "best_eval": -math.inf, "credit": 0.0, "next_log": 0,
            "next_eval": cfg.eval_interval, "next_ckpt": 0, "resumes": 0}


def make_rngs(seed: int) -> tuple[np.random.Generator, np.random.SeedSequence]:
    """The acting stream (epsilon-greedy, env seeds on resume) and the replay sampler's seed:
    two independent streams from one seed."""
    acting, sampling = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(acting), sampling


def build_replay(cfg: TrainConfig, env: VecEnv, device: torch.device, seed, action_shape=()) -> PrioritizedReplay:
    frames_device = {"numpy": None, "cpu": "cpu", "cuda": device}[cfg.replay_device]
    return PrioritizedReplay(
        cfg.buffer_size, env.num_envs, env.frame_shape, stack=env.stack, n_step=cfg.n_step,
        gamma=cfg.gamma, alpha=cfg.per_alpha, eps=cfg.per_eps, seed=seed, obs_dtype=env.obs_dtype,
        frames_device=frames_device, action_shape=action_shape,
    )


def build_store(cfg: TrainConfig, env, device: torch.device, seed, action_shape=()):
    """(store, learning step, learning_starts): the agent's store and how the loop learns from it.
    Replay agents: the replay, a ReplayLearning (the replay ratio) and --learning-starts; on-policy agents:
    a rollout of --rollout-steps per env, a RolloutLearning (learn_from_rollout) and 0 (they learn from the
    start)."""
    if cfg.algorithm in ON_POLICY:
        store = RolloutStore(cfg.rollout_steps, env.num_envs, env.frame_shape, env.stack, env.obs_dtype, action_shape,
                             seed=seed)
        return store, RolloutLearning(), 0
    overlap = cfg.overlap_updates == "on" or (cfg.overlap_updates == "auto" and cfg.cuda_graph
                                              and device.type == "cuda")
    return build_replay(cfg, env, device, seed, action_shape), ReplayLearning(overlap), cfg.learning_starts


def update_replay_window(cfg: TrainConfig, replay: PrioritizedReplay, agent_steps: int) -> None:
    """--replay-window holds the sampled range back until --replay-window-steps."""
    replay.window = cfg.replay_window if cfg.replay_window and agent_steps < cfg.replay_window_steps else None


def beta_at(cfg: TrainConfig, schedule_steps: int) -> float:
    return cfg.per_beta0 + (1.0 - cfg.per_beta0) * min(1.0, schedule_steps / cfg.total_steps)


def replay_ratio_at(cfg: TrainConfig, schedule_steps: int) -> float:
    """--replay-ratio-early until --replay-ratio-early-steps, then --replay-ratio."""
    if cfg.replay_ratio_early and schedule_steps < cfg.replay_ratio_early_steps:
        return cfg.replay_ratio_early
    return cfg.replay_ratio


def lr_at(cfg: TrainConfig, schedule_steps: int) -> float:
    """--lr until --lr-decay-start, then linearly to --lr-final at --lr-decay-end, then --lr-final."""
    if not cfg.lr_decay_end:
        return cfg.lr
    # epsilon's two-phase schedule with a flat first phase
    return linear_two_phase(schedule_steps, cfg.lr, cfg.lr, cfg.lr_decay_start, cfg.lr_final, cfg.lr_decay_end)


def checkpoint_payload(cfg: TrainConfig, learner: Learner, replay: PrioritizedReplay, rng: np.random.Generator,
                       counters: dict, env: VecEnv) -> dict:
    """Everything but the replay's contents: one consistent snapshot with them (checkpoint.save)."""
    return {
        "config": to_dict(cfg),
        "learner": learner.state_dict(),
        "counters": dict(counters),
        "numpy_rng": rng.bit_generator.state,
        "replay_rng": replay.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "obs_shape": list(env.obs_shape),
        "num_actions": env.num_actions,
    }


def restore(state: dict, replay_state: dict | None, learner: Learner, replay: PrioritizedReplay,
            rng: np.random.Generator, counters: dict) -> None:
    """Put a checkpoint back into the live objects (the inverse of checkpoint_payload)."""
    learner.load_state_dict(state["learner"])
    counters.update({"schedule_steps": state["counters"]["agent_steps"]}, **state["counters"])  # (older checkpoints)
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    if replay_state is not None:
        replay.load_state_dict(replay_state)
    if "replay_rng" in state:  # (older checkpoints kept it only inside a saved replay)
        replay.rng.bit_generator.state = state["replay_rng"]


def learn_from_rollout(cfg: TrainConfig, agent, rollout: RolloutStore, counters: dict, new_steps: int,
                       stats: dict) -> int:
    """The on-policy agents' learning step, in place of ReplayLearning: nothing until the rollout holds T
    steps of every env, then the agent's update on it (A2C: one step; PQN: K epochs x M minibatches)
    and the next rollout starts from its last observations. Returns the transitions sampled."""
    if not rollout.full:
        return 0
    if cfg.lr_decay_end:
        agent.set_lr(lr_at(cfg, counters["schedule_steps"]))
    out = agent.learn(rollout.batch(), rollout.rng)
    rollout.start_next()
    counters["updates"] += out["updates"]
    stats["loss"] = stats["loss"] + out["loss"].detach().float().cpu() * out["updates"]
    stats["q"] = stats["q"] + out["mean_q"].detach().float().cpu() * out["updates"]
    stats["td"] = stats["td"] + out["td_abs"].detach().float().cpu() * out["updates"]
    stats["n"] += out["updates"]
    add_other_outputs(stats, out, weight=out["updates"])
    return out["sampled"]


class RolloutLearning:
    """The on-policy agents' learning step as the loop sees it: learn_from_rollout, and nothing in flight."""

    __call__ = staticmethod(learn_from_rollout)

    def drain(self, agent, rollout: RolloutStore, stats: dict) -> None:
        pass


def update_group(learner: Learner) -> int:
    """Updates made at once: K = updates_per_graph on a CUDA graph, else 1."""
    return learner.updates_per_graph if learner.cuda_graph else 1


class ReplayLearning:
    """The replay agents' learning step: keep the replay ratio (replay_ratio_at) in groups of updates
    (K on a CUDA graph, else 1), each group sampled, run, and its priorities written back.

    ``overlap`` (--overlap-updates): a group is launched and left running, and the next call samples
    the next group on the host while the GPU runs it, then takes its results and writes its priorities,
    then launches the next. Sampling so sees the priorities one group late; with uniform replay the
    updates are the same as without overlap. ``drain`` finishes the group in flight: the loop calls it
    before anything reads the replay's priorities or saves the state (checkpoints, evaluations, the end).
    """

    def __init__(self, overlap: bool = False):
        self.overlap = overlap
        self.in_flight: list[np.ndarray] | None = None  # the replay indices of the group launched, not finished

    def __call__(self, cfg: TrainConfig, learner: Learner, replay: PrioritizedReplay, counters: dict,
                 new_steps: int, stats: dict) -> int:
        """Credit the new steps, spend the credit in whole groups. Returns the transitions sampled."""
        counters["credit"] += replay_ratio_at(cfg, counters["schedule_steps"]) * new_steps / cfg.batch_size
        beta = beta_at(cfg, counters["schedule_steps"])
        group = update_group(learner)
        made = 0
        while counters["credit"] >= group:
            counters["credit"] -= group
            self.update(cfg, learner, replay, counters, beta, stats)
            made += group
        return made * cfg.batch_size

    def update(self, cfg: TrainConfig, learner: Learner, replay: PrioritizedReplay, counters: dict, beta: float,
               stats: dict) -> None:
        """One group of updates."""
        group = update_group(learner)
        # Each of the K batches into its own slot of the replay's reused outputs, so none overwrites
        # another before the learner has staged it (launch copies them); only the indices are kept.
        batches = [replay.sample(cfg.batch_size, beta, slot=k) for k in range(group)]
        indices = [np.array(b.indices) for b in batches]
        self.drain(learner, replay, stats)  # the group before, which ran while this one was sampled
        if cfg.lr_decay_end:
            learner.set_lr(lr_at(cfg, counters["schedule_steps"]))
        learner.launch(batches)
        counters["updates"] += group
        self.in_flight = indices
        if not self.overlap:
            self.drain(learner, replay, stats)

    def drain(self, learner: Learner, replay: PrioritizedReplay, stats: dict) -> None:
        """Take the results of the group in flight, if any: its priorities back, its losses to stats."""
        if self.in_flight is None:
            return
        indices, self.in_flight = self.in_flight, None
        out = learner.finish()
        for batch_indices, td_abs in zip(indices, _numpy(out["td_abs"])):
            replay.update_priorities(batch_indices, td_abs)
        group = len(indices)
        stats["loss"] = stats["loss"] + out["loss"].detach().float().sum().cpu()
        stats["q"] = stats["q"] + out["mean_q"].detach().float().sum().cpu()
        stats["td"] = stats["td"] + out["td_abs"].detach().float().mean(-1).sum().cpu()
        stats["n"] += group
        add_other_outputs(stats, out)


# What every agent's update reports (the loop logs them as losses/td_loss, q_values, td_abs), and
# the learning step's own counts; anything else an agent reports is logged under its own name.
CORE_OUTPUTS = frozenset({"loss", "mean_q", "td_abs", "updates", "sampled"})


def add_other_outputs(stats: dict, out: dict, weight: int = 1) -> None:
    """Sum the agent's other outputs (TD3's actor_loss, NaN on updates without an actor step; A2C's
    policy_loss, value_loss, entropy) over their finite values, for losses/<name> at the next log."""
    for key, value in out.items():
        if key in CORE_OUTPUTS:
            continue
        value = value.detach().float().reshape(-1).cpu()
        finite = torch.isfinite(value)
        other = stats.setdefault("other", {})
        total, count = other.get(key, (0.0, 0))
        other[key] = (total + float(value[finite].sum()) * weight, count + int(finite.sum()) * weight)


class RateLimiter:
    """The replay ratio as measured: sampled transitions per agent step credited while learning
    (since learning started in this process), and the band it is held in.

    ReplayLearning spends the credit of each agent step at once, so the learner never falls behind the
    ratio by more than one update group; actors faster than the learner wait for it (their
    chunk requests are bounded: back-pressure). While the learner waits for data it may learn
    ahead of its credit, but only while the measured ratio stays at most ratio * (1 + tolerance).
    """

    def __init__(self, batch_size: int, tolerance: float):
        self.batch_size, self.tolerance = batch_size, tolerance
        self.credited = 0  # agent steps credited while learning
        self.allowed = 0.0  # transitions the ratio allows for them (the ratio may follow the agent step)
        self.sampled = 0  # transitions sampled by the updates made since

    def credit(self, new_steps: int, ratio: float) -> None:
        self.credited += new_steps
        self.allowed += ratio * new_steps

    def may_run_ahead(self, group: int) -> bool:
        return (self.sampled + group * self.batch_size) <= (1 + self.tolerance) * self.allowed

    @property
    def measured(self) -> float:
        return self.sampled / self.credited if self.credited else 0.0


def prepare_run(cfg: TrainConfig) -> TrainConfig:
    """Check the run directory before anything is built or created; name a new one."""
    require_writable(cfg.run_dir or "runs", "--run-dir", directory=True)
    if cfg.resume:
        if not cfg.run_dir:
            raise ValueError("--resume needs --run-dir: the directory of the run to continue")
        ckpt_path = checkpoint.require_resumable(cfg.run_dir)
        saved = checkpoint.load_latest(ckpt_path, quiet=True)[0]["config"]
        check_resumable(saved, cfg, cfg.run_dir)
        if saved.get("actors", 0) != cfg.actors:  # the replay has a lane per env of every actor
            raise ValueError(f"--actors cannot change on --resume (the run in {cfg.run_dir} was started with --actors "
                             f"{saved.get('actors', 0)}; its replay has that many lanes): drop --actors, or start a "
                             "new run in another --run-dir")
    elif cfg.run_dir and (Path(cfg.run_dir) / "checkpoint.pt").exists():
        raise FileExistsError(f"{cfg.run_dir} already holds a run; pass --resume to continue it or pick another --run-dir")
    if cfg.track:  # a missing extra is said before anything is built
        require_wandb()
    if cfg.capture_video:
        require_encoder()
    if cfg.actors:
        from fastdqn.distributed import require_ray, require_reachable

        require_ray()
        require_reachable(cfg.ray_address)
    if not cfg.run_dir:  # runs/{env_id}__{exp_name}__{seed}__{date-time}, new
        cfg = dataclasses.replace(cfg, run_dir=str(new_run_dir(cfg)))
    return cfg


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train; Ctrl-C or SIGTERM ends the run within seconds with a checkpoint (summary
    stop_reason "interrupted"); a second one raises interrupts.Abort at once."""
    cfg = prepare_run(cfg)
    with checkpoint.RunLock(cfg.run_dir), StopRequests() as stop:
        try:
            return _train(cfg, progress, stop)
        except Abort:
            ckpt_path = Path(cfg.run_dir) / "checkpoint.pt"
            try:
                state, where = checkpoint.load_latest(ckpt_path, quiet=True)
                kept = f"the last good checkpoint is {where} (step {state['counters']['agent_steps']:,}), intact"
            except checkpoint.CheckpointError:
                kept = "no checkpoint was written yet"
            print(f"aborted by a second {stop.name}: {kept}", file=sys.stderr)
            raise


def _train(cfg: TrainConfig, progress: bool, stop: StopRequests) -> dict:
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng, sampling_seed = make_rngs(cfg.seed)
    counters = new_counters(cfg)

    state = replay_state = None
    env_cfg = cfg.env
    if cfg.resume:
        state, ckpt_file = checkpoint.load_latest(ckpt_path)
        replay_state, replay_note = checkpoint.load_replay(ckpt_file, state)
        if ckpt_file != ckpt_path:
            checkpoint.set_aside(ckpt_path)
        # EnvPool cannot save games in progress: the envs start new games, seeded afresh from
        # the saved acting stream (not the opening games of the first run again).
        rng.bit_generator.state = state["numpy_rng"]
        env_cfg = dataclasses.replace(cfg.env, seed=int(rng.integers(2**31 - 1)))
    if cfg.actors:  # the pool's shapes, from a one-env pool; the replay has a lane per env of every actor
        probe = VecEnv(dataclasses.replace(env_cfg, num_envs=1, batch_size=0, num_threads=1))
        probe.close()
        env = PoolSpec(num_envs=cfg.actors * env_cfg.num_envs, obs_shape=probe.obs_shape,
                       num_actions=probe.num_actions, frame_shape=probe.frame_shape, stack=probe.stack,
                       obs_dtype=probe.obs_dtype, atari=probe.atari)
    else:
        env = VecEnv(env_cfg)
    if device.type == "cpu":
        hardware.keep_freed_memory()  # (every agent's update allocates afresh: see there)
        cores = os.cpu_count()
        if cfg.actors and not cfg.ray_address:  # a local Ray: leave the actors their cores
            cores = max(1, cores - math.ceil(cfg.actors * cfg.actor_cpus))
        torch.set_num_threads(cfg.torch_threads or default_cpu_threads(cfg, env.obs_shape, cores))
    else:  # on a GPU torch's host threads only copy batches: the cores belong to EnvPool's threads
        torch.set_num_threads(cfg.torch_threads or 1)
    learner, acting, evaluating = build_agent(cfg, env, device)
    # the replay, or an on-policy agent's rollout: the same interface to the loop
    replay, learn_step, learning_starts = build_store(cfg, env, device, sampling_seed, acting.action_shape)
    if state is not None:
        env_rng_state = rng.bit_generator.state  # the draw of the env seed stays spent
        restore(state, replay_state, learner, replay, rng, counters)
        rng.bit_generator.state = env_rng_state
        counters["resumes"] += 1
        if cfg.total_steps > state["config"]["total_steps"]:  # a longer run: --max-minutes counts from now
            counters["budget_from"] = counters["wall_seconds"]
        print(describe_resume(cfg, ckpt_file, state, counters, replay_state, replay_note, env_cfg.seed),
              file=sys.stderr)
        replay_state = None  # (its arrays map the saved file: let go, so that the next save's deleting it frees the disk)
    update_replay_window(cfg, replay, counters["agent_steps"])

    # On resume, the first step this process logs: what the run logged at the checkpoint's own step
    # (its evaluation, the final one of a finished run) was logged before the checkpoint, and stays.
    log = RunLog(run_dir, cfg, resume_step=counters["agent_steps"] + 1 if state is not None else None)
    precision = learner.precision_choice  # what "auto" became here, and why
    print(f"{'warning: ' if precision.slow else ''}precision {precision.name}: {precision.reason}", file=sys.stderr)
    log.summary.update(precision_used=precision.name, precision_reason=precision.reason,
                       machine=hardware.machine(device))
    log.writer.add_text("precision", f"{precision.name}: {precision.reason}", 0)
    protocol = protocol_record(cfg)
    log.summary["protocol"] = protocol
    log.writer.add_text("protocol", protocol["description"] + "\n\n```\n" + json.dumps(protocol["options"], indent=2)
                        + "\n```", 0)
    frame_skip = cfg.env.frame_skip if env.atari else 1
    recent_returns: collections.deque = collections.deque(maxlen=20)
    start = time.time()

    def wall() -> float:
        return counters["wall_seconds"] + time.time() - start

    def save_checkpoint(final: bool) -> None:
        learn_step.drain(learner, replay, interval)  # (a group in flight: its priorities first)
        with_replay = (cfg.save_replay == "always" or (cfg.save_replay == "auto" and (
            final or replay.nbytes <= REPLAY_IN_PERIODIC_GB * 1e9)))
        payload = checkpoint_payload(cfg, learner, replay, rng, {**counters, "wall_seconds": wall()}, env)
        problem = checkpoint.save(ckpt_path, payload, replay.state_dict() if with_replay else None)
        if problem:  # a full disk, say: the weights are saved, the replay is not
            bar.write(f"warning: {problem}; the checkpoint at step {counters['agent_steps']:,} holds everything "
                      "else (a resume from it refills the replay)")

    def progress_fields() -> dict:
        steps, seconds = counters["agent_steps"], wall()
        return dict(agent_steps=steps, frames=steps * frame_skip, wall_seconds=round(seconds, 1),
                    train_sps=round(steps / max(seconds, 1e-9), 1), updates=counters["updates"], device=str(device))

    def run_evaluation(final: bool = False) -> float | None:
        """The evaluation's mean score, or None when Ctrl-C / SIGTERM dropped it (not recorded)."""
        steps = counters["agent_steps"]
        learn_step.drain(learner, replay, interval)
        recording = (GameRecorder(run_dir / "videos" / f"eval-step{steps:09d}.mp4", real_time_fps(cfg.env))
                     if cfg.capture_video else None)
        result = evaluate(evaluating, cfg.env, episodes=cfg.eval_episodes, epsilon=cfg.eval_eps,
                          max_steps=cfg.eval_max_steps, device=device, precision=learner.precision,
                          seed=cfg.seed + 777 + counters["agent_steps"],
                          gif_path=run_dir / "eval.gif" if final and env.atari else None,
                          recorder=recording, on_game_end=bar.evaluating, should_stop=stop.__bool__)
        if recording is not None:
            recording.close()
            if result is None:
                recording.path.unlink(missing_ok=True)
            else:
                log.video(steps, recording)
        bar.evaluation_done()
        if result is None:
            bar.write(f"evaluation at step {steps:,} dropped ({stop.name})")
            return None
        counters["best_eval"] = max(counters["best_eval"], result["mean_return"])
        counters["next_eval"] = steps + cfg.eval_interval  # (after the final one too: a resume does not repeat it)
        log.scalars(steps, {"eval/mean_return": result["mean_return"], "eval/std_return": result["std_return"],
                            "eval/mean_length": result["mean_length"]})
        fields = progress_fields()
        log.write_summary(
            **fields, eval_mean_return=result["mean_return"], eval_std_return=result["std_return"],
            eval_returns=result["returns"], eval_episodes=result["episodes"],
            best_eval_mean_return=counters["best_eval"],
            evals=log.summary.get("evals", []) + [{"agent_steps": steps, "wall_seconds": fields["wall_seconds"],
                                                    "mean_return": result["mean_return"]}],
        )
        bar.write(f"eval at step {steps:,}: mean {result['mean_return']:.1f} ± {result['std_return']:.1f} "
                  f"over {result['episodes']} games ({fields['wall_seconds'] / 60:.1f} min)")
        return result["mean_return"]

    bar = Progress(cfg.total_steps, counters["agent_steps"], enabled=progress, interval=cfg.progress_interval)

    def show_progress() -> None:
        steps = counters["agent_steps"]
        bar.update(steps, np.mean(recent_returns) if recent_returns else None,
                   source.epsilon(counters["schedule_steps"]))

    interval = {"t": time.time(), "steps": counters["agent_steps"], "updates": counters["updates"],
                "loss": torch.zeros(()), "q": torch.zeros(()), "td": torch.zeros(()), "n": 0, "other": {}}
    limiter = RateLimiter(cfg.batch_size, cfg.ratio_tolerance)
    stop_reason = "total_steps reached"
    # (time, agent_steps) once this process has made WARMUP_UPDATES updates: learning_sps
    # leaves out the first ones, which pay for torch.compile / allocator warm-up.
    learning_since = None
    updates_at_start = counters["updates"]

    def diverged(what: str) -> TrainingDiverged:
        return TrainingDiverged(f"{what} at step {counters['agent_steps']:,}; the last good checkpoint is "
                                f"{ckpt_path if ckpt_path.exists() else 'not written yet'} (try a lower --lr)")

    def learn_ahead() -> bool:
        """While waiting for data: one group of updates ahead of the credit, if the band allows."""
        group = update_group(learner)
        if not limiter.may_run_ahead(group):
            return False
        counters["credit"] -= group  # paid back by the next steps' credit
        learn_step.update(cfg, learner, replay, counters, beta_at(cfg, counters["schedule_steps"]), interval)
        limiter.sampled += group * cfg.batch_size
        return True

    if cfg.actors:
        from fastdqn.distributed import RaySource

        source = RaySource(cfg, env, env_cfg, learner, seed=cfg.seed, say=bar.write)
        log.writer.add_text("distributed", f"{cfg.actors} actors x {env_cfg.num_envs} envs, epsilons "
                            + ", ".join(f"{e:.4g}" for e in source.epsilons), 0)
    else:
        source = LocalSource(Actor(env, acting, rng), lambda steps: epsilon_at(cfg, steps))
    try:
        records = source.reset(stop)
        while counters["agent_steps"] < cfg.total_steps:
            epsilon = source.epsilon(counters["schedule_steps"])
            # 1. store what the envs returned (the action stored is the one that led to this obs)
            for r in records:
                store(replay, r)
            # 2. act on the whole batch with one forward, 3. send the actions: EnvPool's
            # threads step the envs while this thread learns (4.), and recv() collects them.
            # The learner sees the same replay as it would after recv (the new obs are only
            # added at the top of the next iteration), and EnvPool answers every send with
            # exactly as many envs as it was sent, so the step count is known already.
            # (Remote actors act by themselves: act() returns the steps of the chunk just stored.)
            new_steps = source.act(epsilon)
            counters["agent_steps"] = agent_steps = counters["agent_steps"] + new_steps
            update_replay_window(cfg, replay, agent_steps)
            learning = len(replay) >= learning_starts
            if learning or counters["updates"] == 0:  # a replay lost on resume refills: the schedules wait
                counters["schedule_steps"] += new_steps
            # 4. learn: keep `replay_ratio` sampled transitions per agent step on average
            if learning:
                if learning_since is None and counters["updates"] - updates_at_start >= WARMUP_UPDATES:
                    learning_since = (time.time(), agent_steps)
                sampled = learn_step(cfg, learner, replay, counters, new_steps, interval)
                limiter.credit(new_steps, replay_ratio_at(cfg, counters["schedule_steps"]))
                limiter.sampled += sampled
            records = source.recv(idle=learn_ahead if learning else None, stop=stop)
            for r in records:
                for i in np.flatnonzero(r.game_over):
                    counters["games"] += 1
                    recent_returns.append(r.episode_returns[i])
                    log.scalars(agent_steps, {"charts/episodic_return": r.episode_returns[i],
                                              "charts/episodic_length": r.episode_lengths[i]})
            if bar.due():
                show_progress()

            if agent_steps >= counters["next_log"]:
                counters["next_log"] = agent_steps + cfg.log_interval
                now = time.time()
                sps = (agent_steps - interval["steps"]) / max(now - interval["t"], 1e-9)
                values = {"charts/epsilon": epsilon, "charts/learning_rate": lr_at(cfg, counters["schedule_steps"]),
                          "charts/replay_ratio": replay_ratio_at(cfg, counters["schedule_steps"]),
                          "charts/SPS": sps, "charts/FPS": sps * frame_skip,
                          "charts/updates_per_second": (counters["updates"] - interval["updates"]) / max(now - interval["t"], 1e-9),
                          "replay/fill": len(replay) / cfg.buffer_size, **source.scalars()}
                if limiter.credited:
                    values["replay/ratio"] = limiter.measured
                if interval["n"]:
                    loss = interval["loss"].item() / interval["n"]
                    if not math.isfinite(loss):
                        raise diverged(f"the loss became {loss}")
                    values.update({"losses/td_loss": loss, "losses/q_values": interval["q"].item() / interval["n"],
                                   "losses/td_abs": interval["td"].item() / interval["n"]})
                values.update({f"losses/{key}": total / count for key, (total, count) in interval["other"].items()
                               if count})
                log.scalars(agent_steps, values)
                interval.update(t=now, steps=agent_steps, updates=counters["updates"], loss=torch.zeros(()),
                                q=torch.zeros(()), td=torch.zeros(()), n=0, other={})

            # (the last evaluation is the final one, below)
            if cfg.eval_interval and counters["next_eval"] <= agent_steps < cfg.total_steps and not stop:
                score = run_evaluation()  # (one dropped by Ctrl-C / SIGTERM runs again after a resume)
                if score is not None and score >= cfg.target_score:
                    stop_reason = f"target score {cfg.target_score} reached"
                    break
            # the first checkpoint when learning starts, then every checkpoint_interval
            if learning and agent_steps >= counters["next_ckpt"] and not stop:
                counters["next_ckpt"] = agent_steps + cfg.checkpoint_interval if cfg.checkpoint_interval else math.inf
                save_checkpoint(final=False)
            if cfg.max_minutes and wall() - counters["budget_from"] >= cfg.max_minutes * 60:
                stop_reason = f"max_minutes ({cfg.max_minutes}) reached"
                break
            if stop:
                break
    except NonFiniteTDError as exc:  # (a NaN reaches the priorities before the loss is logged)
        raise diverged(str(exc)) from None
    except SourceLost as exc:  # (every Ray actor died for good): what was learned is kept
        stop_reason = f"{SOURCE_LOST}: {exc}"
        bar.write(f"error: {exc}; writing the final checkpoint")
    finally:
        source.close()
    show_progress()
    log.summary.update(source.summary())
    if limiter.credited:
        log.summary["replay_ratio_measured"] = round(limiter.measured, 4)

    if learning_since is not None:
        t0, s0 = learning_since
        log.summary["learning_sps"] = round((counters["agent_steps"] - s0) / max(time.time() - t0, 1e-9), 1)
    evals = log.summary.get("evals", [])
    if (not stop and cfg.final_eval and not stop_reason.startswith(SOURCE_LOST)
            and not (evals and evals[-1]["agent_steps"] == counters["agent_steps"])):
        run_evaluation(final=True)  # (unless the evaluation that reached --target-score was at this step)
    if stop:
        stop_reason = "interrupted"
        bar.write(f"{stop.name}: writing the checkpoint (again to exit at once; the last checkpoint stays intact)")
    save_checkpoint(final=True)
    log.write_summary(**progress_fields(), stop_reason=stop_reason)
    log.close()
    bar.close()  # after the final evaluation, whose progress it shows
    print(f"{stop_reason}; checkpoint {ckpt_path}", file=sys.stderr)
    return log.summary


class PoolSpec(NamedTuple):
    """What the learner needs to know of the actors' pools: the replay's lanes and shapes."""

    num_envs: int
    obs_shape: tuple
    num_actions: int
    frame_shape: tuple
    stack: int
    obs_dtype: np.dtype
    atari: bool


def describe_resume(cfg: TrainConfig, ckpt_file: Path, state: dict, counters: dict, replay_state: dict | None,
                    replay_note: str, env_seed: int) -> str:
    """What a resume restored, and what it could not."""
    if cfg.actors:
        from fastdqn.distributed import epsilon_ladder

        ladder = epsilon_ladder(cfg.apex_eps, cfg.apex_alpha, cfg.actors * cfg.env.num_envs)
        epsilon = f"the actors' epsilon ladder {ladder[0]:.3g} ... {ladder[-1]:.3g} (--apex-eps, --apex-alpha)"
    else:
        epsilon = f"epsilon {epsilon_at(cfg, counters['schedule_steps']):.3f}"
    restored = ["online and target networks", "optimizer", "counters and replay-ratio credit",
                f"{epsilon}, beta "
                f"{beta_at(cfg, counters['schedule_steps']):.3f} and lr {lr_at(cfg, counters['schedule_steps']):.3g}",
                "RNG streams (acting, replay sampling, torch)"]
    if cfg.algorithm in ON_POLICY:  # no target network, no replay: the rollout in progress
        restored = ["network", "optimizer", "counters", f"{epsilon} and lr {lr_at(cfg, counters['schedule_steps']):.3g}",
                    "RNG streams (acting, minibatch order, torch)"]
        replay_note = replay_note.replace("replay of", "the rollout in progress,")
    lines = [f"resumed {ckpt_file} at step {counters['agent_steps']:,}",
             "  restored: " + ", ".join(restored + ([replay_note] if replay_state is not None else []))]
    missing = [f"games in progress (EnvPool cannot save them): the envs start new games, seeded {env_seed} "
               "from the saved acting stream"]
    if replay_state is None and cfg.algorithm in ON_POLICY:
        missing.append(f"the rollout in progress ({replay_note}): a new one starts")
    elif replay_state is None:
        missing.append(f"the replay ({replay_note}): it refills for {cfg.learning_starts:,} steps "
                       "(--learning-starts) while epsilon and beta wait")
    lines.append("  not restored: " + "; ".join(missing))
    if counters["budget_from"] and cfg.max_minutes:
        lines.append(f"  --max-minutes {cfg.max_minutes:g} counts from this resume (--total-steps was raised)")
    return "\n".join(lines)


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def config_from_run(run_dir: str | Path) -> dict:
    """The config a run was started with (from its checkpoint), as nested dicts."""
    return checkpoint.load(Path(run_dir) / "checkpoint.pt")["config"]

