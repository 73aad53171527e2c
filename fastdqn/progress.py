"""Training progress for a person watching: steps, one rate, recent score, epsilon, evaluations.

On a terminal it is a tqdm bar redrawn every second; otherwise (a log file, CI) it prints a
plain line every 30 s, so the log reads line by line. Every refresh recomputes its fields. The
one rate shown is agent steps per second since the previous refresh, with the time spent in
evaluations left out (``evaluation_done``), so it is the rate while learning.
"""

from __future__ import annotations

import sys
import time

TERMINAL_INTERVAL = 1.0
LOG_INTERVAL = 30.0


class Progress:
    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, interval: float = 0.0,
                 stream=None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = enabled
        self.terminal = enabled and self.stream.isatty()
        self.interval = interval or (TERMINAL_INTERVAL if self.terminal else LOG_INTERVAL)
        self.clock = clock
        self.started = clock()
        self.last_time, self.last_steps = self.started, initial
        self.last_message = -float("inf")
        self.bar = None
        if self.terminal:
            from tqdm import tqdm

            # tqdm's own rate is left out of the format: the bar shows one rate, ours
            self.bar = tqdm(total=total, initial=initial, unit="step", file=self.stream, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def due(self) -> bool:
        return self.enabled and self.clock() - self.last_time >= self.interval

    def update(self, steps: int, score: float | None, epsilon: float) -> None:
        now = self.clock()
        rate = (steps - self.last_steps) / max(now - self.last_time, 1e-9)
        fields = f"{rate:,.0f} steps/s, score {'-' if score is None else f'{score:.1f}'}, eps {epsilon:.3f}"
        self.last_time, self.last_steps = now, steps
        if self.bar is not None:
            self.bar.n = steps
            self.bar.set_postfix_str(fields)  # redraws
        elif self.enabled:
            print(f"step {steps:,}/{self.total:,} ({100 * steps / self.total:.0f}%), {fields}, "
                  f"{_minutes(now - self.started)}", file=self.stream, flush=True)

    def evaluating(self, games_done: int, games: int, mean_so_far: float) -> None:
        """What an evaluation has done so far: shown at most once per refresh interval."""
        now = self.clock()
        if not self.enabled or now - self.last_message < self.interval:
            return
        self.last_message = now
        text = f"evaluating: game {games_done}/{games}, mean so far {mean_so_far:.1f}"
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            print(text, file=self.stream, flush=True)

    def evaluation_done(self) -> None:
        self.last_time = self.clock()  # the rate leaves out the time the evaluation took

    def write(self, line: str) -> None:
        """A line that stays (above the bar on a terminal), shown even with the bar disabled."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
