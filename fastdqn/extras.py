"""Optional extras (W&B, the Hugging Face Hub, MP4 video): imported only when a flag asks for
them, and a missing one is named with the command that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(RuntimeError):
    pass


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise MissingExtra("<feature> needs <module>: pip install 'fastdqn[<extra>]'")."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{feature} needs {module.split('.')[0]}: pip install 'fastdqn[{extra}]'") from exc
