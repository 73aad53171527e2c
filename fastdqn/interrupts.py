"""Ctrl-C and SIGTERM for a training run.

The first signal asks the run to stop: every place that can take long (the acting / learning
loop, each evaluation step) checks ``stop`` and the run ends within seconds with a checkpoint.
A second signal raises ``Abort`` at once, wherever the run is (even inside a checkpoint write,
which never damages the last complete checkpoint: see checkpoint.py).
"""

from __future__ import annotations

import signal
import threading


class Abort(KeyboardInterrupt):
    """A second Ctrl-C / SIGTERM: stop now, without writing anything more."""


class StopRequests:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: list[int] = []
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        if len(self.received) > 1:
            raise Abort(f"{signal.Signals(signum).name} received twice")

    def __bool__(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else ""

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # (only there can Python catch signals)
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
