"""Tests for asrlib.audio: every container decodes real speech, and bad input raises AudioError.

Fixtures are encoded at test time from one real LJSpeech clip (22050 Hz, 1.90 s) with soundfile
(libsndfile) and PyAV, so no binary test data lives in the repository.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from asrlib.audio import (
    AudioError,
    AudioInfo,
    audio_info,
    detect_format,
    load_audio,
    load_audio_with_rate,
    resample,
    save_wav,
    to_mono,
)

CLIP_ID = "LJ001-0002"
DURATION_TOLERANCE = 0.02  # seconds, because lossy codecs pad or trim up to one frame


@pytest.fixture(scope="module")
def speech(ljspeech_mini: Path) -> tuple[np.ndarray, int]:
    """The real clip as float32 (T,) samples and its sample rate (22050 Hz)."""
    samples, rate = sf.read(ljspeech_mini / "wavs" / f"{CLIP_ID}.wav", dtype="float32")
    return samples, rate


class _NonSeekableSink(io.RawIOBase):
    """A write-only stream that cannot seek, like the socket a browser MediaRecorder streams to.

    FFmpeg's WebM muxer then writes Segment and Cluster with unknown sizes and no duration,
    which is the layout MediaRecorder produces.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self.buffer += bytes(data)
        return len(data)


def _encode_pyav(
    path: Path,
    samples: np.ndarray,
    rate: int,
    container_format: str,
    codec: str,
    out_rate: int,
    *,
    streamed: bool,
) -> None:
    """Encode (C, T) float32 samples with PyAV. `streamed` writes through a non-seekable sink."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    sink: io.RawIOBase | io.BytesIO = _NonSeekableSink() if streamed else io.BytesIO()
    with av.open(sink, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        # With a timestamp the encoder starts at -1024, so the MP4 muxer writes an edit list
        # and decoders drop AAC's 1024 priming samples.
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = sink.buffer if isinstance(sink, _NonSeekableSink) else sink.getvalue()
    path.write_bytes(bytes(data))


def _to_rate(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    return resample(torch.from_numpy(samples), rate, new_rate).numpy()


def _write_soundfile(format_name: str, subtype: str, rate: int | None = None) -> Callable:
    def write(path: Path, samples: np.ndarray, native_rate: int) -> None:
        target_rate = rate or native_rate
        data = (
            samples if target_rate == native_rate else _to_rate(samples, native_rate, target_rate)
        )
        sf.write(path, data, target_rate, format=format_name, subtype=subtype)

    return write


def _write_webm_opus(path: Path, samples: np.ndarray, rate: int) -> None:
    _encode_pyav(path, samples[None, :], rate, "webm", "libopus", 48000, streamed=True)


def _write_m4a_aac(path: Path, samples: np.ndarray, rate: int) -> None:
    _encode_pyav(path, samples[None, :], rate, "mp4", "aac", rate, streamed=False)


# name: (writer, file name, detected format, minimum correlation with the original at 16 kHz)
FORMATS: dict[str, tuple[Callable, str, str, float]] = {
    "wav_pcm_u8": (_write_soundfile("WAV", "PCM_U8"), "clip.wav", "wav", 0.99),
    "wav_pcm_16": (_write_soundfile("WAV", "PCM_16"), "clip.wav", "wav", 0.999),
    "wav_pcm_24": (_write_soundfile("WAV", "PCM_24"), "clip.wav", "wav", 0.999),
    "wav_pcm_32": (_write_soundfile("WAV", "PCM_32"), "clip.wav", "wav", 0.999),
    "wav_float": (_write_soundfile("WAV", "FLOAT"), "clip.wav", "wav", 0.999),
    "wav_double": (_write_soundfile("WAV", "DOUBLE"), "clip.wav", "wav", 0.999),
    "rf64_pcm_16": (_write_soundfile("RF64", "PCM_16"), "clip.wav", "rf64", 0.999),
    "aiff_pcm_16": (_write_soundfile("AIFF", "PCM_16"), "clip.aiff", "aiff", 0.999),
    "w64_pcm_16": (_write_soundfile("W64", "PCM_16"), "clip.w64", "w64", 0.999),
    "caf_pcm_16": (_write_soundfile("CAF", "PCM_16"), "clip.caf", "caf", 0.999),
    "au_pcm_16": (_write_soundfile("AU", "PCM_16"), "clip.au", "au", 0.999),
    "nist_pcm_16": (_write_soundfile("NIST", "PCM_16"), "clip.sph", "nist", 0.999),
    "flac": (_write_soundfile("FLAC", "PCM_16"), "clip.flac", "flac", 0.999),
    # Lossy codecs at their default bitrates reached 0.997 or more (libsndfile 1.2.2, PyAV 18.1).
    # A decoder that keeps the encoder delay shifts the signal by milliseconds and falls far
    # below 0.98.
    "ogg_vorbis": (_write_soundfile("OGG", "VORBIS"), "clip.ogg", "ogg", 0.98),
    "ogg_opus": (_write_soundfile("OGG", "OPUS", rate=48000), "clip.opus", "ogg", 0.98),
    "mp3": (_write_soundfile("MP3", "MPEG_LAYER_III"), "clip.mp3", "mp3", 0.98),
    "webm_opus": (_write_webm_opus, "clip.webm", "webm", 0.98),
    "m4a_aac": (_write_m4a_aac, "clip.m4a", "mp4", 0.98),
}


@pytest.fixture(scope="module")
def encoded(
    tmp_path_factory: pytest.TempPathFactory, speech: tuple[np.ndarray, int]
) -> dict[str, Path]:
    """The speech clip written once in every format in FORMATS."""
    samples, rate = speech
    paths = {}
    for key, (writer, file_name, _, _) in FORMATS.items():
        path = tmp_path_factory.mktemp(key) / file_name
        writer(path, samples, rate)
        paths[key] = path
    return paths


@pytest.fixture(scope="module")
def reference_16k(speech: tuple[np.ndarray, int]) -> np.ndarray:
    samples, rate = speech
    return _to_rate(samples, rate, 16000)


def _correlation(decoded: np.ndarray, reference: np.ndarray) -> float:
    length = min(len(decoded), len(reference))
    return float(np.corrcoef(decoded[:length], reference[:length])[0, 1])


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("key", FORMATS)
def test_format_decodes_to_mono_16k(
    key: str, encoded: dict[str, Path], speech, reference_16k
) -> None:
    samples, rate = speech
    waveform = load_audio(encoded[key])

    assert waveform.dtype == torch.float32
    assert waveform.dim() == 1
    assert abs(len(waveform) / 16000 - len(samples) / rate) <= DURATION_TOLERANCE
    assert float(waveform.abs().max()) <= 1.0
    assert _correlation(waveform.numpy(), reference_16k) > FORMATS[key][3]


@pytest.mark.parametrize("key", FORMATS)
def test_bytes_input_matches_path(key: str, encoded: dict[str, Path]) -> None:
    from_path = load_audio(encoded[key])
    from_bytes = load_audio(encoded[key].read_bytes())

    assert torch.equal(from_path, from_bytes)


@pytest.mark.parametrize("key", FORMATS)
def test_audio_info_reads_header(key: str, encoded: dict[str, Path], speech) -> None:
    samples, rate = speech
    info = audio_info(encoded[key])
    native = 48000 if key in ("ogg_opus", "webm_opus") else rate

    assert isinstance(info, AudioInfo)
    assert info.format == FORMATS[key][2]
    assert info.sample_rate == native
    assert info.channels == 1
    assert abs(info.duration - len(samples) / rate) <= DURATION_TOLERANCE
    assert info.num_frames == round(info.duration * info.sample_rate)


def test_file_object_input(encoded: dict[str, Path]) -> None:
    with open(encoded["flac"], "rb") as handle:
        waveform = load_audio(handle)

    assert torch.equal(waveform, load_audio(encoded["flac"]))


def test_text_mode_file_object_raises(encoded: dict[str, Path]) -> None:
    with open(encoded["wav_pcm_16"], encoding="latin-1") as handle:
        _raises(handle, "binary mode", label=str(encoded["wav_pcm_16"]))


def test_native_rate_kept(encoded: dict[str, Path], speech) -> None:
    samples, rate = speech
    native = load_audio(encoded["wav_pcm_16"], sample_rate=None)
    waveform, native_rate = load_audio_with_rate(encoded["wav_pcm_16"])

    assert native_rate == rate
    assert len(native) == len(samples)
    assert torch.equal(native, waveform)
    assert torch.allclose(native, torch.from_numpy(samples), atol=1 / 32768)


def test_resample_to_other_rate(encoded: dict[str, Path], speech) -> None:
    samples, rate = speech
    waveform = load_audio(encoded["flac"], sample_rate=8000)

    assert abs(len(waveform) - len(samples) * 8000 / rate) <= 1


@pytest.mark.parametrize(
    ("writer_key", "misleading_name"),
    [
        ("flac", "clip.wav"),
        ("ogg_vorbis", "clip.mp3"),
        ("webm_opus", "clip.wav"),
        ("wav_pcm_16", "clip.flac"),
        ("wav_pcm_16", "clip.raw"),
        ("mp3", "clip.raw"),
    ],
)
def test_format_detected_from_content(
    writer_key: str, misleading_name: str, encoded: dict[str, Path], tmp_path: Path
) -> None:
    renamed = tmp_path / misleading_name
    renamed.write_bytes(encoded[writer_key].read_bytes())

    assert audio_info(renamed).format == FORMATS[writer_key][2]
    assert torch.equal(load_audio(renamed), load_audio(encoded[writer_key]))


def test_stereo_wav_mixed_down(tmp_path: Path, speech) -> None:
    samples, rate = speech
    stereo = np.stack([samples, -0.5 * samples], axis=1)  # (T, 2): mean is 0.25 * samples
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, rate, subtype="FLOAT")

    waveform = load_audio(path, sample_rate=None)

    assert audio_info(path).channels == 2
    assert waveform.dim() == 1
    assert torch.allclose(waveform, torch.from_numpy(0.25 * samples), atol=1e-6)


def test_stereo_webm_mixed_down(tmp_path: Path, speech, reference_16k) -> None:
    samples, rate = speech
    path = tmp_path / "stereo.webm"
    _encode_pyav(
        path, np.stack([samples, 0.5 * samples]), rate, "webm", "libopus", 48000, streamed=True
    )

    waveform = load_audio(path)

    assert audio_info(path).channels == 2
    assert waveform.dim() == 1
    assert _correlation(waveform.numpy(), reference_16k) > 0.9
    # The mean of the two channels is 0.75 of the original, so the level shows both were averaged.
    gain = float(
        np.dot(waveform.numpy()[: len(reference_16k)], reference_16k[: len(waveform)])
        / np.dot(reference_16k, reference_16k)
    )
    assert 0.6 < gain < 0.9


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"RF64\xff\xff\xff\xffWAVEds64", "rf64"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02" + bytes(22) + b"OpusHead", "ogg"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64\x00\x00", "mp3"),
        (b"\xff\xf1\x50\x80\x02\x1f", "aac"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "webm"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska", "matroska"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "mp4"),
        (b"FORM\x00\x00\x10\x00AIFFCOMM", "aiff"),
        (b"<!DOCTYPE html><html>", None),
        (b"RIFF\x24\x00\x00\x00AVI LIST", None),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", None),
        (b"", None),
    ],
)
def test_detect_format_table(header: bytes, expected: str | None) -> None:
    assert detect_format(header) == expected


def test_detect_format_looks_behind_id3(encoded: dict[str, Path]) -> None:
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x05" + bytes(5)  # a 5-byte tag body
    header = tag + encoded["flac"].read_bytes()[:64]

    assert detect_format(header) == "flac"


# ---------------------------------------------------------------------------------------------
# Bad audio: each case raises AudioError naming the source and the reason


def _raises(source, reason_part: str, *, label: str, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as caught:
        load_audio(source, **kwargs)
    err = caught.value
    assert err.source == label
    assert label in str(err)
    assert reason_part in err.reason
    return err


def test_missing_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.wav"
    _raises(path, "file not found", label=str(path))
    with pytest.raises(AudioError, match="file not found"):
        audio_info(path)


def test_directory_raises(tmp_path: Path) -> None:
    _raises(tmp_path, "is a directory", label=str(tmp_path))


def test_empty_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _raises(path, "empty file (0 bytes)", label=str(path))
    _raises(b"", "empty file (0 bytes)", label="<bytes>")


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (
            b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head></html>\n",
            "HTML document",
        ),
        (b"id|text\nLJ001-0001|Printing, in the only sense\n", "text"),
        (b'{"error": "quota exceeded"}', "JSON"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG image"),
    ],
)
def test_non_audio_raises(tmp_path: Path, content: bytes, kind: str) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(content)

    err = _raises(path, "not a recognised audio format", label=str(path))

    assert kind in err.reason
    with pytest.raises(AudioError, match="not a recognised audio format"):
        audio_info(path)


def test_random_bytes_raise() -> None:
    noise = random.Random(0).randbytes(4000)

    err = _raises(noise, "not a recognised audio format", label="<bytes>")

    assert "first bytes" in err.reason
    with pytest.raises(AudioError, match=r"not a recognised audio format .first bytes"):
        audio_info(noise)


@pytest.mark.parametrize("cut", [44, 20000])
def test_truncated_wav_raises(encoded: dict[str, Path], tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.wav"
    path.write_bytes(encoded["wav_pcm_16"].read_bytes()[:cut])

    err = _raises(path, "truncated", label=str(path))

    assert "41885 frames" in err.reason
    with pytest.raises(AudioError, match="truncated"):
        audio_info(path)


def test_wav_cut_inside_header_raises(encoded: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    path.write_bytes(encoded["wav_pcm_16"].read_bytes()[:30])

    _raises(path, "truncated", label=str(path))


@pytest.mark.parametrize(
    "key", ["flac", "ogg_vorbis", "ogg_opus", "mp3", "webm_opus", "m4a_aac", "rf64_pcm_16"]
)
def test_truncated_compressed_raises(key: str, encoded: dict[str, Path], tmp_path: Path) -> None:
    data = encoded[key].read_bytes()
    path = tmp_path / f"cut-{encoded[key].name}"
    path.write_bytes(data[: int(len(data) * 0.6)])

    _raises(path, "truncated", label=str(path))


def test_streamed_wav_header_loads(encoded: dict[str, Path], tmp_path: Path) -> None:
    # Writers that stream to a pipe (FFmpeg, for one) cannot go back to fill in the sizes, so
    # they leave 0xFFFFFFFF in the RIFF and data chunk headers. That is not truncation.
    data = bytearray(encoded["wav_pcm_16"].read_bytes())
    data_chunk = data.index(b"data")
    data[4:8] = b"\xff\xff\xff\xff"
    data[data_chunk + 4 : data_chunk + 8] = b"\xff\xff\xff\xff"
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(data))

    assert torch.equal(load_audio(path), load_audio(encoded["wav_pcm_16"]))


def test_ogg_cut_at_page_boundary_warns(
    encoded: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # NOTE: this documents a known gap. A cut exactly between Ogg pages leaves only the missing
    # end-of-stream flag as evidence, so the shorter audio loads with a warning.
    data = encoded["ogg_vorbis"].read_bytes()
    page_start = data.index(b"OggS", len(data) // 2)
    path = tmp_path / "cut.ogg"
    path.write_bytes(data[:page_start])

    with caplog.at_level("WARNING", logger="asrlib.audio"):
        waveform = load_audio(path)

    assert 0 < len(waveform) < len(load_audio(encoded["ogg_vorbis"]))
    assert "end-of-stream" in caplog.text
    assert str(path) in caplog.text


def test_zero_samples_raise(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0,), dtype=np.float32), 16000, subtype="PCM_16")

    _raises(path, "contains no samples", label=str(path))
    with pytest.raises(AudioError, match="contains no samples"):
        audio_info(path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav_raises(tmp_path: Path, speech, bad_value: float) -> None:
    samples, rate = speech
    corrupted = samples.copy()
    corrupted[1000] = bad_value
    path = tmp_path / "nan.wav"
    sf.write(path, corrupted, rate, subtype="FLOAT")

    _raises(path, "NaN or infinite", label=str(path))


def test_float_wav_over_full_scale_clipped(tmp_path: Path, speech) -> None:
    samples, rate = speech
    path = tmp_path / "loud.wav"
    sf.write(path, samples * 4.0, rate, subtype="FLOAT")

    waveform = load_audio(path, sample_rate=None)

    assert float(waveform.abs().max()) == 1.0


def test_too_short_raises(encoded: dict[str, Path]) -> None:
    path = encoded["flac"]
    err = _raises(path, "too short", label=str(path), min_duration=5.0)

    assert "1.900 s" in err.reason
    assert "5.000 s" in err.reason
    assert len(load_audio(path, min_duration=1.5)) > 0


def test_name_overrides_label(encoded: dict[str, Path]) -> None:
    data = encoded["webm_opus"].read_bytes()

    _raises(data[:500], "truncated", label="upload.webm", name="upload.webm")
    _raises(data[:500], "truncated", label="<bytes>")
    _raises(encoded["flac"], "too short", label="upload.flac", name="upload.flac", min_duration=9.0)


# ---------------------------------------------------------------------------------------------
# Helpers and writing


def test_to_mono_shapes() -> None:
    stereo = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])

    assert torch.equal(to_mono(stereo), torch.tensor([0.5, 0.0, 0.0]))
    assert torch.equal(to_mono(stereo[:1]), stereo[0])
    assert torch.equal(to_mono(stereo[0]), stereo[0])
    with pytest.raises(ValueError, match="shape"):
        to_mono(torch.zeros(1, 2, 3))


def test_resample_length_and_identity() -> None:
    tone = torch.sin(torch.arange(22050) * 2 * torch.pi * 440 / 22050)

    assert resample(tone, 22050, 22050) is tone
    assert resample(tone, 22050, 16000).shape == (16000,)
    assert resample(tone.repeat(2, 1), 22050, 16000).shape == (2, 16000)


def test_save_wav_round_trip(tmp_path: Path, speech) -> None:
    samples, rate = speech
    path = tmp_path / "out" / "saved.wav"

    save_wav(path, torch.from_numpy(samples), rate)
    info = sf.info(path)
    waveform, loaded_rate = load_audio_with_rate(path)

    assert info.subtype == "PCM_16"
    assert loaded_rate == rate
    assert torch.allclose(waveform, torch.from_numpy(samples), atol=1 / 32768)
    assert sorted(p.name for p in path.parent.iterdir()) == ["saved.wav"]  # no temporary file left


def test_save_wav_stereo_and_invalid(tmp_path: Path) -> None:
    stereo = torch.tensor([[0.5, -0.5, 2.0], [0.0, 0.25, -2.0]])
    path = tmp_path / "stereo.wav"

    save_wav(path, stereo, 8000)

    assert sf.info(path).channels == 2
    assert sf.read(path, dtype="float32")[0].max() <= 1.0
    with pytest.raises(ValueError, match="NaN"):
        save_wav(path, torch.tensor([0.0, float("nan")]), 8000)


# ---------------------------------------------------------------------------------------------
# Real corpora


def test_shared_corpora_load(shared_data: Path) -> None:
    wavs = sorted(shared_data.glob("*/wavs/*.wav"))
    assert len(wavs) >= 700

    for path in wavs:
        info = audio_info(path)
        assert info.format == "wav", path
        assert info.duration > 0.1, path

    for path in random.Random(0).sample(wavs, 20):
        waveform = load_audio(path)
        assert abs(len(waveform) / 16000 - audio_info(path).duration) <= 0.001, path
        assert float(waveform.abs().max()) > 0.01, path
