"""Helpers for the deployment tests: free ports, HTTP without proxies, and reading a growing log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO_ROOT

RUN_LOCAL = REPO_ROOT / "run-local.sh"
# Variables of the developer's shell that would change what the scripts under test do.
SCRUBBED_VARIABLES = (
    "ASR_RUNNER", "ASR_API_PORT", "ASR_DASHBOARD_PORT", "ASR_API_HOST", "ASR_DASHBOARD_HOST",
    "ASR_REMOTE_API_PORT", "ASR_REMOTE_DASHBOARD_PORT", "ASR_PUBLISH_HOST", "ASR_CONFIG", "ASR_DATA_DIR",
    "ASR_CHECKPOINTS_DIR", "ASR_LJSPEECH_PATH", "ASR_DEMO_PATH", "ASR_SKIP_SETUP", "ASR_BASE_IMAGE",
    "ASR_TORCH_INDEX_URL", "ASR_UID", "ASR_GID", "BACKEND_HOST", "BACKEND_PORT",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    """GET `url` directly, ignoring any proxy settings of the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.status, response.read()


def wait_for(condition: Callable[[], bool], timeout: float, description: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            output = log.read_text(errors="replace") if log is not None and log.exists() else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {description}\n--- output ---\n{output}")
        time.sleep(0.2)


def wait_for_output(process: subprocess.Popen, log: Path, text: str, timeout: float) -> str:
    """Wait until `log` contains `text`, and fail with the log if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        output = log.read_text(errors="replace")
        if text in output:
            return output
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before printing {text!r}\n--- output ---\n{output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {text!r}\n--- output ---\n{output}")
        time.sleep(0.2)


def process_alive(pid: int) -> bool:
    """Return whether `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    """Return the ids of live processes, other than this one, whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command_line and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def default_sigint() -> None:
    """Give a child the default SIGINT action (a `preexec_fn`).

    A shell cannot trap a signal that was ignored when it started, and a test runner started in
    the background of a non-interactive shell passes on an ignored SIGINT.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_group(process: subprocess.Popen) -> None:
    """Kill a test's process group if it is still running (the clean-up after a failed test)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
