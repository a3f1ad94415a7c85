"""A real uvicorn server on 127.0.0.1 for tests, started in a thread on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT_S = 30.0


@contextlib.contextmanager
def serve_app(app: ASGIApp, *, lifespan: str = "on") -> Iterator[int]:
    """Serve `app` with uvicorn on 127.0.0.1 until the block ends; yield the port.

    The socket is bound before the server starts, so the port is known and cannot be taken by
    another process in between.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan, ws="websockets-sansio"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
