"""WebSocket /ws/asr on a real uvicorn server: transcripts, WebM/Opus, concurrency, errors, disconnects, loading.

The server is a FastAPI app with only the streaming router, serving the `tiny` realtime model
that tests/test_streaming.py overfits on three padded LJSpeech clips.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from asrlib.api import streaming
from asrlib.api.streaming import OutboundBuffer, StreamingService, StreamingServiceSettings
from asrlib.audio import load_audio, load_audio_with_rate
from asrlib.decoding import error_rates
from asrlib.inference import Recognizer
from asrlib.registry import ModelRegistry
from asrlib.streaming import StreamingModel
from tests.servers import serve_app
from tests.test_streaming import REALTIME_CLIPS, RealtimeRun, realtime_overfit

MODEL_NAME = "rt-tiny"
LOAD_DELAY_S = 4.0  # how long the test's model loader sleeps
MAX_SESSIONS = 4
RECV_TIMEOUT_S = 60


@dataclass(frozen=True)
class WsServer:
    url: str
    service: StreamingService
    run: RealtimeRun
    root: Path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Two shared cores: one intra-op thread per recognizer avoids oversubscription.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory, ljspeech_mini) -> Iterator[WsServer]:
    run = realtime_overfit(tmp_path_factory)
    root = run.run_dir.parent
    ModelRegistry(root).register(run.run_dir.name, name=MODEL_NAME)
    app = FastAPI()
    app.include_router(streaming.router)
    service = streaming.install_streaming(app, checkpoints_root=root,
                                          settings=StreamingServiceSettings(max_sessions=MAX_SESSIONS))
    with serve_app(app, lifespan="off") as port:
        yield WsServer(f"ws://127.0.0.1:{port}/ws/asr", service, run, root)


def _pcm16(samples: torch.Tensor) -> bytes:
    return (samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().astype("<i2").tobytes()


def _collect(ws: ClientConnection) -> tuple[list[dict], int | None]:
    """Read messages until the server closes; return them and the close code."""
    messages = []
    while True:
        try:
            messages.append(json.loads(ws.recv(timeout=RECV_TIMEOUT_S)))
        except ConnectionClosed as closed:
            return messages, closed.rcvd.code if closed.rcvd is not None else None


def _stream(url: str, start: dict, frames: list[bytes]) -> tuple[list[dict], int | None]:
    with connect(url, open_timeout=30) as ws:
        ws.send(json.dumps(start))
        for frame in frames:
            ws.send(frame)
        ws.send(json.dumps({"type": "end"}))
        return _collect(ws)


def _frames(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _finals_text(messages: list[dict]) -> str:
    return " ".join(m["text"] for m in messages if m["type"] == "final" and m["text"])


def _encode_webm_opus(samples: torch.Tensor, rate: int) -> bytes:
    """Encode mono samples as WebM/Opus at 48 kHz, as a browser MediaRecorder would send them."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = 64000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        frame = av.AudioFrame.from_ndarray(_pcm16_array(samples)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _pcm16_array(samples: torch.Tensor) -> np.ndarray:
    return (samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()


# ----------------------------------------------------------------- transcripts


def test_pcm16_stream_transcribes_clips(ws_server):
    for clip_id in REALTIME_CLIPS:
        samples = load_audio(ws_server.run.audio[clip_id], 16000)
        start = {"type": "start", "model": MODEL_NAME, "sample_rate": 16000, "encoding": "pcm16"}
        messages, code = _stream(ws_server.url, start, _frames(_pcm16(samples), 3200))  # 100 ms frames
        assert code == 1000, messages
        assert {"type": "status", "detail": "ready"} in messages
        assert _finals_text(messages) == ws_server.run.texts[clip_id]
        partials = [m for m in messages if m["type"] == "partial"]
        assert len(partials) >= int(samples.shape[0] / 16000 / 0.64) - 1
        for message in partials + [m for m in messages if m["type"] == "final"]:
            assert set(message) == {"type", "text", "utterance", "start", "end", "latency_ms"}
            assert 0 <= message["start"] <= message["end"]
            assert message["latency_ms"] >= 0
        assert messages[-1]["type"] == "final"


def test_native_rate_and_run_folder(ws_server):
    clip_id = REALTIME_CLIPS[1]
    samples, rate = load_audio_with_rate(ws_server.run.audio[clip_id])
    start = {"type": "start", "model": ws_server.run.run_dir.name, "sample_rate": rate}  # pcm16 is the default
    messages, code = _stream(ws_server.url, start, _frames(_pcm16(samples), 2 * rate // 50))  # 20 ms frames
    assert code == 1000, messages
    assert _finals_text(messages) == ws_server.run.texts[clip_id]


def test_webm_opus_stream(ws_server):
    clip_id = REALTIME_CLIPS[2]
    samples, rate = load_audio_with_rate(ws_server.run.audio[clip_id])
    webm = _encode_webm_opus(samples, rate)
    expected = Recognizer.from_checkpoint(ws_server.run.checkpoint).transcribe([webm])[0]
    assert expected.error is None
    start = {"type": "start", "model": MODEL_NAME, "encoding": "webm-opus"}
    messages, code = _stream(ws_server.url, start, _frames(webm, 1500))
    assert code == 1000, messages
    assert _finals_text(messages) == " ".join(expected.text.split())
    assert error_rates([ws_server.run.texts[clip_id]], [_finals_text(messages)]).cer <= 0.1
    assert len([m for m in messages if m["type"] == "partial"]) >= 3


def test_concurrent_sessions(ws_server):
    outcomes: dict[str, tuple[list[dict], int | None]] = {}

    def run(clip_id: str) -> None:
        samples = load_audio(ws_server.run.audio[clip_id], 16000)
        start = {"type": "start", "model": MODEL_NAME, "sample_rate": 16000, "encoding": "pcm16"}
        outcomes[clip_id] = _stream(ws_server.url, start, _frames(_pcm16(samples), 1600))

    threads = [threading.Thread(target=run, args=(clip_id,)) for clip_id in REALTIME_CLIPS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for clip_id in REALTIME_CLIPS:
        messages, code = outcomes[clip_id]
        assert code == 1000, messages
        assert _finals_text(messages) == ws_server.run.texts[clip_id]


# ----------------------------------------------------------------- errors


def _start(model=MODEL_NAME, **fields) -> str:
    return json.dumps({"type": "start", "model": model, "sample_rate": 16000, "encoding": "pcm16", **fields})


@pytest.mark.parametrize(
    ("frames", "code", "detail"),
    [
        ([_start(), b"\x00\x01\x02"], 1007, "even byte count"),
        (["hello"], 1007, "not JSON"),
        ([_start(), "{not json"], 1007, "not JSON"),
        (["[1, 2]"], 1007, "JSON object"),
        ([b"\x00\x00"], 1008, "before the start message"),
        ([_start(encoding="flac")], 1003, "unknown encoding"),
        ([_start(sample_rate="16k")], 1008, "invalid sample_rate"),
        ([_start(language="en")], 1008, "unknown key"),
        ([json.dumps({"type": "end"})], 1008, "start message first"),
        ([_start(model="no-such-model")], 1008, "not found"),
        ([_start(model="/etc")], 1008, "outside the checkpoints folder"),
        ([_start(model="../..")], 1008, "outside the checkpoints folder"),
        ([_start(), json.dumps({"type": "start"})], 1008, "unexpected message type"),
    ],
)
def test_malformed_frames_closed_with_error(ws_server, frames, code, detail):
    with connect(ws_server.url, open_timeout=30) as ws:
        for frame in frames:
            ws.send(frame)
        messages, close_code = _collect(ws)
    assert close_code == code, messages
    assert messages[-1]["type"] == "error"
    assert detail in messages[-1]["detail"]
    assert all(m["type"] in ("status", "error") for m in messages)


def test_conformer_checkpoint_rejected(ws_server, tmp_path):
    # A model of the wrong type loads, then fails with a clear message.
    from asrlib import checkpoints as ckpt
    from asrlib.config import load_settings, resolve_run_config
    from asrlib.models import build_model
    from asrlib.text import CharTokenizer
    from tests.conftest import REPO_ROOT

    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), model_type="conformer", preset="tiny")
    tokenizer = CharTokenizer(config.text.charset)
    folder = ws_server.root / "conformer-check"
    folder.mkdir(exist_ok=True)
    ckpt.save_checkpoint(folder / "ckpt-0000000.pt", {"model": build_model(config, tokenizer.vocab_size).state_dict(),
                                                      "config": config.to_dict(), "tokenizer": tokenizer.to_dict()},
                         step=0, epoch=0)
    with connect(ws_server.url, open_timeout=30) as ws:
        ws.send(_start(model="conformer-check/ckpt-0000000.pt"))
        messages, code = _collect(ws)
    assert code == 1011, messages
    assert "needs a realtime model" in messages[-1]["detail"]


def test_busy_when_sessions_full(ws_server):
    _wait_for_sessions(ws_server.service, 0)  # sessions of earlier tests end just after their close
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(ws_server.url, open_timeout=30)) for _ in range(MAX_SESSIONS)]
        for ws in idle:
            ws.send(_start())
            assert json.loads(ws.recv(timeout=RECV_TIMEOUT_S)) == {"type": "status", "detail": "ready"}
        with connect(ws_server.url, open_timeout=30) as ws:
            messages, code = _collect(ws)
        assert code == 1013
        assert "server busy" in messages[-1]["detail"]
    _wait_for_sessions(ws_server.service, 0)


# ----------------------------------------------------------------- disconnects and loading


def _wait_for_sessions(service: StreamingService, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while service.active_sessions != count:
        assert time.monotonic() < deadline, f"{service.active_sessions} sessions still open"
        time.sleep(0.05)


@pytest.mark.parametrize("abrupt", [False, True])
def test_disconnect_frees_session(ws_server, caplog, abrupt):
    caplog.set_level(logging.INFO, logger="asrlib.api.streaming")
    _wait_for_sessions(ws_server.service, 0)
    samples = load_audio(ws_server.run.audio[REALTIME_CLIPS[0]], 16000)
    with connect(ws_server.url, open_timeout=30) as ws:
        ws.send(_start())
        for frame in _frames(_pcm16(samples[:32000]), 3200):
            ws.send(frame)
        assert json.loads(ws.recv(timeout=RECV_TIMEOUT_S))["type"] == "status"
        assert ws_server.service.active_sessions == 1
        if abrupt:
            ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame, as when a browser tab dies
    _wait_for_sessions(ws_server.service, 0)
    time.sleep(0.3)  # the log line comes from the session's event-loop task
    lines = [r.getMessage() for r in caplog.records if "client disconnected" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "freeing the session" in lines[0]


def test_loading_status_reported(ws_server):
    # A copy of the checkpoint is a model the cache has not loaded; the loader takes 2 s.
    copy = ws_server.root / "slow-copy"
    copy.mkdir(exist_ok=True)
    for source in (ws_server.run.checkpoint, ws_server.run.checkpoint.with_suffix(".json")):
        shutil.copy(source, copy / source.name)

    def slow_loader(path, *, device="cpu"):
        time.sleep(LOAD_DELAY_S)
        return StreamingModel.from_checkpoint(path, device=device)

    original = ws_server.service.models.loader
    ws_server.service.models.loader = slow_loader
    try:
        clip_id = REALTIME_CLIPS[0]
        samples = load_audio(ws_server.run.audio[clip_id], 16000)
        start = {"type": "start", "model": f"slow-copy/{ws_server.run.checkpoint.name}", "sample_rate": 16000}
        started = time.monotonic()
        with connect(ws_server.url, open_timeout=30) as ws:
            ws.send(json.dumps(start))
            first = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
            # The status comes before the load ends, with a margin for a busy machine.
            assert time.monotonic() - started < LOAD_DELAY_S - 1.0
            # Audio sent while the model loads is queued and decoded afterwards.
            for frame in _frames(_pcm16(samples), 3200):
                ws.send(frame)
            ws.send(json.dumps({"type": "end"}))
            messages, code = _collect(ws)
    finally:
        ws_server.service.models.loader = original
    assert first == {"type": "status", "detail": "loading model"}
    assert messages[0] == {"type": "status", "detail": "ready"}
    assert code == 1000
    assert _finals_text(messages) == ws_server.run.texts[clip_id]


# ----------------------------------------------------------------- slow clients


def test_outbound_buffer_drops_partials_first():
    async def scenario() -> None:
        buffer = OutboundBuffer(3)
        assert buffer.push({"type": "partial", "text": "a"})
        assert buffer.push({"type": "final", "text": "a b"})
        assert buffer.push({"type": "partial", "text": "c"})
        assert buffer.push({"type": "partial", "text": "c d"})  # drops the partial "a"
        assert buffer.dropped_partials == 1
        assert [m["text"] for m in buffer._messages] == ["a b", "c", "c d"]
        assert buffer.push({"type": "final", "text": "c d e"})  # drops the partial "c"
        assert buffer.push({"type": "final", "text": "f"})  # drops the partial "c d"
        assert not buffer.push({"type": "final", "text": "g"})  # only finals wait: the session closes
        assert buffer.push({"type": "error", "detail": "x"}, force=True)
        assert [(await buffer.get())["text"] for _ in range(3)] == ["a b", "c d e", "f"]
        assert (await buffer.get())["type"] == "error"

    asyncio.run(scenario())


def test_settings_validated():
    with pytest.raises(ValueError, match="max_sessions"):
        StreamingServiceSettings(max_sessions=0)
    with pytest.raises(ValueError, match="endpoint_silence_s"):
        StreamingServiceSettings(endpoint_silence_s=-1.0)
