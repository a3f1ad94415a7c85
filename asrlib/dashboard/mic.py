"""The microphone widget: an anywidget whose JavaScript (mic.js) captures 16 kHz int16 chunks.

Browsers allow getUserMedia only in a secure context (https, or http on localhost / 127.0.0.1).
The widget reports what the browser supports in `support`, so the tab can explain a missing
microphone instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz; the rate sent in the start message of the realtime endpoint
CHUNK_MS = 100  # one message to the kernel per 100 ms of audio


class MicrophoneWidget(anywidget.AnyWidget):
    _esm = Path(__file__).with_name("mic.js")
    _css = """
    .asr-mic { display: flex; align-items: center; gap: 10px; }
    .asr-mic-button { min-width: 9em; }
    .asr-mic-meter { width: 220px; height: 12px; background: #e6e6e6; border-radius: 6px; overflow: hidden; }
    .asr-mic-level { height: 100%; width: 0%; background: linear-gradient(90deg, #2ca02c, #ffbf00 70%, #d62728);
                     transition: width 80ms linear; }
    .asr-mic-note { color: #555; font-size: 12px; }
    """

    sample_rate = traitlets.Int(SAMPLE_RATE).tag(sync=True)
    chunk_ms = traitlets.Int(CHUNK_MS).tag(sync=True)
    start_label = traitlets.Unicode("Start").tag(sync=True)
    stop_label = traitlets.Unicode("Stop").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)
    active = traitlets.Bool(False).tag(sync=True)  # set to False by the kernel to stop the capture
    # Set by the browser: "ok", "insecure", "no-getusermedia" or "no-audioworklet"; "" until rendered.
    support = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._audio_callbacks: list[Callable[[bytes, dict[str, Any]], None]] = []
        self._event_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self.on_msg(self._handle_message)

    def on_audio(self, callback: Callable[[bytes, dict[str, Any]], None]) -> None:
        """Call `callback(pcm16_bytes, info)` for every chunk; info has `seq` and `rms`."""
        self._audio_callbacks.append(callback)

    def on_event(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(message)` for started, stopped and error messages of the browser."""
        self._event_callbacks.append(callback)

    def stop(self) -> None:
        # Toggling through True makes the browser see a change even when `active` was already False.
        self.active = True
        self.active = False

    def _handle_message(self, _widget: Any, content: dict[str, Any], buffers: list[Any]) -> None:
        kind = content.get("type")
        if kind == "audio":
            if not buffers:
                return
            chunk = bytes(buffers[0])
            for callback in list(self._audio_callbacks):
                callback(chunk, content)
            return
        if kind == "started":
            self.active = True
        elif kind == "stopped":
            self.active = False
        for callback in list(self._event_callbacks):
            callback(content)


class BrowserSupport(anywidget.AnyWidget):
    """An invisible probe of the browser's microphone support, for tabs that only need to know."""

    _esm = """
    function render({ model, el }) {
      el.style.display = "none";
      let support = "ok";
      if (!window.isSecureContext) support = "insecure";
      else if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) support = "no-getusermedia";
      model.set("support", support);
      model.save_changes();
    }
    export default { render };
    """
    support = traitlets.Unicode("").tag(sync=True)
