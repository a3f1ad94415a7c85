"""BodySizeLimitMiddleware as a plain ASGI component: how much of a body it lets an app read."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request

from asrlib.api.errors import install_error_handlers
from asrlib.api.limits import LINGER_MAX_BYTES, BodyLimit, BodySizeLimitMiddleware

CHUNK = 64 * 1024
LIMIT = BodyLimit(256 * 1024, "test limit")


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/upload")
    async def upload(request: Request) -> dict:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return {"bytes": total}

    app.add_middleware(BodySizeLimitMiddleware, default=BodyLimit(1024, "default"), limits={"/upload": LIMIT})
    return app


def _call(app, *, chunks: int, headers: list[tuple[bytes, bytes]] = (),
          sent: list[dict] | None = None) -> tuple[int, dict, int]:
    """Send `chunks` body chunks without end; return (status, JSON body, chunks the app pulled).

    The ASGI messages the app sent are appended to `sent` when it is given.
    """
    pulled = 0
    sent = [] if sent is None else sent

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": bytes(CHUNK), "more_body": pulled < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/upload", "raw_path": b"/upload", "query_string": b"",
             "headers": [(b"content-type", b"application/octet-stream"), *headers], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1234), "root_path": "",
             "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def test_streamed_body_cut_at_limit():
    status, body, pulled = _call(_app(), chunks=1000)
    assert status == 413
    assert "test limit" in body["detail"]
    # The app stops at the first chunk past the limit instead of reading all 1000.
    assert pulled == LIMIT.max_bytes // CHUNK + 1


def test_body_within_limit_passes():
    status, body, pulled = _call(_app(), chunks=4)
    assert status == 200
    assert body == {"bytes": 4 * CHUNK}
    assert pulled == 4


def test_declared_length_rejected_unread():
    status, body, pulled = _call(_app(), chunks=1000, headers=[(b"content-length", b"99999999")])
    assert status == 413
    assert "test limit" in body["detail"]
    assert pulled == 0


def _closes(sent: list[dict]) -> bool:
    start = next(m for m in sent if m["type"] == "http.response.start")
    return (b"connection", b"close") in start["headers"]


def test_413_closes_only_huge_bodies():
    """Leave a modest over-limit body for the server to drain, so that the client gets the 413.
    Only a body past LINGER_MAX_BYTES closes the connection."""
    modest, huge = [], []
    _call(_app(), chunks=1000, headers=[(b"content-length", str(LIMIT.max_bytes + 1).encode())], sent=modest)
    _call(_app(), chunks=1000, headers=[(b"content-length", str(LINGER_MAX_BYTES + 1).encode())], sent=huge)
    assert not _closes(modest)
    assert _closes(huge)


def test_understated_length_still_counted():
    status, _, pulled = _call(_app(), chunks=1000, headers=[(b"content-length", b"10")])
    assert status == 413
    assert pulled == LIMIT.max_bytes // CHUNK + 1
