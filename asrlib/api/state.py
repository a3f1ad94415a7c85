"""The services one API process holds, shared by the routes through `request.app.state.api`."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request

from asrlib.api.events import EventHub, RunEventTailer
from asrlib.api.recognizers import RecognizerCache
from asrlib.api.settings import ApiSettings
from asrlib.api.tasks import DatasetTasks
from asrlib.datasets.manager import DatasetManager
from asrlib.jobs import JobManager
from asrlib.registry import ModelRegistry
from asrlib.training.runs import validate_run_id

CHECKPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.pt$")


@dataclass
class ApiState:
    settings: dict[str, Any]
    api: ApiSettings
    checkpoints_root: Path
    registry: ModelRegistry
    datasets: DatasetManager
    hub: EventHub
    recognizers: RecognizerCache
    dataset_tasks: DatasetTasks
    jobs: JobManager | None = None  # created at startup, so building the app starts no threads
    tailer: RunEventTailer | None = None
    export_locks: dict[str, threading.Lock] = field(default_factory=dict)

    def job_manager(self) -> JobManager:
        if self.jobs is None:
            raise HTTPException(503, "the job manager is not running; the API is starting or shutting down")
        return self.jobs

    def run_dir(self, run_id: str) -> Path:
        """Return the folder of an existing run; raise 400 for an invalid id, 404 for an unknown one."""
        check_run_id(run_id)
        self.job_manager().get(run_id)  # NotFound (404) when there is no such run
        return self.checkpoints_root / run_id


def get_state(request: Request) -> ApiState:
    return request.app.state.api


def check_run_id(run_id: str) -> str:
    try:
        return validate_run_id(run_id)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None


def check_checkpoint_name(name: str) -> str:
    if not CHECKPOINT_NAME.match(name) or ".." in name:
        raise HTTPException(400, f"invalid checkpoint name {name!r}; give a file name such as ckpt-0001000.pt")
    return name
