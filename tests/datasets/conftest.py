"""Fixtures of the dataset-manager tests: a small LJSpeech archive and an HTTP server on 127.0.0.1.

The archive is built at test time from the real clips in ../shared/data/ljspeech-mini (read there,
never copied into the repository) with the LJSpeech-1.1/ top folder of the official archive.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SUBSET_CLIPS = 20  # enough for a valid/test split, small enough to build and download in a second
ARCHIVE_ROOT = "LJSpeech-1.1"
ARCHIVE_PATH = "/LJSpeech-1.1.tar.bz2"  # where the server serves the archive


@dataclass(frozen=True)
class ArchiveFile:
    path: Path
    size: int
    sha256: str
    clip_ids: tuple[str, ...]

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()


def _isolate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests pass their own settings; path overrides or a proxy from the environment would
    # send files or requests elsewhere.
    for name in ("ASR_DATA_DIR", "ASR_LJSPEECH_PATH", "ASR_DEMO_PATH", "ASR_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _isolate_environment(monkeypatch)


@pytest.fixture(scope="session")
def ljspeech_archive(tmp_path_factory: pytest.TempPathFactory, ljspeech_mini: Path) -> ArchiveFile:
    """A tar.bz2 of the first SUBSET_CLIPS clips of ljspeech-mini, laid out like LJSpeech-1.1.tar.bz2."""
    lines = (ljspeech_mini / "metadata.csv").read_text(encoding="utf-8").splitlines()[:SUBSET_CLIPS]
    ids = tuple(line.split("|", 1)[0] for line in lines)
    metadata = tmp_path_factory.mktemp("subset") / "metadata.csv"
    metadata.write_text("\n".join(lines) + "\n", encoding="utf-8")
    archive = tmp_path_factory.mktemp("archive") / "LJSpeech-1.1.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        tar.add(metadata, arcname=f"{ARCHIVE_ROOT}/metadata.csv")
        for clip_id in ids:
            tar.add(ljspeech_mini / "wavs" / f"{clip_id}.wav", arcname=f"{ARCHIVE_ROOT}/wavs/{clip_id}.wav")
    data = archive.read_bytes()
    return ArchiveFile(archive, len(data), hashlib.sha256(data).hexdigest(), ids)


@dataclass
class ServedFile:
    body: bytes
    content_type: str = "application/x-bzip2"
    etag: str = '"v1"'
    last_modified: str = "Mon, 19 Feb 2018 00:00:00 GMT"


@dataclass
class RequestRecord:
    path: str
    range: str | None  # the Range header as sent
    if_range: str | None
    status: int
    bytes_sent: int  # body bytes written before the response ended or was cut


@dataclass
class ArchiveServer:
    """State and controls of the test HTTP server; change them between requests."""

    port: int = 0
    files: dict[str, ServedFile] = field(default_factory=dict)
    log: list[RequestRecord] = field(default_factory=list)
    cut_after_bytes: list[int] = field(default_factory=list)  # per request, in order: close after N body bytes
    fail_with_status: list[int] = field(default_factory=list)  # per request, in order: respond with this status
    ignore_range: bool = False  # respond 200 with the whole file even when a Range is requested
    stall_after_bytes: list[int] = field(default_factory=list)  # per request: send N bytes, then wait for `release`
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    archive_path: str = ARCHIVE_PATH

    def url(self, path: str = ARCHIVE_PATH) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, **headers: str) -> None:
        """Serve `body` at `path` (replacing what was there), with ServedFile fields as keywords."""
        with self.lock:
            self.files[path] = ServedFile(body, **headers)


def _make_handler(server: ArchiveServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            range_header, if_range = self.headers.get("Range"), self.headers.get("If-Range")
            with server.lock:
                served = server.files.get(self.path)
                fail = server.fail_with_status.pop(0) if server.fail_with_status else None
                cut = server.cut_after_bytes.pop(0) if server.cut_after_bytes else None
                stall = server.stall_after_bytes.pop(0) if server.stall_after_bytes else None
            record = RequestRecord(self.path, range_header, if_range, 200, 0)
            server.log.append(record)
            if served is None or fail is not None:
                record.status = fail or 404
                self.send_error(record.status)
                return

            start = 0
            validator_ok = if_range is None or if_range in (served.etag, served.last_modified)
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and validator_ok and not server.ignore_range:
                start = int(match.group(1))
                if start >= len(served.body):
                    record.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(served.body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                record.status = 206

            body = served.body[start:]
            self.send_response(record.status)
            self.send_header("Content-Type", served.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", served.etag)
            self.send_header("Last-Modified", served.last_modified)
            if record.status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(served.body) - 1}/{len(served.body)}")
            self.end_headers()

            to_send = body
            if cut is not None:
                to_send = body[:cut]
            if stall is not None:
                to_send = body[:stall]
            try:
                for offset in range(0, len(to_send), 65536):
                    piece = to_send[offset : offset + 65536]
                    self.wfile.write(piece)
                    record.bytes_sent += len(piece)
                self.wfile.flush()
                if stall is not None:
                    server.release.wait(timeout=30)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away, which some tests do on purpose
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serve(archive: ArchiveFile) -> Iterator[ArchiveServer]:
    """Run an HTTP/1.0 server on 127.0.0.1 that serves `archive` at ARCHIVE_PATH, with Range support."""
    state = ArchiveServer()
    state.files[ARCHIVE_PATH] = ServedFile(archive.data)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def archive_server(ljspeech_archive: ArchiveFile) -> Iterator[ArchiveServer]:
    with serve(ljspeech_archive) as state:
        yield state


@pytest.fixture
def make_catalog_settings() -> Any:
    """The function `catalog_settings`, for tests (conftest modules are not importable)."""
    return catalog_settings


def catalog_settings(root: Path, url: str, archive: ArchiveFile, **entry: Any) -> dict[str, Any]:
    """Settings with data under `root` and an `ljspeech` entry that points at the test server."""
    ljspeech = {
        "url": url,
        "size_bytes": archive.size,
        "sha256": archive.sha256,
        "archive_root": ARCHIVE_ROOT,
        "path": str(root / "data" / "ljspeech"),
        "mirrors": [],
    }
    ljspeech.update(entry)
    return {
        "paths": {"data": str(root / "data")},
        "datasets": {
            "ljspeech": ljspeech,
            "demo": {"synthetic": True, "generator": "espeak-ng", "path": str(root / "data" / "demo")},
        },
        "run_defaults": {
            "text": {"charset": "abcdefghijklmnopqrstuvwxyz' "},
            "data": {"split_seed": 0, "valid_fraction": 0.1, "test_fraction": 0.1,
                     "min_duration": 0.3, "max_duration": 20.0},
        },
    }


@pytest.fixture(scope="session")
def downloaded_ljspeech_subset(tmp_path_factory: pytest.TempPathFactory, ljspeech_archive: ArchiveFile) -> Path:
    """Path of the LJSpeech subset after a real download over HTTP, extraction and validation.

    For tests that need a dataset the way a user gets it: with metadata.csv, wavs/, validation.json
    and split.json (SUBSET_CLIPS clips, 10 % valid, 10 % test).
    """
    from asrlib.datasets.download import DownloadOptions
    from asrlib.datasets.manager import DatasetManager

    root = tmp_path_factory.mktemp("downloaded")
    with pytest.MonkeyPatch.context() as monkeypatch, serve(ljspeech_archive) as server:
        _isolate_environment(monkeypatch)
        manager = DatasetManager(catalog_settings(root, server.url(), ljspeech_archive),
                                 downloads_dir=root / "downloads",
                                 download_options=DownloadOptions(backoff_s=0.01, timeout_s=10.0))
        return manager.download("ljspeech")
