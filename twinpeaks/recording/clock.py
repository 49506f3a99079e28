"""The step clock: phase, step, window and epoch counters of one recorder. Torch-free.

Per phase it counts steps (``step``), where the current window of device rows
started (``window_start``: steps since then sit in device rows, row ``step -
window_start``) and where the open epoch started (``epoch_first``). It knows
nothing of buffers: the recorder asks :meth:`StepClock.full` and flushes.
"""

from __future__ import annotations


class StepClock:
    """Step counters per phase, the current phase and device row, and the epoch number.

    Example:
        >>> c = StepClock(rows=2)
        >>> c.start("train"); c.start("train"); c.full("train")
        True
        >>> c.phase, c.row, c.window("train")
        ('train', 1, (0, 2))
    """

    def __init__(self, rows: int):
        self.rows = rows  #: device rows per window (a flush empties them)
        self.phase: str | None = None  #: phase of the current step; None before the first step
        self.row = 0  #: device row of the current step
        self.epoch = 0  #: number of closed epochs
        self.step: dict[str, int] = {}
        self.window_start: dict[str, int] = {}
        self.epoch_first: dict[str, int] = {}

    def full(self, phase: str) -> bool:
        """Whether the next step of ``phase`` needs a flush first (its window has no free row)."""
        return self.step.get(phase, 0) - self.window_start.get(phase, 0) >= self.rows

    def start(self, phase: str) -> None:
        """Begin the next step of ``phase`` (the caller flushed a full window first)."""
        if phase not in self.step:
            self.step[phase] = self.window_start[phase] = self.epoch_first[phase] = 0
        self.row = self.step[phase] - self.window_start[phase]
        self.step[phase] += 1
        self.phase = phase

    def window(self, phase: str) -> tuple[int, int]:
        """``(first step, steps)`` of the open window of ``phase``."""
        start = self.window_start[phase]
        return start, self.step[phase] - start

    def close_window(self) -> None:
        """The rows of every phase moved to the host: start new windows."""
        for phase in self.step:
            self.window_start[phase] = self.step[phase]

    def open_phases(self) -> list[str]:
        """Phases with steps in the open epoch."""
        return [p for p in self.step if self.step[p] > self.epoch_first[p]]

    def close_epoch_phase(self, phase: str) -> None:
        self.epoch_first[phase] = self.step[phase]

    def align(self, phases: dict[str, tuple[int, int]]) -> None:
        """Take ``{phase: (step, epoch_first)}`` agreed by all ranks; every window is empty afterwards."""
        self.step = {p: end for p, (end, _) in phases.items()}
        self.window_start = dict(self.step)
        self.epoch_first = {p: first for p, (_, first) in phases.items()}
