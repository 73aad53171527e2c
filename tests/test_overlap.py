"""--overlap-updates: the next group of updates is sampled while the last one runs, and the last
one's priorities are written after that. On the CPU the same code runs eagerly, so these tests
check the order of the calls, that every group's priorities are written once, and that with
uniform replay the updates are exactly those of the serial loop."""

import numpy as np
import torch

from fastdqn import checkpoint
from fastdqn.config import make_config
from fastdqn.learner import GroupedUpdates
from fastdqn.replay import PrioritizedReplay
from fastdqn.train import ReplayLearning, train


class RecordingReplay:
    """Batches of one index each, numbered in the order they are sampled."""

    def __init__(self, events):
        self.events, self.drawn = events, 0

    def sample(self, batch_size, beta, slot=0):
        self.events.append(("sample", self.drawn))
        batch = type("Batch", (), {"indices": np.array([self.drawn])})()
        self.drawn += 1
        return batch

    def update_priorities(self, indices, priorities):
        self.events.append(("priorities", int(indices[0])))


class RecordingLearner(GroupedUpdates):
    """A CUDA-graph learner of K = 2 as the loop sees it: launch now, results at finish."""

    cuda_graph, updates_per_graph = True, 2

    def __init__(self, events):
        self.events = events

    def launch(self, batches):
        self._check_idle()
        drawn = [int(b.indices[0]) for b in batches]
        self.events.append(("launch", drawn))
        self._pending = lambda: {"loss": torch.zeros(2), "td_abs": torch.tensor(drawn, dtype=torch.float32)[:, None],
                                 "mean_q": torch.zeros(2)}


def _two_groups(overlap):
    cfg = make_config("cartpole", batch_size=1, replay_ratio=4.0)  # 4 updates per agent step: 2 groups of 2
    events = []
    learning = ReplayLearning(overlap)
    learner, replay = RecordingLearner(events), RecordingReplay(events)
    stats = {"loss": torch.zeros(()), "q": torch.zeros(()), "td": torch.zeros(()), "n": 0}
    counters = {"credit": 0.0, "schedule_steps": 0, "updates": 0}
    assert learning(cfg, learner, replay, counters, 1, stats) == 4
    events.append("end of the learning step")
    learning.drain(learner, replay, stats)
    assert counters["updates"] == 4 and stats["n"] == 4
    return events


def test_with_overlap_the_next_group_is_sampled_before_the_last_ones_priorities_are_written():
    assert _two_groups(overlap=True) == [
        ("sample", 0), ("sample", 1), ("launch", [0, 1]),
        ("sample", 2), ("sample", 3), ("priorities", 0), ("priorities", 1), ("launch", [2, 3]),
        "end of the learning step",  # group [2, 3] stays in flight until drained
        ("priorities", 2), ("priorities", 3)]
    assert _two_groups(overlap=False) == [
        ("sample", 0), ("sample", 1), ("launch", [0, 1]), ("priorities", 0), ("priorities", 1),
        ("sample", 2), ("sample", 3), ("launch", [2, 3]), ("priorities", 2), ("priorities", 3),
        "end of the learning step"]


def _cartpole(tmp_path, name, **changes):
    cfg = make_config("cartpole", run_dir=str(tmp_path / name), total_steps=2400, learning_starts=400,
                      replay_ratio=8.0, checkpoint_interval=1000, eval_interval=1000, eval_episodes=2,
                      final_eval=False, torch_threads=1, **changes)
    return train(cfg, progress=False), checkpoint.load(tmp_path / name / "checkpoint.pt")


def test_overlapped_updates_equal_serial_ones_with_uniform_replay(tmp_path):
    """With --per-alpha 0 the sampled indices do not depend on the priorities, so writing them one
    group late changes nothing: the same weights, bit for bit, and the same number of updates."""
    (serial, serial_ckpt), (overlapped, overlapped_ckpt) = (
        _cartpole(tmp_path, overlap, per_alpha=0.0, overlap_updates=overlap) for overlap in ("off", "on"))
    assert serial["updates"] == overlapped["updates"] >= 200
    weights, other = serial_ckpt["learner"]["q_network"], overlapped_ckpt["learner"]["q_network"]
    assert weights.keys() == other.keys()
    for name, value in weights.items():
        assert torch.equal(value, other[name]), name


def test_with_overlap_every_update_writes_its_priorities_before_the_checkpoint(tmp_path, monkeypatch):
    """Prioritized replay: each update's priorities are written exactly once, and the last group's
    before the final checkpoint (the loop drains the group in flight before it saves)."""
    written = []
    original = PrioritizedReplay.update_priorities

    def counting(self, indices, priorities):
        written.append(len(indices))
        return original(self, indices, priorities)

    monkeypatch.setattr(PrioritizedReplay, "update_priorities", counting)
    summary, _ = _cartpole(tmp_path, "per", overlap_updates="on")
    assert summary["updates"] >= 200
    assert written == [64] * summary["updates"]  # (batch 64, one update per group on the CPU)
