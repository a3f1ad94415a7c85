"""The state every tab shares: the catalog, the API client, the task runner, the event stream and change notices."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from asrlib.client import AsrClient
from asrlib.dashboard.events import EventStream
from asrlib.dashboard.i18n import Messages
from asrlib.dashboard.settings import DashboardSettings
from asrlib.dashboard.tasks import TaskRunner

log = logging.getLogger(__name__)

# Topics of `Context.changed`: a tab that alters one of these notifies the tabs that list it.
TOPICS = ("runs", "models", "datasets", "checkpoints")


@dataclass
class Context:
    messages: Messages
    client: AsrClient
    settings: DashboardSettings
    base_url: str
    runner: TaskRunner
    events: EventStream
    _listeners: dict[str, list[Callable[[], None]]] = field(default_factory=lambda: defaultdict(list))

    def on_changed(self, topic: str, callback: Callable[[], None]) -> None:
        if topic not in TOPICS:
            raise ValueError(f"unknown topic {topic!r}; use one of {TOPICS}")
        self._listeners[topic].append(callback)

    def changed(self, topic: str) -> None:
        """Tell the tabs that show `topic` to reload it (after a start, delete, import, ...)."""
        for callback in list(self._listeners[topic]):
            try:
                callback()
            except Exception:
                log.exception("reloading %s after a change failed", topic)
