"""One config for a training run: every field is a `fastdqn train` flag, its help the metadata.

Presets are named sets of overrides on top of the defaults; flags given on the command line
override the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastdqn.envs import EnvConfig, protocol_options
from fastdqn.envs import validate as validate_env


REPLAY_IN_PERIODIC_GB = 1.0  # save_replay=auto: periodic checkpoints include a replay up to this size

# Algorithms that learn from a rollout of their current policy (fastdqn.rollout) instead of a replay.
ON_POLICY = ("a2c", "pqn")


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


# Below this many batch rows x hidden units an MLP's update is too small for a second torch thread to
# pay for its synchronisation. `fastdqn bench continuous` on a 2-core Zen4 (2026-12-07), TD3 updates/s
# with one thread and two: batch 64 x 128 units 513 / 350, 64 x 256 206 / 315, 256 x 256 106 / 142.
SMALL_MLP_UPDATE = 64 * 256


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    # --- run
    run_dir: str = _f("", "directory for TensorBoard events, summary.json and checkpoints; default: a new "
                      "runs/{env_id}__{exp_name}__{seed}__{date-time}")
    exp_name: str = _f("", "experiment name in the default run directory and in W&B; default: the preset's name, else dqn")
    seed: int = _f(0, "seed of torch, NumPy and the replay sampler (the env pool's own seed is --env-seed)")
    device: str = _f("auto", "auto, cpu or cuda")
    torch_threads: int = _f(0, f"CPU threads for torch; 0 = auto (1 for small MLP updates, batch x hidden < {SMALL_MLP_UPDATE} as CartPole's, where more threads only add overhead; all cores for a CNN or a wider MLP (TD3's) on a CPU, less those of local Ray actors; 1 on a GPU, whose host work is only copies)")
    total_steps: int = _f(10_000_000, "agent steps to train for (frames = steps x frame_skip)")
    # --- replay
    buffer_size: int = _f(1_000_000, "replay capacity in transitions (one frame each)")
    replay_window: int = _f(0, "with --replay-window-steps: sample only the newest N transitions, exactly as a "
                            "--buffer-size N replay would, until that agent step; from it on, all of --buffer-size (the "
                            "older stored transitions come back at the mean priority). 0 = sample from all of it")
    replay_window_steps: int = _f(0, "the agent step at which --replay-window stops holding the sampled range back")
    learning_starts: int = _f(80_000, "agent steps collected before the first update")
    batch_size: int = _f(32, "transitions per learner update")
    replay_ratio: float = _f(8.0, "sampled transitions per agent step (8 = batch 32 every 4 steps)")
    replay_ratio_early: float = _f(0.0, "with --replay-ratio-early-steps: the replay ratio until that agent step "
                                        "(learning early, while the agent is young), --replay-ratio after it; "
                                        "0 = --replay-ratio throughout")
    replay_ratio_early_steps: int = _f(0, "the agent step at which --replay-ratio-early gives way to --replay-ratio")
    n_step: int = _f(3, "n-step returns")
    gamma: float = _f(0.99, "discount")
    per_alpha: float = _f(0.6, "priority exponent alpha; 0 = uniform replay")
    per_beta0: float = _f(0.4, "initial importance-weight exponent beta, annealed linearly to 1 at total_steps")
    per_eps: float = _f(0.01, "priority offset: p = (|td| + eps) ** alpha")
    replay_device: str = _f(
        "numpy", "where the replay's frames live: numpy (host memory, Numba kernels), cuda (GPU memory: "
        "only indices cross the bus, a CUDA kernel gathers the stacks; needs --device cuda) or cpu (torch "
        "tensors through the C++ twin of that kernel: the cuda code path, for testing without a GPU)",
        choices=("numpy", "cuda", "cpu"))
    # --- learner
    algorithm: str = _f("dqn", "dqn: the DQN family, for discrete actions (the flags of the Q-network, its head and its "
                        "loss below); ddpg or td3 (Fujimoto et al. 2018): an actor and one / twin critics for continuous "
                        "actions (MuJoCo tasks; --policy-delay, --target-noise, --noise-clip, --exploration-noise); "
                        "a2c (Mnih et al. 2016, synchronous) or pqn (Gallici et al. 2024): on-policy agents for discrete "
                        "actions that learn from rollouts of --rollout-steps per env instead of a replay (the on-policy "
                        "flags; the replay's are not used). fastdqn envs lists the tasks of each kind; docs/agents.md "
                        "says when to pick which", choices=("dqn", "ddpg", "td3", "a2c", "pqn"))
    dueling: bool = _f(True, "dueling head Q = V + A - mean(A)")
    head: str = _f("scalar", "what the Q-network outputs per action: scalar (Q itself, DQN), c51 (a distribution on "
                   "--num-atoms fixed atoms in [--v-min, --v-max], cross-entropy to the projected n-step target; "
                   "Bellemare et al. 2017) or qr (--num-atoms quantiles, quantile Huber loss; Dabney et al. 2018). "
                   "Acting is greedy on the mean; with c51 or qr the replay priority is the per-sample loss",
                   choices=("scalar", "c51", "qr"))
    num_atoms: int = _f(0, "atoms (c51) or quantiles (qr) per action; 0 = the papers' 51 for c51, 200 for qr")
    v_min: float = _f(-10.0, "c51: the support's lowest value (the papers' -10 suits clipped Atari rewards)")
    v_max: float = _f(10.0, "c51: the support's highest value (returns beyond it are clipped onto it)")
    hidden: int = _f(512, "hidden units of the Q-network's fully connected layer(s)")
    torso: str = _f("nature", "the CNN's conv layers on image observations: nature (Mnih et al. 2015: 32x8x8/4, "
                    "64x4x4/2, 64x3x3/1) or nips (Mnih et al. 2013: 16x8x8/4, 32x4x4/2, about a third of the "
                    "arithmetic)", choices=("nature", "nips"))
    double_q: bool = _f(True, "double-Q target (online argmax, target value); off = max over the target net")
    loss: str = _f("huber", "huber, mse (0.5 delta^2) or pseudo_huber (sqrt(delta^2 + 1) - 1)", choices=("huber", "mse", "pseudo_huber"))
    optimizer: str = _f("adam", "adam or rmsprop (dqn: the Nature DQN's; a2c / pqn: A2C's, alpha 0.99, eps 1e-5); "
                        "a2c / pqn also radam (CleanRL's PQN optimizer, eps --adam-eps)",
                        choices=("adam", "rmsprop", "radam"))
    lr: float = _f(1e-4, "learning rate (from the first update; see --lr-decay-end for a schedule)")
    lr_final: float = _f(0.0, "with --lr-decay-end: the learning rate reached there, linearly from --lr")
    lr_decay_start: int = _f(0, "with --lr-decay-end: the agent step at which the learning rate starts to fall")
    lr_decay_end: int = _f(0, "the agent step at which the learning rate reaches --lr-final and stays; "
                              "0 = a constant --lr")
    adam_eps: float = _f(1.5e-4, "Adam's epsilon (RMSprop keeps the Nature-DQN setting: eps 0.01, alpha 0.95, centered)")
    max_grad_norm: float = _f(10.0, "gradient-norm clip; 0 = off")
    target_update_period: int = _f(2000, "hard target copy every this many learner updates (ignored when tau > 0)")
    tau: float = _f(0.0, "Polyak target update factor per learner update; 0 = hard copies")
    precision: str = _f(
        "auto", "auto, fp32 or bf16. auto: bf16 where the hardware computes in it (a CUDA GPU of compute "
        "capability >= 8.0, a CPU with avx512_bf16 or AMX) for the CNN, fp32 elsewhere: on CPUs without bf16 "
        "instructions torch emulates it and a bf16 update runs 3-17x slower. bf16 covers the trunk; weights, "
        "Q-values, argmaxes, targets and TD errors stay fp32", choices=("auto", "fp32", "bf16"))
    compile: bool = _f(False, "torch.compile the update")
    cuda_graph: bool = _f(True, "on a GPU, capture updates_per_graph updates as one CUDA graph")
    updates_per_graph: int = _f(4, "updates per CUDA-graph replay (GPU only)")
    overlap_updates: str = _f(
        "auto", "replay agents: sample the next group of updates on the host while the GPU runs this one, "
        "writing this one's priorities after that (sampling sees them one group late). auto: on where "
        "updates run as CUDA graphs (a CPU update runs at once: nothing to overlap); on: everywhere (the "
        "same code on the CPU, for checks)", choices=("auto", "on", "off"))
    # --- exploration
    eps_schedule: str = _f("linear", "linear (two phases) or exp", choices=("linear", "exp"))
    eps_start: float = _f(1.0, "initial epsilon")
    eps_mid: float = _f(0.1, "linear: epsilon reached at eps_mid_steps")
    eps_mid_steps: int = _f(250_000, "linear: end of the first phase, in agent steps")
    eps_final: float = _f(0.01, "final epsilon (linear: reached at eps_final_steps; exp: the floor)")
    eps_final_steps: int = _f(5_000_000, "linear: end of the second, slower phase")
    eps_decay_steps: int = _f(250_000, "exp: time constant of the decay, in agent steps")
    eval_eps: float = _f(0.01, "epsilon during evaluation (a2c: not used; its evaluation plays the policy's most "
                               "probable action, its training samples the policy)")
    # --- continuous actions (--algorithm ddpg / td3; in the exploration and learner groups of --help)
    exploration_noise: float = _f(0.1, "ddpg / td3: std of the Gaussian noise added to the actor's actions while "
                                       "training, in units of half the action range (epsilon is then the chance of a "
                                       "uniform random action instead: 1 for a random warm-up)")
    policy_delay: int = _f(2, "td3: actor and target updates on every this many critic updates (ddpg: 1)")
    target_noise: float = _f(0.2, "td3: std of the target-policy smoothing noise, in units of half the action range "
                                  "(ddpg: none)")
    noise_clip: float = _f(0.5, "td3: the smoothing noise is clipped to +-this (units of half the action range)")
    # --- on-policy agents (--algorithm a2c / pqn)
    rollout_steps: int = _f(5, "a2c / pqn: agent steps per env in each rollout (T); the agent learns once the rollout "
                               "holds T steps of every env, then collects the next (A2C's 5; CleanRL's PQN on Atari: "
                               "128)")
    gae_lambda: float = _f(1.0, "a2c: lambda of the GAE(lambda) advantages; 1 = n-step returns to the rollout's end, "
                                "bootstrapped there (A2C's)")
    q_lambda: float = _f(0.65, "pqn: lambda of the Q(lambda) targets (0 = one-step Q-learning targets)")
    entropy_coef: float = _f(0.01, "a2c: weight beta of the entropy bonus in the loss")
    value_coef: float = _f(0.5, "a2c: weight of the value loss (G - V)^2 in the loss")
    shared_torso: bool = _f(True, "a2c: the policy and value heads share one torso; --no-shared-torso gives each its "
                                  "own (A3C's separate policy and value networks)")
    update_epochs: int = _f(4, "pqn: passes over each rollout (K)")
    num_minibatches: int = _f(4, "pqn: minibatches per pass; they split the rollout's T x num-envs transitions evenly")
    # --- evaluation, logging, checkpoints
    eval_interval: int = _f(250_000, "agent steps between evaluations; 0 = only at the end")
    eval_episodes: int = _f(8, "full games per evaluation (one per eval env)")
    eval_max_steps: int = _f(27_000, "agent steps at most per evaluation game (108k frames)")
    final_eval: bool = _f(True, "evaluate once more at the end of the run")
    log_interval: int = _f(5_000, "agent steps between scalar logs")
    checkpoint_interval: int = _f(250_000, "agent steps between checkpoints, the first one when learning starts; "
                                           "0 = only then, at the end and on Ctrl-C / SIGTERM")
    save_replay: str = _f(
        "auto", "which checkpoints include the replay, so that a resumed run continues learning at once instead of "
        "refilling it: auto = the one written when the process stops (end, Ctrl-C, SIGTERM, --max-minutes) and "
        f"periodic ones while the replay is at most {REPLAY_IN_PERIODIC_GB:g} GB; always = every checkpoint; never = "
        "none. Disk: ~7.1 KB per Atari transition (1M: 7.1 GB, 300k: 2.1 GB), ~40 bytes per CartPole one; one "
        "replay file is kept, two for a moment while the next is written", choices=("auto", "always", "never"))
    resume: bool = _f(False, "continue from run_dir/checkpoint.pt (or its .prev if that one is damaged)")
    target_score: float = _f(float("inf"), "stop once an evaluation mean reaches this")
    max_minutes: float = _f(0.0, "stop (with a final eval and checkpoint) after this many minutes; 0 = no limit")
    # --- what a run shows: progress bar, Weights & Biases, videos
    progress_interval: float = _f(0.0, "seconds between progress updates; 0 = 1 s on a terminal, 30 s otherwise (plain lines)")
    track: bool = _f(False, "also log to Weights & Biases: the config, the same scalars as TensorBoard, the videos "
                            "(needs pip install 'fastdqn[track]'; WANDB_MODE=offline logs without a network)")
    wandb_project: str = _f("fastdqn", "W&B project (with --track)")
    wandb_entity: str = _f("", "W&B entity, a user or team (with --track); default: W&B's default")
    capture_video: bool = _f(False, "record the first game of every evaluation as an MP4 in the game's RGB frames at "
                                    "real speed: RUN_DIR/videos/, TensorBoard and W&B (needs pip install 'fastdqn[video]')")
    # --- distributed: Ape-X-style actors on Ray (fastdqn/distributed.py)
    actors: int = _f(0, "distributed training: this many Ray actors, each with its own EnvPool pool of --num-envs envs and "
                        "a CPU copy of the Q-network, feed this process's learner and replay (Ape-X); 0 = no Ray, the "
                        "single-process loop (needs pip install 'fastdqn[ray]')")
    ray_address: str = _f("", "with --actors: the Ray cluster to join (the address `ray start --head` prints, or auto); "
                              "default: start a local Ray on this machine")
    actor_cpus: float = _f(1.0, "with --actors: CPUs Ray reserves for each actor (also its torch threads and, unless "
                                "--num-threads is given, its EnvPool threads)")
    apex_eps: float = _f(0.4, "with --actors: Ape-X's epsilon ladder: env i of all M actor envs explores with "
                              "apex_eps ** (1 + apex_alpha * i / (M - 1)) for the whole run (the --eps-* schedule is "
                              "not used)")
    apex_alpha: float = _f(7.0, "with --actors: the exponent of the epsilon ladder (see --apex-eps)")
    weights_every: int = _f(100, "with --actors: learner updates between publications of the weights; each actor "
                                 "picks up the newest at its next chunk")
    chunk_steps: int = _f(256, "with --actors: agent steps per chunk of records an actor ships to the learner")
    max_inflight: int = _f(2, "with --actors: chunk requests outstanding per actor, which bounds how far actors run "
                              "ahead of the learner (back-pressure)")
    ratio_tolerance: float = _f(0.1, "with --actors: while it waits for data the learner may learn ahead of its "
                                     "credit until the measured replay ratio is --replay-ratio x (1 + this)")
    actor_restarts: int = _f(10, "with --actors: how often Ray restarts an actor whose process died; -1 = always")


# TD3 on EnvPool's MuJoCo tasks, CleanRL's td3_continuous_action settings (Fujimoto et al.'s): 1 env,
# one update of batch 256 per agent step, 25k random steps first, uniform one-step replay, Polyak 0.005,
# 256x256 MLPs, no gradient clip; fp32 (MLPs). Not yet tuned for the 2-core CPU's wall clock.
_MUJOCO_TD3 = dict(
    algorithm="td3",
    total_steps=1_000_000,
    buffer_size=1_000_000,
    learning_starts=25_000,
    batch_size=256,
    replay_ratio=256.0,
    n_step=1,
    per_alpha=0.0,
    hidden=256,
    lr=3e-4,
    adam_eps=1e-8,
    max_grad_norm=0.0,
    tau=0.005,
    eps_start=1.0,
    eps_mid=1.0,
    eps_mid_steps=25_000,
    eps_final=0.0,
    eps_final_steps=25_000,
    eval_eps=0.0,
    eval_interval=50_000,
    eval_episodes=10,
    eval_max_steps=1_000,
    checkpoint_interval=100_000,
)

PRESETS: dict[str, dict] = {
    # CartPole-v1: an MLP, small replay, fast Polyak targets; solves (eval 500) in about a minute.
    "cartpole": dict(
        env=dict(env_id="CartPole-v1", num_envs=4),
        total_steps=60_000,
        buffer_size=50_000,
        learning_starts=2_000,
        batch_size=64,
        replay_ratio=32.0,
        n_step=3,
        hidden=128,
        dueling=True,
        lr=5e-4,
        max_grad_norm=10.0,
        tau=0.01,
        eps_mid=0.05,
        eps_mid_steps=10_000,
        eps_final=0.01,
        eps_final_steps=20_000,
        eval_eps=0.0,
        eval_interval=5_000,
        eval_episodes=8,
        eval_max_steps=500,
        log_interval=1_000,
        checkpoint_interval=10_000,
        target_score=500.0,
    ),
    # Breakout, the published-style setting for a GPU: 10M steps, replay ratio 8, 64 envs (a GPU
    # learner needs thousands of agent steps per second: docs/gpu.md).
    "breakout": dict(
        env=dict(env_id="Breakout-v5", num_envs=64),
    ),
}
# Breakout on a small CPU (2 cores) with the Nature CNN: fewer updates per step than the papers
# (replay ratio 2), faster exploration. The preset `breakout-cpu` until 2026-12-07; now the base of
# the two CPU presets below (its hour and what it reached: docs/results/breakout-cpu/TUNING.md).
_BREAKOUT_CPU_NATURE = dict(
    env=dict(env_id="Breakout-v5", num_envs=16, num_threads=2),
    total_steps=3_000_000,
    buffer_size=300_000,
    learning_starts=20_000,
    batch_size=32,
    replay_ratio=2.0,
    n_step=3,
    lr=2.5e-4,
    target_update_period=1000,
    eps_mid=0.1,
    eps_mid_steps=150_000,
    eps_final=0.01,
    eps_final_steps=1_000_000,
    eval_interval=100_000,
    checkpoint_interval=100_000,
    max_minutes=60.0,
)
# The lighter network of Mnih et al. (2013) (a third of the Nature CNN's arithmetic, fc 256) at
# twice the Nature setting's replay ratio, in batches of 64: on 2 AVX2 cores a sample costs ~0.8x
# as much in a batch of 64 as in one of 32, so the agent steps ~1.4x as fast. Half as many
# updates, so the target period (in updates) is halved to keep it at 8k agent steps, and the lr is
# 5e-4 (twice 2.5e-4: on four seeds it reached human level by minute 18.9, where 3.5e-4 did within
# 20 minutes on two). Measured on 2 cores, fp32: docs/results/breakout-cpu/ (TUNING.md).
PRESETS["breakout-cpu-nips"] = dict(_BREAKOUT_CPU_NATURE, torso="nips", hidden=256, replay_ratio=4.0,
                                    batch_size=64, target_update_period=500, lr=5e-4)
# Breakout on a small CPU, learning the most per agent step: Rainbow's parts but noisy nets
# (epsilon-greedy instead), on breakout-cpu-nips: a C51 head (51 atoms on [-10, 10]) at twice its
# lr, twice the updates while the agent is young (replay ratio 8 until 250k agent steps), a 1M
# replay sampled from its newest 300k until 500k, evaluations every 50k. Named
# breakout-cpu-rainbow until 2026-12-07. Three seeds against the scalar head on the same flags,
# and its hours: docs/results/breakout-cpu/TUNING.md.
PRESETS["breakout-cpu"] = dict(PRESETS["breakout-cpu-nips"], head="c51", lr=1e-3, replay_ratio_early=8.0,
                               replay_ratio_early_steps=250_000, buffer_size=1_000_000,
                               replay_window=300_000, replay_window_steps=500_000, eval_interval=50_000)
# Presets renamed, for a one-line error that names the new one.
RENAMED_PRESETS = {"breakout-cpu-rainbow": "breakout-cpu"}
PRESETS["halfcheetah"] = dict(_MUJOCO_TD3, env=dict(env_id="HalfCheetah-v4", num_envs=1))
# On-policy agents: no replay; epsilon is PQN's alone (A2C samples its policy: its epsilons are 0).
_CARTPOLE_ON_POLICY = dict(eval_eps=0.0, eval_interval=10_000, eval_episodes=8, eval_max_steps=500, log_interval=2_000,
                           checkpoint_interval=50_000, target_score=500.0)
PRESETS["cartpole-a2c"] = dict(
    _CARTPOLE_ON_POLICY, algorithm="a2c", env=dict(env_id="CartPole-v1", num_envs=16), total_steps=300_000,
    rollout_steps=8, hidden=128, shared_torso=False, optimizer="adam", lr=1e-3, adam_eps=1e-5, lr_final=0.0,
    lr_decay_end=300_000, max_grad_norm=0.5, entropy_coef=0.01, value_coef=0.5, eps_start=0.0, eps_mid=0.0,
    eps_final=0.0)
PRESETS["cartpole-pqn"] = dict(
    _CARTPOLE_ON_POLICY, algorithm="pqn", env=dict(env_id="CartPole-v1", num_envs=16), total_steps=200_000,
    rollout_steps=32, update_epochs=4, num_minibatches=4, hidden=128, optimizer="radam", lr=1e-3, adam_eps=1e-8,
    max_grad_norm=10.0, q_lambda=0.65, eps_start=1.0, eps_mid=0.05, eps_mid_steps=50_000, eps_final=0.05,
    eps_final_steps=50_000)
# Breakout, the papers' settings (10M agent steps; for a GPU). A2C as OpenAI baselines' (Mnih et al. 2016's
# synchronous form): 16 envs x 5 steps, RMSprop 7e-4 (alpha 0.99, eps 1e-5) decayed linearly to 0, entropy 0.01,
# value 0.5, gradient clip 0.5, n-step returns, Nature torso with fc 512. PQN as CleanRL's pqn_atari_envpool.py:
# 8 envs x 128 steps, 4 epochs x 4 minibatches, RAdam 2.5e-4 decayed linearly to 0, Q(0.65), gradient clip 10,
# epsilon 1 -> 0.01 over the first 1M agent steps, Nature torso with LayerNorm.
_BREAKOUT_ON_POLICY = dict(total_steps=10_000_000, torso="nature", hidden=512, gamma=0.99, lr_final=0.0,
                           lr_decay_start=0, lr_decay_end=10_000_000, eval_interval=250_000,
                           checkpoint_interval=250_000)
PRESETS["breakout-a2c"] = dict(
    _BREAKOUT_ON_POLICY, algorithm="a2c", env=dict(env_id="Breakout-v5", num_envs=16), rollout_steps=5,
    optimizer="rmsprop", lr=7e-4, max_grad_norm=0.5, entropy_coef=0.01, value_coef=0.5, gae_lambda=1.0,
    eps_start=0.0, eps_mid=0.0, eps_final=0.0, eval_eps=0.0)
PRESETS["breakout-pqn"] = dict(
    _BREAKOUT_ON_POLICY, algorithm="pqn", env=dict(env_id="Breakout-v5", num_envs=8), rollout_steps=128,
    update_epochs=4, num_minibatches=4, optimizer="radam", lr=2.5e-4, adam_eps=1e-8, max_grad_norm=10.0,
    q_lambda=0.65, eps_start=1.0, eps_mid=0.01, eps_mid_steps=1_000_000, eps_final=0.01,
    eps_final_steps=1_000_000)
PRESETS["hopper"] = dict(_MUJOCO_TD3, env=dict(env_id="Hopper-v4", num_envs=1))
PRESETS["walker2d"] = dict(_MUJOCO_TD3, env=dict(env_id="Walker2d-v4", num_envs=1))

# What each preset is for, one line each (`fastdqn presets` prints it beside what committed runs reached).
PRESET_PURPOSE = {
    "cartpole": "a first run: CartPole-v1 with an MLP, solved (eval 500) in a few minutes on any CPU",
    "breakout": "Breakout as the papers run it (10M agent steps, replay ratio 8, 64 envs): needs a GPU",
    "breakout-cpu": "Breakout on a small CPU, learning the most per agent step: the 2013 network with a C51 head at "
                    "lr 1e-3, replay ratio 8 until 250k agent steps then 4, a 1M replay (Rainbow but noisy nets)",
    "breakout-cpu-nips": "Breakout on a small CPU with the scalar head: the 2013 network at replay ratio 4, batch 64 "
                         "(the fastest agent steps on a CPU without bf16)",
    "halfcheetah": "TD3 on HalfCheetah-v4 (MuJoCo), CleanRL's settings: 1M agent steps, one batch-256 update per step",
    "hopper": "TD3 on Hopper-v4 (MuJoCo), CleanRL's settings: 1M agent steps, one batch-256 update per step",
    "walker2d": "TD3 on Walker2d-v4 (MuJoCo), CleanRL's settings: 1M agent steps, one batch-256 update per step",
    "cartpole-a2c": "A2C on CartPole-v1: 16 envs x 8-step rollouts, one Adam step each, separate 128-unit policy and "
                    "value MLPs, lr 1e-3 to 0; solves (eval 500, greedy) in well under a minute on 2 cores",
    "cartpole-pqn": "PQN on CartPole-v1: 16 envs x 32-step rollouts, 4 epochs x 4 minibatches, LayerNorm MLP, "
                    "Q(0.65); solves (eval 500) in well under a minute on 2 cores",
    "breakout-a2c": "A2C on Breakout, OpenAI baselines' settings (16 envs x 5 steps, RMSprop 7e-4 to 0, entropy 0.01, "
                    "clip 0.5, n-step returns), 10M agent steps; on 2 CPU cores the fastest Breakout preset per minute "
                    "(--total-steps 2000000 for under an hour)",
    "breakout-pqn": "PQN on Breakout, CleanRL's pqn_atari_envpool settings (8 envs x 128 steps, 4 x 4 minibatches, "
                    "RAdam 2.5e-4 to 0, Q(0.65), epsilon to 0.01 by 1M), 10M agent steps: a GPU's",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_flag(name: str) -> str:
    # env fields keep their own names, except the two that would clash with the learner's
    return _flag({"seed": "env_seed", "batch_size": "env_batch_size"}.get(name, name))


# `fastdqn train --help` shows the TrainConfig flags in these groups, in this order (the env's
# flags come first, as "environment"); tests/test_config_cli.py checks that each field is in one.
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "run": ("exp_name", "run_dir", "seed", "total_steps", "max_minutes", "target_score"),
    "replay": ("buffer_size", "replay_window", "replay_window_steps", "learning_starts", "batch_size", "replay_ratio",
               "replay_ratio_early", "replay_ratio_early_steps", "n_step", "per_alpha", "per_beta0", "per_eps"),
    "learner": ("gamma", "algorithm", "dueling", "head", "num_atoms", "v_min", "v_max", "hidden", "torso", "double_q", "loss", "optimizer", "lr", "lr_final", "lr_decay_start",
                "lr_decay_end", "adam_eps", "max_grad_norm", "target_update_period", "tau", "policy_delay", "target_noise",
                "noise_clip"),
    "exploration": ("eps_schedule", "eps_start", "eps_mid", "eps_mid_steps", "eps_final", "eps_final_steps",
                    "eps_decay_steps", "exploration_noise"),
    "evaluation": ("eval_interval", "eval_episodes", "eval_max_steps", "eval_eps", "final_eval", "capture_video"),
    "logging": ("log_interval", "progress_interval", "track", "wandb_project", "wandb_entity"),
    "checkpoints": ("checkpoint_interval", "save_replay", "resume"),
    "hardware": ("device", "torch_threads", "replay_device", "precision", "compile", "cuda_graph", "updates_per_graph",
                 "overlap_updates"),
    "on-policy": ("rollout_steps", "gae_lambda", "q_lambda", "entropy_coef", "value_coef", "shared_torso",
                  "update_epochs", "num_minibatches"),
    "distributed": ("actors", "ray_address", "actor_cpus", "apex_eps", "apex_alpha", "weights_every", "chunk_steps",
                    "max_inflight", "ratio_tolerance", "actor_restarts"),
}


def _add_field(parser, cls, f: dataclasses.Field, flag_of) -> None:
    kwargs = dict(dest=f"{cls.__name__}.{f.name}", default=None, help=f.metadata.get("help", ""))
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif "choices" in f.metadata:  # argparse shows them as {a,b,c}
        kwargs.update(type=type(default), choices=f.metadata["choices"])
    else:
        kwargs.update(type=type(default), metavar=type(default).__name__.upper())
    if default != "":  # an empty default is explained by the help itself
        kwargs["help"] += f" (default: {default})"
    parser.add_argument(flag_of(f.name), **kwargs)


def preset_name(name: str) -> str:
    """--preset's check: a known preset, or a one-line error naming the choices (or the new name)."""
    if name in PRESETS:
        return name
    if name in RENAMED_PRESETS:
        raise argparse.ArgumentTypeError(f"preset {name!r} is now called {RENAMED_PRESETS[name]!r} (the same settings)")
    raise argparse.ArgumentTypeError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", type=preset_name, metavar="{" + ",".join(sorted(PRESETS)) + "}",
                        help="start from a named set of settings (fastdqn presets lists what each sets)")
    environment = parser.add_argument_group("environment")
    for f in dataclasses.fields(EnvConfig):
        _add_field(environment, EnvConfig, f, _env_flag)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name != "env"}
    grouped = {name for names in HELP_GROUPS.values() for name in names}
    groups = {**HELP_GROUPS, "other": tuple(name for name in fields if name not in grouped)}
    for title, names in groups.items():
        group = parser.add_argument_group(title)
        for name in names:
            _add_field(group, TrainConfig, fields[name], _flag)


def from_arguments(args: argparse.Namespace) -> TrainConfig:
    overrides: dict = {}
    env_overrides: dict = {}
    for key, value in vars(args).items():
        if value is None or "." not in key:
            continue
        owner, name = key.split(".", 1)
        (env_overrides if owner == "EnvConfig" else overrides)[name] = value
    return make_config(args.preset, env=env_overrides, **overrides)


def make_config(preset: str | None = None, env: dict | None = None, **overrides) -> TrainConfig:
    """A TrainConfig from a preset name plus overrides (env options in ``env``)."""
    base = dict(PRESETS[preset]) if preset else {}
    base["exp_name"] = preset or overrides.get("algorithm", "dqn")
    env_options = with_protocol(base.pop("env", {}), env or {})
    cfg = TrainConfig(env=EnvConfig(**env_options), **{**base, **overrides})
    validate(cfg)
    return cfg


def with_protocol(preset_env: dict, env: dict) -> dict:
    """The env options of a run: the preset's, then the group that a ``protocol`` given by the user
    sets, then the options the user gave one by one (which win)."""
    group = protocol_options(env["protocol"]) if "protocol" in env else {}
    return {**preset_env, **group, **env}


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a TrainConfig saved with ``to_dict`` (a checkpoint's, say)."""
    data = dict(data)
    cfg = TrainConfig(env=EnvConfig(**data.pop("env")), **_upgrade(data))
    validate(cfg)
    return cfg


def _upgrade(data: dict) -> dict:
    if isinstance(data.get("save_replay"), bool):  # checkpoints written before it had choices
        data = {**data, "save_replay": "always" if data["save_replay"] else "auto"}
    return data


def resume_config(run_dir: str, args: argparse.Namespace) -> TrainConfig:
    """The config saved in run_dir's checkpoint, with the flags given explicitly on top."""
    from fastdqn import checkpoint

    original = checkpoint.load_latest(checkpoint.require_resumable(run_dir), quiet=True)[0]["config"]
    saved = dict(original)
    env = dict(saved.pop("env"))
    for key, value in vars(args).items():
        if value is None or "." not in key:
            continue
        owner, name = key.split(".", 1)
        (env if owner == "EnvConfig" else saved)[name] = value
    saved["resume"] = True
    cfg = TrainConfig(env=EnvConfig(**env), **_upgrade(saved))
    check_resumable(original, cfg, run_dir)
    validate(cfg)
    return cfg


# What a resumed run cannot change: the network's and the replay's shapes and meaning, and the game
# it plays (a run's scores are of one game: frame skip, sticky actions, lives, clipping, starts, length).
FIXED_ON_RESUME = {
    "EnvConfig": ("env_id", "num_envs", "stack_num", "frame_size", "protocol", "full_action_space", "frame_skip",
                  "repeat_action_probability", "episodic_life", "reward_clip", "noop_max", "use_fire_reset",
                  "max_episode_steps"),
    "TrainConfig": ("algorithm", "buffer_size", "n_step", "gamma", "per_alpha", "per_eps", "dueling", "head", "num_atoms", "v_min",
                    "v_max", "hidden", "torso", "optimizer", "rollout_steps", "shared_torso"),
}


# Fields a run saved before they existed did not record: the value such a run had.
_ADDED_LATER = {"algorithm": "dqn", "rollout_steps": 5, "shared_torso": True}


def check_resumable(saved: dict, cfg: TrainConfig, run_dir) -> None:
    """Raise ValueError naming the first flag that differs from the saved config (``to_dict``) where
    it cannot differ: the checkpoint's network and replay have that shape and meaning."""
    for owner, before, now, flag_of in (("EnvConfig", saved["env"], cfg.env, _env_flag),
                                        ("TrainConfig", saved, cfg, _flag)):
        for name in FIXED_ON_RESUME[owner]:
            if name not in before and name in _ADDED_LATER:  # (runs from before the field: its default)
                was = _ADDED_LATER[name]
            else:
                was = before[name]
            if getattr(now, name) != was:
                flag = flag_of(name)
                raise ValueError(f"{flag} cannot change on --resume (the run in {run_dir} was started with {flag} "
                                 f"{was}; its checkpoint holds that network, replay and game): drop {flag}, or "
                                 "start a new run in another --run-dir")


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError naming the flag the user types and the fix, before any work is done."""
    _validate_numbers(cfg)
    validate_env(cfg.env, flag_of=_env_flag)
    value = lambda name: getattr(cfg, name)  # noqa: E731
    positive = ("total_steps", "buffer_size", "batch_size", "n_step", "hidden", "target_update_period",
                "eval_episodes", "eval_max_steps", "log_interval", "updates_per_graph", "eps_decay_steps",
                "replay_ratio", "adam_eps")
    for name in positive:
        if value(name) <= 0:
            raise ValueError(f"{_flag(name)} must be positive, got {value(name)}")
    for name in ("torch_threads", "learning_starts", "eval_interval", "checkpoint_interval", "max_grad_norm", "per_alpha",
                 "per_eps", "max_minutes", "lr", "lr_final", "lr_decay_start", "lr_decay_end", "eps_mid_steps",
                 "eps_final_steps", "replay_window", "replay_window_steps", "replay_ratio_early",
                 "replay_ratio_early_steps", "num_atoms"):
        if value(name) < 0:
            raise ValueError(f"{_flag(name)} must be >= 0, got {value(name)}")
    if not 0 < cfg.gamma <= 1:
        raise ValueError(f"--gamma must be in (0, 1], got {cfg.gamma}")
    if not 0 <= cfg.tau <= 1:
        raise ValueError(f"--tau must be in [0, 1], got {cfg.tau}")
    for name in ("eps_start", "eps_mid", "eps_final", "eval_eps", "per_beta0"):
        if not 0 <= value(name) <= 1:
            raise ValueError(f"{_flag(name)} must be in [0, 1], got {value(name)}")
    if cfg.eps_schedule == "linear" and cfg.eps_final_steps < cfg.eps_mid_steps:
        raise ValueError(f"--eps-final-steps ({cfg.eps_final_steps}) must be >= --eps-mid-steps ({cfg.eps_mid_steps}): "
                         "the second phase of the linear schedule ends after the first")
    if cfg.lr_decay_end and cfg.lr_decay_end <= cfg.lr_decay_start:
        raise ValueError(f"--lr-decay-end ({cfg.lr_decay_end}) must be > --lr-decay-start ({cfg.lr_decay_start}), "
                         "or 0 for a constant --lr")
    _validate_head(cfg)
    _validate_algorithm(cfg)
    if bool(cfg.replay_ratio_early) != bool(cfg.replay_ratio_early_steps):
        raise ValueError("--replay-ratio-early and --replay-ratio-early-steps go together: give both (ratio R until "
                         "agent step S), or neither")
    if cfg.optimizer == "radam" and cfg.algorithm not in ON_POLICY:
        raise ValueError(f"--optimizer radam is for --algorithm a2c / pqn; --algorithm {cfg.algorithm} takes adam or "
                         "rmsprop")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    if cfg.replay_device == "cuda" and not cfg.device.startswith("cuda"):
        raise ValueError(f"--replay-device cuda needs --device cuda (got --device {cfg.device}): the "
                         "frames would live on the GPU while the learner runs elsewhere")
    if cfg.algorithm in ON_POLICY:
        _validate_on_policy(cfg)
    else:
        _validate_replay_size(cfg)
    _validate_distributed(cfg)


def _validate_numbers(cfg: TrainConfig) -> None:
    """Every float flag is a number (NaN compares false with every bound: it would pass them all) and
    finite, except --target-score, whose default inf means "never"; the seeds fit what takes them."""
    for owner, flag_of in ((cfg.env, _env_flag), (cfg, _flag)):
        for f in dataclasses.fields(owner):
            value = getattr(owner, f.name)
            if isinstance(value, float) and not math.isfinite(value) and not (
                    f.name == "target_score" and value == math.inf):
                raise ValueError(f"{flag_of(f.name)} must be a finite number, got {value}")
    if not 0 <= cfg.seed < 2**63:  # (torch's seed is an int64; NumPy's streams take any non-negative one)
        raise ValueError(f"--seed must be in [0, 2**63), got {cfg.seed}")
    if not 0 <= cfg.env.seed < 2**31:
        raise ValueError(f"--env-seed must be in [0, 2**31) (EnvPool takes an int32 seed), got {cfg.env.seed}")


def _validate_head(cfg: TrainConfig) -> None:
    if cfg.head == "scalar":
        if cfg.num_atoms not in (0, 1):
            raise ValueError(f"--num-atoms {cfg.num_atoms} needs --head c51 or qr (a scalar head has one output per action)")
        return
    if cfg.num_atoms == 1:
        raise ValueError(f"--head {cfg.head} needs --num-atoms of at least 2 (or 0 for the papers' size)")
    if cfg.head == "c51" and not cfg.v_min < cfg.v_max:
        raise ValueError(f"--v-min ({cfg.v_min}) must be below --v-max ({cfg.v_max})")
    if cfg.loss != "huber":
        raise ValueError(f"--loss {cfg.loss} is for the scalar head; --head {cfg.head} has its own loss "
                         "(c51: cross-entropy, qr: quantile Huber)")


def _validate_algorithm(cfg: TrainConfig) -> None:
    from fastdqn.envs import is_continuous

    continuous = is_continuous(cfg.env.env_id)
    if cfg.algorithm in ("dqn", *ON_POLICY) and continuous:
        raise ValueError(f"{cfg.env.env_id} has continuous actions: train it with --algorithm td3 (or ddpg); "
                         f"--algorithm {cfg.algorithm} needs a task with a set of actions to choose from")
    if cfg.algorithm in ("ddpg", "td3") and not continuous:
        raise ValueError(f"--algorithm {cfg.algorithm} is for continuous actions; {cfg.env.env_id} has a set of "
                         "actions: use --algorithm dqn")
    if cfg.algorithm != "dqn" and cfg.actors:
        raise ValueError(f"--actors (distributed acting on Ray) runs --algorithm dqn only for now, not {cfg.algorithm}")
    if cfg.policy_delay < 1:
        raise ValueError(f"--policy-delay must be at least 1, got {cfg.policy_delay}")
    for name in ("exploration_noise", "target_noise", "noise_clip"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{_flag(name)} must be >= 0, got {getattr(cfg, name)}")


def _validate_on_policy(cfg: TrainConfig) -> None:
    """--algorithm a2c / pqn: the on-policy flags (the replay's are not used)."""
    env = cfg.env
    if env.batch_size not in (0, env.num_envs):
        raise ValueError(f"--algorithm {cfg.algorithm} steps every env of the pool together (its rollout has T steps "
                         f"of each): drop --env-batch-size {env.batch_size}, or set it to --num-envs {env.num_envs}")
    for name in ("rollout_steps", "update_epochs", "num_minibatches"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{_flag(name)} must be at least 1, got {getattr(cfg, name)}")
    for name in ("gae_lambda", "q_lambda"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise ValueError(f"{_flag(name)} must be in [0, 1], got {getattr(cfg, name)}")
    for name in ("entropy_coef", "value_coef"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{_flag(name)} must be >= 0, got {getattr(cfg, name)}")
    transitions = cfg.rollout_steps * env.num_envs
    if cfg.algorithm == "pqn" and transitions % cfg.num_minibatches:
        raise ValueError(f"--num-minibatches {cfg.num_minibatches} does not divide a rollout's --rollout-steps "
                         f"{cfg.rollout_steps} x --num-envs {env.num_envs} = {transitions} transitions evenly: pick a "
                         "divisor of it")
    if transitions > cfg.total_steps:
        raise ValueError(f"a rollout (--rollout-steps {cfg.rollout_steps} x --num-envs {env.num_envs} = {transitions} "
                         f"agent steps) is longer than --total-steps {cfg.total_steps}: the run would end before its "
                         "first update")


def _validate_distributed(cfg: TrainConfig) -> None:
    if cfg.actors < 0:
        raise ValueError(f"--actors must be >= 0, got {cfg.actors}")
    if not cfg.actors:
        if cfg.ray_address:
            raise ValueError("--ray-address needs --actors N (N > 0): without actors there is nothing to run on Ray")
        return
    for name in ("actor_cpus", "weights_every", "chunk_steps", "max_inflight"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{_flag(name)} must be positive, got {getattr(cfg, name)}")
    if not 0 < cfg.apex_eps <= 1:
        raise ValueError(f"--apex-eps must be in (0, 1], got {cfg.apex_eps}")
    for name in ("apex_alpha", "ratio_tolerance"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{_flag(name)} must be >= 0, got {getattr(cfg, name)}")
    if cfg.actor_restarts < -1:
        raise ValueError(f"--actor-restarts must be >= -1 (-1 = always), got {cfg.actor_restarts}")


def _validate_replay_size(cfg: TrainConfig) -> None:
    from fastdqn.envs import is_atari

    num_envs = cfg.env.num_envs
    # the replay has a lane per env: of every actor with --actors
    lanes = num_envs * max(cfg.actors, 1)
    envs = f"--actors {cfg.actors} x --num-envs {num_envs}" if cfg.actors else f"--num-envs {num_envs}"
    stack = cfg.env.stack_num if is_atari(cfg.env.env_id) else 1
    per_lane = stack + cfg.n_step + 1
    minimum = lanes * per_lane  # every lane holds one stack and one n-step window
    if cfg.buffer_size < minimum:
        each = "the replay has a lane per env of every actor" if cfg.actors else "each env's lane"
        raise ValueError(f"--buffer-size {cfg.buffer_size} is too small for {envs}: {each} needs {per_lane} "
                         f"transitions (stack + n-step + 1); use at least {minimum}")
    holds = cfg.buffer_size // lanes * lanes  # whole lanes
    if cfg.replay_window and not minimum <= cfg.replay_window <= cfg.buffer_size:
        raise ValueError(f"--replay-window {cfg.replay_window} must be in [{minimum}, --buffer-size {cfg.buffer_size}] "
                         f"for {envs} (or 0 for no window)")
    if bool(cfg.replay_window) != bool(cfg.replay_window_steps):
        raise ValueError("--replay-window and --replay-window-steps go together: give both (a window of N transitions "
                         "until agent step S), or neither")
    if cfg.batch_size > holds:
        raise ValueError(f"--batch-size {cfg.batch_size} is more than the replay holds (--buffer-size "
                         f"{cfg.buffer_size}): lower --batch-size or raise --buffer-size")
    if cfg.learning_starts > holds:
        raise ValueError(f"--learning-starts {cfg.learning_starts} is more than the replay holds (--buffer-size "
                         f"{cfg.buffer_size}, {holds} in whole lanes of {envs}), so learning would never "
                         "start: lower --learning-starts or raise --buffer-size")
    if cfg.learning_starts < minimum:  # (the first update samples: a lane needs that many records to offer one)
        raise ValueError(f"--learning-starts {cfg.learning_starts} is too few: the first update needs a transition to "
                         f"sample, which a lane has after {per_lane} records (stack + n-step + 1); use at least "
                         f"{minimum} for {envs}")
    if cfg.learning_starts >= cfg.total_steps:
        raise ValueError(f"--learning-starts {cfg.learning_starts} is not below --total-steps {cfg.total_steps}: the "
                         "run would end before its first update; lower --learning-starts or raise --total-steps")


def protocol_record(cfg: TrainConfig) -> dict:
    """What makes this run's scores comparable to others', for summary.json and TensorBoard: the
    protocol's name, every option that defines it, and the options changed from the named protocol."""
    from fastdqn.envs import describe_protocol, is_atari, protocol_deviations

    env = cfg.env
    evaluation = dict(eval_eps=cfg.eval_eps, eval_episodes=cfg.eval_episodes, eval_max_steps=cfg.eval_max_steps)
    if not is_atari(env.env_id):
        return dict(name=None, description=describe_protocol(env), options=evaluation, changed={})
    options = dict(repeat_action_probability=env.repeat_action_probability, noop_max=env.noop_max,
                   full_action_space=env.full_action_space, use_fire_reset=env.use_fire_reset,
                   episodic_life=env.episodic_life, reward_clip=env.reward_clip, frame_skip=env.frame_skip,
                   frame_size=env.frame_size, stack_num=env.stack_num,
                   max_episode_steps=env.max_episode_steps, max_episode_frames=env.max_episode_steps * env.frame_skip,
                   **evaluation)
    changed = {name: now for name, (_, now) in protocol_deviations(env).items()}
    return dict(name=env.protocol, description=describe_protocol(env), options=options, changed=changed)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def run_name(cfg: TrainConfig, when: float | None = None) -> str:
    """{env_id}__{exp_name}__{seed}__{date-time}, as CleanRL and rl-zoo name runs."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"{cfg.env.env_id}__{cfg.exp_name or 'dqn'}__{cfg.seed}__{stamp}".replace("/", "-")


def new_run_dir(cfg: TrainConfig, parent: str | Path = "runs") -> Path:
    """A run directory that did not exist before: runs/<run_name>, with -2, -3, ... appended when
    another run started in the same second."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    base = Path(parent) / run_name(cfg)
    for attempt in itertools.count(1):
        path = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            path.mkdir()  # atomic: two runs never get the same directory
            return path
        except FileExistsError:
            continue


# Fields that say where and how a run is watched, not what it trains: left out of the command
# that reproduces a run.
_NOT_REPRODUCED = {"run_dir", "resume", "track", "wandb_project", "wandb_entity", "capture_video",
                   "progress_interval", "exp_name"}


def command_line(cfg: TrainConfig) -> str:
    """The `fastdqn train` command that trains this config: the preset it was made from (when
    its exp_name names one) and every flag that differs from what that gives."""
    preset = cfg.exp_name if cfg.exp_name in PRESETS else None
    base = make_config(preset)
    words = ["fastdqn", "train"] + (["--preset", preset] if preset else [])
    for owner, reference, flag_of in ((cfg.env, base.env, _env_flag), (cfg, base, _flag)):
        for f in dataclasses.fields(owner):
            value = getattr(owner, f.name)
            if f.name == "env" or f.name in _NOT_REPRODUCED or value == getattr(reference, f.name):
                continue
            words += _flag_words(f.name, value, flag_of)
    return " ".join(words)


def preset_flags(name: str) -> list[str]:
    """What a preset sets, as the flags that would set it: ["--env-id CartPole-v1", ...]."""
    preset = dict(PRESETS[name])
    flags = [" ".join(_flag_words(key, value, _env_flag)) for key, value in preset.pop("env", {}).items()]
    return flags + [" ".join(_flag_words(key, value, _flag)) for key, value in preset.items()]


def _flag_words(name: str, value, flag_of) -> list[str]:
    if isinstance(value, bool):
        return [flag_of(name) if value else flag_of("no_" + name)]
    return [flag_of(name), str(value)]
