"""The dataset catalog: the `datasets:` section of config.yaml as typed entries.

Each entry names where a dataset lives on disk and, for downloadable ones, where its archive comes
from and how to verify it. A dataset's folder is, in order of precedence: the environment
variable named by `path_env`, the entry's `path` (relative paths are taken from the repository
root, like the other paths in config.yaml), or `<data dir>/<name>` when the entry has no `path`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from asrlib.config import REPO_ROOT, data_dir

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DatasetEntry:
    """One catalog entry with its folder already resolved."""

    name: str
    path: Path  # the dataset folder (metadata.csv and wavs/ once present)
    description: str = ""
    url: str | None = None  # official archive URL; None for datasets that are generated
    size_bytes: int | None = None  # expected archive size
    sha256: str | None = None  # expected archive SHA-256; None falls back to the size check
    archive_root: str | None = None  # the folder inside the archive that becomes `path`
    mirrors: tuple[str, ...] = ()  # other URLs of the same archive, tried in order
    path_env: str | None = None  # environment variable that overrides `path`
    synthetic: bool = False  # generated data, never to be mistaken for recorded speech
    generator: str | None = None  # what generates a synthetic dataset

    @property
    def downloadable(self) -> bool:
        return self.url is not None

    @property
    def archive_name(self) -> str | None:
        """File name of the downloaded archive, taken from the official URL."""
        if self.url is None:
            return None
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or f"{self.name}.archive"


# Keys accepted in config.yaml; `path` is given as a string there and resolved here.
_KEYS = {f.name for f in fields(DatasetEntry)} - {"name"}


def load_catalog(settings: dict[str, Any]) -> dict[str, DatasetEntry]:
    """Build the catalog from `settings["datasets"]`, rejecting invalid entries with their key."""
    raw = settings.get("datasets") or {}
    # Wrong types in config.yaml are invalid values (ValueError), as in asrlib.config.
    if not isinstance(raw, dict):
        raise ValueError(f"datasets: expected a mapping of dataset names, got {type(raw).__name__}")
    return {name: _parse_entry(name, value or {}, settings) for name, value in raw.items()}


def _parse_entry(name: Any, raw: Any, settings: dict[str, Any]) -> DatasetEntry:
    key = f"datasets.{name}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{key}: invalid dataset name; use letters, digits, '.', '_' or '-'")
    if not isinstance(raw, dict):
        raise ValueError(f"{key}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"{key}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_KEYS))}")

    url = _optional_str(raw, "url", key)
    size_bytes = raw.get("size_bytes")
    if size_bytes is not None and (not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0):
        raise ValueError(f"{key}.size_bytes: expected a positive integer, got {size_bytes!r}")
    sha256 = raw.get("sha256")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
            raise ValueError(f"{key}.sha256: expected 64 hexadecimal digits or null, got {sha256!r}")
        sha256 = sha256.lower()
    mirrors = raw.get("mirrors") or []
    if not isinstance(mirrors, list) or not all(isinstance(m, str) and m for m in mirrors):
        raise ValueError(f"{key}.mirrors: expected a list of URLs")
    synthetic = raw.get("synthetic", False)
    if not isinstance(synthetic, bool):
        raise ValueError(f"{key}.synthetic: expected true or false, got {synthetic!r}")

    path_env = _optional_str(raw, "path_env", key)
    return DatasetEntry(
        name=name,
        path=_resolve_entry_path(name, _optional_str(raw, "path", key), path_env, settings),
        description=_optional_str(raw, "description", key) or "",
        url=url,
        size_bytes=size_bytes,
        sha256=sha256,
        archive_root=_optional_str(raw, "archive_root", key),
        mirrors=tuple(mirrors),
        path_env=path_env,
        synthetic=synthetic,
        generator=_optional_str(raw, "generator", key),
    )


def _optional_str(raw: dict[str, Any], field_name: str, key: str) -> str | None:
    value = raw.get(field_name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key}.{field_name}: expected a string, got {value!r}")
    return value or None


def _resolve_entry_path(name: str, path: str | None, path_env: str | None, settings: dict[str, Any]) -> Path:
    raw = (os.environ.get(path_env) if path_env else None) or path
    if not raw:
        return data_dir(settings) / name
    resolved = Path(raw).expanduser()
    return resolved if resolved.is_absolute() else REPO_ROOT / resolved


def resolve_dataset_path(name_or_path: str | os.PathLike[str], settings: dict[str, Any]) -> Path:
    """Map a catalog name to its folder; otherwise accept an existing folder path.

    A bare name that is not in the catalog also finds a dataset imported under that name into the
    data directory. The returned folder of a catalog entry may not exist yet (not downloaded).
    """
    catalog = load_catalog(settings)
    text = os.fspath(name_or_path)
    if text in catalog:
        return catalog[text].path
    candidate = Path(text).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    imported = data_dir(settings) / text
    if _NAME_RE.match(text) and imported.is_dir():
        return imported
    names = ", ".join(sorted(catalog)) or "none"
    raise ValueError(
        f"dataset {text!r} not found: it is neither a catalog name (catalog: {names}) nor an existing folder"
    )
