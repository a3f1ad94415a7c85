"""From run events to curve points and progress: the logic behind the live training charts.

Events are the trainer's metrics.jsonl records as `/ws` and `/api/runs/{id}/metrics` deliver them.
Both sources overlap when the page loads history while the stream is already open, and `/ws`
replays recent events after a reconnect, so `CurveStore` drops any point whose step is not past
the last one of its series.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# chart -> the series drawn on it, in legend order
CHARTS: dict[str, tuple[str, ...]] = {
    "loss": ("train_loss", "valid_loss"),
    "lr": ("lr",),
    "error": ("cer", "wer"),
}
# event type -> (series, field of the event that contains the value)
EVENT_SERIES: dict[str, tuple[tuple[str, str], ...]] = {
    "step": (("train_loss", "loss"), ("lr", "lr")),
    "eval": (("valid_loss", "valid_loss"), ("cer", "cer"), ("wer", "wer")),
}
SERIES_CHART = {series: chart for chart, names in CHARTS.items() for series in names}
FINAL_STATES = ("completed", "stopped", "failed")
ETA_WINDOW = 20  # step events used for the rate; older ones describe a different phase (warm-up, eval)


@dataclass(frozen=True)
class CurvePoint:
    run_id: str
    series: str  # train_loss, valid_loss, lr, cer or wer
    step: int
    value: float

    @property
    def chart(self) -> str:
        return SERIES_CHART[self.series]


def run_id_of(event: dict[str, Any]) -> str | None:
    """Return the run an event belongs to: its `run_id`, else the `run:<id>` channel it came on."""
    run_id = event.get("run_id")
    if isinstance(run_id, str) and run_id:
        return run_id
    channel = event.get("channel")
    if isinstance(channel, str) and channel.startswith("run:"):
        return channel[4:] or None
    return None


def points_from_event(event: dict[str, Any], run_id: str | None = None) -> list[CurvePoint]:
    """Return the curve points of one event: step events feed loss and lr, eval events valid loss, CER and WER.

    Fields that are missing, not numbers, NaN or infinite give no point, because a chart cannot
    place them. A diverged loss still shows as the gap after the last finite point.
    """
    series_fields = EVENT_SERIES.get(event.get("event", ""))
    run = run_id or run_id_of(event)
    step = event.get("step")
    if not series_fields or run is None or not _is_number(step):
        return []
    points = []
    for series, key in series_fields:
        value = event.get(key)
        if _is_number(value) and math.isfinite(value):
            points.append(CurvePoint(run, series, int(step), float(value)))
    return points


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None


class CurveStore:
    """The points of every (run, series), appended in step order, with the series changed since the last flush."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], Series] = {}
        self._dirty: set[tuple[str, str]] = set()

    def add(self, point: CurvePoint) -> bool:
        """Append a point; False (and no change) when its step is not after the series' last step."""
        key = (point.run_id, point.series)
        series = self.series.setdefault(key, Series())
        if series.last_step is not None and point.step <= series.last_step:
            return False
        series.steps.append(point.step)
        series.values.append(point.value)
        self._dirty.add(key)
        return True

    def add_event(self, event: dict[str, Any], run_id: str | None = None) -> int:
        """Add the points of one event; return how many were new."""
        return sum(self.add(point) for point in points_from_event(event, run_id))

    def add_events(self, events: Iterable[dict[str, Any]], run_id: str | None = None) -> int:
        return sum(self.add_event(event, run_id) for event in events)

    def take_dirty(self) -> set[tuple[str, str]]:
        """Return the (run, series) keys that gained points since the last call, and forget them."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def forget_run(self, run_id: str) -> None:
        for key in [key for key in self.series if key[0] == run_id]:
            del self.series[key]
            self._dirty.discard(key)

    def runs(self) -> list[str]:
        return sorted({run for run, _ in self.series})


@dataclass
class RunProgress:
    """Step, epoch, state and ETA of one run, updated from its events."""

    run_id: str
    state: str | None = None
    step: int = 0
    max_steps: int | None = None
    epoch: int | None = None
    error: str | None = None
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=ETA_WINDOW))

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if _is_number(event.get("step")):
            self.step = max(self.step, int(event["step"])) if kind != "started" else int(event["step"])
        if _is_number(event.get("epoch")):
            self.epoch = int(event["epoch"])
        if _is_number(event.get("max_steps")):
            self.max_steps = int(event["max_steps"])
        if kind == "started":
            self.state = "running"
            self._samples.clear()  # a resumed run starts its rate afresh
        elif kind == "step" and _is_number(event.get("time")):
            self._samples.append((float(event["time"]), int(event["step"])))
        elif kind == "state" and isinstance(event.get("state"), str):
            self.state = event["state"]
            self.error = event.get("error") or self.error
        elif kind in FINAL_STATES:
            self.state = kind
            self.error = event.get("error") or self.error

    @property
    def fraction(self) -> float:
        if not self.max_steps:
            return 0.0
        return min(1.0, self.step / self.max_steps)

    @property
    def eta_s(self) -> float | None:
        """Seconds until max_steps at the rate of the last `ETA_WINDOW` step events; None when unknown."""
        if self.state in FINAL_STATES:
            return None
        return estimate_eta(list(self._samples), self.step, self.max_steps)


def estimate_eta(samples: list[tuple[float, int]], step: int, max_steps: int | None) -> float | None:
    """Estimate the seconds left from (time, step) samples; None with fewer than two samples or no progress."""
    if max_steps is None or len(samples) < 2:
        return None
    (t0, s0), (t1, s1) = samples[0], samples[-1]
    if s1 <= s0 or t1 <= t0:
        return None
    seconds_per_step = (t1 - t0) / (s1 - s0)
    return max(0, max_steps - step) * seconds_per_step
