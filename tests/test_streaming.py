"""StreamingRecognizer: exact resampling and features, endpointing, offline consistency on real clips, bounded state.

The consistency and memory tests use a `tiny` realtime model overfit on three short LJSpeech
clips with a second of faint noise on each side (about 30 s of training on two CPU cores),
shared with tests/api/test_ws_asr.py through `realtime_overfit`.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from asrlib import checkpoints as ckpt
from asrlib.audio import load_audio, load_audio_with_rate, resample, save_wav
from asrlib.config import FeatureConfig, load_settings, resolve_run_config
from asrlib.datasets.ljspeech import read_metadata
from asrlib.decoding import error_rates
from asrlib.features import FbankExtractor
from asrlib.inference import Recognizer
from asrlib.models import build_model
from asrlib.streaming import (
    StreamingFbank,
    StreamingModel,
    StreamingOptions,
    StreamingRecognizer,
    StreamingResampler,
    _GreedyEndpointer,
    join_finals,
    resolve_streaming_model,
)
from asrlib.text import CharTokenizer, normalize_text
from tests.conftest import LJSPEECH_MINI, REPO_ROOT, train_tiny

# Short clips (1.8 to 2.6 s), so that the model memorises them within about 30 s of training.
REALTIME_CLIPS = ("LJ001-0002", "LJ001-0008", "LJ001-0013")
PAD_SECONDS = 1.0  # faint noise before and after each clip, so the model learns silence as blank
NOISE_STD = 3e-4
REALTIME_OVERRIDES = {
    "data": {"train_on": "all", "valid_fraction": 0.0, "test_fraction": 0.0, "cache_features": True},
    "spec_augment": {"enabled": False},
    "training": {"max_steps": 160, "lr": 0.002, "warmup_steps": 30, "max_batch_seconds": 40.0,
                 "log_every": 20, "eval_every": 0, "checkpoint_every": 0, "keep_last": 0, "device": "cpu"},
}


@dataclass(frozen=True)
class RealtimeRun:
    dataset: Path  # LJSpeech-format folder with the padded REALTIME_CLIPS
    run_dir: Path
    checkpoint: Path
    texts: dict[str, str]  # clip id -> normalised transcript
    audio: dict[str, Path]  # clip id -> padded wav path (22050 Hz)


_overfit_lock = threading.Lock()
_overfit_runs: dict[Path, RealtimeRun] = {}


def _write_padded_clips(dataset: Path) -> None:
    """Write REALTIME_CLIPS with PAD_SECONDS of faint noise on both sides, and their metadata."""
    (dataset / "wavs").mkdir(parents=True)
    lines = [line for line in (LJSPEECH_MINI / "metadata.csv").read_text(encoding="utf-8").splitlines()
             if line.split("|", 1)[0] in REALTIME_CLIPS]
    (dataset / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    generator = torch.Generator().manual_seed(0)
    for clip_id in REALTIME_CLIPS:
        speech, rate = load_audio_with_rate(LJSPEECH_MINI / "wavs" / f"{clip_id}.wav")
        pad = int(PAD_SECONDS * rate)
        noise = torch.randn(2, pad, generator=generator) * NOISE_STD
        save_wav(dataset / "wavs" / f"{clip_id}.wav", torch.cat([noise[0], speech, noise[1]]), rate)


def realtime_overfit(tmp_path_factory: pytest.TempPathFactory) -> RealtimeRun:
    """Train (once per test session) a `tiny` realtime model on the padded REALTIME_CLIPS.

    Training runs on one torch thread: on two shared cores, two threads are several times slower.
    """
    base = tmp_path_factory.getbasetemp() / "realtime"
    with _overfit_lock:
        if base not in _overfit_runs:
            dataset = base / "ljspeech-padded"
            _write_padded_clips(dataset)
            run_dir = base / "checkpoints" / "realtime-overfit"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                result = train_tiny(run_dir, dataset, REALTIME_OVERRIDES, model_type="realtime")
            finally:
                torch.set_num_threads(threads)
            assert result.state == "completed"
            assert result.checkpoint is not None
            texts = {c.id: normalize_text(c.text) for c in read_metadata(dataset).clips}
            _overfit_runs[base] = RealtimeRun(
                dataset, run_dir, result.checkpoint, texts=texts,
                audio={i: dataset / "wavs" / f"{i}.wav" for i in REALTIME_CLIPS},
            )
        return _overfit_runs[base]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Two shared cores: one intra-op thread avoids oversubscription, which slows small ops a lot.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def realtime_run(tmp_path_factory, ljspeech_mini) -> RealtimeRun:
    return realtime_overfit(tmp_path_factory)


@pytest.fixture(scope="module")
def streaming_model(realtime_run) -> StreamingModel:
    return StreamingModel.from_checkpoint(realtime_run.checkpoint)


@pytest.fixture(scope="module")
def offline_texts(realtime_run) -> dict[str, str]:
    recognizer = Recognizer.from_checkpoint(realtime_run.checkpoint)
    ids = list(REALTIME_CLIPS)
    results = recognizer.transcribe([str(realtime_run.audio[i]) for i in ids])
    return {i: " ".join(r.text.split()) for i, r in zip(ids, results, strict=True)}


def _feed(recognizer: StreamingRecognizer, samples: torch.Tensor, rate: int, sizes) -> list:
    results, position = [], 0
    for size in sizes:
        if position >= samples.shape[0]:
            break
        results += recognizer.accept_waveform(samples[position : position + size], rate)
        position += size
    results += recognizer.accept_waveform(samples[position:], rate)
    return results + recognizer.finalize()


# ----------------------------------------------------------------- resampling and features


@pytest.mark.parametrize(
    ("orig", "new"), [(22050, 16000), (48000, 16000), (8000, 16000), (44100, 16000), (16000, 8000)]
)
def test_resampler_equals_torchaudio(orig, new):
    generator = torch.Generator().manual_seed(orig)
    signal = (torch.rand(40001, generator=generator) - 0.5) * 1.8
    expected = resample(signal, orig, new)
    resampler = StreamingResampler(orig, new)
    sizes = torch.randint(0, 2500, (100,), generator=generator).tolist()
    pieces, position = [], 0
    for size in sizes:
        pieces.append(resampler.process(signal[position : position + size]))
        position += size
    pieces.append(resampler.process(signal[position:]))
    pieces.append(resampler.flush())
    streamed = torch.cat(pieces)
    assert streamed.shape == expected.shape
    assert torch.allclose(streamed, expected, atol=1e-5)


def test_resampler_rejects_bad_rates():
    with pytest.raises(ValueError, match="positive"):
        StreamingResampler(0, 16000)


def test_fbank_equals_whole_signal():
    config = FeatureConfig()
    signal = load_audio(LJSPEECH_MINI / "wavs" / "LJ001-0002.wav", 16000)
    expected = FbankExtractor(config)(signal)
    fbank = StreamingFbank(config)
    pieces = [fbank.process(signal[i : i + 333]) for i in range(0, signal.shape[0], 333)]
    streamed = torch.cat(pieces)
    assert streamed.shape == expected.shape
    assert torch.allclose(streamed, expected, atol=1e-4)
    assert fbank.buffered_samples < fbank.extractor.win_length + fbank.extractor.hop_length


# ----------------------------------------------------------------- endpointing


def _log_probs(labels: list[int], vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), vocab).float().log_softmax(-1) * 10


def _endpointer(**options) -> tuple[_GreedyEndpointer, CharTokenizer]:
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz' ")
    return _GreedyEndpointer(tokenizer, 0.04, StreamingOptions(**options)), tokenizer


def test_endpoint_after_trailing_blanks():
    endpointer, tok = _endpointer(endpoint_silence_s=0.2)  # 5 frames
    h, i, b = tok.encode("h")[0], tok.encode("i")[0], tok.blank_id
    labels = [b, b, b, h, h, b, i] + [b] * 5 + [b, b, i, b]
    finals = endpointer.decode_chunk(_log_probs(labels, tok.vocab_size), first_frame=0)
    assert [f.text for f in finals] == ["hi"]
    assert finals[0].utterance == 0
    assert finals[0].start == pytest.approx(3 * 0.04)
    assert finals[0].end == pytest.approx(12 * 0.04)
    partial = endpointer.partial(len(labels))
    assert (partial.text, partial.utterance, partial.type) == ("i", 1, "partial")
    assert partial.start == pytest.approx(14 * 0.04)
    assert [f.text for f in endpointer.finish(len(labels))] == ["i"]


def test_forced_endpoint_keeps_repeat_collapsed():
    endpointer, tok = _endpointer(endpoint_silence_s=None, max_utterance_s=0.12)  # 3 frames
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    finals = endpointer.decode_chunk(_log_probs([a, a, a, a, b, b], tok.vocab_size), first_frame=10)
    # The run of "a" spans the forced split, and is still one "a".
    assert [f.text for f in finals] == ["a"]
    assert [f.text for f in endpointer.finish(16)] == ["b"]


def test_silent_stream_gets_one_empty_final():
    endpointer, tok = _endpointer()
    assert endpointer.decode_chunk(_log_probs([tok.blank_id] * 50, tok.vocab_size), first_frame=0) == []
    finals = endpointer.finish(50)
    assert [(f.type, f.text, f.utterance) for f in finals] == [("final", "", 0)]


@pytest.mark.parametrize(
    "options", [{"chunk_frames": 0}, {"left_chunks": -2}, {"endpoint_silence_s": 0.0}, {"max_utterance_s": -1.0}]
)
def test_invalid_options_rejected(options):
    with pytest.raises(ValueError):
        StreamingOptions(**options)


# ----------------------------------------------------------------- real clips


def test_overfit_model_learned_clips(realtime_run, offline_texts):
    rates = error_rates([realtime_run.texts[i] for i in REALTIME_CLIPS], [offline_texts[i] for i in REALTIME_CLIPS])
    assert rates.cer <= 0.05, offline_texts


def _piece_sizes(piece: str, rate: int, total: int, generator: np.random.Generator) -> list[int]:
    if piece == "random":
        return generator.integers(1, rate, size=total).tolist()
    step = {"10ms": rate // 100, "100ms": rate // 10, "1s": rate}[piece]
    return [step] * (total // step + 1)


@pytest.mark.parametrize("piece", ["10ms", "100ms", "1s", "random"])
def test_streamed_text_equals_offline(streaming_model, realtime_run, offline_texts, piece):
    generator = np.random.default_rng(7)
    for clip_id in REALTIME_CLIPS:
        samples, rate = load_audio_with_rate(realtime_run.audio[clip_id])
        recognizer = StreamingRecognizer(streaming_model)
        results = _feed(recognizer, samples, rate, _piece_sizes(piece, rate, samples.shape[0], generator))
        assert join_finals(results) == offline_texts[clip_id], (clip_id, piece)


@pytest.mark.parametrize("piece", ["100ms", "random"])
def test_unseen_long_clips_stream_exactly(streaming_model, piece):
    """Clips longer than the left context, which the model never saw: garbled text, but the same text."""
    clip_ids = ["LJ001-0001", "LJ001-0005"]
    paths = [str(LJSPEECH_MINI / "wavs" / f"{i}.wav") for i in clip_ids]
    offline = Recognizer(streaming_model.model, streaming_model.config, streaming_model.tokenizer,
                         torch.device("cpu")).transcribe(paths)
    options = StreamingOptions(endpoint_silence_s=None, max_utterance_s=None)
    generator = np.random.default_rng(3)
    for path, expected in zip(paths, offline, strict=True):
        samples, rate = load_audio_with_rate(path)
        recognizer = StreamingRecognizer(streaming_model, options)
        results = _feed(recognizer, samples, rate, _piece_sizes(piece, rate, samples.shape[0], generator))
        assert join_finals(results) == " ".join(expected.text.split()), path
        assert len(expected.text) > 50


def test_no_reset_matches_offline_across_utterances(streaming_model, realtime_run):
    """Without the endpoint reset, a stream of several utterances decodes as the whole recording does."""
    waveforms = [load_audio_with_rate(realtime_run.audio[i]) for i in REALTIME_CLIPS]
    rate = waveforms[0][1]
    recording = torch.cat([w for w, _ in waveforms])
    offline = Recognizer(streaming_model.model, streaming_model.config, streaming_model.tokenizer,
                         torch.device("cpu")).decode([resample(recording, rate, 16000)])[0][0]
    recognizer = StreamingRecognizer(streaming_model, StreamingOptions(reset_on_endpoint=False))
    results = _feed(recognizer, recording, rate, [rate // 5] * 100)
    finals = [r for r in results if r.type == "final"]
    # Without the reset the overfit model garbles later clips, but endpointing still splits them.
    assert len(finals) >= 2
    assert " ".join(f.text for f in finals).replace(" ", "") == offline.replace(" ", "")


def test_partials_arrive_per_chunk(streaming_model, realtime_run):
    samples, rate = load_audio_with_rate(realtime_run.audio["LJ001-0013"])
    recognizer = StreamingRecognizer(streaming_model)
    chunk = int(rate * recognizer.chunk_seconds)
    partials = []
    for position in range(0, samples.shape[0], chunk):
        results = recognizer.accept_waveform(samples[position : position + chunk], rate)
        partials += [r for r in results if r.type == "partial"]
    assert len(partials) >= samples.shape[0] // chunk - 1
    ends = [p.end for p in partials]
    assert ends == sorted(ends)
    assert ends[0] == pytest.approx(recognizer.chunk_seconds)
    growing = [p.text for p in partials if p.text]
    assert len(growing) >= 2
    assert all(realtime_run.texts["LJ001-0013"].startswith(text) for text in growing)
    finals = recognizer.finalize()
    assert join_finals(finals) == realtime_run.texts["LJ001-0013"]


def test_int16_and_16khz_input(streaming_model, realtime_run, offline_texts):
    samples = load_audio(realtime_run.audio["LJ001-0008"], 16000)
    pcm = (samples * 32767).round().to(torch.int16).numpy()
    recognizer = StreamingRecognizer(streaming_model)
    results = _feed(recognizer, torch.from_numpy(pcm), 16000, [1600] * 100)
    assert join_finals(results) == offline_texts["LJ001-0008"]


def test_stream_misuse_rejected(streaming_model):
    recognizer = StreamingRecognizer(streaming_model)
    recognizer.accept_waveform(np.zeros(100, dtype=np.float32), 22050)
    with pytest.raises(ValueError, match="sample rate changed"):
        recognizer.accept_waveform(np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="mono"):
        recognizer.accept_waveform(np.zeros((2, 100), dtype=np.float32), 22050)
    with pytest.raises(TypeError, match="int16"):
        recognizer.accept_waveform(np.zeros(100, dtype=np.int32), 22050)
    recognizer.finalize()
    with pytest.raises(RuntimeError, match="finalized"):
        recognizer.accept_waveform(np.zeros(100, dtype=np.float32), 22050)
    with pytest.raises(RuntimeError, match="finalized"):
        recognizer.finalize()
    recognizer.reset()
    assert recognizer.accept_waveform(np.zeros(100, dtype=np.float32), 16000) == []


def test_long_stream_state_bounded(streaming_model, realtime_run):
    """Stream 20 minutes of speech and faint noise at 22050 Hz in 1 s pieces; the state must not grow.

    Each block is a padded training clip plus more noise, rounded up to whole 640 ms chunks, so
    that every block meets the chunk grid and the endpoint reset at the same offset. Blocks after
    the first then decode identically; the first one, which starts the stream, gives the
    training transcript.
    """
    clip_id = "LJ001-0008"
    padded, rate = load_audio_with_rate(realtime_run.audio[clip_id])
    chunk = round(streaming_model.config.model.chunk_frames * 0.04 * rate)
    extra = int(PAD_SECONDS * rate)
    extra += -(padded.shape[0] + extra) % chunk
    block = torch.cat([padded, torch.randn(extra, generator=torch.Generator().manual_seed(1)) * NOISE_STD])
    repeats = int(20 * 60 * rate / block.shape[0]) + 1
    recognizer = StreamingRecognizer(streaming_model)
    sizes, finals = [], []
    for _ in range(repeats):
        for position in range(0, block.shape[0], rate):
            results = recognizer.accept_waveform(block[position : position + rate], rate)
            finals += [r for r in results if r.type == "final"]
            sizes.append(recognizer.state_nbytes())
    finals += [r for r in recognizer.finalize() if r.text]
    assert recognizer.audio_seconds >= 20 * 60

    first_minute = max(sizes[:60])
    assert max(sizes) <= first_minute * 1.05, (first_minute, max(sizes))
    # One utterance per block, closed by the noise after it.
    assert len(finals) == repeats
    assert [f.utterance for f in finals] == list(range(repeats))
    assert finals[0].text == realtime_run.texts[clip_id]
    assert {f.text for f in finals[1:]} == {finals[1].text}
    assert error_rates([realtime_run.texts[clip_id]], [finals[1].text]).cer <= 0.4, finals[1].text
    # Times fall inside their own block, and repeat with the block. The overfit model emits its
    # first character as soon as its training clips allowed, early in the leading noise, so the
    # times follow the model's CTC alignment rather than the speech onset.
    block_seconds = block.shape[0] / rate
    for index, final in enumerate(finals):
        block_start = index * block_seconds
        assert block_start <= final.start < final.end <= block_start + block_seconds + 0.64, (index, final)
        if index >= 2:
            assert final.start - block_start == pytest.approx(finals[1].start - block_seconds, abs=1e-6)
            assert final.end - block_start == pytest.approx(finals[1].end - block_seconds, abs=1e-6)


# ----------------------------------------------------------------- model resolution


def test_resolve_model_sources(realtime_run, tmp_path):
    root = realtime_run.run_dir.parent
    assert resolve_streaming_model(realtime_run.checkpoint, root) == realtime_run.checkpoint
    assert resolve_streaming_model(realtime_run.run_dir.name, root, confine_to_root=True) == realtime_run.checkpoint
    with pytest.raises(ValueError, match="outside the checkpoints folder"):
        resolve_streaming_model(str(realtime_run.dataset), root, confine_to_root=True)
    with pytest.raises(ValueError, match="outside the checkpoints folder"):
        resolve_streaming_model("../ljspeech-padded", root, confine_to_root=True)
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_streaming_model("no-such-model", root, confine_to_root=True)
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(realtime_run.checkpoint, models / "named.pt")
    assert resolve_streaming_model("named", tmp_path) == models / "named.pt"


def test_conformer_checkpoint_rejected(tmp_path):
    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), model_type="conformer", preset="tiny")
    tokenizer = CharTokenizer(config.text.charset)
    model = build_model(config, tokenizer.vocab_size)
    path = tmp_path / "conformer.pt"
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "config": config.to_dict(),
                                "tokenizer": tokenizer.to_dict()}, step=0, epoch=0)
    with pytest.raises(ValueError, match="needs a realtime model"):
        StreamingModel.from_checkpoint(path)
    with pytest.raises(ValueError, match="needs a realtime model"):
        StreamingModel(model, config, tokenizer)


# ----------------------------------------------------------------- asr stream


def _stream_cli(argv: list[str]) -> int:
    from asrlib.streaming_cli import add_stream_parser

    parser = argparse.ArgumentParser(prog="asr")
    parser.add_argument("--config")
    add_stream_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_stream_cli_prints_partials_and_final(realtime_run, capsys):
    clip_id = REALTIME_CLIPS[2]
    root = realtime_run.run_dir.parent
    status = _stream_cli(["stream", realtime_run.run_dir.name, str(realtime_run.audio[clip_id]),
                          "--checkpoints", str(root), "--chunk-ms", "250", "--json"])
    assert status == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    partials = [r for r in records if r["type"] == "partial"]
    finals = [r for r in records if r["type"] == "final"]
    assert len(partials) >= 4
    assert all(r["compute_ms"] >= 0 and "lag_ms" not in r for r in records)
    assert " ".join(f["text"] for f in finals) == realtime_run.texts[clip_id]
    assert "RTF" in captured.err


def test_stream_cli_realtime_pacing(realtime_run, capsys):
    clip_id = REALTIME_CLIPS[1]
    status = _stream_cli(["stream", str(realtime_run.checkpoint), str(realtime_run.audio[clip_id]), "--realtime",
                          "--chunk-ms", "640"])
    assert status == 0
    out = capsys.readouterr().out
    assert "lag" in out
    assert f"final   {realtime_run.texts[clip_id]!r}" in out
