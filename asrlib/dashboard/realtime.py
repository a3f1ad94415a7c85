"""The kernel's side of live transcription: relay audio chunks to the API's `/ws/asr` and collect its results.

Protocol of `/ws/asr` (asrlib.api.streaming): the client sends `{"type": "start", "model",
"sample_rate", "encoding"}` (encoding "pcm16" for raw little-endian int16 mono, or "webm-opus"),
then binary frames of audio, then `{"type": "end"}`. The server sends `{"type": "status",
"detail"}` while it loads the model, `{"type": "partial" | "final", "text", "utterance", "start",
"end", "latency_ms"}` as it decodes (a final replaces the partials of its utterance), and
`{"type": "error", "detail"}` before closing on a failure. After "end" it sends the last finals
and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 600  # 60 s of 100 ms chunks; a stalled server makes the oldest audio go first
FINISH_TIMEOUT_S = 10.0  # wait this long for the last final after "end"
END = object()  # queue marker: send "end" after the audio queued before it


def asr_url(base_url: str) -> str:
    """Return the ws:// (or wss://) URL of /ws/asr for an http(s):// API base URL."""
    scheme, netloc, path, _, _ = urlsplit(base_url)
    return urlunsplit(("wss" if scheme == "https" else "ws", netloc, path.rstrip("/") + "/ws/asr", "", ""))


@dataclass
class Utterance:
    text: str
    final: bool
    start: float | None = None
    end: float | None = None
    latency_ms: float | None = None


@dataclass
class Transcript:
    """Utterances by number: partial results are replaced until the final one arrives."""

    utterances: dict[int, Utterance] = field(default_factory=dict)
    last_latency_ms: float | None = None

    def apply(self, message: dict[str, Any]) -> bool:
        """Apply one server message; False for messages that are not results."""
        kind = message.get("type")
        if kind not in ("partial", "final"):
            return False
        number = message.get("utterance")
        if not isinstance(number, int):
            number = max(self.utterances, default=-1) + (0 if self._open_partial() else 1)
        previous = self.utterances.get(number)
        if previous is not None and previous.final and kind == "partial":
            return False  # a late partial must not overwrite the final text
        latency = message.get("latency_ms")
        self.utterances[number] = Utterance(str(message.get("text") or ""), kind == "final", message.get("start"),
                                            message.get("end"), latency)
        if isinstance(latency, (int, float)):
            self.last_latency_ms = float(latency)
        return True

    def _open_partial(self) -> bool:
        return bool(self.utterances) and not self.utterances[max(self.utterances)].final

    @property
    def final_text(self) -> str:
        return " ".join(u.text for _, u in sorted(self.utterances.items()) if u.final and u.text).strip()

    @property
    def partial_text(self) -> str:
        return " ".join(u.text for _, u in sorted(self.utterances.items()) if not u.final and u.text).strip()

    def clear(self) -> None:
        self.utterances.clear()
        self.last_latency_ms = None


class RealtimeRelay:
    """One `/ws/asr` session: `send_audio` may be called from widget callbacks; results go to `on_message`."""

    def __init__(self, base_url: str, model: str, on_message: Callable[[dict[str, Any]], None], *,
                 sample_rate: int = 16000, encoding: str = "pcm16",
                 on_closed: Callable[[str | None], None] | None = None) -> None:
        self.url = asr_url(base_url)
        self.model = model
        self.sample_rate = sample_rate
        self.encoding = encoding
        self.on_message = on_message
        self.on_closed = on_closed
        self.dropped_chunks = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_CHUNKS)
        self._socket: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def open(self) -> None:
        """Connect and send the start message; raises on a refused connection or handshake."""
        self._socket = await connect(self.url, max_size=2**22, open_timeout=10)
        await self._socket.send(json.dumps({"type": "start", "model": self.model, "sample_rate": self.sample_rate,
                                            "encoding": self.encoding}))
        self._tasks = [asyncio.get_running_loop().create_task(self._send_loop()),
                       asyncio.get_running_loop().create_task(self._receive_loop())]

    def send_audio(self, chunk: bytes) -> None:
        if self._closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped_chunks += 1
        self._queue.put_nowait(chunk)

    async def finish(self, timeout_s: float = FINISH_TIMEOUT_S) -> None:
        """Send "end" after the queued audio, wait for the last finals and the server's close, then close."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(END)
        receiver = self._tasks[1] if len(self._tasks) > 1 else None
        if receiver is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(receiver), timeout_s)
        await self.close()

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close()

    async def _send_loop(self) -> None:
        assert self._socket is not None
        while True:
            item = await self._queue.get()
            if item is END:
                await self._socket.send(json.dumps({"type": "end"}))
                return
            await self._socket.send(item)

    async def _receive_loop(self) -> None:
        assert self._socket is not None
        error: str | None = None
        try:
            async for text in self._socket:
                if isinstance(text, bytes):
                    continue
                try:
                    message = json.loads(text)
                except ValueError:
                    log.warning("/ws/asr sent invalid JSON: %.200s", text)
                    continue
                if isinstance(message, dict):
                    self.on_message(message)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the connection dropped; the tab shows why
            error = f"{type(err).__name__}: {err}"
            log.info("/ws/asr connection ended: %s", error)
        finally:
            if self.on_closed is not None:
                self.on_closed(error)
