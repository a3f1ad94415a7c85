"""A typed Python client of the workbench API, for the dashboard and notebooks.

    client = AsrClient("http://127.0.0.1:58081")
    run = client.start_run(preset="tiny", dataset="demo", overrides={"training.max_steps": 200})
    for event in client.events(runs=[run.run_id]):
        print(event)

Responses are parsed into the pydantic models of `asrlib.api.schemas`. An error response raises
ApiError with the HTTP status and the server's `detail`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, TypeAdapter
from websockets.asyncio.client import connect as connect_async
from websockets.sync.client import connect as connect_sync

from asrlib.api.schemas import (
    CheckpointResponse,
    DatasetResponse,
    DatasetTask,
    EventsResponse,
    ExportResponse,
    HealthResponse,
    LoadedModel,
    ModelResponse,
    RunResponse,
    TranscriptionResponse,
)

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error response of the API: `status` is the HTTP status, `detail` the server's explanation."""

    def __init__(self, status: int, detail: Any, *, method: str = "", url: str = "") -> None:
        super().__init__(f"{method} {url} failed with {status}: {detail}".strip())
        self.status = status
        self.detail = detail


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


class AsrClient:
    """Call the API at `base_url` (e.g. http://127.0.0.1:58081); `timeout_s` applies per request.

    Exports and the first transcription with a model take longer than plain requests; their
    methods take their own timeout.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:58081", *, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AsrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise ApiError(response.status_code, _detail(response), method=method, url=path)
        return response

    def _get(self, model: type[M], path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request("GET", path, **kwargs).json())

    def _list(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        return TypeAdapter(list[model]).validate_python(self._request("GET", path, **kwargs).json())

    def _send(self, model: type[M], method: str, path: str, body: dict[str, Any] | None = None,
              **kwargs: Any) -> M:
        payload = None if body is None else {k: v for k, v in body.items() if v is not None}
        return model.model_validate(self._request(method, path, json=payload, **kwargs).json())

    # ----------------------------------------------------------------- system

    def health(self) -> HealthResponse:
        return self._get(HealthResponse, "/api/health")

    # ----------------------------------------------------------------- runs

    def list_runs(self, state: str | None = None) -> list[RunResponse]:
        return self._list(RunResponse, "/api/runs", params={"state": state} if state else None)

    def start_run(self, *, model_type: str = "conformer", dataset: str | None = None, preset: str | None = None,
                  overrides: dict[str, Any] | None = None, resume_from: str | dict[str, str] | None = None,
                  run_id: str | None = None) -> RunResponse:
        """Start a run; `resume_from` is {"run_id", "checkpoint"}, RUN_ID/ckpt-N.pt or an absolute path."""
        return self._send(RunResponse, "POST", "/api/runs", {
            "model_type": model_type, "dataset": dataset, "preset": preset, "overrides": overrides or {},
            "resume_from": resume_from, "run_id": run_id,
        })

    def get_run(self, run_id: str) -> RunResponse:
        return self._get(RunResponse, f"/api/runs/{run_id}")

    def stop_run(self, run_id: str) -> RunResponse:
        return self._send(RunResponse, "POST", f"/api/runs/{run_id}/stop")

    def run_events(self, run_id: str, offset: int = 0, event: str | None = None) -> EventsResponse:
        params: dict[str, Any] = {"offset": offset, **({"event": event} if event else {})}
        return self._get(EventsResponse, f"/api/runs/{run_id}/metrics", params=params)

    def list_checkpoints(self, run_id: str, *, verify: bool = False) -> list[CheckpointResponse]:
        return self._list(CheckpointResponse, f"/api/runs/{run_id}/checkpoints", params={"verify": verify})

    def get_checkpoint(self, run_id: str, name: str) -> CheckpointResponse:
        return self._get(CheckpointResponse, f"/api/runs/{run_id}/checkpoints/{name}")

    def delete_checkpoint(self, run_id: str, name: str) -> None:
        self._request("DELETE", f"/api/runs/{run_id}/checkpoints/{name}")

    def average_checkpoints(self, run_id: str, *, last: int | None = None, checkpoints: list[str] | None = None,
                            name: str | None = None, timeout_s: float = 120.0) -> CheckpointResponse:
        return self._send(CheckpointResponse, "POST", f"/api/runs/{run_id}/checkpoints/average",
                          {"last": last, "checkpoints": checkpoints, "name": name}, timeout=timeout_s)

    # ----------------------------------------------------------------- models

    def list_models(self, *, type: str | None = None, dataset: str | None = None,
                    status: str | None = None, name_contains: str | None = None, wer_min: float | None = None,
                    wer_max: float | None = None, created_after: float | str | None = None,
                    created_before: float | str | None = None, sort: str = "created",
                    descending: bool = False) -> list[ModelResponse]:
        params = {"type": type, "dataset": dataset, "status": status, "name_contains": name_contains,
                  "wer_min": wer_min, "wer_max": wer_max, "created_after": created_after,
                  "created_before": created_before, "sort": sort, "descending": descending}
        return self._list(ModelResponse, "/api/models", params={k: v for k, v in params.items() if v is not None})

    def register_model(self, run_id: str, *, checkpoint: str | None = None, name: str | None = None,
                       timeout_s: float = 120.0) -> ModelResponse:
        return self._send(ModelResponse, "POST", "/api/models",
                          {"run_id": run_id, "checkpoint": checkpoint, "name": name}, timeout=timeout_s)

    def get_model(self, name: str) -> ModelResponse:
        return self._get(ModelResponse, f"/api/models/{name}")

    def rename_model(self, name: str, new_name: str) -> ModelResponse:
        return self._send(ModelResponse, "PATCH", f"/api/models/{name}", {"name": new_name})

    def delete_model(self, name: str) -> None:
        self._request("DELETE", f"/api/models/{name}")

    def export_model(self, name: str, format: str = "torchscript", *,
                     timeout_s: float = 600.0) -> ExportResponse:
        return self._send(ExportResponse, "POST", f"/api/models/{name}/export", {"format": format}, timeout=timeout_s)

    def download_export(self, name: str, format: str, dest: str | os.PathLike[str]) -> Path:
        """Save an exported file to `dest` (a file path); return the path."""
        dest = Path(dest)
        dest.write_bytes(self._request("GET", f"/api/models/{name}/exports/{format}").content)
        return dest

    def loaded_models(self) -> list[LoadedModel]:
        return self._list(LoadedModel, "/api/inference/models")

    def unload_model(self, name: str) -> None:
        self._request("DELETE", f"/api/inference/models/{name}")

    def transcribe(self, audio: str | os.PathLike[str] | bytes, model: str, *, filename: str | None = None,
                   timeout_s: float = 300.0) -> TranscriptionResponse:
        """Upload a file (path or bytes) and transcribe it with a registered model."""
        if isinstance(audio, bytes):
            data, name = audio, filename or "audio"
        else:
            data, name = Path(audio).read_bytes(), filename or Path(audio).name
        response = self._request("POST", "/api/transcribe", files={"file": (name, data)}, data={"model": model},
                                 timeout=timeout_s)
        return TranscriptionResponse.model_validate(response.json())

    # ----------------------------------------------------------------- datasets

    def list_datasets(self) -> list[DatasetResponse]:
        return self._list(DatasetResponse, "/api/datasets")

    def get_dataset(self, name: str) -> DatasetResponse:
        return self._get(DatasetResponse, f"/api/datasets/{name}")

    def dataset_report(self, name: str) -> dict[str, Any] | None:
        """Return the dataset's validation report, or None if it has not been validated yet."""
        try:
            return self._request("GET", f"/api/datasets/{name}/report").json()
        except ApiError as err:
            if err.status == 404 and "no validation report" in str(err.detail):
                return None
            raise

    def download_dataset(self, name: str, *, url: str | None = None, overwrite: bool = False,
                         remove_archive: bool = False, validate_after: bool = True) -> DatasetTask:
        return self._send(DatasetTask, "POST", f"/api/datasets/{name}/download",
                          {"url": url, "overwrite": overwrite, "remove_archive": remove_archive,
                           "validate_after": validate_after})

    def import_dataset(self, name: str, source: str, *, mode: str = "copy", overwrite: bool = False,
                       validate_after: bool = True) -> DatasetTask:
        return self._send(DatasetTask, "POST", f"/api/datasets/{name}/import",
                          {"source": source, "mode": mode, "overwrite": overwrite, "validate_after": validate_after})

    def validate_dataset(self, name: str) -> DatasetTask:
        return self._send(DatasetTask, "POST", f"/api/datasets/{name}/validate")

    def make_demo(self, *, num_sentences: int = 300, seed: int = 0, overwrite: bool = False,
                  validate_after: bool = True) -> DatasetTask:
        return self._send(DatasetTask, "POST", "/api/datasets/demo",
                          {"num_sentences": num_sentences, "seed": seed, "overwrite": overwrite,
                           "validate_after": validate_after})

    # ----------------------------------------------------------------- events

    def events_url(self, *, runs: list[str] | str | None = None, datasets: list[str] | str | None = None,
                   replay: int | None = None) -> str:
        """Build the ws:// URL of /ws for a subscription; None for both runs and datasets means every channel."""
        params: dict[str, Any] = {}
        for key, value in (("runs", runs), ("datasets", datasets)):
            if value is not None:
                params[key] = value if isinstance(value, str) else ",".join(value)
        if replay is not None:
            params["replay"] = replay
        scheme, netloc, path, _, _ = urlsplit(self.base_url)
        return urlunsplit(("wss" if scheme == "https" else "ws", netloc, path + "/ws", urlencode(params), ""))

    def events(self, *, runs: list[str] | str | None = None, datasets: list[str] | str | None = None,
               replay: int | None = None, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield events from /ws (blocking), starting with the `subscribed` message.

        `timeout_s` bounds the wait for each message (TimeoutError past it); None waits forever.
        Closing the generator closes the connection. In a Jupyter kernel use `aevents`.
        """
        with connect_sync(self.events_url(runs=runs, datasets=datasets, replay=replay)) as socket:
            while True:
                yield json.loads(socket.recv(timeout=timeout_s))

    async def aevents(self, *, runs: list[str] | str | None = None, datasets: list[str] | str | None = None,
                      replay: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Async variant of `events`, for code that runs in an event loop (Jupyter, the dashboard)."""
        async with connect_async(self.events_url(runs=runs, datasets=datasets, replay=replay)) as socket:
            async for text in socket:
                yield json.loads(text)
