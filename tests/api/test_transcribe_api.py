"""POST /api/transcribe with real clips, broken uploads and the upload limit."""

from __future__ import annotations

import httpx
import pytest

from asrlib.client import ApiError, AsrClient
from asrlib.inference import Recognizer
from tests.api.conftest import UPLOAD_MAX_BYTES

CLIPS = ["LJ001-0001.wav", "LJ001-0002.wav"]  # among the ten clips the overfit model memorised


@pytest.fixture(scope="module")
def served_model(api_server, served_run: str) -> str:
    with AsrClient(api_server.base_url, timeout_s=120) as api:
        return api.register_model(served_run, name="transcriber").name


def test_transcribe_matches_recognizer(client: AsrClient, served_model: str, ljspeech_mini):
    recognizer = Recognizer.from_checkpoint(client.get_model(served_model).path)
    for clip in CLIPS:
        path = ljspeech_mini / "wavs" / clip
        expected = recognizer.transcribe([path])[0]
        result = client.transcribe(path, served_model)
        assert result.text == expected.text, clip
        assert result.source == clip
        assert result.duration == pytest.approx(expected.duration, abs=1e-6)
        assert [w.word for w in result.words] == [w.word for w in expected.words]
        assert result.text  # the model memorised these clips, so the transcript is not empty
    loaded = [m.name for m in client.loaded_models()]
    assert loaded == [served_model]
    assert client.get_model(served_model).loaded


def test_loaded_model_delete_409(client: AsrClient, served_run: str, ljspeech_mini):
    client.register_model(served_run, name="in-use")
    client.transcribe(ljspeech_mini / "wavs" / CLIPS[0], "in-use")
    with pytest.raises(ApiError) as error:
        client.delete_model("in-use")
    assert error.value.status == 409
    assert "unload" in error.value.detail
    client.unload_model("in-use")
    client.delete_model("in-use")
    with pytest.raises(ApiError) as error:
        client.unload_model("in-use")
    assert error.value.status == 404


def test_non_audio_upload_415(client: AsrClient, served_model: str):
    for name, data in (("page.html", b"<!DOCTYPE html><html><body>502</body></html>"),
                       ("notes.txt", b"just some text, not audio\n" * 20),
                       ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(200))):
        with pytest.raises(ApiError) as error:
            client.transcribe(data, served_model, filename=name)
        assert error.value.status == 415, name
        assert name in error.value.detail
    assert client.health().status == "ok"


def test_damaged_audio_422(client: AsrClient, served_model: str, ljspeech_mini):
    data = (ljspeech_mini / "wavs" / CLIPS[0]).read_bytes()
    with pytest.raises(ApiError) as error:
        client.transcribe(data[: len(data) // 2], served_model, filename="cut.wav")
    assert error.value.status == 422
    assert "truncated" in error.value.detail
    with pytest.raises(ApiError) as error:
        client.transcribe(b"", served_model, filename="empty.wav")
    assert error.value.status == 422


def test_unknown_or_invalid_model(client: AsrClient, ljspeech_mini):
    clip = ljspeech_mini / "wavs" / CLIPS[0]
    with pytest.raises(ApiError) as error:
        client.transcribe(clip, "no-such-model")
    assert error.value.status == 404
    with pytest.raises(ApiError) as error:
        client.transcribe(clip, "../x")
    assert error.value.status == 400


def test_oversized_upload_413(client: AsrClient, served_model: str, api_server):
    data = b"RIFF" + bytes(3 * UPLOAD_MAX_BYTES)
    with pytest.raises(ApiError) as error:
        client.transcribe(data, served_model, filename="huge.wav")
    assert error.value.status == 413
    assert str(UPLOAD_MAX_BYTES) in error.value.detail
    assert client.health().status == "ok"


def test_chunked_upload_over_limit_413(api_server, served_model: str):
    """Without Content-Length the body is counted as it streams in and cut off past the limit."""
    boundary = "asrboundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{served_model}\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode()
        for _ in range(64):  # 16 MiB in all, far past the limit
            yield bytes(256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = httpx.post(f"{api_server.base_url}/api/transcribe", content=body(), headers=headers, timeout=60)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "upload_max_bytes" in response.json()["detail"]
    # How many bytes the application read is checked in test_limits.py: after the 413, uvicorn may
    # still drain the rest of the request from the socket.
    assert httpx.get(f"{api_server.base_url}/api/health").status_code == 200

