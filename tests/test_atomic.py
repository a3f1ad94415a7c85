"""Crash-safe writes: the target appears whole or not at all, with the usual file mode."""

from __future__ import annotations

import os
import stat

import pytest

from asrlib.atomic import FILE_MODE, TEMP_PREFIX, atomic_open, atomic_write_text


def test_write_replaces_target(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_mode_follows_umask(tmp_path):
    """Files get 0666 less the umask, as open() gives, not mkstemp's owner-only 0600."""
    target = tmp_path / "shared.txt"
    atomic_write_text(target, "x")
    assert stat.S_IMODE(os.stat(target).st_mode) == FILE_MODE
    mask = os.umask(0o022)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
