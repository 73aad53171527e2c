"""On-policy learning steps: how long A2C and PQN take to learn from one rollout, at the presets' sizes.

    python -m bench.onpolicy                       # CartPole and Atari sizes, precision auto
    python -m bench.onpolicy --tasks atari --precision fp32,bf16 --json out.json
    python -m bench.onpolicy --quick               # smoke run

A learning step is what the loop runs once per full rollout (train.learn_from_rollout without the
store): A2C one update on T x N transitions; PQN the Q(lambda) targets and K epochs x M minibatches,
its max-Q bootstraps handed over as the training rule records them while acting (no forward here).
Rollouts are random (observations, actions, rewards, 1 % episode ends), sized as the presets:

    cartpole  a2c 16 envs x 8 steps, separate 128-unit MLPs    pqn 16 x 32, 4 x 4 minibatches, 128 units
    atari     a2c 16 envs x 5 steps, Nature CNN, fc 512        pqn 8 x 128, 4 x 4 minibatches, Nature + LayerNorm

Reported: ms per rollout, optimizer steps per second and the agent steps per second that the
learning alone would allow (T x N per rollout); the env and acting time come on top.
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse

import numpy as np
import torch

from fastdqn.agents.a2c import A2C, ActorCritic
from fastdqn.agents.pqn import PQN, LayerNormQNetwork
from fastdqn.hardware import keep_freed_memory
from fastdqn.rollout import continues
from .common import machine, print_machine, rate, table, write_json

# task: (obs shape, actions, {agent: (envs, steps, agent options)})
SIZES = {
    "cartpole": ((4,), 2, {"a2c": (16, 8, dict(hidden=128, shared=False)), "pqn": (16, 32, dict(hidden=128))}),
    "atari": ((4, 84, 84), 4, {"a2c": (16, 5, dict(hidden=512)), "pqn": (8, 128, dict(hidden=512))}),
}


def random_rollout(obs_shape, num_actions: int, envs: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if len(obs_shape) == 3:
        obs = rng.integers(0, 256, (steps + 1, envs, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(steps + 1, envs, *obs_shape)).astype(np.float32)
    terminated = rng.random((steps, envs)) < 0.01
    truncated = np.zeros((steps, envs), bool)
    valid = np.ones((steps, envs), bool)
    valid[1:] = ~terminated[:-1]
    return {"obs": obs, "actions": rng.integers(0, num_actions, (steps, envs)),
            "rewards": rng.normal(size=(steps, envs)).astype(np.float32), "terminated": terminated,
            "truncated": truncated, "valid": valid, "chain": continues(terminated, truncated, valid)}


def make(agent: str, task: str, precision: str, device: torch.device):
    obs_shape, num_actions, agents = SIZES[task]
    envs, steps, options = agents[agent]
    torch.manual_seed(0)
    if agent == "a2c":
        learner = A2C(ActorCritic(obs_shape, num_actions, **options), optimizer="rmsprop" if task == "atari" else "adam",
                      lr=1e-4, precision=precision, device=device, batch_size=envs * steps)
    else:
        learner = PQN(LayerNormQNetwork(obs_shape, num_actions, **options), num_actions, epochs=4, minibatches=4,
                      optimizer="radam", lr=1e-4, precision=precision, device=device, batch_size=envs * steps)
    return learner, random_rollout(obs_shape, num_actions, envs, steps), envs * steps


def run(tasks=("cartpole", "atari"), precisions=("auto",), seconds: float = 3.0, device: str | None = None,
        threads: int | None = None) -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    results = []
    for task in tasks:
        for precision in precisions:
            for name in ("a2c", "pqn"):
                agent, batch, transitions = make(name, task, precision, device)
                rng = np.random.default_rng(0)
                recorded = []
                if name == "pqn":  # what its acting forwards record in training (acting is not timed here)
                    with torch.no_grad():
                        recorded = [agent.q_network(torch.as_tensor(row, device=device)).float()
                                    for row in batch["obs"][1:]]

                def step():
                    for q in recorded:
                        agent.record_values(q)
                    out = agent.learn(batch, rng)
                    out["loss"].item()  # (waits for the device)
                    return out

                updates = step()["updates"]  # warm-up
                per_s, calls = rate(step, seconds)
                results.append({"task": task, "agent": name, "precision": agent.precision, "transitions": transitions,
                                "updates_per_rollout": updates, "ms_per_rollout": 1e3 / per_s,
                                "updates_per_s": per_s * updates, "learning_agent_steps_per_s": per_s * transitions,
                                "rollouts_timed": calls})
    return {"benchmark": "onpolicy", "device": str(device), "machine": machine(), "threads": torch.get_num_threads(),
            "results": results}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="CartPole sizes only, a fraction of a second")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--tasks", default="cartpole,atari", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--precision", default="auto", help="comma-separated, of auto, fp32, bf16")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per agent")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    tasks = ("cartpole",) if args.quick else tuple(args.tasks.split(","))
    unknown = set(tasks) - set(SIZES)
    if unknown:
        parser.error(f"unknown task(s) {', '.join(sorted(unknown))}: pick from {', '.join(SIZES)}")
    report = run(tasks, tuple(args.precision.split(",")), 0.05 if args.quick else args.seconds, args.device,
                 args.threads)
    print_machine(report["machine"])
    rows = [[r["task"], r["agent"], r["precision"], r["transitions"], r["updates_per_rollout"], r["ms_per_rollout"],
             r["updates_per_s"], r["learning_agent_steps_per_s"]] for r in report["results"]]
    table(f"On-policy learning steps on {report['device']} ({report['threads']} threads)",
          ["task", "agent", "precision", "T x N", "updates", "ms/rollout", "updates/s", "agent steps/s (learning)"],
          rows)
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
