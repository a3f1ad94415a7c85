"""POST /api/transcribe: transcribe one uploaded audio file with a registered model."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile

from asrlib.api.schemas import TranscriptionResponse, WordTiming
from asrlib.api.state import ApiState, get_state
from asrlib.audio import AudioError, detect_format, load_audio
from asrlib.registry import validate_model_name

router = APIRouter(tags=["inference"])

CHUNK_BYTES = 1 << 20
MIN_DURATION_S = 0.1  # as Recognizer.transcribe: shorter audio leaves no frame after subsampling


def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """Read the spooled upload in chunks and stop with 413 once it passes `limit` bytes."""
    chunks, total = [], 0
    while chunk := upload.file.read(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"{upload.filename or 'the upload'} exceeds the upload limit of {limit} bytes "
                                     "(api.upload_max_bytes); send a smaller file")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/transcribe", response_model=TranscriptionResponse,
             responses={413: {"description": "the upload exceeds api.upload_max_bytes"},
                        415: {"description": "the file is not audio in a known format"},
                        422: {"description": "the audio is damaged, empty or too short"}})
def transcribe(file: UploadFile = File(..., description="audio: WAV, FLAC, OGG, MP3, WebM, M4A, ..."),
               model: str = Form(..., description="name of a registered model"),
               state: ApiState = Depends(get_state)):
    """Transcribe an uploaded file; the model is loaded on first use and kept loaded (LRU)."""
    validate_model_name(model)
    state.registry.get(model)  # 404 before the audio is decoded
    name = file.filename or "upload"
    data = _read_limited(file, state.api.upload_max_bytes)
    if not data:
        raise HTTPException(422, f"{name}: the uploaded file is empty")
    with state.recognizers.use(model) as recognizer:
        started = time.perf_counter()
        try:
            waveform = load_audio(data, recognizer.sample_rate, name=name, min_duration=MIN_DURATION_S)
        except AudioError as err:
            # 415 when the bytes are no audio container at all, 422 when audio is damaged or too short.
            status = 415 if detect_format(data[:4096]) is None else 422
            raise HTTPException(status, str(err)) from None
        text, words = recognizer.decode([waveform])[0]
        elapsed = time.perf_counter() - started
    duration = waveform.shape[0] / recognizer.sample_rate
    return TranscriptionResponse(
        model=model, source=name, text=text, duration=duration, processing_seconds=elapsed,
        rtf=elapsed / duration if duration > 0 else 0.0,
        words=[WordTiming(word=w.word, start=w.start, end=w.end) for w in words],
    )
