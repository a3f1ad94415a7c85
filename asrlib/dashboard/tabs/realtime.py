"""Realtime tab: live microphone transcription with partial results and a level meter.

The browser's microphone widget sends 16 kHz int16 chunks to this kernel, which relays them to
the API's `/ws/asr`. Where the page has no microphone (plain http on another host), a file can be
streamed through the same endpoint at its real-time pace instead.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

import ipywidgets as widgets
import numpy as np

from asrlib.audio import load_audio
from asrlib.dashboard.backend import Problem, describe_detail
from asrlib.dashboard.context import Context
from asrlib.dashboard.formatting import format_number
from asrlib.dashboard.mic import CHUNK_MS, SAMPLE_RATE, MicrophoneWidget
from asrlib.dashboard.realtime import RealtimeRelay, Transcript
from asrlib.dashboard.selection import replace_options
from asrlib.dashboard.tabs.inference import ACCEPT, model_label
from asrlib.dashboard.tasks import call
from asrlib.dashboard.ui import StatusLine, heading


def pcm16_chunks(samples: np.ndarray, chunk_samples: int) -> list[bytes]:
    """Cut float samples in [-1, 1] into little-endian int16 chunks of `chunk_samples` (the last may be shorter)."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    pcm = np.where(clipped < 0, clipped * 32768, clipped * 32767).astype("<i2")
    return [pcm[i : i + chunk_samples].tobytes() for i in range(0, len(pcm), chunk_samples)]


class RealtimeTab(widgets.VBox):
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.add_class("asr-tab-realtime")
        self.context = context
        self.messages = t = context.messages
        self.status = StatusLine(t)
        self.transcript = Transcript()
        self.relay: RealtimeRelay | None = None
        self._opening: asyncio.Task[Any] | None = None

        self.model = widgets.Dropdown(options=[], layout=widgets.Layout(width="34em"),
                                      style={"description_width": "8em"})
        self.model.add_class("asr-realtime-model")
        t.bind(self.model, "description", "inference.model")
        refresh = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(refresh, "description", "common.refresh")
        refresh.on_click(lambda _b: self.reload())

        self.mic = MicrophoneWidget()
        self.mic.add_class("asr-mic-widget")
        t.bind(self.mic, "start_label", "realtime.start")
        t.bind(self.mic, "stop_label", "realtime.stop")
        self.mic.on_audio(self._on_audio)
        self.mic.on_event(self._on_mic_event)
        self.mic.observe(lambda _c: self._render_support(), names="support")
        self.support_note = widgets.HTML()
        self.support_note.add_class("asr-mic-support")

        self.file_upload = widgets.FileUpload(accept=ACCEPT, multiple=False, layout=widgets.Layout(width="14em"))
        self.file_upload.add_class("asr-realtime-upload")
        t.bind(self.file_upload, "description", "realtime.stream_file")
        self.file_upload.observe(self._file_chosen, names="value")

        self.live = widgets.HTML()
        self.live.add_class("asr-live-transcript")
        self.latency = widgets.HTML()
        self.latency.add_class("asr-latency")
        self.clear_button = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(self.clear_button, "description", "realtime.clear")
        self.clear_button.on_click(lambda _b: self._clear())

        self.children = [
            widgets.HBox([self.model, refresh]),
            heading(t, "realtime.microphone"), self.mic, self.support_note,
            heading(t, "realtime.file_heading"), self.file_upload,
            self.status, heading(t, "realtime.transcript"), self.live, self.latency, self.clear_button,
        ]
        context.on_changed("models", self.reload)
        t.on_change(self._render_support)
        t.on_change(self._render_transcript)
        self._render_support()
        self._render_transcript()

    # ------------------------------------------------------------------ models

    def reload(self) -> None:
        self.context.runner.spawn(self._reload(), status=self.status)

    async def _reload(self) -> None:
        models = await call(self.context.client.list_models, sort="created", descending=True)
        # Streaming models first: they were trained for chunked input.
        ordered = sorted(models, key=lambda m: m.model_type != "realtime")
        replace_options(self.model, [(model_label(m), m.name) for m in ordered])
        self.mic.disabled = not models
        if not models:
            self.status.show("inference.no_models", kind="warning")

    # ------------------------------------------------------------------ microphone

    def _render_support(self) -> None:
        support = self.mic.support
        if support in ("", "ok"):
            key = "mic.checking" if support == "" else "realtime.mic_ready"
        elif support == "insecure":
            key = "mic.unavailable"
        else:
            key = "mic.unsupported"
        color = "#555" if support in ("", "ok") else "#8a5a00"
        self.support_note.value = f"<span style='color:{color}'>{html.escape(self.messages.t(key))}</span>"
        self.mic.note = self.messages.t("realtime.mic_hint") if support == "ok" else ""

    def _on_mic_event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "started":
            self._start_relay()
        elif kind == "stopped":
            self.context.runner.spawn(self._finish_relay(), status=self.status)
        elif kind == "error":
            # NotAllowedError: the user or a policy refused the microphone; NotFoundError: no device.
            name = str(message.get("name") or "")
            key = {"NotAllowedError": "mic.denied", "NotFoundError": "mic.not_found"}.get(name, "mic.failed")
            self.status.show(key, kind="error", reason=f"{name}: {message.get('message', '')}")

    def _on_audio(self, chunk: bytes, _info: dict[str, Any]) -> None:
        if self.relay is not None:
            self.relay.send_audio(chunk)

    # ------------------------------------------------------------------ relay

    def _start_relay(self) -> None:
        model = self.model.value
        if not model:
            self.mic.stop()
            self.status.show("inference.no_models", kind="warning")
            return
        self.transcript.clear()
        self._render_transcript()
        relay = RealtimeRelay(self.context.base_url, model, self._on_result, sample_rate=SAMPLE_RATE,
                              on_closed=self._on_relay_closed)
        self.relay = relay
        self.status.show("realtime.connecting", model=model)
        self._opening = self.context.runner.spawn(self._open(relay), status=self.status)

    async def _open(self, relay: RealtimeRelay) -> None:
        try:
            await relay.open()
        except Exception:
            self.relay = None
            self.mic.stop()
            raise
        self.status.show("realtime.listening", kind="success", model=relay.model)

    async def _finish_relay(self) -> None:
        relay = self.relay
        if relay is None:
            return
        if self._opening is not None and not self._opening.done():
            await asyncio.wait([self._opening])
        await relay.finish()
        if self.relay is relay:
            self.relay = None
        self.status.show("realtime.ended", kind="info")

    def _on_result(self, message: dict[str, Any]) -> None:
        if message.get("type") == "status":
            # "loading model" on the first use of a model, then "ready".
            key = "realtime.loading_model" if message.get("detail") == "loading model" else "realtime.model_ready"
            self.status.show(key, kind="info", model=self.model.value or "")
            return
        if message.get("type") == "error":
            # The server's own explanation, shown as is like every API detail.
            detail = message.get("detail") or message.get("message") or message
            self.status.show_problem(Problem(text=describe_detail(detail)))
            return
        if self.transcript.apply(message):
            self._render_transcript()

    def _on_relay_closed(self, error: str | None) -> None:
        if error:
            self.status.show("realtime.connection_lost", kind="error", reason=error)
        if self.mic.active:
            self.mic.stop()

    # ------------------------------------------------------------------ file streaming

    def _file_chosen(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[0]
        self.context.runner.spawn(self._stream_file(upload["name"], bytes(upload["content"])), status=self.status,
                                  busy=[self.file_upload])

    async def _stream_file(self, name: str, data: bytes) -> None:
        """Send a file through /ws/asr in 100 ms chunks at real-time pace, as a microphone would."""
        model = self.model.value
        if not model:
            self.status.show("inference.no_models", kind="warning")
            return
        samples = await call(load_audio, data, SAMPLE_RATE, name=name)
        self.transcript.clear()
        self._render_transcript()
        relay = RealtimeRelay(self.context.base_url, model, self._on_result, sample_rate=SAMPLE_RATE,
                              on_closed=self._on_relay_closed)
        await relay.open()
        self.status.show("realtime.streaming_file", kind="success", name=name)
        chunk_samples = SAMPLE_RATE * CHUNK_MS // 1000
        for chunk in pcm16_chunks(samples.numpy(), chunk_samples):
            relay.send_audio(chunk)
            await asyncio.sleep(CHUNK_MS / 1000)
        await relay.finish()
        self.status.show("realtime.ended", kind="info")

    # ------------------------------------------------------------------ display

    def _clear(self) -> None:
        self.transcript.clear()
        self._render_transcript()

    def _render_transcript(self) -> None:
        final = html.escape(self.transcript.final_text)
        partial = html.escape(self.transcript.partial_text)
        if not final and not partial:
            body = f"<i style='color:#777'>{html.escape(self.messages.t('realtime.waiting'))}</i>"
        else:
            body = (f"<span class='asr-final'>{final}</span> "
                    f"<span class='asr-partial' style='color:#888;font-style:italic'>{partial}</span>")
        self.live.value = (f"<div style='font-size:1.3em;min-height:3em;padding:8px;background:#f4f6f8;"
                           f"border-radius:4px'>{body}</div>")
        latency = self.transcript.last_latency_ms
        self.latency.value = "" if latency is None else html.escape(
            self.messages.t("realtime.latency", ms=format_number(latency, 3)))
