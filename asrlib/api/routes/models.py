"""The model registry: /api/models/..., and the models loaded for inference: /api/inference/models."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import FileResponse

from asrlib.api.schemas import ExportRequest, ExportResponse, LoadedModel, ModelResponse, RegisterRequest, RenameRequest
from asrlib.api.state import ApiState, get_state
from asrlib.export import FILE_NAMES
from asrlib.registry import SORT_KEYS, ModelConflict, ModelInfo, validate_model_name

router = APIRouter(tags=["models"])


def _response(info: ModelInfo, state: ApiState) -> ModelResponse:
    return ModelResponse(**info.to_dict(), loaded=info.name in state.recognizers.names())


def _timestamp(value: str | None, key: str) -> float | None:
    """Accept Unix seconds or an ISO 8601 time (a time without zone is taken as UTC)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(
            400, f"invalid {key} {value!r}; use Unix seconds or ISO 8601 such as 2025-01-31T12:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@router.get("/models", response_model=list[ModelResponse])
def list_models(
    state: ApiState = Depends(get_state),
    model_type: str | None = Query(None, alias="type", description="conformer or realtime"),
    dataset: str | None = None,
    status: str | None = Query(None, description="the run's state at registration: completed or stopped"),
    name_contains: str | None = Query(None, description="case-insensitive part of the name"),
    wer_min: float | None = None,
    wer_max: float | None = None,
    created_after: str | None = Query(None, description="Unix seconds or ISO 8601"),
    created_before: str | None = Query(None, description="Unix seconds or ISO 8601"),
    sort: str = Query("created", description=" or ".join(SORT_KEYS)),
    descending: bool = False,
):
    """List registered models with optional filters; a WER filter leaves out models without a WER."""
    models = state.registry.list(
        type=model_type, dataset=dataset, status=status, name_contains=name_contains, wer_min=wer_min,
        wer_max=wer_max, created_after=_timestamp(created_after, "created_after"),
        created_before=_timestamp(created_before, "created_before"), sort=sort, descending=descending,
    )
    return [_response(m, state) for m in models]


@router.post("/models", response_model=ModelResponse, status_code=201)
def register_model(request: RegisterRequest, state: ApiState = Depends(get_state)):
    """Register a checkpoint of a completed or stopped run (default: its best, else its final one)."""
    return _response(state.registry.register(request.run_id, request.checkpoint, request.name), state)


@router.get("/models/{name}", response_model=ModelResponse)
def get_model(name: str, state: ApiState = Depends(get_state)):
    return _response(state.registry.get(name), state)


@router.patch("/models/{name}", response_model=ModelResponse)
def rename_model(name: str, request: RenameRequest, state: ApiState = Depends(get_state)):
    """Rename a model; a loaded model stays loaded under the new name."""
    info = state.registry.rename(name, request.name)
    state.recognizers.rename(name, request.name)
    return _response(info, state)


@router.delete("/models/{name}", status_code=204)
def delete_model(name: str, state: ApiState = Depends(get_state)) -> Response:
    """Delete a model and its exports; 409 while it is loaded for inference (unload it first)."""
    in_use: set[str | Path] = set(state.recognizers.names()) | set(state.job_manager().checkpoints_in_use())
    state.registry.delete(name, in_use=in_use)
    return Response(status_code=204)


@router.post("/models/{name}/export", response_model=ExportResponse)
def export_model(name: str, request: ExportRequest, state: ApiState = Depends(get_state)):
    """Export to TorchScript or ONNX and check the export against PyTorch; ONNX takes 10-30 s on a CPU."""
    validate_model_name(name)
    lock = state.export_locks.setdefault(name, threading.Lock())
    if not lock.acquire(blocking=False):
        raise ModelConflict(f"an export of model {name!r} is running; wait for it to finish")
    try:
        path = state.registry.export(name, request.format)
    finally:
        lock.release()
    export = state.registry.get(name).exports[request.format]
    return ExportResponse(name=name, format=request.format, path=str(path), size=export["size"],
                          max_abs_difference=export.get("max_abs_difference"))


@router.get("/models/{name}/exports/{export_format}", response_class=FileResponse)
def download_export(name: str, export_format: str, state: ApiState = Depends(get_state)):
    """Download an exported file (torchscript or onnx); the settings to use it are in GET /api/models/{name}."""
    if export_format not in FILE_NAMES:
        raise HTTPException(400, f"invalid export format {export_format!r}; use one of {', '.join(FILE_NAMES)}")
    state.registry.get(name)
    path = state.registry.export_dir(name) / FILE_NAMES[export_format]
    if not path.is_file():
        raise HTTPException(
            404, f"model {name!r} has no {export_format} export; create it with POST /api/models/{name}/export"
        )
    return FileResponse(path, filename=f"{name}.{path.name.split('.', 1)[1]}")


@router.get("/inference/models", response_model=list[LoadedModel])
def loaded_models(state: ApiState = Depends(get_state)):
    """List the models loaded for /api/transcribe, least recently used first."""
    return state.recognizers.loaded()


@router.delete("/inference/models/{name}", status_code=204)
def unload_model(name: str, state: ApiState = Depends(get_state)) -> Response:
    """Unload a model from memory, so that it can be deleted; 409 while it is transcribing."""
    validate_model_name(name)
    state.recognizers.unload(name)
    return Response(status_code=204)

