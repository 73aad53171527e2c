"""Checkpoints that survive a crash at any moment and never unpickle arbitrary objects.

A checkpoint is one ``torch.save`` file of tensors, numbers, strings, lists and dicts,
loaded with ``weights_only=True``. It is written to a temporary file in the same
directory, flushed to disk, then renamed over the old one, so a reader sees either the
previous complete checkpoint or the new complete one. The one it replaces is kept as
``<name>.prev`` until the next save. The replay, when saved, goes beside it as an
``.npz`` written the same way (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FORMAT = "fastdqn-checkpoint-1"


class CheckpointError(RuntimeError):
    pass


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)


def save(path: str | Path, payload: dict, replay_state: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if replay_state is not None:
        _atomic_write(replay_path(path), lambda f: np.savez(f, **replay_state))
    _atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def replay_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".replay.npz")


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not ours
        prev = path.with_name(path.name + ".prev")
        hint = f"; the previous checkpoint is kept at {prev}" if prev.exists() else ""
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}){hint}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastdqn checkpoint")
    return payload


def load_replay(path: str | Path) -> dict | None:
    rpath = replay_path(path)
    if not rpath.exists():
        return None
    try:
        with np.load(rpath, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as exc:
        raise CheckpointError(f"cannot read replay {rpath} ({type(exc).__name__}: {exc})") from exc
