"""File inference: load a trained model and transcribe audio with batched greedy CTC decoding."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asrlib import checkpoints as ckpt
from asrlib.audio import AudioError, load_audio
from asrlib.config import RunConfig
from asrlib.decoding import greedy_ctc_decode
from asrlib.features import FbankExtractor
from asrlib.models import build_model
from asrlib.text import CharTokenizer

log = logging.getLogger(__name__)

AudioSource = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float  # seconds
    end: float  # seconds


@dataclass
class Transcription:
    source: str
    text: str = ""
    duration: float = 0.0  # seconds of audio
    processing_seconds: float = 0.0
    words: list[WordTiming] = field(default_factory=list)
    error: str | None = None

    @property
    def rtf(self) -> float:
        """Real-time factor: processing time divided by audio duration (below 1 is faster than real time)."""
        return self.processing_seconds / self.duration if self.duration > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "text": self.text, "duration": self.duration,
                "processing_seconds": self.processing_seconds, "rtf": self.rtf,
                "words": [w.__dict__ for w in self.words], "error": self.error}


def resolve_checkpoint(model: str | os.PathLike[str]) -> Path:
    """Accept a checkpoint file or a run folder (its best checkpoint if recorded, else the newest valid one)."""
    path = Path(model)
    if path.is_file():
        return path
    if path.is_dir():
        from asrlib.training.runs import RunPaths, read_status

        status = read_status(RunPaths(path)) or {}
        best = status.get("best_checkpoint")
        if best and ckpt.read_info(best).valid:
            return Path(best)
        info = ckpt.latest_valid(path)
        if info is None:
            raise ckpt.CheckpointError(f"{path}: no valid checkpoint in this run folder")
        return info.path
    raise FileNotFoundError(f"model not found: {path}; pass a checkpoint file (.pt) or a run folder")


class Recognizer:
    """A loaded model ready to transcribe; build it with `Recognizer.from_checkpoint`."""

    def __init__(self, model: torch.nn.Module, config: RunConfig, tokenizer: CharTokenizer,
                 device: torch.device, source: str = "") -> None:
        self.model = model.eval().to(device)
        self.config = config
        self.tokenizer = tokenizer
        self.device = device
        self.source = source
        self.extractor = FbankExtractor(config.features)
        self.sample_rate = config.features.sample_rate
        # Encoder frames are 4 feature frames apart after the x4 subsampling.
        self.frame_seconds = 4 * config.features.frame_shift_ms / 1000

    @classmethod
    def from_checkpoint(cls, model: str | os.PathLike[str], *, device: str = "cpu") -> Recognizer:
        path = resolve_checkpoint(model)
        payload = ckpt.load_checkpoint(path)
        config = RunConfig.from_dict(payload["config"])
        tokenizer = CharTokenizer.from_dict(payload["tokenizer"])
        net = build_model(config, tokenizer.vocab_size)
        net.load_state_dict(payload["model"])
        log.info("loaded %s (%s/%s, step %s)", path, config.model.type, config.model.preset, payload.get("step"))
        return cls(net, config, tokenizer, torch.device(device), source=str(path))

    @torch.no_grad()
    def log_probs(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probabilities `(B, T', V)` and lengths for mono waveforms at the model's rate."""
        feats = [self.extractor(w) for w in waveforms]
        lengths = torch.tensor([f.shape[0] for f in feats])
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self.device)
        return self.model(padded, lengths.to(self.device))

    def decode(self, waveforms: list[torch.Tensor]) -> list[tuple[str, list[WordTiming]]]:
        log_probs, lengths = self.log_probs(waveforms)
        results = []
        for hyp in greedy_ctc_decode(log_probs, lengths, self.tokenizer.blank_id):
            text = self.tokenizer.decode(hyp.tokens)
            results.append((text, self._word_timings(hyp.tokens, hyp.frames)))
        return results

    def _word_timings(self, tokens: list[int], frames: list[int]) -> list[WordTiming]:
        """Group emitted characters into words; a word spans its first to its last character's frame."""
        words, current, start, end = [], "", 0, 0
        for token, frame in zip(tokens, frames, strict=True):
            char = self.tokenizer.symbols[token]
            if char == " ":
                if current:
                    words.append(WordTiming(current, start * self.frame_seconds, (end + 1) * self.frame_seconds))
                current = ""
                continue
            if not current:
                start = frame
            current += char
            end = frame
        if current:
            words.append(WordTiming(current, start * self.frame_seconds, (end + 1) * self.frame_seconds))
        return words

    def transcribe(self, sources: list[AudioSource], *, names: list[str] | None = None,
                   batch_size: int = 8) -> list[Transcription]:
        """Transcribe files or encoded bytes; a source that fails gets `error` set, the rest still run."""
        if names is None:
            names = ["<bytes>" if isinstance(s, bytes) else str(s) for s in sources]
        results: list[Transcription] = [Transcription(source=n) for n in names]
        loaded: list[tuple[int, torch.Tensor, float]] = []
        for index, (source, name) in enumerate(zip(sources, names, strict=True)):
            started = time.perf_counter()
            try:
                waveform = load_audio(source, self.sample_rate, name=name, min_duration=0.1)
            except (AudioError, FileNotFoundError, IsADirectoryError) as err:
                results[index].error = str(err)
                continue
            results[index].duration = waveform.shape[0] / self.sample_rate
            loaded.append((index, waveform, time.perf_counter() - started))
        # Sorting by length keeps padding low inside each batch.
        loaded.sort(key=lambda item: item[1].shape[0])
        for begin in range(0, len(loaded), batch_size):
            chunk = loaded[begin : begin + batch_size]
            started = time.perf_counter()
            decoded = self.decode([w for _, w, _ in chunk])
            elapsed = time.perf_counter() - started
            total = sum(w.shape[0] for _, w, _ in chunk)
            for (index, waveform, load_seconds), (text, words) in zip(chunk, decoded, strict=True):
                result = results[index]
                result.text, result.words = text, words
                # The batch's compute time is shared in proportion to each clip's length.
                result.processing_seconds = load_seconds + elapsed * waveform.shape[0] / total
        return results
