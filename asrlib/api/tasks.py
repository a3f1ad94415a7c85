"""Background dataset operations (download, import, validate, demo) with progress on the event hub."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asrlib.api.events import EventHub
from asrlib.datasets.progress import Progress

log = logging.getLogger(__name__)


class TaskConflict(Exception):
    status_code = 409


@dataclass
class DatasetTask:
    name: str
    operation: str  # download, import, validate or demo
    state: str = "running"  # running, completed or failed
    started: float = dataclasses.field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    result: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DatasetTasks:
    """Run at most one operation per dataset at a time, each in its own daemon thread.

    Events go to channel `dataset:<name>`: started, progress (a `Progress` as a dict, plus
    `fraction`), then completed (with `result`) or failed (with `error`). The latest task of each
    dataset stays readable with `get` until the next one starts.
    """

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self._lock = threading.Lock()
        self._tasks: dict[str, DatasetTask] = {}
        self._threads: dict[str, threading.Thread] = {}

    def get(self, name: str) -> DatasetTask | None:
        with self._lock:
            task = self._tasks.get(name)
            return dataclasses.replace(task) if task else None

    def start(self, name: str, operation: str, work: Callable[[Callable[[Progress], None]], Any]) -> DatasetTask:
        """Start `work(progress_callback)` in a thread; TaskConflict if `name` is already busy."""
        with self._lock:
            current = self._tasks.get(name)
            if current is not None and current.state == "running":
                raise TaskConflict(
                    f"dataset {name!r} is busy with {current.operation}; "
                    f"wait for it to finish (GET /api/datasets/{name})"
                )
            task = DatasetTask(name, operation)
            self._tasks[name] = task
            thread = threading.Thread(target=self._run, args=(task, work), name=f"dataset-{operation}-{name}",
                                      daemon=True)
            self._threads[name] = thread
            snapshot = dataclasses.replace(task)  # before the thread can change it
        self._publish(task, {"event": "started"})
        log.info("dataset %s: %s started", name, operation)
        thread.start()
        return snapshot

    def wait(self, name: str, timeout_s: float) -> DatasetTask | None:
        """Block until the dataset's current operation ends (for tests and scripts)."""
        thread = self._threads.get(name)
        if thread is not None:
            thread.join(timeout_s)
        return self.get(name)

    def _run(self, task: DatasetTask, work: Callable[[Callable[[Progress], None]], Any]) -> None:
        def on_progress(progress: Progress) -> None:
            event = {**dataclasses.asdict(progress), "fraction": progress.fraction}
            with self._lock:
                task.progress = event
            self._publish(task, {"event": "progress", **event})

        try:
            result = work(on_progress)
        except Exception as err:  # the thread's only reporter is this event and the task state
            with self._lock:
                task.state, task.error, task.finished = "failed", f"{type(err).__name__}: {err}", time.time()
            log.warning("dataset %s: %s failed: %s", task.name, task.operation, task.error)
            self._publish(task, {"event": "failed", "error": task.error})
            return
        with self._lock:
            task.state, task.finished = "completed", time.time()
            task.result = str(result) if result is not None else None
        log.info("dataset %s: %s completed", task.name, task.operation)
        self._publish(task, {"event": "completed", "result": task.result})

    def _publish(self, task: DatasetTask, event: dict[str, Any]) -> None:
        self.hub.publish_threadsafe(f"dataset:{task.name}", {
            "dataset": task.name, "operation": task.operation, "time": round(time.time(), 3), **event,
        })
