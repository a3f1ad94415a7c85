"""A small LRU cache of loaded Recognizers for /api/transcribe, which also reports the models in use."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from asrlib.inference import Recognizer
from asrlib.registry import ModelConflict, ModelNotFound, ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    recognizer: Recognizer
    sha256: str | None
    loaded_at: float
    last_used: float
    busy: int = 0


class RecognizerCache:
    """Keep up to `max_models` registry models loaded; the least recently used idle one goes first.

    A model is reloaded when its file's sha256 changed (deleted and registered again under the same
    name). While a transcription runs on a model, it counts as busy and cannot be unloaded. A busy
    model is never evicted, so the cache may contain more than `max_models` for a moment.
    """

    def __init__(self, registry: ModelRegistry, *, max_models: int = 2, device: str = "cpu") -> None:
        self.registry = registry
        self.max_models = max_models
        self.device = device
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # One lock for lookups and loads: loads are rare and take about a second, and a second
        # request for the same model must wait for the first load rather than start its own.
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Recognizer]:
        entry = self._acquire(name)
        try:
            yield entry.recognizer
        finally:
            with self._lock:
                entry.busy -= 1
                entry.last_used = time.time()

    def _acquire(self, name: str) -> _Entry:
        info = self.registry.get(name)  # ModelNotFound for an unknown name
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.sha256 != info.sha256:
                if entry.busy:
                    raise ModelConflict(f"model {name!r} changed on disk while a transcription uses it; retry")
                del self._entries[name]
                entry = None
            if entry is None:
                started = time.perf_counter()
                recognizer = Recognizer.from_checkpoint(info.path, device=self.device)
                entry = _Entry(recognizer, info.sha256, loaded_at=time.time(), last_used=time.time())
                self._entries[name] = entry
                log.info("loaded model %s for inference in %.1f s", name, time.perf_counter() - started)
                self._evict()
            self._entries.move_to_end(name)
            entry.busy += 1
            return entry

    def _evict(self) -> None:
        for name in list(self._entries):
            if len(self._entries) <= self.max_models:
                return
            if not self._entries[name].busy:
                del self._entries[name]
                log.info("unloaded model %s (least recently used)", name)

    def loaded(self) -> list[dict[str, object]]:
        with self._lock:
            return [{"name": name, "device": self.device, "loaded_at": e.loaded_at, "last_used": e.last_used,
                     "busy": e.busy} for name, e in self._entries.items()]

    def names(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotFound(f"model {name!r} is not loaded")
            if entry.busy:
                raise ModelConflict(f"model {name!r} is transcribing ({entry.busy} request(s)); retry when done")
            del self._entries[name]
        log.info("unloaded model %s on request", name)

    def rename(self, old: str, new: str) -> None:
        """Keep a loaded model loaded under its new registry name."""
        with self._lock:
            if old in self._entries:
                self._entries[new] = self._entries.pop(old)
