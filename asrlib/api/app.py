"""The FastAPI application: `create_app()` for tests and embedding, `app` for uvicorn.

    uvicorn asrlib.api.app:app --host 127.0.0.1 --port 58081

Settings come from config.yaml (`api:` and `jobs:` sections; $ASR_CONFIG names another file).
Training runs in separate processes owned by the job manager, so stopping the API leaves them
running. The next start adopts the live ones and marks the dead ones failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from asrlib.api import streaming
from asrlib.api.errors import install_error_handlers
from asrlib.api.events import EventHub, RunEventTailer
from asrlib.api.limits import BodyLimit, BodySizeLimitMiddleware
from asrlib.api.recognizers import RecognizerCache
from asrlib.api.routes import datasets, models, runs, system, transcribe, ws
from asrlib.api.settings import ApiSettings
from asrlib.api.state import ApiState
from asrlib.api.tasks import DatasetTasks
from asrlib.config import checkpoints_dir, config_path, load_settings
from asrlib.datasets.manager import DatasetManager
from asrlib.jobs import JobManager
from asrlib.logs import setup_logging
from asrlib.registry import ModelRegistry

log = logging.getLogger(__name__)

API_PREFIX = "/api"
# Multipart boundaries and part headers around the audio file; the file itself is checked exactly.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def create_app(
    settings: dict[str, Any] | None = None,
    *,
    checkpoints_root: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    job_manager: JobManager | None = None,
    executor: str | None = None,
    stop_runs_on_shutdown: bool = False,
) -> FastAPI:
    """Build the API.

    Args:
        settings: the config.yaml mapping; read from `config_file` (or $ASR_CONFIG) when None.
        checkpoints_root: folder of run folders and `models/`; default `paths.checkpoints`.
        config_file: the config file that training processes read. Pass it together with
            `settings` when those came from a file other than the default.
        job_manager: use this manager instead of starting one at startup (it is not shut down).
        executor: the job manager's executor (`notebook` or `process`), overriding `jobs.executor`.
        stop_runs_on_shutdown: ask active runs to save and stop when the API stops, as the tests
            do. By default they go on, and a restarted API adopts them.
    """
    if settings is None:
        config_file = config_path(config_file)
        settings = load_settings(config_file)
    api_settings = ApiSettings.from_settings(settings)
    root = Path(checkpoints_root or checkpoints_dir(settings)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(root)
    hub = EventHub(history=api_settings.event_history)
    state = ApiState(
        settings=settings, api=api_settings, checkpoints_root=root, registry=registry,
        datasets=DatasetManager(settings), hub=hub,
        recognizers=RecognizerCache(registry, max_models=api_settings.max_loaded_models,
                                    device=api_settings.inference_device),
        dataset_tasks=DatasetTasks(hub),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        owned = job_manager is None
        jobs = job_manager or JobManager(settings, checkpoints_root=root, executor=executor,
                                         config_path=str(config_file) if config_file else None)
        failed = jobs.recover()
        if failed:
            log.warning("marked %d run(s) failed whose process had ended: %s", len(failed), ", ".join(failed))
        state.jobs = jobs
        state.tailer = RunEventTailer(jobs, hub, api_settings.event_poll_s)
        tail_task = asyncio.create_task(state.tailer.run(), name="run-event-tailer")
        log.info("API ready: checkpoints in %s, %d active run(s)", root, len(jobs.active_run_ids()))
        try:
            yield
        finally:
            tail_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tail_task
            state.jobs = None
            if owned:
                await asyncio.to_thread(jobs.shutdown, stop_runs=stop_runs_on_shutdown)
            log.info("API stopped")

    app = FastAPI(
        title="asrlib workbench API",
        # OpenAPI has no WebSocket routes, so /docs shows the /ws protocol in the description.
        description="Train, manage and use speech-recognition models.\n\n## WebSocket /ws\n\n" + (ws.__doc__ or ""),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.api = state
    install_error_handlers(app)
    for module in (system, runs, models, datasets, transcribe):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(ws.router)
    app.include_router(streaming.router)  # /ws/asr; its service is built lazily from app.state.api
    upload_limit = BodyLimit(api_settings.upload_max_bytes + MULTIPART_OVERHEAD_BYTES,
                             f"api.upload_max_bytes = {api_settings.upload_max_bytes} plus "
                             f"{MULTIPART_OVERHEAD_BYTES} for the form around the file")
    app.add_middleware(
        BodySizeLimitMiddleware, limits={f"{API_PREFIX}/transcribe": upload_limit},
        default=BodyLimit(api_settings.json_max_bytes, f"api.json_max_bytes = {api_settings.json_max_bytes}"),
    )
    app.add_middleware(CORSMiddleware, allow_origins=list(api_settings.cors_origins), allow_credentials=False,
                       allow_methods=["*"], allow_headers=["*"])
    return app


def __getattr__(name: str) -> Any:
    """Build the module-level `app` on first access, so importing create_app reads no config."""
    if name == "app":
        setup_logging()
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
