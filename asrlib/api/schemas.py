"""Request and response models of the API; the client parses responses into the same models.

This module imports pydantic only, so `asrlib.client` can use it without FastAPI installed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorResponse(BaseModel):
    detail: Any = Field(description="what failed and what to do; a list of field errors for 422 validation errors")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    time: float = Field(description="server time, Unix seconds")
    cuda_available: bool
    checkpoints_root: str
    active_runs: list[str]
    loaded_models: list[str]


# --------------------------------------------------------------------- runs


class ResumeFrom(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    checkpoint: str = Field(description="file name inside the run folder, e.g. ckpt-0001000.pt")


class RunRequest(BaseModel):
    # protected_namespaces=(): pydantic before 2.10 warns about fields starting with "model_".
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_type: str = Field("conformer", description="conformer or realtime")
    dataset: str | None = Field(None, description="catalog name or folder; default: run_defaults.data.dataset")
    preset: str | None = Field(None, description="size preset of the model type; default: its default_preset")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='config overrides, nested ({"training": {"lr": 0.0005}}) or dotted ({"training.lr": 0.0005})',
    )
    resume_from: ResumeFrom | str | None = Field(
        None,
        description="checkpoint to continue from: {run_id, checkpoint}, RUN_ID/ckpt-NNNNNNN.pt or an absolute path",
    )
    run_id: str | None = Field(None, description="name of the new run folder; default: time, model and preset")


class RunResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    run_id: str
    state: str = Field(description="queued, running, stopping, stopped, completed or failed")
    model_type: str | None = None
    preset: str | None = None
    dataset: str | None = None
    created: float | None = None
    updated: float | None = None
    step: int = 0
    max_steps: int | None = None
    epoch: int | None = None
    error: str | None = None
    parent: str | None = Field(None, description="checkpoint the run resumed from")
    checkpoint: str | None = Field(None, description="newest checkpoint written")
    best_checkpoint: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    pid: int | None = None


class EventsResponse(BaseModel):
    events: list[dict[str, Any]] = Field(description="metrics.jsonl records: started, step, eval, checkpoint, ...")
    next_offset: int = Field(description="byte offset to pass as `offset` to read only newer events")


class CheckpointResponse(BaseModel):
    name: str
    path: str
    run_id: str | None = None
    step: int | None = None
    epoch: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    sha256: str | None = None
    size: int | None = None
    created: float | None = None
    parent: str | None = None
    valid: bool
    problem: str | None = Field(None, description="why the checkpoint is not valid")
    averaged: bool = Field(description="an average of several checkpoints (weights only)")
    resumable: bool = Field(description="contains optimizer state, so a run can resume from it")
    best: bool = Field(description="the run's best checkpoint by validation WER")
    in_use: bool = Field(description="an active run writes it or resumes from it, so it cannot be deleted")


class AverageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    last: int = Field(5, ge=2, description="average the newest N valid training checkpoints")
    checkpoints: list[str] | None = Field(None, min_length=2, description="average these file names instead")
    name: str | None = Field(None, description="output file name avg-*.pt; default: avg-FIRST-LAST-N.pt")


# --------------------------------------------------------------------- models


class ModelResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    path: str
    run_id: str | None = None
    checkpoint: str | None = None
    step: int | None = None
    epoch: int | None = None
    model_type: str | None = None
    preset: str | None = None
    dataset: str | None = None
    run_status: str | None = None
    cer: float | None = None
    wer: float | None = None
    valid_loss: float | None = None
    loss: float | None = None
    parameters: int | None = None
    size: int | None = None
    sha256: str | None = None
    created: float | None = None
    averaged_from: list[str] | None = None
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    exports: dict[str, dict[str, Any]] = Field(default_factory=dict)
    loaded: bool = Field(False, description="loaded for /api/transcribe, so it cannot be deleted")


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    checkpoint: str | None = Field(None, description="file name in the run folder; default: best, else final")
    name: str | None = Field(None, description="model name; default: the run id")


class RenameRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the new model name")


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["torchscript", "onnx"] = "torchscript"


class ExportResponse(BaseModel):
    name: str
    format: str
    path: str
    size: int
    max_abs_difference: float | None = Field(
        None, description="largest difference of the export's log-probabilities from eager PyTorch on a test batch"
    )


class LoadedModel(BaseModel):
    name: str
    device: str
    loaded_at: float
    last_used: float
    busy: int = Field(description="transcriptions running on it now")


# --------------------------------------------------------------------- datasets


class DatasetTask(BaseModel):
    name: str
    operation: str = Field(description="download, import, validate or demo")
    state: str = Field(description="running, completed or failed")
    started: float
    finished: float | None = None
    error: str | None = None
    progress: dict[str, Any] | None = Field(None, description="the latest progress event")
    result: str | None = Field(None, description="the dataset folder once completed")


class DatasetResponse(BaseModel):
    name: str
    path: str
    present: bool
    synthetic: bool
    in_catalog: bool
    description: str = ""
    clips: int | None = None
    hours: float | None = None
    validated_at: str | None = None
    download: dict[str, Any] | None = None
    task: DatasetTask | None = Field(None, description="the latest background operation on this dataset")


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="another URL of the same archive, replacing the catalog's")
    overwrite: bool = False
    remove_archive: bool = False
    validate_after: bool = Field(True, description="validate the dataset once extracted")


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="folder or archive on the server")
    mode: Literal["copy", "symlink"] = "copy"
    overwrite: bool = False
    validate_after: bool = True


class DemoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_sentences: int = Field(300, ge=1, le=10000)
    seed: int = 0
    overwrite: bool = False
    validate_after: bool = True


# --------------------------------------------------------------------- inference


class WordTiming(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionResponse(BaseModel):
    model: str
    source: str = Field(description="the uploaded file's name")
    text: str
    duration: float = Field(description="seconds of audio")
    processing_seconds: float
    rtf: float = Field(description="processing seconds per audio second")
    words: list[WordTiming]
