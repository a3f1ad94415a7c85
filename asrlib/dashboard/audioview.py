"""Waveform with word timings (bqplot) and log-mel spectrogram (matplotlib image) of a transcribed clip."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import Any

import bqplot as bq
import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from asrlib.config import FeatureConfig
from asrlib.dashboard.formatting import format_seconds
from asrlib.dashboard.i18n import Messages
from asrlib.features import FbankExtractor

ENVELOPE_POINTS = 1500  # min/max pairs drawn for the waveform, whatever the clip length
VIEW_WIDTH_PX = 1100  # waveform and spectrogram share this width and these margins, so their time axes line up
FIGURE_MARGIN = {"top": 30, "bottom": 45, "left": 60, "right": 20}
SPECTROGRAM_HEIGHT_PX = 280
DPI = 100


def waveform_envelope(samples: np.ndarray, sample_rate: int, points: int = ENVELOPE_POINTS
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce a waveform to (times, minima, maxima) over at most `points` equal slices, for drawing."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if samples.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    slices = min(points, samples.size)
    edges = np.linspace(0, samples.size, slices + 1).astype(int)
    minima = np.minimum.reduceat(samples, edges[:-1])
    maxima = np.maximum.reduceat(samples, edges[:-1])
    times = (edges[:-1] + edges[1:]) / 2 / sample_rate
    return times, minima, maxima


def log_mel(samples: np.ndarray, config: FeatureConfig | None = None) -> np.ndarray:
    """Return log-mel frames (frames, bins), the features the models see before normalisation."""
    extractor = FbankExtractor(config or FeatureConfig())
    return extractor(torch.as_tensor(np.asarray(samples, dtype=np.float32))).numpy()


def spectrogram_png(samples: np.ndarray, sample_rate: int, words: Sequence[dict[str, Any]]) -> bytes:
    """Render the log-mel spectrogram with the word spans marked, as PNG bytes.

    The image contains no translated text (the caption is HTML beside it), so it needs no CJK font.
    """
    config = FeatureConfig(sample_rate=sample_rate)
    duration = len(samples) / sample_rate
    figure = Figure(figsize=(VIEW_WIDTH_PX / DPI, SPECTROGRAM_HEIGHT_PX / DPI), dpi=DPI)
    axes = figure.add_subplot()
    figure.subplots_adjust(left=FIGURE_MARGIN["left"] / VIEW_WIDTH_PX,
                           right=1 - FIGURE_MARGIN["right"] / VIEW_WIDTH_PX,
                           top=1 - FIGURE_MARGIN["top"] / SPECTROGRAM_HEIGHT_PX,
                           bottom=FIGURE_MARGIN["bottom"] / SPECTROGRAM_HEIGHT_PX)
    if len(samples) >= round(sample_rate * config.frame_length_ms / 1000):
        features = log_mel(samples, config)
        axes.imshow(features.T, origin="lower", aspect="auto", cmap="magma",
                    extent=(0, features.shape[0] * config.frame_shift_ms / 1000, 0, features.shape[1]))
    for index, word in enumerate(words):
        axes.axvspan(word["start"], word["end"], color="#ffffff", alpha=0.10 if index % 2 else 0.18, lw=0)
        axes.axvline(word["start"], color="#9be7ff", lw=0.8, alpha=0.8)
        axes.text((word["start"] + word["end"]) / 2, config.num_mel_bins * 0.93, word["word"], color="white",
                  ha="center", va="top", fontsize=8, clip_on=True)
    axes.set_xlim(0, max(duration, 1e-3))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def words_table_html(messages: Messages, words: Sequence[dict[str, Any]]) -> str:
    if not words:
        return f"<i>{html.escape(messages.t('inference.no_words'))}</i>"
    header = "".join(f"<th style='text-align:left;padding:2px 10px'>{html.escape(messages.t(k))}</th>"
                     for k in ("inference.word", "inference.word_start", "inference.word_end"))
    rows = "".join(
        f"<tr><td style='padding:2px 10px'>{html.escape(w['word'])}</td>"
        f"<td style='padding:2px 10px'>{format_seconds(w['start'])}</td>"
        f"<td style='padding:2px 10px'>{format_seconds(w['end'])}</td></tr>"
        for w in words)
    return f"<table class='asr-words'><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"


class WaveformView(widgets.VBox):
    """The clip's waveform envelope with a label and a boundary line per recognised word.

    The marks are created at the first `show`, because bqplot fails to set the state of a line
    whose arrays are empty.
    """

    def __init__(self, messages: Messages) -> None:
        self._messages = messages
        # No padding: the time axis must span exactly the clip, like the spectrogram's below it.
        self.x_scale = bq.LinearScale(min=0.0, max=1.0, allow_padding=False)
        self.y_scale = bq.LinearScale(min=-1.0, max=1.0, allow_padding=False)
        self.envelope: bq.Lines | None = None
        self.boundaries: bq.Lines | None = None
        self.labels: bq.Label | None = None
        x_axis = bq.Axis(scale=self.x_scale, num_ticks=8)
        y_axis = bq.Axis(scale=self.y_scale, side="left", num_ticks=3)
        messages.bind(x_axis, "label", "inference.time_axis")
        self.figure = bq.Figure(marks=[], axes=[x_axis, y_axis], fig_margin=dict(FIGURE_MARGIN),
                                layout=widgets.Layout(width=f"{VIEW_WIDTH_PX}px", height="240px"),
                                title_style={"font-size": "14px"})
        messages.bind(self.figure, "title", "inference.waveform")
        self.figure.add_class("asr-waveform")
        super().__init__([self.figure])

    def show(self, samples: np.ndarray, sample_rate: int, words: Sequence[dict[str, Any]]) -> None:
        times, minima, maxima = waveform_envelope(samples, sample_rate)
        if times.size == 0:
            return
        peak = float(max(np.abs(minima).max(), np.abs(maxima).max(), 1e-3)) * 1.15
        duration = len(samples) / sample_rate
        scales = {"x": self.x_scale, "y": self.y_scale}

        starts = np.array([w["start"] for w in words], dtype=float)
        boundary_x = np.repeat(starts[:, None], 2, axis=1)
        boundary_y = np.tile([-peak, peak], (len(words), 1))
        label_x = [(w["start"] + w["end"]) / 2 for w in words]
        # Alternate heights so that labels of short neighbouring words do not overlap.
        label_y = [peak * (0.83 if i % 2 == 0 else 0.66) for i in range(len(words))]
        label_text = [w["word"] for w in words]

        with self.figure.hold_sync():
            self.x_scale.max = max(duration, 1e-3)
            self.y_scale.min, self.y_scale.max = -peak, peak
            if self.envelope is None:
                self.envelope = bq.Lines(x=times, y=np.vstack([minima, maxima]), scales=scales, fill="between",
                                         colors=["#1f77b4", "#1f77b4"], fill_colors=["#6fa8dc"],
                                         fill_opacities=[0.6], stroke_width=0.6)
                self.figure.marks = [self.envelope]
            else:
                self.envelope.x, self.envelope.y = times, np.vstack([minima, maxima])

            if not words:
                for mark in (self.boundaries, self.labels):
                    if mark is not None:
                        mark.visible = False
                return

            if self.boundaries is None or self.labels is None:
                self.boundaries = bq.Lines(x=boundary_x, y=boundary_y, scales=scales, colors=["#d62728"],
                                           stroke_width=1, opacities=[0.6])
                self.labels = bq.Label(x=label_x, y=label_y, text=label_text, scales=scales, colors=["#a61b1b"],
                                       default_size=13, align="middle", font_weight="bold")
                self.figure.marks = [self.envelope, self.boundaries, self.labels]
            else:
                self.boundaries.x, self.boundaries.y = boundary_x, boundary_y
                self.labels.x, self.labels.y, self.labels.text = label_x, label_y, label_text
                self.boundaries.visible = self.labels.visible = True
