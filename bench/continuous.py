"""Continuous-control update throughput: TD3 updates per second, fastdqn's agent against a plain one.

    python -m bench.continuous                   # batch 256, HalfCheetah's sizes, 256x256 MLPs
    python -m bench.continuous --batch-sizes 100,256 --seconds 10 --json out.json
    python -m bench.continuous --quick           # smoke run

Modes, all fp32 on the same networks, seeds and batches (17 observations, 6 actions):

- ``plain``: TD3 written plainly (the CleanRL way): two critic modules, torch's Adam with its
  default kernel, one F.mse_loss per critic, a Python ``if`` for the policy delay, Polyak by a
  loop over parameters.
- ``fastdqn``: fastdqn.agents.TD3, eager (fused Adam, foreach Polyak).
- ``graph`` (CUDA only): the same agent, K updates per CUDA-graph replay.

Timed in interleaved rounds with the cores other processes kept busy recorded (as
bench/learner.py); the ratio is to ``plain`` of the same batch size, in the same run.
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F

from fastdqn.agents import make_agent
from fastdqn.hardware import keep_freed_memory
from .common import interleaved_ratio, machine, print_machine, rate, table, write_json

OBS_DIM, ACTION_DIM = 17, 6
LOW, HIGH = -np.ones(ACTION_DIM, np.float32), np.ones(ACTION_DIM, np.float32)


class PlainTD3:
    """One TD3 update per call, written plainly; networks copied from a fastdqn agent."""

    def __init__(self, agent, gamma_n: float = 0.99, tau: float = 0.005, policy_delay: int = 2,
                 noise: float = 0.2, noise_clip: float = 0.5, lr: float = 3e-4):
        self.actor, self.critics = copy.deepcopy(agent.actor), copy.deepcopy(list(agent.critics))
        self.target_actor = copy.deepcopy(self.actor)
        self.target_critics = copy.deepcopy(self.critics)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_optimizer = torch.optim.Adam([p for c in self.critics for p in c.parameters()], lr=lr)
        self.tau, self.policy_delay, self.noise, self.noise_clip = tau, policy_delay, noise, noise_clip
        self.steps = 0

    def __call__(self, obs, actions, returns, discounts, next_obs) -> None:
        with torch.no_grad():
            smoothing = (torch.randn_like(actions) * self.noise).clamp(-self.noise_clip, self.noise_clip)
            next_actions = (self.target_actor(next_obs) + smoothing).clamp(-1.0, 1.0)
            next_q = torch.min(*(c(next_obs, next_actions) for c in self.target_critics))
            td_target = returns + discounts * next_q
        loss = sum(F.mse_loss(c(obs, actions), td_target) for c in self.critics)
        self.critic_optimizer.zero_grad()
        loss.backward()
        self.critic_optimizer.step()
        self.steps += 1
        if self.steps % self.policy_delay == 0:
            actor_loss = -self.critics[0](obs, self.actor(obs)).mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            for net, target in [(self.actor, self.target_actor)] + list(zip(self.critics, self.target_critics)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.data.copy_(self.tau * p.data + (1 - self.tau) * tp.data)


def random_batches(n: int, batch_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{
        "obs": rng.normal(size=(batch_size, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (batch_size, ACTION_DIM)).astype(np.float32),
        "returns": rng.normal(size=batch_size).astype(np.float32),
        "discounts": np.where(rng.random(batch_size) < 0.01, 0.0, 0.99).astype(np.float32),
        "next_obs": rng.normal(size=(batch_size, OBS_DIM)).astype(np.float32),
        "weights": np.ones(batch_size, np.float32),
    } for _ in range(n)]


def _measure(mode: str, device: torch.device, batch_size: int, hidden, seconds: float, k: int):
    """A zero-argument function giving updates per second of ``mode`` (state carried across calls)."""
    torch.manual_seed(0)
    agent = make_agent("td3", OBS_DIM, LOW, HIGH, hidden=hidden, precision="fp32", device=device,
                       cuda_graph=mode == "graph", updates_per_graph=k)
    batches = random_batches(k, batch_size)
    if mode == "plain":
        plain = PlainTD3(agent)
        tensors = [tuple(torch.as_tensor(b[n]).to(device) for n in ("obs", "actions", "returns", "discounts",
                                                                   "next_obs")) for b in batches]
        step, per_call = (lambda: plain(*tensors[0])), 1
    elif mode == "graph":
        step, per_call = (lambda: agent.update_many(batches)), k
    else:
        step, per_call = (lambda: agent.update(batches[0])), 1
    step()  # warm-up (a graph is captured here)

    def measure() -> float:
        calls_per_s, _ = rate(step, seconds)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return calls_per_s * per_call
    return measure


def run(batch_sizes=(256,), seconds: float = 5.0, rounds: int = 3, device: str | None = None,
        hidden=(256, 256), threads: int | None = None, updates_per_graph: int = 4, progress: bool = True) -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()  # (the agent sets it too; set first, so that every mode runs alike)
    modes = ("plain", "fastdqn", "graph") if device.type == "cuda" else ("plain", "fastdqn")
    results = []
    for batch_size in batch_sizes:
        measures = {m: _measure(m, device, batch_size, hidden, seconds, updates_per_graph) for m in modes}
        ratios = [(f"{m}_vs_plain", m, "plain") for m in modes if m != "plain"]
        figures = interleaved_ratio(f"batch {batch_size}", measures, ratios, rounds, show_progress=progress)
        results.append({"batch_size": batch_size, **figures})
    return {"benchmark": "continuous", "device": str(device), "machine": machine(), "hidden": list(hidden),
            "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "threads": torch.get_num_threads(), "modes": list(modes),
            "results": results}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny run (batch 8, 32x32 MLPs, a fraction of a second)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--batch-sizes", default="256", help="comma-separated")
    parser.add_argument("--hidden", default="256,256", help="MLP widths, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--updates-per-graph", type=int, default=4, help="K of the graph mode")
    args = parser.parse_args(argv)
    if args.quick:
        report = run((8,), seconds=0.05, rounds=1, device=args.device, hidden=(32, 32), threads=args.threads,
                     updates_per_graph=args.updates_per_graph)
    else:
        report = run(tuple(int(b) for b in args.batch_sizes.split(",")), args.seconds, args.rounds, args.device,
                     tuple(int(h) for h in args.hidden.split(",")), args.threads, args.updates_per_graph)
    print_machine(report["machine"])
    rows = [[r["batch_size"], m, r[m], r[m] * r["batch_size"], 1.0 if m == "plain" else r[f"{m}_vs_plain"],
             max(b for x in r["per_round"] for b in x["cores_busy_elsewhere"] if b is not None)
             if any(b is not None for x in r["per_round"] for b in x["cores_busy_elsewhere"]) else "?"]
            for r in report["results"] for m in report["modes"]]
    table(f"TD3 updates on {report['device']} ({OBS_DIM} obs, {ACTION_DIM} actions, MLP {report['hidden']}, "
          f"{report['threads']} threads)", ["batch", "mode", "updates/s", "samples/s", "vs plain", "busy elsewhere"],
          rows)
    write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
