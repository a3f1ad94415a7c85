"""Safe extraction of dataset archives: tar (plain, gzip, bzip2, xz) and zip.

Every member is checked before it is written: absolute paths, `..` components, links that point
outside the archive, paths that pass through a symlink, and device files or FIFOs are rejected
with an error naming the member. Tar members also go through Python's `filter="data"` (3.11.4 and
later) as a second line of defence. Everything is extracted into a hidden temporary folder beside
the destination, which `os.replace` moves into place only after the whole archive was read, so a
half-extracted dataset never appears under its real name.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from asrlib.datasets.progress import ProgressCallback, ProgressMeter

logger = logging.getLogger(__name__)

_TEMP_MARK = ".extract-"  # hidden temporary folders are named .<dest name>.extract-<pid>-<random>
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# tarfile.FilterError exists from Python 3.11.4; an empty tuple catches nothing before that.
_FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


class ArchiveError(ValueError):
    """An archive that cannot be read or does not have the expected layout."""

    def __init__(self, message: str, *, archive: Path) -> None:
        super().__init__(message)
        self.archive = archive


class UnsafeArchiveError(ArchiveError):
    """An archive member that would write outside the destination or create a special file."""

    def __init__(self, archive: Path, member: str, reason: str) -> None:
        super().__init__(
            f"{archive}: unsafe member {member!r}: {reason}; nothing was extracted. Do not use this "
            "archive; download it again from the official URL",
            archive=archive,
        )
        self.member = member
        self.reason = reason


def archive_format(path: Path) -> str:
    """Return "zip" or "tar" from the file's first bytes, or raise ArchiveError."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
    if compressed or head[257:262] == b"ustar":
        return "tar"
    raise ArchiveError(
        f"{path}: not a supported archive (tar, tar.gz, tar.bz2, tar.xz or zip); check that the file is "
        "the dataset archive",
        archive=path,
    )


def extract_archive(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    archive_root: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Extract `archive` so that its folder `archive_root` becomes `dest`, and return `dest`.

    Without `archive_root`, a single top-level folder becomes `dest`; otherwise the whole archive
    does. An existing `dest` is replaced only with `overwrite`, and only after extraction succeeded.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise FileExistsError(f"{dest} already exists; remove it, or pass overwrite=True (--force) to replace it")
    kind = archive_format(archive)
    # NOTE: the unpacked size is neither limited nor checked against free disk space, so a
    # decompression bomb fills the disk before it fails (the temporary folder is then removed).
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(dest)
    tmp = make_temp_dir(dest)
    try:
        logger.info("extracting %s into %s", archive, dest)
        if kind == "zip":
            _extract_zip(archive, tmp, progress)
        else:
            _extract_tar(archive, tmp, progress)
        root = _select_root(archive, tmp, archive_root)
        install_dir(root, dest, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s", dest)
    return dest


def make_temp_dir(dest: Path) -> Path:
    """Create a hidden folder beside `dest`, on the same file system so os.replace can move it."""
    path = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TEMP_MARK}{os.getpid()}-", dir=dest.parent))
    path.chmod(0o755)  # mkdtemp makes it owner-only; the dataset folder should be readable like others
    return path


def remove_stale_temp_dirs(dest: Path) -> None:
    """Delete temporary folders of `dest` left behind by processes that no longer run."""
    for candidate in dest.parent.glob(f".{dest.name}{_TEMP_MARK}*"):
        pid_text = candidate.name[len(f".{dest.name}{_TEMP_MARK}") :].split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)):
            continue
        logger.info("removing %s, left by an interrupted run (process %s)", candidate, pid_text)
        shutil.rmtree(candidate, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def install_dir(source: Path, dest: Path, *, overwrite: bool) -> None:
    """Move the folder `source` to `dest`, replacing an existing `dest` only when `overwrite` is set."""
    old: Path | None = None
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{dest} already exists; remove it, or pass overwrite=True (--force) to replace it")
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    try:
        os.replace(source, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        # An imported dataset may be a symlink; remove the link, never the folder it points to.
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def _select_root(archive: Path, tmp: Path, archive_root: str | None) -> Path:
    if archive_root:
        root = tmp / archive_root
        if not root.is_dir() or root.is_symlink():
            found = ", ".join(sorted(p.name for p in tmp.iterdir())[:10]) or "nothing"
            raise ArchiveError(
                f"{archive}: the archive has no folder {archive_root}/ (it contains: {found}); check that "
                "this is the right archive or fix archive_root in config.yaml",
                archive=archive,
            )
        return root
    entries = list(tmp.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return tmp


def check_member_name(archive: Path, name: str) -> str:
    """Return the member's normalised relative path, or raise UnsafeArchiveError."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(archive, name, "empty name or NUL character")
    if name.startswith(("/", "\\")) or _DRIVE_RE.match(name):
        raise UnsafeArchiveError(archive, name, "absolute path")
    parts = re.split(r"[/\\]+", name)
    if ".." in parts:
        raise UnsafeArchiveError(archive, name, "path contains '..'")
    normalised = posixpath.normpath("/".join(p for p in parts if p not in ("", ".")) or ".")
    return normalised


def _escapes(path: str) -> bool:
    return path == ".." or path.startswith(("../", "/"))


class _CountingReader:
    """File wrapper that counts compressed bytes read, for extraction progress."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.bytes_read += len(data)
        return data


def _extract_tar(archive: Path, tmp: Path, progress: ProgressCallback | None) -> None:
    total = archive.stat().st_size
    meter = ProgressMeter(progress, phase="extract", total=total, unit="B")
    with archive.open("rb") as raw:
        reader = _CountingReader(raw)
        try:
            # Stream mode ("r|*") reads the archive once, front to back; a 2.6 GB bzip2 archive
            # would otherwise be decompressed twice.
            with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
                members = _checked_tar_members(archive, tar, reader, meter)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python 3.11.0 to 3.11.3 have no filters; the checks above still apply
                    tar.extractall(tmp, members=members)
        except _FILTER_ERRORS as err:
            tarinfo = getattr(err, "tarinfo", None)
            member = tarinfo.name if tarinfo is not None else "?"
            raise UnsafeArchiveError(archive, member, str(err)) from None
        except (tarfile.ReadError, tarfile.CompressionError, EOFError) as err:
            raise _corrupt(archive, err) from None
        except OSError as err:
            if err.errno is not None:  # a real I/O error such as a full disk, not bad data
                raise
            raise _corrupt(archive, err) from None
    meter.update(reader.bytes_read, force=True)
    meter.close()


def _corrupt(archive: Path, err: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{archive}: corrupt or truncated archive ({err}); delete it and download it again", archive=archive
    )


def _checked_tar_members(
    archive: Path, tar: tarfile.TarFile, reader: _CountingReader, meter: ProgressMeter
) -> Iterator[tarfile.TarInfo]:
    symlinks: set[str] = set()
    for member in tar:
        name = check_member_name(archive, member.name)
        if any(name == link or name.startswith(link + "/") for link in symlinks):
            raise UnsafeArchiveError(archive, member.name, "path passes through a symlink in the archive")
        if member.ischr() or member.isblk() or member.isfifo():
            raise UnsafeArchiveError(archive, member.name, "device file or FIFO")
        if member.issym():
            if member.linkname.startswith("/") or _escapes(
                posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            ):
                reason = f"symlink to {member.linkname!r} points outside the archive"
                raise UnsafeArchiveError(archive, member.name, reason)
            symlinks.add(name)
        elif member.islnk():
            if member.linkname.startswith("/") or _escapes(posixpath.normpath(member.linkname)):
                reason = f"hard link to {member.linkname!r} points outside the archive"
                raise UnsafeArchiveError(archive, member.name, reason)
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(archive, member.name, f"unsupported member type {member.type!r}")
        meter.update(reader.bytes_read, item=member.name)
        yield member


def _extract_zip(archive: Path, tmp: Path, progress: ProgressCallback | None) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise _corrupt(archive, err) from None
    with zf:
        infos = zf.infolist()
        targets = [_check_zip_member(archive, info) for info in infos]  # all checked before writing
        meter = ProgressMeter(progress, phase="extract", total=sum(i.file_size for i in infos), unit="B")
        done = 0
        base = tmp.resolve()
        for info, name in zip(infos, targets, strict=True):
            path = (tmp / name).resolve()
            if path != base and base not in path.parents:  # unreachable after the name checks
                raise UnsafeArchiveError(archive, info.filename, "path resolves outside the destination")
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as source, path.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            except (zipfile.BadZipFile, EOFError) as err:
                raise _corrupt(archive, err) from None
            done += info.file_size
            meter.update(done, item=info.filename)
        meter.close()


def _check_zip_member(archive: Path, info: zipfile.ZipInfo) -> str:
    name = check_member_name(archive, info.filename)
    mode = info.external_attr >> 16  # Unix mode bits, when the zip was made on Unix
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(archive, info.filename, "symlink (not supported in zip archives)")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise UnsafeArchiveError(archive, info.filename, "device file, FIFO or socket")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{archive}: member {info.filename!r} is encrypted; use an unencrypted archive",
                           archive=archive)
    return name
