"""Resumable, verified downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asrlib.config import REPO_ROOT
from asrlib.datasets.download import (
    ChecksumError,
    DownloadError,
    DownloadOptions,
    HtmlResponseError,
    download_file,
    part_path,
    read_state,
    state_path,
)
from asrlib.datasets.manager import DatasetManager
from asrlib.datasets.progress import Progress

FAST = DownloadOptions(backoff_s=0.01, max_backoff_s=0.05, timeout_s=10.0, chunk_bytes=65536)
NO_RETRY = DownloadOptions(max_retries=0, backoff_s=0.01, timeout_s=10.0, chunk_bytes=65536)


def test_download_verifies_and_reports_progress(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    events: list[Progress] = []
    target = tmp_path / "LJSpeech-1.1.tar.bz2"

    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=ljspeech_archive.sha256,
                  options=FAST, progress=events.append)

    assert target.read_bytes() == ljspeech_archive.data
    assert not part_path(target).exists()
    assert not state_path(target).exists()
    assert len(archive_server.log) == 1
    assert archive_server.log[0].range is None
    assert archive_server.log[0].bytes_sent == ljspeech_archive.size
    final = [e for e in events if e.phase == "download" and e.final]
    assert final and final[-1].done == ljspeech_archive.size
    assert final[-1].total == ljspeech_archive.size
    assert final[-1].rate_per_s is not None
    assert final[-1].rate_per_s > 0


def test_download_cut_midway_resumes_with_range(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    cut = ljspeech_archive.size // 3
    archive_server.cut_after_bytes = [cut]
    target = tmp_path / "LJSpeech-1.1.tar.bz2"

    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=ljspeech_archive.sha256,
                  options=FAST)

    assert target.read_bytes() == ljspeech_archive.data
    first, second = archive_server.log
    assert first.range is None
    assert first.bytes_sent == cut
    assert second.range == f"bytes={cut}-"
    assert second.if_range == '"v1"'
    assert second.status == 206
    assert second.bytes_sent == ljspeech_archive.size - cut


def test_download_resumes_after_process_restart(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
, make_catalog_settings: Any) -> None:
    settings = make_catalog_settings(tmp_path, archive_server.url(), ljspeech_archive)
    cut = ljspeech_archive.size // 2
    archive_server.cut_after_bytes = [cut]

    first = DatasetManager(settings, download_options=NO_RETRY)
    with pytest.raises(DownloadError, match="run the download again to resume"):
        first.download("ljspeech")
    archive = first.archive_path(first.entry("ljspeech"))
    saved = json.loads(state_path(archive).read_text())
    assert saved["bytes_done"] == cut
    assert saved["sha256"] == ljspeech_archive.sha256
    assert saved["etag"] == '"v1"'
    status = first.status("ljspeech")
    assert not status.present
    assert status.download is not None
    assert status.download.state == "partial"
    assert status.download.bytes_done == cut

    # A new manager reads only what is on disk, like a new process.
    second = DatasetManager(settings, download_options=FAST)
    path = second.download("ljspeech")

    resumed = archive_server.log[1]
    assert resumed.range == f"bytes={cut}-"
    assert resumed.status == 206
    assert resumed.bytes_sent == ljspeech_archive.size - cut
    assert len(archive_server.log) == 2
    assert (path / "metadata.csv").is_file()
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == ljspeech_archive.sha256
    listed = second.status("ljspeech")
    assert listed.present
    assert listed.clips == len(ljspeech_archive.clip_ids)


def test_download_resumes_after_sigkill(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    target = tmp_path / "LJSpeech-1.1.tar.bz2"
    stall = ljspeech_archive.size // 2
    archive_server.stall_after_bytes = [stall]
    child_code = (
        "import sys\n"
        "from asrlib.datasets.download import DownloadOptions, download_file\n"
        "download_file(sys.argv[1], sys.argv[2], size_bytes=int(sys.argv[3]), sha256=sys.argv[4],\n"
        "              options=DownloadOptions(checkpoint_interval_s=0.0, chunk_bytes=65536))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", child_code, archive_server.url(), str(target),
                              str(ljspeech_archive.size), ljspeech_archive.sha256], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 30
        while (read_state(target) is None or read_state(target).bytes_done < stall) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_state(target).bytes_done == stall
        child.send_signal(signal.SIGKILL)  # no chance to clean up, like a crash
        child.wait(timeout=10)
    finally:
        archive_server.release.set()
        if child.poll() is None:
            child.kill()

    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=ljspeech_archive.sha256,
                  options=FAST)

    resumed = archive_server.log[1]
    assert resumed.range == f"bytes={stall}-"
    assert resumed.bytes_sent == ljspeech_archive.size - stall
    assert target.read_bytes() == ljspeech_archive.data


def test_resume_drops_bytes_past_last_checkpoint(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    target = tmp_path / "LJSpeech-1.1.tar.bz2"
    cut = ljspeech_archive.size // 2
    archive_server.cut_after_bytes = [cut]
    with pytest.raises(DownloadError):
        download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size,
                      sha256=ljspeech_archive.sha256, options=NO_RETRY)
    # Bytes a crash left after the last fsync are not trusted, even if the file has them.
    with part_path(target).open("ab") as part:
        part.write(b"garbage that never reached the disk in order")

    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=ljspeech_archive.sha256,
                  options=FAST)

    assert archive_server.log[1].range == f"bytes={cut}-"
    assert target.read_bytes() == ljspeech_archive.data


def test_wrong_checksum_keeps_file_aside(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    target = tmp_path / "LJSpeech-1.1.tar.bz2"
    wrong = "0" * 64

    with pytest.raises(ChecksumError) as caught:
        download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=wrong, options=FAST)

    message = str(caught.value)
    bad = tmp_path / "LJSpeech-1.1.tar.bz2.bad-sha256"
    assert f"expected {wrong}" in message
    assert f"got {ljspeech_archive.sha256}" in message
    assert str(bad) in message
    assert bad.read_bytes() == ljspeech_archive.data
    assert caught.value.path == bad
    assert not target.exists()
    assert not part_path(target).exists()
    assert not state_path(target).exists()


def test_html_content_type_rejected(tmp_path: Path, archive_server: Any) -> None:
    archive_server.serve("/login", b"<p>Please sign in</p>", content_type="text/html; charset=utf-8")
    target = tmp_path / "archive.tar.bz2"

    with pytest.raises(HtmlResponseError, match=r"sent an HTML page .*Content-Type text/html"):
        download_file(archive_server.url("/login"), target, options=FAST)

    assert not target.exists()
    assert len(archive_server.log) == 1  # not retried


def test_html_body_rejected_despite_binary_type(tmp_path: Path, archive_server: Any) -> None:
    page = b"\n  <!DOCTYPE html><html><body>Not found</body></html>"
    archive_server.serve("/page", page, content_type="application/octet-stream")
    target = tmp_path / "archive.tar.bz2"

    with pytest.raises(HtmlResponseError, match="content starting with an HTML tag"):
        download_file(archive_server.url("/page"), target, options=FAST)

    assert not target.exists()
    assert part_path(target).stat().st_size == 0


def test_range_ignored_restarts_cleanly(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    archive_server.ignore_range = True
    archive_server.cut_after_bytes = [ljspeech_archive.size // 4]
    target = tmp_path / "LJSpeech-1.1.tar.bz2"

    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=ljspeech_archive.sha256,
                  options=FAST)

    second = archive_server.log[1]
    assert second.range is not None
    assert second.status == 200
    assert second.bytes_sent == ljspeech_archive.size
    assert target.read_bytes() == ljspeech_archive.data


def test_changed_remote_file_downloaded_anew(tmp_path: Path, archive_server: Any) -> None:
    old, new = b"A" * 300_000, b"B" * 250_000
    archive_server.serve("/data.bin", old, content_type="application/octet-stream", etag='"old"')
    archive_server.cut_after_bytes = [100_000]
    target = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download_file(archive_server.url("/data.bin"), target, options=NO_RETRY)

    archive_server.serve("/data.bin", new, content_type="application/octet-stream", etag='"new"',
                         last_modified="Tue, 20 Feb 2018 00:00:00 GMT")
    download_file(archive_server.url("/data.bin"), target, options=FAST)

    resumed = archive_server.log[1]
    assert resumed.range == "bytes=100000-"
    assert resumed.if_range == '"old"'
    assert resumed.status == 200  # If-Range did not match, so the server sent the new file whole
    assert target.read_bytes() == new


def test_server_errors_retried_with_backoff(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    archive_server.fail_with_status = [503, 500]
    target = tmp_path / "LJSpeech-1.1.tar.bz2"

    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=ljspeech_archive.sha256,
                  options=FAST)

    assert [r.status for r in archive_server.log] == [503, 500, 200]
    assert target.read_bytes() == ljspeech_archive.data


def test_retries_exhausted_raise_with_resume_hint(tmp_path: Path, archive_server: Any) -> None:
    archive_server.fail_with_status = [503, 503, 503]
    options = DownloadOptions(max_retries=2, backoff_s=0.01, timeout_s=10.0)

    with pytest.raises(DownloadError, match="failed 3 times in a row, last: HTTP 503"):
        download_file(archive_server.url(), tmp_path / "a.tar.bz2", options=options)

    assert len(archive_server.log) == 3


def test_not_found_not_retried(tmp_path: Path, archive_server: Any) -> None:
    with pytest.raises(DownloadError, match=r"/missing.tar.bz2: HTTP 404"):
        download_file(archive_server.url("/missing.tar.bz2"), tmp_path / "a.tar.bz2", options=FAST)

    assert len(archive_server.log) == 1


def test_wrong_remote_size_rejected_before_download(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    expected = ljspeech_archive.size + 1
    with pytest.raises(DownloadError, match=f"reports {ljspeech_archive.size} bytes, expected {expected}"):
        download_file(archive_server.url(), tmp_path / "a.tar.bz2", size_bytes=expected, options=FAST)


def test_complete_part_file_finished_after_416(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
) -> None:
    # The whole file arrived but the process stopped before the rename, so the server responds with 416.
    target = tmp_path / "LJSpeech-1.1.tar.bz2"
    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, options=FAST)
    target.rename(part_path(target))
    state_path(target).write_text(json.dumps({
        "url": archive_server.url(), "size_bytes": ljspeech_archive.size, "sha256": ljspeech_archive.sha256,
        "bytes_done": ljspeech_archive.size, "etag": '"v1"',
    }))

    download_file(archive_server.url(), target, size_bytes=ljspeech_archive.size, sha256=ljspeech_archive.sha256,
                  options=FAST)

    assert archive_server.log[-1].status == 416
    assert target.read_bytes() == ljspeech_archive.data
    assert read_state(target) is None


def test_mirror_used_when_official_url_fails(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
, make_catalog_settings: Any) -> None:
    settings = make_catalog_settings(tmp_path, archive_server.url("/gone.tar.bz2"), ljspeech_archive,
                                mirrors=[archive_server.url(archive_server.archive_path)])
    manager = DatasetManager(settings, download_options=FAST)

    path = manager.download("ljspeech", validate=False)

    assert [r.path for r in archive_server.log] == ["/gone.tar.bz2", archive_server.archive_path]
    assert (path / "wavs" / f"{ljspeech_archive.clip_ids[0]}.wav").is_file()


def test_local_archive_replaces_download(
    tmp_path: Path, archive_server: Any, ljspeech_archive: Any
, make_catalog_settings: Any) -> None:
    manager = DatasetManager(make_catalog_settings(tmp_path, archive_server.url(), ljspeech_archive))

    path = manager.download("ljspeech", archive=ljspeech_archive.path, validate=False)

    assert archive_server.log == []
    assert (path / "metadata.csv").is_file()


def test_bad_local_archive_left_in_place(
    tmp_path: Path, ljspeech_archive: Any, make_catalog_settings: Any
) -> None:
    manager = DatasetManager(make_catalog_settings(tmp_path, "http://127.0.0.1:9/unused", ljspeech_archive,
                                              sha256="1" * 64))

    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        manager.download("ljspeech", archive=ljspeech_archive.path)

    assert ljspeech_archive.path.is_file()
    assert not (tmp_path / "data" / "ljspeech").exists()
