"""The service as a whole: health, OpenAPI, CORS, JSON errors, and invalid names on every route."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

from asrlib.client import ApiError, AsrClient


def test_health_reports_service(client: AsrClient, api_server):
    health = client.health()
    assert health.status == "ok"
    assert health.checkpoints_root == str(api_server.checkpoints.resolve())
    assert health.active_runs == []


def test_openapi_and_docs_served(api_server):
    spec = httpx.get(f"{api_server.base_url}/openapi.json").json()
    for path in ("/api/runs", "/api/models/{name}/export", "/api/transcribe", "/api/datasets/{name}/download"):
        assert path in spec["paths"], path
    assert httpx.get(f"{api_server.base_url}/docs").status_code == 200


def test_cors_allows_dashboard_origin(api_server):
    origin = "http://localhost:58080"
    response = httpx.options(f"{api_server.base_url}/api/models", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    other = httpx.get(f"{api_server.base_url}/api/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_unknown_route_json_404(api_server):
    response = httpx.get(f"{api_server.base_url}/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


# The HTTP client resolves a plain "../x" before sending it, but it sends percent-encoded dots and
# slashes as they are. These are the names that a hostile or buggy client can really send.
BAD_NAMES = ["%2E%2E", "..%2Fx", "%2E%2E%2Fetc", "a%2Fb", "-x", ".hidden"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("method,template", [
    ("GET", "/api/runs/{}"),
    ("POST", "/api/runs/{}/stop"),
    ("GET", "/api/runs/{}/metrics"),
    ("GET", "/api/runs/{}/checkpoints"),
    ("GET", "/api/runs/served/checkpoints/{}"),
    ("DELETE", "/api/runs/served/checkpoints/{}"),
    ("GET", "/api/models/{}"),
    ("DELETE", "/api/models/{}"),
    ("POST", "/api/models/{}/export"),
    ("DELETE", "/api/inference/models/{}"),
    ("GET", "/api/datasets/{}"),
    ("POST", "/api/datasets/{}/validate"),
])
def test_invalid_name_rejected(api_server, method, template, name):
    url = api_server.base_url + template.format(name)
    body = {"format": "torchscript"} if url.endswith("/export") else None
    response = httpx.request(method, url, json=body)
    assert response.status_code in (400, 404), response.text
    assert "detail" in response.json()
    assert httpx.get(f"{api_server.base_url}/api/health").status_code == 200


@pytest.mark.parametrize("body,key", [
    ({"run_id": "../x"}, "run id"),
    ({"run_id": "models"}, "reserved"),
    ({"resume_from": "../other/ckpt-0000100.pt"}, "resume_from"),
    ({"resume_from": {"run_id": "..", "checkpoint": "ckpt-0000100.pt"}}, "run id"),
    ({"resume_from": {"run_id": "r", "checkpoint": "../ckpt.pt"}}, "checkpoint"),
])
def test_run_request_bad_names_400(client: AsrClient, body, key):
    with pytest.raises(ApiError) as error:
        client._request("POST", "/api/runs", json=body)
    assert error.value.status == 400
    assert key in error.value.detail


def test_register_bad_names_400(client: AsrClient):
    for body in ({"run_id": "../x"}, {"run_id": "ok", "name": "a/b"}, {"run_id": "ok", "name": ""}):
        with pytest.raises(ApiError) as error:
            client._request("POST", "/api/models", json=body)
        assert error.value.status == 400, body


def test_unknown_ids_404(client: AsrClient):
    for call in (lambda: client.get_run("no-such-run"), lambda: client.stop_run("no-such-run"),
                 lambda: client.run_events("no-such-run"), lambda: client.list_checkpoints("no-such-run"),
                 lambda: client.get_model("no-such-model"), lambda: client.delete_model("no-such-model"),
                 lambda: client.unload_model("no-such-model"), lambda: client.get_dataset("no-such-dataset"),
                 lambda: client.register_model("no-such-run")):
        with pytest.raises(ApiError) as error:
            call()
        assert error.value.status == 404, error.value
    assert client.health().status == "ok"


def test_invalid_override_400_names_key(client: AsrClient, ljspeech_mini):
    with pytest.raises(ApiError) as error:
        client.start_run(preset="tiny", dataset=str(ljspeech_mini), overrides={"training.not_a_key": 1})
    assert error.value.status == 400
    assert "training.not_a_key" in error.value.detail
    with pytest.raises(ApiError) as error:
        client.start_run(preset="tiny", dataset=str(ljspeech_mini), overrides={"training": {"lr": "fast"}})
    assert error.value.status == 400
    assert "training.lr" in error.value.detail
    assert [r for r in client.list_runs() if r.state == "queued"] == []


def test_unknown_dataset_and_preset_400(client: AsrClient):
    with pytest.raises(ApiError) as error:
        client.start_run(preset="tiny", dataset="no-such-dataset")
    assert error.value.status == 400
    assert "no-such-dataset" in error.value.detail
    with pytest.raises(ApiError) as error:
        client.start_run(preset="huge")
    assert error.value.status == 400
    assert "huge" in error.value.detail


def test_malformed_json_422(api_server):
    response = httpx.post(f"{api_server.base_url}/api/runs", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    extra = httpx.post(f"{api_server.base_url}/api/runs", json={"modle_type": "conformer"})
    assert extra.status_code == 422
    assert "modle_type" in extra.text


def test_json_body_limit_413(api_server):
    big = {"overrides": {"x": "a" * (2 << 20)}}
    response = httpx.post(f"{api_server.base_url}/api/runs", json=big)
    assert response.status_code == 413
    assert "json_max_bytes" in response.json()["detail"]
    assert httpx.get(f"{api_server.base_url}/api/health").status_code == 200


def _read_response(conn: socket.socket) -> tuple[bytes, bytes]:
    """Read one HTTP/1.1 response with a Content-Length; return (status line, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"<closed>"
        assert not data.endswith(b"<closed>"), data
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += conn.recv(65536)
    return lines[0], body


def test_413_reaches_a_client_still_sending(api_server):
    """Regression: the 413 for a declared over-limit body closed the connection while the client
    was still sending, and the kernel's reset could reach the client before the 413 did.

    This client reads the 413 half-way through its body, then sends the rest and reuses the
    connection. Against a server that closed it, the second send fails.
    """
    url = urlsplit(api_server.base_url)
    size, first = 2 << 20, 64 << 10
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(f"POST /api/runs HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode() + b" " * first)
        status, body = _read_response(conn)
        assert b" 413 " in status
        assert b"json_max_bytes" in body
        conn.sendall(b" " * (size - first))
        conn.sendall(f"GET /api/health HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
        status, _ = _read_response(conn)
        assert b" 200 " in status
