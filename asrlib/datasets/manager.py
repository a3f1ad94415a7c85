"""`DatasetManager`: list, download, import, validate and generate datasets of the catalog.

Downloads go to `<data dir>/downloads/<archive name>`. Their resume state is the `.part.json`
beside the part file, so a new manager in a new process resumes where the last one stopped.
A dataset counts as present once its folder holds `metadata.csv`; extraction and import move a
finished folder into place, so a half-written dataset is never present.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from asrlib.config import DataConfig, TextConfig, data_dir, load_settings
from asrlib.datasets.catalog import DatasetEntry, load_catalog, resolve_dataset_path
from asrlib.datasets.demo import make_demo_dataset
from asrlib.datasets.download import (
    DownloadError,
    DownloadOptions,
    download_file,
    read_state,
    verify_file,
)
from asrlib.datasets.extract import extract_archive
from asrlib.datasets.importer import import_dataset
from asrlib.datasets.progress import ProgressCallback
from asrlib.datasets.validate import (
    ValidationOptions,
    ValidationReport,
    load_report,
    validate_dataset,
)

logger = logging.getLogger(__name__)

DOWNLOADS_FOLDER = "downloads"


@dataclass(frozen=True)
class DownloadStatus:
    """The state of a dataset's archive in the downloads folder."""

    archive: str
    state: str  # "partial" (resumable) or "complete" (downloaded, maybe not yet extracted)
    bytes_done: int
    total_bytes: int | None
    url: str | None


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    path: str
    present: bool  # the folder contains metadata.csv
    synthetic: bool
    in_catalog: bool  # False for a dataset imported under a name of its own
    description: str = ""
    clips: int | None = None  # usable clips, from validation.json
    hours: float | None = None  # from validation.json
    validated_at: str | None = None
    download: DownloadStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DatasetManager:
    """Facade over the catalog, download, extraction, import, validation and demo modules."""

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        *,
        downloads_dir: str | os.PathLike[str] | None = None,
        download_options: DownloadOptions | None = None,
        validation_options: ValidationOptions | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.catalog = load_catalog(self.settings)
        self.data_dir = data_dir(self.settings)
        self.downloads_dir = Path(downloads_dir) if downloads_dir else self.data_dir / DOWNLOADS_FOLDER
        self.download_options = download_options or DownloadOptions()
        self.validation_options = validation_options

    def entry(self, name: str) -> DatasetEntry:
        try:
            return self.catalog[name]
        except KeyError:
            names = ", ".join(sorted(self.catalog)) or "none"
            raise ValueError(f"unknown dataset {name!r}; the catalog in config.yaml has: {names}") from None

    def archive_path(self, entry: DatasetEntry) -> Path:
        return self.downloads_dir / (entry.archive_name or f"{entry.name}.archive")

    def list(self) -> list[DatasetStatus]:
        """Return the status of every catalog dataset, then of datasets imported under other names."""
        statuses = [self.status(name) for name in self.catalog]
        known = {entry.path.resolve() for entry in self.catalog.values()}
        if self.data_dir.is_dir():
            for folder in sorted(self.data_dir.iterdir()):
                hidden = folder.name.startswith(".") or folder.name == DOWNLOADS_FOLDER
                if hidden or not folder.is_dir() or folder.resolve() in known:
                    continue
                if (folder / "metadata.csv").is_file():
                    statuses.append(self._folder_status(folder.name, folder, in_catalog=False))
        return statuses

    def status(self, name: str) -> DatasetStatus:
        entry = self.entry(name)
        return self._folder_status(name, entry.path, in_catalog=True, entry=entry)

    def _folder_status(
        self, name: str, path: Path, *, in_catalog: bool, entry: DatasetEntry | None = None
    ) -> DatasetStatus:
        report = load_report(path) if (path / "metadata.csv").is_file() else None
        return DatasetStatus(
            name=name,
            path=str(path),
            present=(path / "metadata.csv").is_file(),
            synthetic=(entry is not None and entry.synthetic) or _marked_synthetic(path),
            in_catalog=in_catalog,
            description=entry.description if entry else "",
            clips=report.get("num_clips") if report else None,
            hours=report.get("total_hours") if report else None,
            validated_at=report.get("created_at") if report else None,
            download=self._download_status(entry) if entry and entry.downloadable else None,
        )

    def _download_status(self, entry: DatasetEntry) -> DownloadStatus | None:
        archive = self.archive_path(entry)
        state = read_state(archive)
        if state is not None:
            return DownloadStatus(str(archive), "partial", state.bytes_done, state.total_bytes or entry.size_bytes,
                                  state.url)
        if archive.is_file():
            size = archive.stat().st_size
            return DownloadStatus(str(archive), "complete", size, size, None)
        return None

    def download(
        self,
        name: str,
        *,
        url: str | None = None,
        archive: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        validate: bool = True,
        remove_archive: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Download (or take a local `archive`), verify, extract and validate a catalog dataset.

        `url` replaces the catalog's URL and mirrors, for example with another mirror; a local path
        or file:// URL there counts as `archive`. Returns the dataset folder. A dataset already
        present is left alone unless `overwrite` is set.
        """
        entry = self.entry(name)
        if entry.synthetic:
            raise ValueError(f"dataset {name!r} is synthetic and has no download; create it with `asr dataset demo`")
        if (entry.path / "metadata.csv").is_file() and not overwrite:
            logger.info("%s is already present at %s; pass overwrite=True (--force) to replace it", name, entry.path)
            return entry.path
        if archive is None and url is not None and _local_path(url) is not None:
            archive, url = _local_path(url), None
        if entry.sha256 is None:
            logger.warning("config.yaml has no sha256 for %s; the archive is checked by its size only", name)

        if archive is not None:
            archive_file = Path(archive).expanduser()
            if not archive_file.is_file():
                raise FileNotFoundError(f"archive not found: {archive_file}")
            # A user's own file is only checked, never moved aside like a bad download.
            verify_file(archive_file, size_bytes=entry.size_bytes, sha256=entry.sha256, progress=progress)
        else:
            archive_file = self._fetch(entry, url, progress)

        extract_archive(archive_file, entry.path, archive_root=entry.archive_root, overwrite=overwrite,
                        progress=progress)
        if remove_archive and archive is None:
            archive_file.unlink()
        if validate:
            self.validate(name, progress=progress)
        return entry.path

    def _fetch(self, entry: DatasetEntry, url: str | None, progress: ProgressCallback | None) -> Path:
        urls = [url] if url else [u for u in (entry.url, *entry.mirrors) if u]
        if not urls:
            raise ValueError(f"dataset {entry.name!r} has no url in config.yaml; pass --url or --archive")
        target = self.archive_path(entry)
        error: DownloadError | None = None
        for candidate in urls:
            try:
                return download_file(candidate, target, size_bytes=entry.size_bytes, sha256=entry.sha256,
                                     options=self.download_options, progress=progress)
            except DownloadError as err:
                # A checksum or HTML failure also moves on: another mirror may serve the right file.
                error = err
                if candidate != urls[-1]:
                    logger.warning("%s; trying the next mirror", err)
        assert error is not None
        raise error

    def import_(
        self,
        name: str,
        source: str | os.PathLike[str],
        *,
        mode: str = "copy",
        overwrite: bool = False,
        validate: bool = True,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Import a folder or archive as `name`: a catalog dataset, or a new name in the data directory."""
        entry = self.catalog.get(name)
        if entry is not None and entry.synthetic:
            raise ValueError(f"dataset {name!r} is synthetic; create it with `asr dataset demo`")
        if entry is None and (not name or name.startswith(".") or "/" in name or name == DOWNLOADS_FOLDER):
            raise ValueError(f"invalid dataset name {name!r}; use letters, digits, '.', '_' or '-'")
        dest = entry.path if entry is not None else self.data_dir / name
        archive_root = entry.archive_root if entry is not None else None
        import_dataset(source, dest, mode=mode, archive_root=archive_root, overwrite=overwrite, progress=progress)
        if validate:
            self.validate(str(dest), progress=progress)
        return dest

    def validate(self, name_or_path: str, *, progress: ProgressCallback | None = None) -> ValidationReport:
        """Validate a dataset (catalog name, imported name or folder) and save its report and split."""
        path = resolve_dataset_path(name_or_path, self.settings)
        if not (path / "metadata.csv").is_file():
            hint = f"`asr dataset download {name_or_path}`" if name_or_path in self.catalog else "`asr dataset import`"
            raise FileNotFoundError(
                f"dataset {name_or_path!r} is not present at {path} (no metadata.csv); get it with {hint}"
            )
        text, data = self._run_defaults()
        options = self.validation_options or ValidationOptions(
            min_duration_s=data.get("min_duration", DataConfig.min_duration),
            max_duration_s=data.get("max_duration", DataConfig.max_duration),
        )
        return validate_dataset(
            path,
            charset=text.get("charset", TextConfig.charset),
            split_seed=data.get("split_seed", DataConfig.split_seed),
            valid_fraction=data.get("valid_fraction", DataConfig.valid_fraction),
            test_fraction=data.get("test_fraction", DataConfig.test_fraction),
            options=options,
            progress=progress,
        )

    def _run_defaults(self) -> tuple[dict[str, Any], dict[str, Any]]:
        defaults = self.settings.get("run_defaults") or {}
        return defaults.get("text") or {}, defaults.get("data") or {}

    def make_demo(
        self,
        *,
        num_sentences: int = 300,
        seed: int = 0,
        overwrite: bool = False,
        validate: bool = True,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Synthesise the demo dataset into the catalog's `demo` folder (or `<data dir>/demo`)."""
        entry = self.catalog.get("demo")
        dest = entry.path if entry is not None else self.data_dir / "demo"
        make_demo_dataset(dest, num_sentences=num_sentences, seed=seed, overwrite=overwrite, progress=progress)
        if validate:
            self.validate(str(dest), progress=progress)
        return dest


def _local_path(url: str) -> Path | None:
    """Return the file a file:// URL or plain path names; None for a network URL."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a one-letter scheme is a Windows drive
        return Path(url).expanduser()
    return None


def _marked_synthetic(path: Path) -> bool:
    try:
        return bool(json.loads((path / "dataset.json").read_text(encoding="utf-8")).get("synthetic"))
    except (FileNotFoundError, ValueError, AttributeError):
        return False
