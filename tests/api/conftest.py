"""A real uvicorn server on 127.0.0.1 with a temporary config, data folder and checkpoints folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI

from asrlib.api.app import create_app
from asrlib.client import AsrClient
from tests.conftest import REPO_ROOT
from tests.servers import serve_app

UPLOAD_MAX_BYTES = 1 << 20  # small, so that the 413 tests send a few MiB only
PATH_VARIABLES = ("ASR_CONFIG", "ASR_DATA_DIR", "ASR_CHECKPOINTS_DIR", "ASR_LJSPEECH_PATH", "ASR_DEMO_PATH")


@dataclass(frozen=True)
class ApiServer:
    base_url: str
    app: FastAPI
    checkpoints: Path
    data: Path
    config_file: Path

    @property
    def state(self):
        return self.app.state.api


def _write_config(folder: Path) -> Path:
    settings = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))
    settings["paths"] = {"data": str(folder / "data"), "checkpoints": str(folder / "checkpoints")}
    for entry in settings["datasets"].values():
        entry["path"] = str(folder / "data" / Path(entry["path"]).name)
    settings["api"] = {**settings.get("api", {}), "upload_max_bytes": UPLOAD_MAX_BYTES, "event_poll_s": 0.1}
    # The process executor starts a run in a few seconds; papermill's kernel start is tested elsewhere.
    settings["jobs"] = {"max_concurrent_runs": 1, "on_limit": "reject", "executor": "process"}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    folder = tmp_path_factory.mktemp("api")
    (folder / "data").mkdir()
    config_file = _write_config(folder)
    with pytest.MonkeyPatch.context() as patch:
        for name in PATH_VARIABLES:
            patch.delenv(name, raising=False)
        settings = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        app = create_app(settings, config_file=config_file, stop_runs_on_shutdown=True)
        with serve_app(app) as port:
            yield ApiServer(f"http://127.0.0.1:{port}", app, folder / "checkpoints", folder / "data", config_file)


@pytest.fixture
def client(api_server: ApiServer) -> Iterator[AsrClient]:
    with AsrClient(api_server.base_url, timeout_s=60) as api:
        yield api


@pytest.fixture(scope="session")
def served_run(api_server: ApiServer, overfit_run) -> str:
    """The trained `overfit` run, copied into the server's checkpoints folder as run `served-overfit`."""
    run_dir, _ = overfit_run
    run_id = "served-overfit"
    # Hard links: the tests add and delete files in the copy, never change the originals' bytes.
    shutil.copytree(run_dir, api_server.checkpoints / run_id, copy_function=_link_or_copy)
    return run_id


def _link_or_copy(source: str, dest: str) -> None:
    try:
        Path(dest).hardlink_to(source)
    except OSError:
        shutil.copy2(source, dest)
