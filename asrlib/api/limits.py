"""Request body limits enforced while the body streams in, whatever Content-Length claims."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# A client sends its whole body before it reads the response. If the server closes the socket with
# part of that body unread, the kernel sends a TCP reset, which can discard the 413 before the
# client reads it. So a declared body up to this size keeps the connection open, and uvicorn reads
# and discards the rest after the response; only a larger one gets "connection: close".
LINGER_MAX_BYTES = 64 << 20


class BodyTooLarge(HTTPException):
    def __init__(self, path: str, limit: int, setting: str) -> None:
        super().__init__(413, f"request body of {path} exceeds {limit} bytes ({setting}); send less data")


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    setting: str  # what sets the limit, for the error message, e.g. "api.json_max_bytes = 1048576"


class BodySizeLimitMiddleware:
    """Reject request bodies over a per-path limit with 413.

    A declared Content-Length over the limit is rejected before any byte is read. Otherwise the
    bytes are counted as the application reads them, and reading stops with BodyTooLarge as soon as
    the count passes the limit, so a chunked upload or a false Content-Length cannot get past it.
    `limits` maps path prefixes to limits; the longest matching prefix wins, else `default`.
    `linger_max_bytes`: the largest declared body whose unread rest the server still drains after
    the 413 (see LINGER_MAX_BYTES).
    """

    def __init__(self, app: ASGIApp, *, default: BodyLimit, limits: dict[str, BodyLimit],
                 linger_max_bytes: int = LINGER_MAX_BYTES) -> None:
        self.app = app
        self.default = default
        self.limits = sorted(limits.items(), key=lambda item: len(item[0]), reverse=True)
        self.linger_max_bytes = linger_max_bytes

    def limit_for(self, path: str) -> BodyLimit:
        return next((limit for prefix, limit in self.limits if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limit_for(path)
        too_large = BodyTooLarge(path, limit.max_bytes, limit.setting)
        declared = _content_length(scope)
        if declared is not None and declared > limit.max_bytes:
            log.warning("%s %s -> 413: Content-Length %d exceeds %d", scope["method"], path, declared, limit.max_bytes)
            await _send_413(send, too_large.detail, close=declared > self.linger_max_bytes)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise too_large
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # FastAPI's handlers respond when a route reads the body, so this covers other readers.
            if started:
                raise
            log.warning("%s %s -> 413 after %d bytes", scope["method"], path, received)
            await _send_413(send, exc.detail, close=False)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, detail: str, *, close: bool) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
