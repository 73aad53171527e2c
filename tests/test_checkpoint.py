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
    with pytest.raises(checkpoint.CheckpointError, match="previous checkpoint is kept"):
        checkpoint.load(path)
    assert torch.equal(checkpoint.load(path.with_name("checkpoint.pt.prev"))["w"], torch.zeros(1000))


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
