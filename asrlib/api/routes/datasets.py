"""Datasets of the catalog and imported ones: /api/datasets/... ; long operations run in the background."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from asrlib.api.schemas import DatasetResponse, DatasetTask, DemoRequest, DownloadRequest, ImportRequest
from asrlib.api.state import ApiState, get_state
from asrlib.datasets.manager import DOWNLOADS_FOLDER, DatasetStatus

router = APIRouter(prefix="/datasets", tags=["datasets"])

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEMO = "demo"
REPORT_FILE = "validation.json"


def _check_name(name: str) -> str:
    if not DATASET_NAME.match(name) or ".." in name or name == DOWNLOADS_FOLDER:
        raise HTTPException(400, f"invalid dataset name {name!r}; use letters, digits, '.', '_' and '-'")
    return name


def _response(status: DatasetStatus, state: ApiState) -> DatasetResponse:
    task = state.dataset_tasks.get(status.name)
    return DatasetResponse(**status.to_dict(), task=DatasetTask(**task.to_dict()) if task else None)


def _status(name: str, state: ApiState) -> DatasetStatus:
    for status in state.datasets.list():
        if status.name == name:
            return status
    raise HTTPException(404, f"dataset {name!r} not found; the catalog has {', '.join(sorted(state.datasets.catalog))}")


@router.get("", response_model=list[DatasetResponse])
def list_datasets(state: ApiState = Depends(get_state)):
    """List catalog datasets, then datasets imported under their own names, with their latest task."""
    return [_response(s, state) for s in state.datasets.list()]


@router.get("/{name}", response_model=DatasetResponse)
def get_dataset(name: str, state: ApiState = Depends(get_state)):
    return _response(_status(_check_name(name), state), state)


@router.get("/{name}/report")
def get_report(name: str, state: ApiState = Depends(get_state)) -> dict[str, Any]:
    """Return the dataset's validation report (validation.json), as written by /validate."""
    status = _status(_check_name(name), state)
    path = Path(status.path) / REPORT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HTTPException(404, f"dataset {name!r} has no validation report; run POST "
                                 f"/api/datasets/{name}/validate first") from None
    except (OSError, ValueError) as err:
        raise HTTPException(500, f"validation report of dataset {name!r} is unreadable: {err}") from None


@router.post("/demo", response_model=DatasetTask, status_code=202)
def make_demo(request: DemoRequest, state: ApiState = Depends(get_state)):
    """Synthesise the demo dataset with espeak-ng in the background; progress on channel dataset:demo."""
    manager = state.datasets
    task = state.dataset_tasks.start(DEMO, "demo", lambda progress: manager.make_demo(
        num_sentences=request.num_sentences, seed=request.seed, overwrite=request.overwrite,
        validate=request.validate_after, progress=progress))
    return task.to_dict()


@router.post("/{name}/download", response_model=DatasetTask, status_code=202)
def download_dataset(name: str, request: DownloadRequest, state: ApiState = Depends(get_state)):
    """Download, verify, extract and validate a catalog dataset in the background (resumable)."""
    _check_name(name)
    if name not in state.datasets.catalog:
        raise HTTPException(404, f"dataset {name!r} is not in the catalog; the catalog has "
                                 f"{', '.join(sorted(state.datasets.catalog))}")
    entry = state.datasets.entry(name)
    if entry.synthetic:
        raise HTTPException(400, f"dataset {name!r} is synthetic and has no download; use POST /api/datasets/demo")
    manager = state.datasets
    task = state.dataset_tasks.start(name, "download", lambda progress: manager.download(
        name, url=request.url, overwrite=request.overwrite, remove_archive=request.remove_archive,
        validate=request.validate_after, progress=progress))
    return task.to_dict()


@router.post("/{name}/import", response_model=DatasetTask, status_code=202)
def import_dataset(name: str, request: ImportRequest, state: ApiState = Depends(get_state)):
    """Import a folder or archive on the server as `name` in the background."""
    _check_name(name)
    if not Path(request.source).expanduser().exists():
        raise HTTPException(404, f"import source not found on the server: {request.source}")
    manager = state.datasets
    task = state.dataset_tasks.start(name, "import", lambda progress: manager.import_(
        name, request.source, mode=request.mode, overwrite=request.overwrite, validate=request.validate_after,
        progress=progress))
    return task.to_dict()


@router.post("/{name}/validate", response_model=DatasetTask, status_code=202)
def validate_dataset(name: str, state: ApiState = Depends(get_state)):
    """Validate a present dataset in the background; its report then shows in GET /api/datasets/{name}."""
    status = _status(_check_name(name), state)
    if not status.present:
        raise HTTPException(409, f"dataset {name!r} is not present at {status.path}; download or import it first")
    manager = state.datasets
    task = state.dataset_tasks.start(name, "validate", lambda progress: manager.validate(
        status.path, progress=progress).path)
    return task.to_dict()
