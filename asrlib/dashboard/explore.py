"""Helpers of notebooks/explore.ipynb: clip tables, feature plots and CTC posterior plots.

They return matplotlib figures (built without pyplot, so no backend is needed) and HTML, so the
notebook's cells stay one line each and the same views can be reused in other notebooks.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from IPython.display import Image
from matplotlib.figure import Figure

from asrlib.audio import audio_info
from asrlib.config import REPO_ROOT, FeatureConfig, load_settings
from asrlib.dashboard.audioview import log_mel
from asrlib.datasets.catalog import resolve_dataset_path
from asrlib.datasets.ljspeech import Clip
from asrlib.inference import Recognizer, WordTiming
from asrlib.text import normalize_text


def as_image(figure: Figure) -> Image:
    """Render a figure to a PNG that Jupyter shows whatever the matplotlib backend (also under papermill)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return Image(buffer.getvalue())


def repo_path(path: str) -> Path:
    """Take a relative path from the working folder, else from the repository root.

    Jupyter runs a notebook in its own folder (notebooks/), while commands and docs give paths
    from the repository root; both forms work.
    """
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return REPO_ROOT / candidate


def find_dataset(name_or_path: str) -> Path:
    """Return the folder of a catalog dataset, or of a path given from here or from the repository root."""
    settings = load_settings()
    try:
        return resolve_dataset_path(name_or_path, settings)
    except ValueError:
        return resolve_dataset_path(str(repo_path(name_or_path)), settings)


def clips_html(clips: Sequence[Clip], limit: int = 10) -> str:
    """Return an HTML table of the first `limit` clips: id, duration, sample rate and transcript."""
    rows = []
    for clip in clips[:limit]:
        info = audio_info(clip.audio_path)
        rows.append(f"<tr><td>{html.escape(clip.id)}</td><td>{info.duration:.2f} s</td>"
                    f"<td>{info.sample_rate} Hz</td><td style='text-align:left'>{html.escape(clip.text)}</td></tr>")
    header = "<tr><th>id</th><th>duration</th><th>rate</th><th style='text-align:left'>transcript</th></tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def duration_figure(clips: Sequence[Clip], bin_s: float = 1.0) -> Figure:
    """Histogram of clip durations in `bin_s` second bins (reads the headers only)."""
    durations = np.array([audio_info(clip.audio_path).duration for clip in clips])
    figure = Figure(figsize=(7, 3))
    axes = figure.add_subplot()
    edges = np.arange(0, durations.max() + bin_s, bin_s) if len(durations) else np.array([0, bin_s])
    axes.hist(durations, bins=edges, color="#4a78a8", edgecolor="white")
    axes.set(xlabel="duration (s)", ylabel="clips", title=f"{len(durations)} clips, {durations.sum() / 60:.1f} min")
    figure.tight_layout()
    return figure


def features_figure(waveform: torch.Tensor, config: FeatureConfig, title: str = "") -> Figure:
    """Waveform above its log-mel features, on one time axis, as the model's front end computes them."""
    samples = waveform.numpy()
    features = log_mel(samples, config)
    seconds = len(samples) / config.sample_rate
    figure = Figure(figsize=(11, 5))
    wave_axes, mel_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    wave_axes.plot(np.arange(len(samples)) / config.sample_rate, samples, lw=0.4)
    wave_axes.set(ylabel="amplitude", title=title)
    image = mel_axes.imshow(features.T, origin="lower", aspect="auto", cmap="magma",
                            extent=(0, features.shape[0] * config.frame_shift_ms / 1000, 0, features.shape[1]))
    mel_axes.set(xlabel="time (s)", ylabel="mel bin", xlim=(0, seconds))
    figure.colorbar(image, ax=mel_axes, label="log power", pad=0.01)
    figure.tight_layout()
    return figure


@dataclass(frozen=True)
class Posteriors:
    """CTC output of one clip: per-frame log-probabilities (frames, vocabulary) and the greedy path."""

    log_probs: np.ndarray
    symbols: list[str]
    frame_seconds: float
    text: str
    words: list[WordTiming]

    @property
    def best(self) -> np.ndarray:
        return self.log_probs.argmax(axis=1)

    @property
    def blank_share(self) -> float:
        """Share of frames whose most probable symbol is the blank (CTC outputs are mostly blank)."""
        return float((self.best == 0).mean())


def ctc_posteriors(recognizer: Recognizer, waveform: torch.Tensor) -> Posteriors:
    """Run the model on one waveform at its sample rate and keep the frame posteriors."""
    log_probs, lengths = recognizer.log_probs([waveform])
    frames = log_probs[0, : int(lengths[0])].cpu().numpy()
    text, words = recognizer.decode([waveform])[0]
    return Posteriors(frames, list(recognizer.tokenizer.symbols), recognizer.frame_seconds, text, words)


def posteriors_figure(posteriors: Posteriors, reference: str | None = None) -> Figure:
    """Posterior probability of every symbol per encoder frame, with the greedy path and word spans."""
    probs = np.exp(posteriors.log_probs)  # (frames, vocabulary)
    seconds = probs.shape[0] * posteriors.frame_seconds
    figure = Figure(figsize=(12, 6.5))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.imshow(probs.T, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
               extent=(0, seconds, -0.5, probs.shape[1] - 0.5))
    labels = [_symbol_label(index, symbol) for index, symbol in enumerate(posteriors.symbols)]
    top.set_yticks(range(len(labels)), labels, fontsize=7)
    top.set(ylabel="symbol (∅ = blank)", title=f"CTC posteriors, greedy text: {_shorten(posteriors.text)!r}")
    times = (np.arange(probs.shape[0]) + 0.5) * posteriors.frame_seconds
    emitted = posteriors.best != 0
    top.scatter(times[emitted], posteriors.best[emitted], s=8, c="red", label="greedy non-blank")
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(times, probs[:, 0], lw=0.8, label="P(blank)")
    bottom.plot(times, probs[:, 1:].max(axis=1), lw=0.8, label="max P(non-blank)")
    for word in posteriors.words:
        bottom.axvspan(word.start, word.end, color="orange", alpha=0.15)
        bottom.text((word.start + word.end) / 2, 1.02, word.word, ha="center", va="bottom", fontsize=7)
    bottom.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1.15), xlim=(0, seconds))
    bottom.legend(loc="lower right", fontsize=8)
    if reference is not None:
        figure.suptitle(f"reference: {_shorten(normalize_text(reference))!r}", fontsize=9)
    figure.tight_layout()
    return figure


def _symbol_label(index: int, symbol: str) -> str:
    if index == 0:
        return "∅"  # the CTC blank
    if symbol == " ":
        return "␣"
    return symbol


def _shorten(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
