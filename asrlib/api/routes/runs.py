"""Training runs and their checkpoints: /api/runs/..."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from asrlib import checkpoints as ckpt
from asrlib.api.schemas import AverageRequest, CheckpointResponse, EventsResponse, ResumeFrom, RunRequest, RunResponse
from asrlib.api.state import ApiState, check_checkpoint_name, check_run_id, get_state
from asrlib.jobs import JobSpec
from asrlib.registry import MODELS_FOLDER
from asrlib.training.runs import STATES, RunPaths, read_status

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("", response_model=list[RunResponse])
def list_runs(state: ApiState = Depends(get_state), run_state: str | None = Query(None, alias="state")):
    """List runs, newest first; `state` keeps only runs in that state."""
    if run_state is not None and run_state not in STATES:
        raise HTTPException(400, f"invalid state {run_state!r}; use one of {', '.join(STATES)}")
    runs = state.job_manager().list()
    return [r.to_dict() for r in runs if run_state is None or r.state == run_state]


@router.post("", response_model=RunResponse, status_code=201)
def start_run(request: RunRequest, state: ApiState = Depends(get_state)):
    """Start (or queue) a training run; the request is validated before the process starts."""
    if request.run_id is not None:
        check_run_id(request.run_id)
        if request.run_id == MODELS_FOLDER:
            raise HTTPException(400, f"run id {MODELS_FOLDER!r} is reserved for the model registry; choose another")
    spec = JobSpec(model_type=request.model_type, dataset=request.dataset, preset=request.preset,
                   overrides=request.overrides, resume_from=_resume_source(request.resume_from, state),
                   run_id=request.run_id)
    info = state.job_manager().start(spec)
    if state.tailer is not None:
        state.tailer.watch(info.run_id)
    return info.to_dict()


def _resume_source(value: ResumeFrom | str | None, state: ApiState) -> str | None:
    """Check a resume source: RUN_ID/NAME inside the checkpoints folder, or an absolute path without '..'."""
    if value is None:
        return None
    if isinstance(value, ResumeFrom):
        relative = f"{check_run_id(value.run_id)}/{check_checkpoint_name(value.checkpoint)}"
    else:
        parts = PurePosixPath(value).parts
        if ".." in parts:
            raise HTTPException(400, f"invalid resume_from {value!r}: '..' is not allowed")
        if PurePosixPath(value).is_absolute():
            relative = None
        elif len(parts) == 2:
            relative = f"{check_run_id(parts[0])}/{check_checkpoint_name(parts[1])}"
        else:
            raise HTTPException(400, f"invalid resume_from {value!r}; use RUN_ID/ckpt-NNNNNNN.pt or an absolute path")
    path = state.checkpoints_root / relative if relative else Path(value)
    if path.is_file() and not ckpt.is_resumable(path):
        raise HTTPException(400, f"{path.name} has no optimizer state (an averaged checkpoint or a registered model); "
                                 "resume from a ckpt-*.pt checkpoint of the run")
    return str(path) if relative else value


@router.get("/{run_id}", response_model=RunResponse)
def get_run(run_id: str, state: ApiState = Depends(get_state)):
    check_run_id(run_id)
    return state.job_manager().get(run_id).to_dict()


@router.post("/{run_id}/stop", response_model=RunResponse)
def stop_run(run_id: str, state: ApiState = Depends(get_state)):
    """Ask a run to stop: it finishes the current step, saves a checkpoint and ends as `stopped`."""
    check_run_id(run_id)
    return state.job_manager().stop(run_id).to_dict()


@router.get("/{run_id}/metrics", response_model=EventsResponse)
def run_metrics(run_id: str, offset: int = Query(0, ge=0, description="byte offset from a previous next_offset"),
                event: str | None = Query(None, description="keep only this event type, e.g. step or eval"),
                state: ApiState = Depends(get_state)):
    """Return the run's metrics.jsonl records from a byte offset."""
    check_run_id(run_id)
    events, next_offset = state.job_manager().read_events(run_id, offset)
    if event is not None:
        events = [e for e in events if e.get("event") == event]
    return EventsResponse(events=events, next_offset=next_offset)


# --------------------------------------------------------------------- checkpoints


def _checkpoint_response(info: ckpt.CheckpointInfo, status: dict, in_use: set[Path]) -> CheckpointResponse:
    best = status.get("best_checkpoint")
    return CheckpointResponse(
        **{k: v for k, v in info.to_dict().items() if k != "path"}, name=info.path.name, path=str(info.path),
        averaged=info.path.match(ckpt.AVERAGE_GLOB), resumable=ckpt.is_resumable(info.path),
        best=best is not None and Path(best).name == info.path.name, in_use=info.path.resolve() in in_use,
    )


@router.get("/{run_id}/checkpoints", response_model=list[CheckpointResponse])
def list_checkpoints(run_id: str, verify: bool = Query(False, description="recompute each file's sha256 (slow)"),
                     state: ApiState = Depends(get_state)):
    """List the run's checkpoints (training ones by step, then averaged ones), valid or not."""
    run_dir = state.run_dir(run_id)
    status = read_status(RunPaths(run_dir)) or {}
    in_use = state.job_manager().checkpoints_in_use()
    return [_checkpoint_response(i, status, in_use) for i in ckpt.list_run_checkpoints(run_dir, verify=verify)]


@router.get("/{run_id}/checkpoints/{checkpoint}", response_model=CheckpointResponse)
def get_checkpoint(run_id: str, checkpoint: str, state: ApiState = Depends(get_state)):
    """Show one checkpoint, with its sha256 verified."""
    path = state.run_dir(run_id) / check_checkpoint_name(checkpoint)
    if not path.is_file():
        raise HTTPException(404, f"checkpoint {checkpoint!r} not found in run {run_id!r}")
    status = read_status(RunPaths(path.parent)) or {}
    return _checkpoint_response(ckpt.read_info(path), status, state.job_manager().checkpoints_in_use())


@router.delete("/{run_id}/checkpoints/{checkpoint}", status_code=204)
def delete_checkpoint(run_id: str, checkpoint: str, state: ApiState = Depends(get_state)) -> Response:
    """Delete a checkpoint; 409 while an active run writes it or resumes from it."""
    path = state.run_dir(run_id) / check_checkpoint_name(checkpoint)
    if not path.is_file():
        raise HTTPException(404, f"checkpoint {checkpoint!r} not found in run {run_id!r}")
    ckpt.delete_checkpoint(path, in_use=state.job_manager().checkpoints_in_use())
    return Response(status_code=204)


@router.post("/{run_id}/checkpoints/average", response_model=CheckpointResponse, status_code=201)
def average_checkpoints(run_id: str, request: AverageRequest, state: ApiState = Depends(get_state)):
    """Average the weights of the newest `last` checkpoints (or the named ones) into avg-*.pt."""
    run_dir = state.run_dir(run_id)
    if request.checkpoints is not None:
        sources = [run_dir / check_checkpoint_name(name) for name in request.checkpoints]
        missing = [p.name for p in sources if not ckpt.read_info(p, verify=False).valid]
        if missing:
            raise HTTPException(404, f"no valid checkpoint {missing[0]!r} in run {run_id!r}")
    else:
        valid = [i.path for i in ckpt.list_checkpoints(run_dir, verify=False) if i.valid]
        if len(valid) < 2:
            raise HTTPException(409, f"run {run_id!r} has {len(valid)} valid checkpoint(s); averaging needs 2")
        sources = valid[-request.last:]
    steps = [ckpt.read_info(p, verify=False).step or 0 for p in sources]
    name = request.name or ckpt.averaged_name(steps)
    if not name.startswith("avg-"):
        raise HTTPException(400, f"invalid name {name!r}; averaged checkpoints are named avg-*.pt")
    out = run_dir / check_checkpoint_name(name)
    if out.exists():
        raise HTTPException(409, f"{name} already exists in run {run_id!r}; choose another name or delete it")
    info = ckpt.average_checkpoints(sources, out, run_id=run_id)
    status = read_status(RunPaths(run_dir)) or {}
    return _checkpoint_response(info, status, set())

