"""Resumable, verified HTTP downloads of dataset archives.

Bytes go to `<target>.part`, and `<target>.part.json` records the URL, the expected size and
SHA-256, how many bytes of the part file are known to be on disk, and the server's ETag and
Last-Modified. A later call, also from a new process, re-hashes the part file and requests the
rest with `Range: bytes=N-` and `If-Range`, so a file that changed on the server is fetched anew
instead of being spliced. The finished file is renamed to `target` only after its size and
SHA-256 match; a file with the wrong SHA-256 is kept as `<target>.bad-sha256` for inspection.

Requests go through `urllib.request`, which reads HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the
environment like other standard clients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asrlib import __version__
from asrlib.atomic import atomic_write_text
from asrlib.datasets.progress import ProgressCallback, ProgressMeter

try:
    import fcntl
except ImportError:  # not on Windows; there concurrent downloads are not detected
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_HTML_PREFIXES = (b"<!doctype", b"<html")
_SNIFF_BYTES = 1024  # bytes read before deciding whether the body is an HTML page
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class DownloadOptions:
    timeout_s: float = 60.0  # limit for connecting and for each read from the socket
    max_retries: int = 5  # retries after consecutive failed attempts; an attempt that got bytes resets the count
    backoff_s: float = 2.0  # delay before the first retry; doubled after each further failure
    max_backoff_s: float = 120.0  # upper bound of the retry delay, also for a server's Retry-After
    chunk_bytes: int = 1 << 20  # read and write size
    checkpoint_interval_s: float = 5.0  # how often the part file is fsynced and the state saved
    progress_interval_s: float = 0.25  # minimum time between progress events
    user_agent: str = f"asrlib/{__version__}"


@dataclass
class DownloadState:
    """The resume record saved as `<target>.part.json`."""

    url: str
    size_bytes: int | None  # expected size, from the catalog
    sha256: str | None  # expected SHA-256, from the catalog
    bytes_done: int = 0  # bytes at the start of the part file that were fsynced
    total_bytes: int | None = None  # size the server reported
    etag: str | None = None
    last_modified: str | None = None
    updated_at: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DownloadState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class DownloadError(RuntimeError):
    """A download that failed for good; the message names the URL and what to do."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ChecksumError(DownloadError):
    def __init__(self, message: str, *, url: str | None, expected: str, actual: str, path: Path) -> None:
        super().__init__(message, url=url)
        self.expected = expected
        self.actual = actual
        self.path = path  # where the rejected file now is


class HtmlResponseError(DownloadError):
    """The server sent a web page (a login or error page) where the archive was expected."""


class _RetryableError(Exception):
    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def state_path(target: Path) -> Path:
    return target.with_name(target.name + ".part.json")


def bad_path(target: Path) -> Path:
    return target.with_name(target.name + ".bad-sha256")


def read_state(target: str | os.PathLike[str]) -> DownloadState | None:
    """Load the resume record of `target`, or None when there is none or it is unreadable."""
    path = state_path(Path(target))
    try:
        return DownloadState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        logger.warning("ignoring unreadable download state %s: %s", path, err)
        return None


def hash_file(
    path: Path, *, limit_bytes: int | None = None, progress: ProgressCallback | None = None, chunk_bytes: int = 1 << 20
) -> Any:
    """Return a running SHA-256 object over the first `limit_bytes` of `path` (all when None)."""
    hasher = hashlib.sha256()
    total = path.stat().st_size if limit_bytes is None else limit_bytes
    meter = ProgressMeter(progress, phase="hash", total=total, unit="B")
    done = 0
    with path.open("rb") as handle:
        while done < total:
            chunk = handle.read(min(chunk_bytes, total - done))
            if not chunk:
                break
            hasher.update(chunk)
            done += len(chunk)
            meter.update(done, item=path.name)
    meter.close(item=path.name)
    return hasher


def verify_file(
    path: Path, *, size_bytes: int | None, sha256: str | None, progress: ProgressCallback | None = None
) -> None:
    """Check an existing file's size and SHA-256, raising ChecksumError; the file is left in place."""
    actual_size = path.stat().st_size
    if size_bytes is not None and actual_size != size_bytes:
        raise ChecksumError(
            f"{path}: size is {actual_size} bytes, expected {size_bytes}; the file is incomplete or a "
            "different file",
            url=None, expected=str(size_bytes), actual=str(actual_size), path=path,
        )
    if sha256 is None:
        return
    actual = hash_file(path, progress=progress).hexdigest()
    if actual != sha256:
        raise ChecksumError(
            f"{path}: SHA-256 mismatch (expected {sha256}, got {actual}); the file is corrupt or a different "
            "file",
            url=None, expected=sha256, actual=actual, path=path,
        )


def download_file(
    url: str,
    target: str | os.PathLike[str],
    *,
    size_bytes: int | None = None,
    sha256: str | None = None,
    options: DownloadOptions | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download `url` to `target`, resuming a previous partial download, and verify it.

    Returns `target`. Raises HtmlResponseError for a web page served instead of the file, and
    ChecksumError for a complete file with the wrong SHA-256, which is kept as
    `<target>.bad-sha256`. Raises DownloadError when the retries are used up; the part file then
    stays for the next call to resume.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    options = options or DownloadOptions()
    sha256 = sha256.lower() if sha256 else None
    if target.exists() and _existing_target_ok(target, size_bytes=size_bytes, sha256=sha256, progress=progress):
        return target

    part = part_path(target)
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, target)
        state = _resume_state(url, target, fd, size_bytes=size_bytes, sha256=sha256)
        hasher = hashlib.sha256()
        if state.bytes_done:
            hasher = hash_file(part, limit_bytes=state.bytes_done, progress=progress)
        job = _Job(url, fd, state, hasher, target, options, progress)
        job.run()
        # Still holding the lock, so no other process can truncate the part file meanwhile.
        return _finish(target, url, state, job.hasher.hexdigest(), size_bytes=size_bytes, sha256=sha256)
    finally:
        os.close(fd)


def _existing_target_ok(
    target: Path, *, size_bytes: int | None, sha256: str | None, progress: ProgressCallback | None
) -> bool:
    try:
        verify_file(target, size_bytes=size_bytes, sha256=sha256, progress=progress)
    except ChecksumError as err:
        os.replace(target, bad_path(target))
        logger.warning("%s; moved it to %s and downloading again", err, bad_path(target))
        return False
    logger.info("%s is already downloaded and verified", target)
    return True


def _lock(fd: int, target: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadError(
            f"{target}: another process is downloading this file; wait for it to finish"
        ) from None


def _resume_state(url: str, target: Path, fd: int, *, size_bytes: int | None, sha256: str | None) -> DownloadState:
    """Decide how much of the part file to keep, and truncate it to that."""
    on_disk = os.fstat(fd).st_size
    saved = read_state(target)
    keep = 0
    if saved is not None and on_disk > 0:
        same_file = (sha256 is not None and saved.sha256 == sha256) or (sha256 is None and saved.url == url)
        if same_file and saved.size_bytes == size_bytes:
            # Bytes past the last checkpoint may not have reached the disk before a crash.
            keep = min(on_disk, saved.bytes_done)
        else:
            logger.info("discarding %s: it belongs to a download of %s with other expected contents", target, saved.url)
    elif on_disk > 0:
        logger.info("discarding %s: no resume record %s", part_path(target), state_path(target).name)
    os.ftruncate(fd, keep)
    state = DownloadState(url=url, size_bytes=size_bytes, sha256=sha256, bytes_done=keep)
    if keep and saved is not None:
        state.total_bytes, state.etag, state.last_modified = saved.total_bytes, saved.etag, saved.last_modified
        logger.info("resuming %s at byte %d", target.name, keep)
    _save_state(target, state)
    return state


def _save_state(target: Path, state: DownloadState) -> None:
    state.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_text(state_path(target), json.dumps(dataclasses.asdict(state), indent=1) + "\n")


def _finish(
    target: Path, url: str, state: DownloadState, actual_sha256: str, *, size_bytes: int | None, sha256: str | None
) -> Path:
    part = part_path(target)
    if size_bytes is not None and state.bytes_done != size_bytes:
        raise DownloadError(
            f"{url}: received {state.bytes_done} bytes, expected {size_bytes}; check the URL or the "
            "catalog's size_bytes",
            url=url,
        )
    if sha256 is not None and actual_sha256 != sha256:
        bad = bad_path(target)
        os.replace(part, bad)
        state_path(target).unlink(missing_ok=True)
        raise ChecksumError(
            f"{url}: SHA-256 mismatch (expected {sha256}, got {actual_sha256}); the file was kept as "
            f"{bad}. Download again, or try a mirror with --url; if the dataset was republished, "
            "update sha256 in config.yaml",
            url=url, expected=sha256, actual=actual_sha256, path=bad,
        )
    os.replace(part, target)
    state_path(target).unlink(missing_ok=True)
    logger.info("downloaded %s (%d bytes, sha256 %s)", target, state.bytes_done, actual_sha256)
    return target


class _Job:
    """The retry loop of one download.

    `offset` is always the number of bytes written to the part file and hashed; `state.bytes_done`
    catches up with it at each checkpoint, after an fsync.
    """

    def __init__(self, url: str, fd: int, state: DownloadState, hasher: Any, target: Path,
                 options: DownloadOptions, progress: ProgressCallback | None) -> None:
        self.url, self.fd, self.state, self.hasher = url, fd, state, hasher
        self.target, self.options, self.progress = target, options, progress
        self.opener = urllib.request.build_opener()  # includes the environment's proxy settings
        self.offset = state.bytes_done

    def run(self) -> None:
        failures = 0
        while True:
            start = self.offset
            try:
                if self._attempt():
                    return
                error = _RetryableError(f"connection closed at byte {self.offset} of {self.state.total_bytes}")
            except _RetryableError as err:
                error = err
            finally:
                self._checkpoint()
            failures = 1 if self.offset > start else failures + 1
            if failures > self.options.max_retries:
                raise DownloadError(
                    f"{self.url}: download failed {failures} times in a row, last: {error}; the first "
                    f"{self.offset} bytes are kept in {part_path(self.target)}, run the download again to resume",
                    url=self.url,
                )
            delay_s = min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (failures - 1))
            if error.retry_after_s is not None:
                delay_s = min(self.options.max_backoff_s, max(delay_s, error.retry_after_s))
            logger.warning("%s: %s; retrying from byte %d in %.1f s", self.url, error, self.offset, delay_s)
            time.sleep(delay_s)

    def _attempt(self) -> bool:
        """Make one request and copy its body; returns True once the file is complete."""
        try:
            response = self.opener.open(self._request(), timeout=self.options.timeout_s)
        except urllib.error.HTTPError as err:
            return self._handle_http_error(err)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise _RetryableError(f"request failed: {getattr(err, 'reason', err)}") from None
        with response:
            total = self._check_response(response)
            return self._copy_body(response, total)

    def _request(self) -> urllib.request.Request:
        headers = {"User-Agent": self.options.user_agent, "Accept-Encoding": "identity"}
        if self.offset > 0:
            headers["Range"] = f"bytes={self.offset}-"
            # If-Range makes the server send the whole new file (200) when it changed since.
            etag = self.state.etag
            validator = etag if etag and not etag.startswith("W/") else self.state.last_modified
            if validator:
                headers["If-Range"] = validator
        return urllib.request.Request(self.url, headers=headers)

    def _handle_http_error(self, err: urllib.error.HTTPError) -> bool:
        with contextlib.closing(err):
            if err.code == 416 and self.offset > 0:
                total = _parse_total(err.headers.get("Content-Range", ""))
                if total is not None and total == self.offset:
                    return True  # the part file already contains the whole remote file
                self._restart(f"the server rejected the range from byte {self.offset} (HTTP 416)")
                raise _RetryableError("restarting from byte 0")
            if err.code in _RETRYABLE_STATUS:
                raise _RetryableError(f"HTTP {err.code} {err.reason}", retry_after_s=_retry_after_s(err.headers))
            raise DownloadError(
                f"{self.url}: HTTP {err.code} {err.reason}; check the URL, or give a mirror with --url "
                "or a local archive with --archive",
                url=self.url,
            )

    def _check_response(self, response: Any) -> int | None:
        """Validate status and headers; returns the full size of the remote file when known."""
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type in _HTML_TYPES:
            raise self._html_error(f"Content-Type {content_type}")
        etag, last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if response.status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != self.offset:
                self._restart(f"the server sent an unexpected range {response.headers.get('Content-Range')!r}")
                raise _RetryableError("restarting from byte 0")
            if self.state.etag and etag and etag != self.state.etag:
                self._restart(f"the ETag changed from {self.state.etag} to {etag}")
                raise _RetryableError("restarting from byte 0")
            total = None if match.group(3) == "*" else int(match.group(3))
        elif response.status == 200:
            if self.offset > 0:
                self._restart("the server sent the whole file instead of the requested range")
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise _RetryableError(f"unexpected HTTP status {response.status}")
        expected = self.state.size_bytes
        if expected is not None and total is not None and total != expected:
            raise DownloadError(
                f"{self.url}: the server reports {total} bytes, expected {expected}; this URL serves a "
                "different file. Check the URL, or update size_bytes and sha256 in config.yaml if the "
                "dataset was republished",
                url=self.url,
            )
        self.state.total_bytes = total if total is not None else expected
        self.state.etag, self.state.last_modified = etag, last_modified
        return self.state.total_bytes

    def _copy_body(self, response: Any, total: int | None) -> bool:
        meter = ProgressMeter(self.progress, phase="download", total=total, unit="B", start=self.offset,
                              interval_s=self.options.progress_interval_s)
        last_checkpoint = time.monotonic()
        # read1 returns what has arrived instead of waiting for a full chunk, so progress and
        # checkpoints keep up with a slow connection.
        read = getattr(response, "read1", response.read)
        try:
            # The start of the file is read whole, so that an HTML page is recognised by its first tag.
            chunk = response.read(_SNIFF_BYTES) if self.offset == 0 else read(self.options.chunk_bytes)
            if self.offset == 0 and chunk.lstrip()[:16].lower().startswith(_HTML_PREFIXES):
                raise self._html_error("content starting with an HTML tag")
            while chunk:
                os.pwrite(self.fd, chunk, self.offset)
                self.hasher.update(chunk)
                self.offset += len(chunk)
                if self.state.size_bytes is not None and self.offset > self.state.size_bytes:
                    raise DownloadError(
                        f"{self.url}: received more than the expected {self.state.size_bytes} bytes; this URL "
                        "serves a different file",
                        url=self.url,
                    )
                meter.update(self.offset, item=self.target.name)
                if time.monotonic() - last_checkpoint >= self.options.checkpoint_interval_s:
                    self._checkpoint()
                    last_checkpoint = time.monotonic()
                chunk = read(self.options.chunk_bytes)
        except (http.client.HTTPException, OSError) as err:
            raise _RetryableError(f"connection lost at byte {self.offset}: {err}") from None
        finally:
            meter.close(item=self.target.name)
        return total is None or self.offset >= total

    def _html_error(self, evidence: str) -> HtmlResponseError:
        return HtmlResponseError(
            f"{self.url}: the server sent an HTML page ({evidence}) instead of the archive; the URL may "
            "be out of date or need a login. Open it in a browser, or give a mirror with --url or a "
            "local archive with --archive",
            url=self.url,
        )

    def _restart(self, reason: str) -> None:
        logger.warning("%s: %s; restarting from byte 0", self.url, reason)
        os.ftruncate(self.fd, 0)
        self.offset = 0
        self.hasher = hashlib.sha256()
        self.state.etag = self.state.last_modified = None

    def _checkpoint(self) -> None:
        os.fsync(self.fd)
        self.state.bytes_done = self.offset
        _save_state(self.target, self.state)


def _parse_total(content_range: str) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", content_range)
    return int(match.group(1)) if match else None


def _retry_after_s(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    return float(value) if value and value.isdigit() else None
