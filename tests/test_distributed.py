"""Distributed training (Ape-X on Ray): the epsilon ladder, the records that reach the replay, the
rate limiter, and real runs on a local Ray (skipped without the ray extra), killed actors included.

Most of the transport is checked without Ray: RemoteActor is a plain class (Ray only wraps it), and
RaySource runs against FakeRay, an in-process stand-in whose requests become ready when the test says.
"""

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastdqn import checkpoint, distributed
from fastdqn.actor import store
from fastdqn.config import make_config
from fastdqn.distributed import Lanes, RemoteActor, epsilon_ladder
from fastdqn.envs import VecEnv
from fastdqn.replay import PrioritizedReplay
from fastdqn.replay.ring import NEW_GAME, RESET_STEP, TERMINATED, TRUNCATED, VALID
from fastdqn.train import build_q_network, train


def test_epsilon_ladder_is_apex_formula():
    M = 8
    ladder = epsilon_ladder(0.4, 7.0, M)
    for i in range(M):
        assert ladder[i] == pytest.approx(0.4 ** (1 + 7.0 * i / (M - 1)), rel=1e-12)
    assert ladder[0] == pytest.approx(0.4) and ladder[-1] == pytest.approx(0.4 ** 8)
    assert np.all(np.diff(ladder) < 0)
    assert epsilon_ladder(0.4, 7.0, 1).tolist() == [pytest.approx(0.4)]  # one env: eps itself
    assert np.allclose(epsilon_ladder(0.3, 0.0, 5), 0.3)  # alpha 0: no ladder


# --------------------------------------------------------------------------- records, no Ray

def breakout_cfg(**changes):
    options = dict(env=dict(env_id="Breakout-v5", num_envs=3, max_episode_steps=200), actors=2, buffer_size=6 * 150,
                   learning_starts=100, chunk_steps=96, apex_eps=0.9, apex_alpha=1.0, precision="fp32")
    return make_config(**{**options, **changes})


def test_chunks_rebuild_exactly_what_each_actors_envpool_returned_across_a_restart(monkeypatch):
    """2 actors x 3 Breakout envs, life losses, game overs, time limits, auto-resets and one actor
    process replaced mid-run: every stored record's stack, rebuilt from the replay's single frames,
    equals the stacked obs that actor's EnvPool returned; no sampled transition spans the restart."""
    returned = collections.defaultdict(lambda: collections.defaultdict(list))  # id(pool) -> env -> obs
    real_recv = VecEnv.recv

    def recv(self):
        step = real_recv(self)
        for row, e in enumerate(step.env_ids):
            returned[id(self)][int(e)].append(step.obs[row].copy())
        return step

    monkeypatch.setattr(VecEnv, "recv", recv)
    torch.manual_seed(0)
    cfg = breakout_cfg()
    n = cfg.env.num_envs
    probe = VecEnv(cfg.env)
    obs_shape, num_actions = probe.obs_shape, probe.num_actions
    probe.close()
    weights = build_q_network(cfg, obs_shape, num_actions).state_dict()
    actors = [RemoteActor(cfg, k, obs_shape, num_actions, seed=0, restarted=False) for k in range(2)]
    assert np.concatenate([a.epsilons for a in actors]) == pytest.approx(epsilon_ladder(0.9, 1.0, 2 * n))
    lanes = Lanes(2, n)
    replay = PrioritizedReplay(cfg.buffer_size, 2 * n, (84, 84), stack=4, n_step=3, gamma=0.99, seed=0)
    # per lane, the obs each stored record came from and which actor process made it
    stored = [[] for _ in range(2 * n)]
    process = [[] for _ in range(2 * n)]
    taken = collections.Counter()  # (lane, process): obs of that pool's env stored so far
    counts = collections.Counter()
    gap_records = []  # (lane, record) of the last record before a restart
    rng = np.random.default_rng(0)
    for round_ in range(12):
        if round_ == 6:  # actor 0's process dies; Ray starts a new one (new pool, new games)
            for e in range(n):
                gap_records.append((e, len(stored[e]) - 1))
            actors[0].actor.close()
            actors[0] = RemoteActor(cfg, 0, obs_shape, num_actions, seed=0, restarted=True)
        for k, actor in enumerate(actors):
            chunk = actor.collect(cfg.chunk_steps, [weights], version=1)
            assert chunk.weights_version == 1 and chunk.steps >= cfg.chunk_steps
            assert chunk.records.frames.shape[1:] == (84, 84)  # the newest frame only: never stacked
            pool = returned[id(actor.actor.env)]
            records, restarted = lanes.split(chunk)
            assert restarted == (round_ == 6 and k == 0)
            for r in records:
                store(replay, r)
                for lane in r.env_ids:
                    e = int(lane) - k * n
                    stored[lane].append(pool[e][taken[lane, chunk.incarnation]])
                    taken[lane, chunk.incarnation] += 1
                    process[lane].append(chunk.incarnation)
                    record = len(stored[lane]) - 1
                    np.testing.assert_array_equal(replay.stacked_obs([lane * replay.lane + record % replay.lane])[0],
                                                  stored[lane][record])
                counts["life_loss"] += int((r.terminated & ~r.game_over).sum())
                counts["game_over"] += int((r.game_over & ~r.truncated).sum())
                counts["truncated"] += int(r.truncated.sum())
                counts["auto_reset"] += int((r.reset_step & ~r.new_game).sum())
        if len(replay) > 200:
            for _ in range(4):
                s = replay.sample(32, beta=0.5)
                for index in s.indices:
                    lane, slot = divmod(int(index), replay.lane)
                    w = len(stored[lane])
                    k = w - 1 - (w - 1 - slot) % replay.lane
                    assert process[lane][k] == process[lane][k + 1]  # the transition stays in one process
                    counts["sampled"] += 1
                replay.update_priorities(s.indices, rng.exponential(1.0, 32))
    for actor in actors:
        actor.actor.close()
    assert counts["life_loss"] > 5 and counts["game_over"] > 0 and counts["truncated"] > 0, counts
    assert counts["auto_reset"] > 5 and counts["sampled"] > 1000, counts
    for lane, record in gap_records:  # the record before the gap never became a transition
        slot = lane * replay.lane + record % replay.lane
        if len(stored[lane]) - record <= replay.lane:  # (not yet overwritten)
            assert not replay._flags[slot] & VALID and replay._flags[lane * replay.lane + (record + 1) % replay.lane] & NEW_GAME


# --------------------------------------------------------------------------- RaySource against FakeRay

class FakeRay:
    """As much of Ray as RaySource uses, in this process. An actor is a RemoteActor object; a request
    is computed when fetched and becomes ready ``latency`` blocking waits after it was made: 0 =
    actors always faster than the learner, large = much slower."""

    class exceptions:
        class RayActorError(Exception):
            pass

        class ActorUnavailableError(RayActorError):
            pass

    def __init__(self, latency: int):
        self.latency, self.clock = latency, 0
        self.outstanding = collections.Counter()
        self.most_outstanding = 0

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 64.0}

    def put(self, value):
        return value  # RemoteActor.collect takes [state dict] as well as [ObjectRef]

    def remote(self, **options):
        fake = self

        class Method:
            def __init__(self, obj):
                self.obj = obj

            def remote(self, *args):
                fake.outstanding[self.obj.index] += 1
                fake.most_outstanding = max(fake.most_outstanding, max(fake.outstanding.values()))
                return Request(lambda: self.obj.collect(*args), fake.clock + fake.latency, self.obj.index)

        class Handle:
            def __init__(self, obj):
                self.collect = Method(obj)

        def wrap(cls):
            class Remote:
                @staticmethod
                def remote(*args):
                    return Handle(cls(*args, restarted=False))

            return Remote

        return wrap

    def wait(self, refs, num_returns=1, timeout=None):
        if timeout:
            self.clock += 1  # a blocking wait: time passes for the actors
        ready = [r for r in refs if r.ready_at <= self.clock][:num_returns]
        return ready, [r for r in refs if r not in ready]

    def get(self, ref):
        self.outstanding[ref.actor] -= 1
        return ref.compute()

    def kill(self, handle, no_restart=True):
        pass

    def shutdown(self):
        pass


class Request:
    def __init__(self, compute, ready_at, actor):
        self.compute, self.ready_at, self.actor = compute, ready_at, actor


def cartpole_actors(run_dir, **changes):
    options = dict(run_dir=str(run_dir), actors=2, env=dict(num_envs=2), total_steps=3000, learning_starts=300,
                   replay_ratio=8.0, batch_size=32, chunk_steps=32, max_inflight=2, ratio_tolerance=0.1,
                   weights_every=10, eval_interval=0, final_eval=False, torch_threads=1, log_interval=500)
    return make_config("cartpole", **{**options, **changes})


@pytest.mark.parametrize("latency", [0, 6], ids=["actors-faster", "actors-slower"])
def test_rate_limiter_holds_the_replay_ratio_in_its_band(tmp_path, monkeypatch, latency, one_torch_thread):
    fake = FakeRay(latency)
    monkeypatch.setattr(distributed, "require_ray", lambda: fake)
    cfg = cartpole_actors(tmp_path / "run")
    summary = train(cfg, progress=False)
    ratio, band = summary["replay_ratio_measured"], cfg.replay_ratio * (1 + cfg.ratio_tolerance)
    assert fake.most_outstanding <= cfg.max_inflight  # back-pressure: requests per actor stay bounded
    if latency == 0:  # the learner never waits: it spends exactly the credit of what arrives
        assert fake.clock == 0
        assert cfg.replay_ratio - cfg.batch_size / 2000 <= ratio <= cfg.replay_ratio, ratio
    else:  # the learner waits for data, learning ahead only up to the band's top
        assert fake.clock > 50
        assert cfg.replay_ratio * 1.05 < ratio <= band, ratio
    d = summary["distributed"]
    assert d["epsilons"] == pytest.approx(epsilon_ladder(0.4, 7.0, 4).tolist(), rel=1e-5)
    assert all(a["chunks"] > 10 for a in d["per_actor"]) and d["weights_version"] > 5
    assert summary["agent_steps"] >= cfg.total_steps and summary["updates"] > 0


# --------------------------------------------------------------------------- config, missing Ray

@pytest.mark.parametrize("changes, message", [
    (dict(actors=-1), "--actors"), (dict(actors=2, apex_eps=0.0), "--apex-eps"),
    (dict(actors=2, weights_every=0), "--weights-every"), (dict(actors=2, actor_cpus=0), "--actor-cpus"),
    (dict(ray_address="auto"), "--ray-address needs --actors"),
    (dict(actors=100, buffer_size=1000, learning_starts=100), "lane per env of every actor"),
])
def test_bad_distributed_flags_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        make_config("cartpole", **changes)


def test_without_ray_actors_fails_with_one_line_naming_the_install(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from fastdqn import cli; "
            f"sys.exit(cli.main(['train', '--preset', 'cartpole', '--actors', '2', '--run-dir', {str(tmp_path / 'r')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --actors needs ray: pip install 'fastdqn[ray]'"
    assert not (tmp_path / "r").exists()


def test_single_process_training_never_imports_ray(tmp_path):
    code = ("import sys; from fastdqn.config import make_config; from fastdqn.train import train; "
            f"train(make_config('cartpole', run_dir={str(tmp_path / 'r')!r}, total_steps=200, learning_starts=100, "
            "eval_interval=0, final_eval=False, torch_threads=1), progress=False); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- a real local Ray

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_cartpole_runs_end_to_end_and_resumes(tmp_path, local_ray):
    from fastdqn.plot import read_scalars

    run_dir = tmp_path / "run"
    cfg = cartpole_actors(run_dir, total_steps=4000, learning_starts=500, replay_ratio=16.0, chunk_steps=64,
                          eval_interval=2000, eval_episodes=2, eval_max_steps=200, final_eval=True, checkpoint_interval=1000,
                          log_interval=500, weights_every=20)
    summary = train(cfg, progress=False)
    assert summary["stop_reason"] == "total_steps reached" and summary["agent_steps"] >= cfg.total_steps
    assert len(summary["evals"]) == 2 and summary["updates"] > 100
    assert abs(summary["replay_ratio_measured"] / cfg.replay_ratio - 1) <= cfg.ratio_tolerance
    d = summary["distributed"]
    assert d["restarts"] == [0, 0] and d["weights_version"] > 5
    # the weights reach the actors: each acted with versions past the first publication
    assert all(a["weights_version"] > 1 and a["chunks"] > 5 for a in d["per_actor"]), d
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["distributed"]["weights_version"] == d["weights_version"]
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["counters"]["agent_steps"] == summary["agent_steps"]
    assert checkpoint.load_replay(run_dir / "checkpoint.pt", state)[0] is not None
    tags = ["actors/0/steps_per_second", "actors/1/epsilon", "actors/1/acting_sps", "actors/0/weights_version",
            "distributed/weights_lag", "replay/ratio", "charts/episodic_return", "eval/mean_return"]
    assert set(read_scalars(run_dir, tags)) == set(tags)

    resumed = train(dataclasses.replace(cfg, total_steps=5000, resume=True), progress=False)
    assert resumed["agent_steps"] >= 5000 and resumed["updates"] > summary["updates"]
    assert checkpoint.load(run_dir / "checkpoint.pt")["counters"]["resumes"] == 1


def test_killed_actors_come_back_and_no_transition_spans_the_gap(tmp_path, local_ray, monkeypatch, capsys):
    """One actor's process is SIGKILLed, the other's is ray.kill-ed, mid-run: Ray restarts both, the
    learner logs it and goes on, and in the replay no valid transition leads into a reset record."""
    real_ingest = distributed.RaySource._ingest
    killed = {}  # actor -> the pid killed
    give_up_waiting_at = time.monotonic() + 600

    def ingest(self, chunk):
        nonlocal give_up_waiting_at
        records = real_ingest(self, chunk)
        chunks = self.stats[chunk.actor]["chunks"]
        if chunk.actor == 0 and chunks == 3 and 0 not in killed:
            killed[0] = chunk.pid
            give_up_waiting_at = time.monotonic() + 120
            os.kill(chunk.pid, signal.SIGKILL)
        if chunk.actor == 1 and chunks == 4 and 1 not in killed:
            killed[1] = chunk.pid
            local_ray.kill(self.handles[1], no_restart=False)
        if any(not self.restarts[k] for k in killed) and time.monotonic() < give_up_waiting_at:
            # A restart takes seconds (the new process imports torch and EnvPool); the actor still up
            # could finish the run alone before then. Until every killed actor is back (two minutes
            # at most), its steps are stored but not credited, so that the run cannot end, and it is
            # slowed, so that the replay (large enough for the whole run) does not wrap.
            self.steps -= chunk.steps
            time.sleep(0.2)
        return records

    monkeypatch.setattr(distributed.RaySource, "_ingest", ingest)
    run_dir = tmp_path / "run"
    cfg = cartpole_actors(run_dir, total_steps=4000, buffer_size=100_000, chunk_steps=64)
    summary = train(cfg, progress=False)
    err = capsys.readouterr().err
    assert summary["stop_reason"] == "total_steps reached"
    assert summary["distributed"]["restarts"] == [1, 1], summary["distributed"]
    assert "actor 0 is down" in err and "actor 0 restarted" in err and "actor 1 restarted" in err
    # the replay (large enough to hold the whole run): a mid-game cut in each killed actor's lanes,
    # and no valid record whose next record is a reset (the ring's rule, checked on the real run)
    state = checkpoint.load(run_dir / "checkpoint.pt")
    replay, _ = checkpoint.load_replay(run_dir / "checkpoint.pt", state)
    flags, written = replay["flags"], replay["written"]
    lane = len(flags) // len(written)
    assert written.max() < lane, "the replay wrapped: a restart took too long for this test's replay"
    cuts = collections.Counter()
    for e, w in enumerate(written):
        f = flags[e * lane:e * lane + w]
        assert not np.any(((f[:-1] & VALID) > 0) & ((f[1:] & RESET_STEP) > 0)), e
        mid_game = ((f[1:] & NEW_GAME) > 0) & ((f[:-1] & (TERMINATED | TRUNCATED)) == 0)
        cuts[e // cfg.env.num_envs] += int(np.count_nonzero(mid_game))
    assert cuts[0] >= 1 and cuts[1] >= 1, cuts


@pytest.mark.slow
def test_ray_cartpole_with_two_actors_solves_within_its_budget(tmp_path, local_ray):
    """The cartpole preset on 2 actors learns: an evaluation mean of 150 or more (a random policy
    scores ~22) within 100k steps; it stops early at 475. Distributed runs are not reproducible
    (chunks arrive as the actors make them), so the bar is set below every run seen: 3 of 4 runs
    reached 500 at 25.6k, 35.8k and 41.0k steps and one 435 by 60k; a fifth (in CI, 2026-11-30)
    peaked at 204.75 within 100k. That the actors act with the learner's weights is checked by
    test_ray_cartpole_runs_end_to_end_and_resumes."""
    cfg = make_config("cartpole", actors=2, run_dir=str(tmp_path / "run"), torch_threads=1, total_steps=100_000,
                      target_score=475.0)
    summary = train(cfg, progress=False)
    assert summary["best_eval_mean_return"] >= 150, summary["evals"]
    assert summary["distributed"]["restarts"] == [0, 0]
