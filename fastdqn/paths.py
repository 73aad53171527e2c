"""Output paths checked before any work: a run, a GIF or a plot that cannot be written is said at
once, naming the flag, instead of after minutes of training or evaluation. Nothing is created."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable_dir(directory: Path) -> bool:
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:  # also catches read-only mounts, which os.access misses for root
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def require_writable(path: str | Path, flag: str, *, directory: bool = False) -> None:
    """Raise ValueError("<flag> <path>: why; fix") unless ``path`` (a directory when ``directory``,
    else a file) can be created or written."""
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise ValueError(f"{flag} {path} is a file, not a directory: pick another path")
        if not directory and path.is_dir():
            raise ValueError(f"{flag} {path} is a directory: give a file name, e.g. {path / 'out'}")
        target = path if directory else path.parent
        if not _writable_dir(target):
            raise ValueError(f"{flag} {path}: {target} is not writable: pick a path you can write to")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {path}: {ancestor} is a file, so no directory can be made below it: pick another path")
    if not _writable_dir(ancestor):
        raise ValueError(f"{flag} {path}: {ancestor} is not writable: pick a path you can write to")
