"""Logging set-up that stamps every record with the run or job id it belongs to."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("asrlib_run_id", default="-")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(run_id)s] %(name)s: %(message)s"


class _RunIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_id"):
            record.run_id = _run_id.get()
        return True


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once: one line per record with time, level and run id."""
    root = logging.getLogger()
    if any(getattr(h, "_asrlib", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_RunIdFilter())
    handler._asrlib = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def add_file_handler(path: str, level: int = logging.INFO) -> logging.Handler:
    """Also write log records to `path`, for example a run's `train.log`."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_RunIdFilter())
    handler.setLevel(level)
    logging.getLogger().addHandler(handler)
    package = logging.getLogger("asrlib")
    # Records below the package logger's level never reach any handler, so open it up to `level`.
    if package.getEffectiveLevel() > level:
        package.setLevel(level)
    return handler


def current_run_id() -> str:
    return _run_id.get()


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """Stamp every log record emitted inside the block with `run_id`."""
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)
