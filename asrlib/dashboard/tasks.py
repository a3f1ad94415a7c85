"""Run the tabs' work as asyncio tasks on the kernel's event loop.

Widget callbacks are synchronous and run on the kernel's main thread; a blocking HTTP call there
would freeze the page's live updates. Each action is therefore a coroutine that runs blocking
client calls in a worker thread (`to_thread`) and touches widgets only on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import ipywidgets as widgets

from asrlib.dashboard.backend import describe_error
from asrlib.dashboard.ui import StatusLine

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskRunner:
    """Start coroutines, keep them referenced until done, and show their failures in a status line."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, status: StatusLine | None = None,
              busy: Iterable[widgets.Widget] = ()) -> asyncio.Task[Any]:
        """Run `coroutine`; `busy` widgets are disabled meanwhile; an exception becomes a message in `status`."""
        busy_widgets = list(busy)
        task = asyncio.get_event_loop().create_task(self._guard(coroutine, status, busy_widgets))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coroutine: Coroutine[Any, Any, Any], status: StatusLine | None,
                     busy: list[widgets.Widget]) -> None:
        for widget in busy:
            widget.disabled = True
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as err:  # shown to the user; tracebacks of unexpected errors go to the kernel log
            problem = describe_error(err, self.base_url)
            log.info("dashboard action failed: %s", problem.text or problem.key)
            if status is not None:
                status.show_problem(problem)
        finally:
            for widget in busy:
                widget.disabled = False

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking function (an HTTP request) in a worker thread and return its result."""
    return await asyncio.to_thread(function, *args, **kwargs)
