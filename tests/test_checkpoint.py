import os

import numpy as np
import pytest
import torch

from fastdqn import checkpoint


def test_roundtrip_and_previous_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"w": torch.arange(3.0), "counters": {"agent_steps": 10}})
    checkpoint.save(path, {"w": torch.arange(4.0), "counters": {"agent_steps": 20}})
    state = checkpoint.load(path)
    assert state["counters"]["agent_steps"] == 20 and torch.equal(state["w"], torch.arange(4.0))
    prev = checkpoint.load(path.with_name("checkpoint.pt.prev"))
    assert prev["counters"]["agent_steps"] == 10
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_checkpoint_gives_a_clear_error_and_names_the_previous(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"w": torch.zeros(1000)})
    checkpoint.save(path, {"w": torch.ones(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="previous checkpoint is kept") as err:
        checkpoint.load(path)
    assert "weights_only" not in str(err.value)  # torch's unsafe advice is never passed on
    assert torch.equal(checkpoint.load(path.with_name("checkpoint.pt.prev"))["w"], torch.zeros(1000))
    state, where = checkpoint.load_latest(path)  # what --resume does: the previous one, said
    assert where.name == "checkpoint.pt.prev" and torch.equal(state["w"], torch.zeros(1000))


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_objects_are_never_unpickled(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, path)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path)
    assert "must never run" not in capsys.readouterr().out


def test_foreign_file_and_missing_file(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a fastdqn checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")


def _replay_state(step: int) -> dict:
    return {"written": np.array([step, step]), "capacity": np.int64(1000), "num_envs": np.int64(2),
            "frames": np.full((4, 3), step % 256, np.uint8)}


class Crash(BaseException):
    """The process dies here: nothing after it runs (not even cleanup)."""


class CrashingOs:
    """os for checkpoint.py, dying at its k-th file operation (and at every one after)."""

    OPS = ("open", "close", "fsync", "replace", "link", "unlink", "rename")

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in self.OPS:
            return real

        def op(*args, **kwargs):
            self.calls += 1
            if self.calls > self.k:
                raise Crash(name)
            return real(*args, **kwargs)

        return op


def test_a_crash_between_any_two_file_operations_leaves_a_complete_checkpoint(tmp_path, monkeypatch):
    """Crash a save after 0, 1, 2, ... of its file operations (and a crash half-way through writing
    the new file): checkpoint.pt is always there and loadable, it is the old or the new snapshot,
    and the replay it names is its own or absent, never another step's."""
    crash_points = 0
    for k in range(100):
        run = tmp_path / f"k{k}"
        path = run / "checkpoint.pt"
        checkpoint.save(path, {"w": torch.zeros(3), "counters": {"agent_steps": 100}}, _replay_state(100))
        crashing = CrashingOs(k)
        monkeypatch.setattr(checkpoint, "os", crashing)
        try:
            checkpoint.save(path, {"w": torch.ones(3), "counters": {"agent_steps": 200}}, _replay_state(200))
            finished = True
        except Crash:
            finished = False
        monkeypatch.setattr(checkpoint, "os", os)
        state = checkpoint.load(path)  # never absent, never partial
        step = state["counters"]["agent_steps"]
        assert step in (100, 200) and torch.equal(state["w"], torch.full((3,), step // 100 - 1.0))
        replay, why = checkpoint.load_replay(path, state)
        assert replay is None or int(replay["written"][0]) == step, (k, why)
        # the next save after a crash works and cleans up after it
        checkpoint.save(path, {"w": torch.ones(3), "counters": {"agent_steps": 300}}, _replay_state(300))
        assert int(checkpoint.load_replay(path, checkpoint.load(path))[0]["written"][0]) == 300
        names = sorted(p.name for p in run.iterdir())
        assert names[:2] == ["checkpoint.pt", "checkpoint.pt.prev"] and len(names) == 3, names  # + its replay
        if finished:
            break
        crash_points += 1
    assert crash_points >= 8  # every operation of a save was a crash point
    assert finished


def test_a_crash_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"w": torch.zeros(3), "counters": {"agent_steps": 100}})

    def half_written(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise Crash("killed while writing")

    monkeypatch.setattr(checkpoint.torch, "save", half_written)
    with pytest.raises(Crash):
        checkpoint.save(path, {"w": torch.ones(3), "counters": {"agent_steps": 200}})
    monkeypatch.undo()
    assert checkpoint.load(path)["counters"]["agent_steps"] == 100


def test_a_replay_file_from_another_step_is_refused(tmp_path):
    old, new = tmp_path / "old" / "checkpoint.pt", tmp_path / "new" / "checkpoint.pt"
    checkpoint.save(old, {"counters": {"agent_steps": 100}}, _replay_state(100))
    checkpoint.save(new, {"counters": {"agent_steps": 200}}, _replay_state(200))
    state = checkpoint.load(new)
    replay, _ = checkpoint.load_replay(new, state)
    assert int(replay["written"][0]) == 200 and "replay_stamp" not in replay
    # the step-100 replay put where the step-200 checkpoint expects its own
    (old_replay,) = old.parent.glob("checkpoint.replay-*.npz")
    os.replace(old_replay, new.parent / state["replay"]["file"])
    replay, why = checkpoint.load_replay(new, state)
    assert replay is None and "from another checkpoint" in why and "refused" in why
    # a checkpoint saved without its replay says so; the replay files it does not name are gone
    checkpoint.save(new, {"counters": {"agent_steps": 300}})
    assert checkpoint.load_replay(new, checkpoint.load(new)) == (None, "this checkpoint was saved without the replay")
    assert not list(new.parent.glob("checkpoint.replay-*"))
