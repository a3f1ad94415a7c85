"""Inference tab: transcribe an uploaded or recorded clip; transcript, word timings, waveform and spectrogram."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import numpy as np

from asrlib.audio import detect_format, load_audio
from asrlib.dashboard.audioview import VIEW_WIDTH_PX, WaveformView, spectrogram_png, words_table_html
from asrlib.dashboard.context import Context
from asrlib.dashboard.formatting import format_bytes, format_number, format_percent, format_seconds
from asrlib.dashboard.mic import BrowserSupport
from asrlib.dashboard.selection import replace_options
from asrlib.dashboard.tasks import call
from asrlib.dashboard.ui import StatusLine, heading

ACCEPT = "audio/*,.wav,.flac,.ogg,.opus,.mp3,.webm,.m4a,.mp4,.aac"
VIEW_RATE = 16000  # Hz; the waveform and spectrogram are drawn at the models' rate
# detect_format names -> the `format` of an ipywidgets Audio player (its MIME subtype)
PLAYER_FORMATS = {"wav": "wav", "rf64": "wav", "flac": "flac", "ogg": "ogg", "mp3": "mpeg", "webm": "webm",
                  "matroska": "webm", "mp4": "mp4", "aac": "aac"}


@dataclass(frozen=True)
class Clip:
    name: str
    data: bytes

    @property
    def format(self) -> str | None:
        return detect_format(self.data[:4096])


def model_label(model: Any) -> str:
    """Return a dropdown label: name, model type and WER when known."""
    parts = [model.name]
    if model.model_type:
        parts.append(model.model_type)
    if model.wer is not None:
        parts.append(f"WER {format_percent(model.wer)}")
    return " · ".join(parts)


class InferenceTab(widgets.VBox):
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.add_class("asr-tab-inference")
        self.context = context
        self.messages = t = context.messages
        self.clip: Clip | None = None
        self.status = StatusLine(t)

        self.model = widgets.Dropdown(options=[], layout=widgets.Layout(width="34em"),
                                      style={"description_width": "8em"})
        self.model.add_class("asr-inference-model")
        t.bind(self.model, "description", "inference.model")
        refresh = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(refresh, "description", "common.refresh")
        refresh.on_click(lambda _b: self.reload())

        self.upload = widgets.FileUpload(accept=ACCEPT, multiple=False, layout=widgets.Layout(width="14em"))
        self.upload.add_class("asr-upload")
        t.bind(self.upload, "description", "inference.upload")
        self.upload.observe(self._uploaded, names="value")

        self.support = BrowserSupport()
        self.recorder_box = widgets.VBox()
        self.recorder_box.add_class("asr-recorder")
        self.support.observe(lambda _c: self._show_recorder(), names="support")
        self.recorder_note = widgets.HTML()
        self.recorder_note_key = "mic.checking"
        t.on_change(self._render_recorder_note)
        self.recorder: Any = None  # created once the browser reports a usable microphone

        self.clip_info = widgets.HTML()
        self.clip_info.add_class("asr-clip-info")
        self.player = widgets.Audio(autoplay=False, controls=True, layout=widgets.Layout(display="none"))
        self.transcribe_button = widgets.Button(button_style="primary", layout=widgets.Layout(width="12em"))
        self.transcribe_button.add_class("asr-transcribe")
        t.bind(self.transcribe_button, "description", "inference.transcribe")
        self.transcribe_button.on_click(lambda _b: self.context.runner.spawn(
            self._transcribe(), status=self.status, busy=[self.transcribe_button]))

        self.transcript = widgets.HTML()
        self.transcript.add_class("asr-transcript")
        self.metrics = widgets.HTML()
        self.words = widgets.HTML()
        self.waveform = WaveformView(t)
        self.spectrogram = widgets.Image(format="png", layout=widgets.Layout(width=f"{VIEW_WIDTH_PX}px"))
        self.spectrogram.add_class("asr-spectrogram")
        spectrogram_caption = widgets.HTML()
        t.bind(spectrogram_caption, "value", "inference.spectrogram")
        self.results = widgets.VBox([heading(t, "inference.result"), self.transcript, self.metrics, self.waveform,
                                     spectrogram_caption, self.spectrogram, heading(t, "inference.words"),
                                     self.words],
                                    layout=widgets.Layout(display="none"))
        self._last_result: dict[str, Any] | None = None

        sources = widgets.HBox([widgets.VBox([heading(t, "inference.from_file"), self.upload]),
                                widgets.VBox([heading(t, "inference.from_mic"), self.recorder_box])],
                               layout=widgets.Layout())
        self.children = [widgets.HBox([self.model, refresh]), sources, self.support, self.clip_info, self.player,
                         self.transcribe_button, self.status, self.results]
        context.on_changed("models", self.reload)
        t.on_change(self._render_clip_info)
        t.on_change(self._render_result)
        self._show_recorder()
        self._render_clip_info()

    # ------------------------------------------------------------------ models

    def reload(self) -> None:
        self.context.runner.spawn(self._reload(), status=self.status)

    async def _reload(self) -> None:
        models = await call(self.context.client.list_models, sort="created", descending=True)
        replace_options(self.model, [(model_label(m), m.name) for m in models])
        if not models:
            self.status.show("inference.no_models", kind="warning")
        elif self.status.kind == "warning":
            self.status.clear()

    # ------------------------------------------------------------------ clips

    def _show_recorder(self) -> None:
        support = self.support.support
        if support == "ok":
            if self.recorder is None:
                from ipywebrtc import AudioRecorder, CameraStream

                stream = CameraStream(constraints={"audio": True, "video": False})
                self.recorder = AudioRecorder(stream=stream, format="webm", codecs="opus")
                self.recorder.audio.observe(self._recorded, names="value")
            self.recorder_box.children = [self.recorder]
            return
        key = "mic.checking" if support == "" else "mic.unavailable"
        self.recorder_note_key = key
        self._render_recorder_note()
        self.recorder_box.children = [self.recorder_note]

    def _render_recorder_note(self) -> None:
        self.recorder_note.value = html.escape(self.messages.t(self.recorder_note_key))

    def _uploaded(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[0]
        self.set_clip(Clip(upload["name"], bytes(upload["content"])))

    def _recorded(self, change: dict[str, Any]) -> None:
        data = bytes(change["new"] or b"")
        if data:
            self.set_clip(Clip("recording.webm", data))

    def set_clip(self, clip: Clip) -> None:
        self.clip = clip
        fmt = PLAYER_FORMATS.get(clip.format or "")
        if fmt is not None:
            self.player.format = fmt
            self.player.value = clip.data
            self.player.layout.display = "block"
        else:
            self.player.layout.display = "none"
        self.results.layout.display = "none"
        self.status.clear()
        self._render_clip_info()

    def _render_clip_info(self) -> None:
        if self.clip is None:
            self.clip_info.value = f"<i>{html.escape(self.messages.t('inference.no_clip'))}</i>"
            return
        text = self.messages.t("inference.clip", name=self.clip.name, size=format_bytes(len(self.clip.data)),
                               format=self.clip.format or "?")
        self.clip_info.value = html.escape(text)

    # ------------------------------------------------------------------ transcription

    async def _transcribe(self) -> None:
        if self.clip is None:
            self.status.show("inference.error.no_clip", kind="warning")
            return
        if not self.model.value:
            self.status.show("inference.no_models", kind="warning")
            return
        clip, model = self.clip, self.model.value
        self.status.show("inference.transcribing", model=model)
        result = await call(self.context.client.transcribe, clip.data, model, filename=clip.name)
        samples = await call(load_audio, clip.data, VIEW_RATE, name=clip.name)
        words = [w.model_dump() for w in result.words]
        self._last_result = {"result": result.model_dump(), "samples": samples.numpy(), "words": words}
        self._render_result()
        # After _render_result made the results visible: bqplot sizes a figure when it is shown, and
        # marks added to a hidden figure stay undrawn.
        self.waveform.show(self._last_result["samples"], VIEW_RATE, words)
        self.status.show("inference.done", kind="success", seconds=format_number(result.processing_seconds, 3))

    def _render_result(self) -> None:
        if self._last_result is None:
            return
        result, words = self._last_result["result"], self._last_result["words"]
        samples: np.ndarray = self._last_result["samples"]
        t = self.messages
        text = result["text"] or t.t("inference.empty_transcript")
        self.transcript.value = (f"<div class='asr-transcript-text' style='font-size:1.25em;padding:8px;"
                                 f"background:#f4f6f8;border-radius:4px'>{html.escape(text)}</div>")
        self.metrics.value = html.escape(t.t(
            "inference.metrics", model=result["model"], duration=format_seconds(result["duration"]),
            seconds=format_seconds(result["processing_seconds"]), rtf=format_number(result["rtf"], 3)))
        self.words.value = words_table_html(t, words)
        self.spectrogram.value = spectrogram_png(samples, VIEW_RATE, words)
        self.results.layout.display = "flex"
