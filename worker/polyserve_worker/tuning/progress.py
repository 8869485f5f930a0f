"""The progress line of ``polyserve tune``: where the budget stands and the best so far.

On a terminal, one line redrawn in place (a bar of the budget spent, the trial under way and
its last window, the best capacity so far); elsewhere (a Job's log, CI), one line per finished
trial, so the log reads as a history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from polyserve_worker.tuning import measuring, searching, space

BAR = 20


def _clock_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """A ``searching.Observer`` that prints to ``stream``."""

    def __init__(
        self,
        stream: TextIO,
        model: str,
        budget_s: float,
        slo_ms: float,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.model = model
        self.budget_s = budget_s
        self.slo_ms = slo_ms
        self.clock = clock
        self.began = clock()
        self.tty = stream.isatty() if tty is None else tty
        self.trial = -1
        self.pruned = 0
        self.current = ""
        self.best: searching.Trial | None = None

    def started(self, number: int, candidate: space.Candidate) -> None:
        self.trial = number
        self.current = candidate.describe()
        self._draw()

    def window(self, number: int, point: measuring.Point) -> None:
        self.current = f"c={point.concurrency} {point.infer_per_s:.0f}/s p95 {point.p95_ms:.1f} ms"
        self._draw()

    def finished(self, trial: searching.Trial, best: searching.Trial | None) -> None:
        self.best = best
        if trial.state == searching.PRUNED:
            self.pruned += 1
        if not self.tty:
            top = self._best_text()
            note = f" ({trial.note})" if trial.note else ""
            self.stream.write(
                f"[{_clock_text(self.clock() - self.began)}/{_clock_text(self.budget_s)}] "
                f"trial {trial.number} {trial.state}: {trial.candidate.describe()}: "
                f"{trial.capacity:.0f} infer/s at p95<={self.slo_ms:g} ms{note}; {top}\n"
            )
            self.stream.flush()
        else:
            self._draw()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _best_text(self) -> str:
        if self.best is None:
            return "best: none yet"
        return f"best {self.best.capacity:.0f} infer/s (trial {self.best.number})"

    def _draw(self) -> None:
        if not self.tty:
            return
        spent = self.clock() - self.began
        filled = min(BAR, int(BAR * spent / self.budget_s)) if self.budget_s > 0 else BAR
        bar = "#" * filled + "-" * (BAR - filled)
        line = (
            f"tune {self.model} [{bar}] {_clock_text(spent)}/{_clock_text(self.budget_s)} "
            f"trial {self.trial} ({self.pruned} pruned) {self._best_text()} | {self.current}"
        )
        self.stream.write("\r\033[K" + line[:160])
        self.stream.flush()
