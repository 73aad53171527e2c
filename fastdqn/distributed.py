"""Distributed training, Ape-X style, on Ray: many actors feed one prioritized learner.

    Ray actor k (RemoteActor): its own EnvPool pool of --num-envs envs and a CPU copy of the
      Q-network, acting with its rungs of the epsilon ladder; ships chunks of records in the
      replay's own format (newest frame, action, reward, flags, env id) through Ray's object
      store: never stacked, never duplicated
    learner (the driver: train.py's loop with a RaySource in place of the in-process actor):
      stores each chunk (env e of actor k is lane k * num_envs + e of the replay), learns at
      --replay-ratio, publishes the weights every --weights-every updates

The replay ratio is held by the learner's credit (train.ReplayLearning: every agent step stored buys
replay_ratio / batch updates, spent at once) and by back-pressure: each actor has at most
--max-inflight chunk requests outstanding, so actors faster than the learner wait for it.
While the learner waits for data it may learn ahead only while the measured ratio stays under
replay_ratio * (1 + --ratio-tolerance) (train.RateLimiter).

Faults: Ray restarts an actor whose process dies (--actor-restarts). The restarted actor
starts new games, so the first record of each of its envs is a new-game reset record: the
replay never builds a transition into a reset step, so none spans the gap (the learner checks
that every env of a new actor process starts that way). Chunks lost with the process are just
missing steps; the learner logs the death and the restart and never stops for them.

Ray is imported only here, and this module only with --actors > 0.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import sys
import threading
import time
from typing import NamedTuple

import numpy as np

from fastdqn.actor import Actor, Records
from fastdqn.extras import require

RETRY_SECONDS = 0.5  # pause before asking a failed actor again (Ray is restarting it)
GIVE_UP_SECONDS = 300.0  # an actor down this long without a chunk is given up


def require_ray():
    return require("ray", "ray", "--actors")


def require_reachable(address: str, seconds: float = 5.0) -> None:
    """ValueError naming --ray-address when nothing answers at its host:port (Ray itself would retry
    for minutes); "auto", a ray:// client address and none at all are left to Ray."""
    import socket

    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address} is not host:port (the address `ray start --head` prints), "
                         "auto, or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        raise ValueError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the "
                         "cluster with `ray start --head`, or drop --ray-address for a local Ray") from None


def init_ray(**kwargs) -> None:
    """``ray.init``, keeping this process's Ctrl-C and SIGTERM handlers: Ray installs its own for
    SIGTERM (exit at once), which would take the run's stop handling away (interrupts.py): a
    SIGTERM (a cluster's preemption, docker stop) would end the run without its final checkpoint."""
    import ray

    signals = (signal.SIGINT, signal.SIGTERM)
    main = threading.current_thread() is threading.main_thread()  # (only there are handlers set)
    handlers = {s: signal.getsignal(s) for s in signals} if main else {}
    try:
        ray.init(**kwargs)
    finally:
        for s, handler in handlers.items():
            if handler is not None:  # (None: a handler not installed from Python; left as Ray set it)
                signal.signal(s, handler)


def epsilon_ladder(eps: float, alpha: float, num_envs: int) -> np.ndarray:
    """Ape-X's exploration (Horgan et al. 2018): env i of M acts with eps ** (1 + alpha * i / (M - 1))."""
    i = np.arange(num_envs, dtype=np.float64)
    return eps ** (1.0 + alpha * i / max(num_envs - 1, 1))


class Chunk(NamedTuple):
    """What an actor ships: consecutive env steps of its pool, in the replay's record format."""

    records: Records  # the rows of every env step, concatenated (env ids local to the actor's pool)
    sizes: np.ndarray  # (T,) rows of each env step, in order: each is one replay.add
    steps: int  # agent steps taken (actions sent); reset records are not steps
    actor: int
    incarnation: int  # 0 for the actor's first process, a fresh number for each restart
    seq: int  # the chunk's number in its actor process (0, 1, ...): a gap is a chunk lost on the way
    pid: int
    weights_version: int  # the learner's weights it acted with (0: its own initial ones)
    seconds: float  # spent producing the chunk (acting and stepping), not waiting for requests


def _join(parts: list[Records]) -> Records:
    return Records(*(np.concatenate(field) for field in zip(*parts)))


class RemoteActor:
    """The body of a Ray actor (RaySource wraps it with ray.remote): an Actor and its pool.

    Also usable as a plain object, in this process (the tests do).
    """

    def __init__(self, cfg, index: int, obs_shape, num_actions: int, seed: int, restarted: bool | None = None):
        import torch

        from fastdqn.acting import EpsilonGreedy
        from fastdqn.envs import VecEnv
        from fastdqn.hardware import resolve_precision
        from fastdqn.train import build_q_network

        if restarted is None:
            import warnings

            import ray

            with warnings.catch_warnings():  # (Ray deprecated something this property reads, not the property)
                warnings.simplefilter("ignore", DeprecationWarning)
                restarted = ray.get_runtime_context().was_current_actor_reconstructed
        # A restarted process plays new games (not the first process's openings again).
        self.incarnation = int.from_bytes(os.urandom(4), "little") | 1 if restarted else 0
        self.index = index
        n = cfg.env.num_envs
        seeds = np.random.SeedSequence([seed, cfg.env.seed, index, self.incarnation])  # (env seed: new on resume)
        env_seed = cfg.env.seed + index * n if not restarted else int(seeds.generate_state(1)[0] >> 1)
        threads = max(1, int(round(cfg.actor_cpus)))
        env_cfg = dataclasses.replace(cfg.env, seed=env_seed, num_threads=cfg.env.num_threads or threads)
        torch.set_num_threads(threads)
        device = torch.device("cpu")
        conv_net = len(obs_shape) == 3
        self.precision = resolve_precision(cfg.precision, device, conv_net=conv_net).name
        q_network = build_q_network(cfg, obs_shape, num_actions).requires_grad_(False)
        if conv_net and self.precision == "fp32":
            q_network.to(memory_format=torch.channels_last)  # as the learner's (faster fp32 convolutions)
        self.epsilons = epsilon_ladder(cfg.apex_eps, cfg.apex_alpha, cfg.actors * n)[index * n:(index + 1) * n]
        self.version = 0
        self.seq = 0
        self.actor = Actor(VecEnv(env_cfg), EpsilonGreedy(q_network, num_actions, device, self.precision),
                           np.random.default_rng(seeds))
        self.pending: Records | None = self.actor.reset()

    def collect(self, steps: int, weights: list | None = None, version: int = 0) -> Chunk:
        """Take at least ``steps`` agent steps with the newest weights offered and return their
        records. ``weights`` is [an ObjectRef of a state dict] (in a list, so that Ray hands the
        reference over unresolved and it is fetched only when its version is new)."""
        if weights is not None and version > self.version:
            import ray

            state = weights[0] if isinstance(weights[0], dict) else ray.get(weights[0])
            self.actor.policy.network.load_state_dict(state)
            self.version = version
        start = time.perf_counter()
        parts = [] if self.pending is None else [_own(self.pending)]
        self.pending = None
        sent = 0
        while sent < steps:
            sent += self.actor.send(self.epsilons)
            parts.append(_own(self.actor.recv()))
        records = _join(parts)
        self.seq += 1
        return Chunk(records, np.array([len(p.env_ids) for p in parts], np.int64), sent, self.index,
                     self.incarnation, self.seq - 1, os.getpid(), self.version, time.perf_counter() - start)


def _own(records: Records) -> Records:
    """The records with frames of their own (not a view of EnvPool's output buffer)."""
    return records._replace(frames=np.array(records.frames))


class Lanes:
    """Where the actors' records go in the replay: env e of actor k is lane k * n + e. Checks that
    every env of a new actor process (the first, or one Ray restarted) opens with a new-game
    record, so that no stored transition spans a restart. A chunk lost from a live process (a
    request that failed after the actor ran it) shows as a gap in its numbers: that actor's lanes
    then drop its records until each env's next new game (the ring links every record to the next
    one in its lane: a transition, a stack or an n-step return across the gap would be wrong)."""

    def __init__(self, num_actors: int, envs_per_actor: int):
        self.n = envs_per_actor
        self.incarnation: dict[int, int] = {}
        self.next_seq: dict[int, int] = {}
        self.seen = np.zeros(num_actors * envs_per_actor, bool)  # lanes fed by their actor's current process
        self.gap = np.zeros(num_actors * envs_per_actor, bool)  # lanes waiting for a new game after a lost chunk
        self.lost = 0  # chunks lost before the one split last

    def split(self, chunk: Chunk) -> tuple[list[Records], bool]:
        """The chunk as one Records per env step, with lane ids; and whether it comes from a
        restarted actor process (one that is not the actor's first)."""
        k, n = chunk.actor, self.n
        restarted = False
        self.lost = 0
        if self.incarnation.get(k) != chunk.incarnation:
            restarted = k in self.incarnation
            self.incarnation[k] = chunk.incarnation
            self.seen[k * n:(k + 1) * n] = False
            self.gap[k * n:(k + 1) * n] = False
        elif chunk.seq != self.next_seq[k]:
            self.lost = chunk.seq - self.next_seq[k]
            self.gap[k * n:(k + 1) * n] = True
        self.next_seq[k] = chunk.seq + 1
        out, start = [], 0
        for size in chunk.sizes:
            rows = Records(*(field[start:start + size] for field in chunk.records))
            start += size
            lanes = rows.env_ids.astype(np.int64) + k * n
            self.gap[lanes[rows.new_game]] = False  # (a new game starts the lane afresh)
            kept = ~self.gap[lanes]
            if not kept.all():
                rows, lanes = Records(*(field[kept] for field in rows)), lanes[kept]
            first = ~self.seen[lanes]
            if not rows.new_game[first].all():
                raise RuntimeError(f"actor {k}: env(s) {rows.env_ids[first & ~rows.new_game].tolist()} of a new "
                                   "actor process did not start with a new-game record")
            self.seen[lanes] = True
            if len(lanes):
                out.append(rows._replace(env_ids=lanes))
        return out, restarted


class RaySource:
    """The learner's end of the transport: N Ray actors, each with at most ``max_inflight``
    chunk requests outstanding. The same interface as train.LocalSource (one in-process actor).
    """

    def __init__(self, cfg, spec, env_cfg, learner, seed: int, say=None):
        ray = require_ray()
        self.ray, self.cfg, self.learner = ray, cfg, learner
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self.own_ray = not ray.is_initialized()
        if self.own_ray:
            init_ray(address=cfg.ray_address or None, include_dashboard=False, logging_level="warning")
        cpus = ray.cluster_resources().get("CPU", 0)
        if cfg.actors * cfg.actor_cpus > cpus:
            self.close()
            raise ValueError(f"--actors {cfg.actors} x --actor-cpus {cfg.actor_cpus:g} needs "
                             f"{cfg.actors * cfg.actor_cpus:g} CPUs but the Ray cluster has {cpus:g}: lower "
                             "--actor-cpus (e.g. 0.5) or --actors, or add nodes")
        self.n = n = cfg.env.num_envs
        self.num_actors = cfg.actors
        self.epsilons = epsilon_ladder(cfg.apex_eps, cfg.apex_alpha, cfg.actors * n)
        remote = ray.remote(num_cpus=cfg.actor_cpus, max_restarts=cfg.actor_restarts,
                            max_task_retries=0)(RemoteActor)
        actor_cfg = dataclasses.replace(cfg, env=env_cfg)
        self.handles = [remote.remote(actor_cfg, k, spec.obs_shape, spec.num_actions, seed)
                        for k in range(cfg.actors)]
        self.version = 0
        self.weights: list | None = None
        self.published_at = 0
        self.publish()
        # Each actor's chunk requests (ObjectRef, when made), oldest first. Its chunks are stored in
        # the order it made them (a lane is a sequence): only the oldest request is waited on.
        self.requests: list[collections.deque] = [collections.deque() for _ in range(cfg.actors)]
        self.served = -1
        self.retry_at = [0.0] * cfg.actors
        self.down: dict[int, float] = {}  # actor -> when its failure was seen
        self.died_in_a_row = [0] * cfg.actors
        self.dead: set[int] = set()
        self.lanes = Lanes(cfg.actors, n)
        self.restarts = [0] * cfg.actors
        self.steps = 0
        self.wait_seconds = 0.0
        self.stats = [dict(steps=0, seconds=0.0, chunks=0, version=0, pid=None) for _ in range(cfg.actors)]
        self._window = dict(t=time.time(), wait=0.0, steps=[0] * cfg.actors, seconds=[0.0] * cfg.actors, lag=[])
        where = ray.get_runtime_context().gcs_address if hasattr(ray, "get_runtime_context") else "?"
        self.say(f"distributed: {cfg.actors} Ray actors x {n} envs ({cfg.actors * n} replay lanes) on Ray at {where}; "
                 f"epsilons {self.epsilons[0]:.3g} ... {self.epsilons[-1]:.3g} (Ape-X ladder); weights published "
                 f"every {cfg.weights_every} updates; at most {cfg.max_inflight} chunks of {cfg.chunk_steps} steps "
                 "in flight per actor")

    # ------------------------------------------------------------------ the loop's interface

    def reset(self, stop=None) -> list[Records]:
        return self.recv(stop=stop)

    def epsilon(self, schedule_steps: int) -> float:
        return float(self.epsilons.mean())  # (the ladder is fixed; this is what the progress shows)

    def act(self, epsilon) -> int:
        """The actors act by themselves: publish the weights when due, keep every actor's requests
        topped up, and return the agent steps of the chunk handed out last (to be credited)."""
        if self.learner.num_updates - self.published_at >= self.cfg.weights_every:
            self.publish()
        self._top_up()
        steps, self.steps = self.steps, 0
        return steps

    def recv(self, idle=None, stop=None) -> list[Records]:
        """The next chunk to arrive, as one Records per env step with the replay's lane ids;
        waits for one, learning ahead meanwhile while ``idle()`` says it did. [] when ``stop``."""
        ray = self.ray
        while True:
            self._top_up()
            # (starting after the actor served last: ray.wait returns ready refs in the order given)
            order = [(self.served + 1 + i) % self.num_actors for i in range(self.num_actors)]
            heads = {self.requests[k][0][0]: k for k in order if self.requests[k]}
            if not heads:  # every live actor is down: Ray is restarting them
                if stop:
                    return []
                time.sleep(RETRY_SECONDS / 5)
                continue
            refs = list(heads)
            ready, _ = ray.wait(refs, num_returns=1, timeout=0)
            if not ready:
                if stop:
                    return []
                if idle is not None and idle():
                    continue
                start = time.perf_counter()
                ready, _ = ray.wait(refs, num_returns=1, timeout=RETRY_SECONDS)
                self.wait_seconds += time.perf_counter() - start
                if not ready:
                    continue
            ref = ready[0]
            k = self.served = heads[ref]
            _, made = self.requests[k].popleft()
            try:
                chunk = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._failed(k, exc, made)
                continue
            return self._ingest(chunk)

    def scalars(self) -> dict:
        """Per-actor throughput and epsilon, weights versions and the learner's waiting, since the last call."""
        w, now = self._window, time.time()
        elapsed = max(now - w["t"], 1e-9)
        values = {"distributed/weights_version": self.version,
                  "distributed/learner_wait_fraction": (self.wait_seconds - w["wait"]) / elapsed,
                  "distributed/chunks_in_flight": sum(map(len, self.requests)),
                  "distributed/actor_restarts": sum(self.restarts)}
        if w["lag"]:
            values["distributed/weights_lag"] = float(np.mean(w["lag"]))
        for k, s in enumerate(self.stats):
            steps, seconds = s["steps"] - w["steps"][k], s["seconds"] - w["seconds"][k]
            values[f"actors/{k}/steps_per_second"] = steps / elapsed  # reaching the learner
            if seconds > 0:
                values[f"actors/{k}/acting_sps"] = steps / seconds  # while it acts (not waiting for requests)
            values[f"actors/{k}/epsilon"] = float(self.epsilons[k * self.n:(k + 1) * self.n].mean())
            values[f"actors/{k}/weights_version"] = s["version"]
        self._window = dict(t=now, wait=self.wait_seconds, steps=[s["steps"] for s in self.stats],
                            seconds=[s["seconds"] for s in self.stats], lag=[])
        return values

    def summary(self) -> dict:
        return {"distributed": dict(
            actors=self.num_actors, envs_per_actor=self.n, epsilons=self.epsilons.tolist(),
            weights_version=self.version, restarts=list(self.restarts), dead=sorted(self.dead),
            learner_wait_seconds=round(self.wait_seconds, 2),
            per_actor=[dict(steps=s["steps"], chunks=s["chunks"], weights_version=s["version"],
                            acting_sps=round(s["steps"] / max(s["seconds"], 1e-9), 1)) for s in self.stats])}

    def close(self) -> None:
        for handle in getattr(self, "handles", []):
            self.ray.kill(handle, no_restart=True)
        self.handles = []
        if self.own_ray:
            self.ray.shutdown()

    # ------------------------------------------------------------------ inside

    def publish(self) -> None:
        """Put the learner's online weights into the object store as the next version."""
        import torch

        with torch.no_grad():
            state = {key: value.detach().cpu() for key, value in self.learner.q_network.state_dict().items()}
        self.weights = [self.ray.put(state)]
        self.version += 1
        self.published_at = self.learner.num_updates

    def _top_up(self) -> None:
        now = time.monotonic()
        for k, handle in enumerate(self.handles):
            if k in self.dead or now < self.retry_at[k]:
                continue
            while len(self.requests[k]) < self.cfg.max_inflight:
                ref = handle.collect.remote(self.cfg.chunk_steps, self.weights, self.version)
                self.requests[k].append((ref, now))

    def _failed(self, k: int, exc: Exception, made: float) -> None:
        """A request to actor k failed: its process died (or Ray is restarting it). Requests made
        before the failure was seen fail with it; one made after that failing with ActorDiedError
        (not ActorUnavailableError: restarting) three times in a row means Ray gave up on it."""
        now = time.monotonic()
        if k not in self.down:
            self.down[k] = now
            self.say(f"actor {k} is down ({type(exc).__name__}); Ray restarts it (restarts so far: "
                     f"{self.restarts[k]}, --actor-restarts {self.cfg.actor_restarts}); learning goes on")
        elif made >= self.down[k]:
            unavailable = getattr(self.ray.exceptions, "ActorUnavailableError", ())
            self.died_in_a_row[k] = 0 if isinstance(exc, unavailable) else self.died_in_a_row[k] + 1
        self.retry_at[k] = now + RETRY_SECONDS
        if self.died_in_a_row[k] >= 3 or now - self.down[k] > GIVE_UP_SECONDS:
            self.dead.add(k)
            self.requests[k].clear()
            self.say(f"actor {k} is gone for good (Ray did not restart it); going on with "
                     f"{self.num_actors - len(self.dead)} actors")
            if len(self.dead) == self.num_actors:
                from fastdqn.train import SourceLost

                raise SourceLost(f"every actor died and Ray could not restart them (--actor-restarts "
                                 f"{self.cfg.actor_restarts})")

    def _ingest(self, chunk: Chunk) -> list[Records]:
        k = chunk.actor
        records, restarted = self.lanes.split(chunk)
        if self.lanes.lost:
            self.say(f"actor {k}: {self.lanes.lost} chunk(s) lost on the way (a failed request it had run); its envs' "
                     "records wait for their next new game, so that no transition spans the gap")
        if restarted:
            self.restarts[k] += 1
            self.say(f"actor {k} restarted (pid {chunk.pid}): its envs start new games; no transition spans the gap")
        self.down.pop(k, None)
        self.died_in_a_row[k] = 0
        s = self.stats[k]
        s.update(steps=s["steps"] + chunk.steps, seconds=s["seconds"] + chunk.seconds, chunks=s["chunks"] + 1,
                 version=chunk.weights_version, pid=chunk.pid)
        self._window["lag"].append(self.version - chunk.weights_version)
        self.steps += chunk.steps
        return records
