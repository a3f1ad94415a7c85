"""Archive extraction: malicious members are rejected and nothing is written outside the target."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from asrlib.datasets.extract import ArchiveError, UnsafeArchiveError, extract_archive


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:bz2") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"data") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


GOOD = [_file("LJSpeech-1.1/metadata.csv", b"LJ001-0001|a|a\n"), _file("LJSpeech-1.1/wavs/LJ001-0001.wav")]

MALICIOUS_TARS = {
    "dotdot": ([*GOOD, _file("LJSpeech-1.1/../../evil.txt")], "LJSpeech-1.1/../../evil.txt", "'..'"),
    "absolute": ([*GOOD, _file("/tmp/asrlib-evil.txt")], "/tmp/asrlib-evil.txt", "absolute path"),
    "symlink_escape": (
        [*GOOD, _link("LJSpeech-1.1/link", "../../outside", tarfile.SYMTYPE), _file("LJSpeech-1.1/link/evil.txt")],
        "LJSpeech-1.1/link", "points outside the archive",
    ),
    "symlink_absolute": (
        [*GOOD, _link("LJSpeech-1.1/etc", "/etc", tarfile.SYMTYPE)], "LJSpeech-1.1/etc", "points outside",
    ),
    "write_through_symlink": (
        [*GOOD, _link("LJSpeech-1.1/alias", "wavs", tarfile.SYMTYPE), _file("LJSpeech-1.1/alias/x.wav")],
        "LJSpeech-1.1/alias/x.wav", "passes through a symlink",
    ),
    "hardlink_escape": (
        [*GOOD, _link("LJSpeech-1.1/hard", "../outside.txt", tarfile.LNKTYPE)], "LJSpeech-1.1/hard",
        "hard link to '../outside.txt' points outside",
    ),
    "hardlink_absolute": (
        [*GOOD, _link("LJSpeech-1.1/passwd", "/etc/passwd", tarfile.LNKTYPE)], "LJSpeech-1.1/passwd",
        "points outside",
    ),
    "char_device": ([*GOOD, _special("LJSpeech-1.1/null", tarfile.CHRTYPE)], "LJSpeech-1.1/null", "device file"),
    "block_device": ([*GOOD, _special("LJSpeech-1.1/sda", tarfile.BLKTYPE)], "LJSpeech-1.1/sda", "device file"),
    "fifo": ([*GOOD, _special("LJSpeech-1.1/pipe", tarfile.FIFOTYPE)], "LJSpeech-1.1/pipe", "FIFO"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
def test_malicious_tar_rejected(tmp_path: Path, case: str) -> None:
    members, bad_member, reason = MALICIOUS_TARS[case]
    archive = _tar(tmp_path / "evil.tar.bz2", members)
    dest = tmp_path / "data" / "ljspeech"
    dest.parent.mkdir()
    before = _snapshot(tmp_path)

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest, archive_root="LJSpeech-1.1")

    assert caught.value.member == bad_member
    assert reason in str(caught.value)
    assert repr(bad_member) in str(caught.value)
    assert _snapshot(tmp_path) == before
    assert not Path("/tmp/asrlib-evil.txt").exists()


def _zip(path: Path, names: list[str], *, mode_bits: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            info = zipfile.ZipInfo(name)
            if mode_bits is not None and name.endswith("special"):
                info.external_attr = mode_bits << 16
            zf.writestr(info, b"data")
    return path


MALICIOUS_ZIPS: dict[str, tuple[list[str], int | None, str, str]] = {
    "dotdot": (["LJSpeech-1.1/metadata.csv", "LJSpeech-1.1/../../evil.txt"], None,
               "LJSpeech-1.1/../../evil.txt", "'..'"),
    "absolute": (["LJSpeech-1.1/metadata.csv", "/tmp/asrlib-evil.txt"], None, "/tmp/asrlib-evil.txt", "absolute"),
    "backslash_dotdot": (["LJSpeech-1.1\\..\\..\\evil.txt"], None, "LJSpeech-1.1\\..\\..\\evil.txt", "'..'"),
    "symlink": (["LJSpeech-1.1/special"], stat.S_IFLNK | 0o777, "LJSpeech-1.1/special", "symlink"),
    "fifo": (["LJSpeech-1.1/special"], stat.S_IFIFO | 0o644, "LJSpeech-1.1/special", "FIFO"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_ZIPS))
def test_malicious_zip_rejected(tmp_path: Path, case: str) -> None:
    names, mode_bits, bad_member, reason = MALICIOUS_ZIPS[case]
    archive = _zip(tmp_path / "evil.zip", names, mode_bits=mode_bits)
    dest = tmp_path / "data" / "ljspeech"
    dest.parent.mkdir()
    before = _snapshot(tmp_path)

    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest)

    assert caught.value.member == bad_member
    assert reason in str(caught.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_tar_formats_extracted(tmp_path: Path, mode: str) -> None:
    archive = _tar(tmp_path / "good.tar", GOOD, mode=mode)
    dest = tmp_path / "data" / "ljspeech"

    extract_archive(archive, dest, archive_root="LJSpeech-1.1")

    assert (dest / "metadata.csv").read_bytes() == b"LJ001-0001|a|a\n"
    assert (dest / "wavs" / "LJ001-0001.wav").read_bytes() == b"data"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ljspeech"]  # no temporary folder left


def test_zip_extracted_with_progress(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "good.zip", ["LJSpeech-1.1/metadata.csv", "LJSpeech-1.1/wavs/a.wav"])
    dest = tmp_path / "ljspeech"
    events: list[Any] = []

    extract_archive(archive, dest, progress=events.append)

    assert (dest / "wavs" / "a.wav").read_bytes() == b"data"
    assert events[-1].phase == "extract"
    assert events[-1].final
    assert events[-1].done == events[-1].total == 8


def test_internal_symlink_allowed(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [*GOOD, _link("LJSpeech-1.1/audio", "wavs", tarfile.SYMTYPE)], "w:gz")
    dest = tmp_path / "ljspeech"

    extract_archive(archive, dest, archive_root="LJSpeech-1.1")

    assert os.readlink(dest / "audio") == "wavs"
    assert (dest / "audio" / "LJ001-0001.wav").is_file()


def test_internal_hardlink_allowed(tmp_path: Path) -> None:
    members = [*GOOD, _link("LJSpeech-1.1/wavs/copy.wav", "LJSpeech-1.1/wavs/LJ001-0001.wav", tarfile.LNKTYPE)]
    archive = _tar(tmp_path / "a.tar.bz2", members)
    dest = tmp_path / "ljspeech"

    extract_archive(archive, dest, archive_root="LJSpeech-1.1")

    assert (dest / "wavs" / "copy.wav").read_bytes() == b"data"
    assert (dest / "wavs" / "copy.wav").stat().st_ino == (dest / "wavs" / "LJ001-0001.wav").stat().st_ino


def test_missing_archive_root_named(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", [_file("Other/metadata.csv")], "w:gz")
    dest = tmp_path / "ljspeech"

    with pytest.raises(ArchiveError, match=r"has no folder LJSpeech-1.1/ \(it contains: Other\)"):
        extract_archive(archive, dest, archive_root="LJSpeech-1.1")

    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_truncated_archive_reported_corrupt(tmp_path: Path, ljspeech_archive: Any) -> None:
    truncated = tmp_path / "cut.tar.bz2"
    truncated.write_bytes(ljspeech_archive.data[: ljspeech_archive.size // 2])
    dest = tmp_path / "ljspeech"

    with pytest.raises(ArchiveError, match="corrupt or truncated archive"):
        extract_archive(truncated, dest, archive_root="LJSpeech-1.1")

    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tar.bz2"]


def test_non_archive_rejected(tmp_path: Path) -> None:
    page = tmp_path / "page.tar.bz2"
    page.write_text("<!DOCTYPE html><html></html>")

    with pytest.raises(ArchiveError, match="not a supported archive"):
        extract_archive(page, tmp_path / "ljspeech")


def test_existing_destination_kept_without_overwrite(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", GOOD, "w:gz")
    dest = tmp_path / "ljspeech"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    with pytest.raises(FileExistsError, match="already exists"):
        extract_archive(archive, dest, archive_root="LJSpeech-1.1")
    assert (dest / "keep.txt").read_text() == "mine"

    extract_archive(archive, dest, archive_root="LJSpeech-1.1", overwrite=True)
    assert not (dest / "keep.txt").exists()
    assert (dest / "metadata.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "ljspeech"]


def test_stale_temp_folder_removed(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", GOOD, "w:gz")
    stale = tmp_path / ".ljspeech.extract-999999999-abc"  # no process has this id
    stale.mkdir()
    (stale / "half.wav").write_bytes(b"x")

    extract_archive(archive, tmp_path / "ljspeech", archive_root="LJSpeech-1.1")

    assert not stale.exists()
