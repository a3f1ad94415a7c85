"""The API address of the dashboard, and the readable messages its failures become.

The dashboard only talks to the API (`asrlib.client.AsrClient`), so a closed page never touches
a training process. The container sets BACKEND_HOST and BACKEND_PORT to the API service.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

from asrlib.audio import AudioError
from asrlib.client import ApiError
from asrlib.dashboard.errors import FormError
from asrlib.dashboard.i18n import Messages

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 58081


def backend_url(environ: dict[str, str] | None = None) -> str:
    """Return http://HOST:PORT from BACKEND_HOST and BACKEND_PORT, defaulting to 127.0.0.1:58081."""
    env = os.environ if environ is None else environ
    host = (env.get("BACKEND_HOST") or DEFAULT_HOST).strip()
    port_text = (env.get("BACKEND_PORT") or str(DEFAULT_PORT)).strip()
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid BACKEND_PORT {port_text!r}; expected a port number such as {DEFAULT_PORT}") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid BACKEND_PORT {port}; expected 1 to 65535")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address needs brackets in a URL
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class Problem:
    """A failure as shown to the user: a catalog key with parameters, or the API's own text."""

    key: str | None = None
    params: dict[str, Any] | None = None
    text: str | None = None  # shown as is, untranslated (the API's `detail`)

    def render(self, messages: Messages) -> str:
        if self.text is not None:
            return self.text
        return messages.t(self.key or "error.unexpected", **(self.params or {}))


def describe_detail(detail: Any) -> str:
    """Turn an API `detail` into one line: a string as is, FastAPI's field-error list as "field: message"."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                location = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path"))
                parts.append(f"{location}: {item['msg']}" if location else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def describe_error(err: BaseException, base_url: str = "") -> Problem:
    """Map an exception to what the user reads; unexpected ones are logged with their traceback here."""
    if isinstance(err, ApiError):
        if err.status >= 500:
            return Problem("error.server", {"status": err.status, "detail": describe_detail(err.detail)})
        return Problem(text=describe_detail(err.detail))
    if isinstance(err, FormError):
        return Problem(err.key, err.params)
    if isinstance(err, httpx.TimeoutException):
        return Problem("error.timeout", {"url": base_url})
    if isinstance(err, (httpx.ConnectError, ConnectionRefusedError)):
        return Problem("error.unreachable", {"url": base_url})
    if isinstance(err, (InvalidHandshake, InvalidURI)):
        return Problem("error.websocket", {"url": base_url, "reason": str(err)})
    if isinstance(err, (httpx.HTTPError, WebSocketException, OSError)):
        return Problem("error.connection", {"url": base_url, "reason": str(err) or type(err).__name__})
    if isinstance(err, AudioError):
        return Problem(text=str(err))
    log.error("unexpected dashboard error", exc_info=err)
    return Problem("error.unexpected", {"kind": type(err).__name__, "reason": str(err)})
