"""WebSocket `/ws/asr`: streaming recognition sessions with a `realtime` model.

Protocol (JSON text frames and binary audio frames):

1. The client sends `{"type": "start", "model": NAME_OR_PATH, "sample_rate": 16000,
   "encoding": "pcm16" | "webm-opus"}`. `model` is a registry model name
   (`<checkpoints>/models/NAME.pt`), or a checkpoint file or run folder inside the checkpoints
   folder. `sample_rate` is the rate of pcm16 audio (required for pcm16, ignored for WebM,
   whose container states it). `encoding` defaults to pcm16.
2. The server sends `{"type": "status", "detail": "loading model"}` when the model is not in
   memory yet, then `{"type": "status", "detail": "ready"}` once it is.
3. The client sends binary frames: little-endian 16-bit mono PCM (an even number of bytes per
   frame), or consecutive pieces of one WebM/Opus stream as a browser MediaRecorder writes it.
   Audio sent while the model loads is queued and decoded afterwards.
4. The server sends `{"type": "partial" | "final", "text", "utterance", "start", "end",
   "latency_ms"}` per decoded chunk and per utterance closed by endpointing. `start` and `end`
   are seconds of stream audio. `latency_ms` runs from the arrival of the audio frame whose
   processing produced the message to the moment the message is queued for sending.
5. The client sends `{"type": "end"}`; the server decodes what remains, sends the last finals
   and closes with code 1000. A client may also just close the socket; then nothing more is
   sent and the session is freed.

Errors are sent as `{"type": "error", "detail"}`, followed by a close with a standard code:

- 1003: an unknown encoding;
- 1007: invalid data (a text frame that is not JSON, an odd byte count for pcm16, WebM that
  cannot be decoded);
- 1008: a protocol violation (binary before start, an unknown message, a frame over
  `max_frame_bytes`, a model that is not found or lies outside the checkpoints folder, a
  timeout, a client that does not read its results);
- 1011: the model failed to load, or recognition failed;
- 1013: `max_sessions` sessions are open.

Memory per session is bounded in both directions. Inbound, at most `inbound_queue_frames`
audio frames wait for the recognizer; while that queue is full the server stops reading the
socket, so a client sending faster than recognition runs is slowed down by TCP flow control.
Outbound, at most `outbound_queue_messages` results wait for a client that reads slowly; when
the queue is full the oldest waiting partial is dropped (a later partial or final supersedes
it), and if only finals and errors are waiting the session is closed with code 1008.

Mount the router with `app.include_router(streaming.router)`. Its service is created on first
use from `app.state.api` when the workbench API set that up, or explicitly with
`install_streaming(app, checkpoints_root=...)`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import numpy as np
from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from asrlib.streaming import (
    StreamingModel,
    StreamingOptions,
    StreamingRecognizer,
    StreamingResult,
    resolve_streaming_model,
)

log = logging.getLogger(__name__)

__all__ = ["StreamingService", "StreamingServiceSettings", "get_streaming_service", "install_streaming", "router"]

router = APIRouter()

ENCODINGS = ("pcm16", "webm-opus")
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
START_KEYS = frozenset({"type", "model", "sample_rate", "encoding"})
# RFC 6455 close codes.
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
MAX_CLOSE_REASON_BYTES = 123  # a close frame's reason is at most 123 bytes
WORKER_POLL_S = 0.2  # how often a blocked session thread checks whether the session was aborted
INBOUND_POLL_S = 0.005  # how often the receiver retries a full inbound queue
# How long an error message and close may take to reach a client. Without a limit, a client that
# does not read would keep its session open.
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class StreamingServiceSettings:
    """Limits and defaults of the `/ws/asr` service."""

    max_sessions: int = 8  # open sessions; the next one is closed with code 1013
    max_loaded_models: int = 2  # models kept in memory, evicting the least recently requested
    device: str = "cpu"  # torch device of the models
    compute_slots: int = 2  # recognizer steps that run at the same time across all sessions
    inbound_queue_frames: int = 64  # audio frames waiting for the recognizer, per session
    outbound_queue_messages: int = 64  # results waiting for the client, per session
    max_frame_bytes: int = 1 << 20  # largest binary or text frame accepted
    start_timeout_s: float = 10.0  # time allowed between connecting and the start message
    idle_timeout_s: float = 60.0  # time allowed between two frames before the end message
    endpoint_silence_s: float | None = 0.8  # see StreamingOptions
    max_utterance_s: float | None = 30.0  # see StreamingOptions

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_loaded_models", "compute_slots", "inbound_queue_frames",
                     "outbound_queue_messages", "max_frame_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("start_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        StreamingOptions(endpoint_silence_s=self.endpoint_silence_s, max_utterance_s=self.max_utterance_s)


ModelLoader = Callable[..., StreamingModel]  # loader(path, device=...) -> StreamingModel


class _ModelCache:
    """Loads models in a background thread and keeps the most recently requested ones.

    Entries are keyed by path, modification time and size, so a checkpoint replaced on disk is
    loaded again. A failed load is not kept, so the next request retries it.
    """

    def __init__(self, loader: ModelLoader, *, max_models: int, device: str) -> None:
        self.loader = loader
        self.max_models = max_models
        self.device = device
        self._entries: collections.OrderedDict[tuple[str, int, int], concurrent.futures.Future] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-model-load")

    def get(self, path: Path) -> concurrent.futures.Future:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            future = self._entries.get(key)
            if future is not None and future.done() and future.exception() is not None:
                del self._entries[key]
                future = None
            if future is None:
                future = self._executor.submit(self.loader, path, device=self.device)
                self._entries[key] = future
            self._entries.move_to_end(key)
            # Sessions keep a reference to their model, so dropping an entry never breaks one.
            while len(self._entries) > self.max_models:
                self._entries.popitem(last=False)
            return future


class StreamingService:
    """The state `/ws/asr` shares between sessions: settings, the model cache and session slots.

    Args:
        checkpoints_root: folder of run folders and the registry's `models/`; model paths sent by
            clients must lie inside it.
        settings: limits and defaults.
        loader: loads a checkpoint file into a StreamingModel; tests pass a slow one.
    """

    def __init__(
        self,
        checkpoints_root: str | os.PathLike[str],
        settings: StreamingServiceSettings | None = None,
        *,
        loader: ModelLoader = StreamingModel.from_checkpoint,
    ) -> None:
        self.checkpoints_root = Path(checkpoints_root).resolve()
        self.settings = settings or StreamingServiceSettings()
        self.models = _ModelCache(loader, max_models=self.settings.max_loaded_models, device=self.settings.device)
        self.compute = threading.Semaphore(self.settings.compute_slots)
        self._lock = threading.Lock()
        self._active = 0
        self._ids = itertools.count(1)

    @property
    def active_sessions(self) -> int:
        with self._lock:
            return self._active

    def acquire_session(self) -> int | None:
        """Reserve a session slot and return the session id, or None when all slots are taken."""
        with self._lock:
            if self._active >= self.settings.max_sessions:
                return None
            self._active += 1
            return next(self._ids)

    def release_session(self) -> None:
        with self._lock:
            self._active -= 1

    def options(self) -> StreamingOptions:
        return StreamingOptions(endpoint_silence_s=self.settings.endpoint_silence_s,
                                max_utterance_s=self.settings.max_utterance_s)


SERVICE_ATTRIBUTE = "asr_streaming"  # the attribute of app.state that contains the StreamingService


def install_streaming(
    app: FastAPI,
    *,
    checkpoints_root: str | os.PathLike[str] | None = None,
    settings: StreamingServiceSettings | None = None,
    loader: ModelLoader = StreamingModel.from_checkpoint,
) -> StreamingService:
    """Create the service of `/ws/asr` for `app` and store it in `app.state`.

    The checkpoints folder defaults to the workbench API's (`app.state.api.checkpoints_root`),
    else to `paths.checkpoints` of config.yaml; the device defaults to the API's
    `inference_device`.
    """
    api_state = getattr(app.state, "api", None)
    if checkpoints_root is None:
        checkpoints_root = getattr(api_state, "checkpoints_root", None)
    if checkpoints_root is None:
        from asrlib.config import checkpoints_dir

        checkpoints_root = checkpoints_dir()
    if settings is None:
        device = getattr(getattr(api_state, "api", None), "inference_device", None)
        settings = replace(StreamingServiceSettings(), device=device) if device else StreamingServiceSettings()
    service = StreamingService(checkpoints_root, settings, loader=loader)
    setattr(app.state, SERVICE_ATTRIBUTE, service)
    return service


_install_lock = threading.Lock()


def get_streaming_service(app: FastAPI) -> StreamingService:
    """Return the app's StreamingService, creating it with `install_streaming` defaults on first use."""
    with _install_lock:
        service = getattr(app.state, SERVICE_ATTRIBUTE, None)
        return service if service is not None else install_streaming(app)


@router.websocket("/ws/asr")
async def asr_stream(websocket: WebSocket) -> None:
    """Run one streaming recognition session (the protocol is in the module docstring)."""
    service = get_streaming_service(websocket.app)
    await websocket.accept()
    session_id = service.acquire_session()
    if session_id is None:
        log.warning("ASR stream rejected: all %d sessions are open", service.settings.max_sessions)
        await _send_error_and_close(websocket, f"server busy: {service.settings.max_sessions} sessions are open; "
                                    "retry later", CLOSE_TRY_LATER)
        return
    try:
        await _Session(websocket, service, session_id).run()
    finally:
        service.release_session()


async def _send_error_and_close(websocket: WebSocket, detail: str, code: int) -> None:
    """Send an error message and close the socket, ignoring a client that is already gone."""
    with contextlib.suppress(Exception):
        await websocket.send_json({"type": "error", "detail": detail})
    with contextlib.suppress(Exception):
        await websocket.close(code, reason=detail.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore"))


class ProtocolError(Exception):
    """A client message that breaks the protocol; `code` is the close code to send."""

    def __init__(self, detail: str, code: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


@dataclass(frozen=True)
class StartRequest:
    model: str
    sample_rate: int | None
    encoding: str


def parse_start(message: dict[str, Any]) -> StartRequest:
    """Validate a start message; raise ProtocolError with the close code on a bad one."""
    if message.get("type") != "start":
        raise ProtocolError(f"expected a start message first, got type {message.get('type')!r}", CLOSE_POLICY)
    unknown = sorted(set(message) - START_KEYS)
    if unknown:
        raise ProtocolError(f"unknown key {unknown[0]!r} in the start message; valid keys: "
                            f"{', '.join(sorted(START_KEYS))}", CLOSE_POLICY)
    model = message.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ProtocolError("the start message needs `model`: a registry model name, a checkpoint or a run folder",
                            CLOSE_POLICY)
    encoding = message.get("encoding", "pcm16")
    if encoding not in ENCODINGS:
        raise ProtocolError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}", CLOSE_UNSUPPORTED)
    rate = message.get("sample_rate")
    if encoding == "pcm16" or rate is not None:
        if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise ProtocolError(f"invalid sample_rate {rate!r}; send an integer from {MIN_SAMPLE_RATE} to "
                                f"{MAX_SAMPLE_RATE} Hz", CLOSE_POLICY)
    return StartRequest(model.strip(), rate, encoding)


class _Aborted(Exception):
    """The session ended (client gone or error) while its thread was waiting."""


@dataclass(frozen=True)
class _Audio:
    data: bytes
    received: float  # time.monotonic() at arrival


_END = object()  # inbound: the client sent {"type": "end"}
_CLOSE = "close"  # outbound: the key of the message that closes the socket


class OutboundBuffer:
    """Bounded FIFO of messages for one client. When it is full, the oldest partial is dropped.

    `push` returns False when the buffer is full of messages that must not be dropped.
    Used from the event loop only.
    """

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self.dropped_partials = 0
        self._messages: collections.deque[dict[str, Any]] = collections.deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._messages)

    def push(self, message: dict[str, Any], *, force: bool = False) -> bool:
        """Queue a message; `force` queues it past the limit (the closing messages)."""
        if len(self._messages) >= self.max_messages and not force:
            oldest_partial = next((m for m in self._messages if m.get("type") == "partial"), None)
            if oldest_partial is None:
                return False
            self._messages.remove(oldest_partial)
            self.dropped_partials += 1
        self._messages.append(message)
        self._ready.set()
        return True

    async def get(self) -> dict[str, Any]:
        while not self._messages:
            self._ready.clear()
            await self._ready.wait()
        return self._messages.popleft()


class _InboundReader:
    """A file-like `read` over the session's inbound queue, for PyAV's WebM demuxer.

    `read` blocks until bytes arrive, returns b"" after the end message, and raises _Aborted
    when the session ends. It has no `seek`, so FFmpeg treats the input as a live stream.
    """

    def __init__(self, session: _Session) -> None:
        self.session = session
        self._buffer = b""
        self._ended = False
        self.last_received = time.monotonic()

    def read(self, size: int = -1) -> bytes:
        while not self._buffer:
            if self._ended:
                return b""
            item = self.session.next_inbound()
            if item is _END:
                self._ended = True
                return b""
            self._buffer = item.data
            self.last_received = item.received
        size = len(self._buffer) if size is None or size < 0 else size
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _decode_webm(reader: _InboundReader) -> Iterator[tuple[np.ndarray, int]]:
    """Decode a WebM/Opus byte stream incrementally; yield mono float32 samples and their rate.

    Channels are averaged after conversion to planar float and samples are clipped to [-1, 1],
    as `asrlib.audio.load_audio` does, so streamed and uploaded WebM decode to the same samples.
    """
    with av.open(reader, mode="r", format="webm") as container:
        if not container.streams.audio:
            raise ValueError("the WebM stream has no audio track")
        stream = container.streams.audio[0]
        converter: av.AudioResampler | None = None
        for packet in container.demux(stream):
            for frame in packet.decode():
                if converter is None:
                    converter = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.sample_rate)
                for converted in converter.resample(frame):
                    yield np.clip(converted.to_ndarray().mean(axis=0), -1.0, 1.0), converted.sample_rate
        if converter is not None:
            for converted in converter.resample(None):
                yield np.clip(converted.to_ndarray().mean(axis=0), -1.0, 1.0), converted.sample_rate


class _Session:
    """One `/ws/asr` connection: a receiver and a sender on the event loop, a recognizer thread."""

    def __init__(self, websocket: WebSocket, service: StreamingService, session_id: int) -> None:
        self.websocket = websocket
        self.service = service
        self.id = session_id
        self.settings = service.settings
        self.loop = asyncio.get_running_loop()
        self.inbound: queue.Queue[_Audio | object] = queue.Queue(self.settings.inbound_queue_frames)
        self.outbound = OutboundBuffer(self.settings.outbound_queue_messages)
        self.aborted = threading.Event()
        self.request: StartRequest | None = None
        self.audio_seconds = 0.0  # updated by the recognizer thread, read for the log lines
        self.utterances = 0
        self._sender: asyncio.Task | None = None

    # ----------------------------------------------------------------- event loop side

    async def run(self) -> None:
        try:
            self.request = await self._receive_start()
            model_path = resolve_streaming_model(self.request.model, self.service.checkpoints_root,
                                                 confine_to_root=True)
            future = self.service.models.get(model_path)
        except ProtocolError as err:
            log.info("ASR stream %d: rejected before start, closing with %d: %s", self.id, err.code, err.detail)
            await _send_error_and_close(self.websocket, err.detail, err.code)
            return
        except (ValueError, OSError) as err:  # model not found, outside the root, unreadable
            log.info("ASR stream %d: model %r rejected: %s", self.id, self.request.model if self.request else None, err)
            await _send_error_and_close(self.websocket, str(err), CLOSE_POLICY)
            return
        except WebSocketDisconnect:
            return
        if not future.done():
            try:
                await self.websocket.send_json({"type": "status", "detail": "loading model"})
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
        log.debug("ASR stream %d: started with %s (%s)", self.id, model_path, self.request.encoding)

        worker = threading.Thread(target=self._work, args=(future,), name=f"asr-stream-{self.id}", daemon=True)
        worker.start()
        self._sender = sender = asyncio.create_task(self._send_loop())
        receiver = asyncio.create_task(self._receive_loop())
        try:
            # The sender ends after the close message: at the end of the stream, or after a
            # protocol error that the receiver or the recognizer thread queued. The receiver
            # ends on a disconnect, after which nothing can be sent, or on a protocol error.
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done and not receiver.cancelled() and receiver.exception() is None:
                if receiver.result() == "error":
                    await asyncio.wait({sender}, timeout=CLOSE_TIMEOUT_S)
            elif receiver in done and not receiver.cancelled():
                log.error("ASR stream %d: receiving failed: %r", self.id, receiver.exception())
        finally:
            self.aborted.set()
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            await asyncio.to_thread(worker.join, 5.0)

    async def _receive_start(self) -> StartRequest:
        try:
            message = await asyncio.wait_for(self.websocket.receive(), self.settings.start_timeout_s)
        except TimeoutError:
            raise ProtocolError(f"no start message within {self.settings.start_timeout_s:g} s", CLOSE_POLICY) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("bytes") is not None:
            raise ProtocolError("binary frame before the start message; send the start message first", CLOSE_POLICY)
        return parse_start(self._parse_json(message.get("text") or ""))

    def _parse_json(self, text: str) -> dict[str, Any]:
        if len(text) > self.settings.max_frame_bytes:
            raise ProtocolError(f"text frame of {len(text)} characters exceeds max_frame_bytes "
                                f"({self.settings.max_frame_bytes})", CLOSE_POLICY)
        try:
            message = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProtocolError(f"text frame is not JSON ({err.msg} at position {err.pos})",
                                CLOSE_INVALID_DATA) from None
        if not isinstance(message, dict):
            raise ProtocolError(f"expected a JSON object, got {type(message).__name__}", CLOSE_INVALID_DATA)
        return message

    async def _receive_loop(self) -> str:
        """Queue frames for the recognizer thread; return "disconnected" or, after a protocol error, "error".

        After the end message the loop only watches for a disconnect.
        """
        ended = False
        while True:
            try:
                timeout = None if ended else self.settings.idle_timeout_s
                message = await asyncio.wait_for(self.websocket.receive(), timeout)
            except TimeoutError:
                return self._fail(f"no data for {self.settings.idle_timeout_s:g} s; send audio or the end message",
                                  CLOSE_POLICY)
            if message["type"] == "websocket.disconnect":
                if not ended:
                    log.info("ASR stream %d: client disconnected after %.1f s of audio; freeing the session",
                             self.id, self.audio_seconds)
                return "disconnected"
            try:
                item = self._check_frame(message, ended)
            except ProtocolError as err:
                return self._fail(err.detail, err.code)
            if item is _END:
                ended = True
            while True:
                try:
                    self.inbound.put_nowait(item)
                    break
                except queue.Full:
                    # Backpressure: not reading the socket makes TCP slow the client down.
                    if self.aborted.is_set():
                        return "error"
                    await asyncio.sleep(INBOUND_POLL_S)

    def _check_frame(self, message: dict[str, Any], ended: bool) -> _Audio | object:
        data = message.get("bytes")
        if data is not None:
            if ended:
                raise ProtocolError("binary frame after the end message", CLOSE_POLICY)
            if len(data) > self.settings.max_frame_bytes:
                raise ProtocolError(f"binary frame of {len(data)} bytes exceeds max_frame_bytes "
                                    f"({self.settings.max_frame_bytes})", CLOSE_POLICY)
            if self.request.encoding == "pcm16" and len(data) % 2:
                raise ProtocolError(f"pcm16 frame of {len(data)} bytes: 16-bit samples need an even byte count",
                                    CLOSE_INVALID_DATA)
            return _Audio(data, time.monotonic())
        kind = self._parse_json(message.get("text") or "").get("type")
        if kind == "end" and not ended:
            return _END
        raise ProtocolError(f"unexpected message type {kind!r}" + (" after the end message" if ended else
                                                                    "; only binary audio and end may follow start"),
                            CLOSE_POLICY)

    def _fail(self, detail: str, code: int) -> str:
        """Queue an error and the close, stop the recognizer thread, and return "error"."""
        log.info("ASR stream %d: closing with %d: %s", self.id, code, detail)
        self.aborted.set()
        self.outbound.push({"type": "error", "detail": detail}, force=True)
        self.outbound.push({_CLOSE: code, "detail": detail}, force=True)
        return "error"

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message from the recognizer thread; dropped when the event loop has stopped."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server shut down
            self.loop.call_soon_threadsafe(self._post, message)

    def _post(self, message: dict[str, Any]) -> None:
        if _CLOSE in message or message.get("type") == "error":
            self.outbound.push(message, force=True)
        elif not self.outbound.push(message):
            self._close_slow_client()

    def _close_slow_client(self) -> None:
        # NOTE: tests cover the drop policy on OutboundBuffer alone. No test makes a real client
        # stop reading long enough to fill the socket buffers and reach this path.
        if self.aborted.is_set():
            return
        detail = (f"the client is not reading results: {len(self.outbound)} messages are waiting "
                  f"(outbound_queue_messages = {self.settings.outbound_queue_messages})")
        log.warning("ASR stream %d: %s; closing", self.id, detail)
        self.aborted.set()
        self.loop.create_task(self._abort_slow_client(detail))

    async def _abort_slow_client(self, detail: str) -> None:
        # The sender is stuck in a send to this client. Cancelling it ends the session, and
        # uvicorn then closes the connection. The error and close frame go first if they can.
        self._sender.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_send_error_and_close(self.websocket, detail, CLOSE_POLICY), CLOSE_TIMEOUT_S)

    async def _send_loop(self) -> None:
        """Send queued messages until a close message; then close the socket."""
        while True:
            message = await self.outbound.get()
            if _CLOSE in message:
                code = message[_CLOSE]
                if code == CLOSE_NORMAL:
                    log.info("ASR stream %d: finished, %.1f s of audio, %d utterances, %d partials dropped",
                             self.id, self.audio_seconds, self.utterances, self.outbound.dropped_partials)
                if self.websocket.client_state == WebSocketState.CONNECTED:
                    reason = message.get("detail", "")[:MAX_CLOSE_REASON_BYTES]
                    with contextlib.suppress(Exception):
                        await self.websocket.close(code, reason=reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(
                            errors="ignore"))
                return
            try:
                await self.websocket.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return

    # ----------------------------------------------------------------- recognizer thread side

    def next_inbound(self) -> _Audio | object:
        """Block until the next inbound item; raise _Aborted when the session ends."""
        while True:
            if self.aborted.is_set():
                raise _Aborted
            try:
                return self.inbound.get(timeout=WORKER_POLL_S)
            except queue.Empty:
                continue

    def _wait_model(self, future: concurrent.futures.Future) -> StreamingModel:
        while True:
            if self.aborted.is_set():
                raise _Aborted
            try:
                return future.result(timeout=WORKER_POLL_S)
            except concurrent.futures.TimeoutError:
                continue

    def _emit(self, results: list[StreamingResult], received: float) -> None:
        latency_ms = round((time.monotonic() - received) * 1000, 1)
        for result in results:
            self.utterances += result.type == "final"
            self.post({**result.to_dict(), "latency_ms": latency_ms})

    def _accept(self, recognizer: StreamingRecognizer, samples: np.ndarray, rate: int, received: float) -> None:
        with self.service.compute:
            results = recognizer.accept_waveform(samples, rate)
        self.audio_seconds = recognizer.audio_seconds
        self._emit(results, received)

    def _work(self, future: concurrent.futures.Future) -> None:
        """Recognizer thread: wait for the model, decode audio in order, finalize on the end message."""
        try:
            try:
                model = self._wait_model(future)
            except _Aborted:
                raise
            except Exception as err:
                log.exception("ASR stream %d: loading %s failed", self.id, self.request.model)
                self.post({"type": "error", "detail": f"failed to load model {self.request.model!r}: {err}"})
                self.post({_CLOSE: CLOSE_INTERNAL, "detail": "failed to load model"})
                return
            self.post({"type": "status", "detail": "ready"})
            recognizer = StreamingRecognizer(model, self.service.options())
            if self.request.encoding == "pcm16":
                received = self._work_pcm16(recognizer)
            else:
                received = self._work_webm(recognizer)
            if received is None:
                return
            with self.service.compute:
                finals = recognizer.finalize()
            self._emit(finals, received)
            self.post({_CLOSE: CLOSE_NORMAL, "detail": "end of stream"})
        except _Aborted:
            return
        except Exception as err:
            log.exception("ASR stream %d: recognition failed", self.id)
            self.post({"type": "error", "detail": f"recognition failed: {type(err).__name__}: {err}"})
            self.post({_CLOSE: CLOSE_INTERNAL, "detail": "recognition failed"})

    def _work_pcm16(self, recognizer: StreamingRecognizer) -> float | None:
        """Decode pcm16 frames until the end message; return the arrival time of the last frame."""
        received = time.monotonic()
        while True:
            item = self.next_inbound()
            if item is _END:
                return received
            received = item.received
            self._accept(recognizer, np.frombuffer(item.data, dtype="<i2").astype(np.float32) / 32768.0,
                         self.request.sample_rate, received)

    def _work_webm(self, recognizer: StreamingRecognizer) -> float | None:
        """Demux and decode WebM/Opus as it arrives; return the arrival time of the last piece."""
        reader = _InboundReader(self)
        try:
            for samples, rate in _decode_webm(reader):
                self._accept(recognizer, samples, rate, reader.last_received)
        except (av.FFmpegError, ValueError) as err:
            if self.aborted.is_set():
                raise _Aborted from None
            detail = f"cannot decode the WebM/Opus stream: {err}"
            log.info("ASR stream %d: %s", self.id, detail)
            self.post({"type": "error", "detail": detail})
            self.post({_CLOSE: CLOSE_INVALID_DATA, "detail": detail})
            return None
        return reader.last_received
