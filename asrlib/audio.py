"""Decode audio files into mono float32 tensors at a chosen sample rate.

The container format is detected from the content (magic bytes), never from the file name.
libsndfile (through soundfile) decodes WAV, RF64, W64, FLAC, Ogg Vorbis, Ogg Opus, MP3, AIFF,
CAF, AU and NIST SPHERE. PyAV (FFmpeg) decodes the rest: WebM/Matroska as browser MediaRecorder
writes it, MP4/M4A, ADTS AAC, AMR, and anything libsndfile rejects. torchaudio 2.9 and later
no longer read files, so torchaudio is used only to resample.

libsndfile quietly decodes a cut WAV or Ogg file up to the cut, and FFmpeg does the same for
WebM, so the container structure is checked against the file size before decoding and any missing
bytes raise `AudioError`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf
import torch
from torchaudio.functional.functional import _apply_sinc_resample_kernel, _get_sinc_resample_kernel

from asrlib.atomic import atomic_open

logger = logging.getLogger(__name__)

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Formats that go to libsndfile first. Every other format goes straight to PyAV.
SOUNDFILE_FORMATS = frozenset(
    {"wav", "rf64", "w64", "flac", "ogg", "mp3", "aiff", "caf", "au", "nist"}
)

# Samples per MPEG audio frame. A frame count from an MP3 Xing/Info header may differ from
# the decoded count by up to one frame, so smaller shortfalls are not reported as truncation.
_FRAME_COUNT_TOLERANCE = 1152

# WAV data-chunk sizes that streaming writers put in the header when the length is unknown
# (FFmpeg writing to a pipe uses 0xFFFFFFFF).
_STREAMED_WAV_SIZES = (0, 0xFFFFFFFF)

# Matroska master elements that MediaRecorder writes with "unknown size": Segment and Cluster.
_EBML_OPEN_ENDED_IDS = frozenset({0x18538067, 0x1F43B675})


class AudioError(ValueError):
    """Audio that cannot be used. str(err) names the source and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """Stream properties of an audio file, with `format` the detected container, e.g. "webm"."""

    sample_rate: int  # Hz
    num_frames: int  # samples per channel
    channels: int
    duration: float  # seconds
    format: str


@dataclass
class _Input:
    """A source resolved to either a file path or an in-memory copy of its bytes."""

    label: str
    path: Path | None = None
    data: bytes | None = None

    def stream(self) -> BinaryIO:
        """Open a new binary stream over the content.

        Both decoders get a stream without a file name, because soundfile treats a name ending in
        ".raw" as headerless RAW and FFmpeg lets the extension weigh in its format probe. A
        stream opened from a descriptor has the descriptor number as its name.
        """
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(os.open(self.path, os.O_RDONLY), "rb")


# ---------------------------------------------------------------------------------------------
# Format detection


def _id3_size(header: bytes) -> int:
    """Return the length of a leading ID3v2 tag, or 0 when there is none."""
    if len(header) < 10 or header[:3] != b"ID3":
        return 0
    # The tag size is four 7-bit "syncsafe" bytes, excluding the 10-byte header and the footer.
    size = 0
    for byte in header[6:10]:
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if header[5] & 0x10 else 0
    return 10 + size + footer


def _mpeg_audio_kind(header: bytes) -> str | None:
    """Classify an MPEG audio frame header (11-bit sync) as "mp3" (layers I-III) or ADTS "aac"."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    layer = (header[1] >> 1) & 0x3
    if layer == 0:
        # ADTS has a 12-bit sync word and layer 00. MPEG audio never uses layer 00.
        return "aac" if header[1] & 0xF6 == 0xF0 else None
    version = (header[1] >> 3) & 0x3
    bitrate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 0x3
    if version == 1 or bitrate_index == 0xF or rate_index == 0x3:
        return None  # reserved values, so these are random bytes, not a frame header
    return "mp3"


def detect_format(header: bytes) -> str | None:
    """Detect the container format from the first bytes of a file, or return None if unknown.

    Returns one of "wav", "rf64", "w64", "flac", "ogg", "mp3", "aac", "webm", "matroska", "mp4",
    "aiff", "caf", "au", "amr" or "nist". An ID3v2 tag is skipped when `header` reaches past it,
    so FLAC or AAC behind a tag is found; otherwise a tag means "mp3".
    """
    header = bytes(header[:4096])
    if len(header) >= 12 and header[8:12] == b"WAVE":
        if header[:4] == b"RIFF":
            return "wav"
        if header[:4] in (b"RF64", b"BW64"):
            return "rf64"
    if header[:4] == b"riff" and header[4:8] == b"\x2e\x91\xcf\x11":  # Sony Wave64 GUID prefix
        return "w64"
    if header[:4] == b"fLaC":
        return "flac"
    if header[:4] == b"OggS":
        return "ogg"
    if header[:4] == b"\x1a\x45\xdf\xa3":  # EBML magic. The DocType names WebM or Matroska
        return "webm" if b"webm" in header[:64] else "matroska"
    if header[4:8] == b"ftyp":
        return "mp4"
    if header[:4] == b"FORM" and header[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if header[:4] == b"caff":
        return "caf"
    if header[:4] == b".snd":
        return "au"
    if header[:5] == b"#!AMR":
        return "amr"
    if header[:7] == b"NIST_1A":  # NIST SPHERE: a 1024-byte text header, then samples
        return "nist"
    tag_size = _id3_size(header)
    if tag_size:
        inner = detect_format(header[tag_size:]) if len(header) >= tag_size + 4 else None
        return inner or "mp3"
    return _mpeg_audio_kind(header)


def _describe_non_audio(header: bytes) -> str:
    """Describe what common non-audio content looks like, for the "not a recognised" error."""
    start = header[:64].lstrip().lower()
    known = [
        ((b"<!doctype html", b"<html"), "an HTML document"),
        ((b"<?xml",), "an XML document"),
        ((b"%pdf",), "a PDF document"),
        ((b"\x89png",), "a PNG image"),
        ((b"\xff\xd8\xff",), "a JPEG image"),
        ((b"gif8",), "a GIF image"),
        ((b"pk\x03\x04",), "a ZIP archive"),
        ((b"\x1f\x8b",), "a gzip archive"),
        ((b"{", b"["), "JSON or other text"),
    ]
    for prefixes, kind in known:
        if start.startswith(prefixes):
            return f"the content looks like {kind}"
    if header[:4] == b"RIFF":
        return f"RIFF file of type {header[8:12]!r}, not WAVE"
    sample = header[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "the content looks like text"
    return "first bytes: " + sample[:8].hex(" ")


# ---------------------------------------------------------------------------------------------
# Container structure checks: find bytes missing at the end before a decoder hides the loss


def _check_wav(content: bytes | mmap.mmap, label: str) -> int | None:
    """Return the frame count a RIFF/RF64 WAV header declares, or None for a streamed header.

    Raises AudioError when the data chunk contains fewer bytes than the header declares.
    """
    size_of_file = len(content)
    is_rf64 = content[:4] in (b"RF64", b"BW64")
    rf64_data_size: int | None = None
    block_align = 0
    sample_rate = 0
    pos = 12
    while pos + 8 <= size_of_file:
        chunk_id = content[pos : pos + 4]
        chunk_size = int.from_bytes(content[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"ds64" and body + 16 <= size_of_file:
            # RF64 keeps the 64-bit data size here and puts 0xFFFFFFFF in the data chunk.
            rf64_data_size = int.from_bytes(content[body + 8 : body + 16], "little")
        elif chunk_id == b"fmt " and body + 14 <= size_of_file:
            sample_rate = int.from_bytes(content[body + 4 : body + 8], "little")
            block_align = int.from_bytes(content[body + 12 : body + 14], "little")
        elif chunk_id == b"data":
            present = size_of_file - body
            if is_rf64 and chunk_size == 0xFFFFFFFF and rf64_data_size is not None:
                chunk_size = rf64_data_size
            elif chunk_size in _STREAMED_WAV_SIZES and present > 0:
                return None
            if block_align == 0 or sample_rate == 0:
                raise AudioError(
                    label, "invalid WAV header: no valid fmt chunk before the data chunk"
                )
            declared = chunk_size // block_align
            if present < chunk_size:
                have = present // block_align
                raise AudioError(
                    label,
                    f"truncated: the WAV header declares {declared} frames "
                    f"({declared / sample_rate:.3f} s) but only {have} "
                    f"({have / sample_rate:.3f} s) are present",
                )
            return declared
        pos = body + chunk_size + (chunk_size & 1)  # chunks are padded to an even length
    raise AudioError(label, "truncated: the file ends before the WAV data chunk")


def _flac_total_samples(content: bytes | mmap.mmap) -> int | None:
    """Return the total sample count from FLAC STREAMINFO, or None where the encoder left it 0."""
    start = _id3_size(content[:10]) if content[:3] == b"ID3" else 0
    # The file starts with "fLaC", a 4-byte block header, then STREAMINFO. Bytes 10..17 of
    # STREAMINFO pack rate (20 bits), channels (3), bits per sample (5) and total samples (36).
    packed = content[start + 18 : start + 26]
    if len(packed) < 8:
        return None
    total = int.from_bytes(packed, "big") & ((1 << 36) - 1)
    return total or None


def _check_ogg(content: bytes | mmap.mmap, label: str) -> None:
    """Walk the Ogg pages and raise AudioError when the last one is cut off."""
    size_of_file = len(content)
    pos = 0
    last_flags = 0
    while pos < size_of_file:
        if content[pos : pos + 4] != b"OggS":
            # Trailing bytes that are not a page (an appended tag, padding) are left to the decoder.
            logger.debug("%s: no Ogg page at byte %d, stopping the page walk", label, pos)
            return
        if pos + 27 > size_of_file:
            raise AudioError(label, f"truncated: the Ogg page at byte {pos} is cut off")
        segments = content[pos + 26]
        table_end = pos + 27 + segments
        if table_end > size_of_file:
            raise AudioError(label, f"truncated: the Ogg page at byte {pos} is cut off")
        page_end = table_end + sum(content[pos + 27 : table_end])
        if page_end > size_of_file:
            raise AudioError(
                label,
                f"truncated: the Ogg page at byte {pos} needs {page_end} bytes, "
                f"the file has {size_of_file}",
            )
        last_flags = content[pos + 5]
        pos = page_end
    if not last_flags & 0x04:
        # NOTE: a cut that falls exactly on a page boundary only loses the end-of-stream flag,
        # which some live encoders also omit, so it is logged and the audio is kept.
        logger.warning("%s: the Ogg stream has no end-of-stream page and may be truncated", label)


def _read_ebml_varint(
    content: bytes | mmap.mmap, pos: int, keep_marker: bool
) -> tuple[int, int] | None:
    """Return (value, length) of the EBML variable-length integer at `pos`, or None if invalid.

    IDs keep their length-marker bit (`keep_marker`), sizes drop it. An all-ones size is
    returned as -1, meaning "unknown size".
    """
    first = content[pos]
    if first == 0:
        return None
    length = 9 - first.bit_length()
    raw = int.from_bytes(content[pos : pos + length], "big")
    if keep_marker:
        return raw, length
    value_bits = 7 * length
    value = raw & ((1 << value_bits) - 1)
    return (-1 if value == (1 << value_bits) - 1 else value), length


def _check_ebml(content: bytes | mmap.mmap, label: str) -> None:
    """Walk the Matroska/WebM elements and raise AudioError when one runs past the end of the file.

    MediaRecorder writes Segment and Cluster with unknown size and no duration, so a cut file
    would otherwise decode as a shorter recording. The walk enters elements of unknown size and
    skips over every element whose size is known.
    """
    size_of_file = len(content)
    pos = 0
    while pos < size_of_file:
        element_id = _read_ebml_varint(content, pos, keep_marker=True)
        if element_id is None:
            return
        size_pos = pos + element_id[1]
        if size_pos >= size_of_file:
            raise AudioError(label, f"truncated: the WebM element at byte {pos} is cut off")
        element_size = _read_ebml_varint(content, size_pos, keep_marker=False)
        if element_size is None:
            return
        body = size_pos + element_size[1]
        if body > size_of_file:
            raise AudioError(label, f"truncated: the WebM element at byte {pos} is cut off")
        if element_size[0] < 0:
            if element_id[0] not in _EBML_OPEN_ENDED_IDS:
                return  # unknown size on an element this walk cannot step into
            pos = body
            continue
        end = body + element_size[0]
        if end > size_of_file:
            raise AudioError(
                label,
                f"truncated: the WebM element at byte {pos} needs {end} bytes, "
                f"the file has {size_of_file}",
            )
        pos = end


def _check_mp4(content: bytes | mmap.mmap, label: str) -> None:
    """Walk the top-level MP4 boxes and raise AudioError when one runs past the end of the file."""
    size_of_file = len(content)
    pos = 0
    while pos + 8 <= size_of_file:
        box_size = int.from_bytes(content[pos : pos + 4], "big")
        if box_size == 1 and pos + 16 <= size_of_file:
            box_size = int.from_bytes(content[pos + 8 : pos + 16], "big")  # 64-bit "largesize"
        if box_size == 0:
            return  # the last box extends to the end of the file
        if box_size < 8:
            return  # not a valid box, so it is left to the decoder
        if pos + box_size > size_of_file:
            raise AudioError(
                label,
                f"truncated: the MP4 box at byte {pos} needs {pos + box_size} bytes, "
                f"the file has {size_of_file}",
            )
        pos += box_size


def _has_vbr_header(content: bytes | mmap.mmap) -> bool:
    """Return True if the first MP3 frame carries a Xing, Info or VBRI header with a frame count."""
    start = _id3_size(content[:10]) if content[:3] == b"ID3" else 0
    first_frame = content[start : start + 256]
    return any(tag in first_frame for tag in (b"Xing", b"Info", b"VBRI"))


def _check_structure(content: bytes | mmap.mmap, fmt: str | None, label: str) -> int | None:
    """Raise AudioError for a container cut short, and return the frame count it declares."""
    if fmt in ("wav", "rf64"):
        return _check_wav(content, label)
    if fmt == "flac":
        return _flac_total_samples(content)
    if fmt == "ogg":
        _check_ogg(content, label)
    elif fmt in ("webm", "matroska"):
        _check_ebml(content, label)
    elif fmt == "mp4":
        _check_mp4(content, label)
    elif fmt == "aiff" and 8 + int.from_bytes(content[4:8], "big") > len(content):
        raise AudioError(label, "truncated: the AIFF header declares more bytes than the file has")
    return None


# ---------------------------------------------------------------------------------------------
# Sources and decoders


def _resolve(source: AudioSource, name: str | None) -> _Input:
    """Turn a path, bytes or binary file object into an _Input, rejecting missing or empty ones."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        resolved = _Input(label=name or "<bytes>", data=bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        resolved = _Input(label=name or str(path), path=path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise AudioError(resolved.label, "file not found") from None
        except OSError as err:
            raise AudioError(resolved.label, f"cannot read the file: {err.strerror}") from None
        if path.is_dir():
            raise AudioError(resolved.label, "is a directory, not an audio file")
        if size == 0:
            raise AudioError(resolved.label, "empty file (0 bytes)")
    elif hasattr(source, "read"):
        file_name = getattr(source, "name", None)
        label = name or (file_name if isinstance(file_name, str) else "<bytes>")
        if isinstance(source, io.TextIOBase):
            raise AudioError(label, "the file object must be opened in binary mode")
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise AudioError(label, "the file object must be opened in binary mode")
        resolved = _Input(label=label, data=bytes(data))
    else:
        raise TypeError(
            f"expected a path, bytes or a binary file object, got {type(source).__name__}"
        )
    if resolved.data is not None and not resolved.data:
        raise AudioError(resolved.label, "empty file (0 bytes)")
    return resolved


@contextlib.contextmanager
def _open_content(source: _Input) -> Iterator[bytes | mmap.mmap]:
    """Yield the whole content as a bytes-like object; a file is memory-mapped, not read."""
    if source.data is not None:
        yield source.data
        return
    assert source.path is not None
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(open(source.path, "rb"))
        except OSError as err:
            raise AudioError(source.label, f"cannot read the file: {err.strerror}") from None
        yield stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))


def _detect(content: bytes | mmap.mmap) -> str | None:
    """Detect the format, reading past a leading ID3 tag of any size."""
    return detect_format(content[: _id3_size(content[:10]) + 64])


def _ffmpeg_message(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def _soundfile_message(err: sf.SoundFileError) -> str:
    text = getattr(err, "error_string", None) or str(err)
    return text.removeprefix("Error : ").rstrip(".")


@dataclass
class _Decoded:
    samples: np.ndarray  # (C, T) float32
    sample_rate: int
    expected_frames: int | None  # frame count the container declares, where it is trustworthy


def _decode_soundfile(source: _Input, trust_frame_count: bool) -> _Decoded:
    """Decode with libsndfile. `trust_frame_count` makes the header's frame count binding."""
    with source.stream() as stream, sf.SoundFile(stream) as sound_file:
        declared = sound_file.frames
        samples = sound_file.read(dtype="float32", always_2d=True)  # (T, C)
        rate = sound_file.samplerate
    expected = declared if trust_frame_count else None
    return _Decoded(np.ascontiguousarray(samples.T), rate, expected)


def _decode_pyav(source: _Input) -> _Decoded:
    """Decode the first audio stream with PyAV, converting every frame to planar float32."""
    chunks: list[np.ndarray] = []
    resampler: av.AudioResampler | None = None
    rate = 0
    with source.stream() as stream, av.open(stream, mode="r") as container:
        if not container.streams.audio:
            raise AudioError(source.label, "contains no audio stream")
        audio_stream = container.streams.audio[0]
        try:
            for frame in container.decode(audio_stream):
                if resampler is None:
                    # Fix layout and rate at the first frame so that every chunk has the same shape.
                    rate = frame.sample_rate
                    resampler = av.AudioResampler(
                        format="fltp", layout=frame.layout.name, rate=rate
                    )
                chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(out.to_ndarray() for out in resampler.resample(None))
        except av.FFmpegError as err:
            decoded = sum(chunk.shape[1] for chunk in chunks) / max(rate, 1)
            raise AudioError(
                source.label,
                f"truncated or corrupt: FFmpeg failed after {decoded:.3f} s of audio "
                f"({_ffmpeg_message(err)})",
            ) from None
        if resampler is None:
            rate = audio_stream.codec_context.sample_rate or 0
            channels = audio_stream.codec_context.channels or 1
            return _Decoded(np.zeros((channels, 0), dtype=np.float32), rate, None)
    return _Decoded(np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate, None)


def _decode(source: _Input, inspection: _Inspection) -> _Decoded:
    """Decode with libsndfile where it supports the format, otherwise or on failure with PyAV."""
    fmt = inspection.format
    soundfile_error: str | None = None
    if fmt is None or fmt in SOUNDFILE_FORMATS:
        try:
            return _decode_soundfile(source, inspection.trust_frame_count)
        except sf.SoundFileError as err:
            soundfile_error = _soundfile_message(err)
            logger.debug("%s: libsndfile failed (%s), trying PyAV", source.label, soundfile_error)
    try:
        decoded = _decode_pyav(source)
    except av.FFmpegError as err:
        raise AudioError(source.label, _failure_reason(inspection, soundfile_error, err)) from None
    except AudioError as err:
        if soundfile_error is None:
            raise
        raise AudioError(err.source, f"{err.reason}; libsndfile: {soundfile_error}") from None
    if soundfile_error is not None and fmt is not None:
        logger.warning(
            "%s: libsndfile could not read this %s file (%s); decoded with PyAV",
            source.label,
            fmt,
            soundfile_error,
        )
    return decoded


def _failure_reason(
    inspection: _Inspection, soundfile_error: str | None, ffmpeg_error: Exception
) -> str:
    fmt = inspection.format
    if fmt is None:
        return f"not a recognised audio format ({inspection.header_hint})"
    details = f"FFmpeg: {_ffmpeg_message(ffmpeg_error)}"
    if soundfile_error is not None:
        details = f"libsndfile: {soundfile_error}; {details}"
    return f"cannot decode the {fmt} data, the file may be truncated or corrupt ({details})"


@dataclass
class _Inspection:
    """What the bytes of a source reveal before any decoder runs.

    `trust_frame_count` is set for MP3 with a Xing/Info header, whose frame count is exact.
    `header_hint` contains the first bytes in hex for the error when no decoder accepts the content.
    """

    format: str | None  # detected container, None if unknown
    declared_frames: int | None  # frame count from a WAV or FLAC header
    trust_frame_count: bool
    header_hint: str


def _inspect(source: _Input) -> _Inspection:
    """Detect the format and check the container, raising AudioError for non-audio or cut data."""
    with _open_content(source) as content:
        fmt = _detect(content)
        hint = ""
        if fmt is None:
            # HTML error pages, text and images are rejected here because a decoder's probe
            # would only add a less helpful message.
            hint = _describe_non_audio(bytes(content[:512]))
            if not hint.startswith("first bytes"):
                raise AudioError(source.label, f"not a recognised audio format ({hint})")
        declared_frames = _check_structure(content, fmt, source.label)
        trust_frame_count = fmt == "mp3" and _has_vbr_header(content)
    return _Inspection(fmt, declared_frames, trust_frame_count, hint)


def _load(source: AudioSource, name: str | None) -> tuple[np.ndarray, int, str]:
    """Decode and validate a source, and return ((C, T) float32 samples, sample rate, label)."""
    resolved = _resolve(source, name)
    inspection = _inspect(resolved)
    fmt = inspection.format
    decoded = _decode(resolved, inspection)

    label = resolved.label
    rate = decoded.sample_rate
    frames = decoded.samples.shape[1]
    expected = inspection.declared_frames
    if expected is None:
        expected = decoded.expected_frames
    if expected is not None and frames + _FRAME_COUNT_TOLERANCE < expected:
        raise AudioError(
            label,
            f"truncated: the header declares {expected} frames ({expected / rate:.3f} s) "
            f"but only {frames} ({frames / rate:.3f} s) could be decoded",
        )
    if frames == 0:
        raise AudioError(label, "contains no samples")
    if not np.isfinite(decoded.samples).all():
        raise AudioError(label, "contains NaN or infinite sample values")
    peak = float(np.abs(decoded.samples).max())
    if peak > 1.0:
        # Float WAV may exceed full scale, so clipping keeps the documented [-1, 1] range.
        logger.warning("%s: peak sample %.3f exceeds full scale, clipping to [-1, 1]", label, peak)
        np.clip(decoded.samples, -1.0, 1.0, out=decoded.samples)
    logger.debug(
        "%s: decoded %s, %d channels, %d frames at %d Hz",
        label,
        fmt or "unknown format",
        decoded.samples.shape[0],
        frames,
        decoded.sample_rate,
    )
    return decoded.samples, decoded.sample_rate, label


def _info_pyav(source: _Input, fmt: str | None) -> AudioInfo:
    """Read stream properties with PyAV. The frame count comes from stream or packet timestamps."""
    with source.stream() as stream, av.open(stream, mode="r") as container:
        if not container.streams.audio:
            raise AudioError(source.label, "contains no audio stream")
        audio_stream = container.streams.audio[0]
        rate = audio_stream.codec_context.sample_rate
        channels = audio_stream.codec_context.channels
        if audio_stream.duration is not None and audio_stream.time_base is not None:
            seconds = float(audio_stream.duration * audio_stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            # MediaRecorder WebM has no duration anywhere, so the packets are demuxed (not decoded).
            # NOTE: this includes the codec's priming samples (312 for Opus), so it is an estimate.
            seconds = 0.0
            for packet in container.demux(audio_stream):
                if packet.pts is not None and packet.time_base is not None:
                    end = packet.pts + (packet.duration or 0)
                    seconds = max(seconds, float(end * packet.time_base))
        container_name = container.format.name.split(",")[0]
    frames = round(seconds * rate)
    return AudioInfo(rate, frames, channels, frames / rate if rate else 0.0, fmt or container_name)


# ---------------------------------------------------------------------------------------------
# Public API


def audio_info(source: AudioSource, *, name: str | None = None) -> AudioInfo:
    """Read the sample rate, frame count and channel count without decoding where possible.

    Checks the container for truncation the same way `load_audio` does, except that a cut MP3
    or FLAC shows up only when decoded. `num_frames` is an estimate for MP3 without a Xing/Info
    header (from the bitrate) and for WebM without a duration (from packet timestamps).
    Raises AudioError for unusable audio, including 0 frames.
    """
    resolved = _resolve(source, name)
    inspection = _inspect(resolved)
    fmt = inspection.format

    info: AudioInfo | None = None
    soundfile_error: str | None = None
    if fmt is None or fmt in SOUNDFILE_FORMATS:
        try:
            with resolved.stream() as stream:
                raw = sf.info(stream)
            info = AudioInfo(
                raw.samplerate,
                raw.frames,
                raw.channels,
                raw.frames / raw.samplerate,
                fmt or raw.format.lower(),
            )
        except sf.SoundFileError as err:
            soundfile_error = _soundfile_message(err)
    if info is None:
        try:
            info = _info_pyav(resolved, fmt)
        except av.FFmpegError as err:
            raise AudioError(
                resolved.label, _failure_reason(inspection, soundfile_error, err)
            ) from None
    if info.num_frames == 0:
        raise AudioError(resolved.label, "contains no samples")
    return info


def load_audio(
    source: AudioSource,
    sample_rate: int | None = 16000,
    *,
    name: str | None = None,
    min_duration: float = 0.0,
) -> torch.Tensor:
    """Decode audio to a mono float32 waveform (T,) in [-1, 1] at `sample_rate` Hz.

    `sample_rate=None` keeps the file's own rate. `name` replaces the path (or "<bytes>") in
    error messages, e.g. with an upload's file name. Raises AudioError for a missing, empty,
    truncated or undecodable source, for no samples, for NaN/inf samples, and for audio shorter
    than `min_duration` seconds.
    """
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    samples, native_rate, label = _load(source, name)
    duration = samples.shape[1] / native_rate
    if duration < min_duration:
        raise AudioError(label, f"too short: {duration:.3f} s, the minimum is {min_duration:.3f} s")
    waveform = to_mono(torch.from_numpy(samples))
    if sample_rate is not None and sample_rate != native_rate:
        waveform = resample(waveform, native_rate, sample_rate)
    return waveform


def load_audio_with_rate(
    source: AudioSource, *, name: str | None = None
) -> tuple[torch.Tensor, int]:
    """Decode audio to a mono float32 waveform (T,) at its native rate, and return both."""
    samples, native_rate, _ = _load(source, name)
    return to_mono(torch.from_numpy(samples)), native_rate


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample (..., T) float audio from `orig_rate` to `new_rate` Hz with a windowed-sinc filter.

    The result is clipped to [-1, 1] because the filter can overshoot near full-scale peaks.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
    if orig_rate == new_rate:
        return waveform
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    gcd = math.gcd(orig_rate, new_rate)
    kernel, width = _sinc_kernel(orig_rate, new_rate)
    resampled = _apply_sinc_resample_kernel(waveform.to(torch.float32), orig_rate, new_rate, gcd, kernel, width)
    return resampled.clamp_(-1.0, 1.0).contiguous()


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig_rate: int, new_rate: int) -> tuple[torch.Tensor, int]:
    """The kernel of `torchaudio.functional.resample` with its defaults, built once per rate pair.

    The functional form rebuilds it on every call, about half of the resampling time for a few
    seconds of audio. Using the same kernel keeps results identical to it (and to the streaming
    resampler), which `torchaudio.transforms.Resample` does not: its kernel differs by ~1e-5.
    """
    gcd = math.gcd(orig_rate, new_rate)
    return _get_sinc_resample_kernel(orig_rate, new_rate, gcd, 6, 0.99, "sinc_interp_hann", None,
                                     torch.device("cpu"), torch.float32)


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """Average the channels of a (C, T) waveform into (T,). A (T,) waveform is returned as is."""
    if waveform.dim() == 1:
        return waveform
    if waveform.dim() != 2:
        raise ValueError(f"expected a (T,) or (C, T) waveform, got shape {tuple(waveform.shape)}")
    if waveform.shape[0] == 1:
        return waveform[0]
    return waveform.mean(dim=0)


def save_wav(path: str | os.PathLike, waveform: torch.Tensor, sample_rate: int) -> None:
    """Write a (T,) or (C, T) waveform as 16-bit PCM WAV, replacing `path` atomically.

    Samples outside [-1, 1] are clipped. NaN or infinite samples raise ValueError.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if waveform.dim() not in (1, 2):
        raise ValueError(f"expected a (T,) or (C, T) waveform, got shape {tuple(waveform.shape)}")
    samples = waveform.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(samples).all():
        raise ValueError(f"cannot write {path}: the waveform contains NaN or infinite values")
    samples = np.clip(samples, -1.0, 1.0)
    if samples.ndim == 2:
        samples = samples.T  # soundfile expects (T, C)
    with atomic_open(path, "wb") as handle:
        sf.write(handle, samples, int(sample_rate), format="WAV", subtype="PCM_16")
