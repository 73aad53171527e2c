"""Checkpoints that survive a crash at any moment and never unpickle arbitrary objects.

A checkpoint is one ``torch.save`` file of tensors, numbers, strings, lists and dicts, loaded
with ``weights_only=True``. Saving never leaves a moment without a complete checkpoint:

    1. the new one is written to ``<name>.tmp`` and fsynced;
    2. the current one gets a second name, ``<name>.prev`` (a hard link made under a temporary
       name, then renamed over the old ``.prev``: the current file never moves);
    3. ``<name>.tmp`` is renamed over ``<name>`` (atomic), and the directory is fsynced.

The replay, when saved, is a second file ``<stem>.replay-<stamp>.npz`` (NumPy arrays only,
loaded with ``allow_pickle=False``), written and fsynced BEFORE the checkpoint that names it: a
kill during the long replay write (7 GB for a 1M Atari replay) leaves the previous checkpoint and
its replay in place. A replay that cannot be written (a full disk) is left out: the checkpoint
goes in place without it, so the stop step's weights, counters and optimizer are never lost, and
``save`` says why.
The checkpoint records the replay's file name and stamp (agent step + random id), and the
replay file holds the same stamp: a replay from another step is refused, never paired with
these weights. Replay files that the current checkpoint does not name are deleted once it is
in place, with any a crash left half-written (so ``.prev`` comes without its replay: resuming
from it refills the replay). Two
files rather than one so that loading the weights (eval, push, resume's first look) never
reads gigabytes of frames, and the periodic checkpoints that leave the replay out stay small.
"""

from __future__ import annotations

import os
import struct
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "fastdqn-checkpoint-1"
_UNREADABLE = "truncated, corrupt, or holding objects other than tensors, numbers and strings"


class CheckpointError(RuntimeError):
    pass


def prev_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".prev")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durably(path: Path, write) -> None:
    """``write(f)`` into ``path`` and fsync it; the caller renames it into place."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _keep_as_previous(path: Path) -> None:
    """Give the current checkpoint the second name ``.prev`` without ever moving it."""
    link = path.with_name(path.name + ".prev.tmp")
    if link.exists():  # left by a crash
        os.unlink(link)
    prev = prev_path(path)
    if not path.exists() or (prev.exists() and os.path.samefile(path, prev)):
        return  # (renaming a link over itself would do nothing and leave the link)
    try:
        os.link(path, link)
    except OSError:  # a filesystem without hard links: a durable copy instead
        _write_durably(link, lambda f: f.write(path.read_bytes()))
    os.replace(link, prev)


def save(path: str | Path, payload: dict, replay_state: dict | None = None) -> str | None:
    """Write ``payload`` (and, if given, the replay's ``state_dict()``) as one consistent snapshot.

    Returns None, or why the replay could not be written (a full disk): the checkpoint is then in
    place without it. CheckpointError when the checkpoint itself cannot be written (the last
    complete one stays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **payload, "replay": None}
    # The replay first, then the checkpoint naming it: whenever the process dies, the checkpoint in
    # place names a replay file that is complete. If the replay cannot be written (a full disk), the
    # checkpoint goes in place without one, so the stop step's weights are never lost.
    problem = keep = None
    if replay_state is not None:
        steps = int(payload.get("counters", {}).get("agent_steps", 0))
        stamp = f"{steps}-{uuid.uuid4().hex[:12]}"
        rpath = path.with_name(f"{path.stem}.replay-{stamp}.npz")
        rtmp = rpath.with_name(rpath.name + ".tmp")
        try:
            _write_durably(rtmp, lambda f: np.savez(f, replay_stamp=np.asarray(stamp), **replay_state))
            os.replace(rtmp, rpath)
            payload["replay"], keep = {"file": rpath.name, "stamp": stamp}, rpath.name
        except OSError as exc:
            problem = f"the replay could not be written to {rpath.parent} ({exc.strerror or exc})"
        finally:
            if rtmp.exists():
                os.unlink(rtmp)
    _put_in_place(path, payload, keep_previous=True)
    for stale in path.parent.glob(f"{path.stem}.replay-*"):  # older replays, and any a crash left half-written
        if stale.name != keep:
            os.unlink(stale)
    return problem


def _put_in_place(path: Path, payload: dict, keep_previous: bool) -> None:
    """Write ``payload`` to ``path`` atomically (tmp, fsync, rename), the current file kept as ``.prev``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            _write_durably(tmp, lambda f: torch.save(payload, f))
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {path} ({exc.strerror or exc}); the last complete "
                                  "checkpoint is intact") from None
        if keep_previous:
            _keep_as_previous(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            os.unlink(tmp)
    _fsync_dir(path.parent)


def set_aside(path: str | Path) -> Path | None:
    """Rename an unreadable checkpoint to ``<name>.unreadable`` (kept for a look), once a resume came
    from its ``.prev``: the next save would otherwise keep the damaged file as the new ``.prev``."""
    path = Path(path)
    if not path.exists():
        return None
    aside = path.with_name(path.name + ".unreadable")
    os.replace(path, aside)
    _fsync_dir(path.parent)
    return aside


class RunLock:
    """One process per run directory: an exclusive lock (flock on ``RUN_DIR/.lock``, released when the
    process ends, however it ends). A second run in the same directory would delete the first one's
    replay files and overwrite its checkpoints: it is refused, naming the holder."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # (no flock on this platform: unguarded)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            self.file = None
            raise ValueError(f"--run-dir {self.path.parent} is in use by another fastdqn process (pid {holder}): "
                             "wait for it to end, or use another --run-dir") from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # (closing releases the lock)
            self.file = None


def load(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        prev = prev_path(path)
        hint = f" (the previous checkpoint {prev} exists: --resume uses it)" if prev.exists() else ""
        raise CheckpointError(f"no checkpoint at {path}{hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or not ours; torch's own advice is never passed on
        prev = prev_path(path)
        hint = f"; the previous checkpoint is kept at {prev}" if prev.exists() else ""
        raise CheckpointError(f"cannot read checkpoint {path} ({_UNREADABLE}: {type(exc).__name__}){hint}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastdqn checkpoint")
    return payload


def require_resumable(run_dir: str | Path) -> Path:
    """run_dir's checkpoint path, or CheckpointError when --resume has nothing to continue."""
    path = Path(run_dir) / "checkpoint.pt"
    if not (path.exists() or prev_path(path).exists()):
        raise CheckpointError(f"--resume: no checkpoint in {run_dir}: nothing to continue (drop --resume to "
                              "start a new run there)")
    return path


def load_latest(path: str | Path, quiet: bool = False) -> tuple[dict, Path]:
    """The checkpoint at ``path``, or, when that is missing or unreadable, its ``.prev`` (saying so
    on stderr unless ``quiet``): (payload, the file it came from)."""
    path = Path(path)
    try:
        return load(path), path
    except CheckpointError as exc:
        prev = prev_path(path)
        if not prev.exists():
            raise
        payload = load(prev)
        if not quiet:
            print(f"warning: {exc}; resuming from the previous checkpoint {prev} "
                  f"(step {payload.get('counters', {}).get('agent_steps', '?')})", file=sys.stderr)
        return payload, prev


def _read_npz(path: Path) -> dict:
    """The arrays of a .npz that ``save`` wrote, the big ones memory-mapped rather than read: a resume
    copies them into the replay it built, so the saved replay never sits in memory beside it (which
    would double what a resume needs: 14 GB for a 1M Atari replay). Compressed members, and small
    ones, are read."""
    out = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size < 1 << 20:
                with archive.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            f.seek(info.header_offset + 26)  # the local file header: its name and extra field lengths
            name_length, extra_length = struct.unpack("<HH", f.read(4))
            f.seek(info.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise ValueError(f"{info.filename} holds Python objects")
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                  order="F" if fortran else "C")
    return out


def load_replay(path: str | Path, payload: dict) -> tuple[dict | None, str]:
    """The replay saved with ``payload`` (loaded from ``path``), or None and why not."""
    info = payload.get("replay")
    if not info:
        return None, "this checkpoint was saved without the replay"
    rpath = Path(path).with_name(info["file"])
    if not rpath.exists():
        return None, f"its replay file {rpath.name} is gone"
    try:
        state = _read_npz(rpath)
    except Exception as exc:
        return None, f"its replay file {rpath} cannot be read ({type(exc).__name__})"
    stamp = str(state.pop("replay_stamp", ""))
    if stamp != info["stamp"]:
        return None, (f"its replay file {rpath.name} is from another checkpoint (stamp {stamp or 'none'}, "
                      f"expected {info['stamp']}): refused, never paired with these weights")
    return state, f"replay of {int(np.minimum(state['written'], state['capacity'] // state['num_envs']).sum()):,} transitions"
