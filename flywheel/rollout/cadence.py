"""The loop's cadence: when each tick started against when it was due, and how long it took."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CadenceReport:
    ticks: int
    period_ms: float
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    work_p50_ms: float
    work_p99_ms: float
    over_budget: int  # ticks whose work took longer than the period

    def line(self) -> str:
        rate = f"{1000 / self.period_ms:.0f} Hz" if self.period_ms else "free-running"
        return (
            f"cadence ({rate}, {self.ticks} ticks): lateness p50 {self.lateness_p50_ms:.2f} ms, "
            f"p99 {self.lateness_p99_ms:.2f} ms, max {self.lateness_max_ms:.2f} ms; "
            f"work p50 {self.work_p50_ms:.2f} ms, p99 {self.work_p99_ms:.2f} ms; "
            f"{self.over_budget} over budget"
        )


@dataclass
class RateKeeper:
    """Schedules ticks at a fixed rate (fps=0: as fast as possible) and measures lateness.

    A tick that is late by more than a whole period does not make the next ones burst to catch up:
    the schedule restarts from now."""

    fps: int
    lateness_ms: list[float] = field(default_factory=list)
    work_ms: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.period = 1.0 / self.fps if self.fps > 0 else 0.0
        self._next: float | None = None
        self._tick_start = 0.0

    def wait_for_tick(self) -> float:
        """Sleep until the next tick is due; returns its lateness in seconds."""
        now = time.perf_counter()
        if self._next is None or self.period == 0.0:
            self._next = now
        elif now < self._next:
            time.sleep(self._next - now)
            now = time.perf_counter()
        lateness = now - self._next
        self.lateness_ms.append(lateness * 1000)
        self._next = (self._next + self.period) if lateness < self.period else now + self.period
        self._tick_start = now
        return lateness

    def end_tick(self) -> None:
        self.work_ms.append((time.perf_counter() - self._tick_start) * 1000)

    def report(self) -> CadenceReport:
        late = np.asarray(self.lateness_ms or [0.0])
        work = np.asarray(self.work_ms or [0.0])
        return CadenceReport(
            ticks=len(self.lateness_ms),
            period_ms=self.period * 1000,
            lateness_p50_ms=float(np.percentile(late, 50)),
            lateness_p99_ms=float(np.percentile(late, 99)),
            lateness_max_ms=float(late.max()),
            work_p50_ms=float(np.percentile(work, 50)),
            work_p99_ms=float(np.percentile(work, 99)),
            over_budget=int((work > self.period * 1000).sum()) if self.period else 0,
        )

    def reset(self) -> None:
        self.lateness_ms.clear()
        self.work_ms.clear()
        self._next = None
