"""Progress events shared by the download, extraction, import, validation and demo steps.

Every long step takes an optional `progress` callback that receives `Progress` events: the CLI
draws them as tqdm bars, and a web API can forward them as they come.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress event of a long-running dataset step."""

    phase: str  # download, hash, extract, copy, validate or synthesise
    done: int  # units finished so far, counted from the start of the whole job
    total: int | None  # units in the whole job; None when unknown
    unit: str  # "B" for bytes, otherwise what is counted (file, clip)
    rate_per_s: float | None = None  # units per second since this phase started
    eta_s: float | None = None  # estimated seconds left at the current rate
    item: str | None = None  # the file, archive member or clip being worked on
    final: bool = False  # the last event of this phase

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


class ProgressMeter:
    """Compute rate and ETA for one phase and call the callback at most every `interval_s`."""

    def __init__(
        self,
        callback: ProgressCallback | None,
        *,
        phase: str,
        total: int | None,
        unit: str,
        start: int = 0,
        interval_s: float = 0.25,
    ) -> None:
        self.callback = callback
        self.phase = phase
        self.total = total
        self.unit = unit
        self.done = start
        self._start_done = start  # resumed units do not count towards the rate
        self._started = time.monotonic()
        self._last_emit = 0.0
        self.interval_s = interval_s

    def update(self, done: int, *, item: str | None = None, force: bool = False) -> None:
        self.done = done
        if self.callback is None:
            return
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval_s:
            return
        self._last_emit = now
        self.callback(self._event(now, item=item, final=False))

    def close(self, *, item: str | None = None) -> None:
        if self.callback is not None:
            self.callback(self._event(time.monotonic(), item=item, final=True))

    def _event(self, now: float, *, item: str | None, final: bool) -> Progress:
        elapsed_s = now - self._started
        rate = (self.done - self._start_done) / elapsed_s if elapsed_s > 0 else None
        eta = None
        if rate and self.total is not None:
            eta = max(0.0, (self.total - self.done) / rate)
        return Progress(self.phase, self.done, self.total, self.unit, rate, eta, item, final)
