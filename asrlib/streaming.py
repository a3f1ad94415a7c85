"""Streaming recognition: PCM chunks in, partial and final transcripts out, with bounded state.

    recognizer = StreamingRecognizer.from_checkpoint("checkpoints/RUN")
    for piece in pieces:                     # any size, any fixed sample rate
        for result in recognizer.accept_waveform(piece, 22050):
            print(result.type, result.utterance, result.text)
    finals = recognizer.finalize()

The pipeline keeps only what the next step needs. `StreamingResampler` buffers less than one
filter kernel, and `StreamingFbank` less than one hop plus one window of samples. The model's
`StreamState` keeps attention caches trimmed to the left context. The decoder keeps the tokens
of the open utterance, which endpointing closes at least every `max_utterance_s`. An hour-long
stream therefore needs the same memory as a short one.

Exactness: up to its first endpoint, a stream yields the same CTC log-probabilities, to float
rounding, as an offline decode of the whole recording by the same model in eval mode
(`Recognizer`), because resampling, features, subsampling, look-ahead and chunk attention are
computed over the same samples and frames (see asrlib/models/realtime.py). So a recording of one
utterance streams to the offline transcript. After an endpoint the encoder caches are emptied
by default (`StreamingOptions.reset_on_endpoint`), and the next utterance is decoded as the
offline model decodes the audio from that chunk on. With the reset off, the finals of the whole
stream joined by spaces equal the offline transcript of the whole recording.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchaudio.functional.functional import _get_sinc_resample_kernel

from asrlib import checkpoints as ckpt
from asrlib.config import FeatureConfig, RunConfig
from asrlib.features import FbankExtractor
from asrlib.models.realtime import SUBSAMPLING_FACTOR, RealtimeConformerCTC, StreamState
from asrlib.text import CharTokenizer

log = logging.getLogger(__name__)

__all__ = [
    "StreamingFbank",
    "StreamingModel",
    "StreamingOptions",
    "StreamingRecognizer",
    "StreamingResampler",
    "StreamingResult",
    "join_finals",
    "resolve_streaming_model",
]

# The resampling filter of asrlib.audio.resample (torchaudio.functional.resample's defaults).
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
INT16_SCALE = 32768.0


class StreamingResampler:
    """Stateful windowed-sinc resampler, equal to `torchaudio.functional.resample` of the whole signal.

    It uses torchaudio's own kernel (sinc_interp_hann, lowpass_filter_width 6, rolloff 0.99) and
    the same zero padding at both ends. So the concatenated outputs of `process` and `flush`
    equal, to float rounding, what torchaudio returns for the concatenated input. The length is
    rounded up in exact integer arithmetic, while torchaudio computes it in float32, so the two
    can differ by a few samples past about 2**24 output samples (17 minutes at 16 kHz). Output
    is clipped to [-1, 1] like `asrlib.audio.resample`. Fewer than kernel-length input samples
    stay buffered.

    Args:
        orig_freq: input sample rate in Hz.
        new_freq: output sample rate in Hz.
    """

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        if orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_freq} and {new_freq}")
        gcd = math.gcd(int(orig_freq), int(new_freq))
        self.orig = int(orig_freq) // gcd
        self.new = int(new_freq) // gcd
        self.kernel, self.width = _get_sinc_resample_kernel(
            int(orig_freq), int(new_freq), gcd, LOWPASS_FILTER_WIDTH, ROLLOFF, "sinc_interp_hann", None,
            dtype=torch.float32,
        )
        self.kernel_size = self.kernel.shape[-1]  # 2 * width + orig
        self._buffer = torch.zeros(self.width)  # the left zero padding of the whole signal
        self._received = 0
        self._emitted = 0

    def _convolve(self, signal: torch.Tensor) -> torch.Tensor:
        """Resample every complete kernel window of `signal`; keep the rest for the next call."""
        if signal.shape[0] < self.kernel_size:
            self._buffer = signal
            return signal.new_zeros(0)
        blocks = (signal.shape[0] - self.kernel_size) // self.orig + 1
        used = (blocks - 1) * self.orig + self.kernel_size
        out = F.conv1d(signal[None, None, :used], self.kernel, stride=self.orig)  # (1, new, blocks)
        self._buffer = signal[blocks * self.orig :].clone()
        return out[0].transpose(0, 1).reshape(-1).clamp_(-1.0, 1.0)

    def process(self, samples: torch.Tensor) -> torch.Tensor:
        """Resample float32 samples `(T,)`; return the output samples that are final so far."""
        self._received += samples.shape[0]
        out = self._convolve(torch.cat([self._buffer, samples]))
        self._emitted += out.shape[0]
        return out

    def flush(self) -> torch.Tensor:
        """Return the last output samples, using zeros past the end as torchaudio does."""
        tail = self._convolve(torch.cat([self._buffer, torch.zeros(self.width + self.orig)]))
        target = -(-self.new * self._received // self.orig)  # ceil(new * received / orig)
        tail = tail[: max(0, target - self._emitted)]
        self._emitted += tail.shape[0]
        self._buffer = torch.zeros(0)
        return tail


class StreamingFbank:
    """Log-mel frames of a stream, equal to `FbankExtractor` of the whole signal (to float rounding).

    `FbankExtractor` does not centre its frames, so frame k reads samples [k * hop, k * hop + win)
    and a frame can be computed as soon as its window is complete. Fewer than hop + win samples
    stay buffered. Samples after the last complete window at the end of the stream are dropped,
    as in the offline extractor.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.extractor = FbankExtractor(config)
        self.num_bins = config.num_mel_bins
        self._buffer = torch.zeros(0)

    def process(self, samples: torch.Tensor) -> torch.Tensor:
        """Append float32 samples `(T,)` and return the newly complete frames `(n, num_mel_bins)`."""
        signal = torch.cat([self._buffer, samples])
        count = self.extractor.num_frames(signal.shape[0])
        if count == 0:
            self._buffer = signal
            return torch.zeros(0, self.num_bins)
        hop, win = self.extractor.hop_length, self.extractor.win_length
        frames = self.extractor(signal[: (count - 1) * hop + win])
        self._buffer = signal[count * hop :].clone()
        return frames

    @property
    def buffered_samples(self) -> int:
        return self._buffer.shape[0]


@dataclass(frozen=True, eq=False)
class StreamingModel:
    """A loaded `realtime` model with its configuration and tokenizer, shared by any number of streams."""

    model: RealtimeConformerCTC
    config: RunConfig
    tokenizer: CharTokenizer
    source: str = ""  # the checkpoint it came from, for logs

    def __post_init__(self) -> None:
        if not isinstance(self.model, RealtimeConformerCTC):
            kind = getattr(getattr(self.model, "config", None), "type", type(self.model).__name__)
            raise ValueError(
                f"streaming needs a realtime model, but {self.source or 'this model'} is {kind!r}; "
                "train one with `asr train --model realtime`"
            )
        self.model.eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, device: str = "cpu") -> StreamingModel:
        """Load a checkpoint file or a run folder (its best, else newest valid checkpoint)."""
        from asrlib.inference import resolve_checkpoint
        from asrlib.models import build_model

        resolved = resolve_checkpoint(path)
        payload = ckpt.load_checkpoint(resolved)
        config = RunConfig.from_dict(payload["config"])
        if config.model.type != "realtime":
            raise ValueError(
                f"{resolved}: streaming needs a realtime model, but this checkpoint contains a "
                f"{config.model.type!r} model; train one with `asr train --model realtime`"
            )
        tokenizer = CharTokenizer.from_dict(payload["tokenizer"])
        net = build_model(config, tokenizer.vocab_size)
        net.load_state_dict(payload["model"])
        log.info("loaded streaming model %s (%s, step %s)", resolved, config.model.preset, payload.get("step"))
        return cls(net.to(torch.device(device)), config, tokenizer, str(resolved))


def resolve_streaming_model(
    source: str | os.PathLike[str],
    checkpoints_root: str | os.PathLike[str] | None,
    *,
    confine_to_root: bool = False,
) -> Path:
    """Resolve a registry model name, a checkpoint file or a run folder to a checkpoint file.

    A name NAME is taken from `<checkpoints_root>/models/NAME.pt` when that file exists. A
    relative path is looked up under `checkpoints_root` first, then in the working directory
    (the latter only when `confine_to_root` is False). With `confine_to_root`, as the WebSocket
    service uses it, a path that resolves outside `checkpoints_root` is rejected, because a
    network client must not make the server unpickle arbitrary files.

    Raises FileNotFoundError for a missing model and ValueError for a path outside the root.
    """
    from asrlib.inference import resolve_checkpoint

    text = os.fspath(source)
    if not text.strip():
        raise ValueError("the model is empty; pass a registry model name, a checkpoint file or a run folder")
    root = Path(checkpoints_root).resolve() if checkpoints_root is not None else None
    if root is not None:
        from asrlib.registry import MODELS_FOLDER, InvalidModelRequest, validate_model_name

        try:
            registered = root / MODELS_FOLDER / f"{validate_model_name(text)}.pt"
        except InvalidModelRequest:
            registered = None
        if registered is not None and registered.is_file():
            return registered
    path = Path(text).expanduser()
    if not path.is_absolute() and root is not None and ((root / path).exists() or confine_to_root):
        path = root / path
    if confine_to_root:
        if root is None:
            raise ValueError("no checkpoints folder is configured, so model paths cannot be checked")
        if not path.resolve().is_relative_to(root):
            raise ValueError(f"model path {text!r} is outside the checkpoints folder {root}")
    if not path.exists():
        raise FileNotFoundError(
            f"model not found: {text!r} is neither a registered model nor a checkpoint file or run folder"
            + (f" under {root}" if root is not None else "")
        )
    return resolve_checkpoint(path)


@dataclass(frozen=True)
class StreamingOptions:
    """Settings of one stream."""

    chunk_frames: int | None = None  # encoder frames per chunk (40 ms each); None: the model's
    left_chunks: int | None = None  # chunks of attention cache, -1 unlimited; None: the model's
    # Trailing blank frames (seconds) after speech that close an utterance; None disables.
    endpoint_silence_s: float | None = 0.8
    # An utterance longer than this is closed even without silence; None disables, but then
    # the tokens of an utterance that never ends grow without bound.
    max_utterance_s: float | None = 30.0
    # Empty the encoder's attention and convolution caches at the first chunk boundary after an
    # endpoint, as WeNet's runtime does (AsrDecoder::ResetContinuousDecoding), so that each
    # utterance starts with the empty left context it had in training. When False the encoder
    # runs on across utterances, and the whole stream decodes exactly as the offline model
    # decodes the whole recording.
    reset_on_endpoint: bool = True

    def __post_init__(self) -> None:
        if self.chunk_frames is not None and self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {self.chunk_frames}")
        if self.left_chunks is not None and self.left_chunks < -1:
            raise ValueError(f"left_chunks must be -1 (unlimited) or at least 0, got {self.left_chunks}")
        if self.endpoint_silence_s is not None and self.endpoint_silence_s <= 0:
            raise ValueError(f"endpoint_silence_s must be positive or None, got {self.endpoint_silence_s}")
        if self.max_utterance_s is not None and self.max_utterance_s <= 0:
            raise ValueError(f"max_utterance_s must be positive or None, got {self.max_utterance_s}")


@dataclass(frozen=True)
class StreamingResult:
    """A partial or final transcript of one utterance; times are seconds of stream audio."""

    type: Literal["partial", "final"]
    text: str
    utterance: int  # index of the utterance in the stream, from 0
    start: float  # the utterance's first token frame; while it has none, the end of decoded audio
    end: float  # end of the audio this result covers

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type, "text": self.text, "utterance": self.utterance,
                "start": round(self.start, 3), "end": round(self.end, 3)}


def join_finals(results: list[StreamingResult]) -> str:
    """Join the texts of the final results into one transcript."""
    return " ".join(r.text for r in results if r.type == "final" and r.text)


@dataclass
class _Utterance:
    """Greedy CTC state of the open utterance."""

    index: int = 0
    tokens: list[int] = field(default_factory=list)
    start_frame: int = 0
    trailing_blanks: int = 0


class _GreedyEndpointer:
    """Greedy CTC decoding frame by frame, split into utterances by trailing blanks or length."""

    def __init__(self, tokenizer: CharTokenizer, frame_seconds: float, options: StreamingOptions) -> None:
        self.tokenizer = tokenizer
        self.blank = tokenizer.blank_id
        self.frame_seconds = frame_seconds
        self.endpoint_frames = (math.ceil(options.endpoint_silence_s / frame_seconds - 1e-9)
                                if options.endpoint_silence_s is not None else None)
        self.max_frames = (max(1, math.ceil(options.max_utterance_s / frame_seconds - 1e-9))
                           if options.max_utterance_s is not None else None)
        self.utterance = _Utterance()
        # The previous frame's label survives endpoints, so a repeat split by a forced endpoint
        # collapses as it does offline.
        self.previous = self.blank
        self.finals_emitted = 0

    def _result(self, kind: Literal["partial", "final"], end_frame: int) -> StreamingResult:
        utt = self.utterance
        text = " ".join(self.tokenizer.decode(utt.tokens).split())
        return StreamingResult(kind, text, utt.index, utt.start_frame * self.frame_seconds,
                               end_frame * self.frame_seconds)

    def _close(self, end_frame: int) -> StreamingResult:
        result = self._result("final", end_frame)
        self.finals_emitted += 1
        self.utterance = _Utterance(index=self.utterance.index + 1, start_frame=end_frame)
        return result

    def decode_chunk(self, log_probs: torch.Tensor, first_frame: int) -> list[StreamingResult]:
        """Decode `(c, V)` log-probabilities of frames first_frame...; return the finals they close."""
        finals = []
        for offset, label in enumerate(log_probs.argmax(dim=-1).tolist()):
            frame = first_frame + offset
            utt = self.utterance
            if label != self.blank and label != self.previous:
                if not utt.tokens:
                    utt.start_frame = frame
                utt.tokens.append(label)
            utt.trailing_blanks = utt.trailing_blanks + 1 if label == self.blank else 0
            self.previous = label
            if not utt.tokens:
                utt.start_frame = frame + 1
                continue
            silence_end = self.endpoint_frames is not None and utt.trailing_blanks >= self.endpoint_frames
            too_long = self.max_frames is not None and frame + 1 - utt.start_frame >= self.max_frames
            if silence_end or too_long:
                finals.append(self._close(frame + 1))
        return finals

    def partial(self, end_frame: int) -> StreamingResult:
        return self._result("partial", end_frame)

    def finish(self, end_frame: int) -> list[StreamingResult]:
        """Close the open utterance at the end of the stream; a stream without any final gets an empty one."""
        if self.utterance.tokens or self.finals_emitted == 0:
            return [self._close(end_frame)]
        return []

    def nbytes(self) -> int:
        """Approximate bytes of the open utterance's token list (8 per list slot)."""
        return 8 * len(self.utterance.tokens)


class StreamingRecognizer:
    """Recognise one audio stream with a `realtime` model; create one per stream (session).

    Several recognizers may share one `StreamingModel` and run in different threads: the model
    is only read, and each recognizer keeps its own state.

    Args:
        model: the loaded model (`StreamingModel.from_checkpoint`).
        options: chunk, left context and endpointing settings.
    """

    def __init__(self, model: StreamingModel, options: StreamingOptions | None = None) -> None:
        if not isinstance(model, StreamingModel):
            raise TypeError(f"model must be a StreamingModel, got {type(model).__name__}; "
                            "wrap a loaded network with StreamingModel(net, config, tokenizer)")
        self.model = model
        self.options = options or StreamingOptions()
        self.model_rate = model.config.features.sample_rate
        self.frame_seconds = SUBSAMPLING_FACTOR * model.config.features.frame_shift_ms / 1000
        self.device = model.model.head.weight.device
        left = self.options.left_chunks if self.options.left_chunks is not None else model.config.model.left_chunks
        if left < 0:
            log.warning("left_chunks is -1 (unlimited): the attention cache of %s grows with the stream",
                        model.source or "this model")
        self.reset()

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], options: StreamingOptions | None = None, *, device: str = "cpu"
    ) -> StreamingRecognizer:
        return cls(StreamingModel.from_checkpoint(path, device=device), options)

    def reset(self) -> None:
        """Forget the stream and start a new one (the input sample rate may change)."""
        self.sample_rate: int | None = None  # input rate, fixed by the first accept_waveform call
        self._resampler: StreamingResampler | None = None
        self._fbank = StreamingFbank(self.model.config.features)
        self._state: StreamState = self.model.model.init_stream(
            chunk_frames=self.options.chunk_frames, left_chunks=self.options.left_chunks, device=self.device
        )
        self._decoder = _GreedyEndpointer(self.model.tokenizer, self.frame_seconds, self.options)
        self._samples_in = 0
        self._finished = False

    @property
    def chunk_seconds(self) -> float:
        return self._state.chunk_frames * self.frame_seconds

    @property
    def audio_seconds(self) -> float:
        """Seconds of input audio accepted so far."""
        return self._samples_in / self.sample_rate if self.sample_rate else 0.0

    @property
    def decoded_seconds(self) -> float:
        """Seconds of audio whose encoder frames have been decoded."""
        return self._state.frames_done * self.frame_seconds

    def state_nbytes(self) -> int:
        """Bytes of per-stream state: sample and feature buffers, encoder caches and open tokens."""
        resampler = self._resampler._buffer.numel() * 4 if self._resampler is not None else 0
        return resampler + self._fbank.buffered_samples * 4 + self._state.nbytes() + self._decoder.nbytes()

    def _to_tensor(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(samples, np.ndarray):
            samples = torch.from_numpy(np.ascontiguousarray(samples))
        if not isinstance(samples, torch.Tensor):
            raise TypeError(f"samples must be a numpy array or a torch tensor, got {type(samples).__name__}")
        if samples.dim() != 1:
            raise ValueError(f"samples must be mono with shape (T,), got shape {tuple(samples.shape)}")
        if samples.dtype == torch.int16:
            return samples.to(torch.float32) / INT16_SCALE
        if not samples.is_floating_point():
            raise TypeError(f"samples must be float in [-1, 1] or int16, got {samples.dtype}")
        return samples.detach().to("cpu", torch.float32)

    def _run(self, samples: torch.Tensor, *, final: bool) -> list[StreamingResult]:
        """Extract features, encode complete chunks and decode them; partials only when not final."""
        features = self._fbank.process(samples) if samples.numel() else torch.zeros(0, self._fbank.num_bins)
        features = features[None].to(self.device)
        results: list[StreamingResult] = []
        # One chunk per step, so that an endpoint can reset the encoder before the next chunk.
        while chunks := self.model.model.stream_step(features, self._state, final=final, max_chunks=1):
            features = features[:, :0]
            log_probs = chunks[0][0]
            first_frame = self._state.frames_done - log_probs.shape[0]
            finals = self._decoder.decode_chunk(log_probs, first_frame)
            results += finals
            if finals and self.options.reset_on_endpoint:
                self.model.model.reset_stream_context(self._state)
            if not final:
                results.append(self._decoder.partial(self._state.frames_done))
        return results

    def accept_waveform(self, samples: np.ndarray | torch.Tensor, sample_rate: int) -> list[StreamingResult]:
        """Feed mono samples `(T,)` (float in [-1, 1], or int16) of any length at `sample_rate` Hz.

        Returns, in order, the finals of utterances that endpointing closed and one partial per
        encoder chunk decoded during this call (none while a chunk is incomplete). The sample
        rate must stay the same for the whole stream.
        """
        if self._finished:
            raise RuntimeError("the stream is finalized; call reset() to start a new one")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if self.sample_rate is None:
            self.sample_rate = int(sample_rate)
            if self.sample_rate != self.model_rate:
                self._resampler = StreamingResampler(self.sample_rate, self.model_rate)
        elif sample_rate != self.sample_rate:
            raise ValueError(f"the sample rate changed from {self.sample_rate} to {sample_rate} Hz within a stream; "
                             "call reset() first")
        tensor = self._to_tensor(samples)
        self._samples_in += tensor.shape[0]
        if self._resampler is not None:
            tensor = self._resampler.process(tensor)
        return self._run(tensor, final=False)

    def finalize(self) -> list[StreamingResult]:
        """End the stream: decode the audio still buffered and return the remaining finals.

        There is always at least one final per stream, with empty text if nothing was recognised.
        """
        if self._finished:
            raise RuntimeError("the stream is already finalized; call reset() to start a new one")
        self._finished = True
        tail = self._resampler.flush() if self._resampler is not None else torch.zeros(0)
        results = self._run(tail, final=True)
        return results + self._decoder.finish(self._state.frames_done)
