"""GET /api/health."""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

import torch
from fastapi import APIRouter, Depends

from asrlib.api.schemas import HealthResponse
from asrlib.api.state import ApiState, get_state

router = APIRouter(tags=["system"])


def _version() -> str:
    try:
        return version("asrlib")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health", response_model=HealthResponse)
def health(state: ApiState = Depends(get_state)) -> HealthResponse:
    """Report that the service is up, with its active runs and loaded models."""
    return HealthResponse(
        version=_version(), time=time.time(), cuda_available=torch.cuda.is_available(),
        checkpoints_root=str(state.checkpoints_root), active_runs=state.job_manager().active_run_ids(),
        loaded_models=sorted(state.recognizers.names()),
    )
