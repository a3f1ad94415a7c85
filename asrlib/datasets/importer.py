"""Import of an LJSpeech-format dataset that is already on disk: a folder or a local archive.

A folder is copied by default, so the workbench owns its copy and `validation.json` and
`split.json` are written there and not into the source. `mode="symlink"` saves the disk space
instead: the dataset then is a symbolic link to the source folder, and validation writes its
reports into that source folder. An archive is extracted with the checks of `extract.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from asrlib.datasets.extract import (
    extract_archive,
    install_dir,
    make_temp_dir,
    remove_stale_temp_dirs,
)
from asrlib.datasets.progress import ProgressCallback, ProgressMeter

logger = logging.getLogger(__name__)

IMPORT_MODES = ("copy", "symlink")


def find_ljspeech_root(folder: Path) -> Path:
    """Return `folder`, or its single subfolder, that contains metadata.csv and wavs/."""
    if _is_ljspeech(folder):
        return folder
    candidates = [child for child in sorted(folder.iterdir()) if child.is_dir() and _is_ljspeech(child)]
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"{folder}: not an LJSpeech-format folder; expected metadata.csv and wavs/ in it or in one "
        "subfolder (such as LJSpeech-1.1/)"
    )


def _is_ljspeech(folder: Path) -> bool:
    return (folder / "metadata.csv").is_file() and (folder / "wavs").is_dir()


def import_dataset(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    mode: str = "copy",
    archive_root: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Make the dataset at `source` (a folder or an archive file) available at `dest`; return `dest`.

    `mode` applies to folders: "copy" (default) or "symlink". An archive is always extracted;
    `archive_root` names its folder that becomes `dest` (default: its single top-level folder).
    """
    source, dest = Path(source).expanduser(), Path(dest)
    if mode not in IMPORT_MODES:
        raise ValueError(f"invalid import mode {mode!r}; use one of {', '.join(IMPORT_MODES)}")
    if not source.exists():
        raise FileNotFoundError(f"import source not found: {source}")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise FileExistsError(f"{dest} already exists; remove it, or pass overwrite=True (--force) to replace it")
    if source.is_file():
        return extract_archive(source, dest, archive_root=archive_root, overwrite=overwrite, progress=progress)

    root = find_ljspeech_root(source).resolve()
    if dest.resolve() == root or root in dest.resolve().parents:
        raise ValueError(f"cannot import {root} into itself ({dest}); choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        _install_symlink(root, dest, overwrite=overwrite)
    else:
        _copy_folder(root, dest, overwrite=overwrite, progress=progress)
    logger.info("imported %s to %s (%s)", root, dest, mode)
    return dest


def _install_symlink(root: Path, dest: Path, *, overwrite: bool) -> None:
    # Create the link under a temporary name, then rename it, so `dest` never dangles half-made.
    link = dest.with_name(f".{dest.name}.link-{os.getpid()}")
    link.unlink(missing_ok=True)
    link.symlink_to(root, target_is_directory=True)
    try:
        install_dir(link, dest, overwrite=overwrite)
    except BaseException:
        link.unlink(missing_ok=True)
        raise


def _copy_folder(root: Path, dest: Path, *, overwrite: bool, progress: ProgressCallback | None) -> None:
    files = [path for path in root.rglob("*") if path.is_file()]
    meter = ProgressMeter(progress, phase="copy", total=len(files), unit="file")
    remove_stale_temp_dirs(dest)
    tmp = make_temp_dir(dest)
    try:
        for count, path in enumerate(files, start=1):
            relative = path.relative_to(root)
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            meter.update(count, item=str(relative))
        meter.close()
        install_dir(tmp, dest, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
