"""The page's one `/ws` connection: run and dataset events go to the tabs as they arrive.

The stream subscribes to every channel without replay. The tabs load history over HTTP after each
(re)connect (`on_connected`), and the training curves drop points they already have. A lost
connection is retried with a growing delay, so restarting the API only pauses the live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from asrlib.client import AsrClient

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0)  # then 10 s between attempts

EventCallback = Callable[[dict[str, Any]], None]


class EventStream:
    def __init__(self, client: AsrClient) -> None:
        self.client = client
        self.connected = False
        self._listeners: list[tuple[str, EventCallback]] = []
        self._on_connected: list[Callable[[], None]] = []
        self._on_state: list[Callable[[bool, str | None], None]] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, channel_prefix: str, callback: EventCallback) -> None:
        """Call `callback(event)` for every event whose channel starts with `channel_prefix` (run: or dataset:)."""
        self._listeners.append((channel_prefix, callback))

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every (re)connect and after the server reports dropped events."""
        self._on_connected.append(callback)

    def on_state(self, callback: Callable[[bool, str | None], None]) -> None:
        """Call `callback(connected, error)` whenever the connection comes up or goes down."""
        self._on_state.append(callback)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_event_loop().create_task(self._run(), name="dashboard-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def dispatch(self, event: dict[str, Any]) -> None:
        """Hand one message of /ws to the listeners (public so that tests can feed events)."""
        kind = event.get("event")
        if kind == "subscribed":
            self._set_state(True, None)
            self._notify_connected()
            return
        if kind == "dropped":
            # The server discarded events for this slow page; reloading history fills the gap.
            log.warning("the API dropped %s events for this page; reloading history", event.get("count"))
            self._notify_connected()
            return
        if kind == "error":
            log.warning("/ws reported an error: %s", event.get("detail"))
            return
        channel = event.get("channel")
        if not isinstance(channel, str):
            return
        for prefix, callback in list(self._listeners):
            if channel.startswith(prefix):
                try:
                    callback(event)
                except Exception:  # one tab's bug must not stop the events of the others
                    log.exception("event listener failed for %s", channel)

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async for event in self.client.aevents(replay=0):
                    attempt = 0
                    self.dispatch(event)
                error = None
            except asyncio.CancelledError:
                raise
            except Exception as err:  # connection refused, reset, handshake failure: all retried
                error = f"{type(err).__name__}: {err}"
                log.info("event stream lost (%s); retrying", error)
            self._set_state(False, error)
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            attempt += 1
            await asyncio.sleep(delay)

    def _set_state(self, connected: bool, error: str | None) -> None:
        changed = connected != self.connected
        self.connected = connected
        if changed or error:
            for callback in list(self._on_state):
                try:
                    callback(connected, error)
                except Exception:
                    log.exception("connection state listener failed")

    def _notify_connected(self) -> None:
        for callback in list(self._on_connected):
            try:
                callback()
            except Exception:
                log.exception("reconnect listener failed")
