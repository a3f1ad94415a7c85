"""The event hub behind `/ws`: channels with a bounded history, and the tailer of the runs' metrics.

Channels are `run:<run_id>` and `dataset:<name>`. Every message is an event dict with `channel`
and a server-wide increasing `seq` added, so a client can drop a duplicate after a re-subscribe.
Run channels carry the trainer's metrics.jsonl records (started, step, eval, checkpoint, stopped,
completed, failed) and `state` events whenever status.json changes state (queued, running,
stopping, ... with `error` for a failure the trainer could not record itself, such as a killed
process). Dataset channels carry started, progress, completed and failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from asrlib.jobs import ACTIVE_STATES, JobError, JobManager

log = logging.getLogger(__name__)

WILDCARD = "*"
QUEUE_SIZE = 1000  # messages waiting for one subscriber; older ones are dropped past it
FINAL_EVENTS = ("completed", "stopped", "failed")
# After status.json shows a final state, the trainer appends its final event; wait this long for it.
FINAL_EVENT_GRACE_S = 5.0


def channel_matches(patterns: frozenset[str], channel: str) -> bool:
    """Match a channel against patterns: channels (`run:ID`), kind wildcards (`run:*`) or `*` for all."""
    return WILDCARD in patterns or channel in patterns or f"{channel.split(':', 1)[0]}:{WILDCARD}" in patterns


@dataclass(eq=False)
class Subscription:
    patterns: frozenset[str]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: int = 0  # messages discarded because the client read too slowly; reset when reported

    def offer(self, message: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the newest progress matters more than the oldest
            self.dropped += 1
        self.queue.put_nowait(message)


class EventHub:
    """Publish events to channels, keep the last `history` per channel, fan them out to subscribers.

    `publish` and the subscription methods must run on the event loop's thread; other threads
    call `publish_threadsafe`.
    """

    def __init__(self, history: int = 200) -> None:
        self.history = history
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._subscribers: set[Subscription] = set()
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, channel: str, event: dict[str, Any]) -> dict[str, Any]:
        message = {"channel": channel, "seq": next(self._seq), **event}
        self._history.setdefault(channel, deque(maxlen=self.history)).append(message)
        for subscription in list(self._subscribers):
            if channel_matches(subscription.patterns, channel):
                subscription.offer(message)
        return message

    def publish_threadsafe(self, channel: str, event: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            log.debug("no event loop bound; event on %s not sent", channel)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(self.publish, channel, event)

    def recent(self, patterns: frozenset[str], limit: int | None = None) -> list[dict[str, Any]]:
        """Return the last `limit` (default: all stored) messages of each matching channel, oldest first."""
        messages: list[dict[str, Any]] = []
        for channel, history in self._history.items():
            if channel_matches(patterns, channel):
                stored = list(history)
                messages.extend(stored[-limit:] if limit is not None else stored)
        return sorted(messages, key=lambda m: m["seq"])

    def subscribe(self, patterns: frozenset[str], replay: int) -> Subscription:
        subscription = Subscription(patterns)
        for message in self.recent(patterns, replay)[-QUEUE_SIZE:] if replay > 0 else []:
            subscription.offer(message)
        self._subscribers.add(subscription)
        return subscription

    def resubscribe(self, subscription: Subscription, patterns: frozenset[str], replay: int) -> None:
        """Replace a subscription's channels; replay the history of channels it did not match before."""
        old = subscription.patterns
        subscription.patterns = patterns
        if replay > 0:
            for message in self.recent(patterns, replay):
                if not channel_matches(old, message["channel"]):
                    subscription.offer(message)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def channels(self) -> list[str]:
        return sorted(self._history)


class RunEventTailer:
    """One asyncio task that reads new metrics.jsonl lines of every active run and publishes them.

    File reads and status lookups run in a worker thread (`asyncio.to_thread`), so neither a slow
    disk nor the job manager's lock can block the event loop. A run is tailed while the job
    manager lists it as active or `watch` named it, and until its final event has been read.
    """

    def __init__(self, jobs: JobManager, hub: EventHub, poll_s: float = 0.2) -> None:
        self.jobs = jobs
        self.hub = hub
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._offsets: dict[str, int] = {}
        self._states: dict[str, str] = {}
        self._ended: dict[str, float] = {}  # run id -> monotonic time its final state was first seen

    def watch(self, run_id: str) -> None:
        """Tail `run_id` from now on even before the job manager reports it active (thread-safe)."""
        with self._lock:
            self._watched.add(run_id)

    async def run(self) -> None:
        while True:
            try:
                for channel, event in await asyncio.to_thread(self.collect):
                    self.hub.publish(channel, event)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad run folder must not stop the events of all others
                log.exception("reading run events failed; retrying in %.1f s", self.poll_s)
            await asyncio.sleep(self.poll_s)

    def collect(self) -> list[tuple[str, dict[str, Any]]]:
        """Read what every tailed run appended since the last call; runs in a worker thread."""
        active = set(self.jobs.active_run_ids())
        with self._lock:
            tailed = active | self._watched | set(self._offsets)
        out: list[tuple[str, dict[str, Any]]] = []
        for run_id in sorted(tailed):
            try:
                out.extend(self._collect_run(run_id, run_id in active))
            except JobError as err:  # the run folder was removed
                log.info("run %s no longer readable (%s); events stop", run_id, err)
                self._forget(run_id)
        return out

    def _collect_run(self, run_id: str, active: bool) -> Iterable[tuple[str, dict[str, Any]]]:
        channel = f"run:{run_id}"
        events, self._offsets[run_id] = self.jobs.read_events(run_id, self._offsets.get(run_id, 0))
        out = [(channel, event) for event in events]
        info = self.jobs.get(run_id)
        if info.state != self._states.get(run_id):
            self._states[run_id] = info.state
            out.append((channel, {"event": "state", "run_id": run_id, "time": round(time.time(), 3),
                                  "state": info.state, "step": info.step, "error": info.error}))
        if active or info.state in ACTIVE_STATES:
            self._ended.pop(run_id, None)
            return out
        ended = self._ended.setdefault(run_id, time.monotonic())
        final_seen = any(event.get("event") in FINAL_EVENTS for event in events)
        if final_seen or time.monotonic() - ended > FINAL_EVENT_GRACE_S:
            self._forget(run_id)
        return out

    def _forget(self, run_id: str) -> None:
        with self._lock:
            self._watched.discard(run_id)
        self._offsets.pop(run_id, None)
        self._states.pop(run_id, None)
        self._ended.pop(run_id, None)
