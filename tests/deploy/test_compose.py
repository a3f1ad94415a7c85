"""The compose files, Dockerfile, environment.yml, pyproject.toml and config.yaml agree.

The compose configuration is checked by Compose itself (`docker compose config`, or Debian's
docker-compose 1.29 where the v2 plugin is missing), which validates the files against the
Compose schema and prints the merged result. No Docker engine is needed for that.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import clean_env

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_FILE = REPO_ROOT / "docker-compose.gpu.yml"
API_PORT = 58081
DASHBOARD_PORT = 58080
API_CONTAINER_PORT = 8000
VOILA_CONTAINER_PORT = 8866


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("neither the Docker Compose v2 plugin nor docker-compose is installed "
                    "(.ci/run installs Debian's docker-compose)")
    return command


def compose_config(compose: list[str], files: list[Path], **env: str) -> dict[str, Any]:
    args = [*compose]
    for file in files:
        args += ["-f", str(file)]
    result = subprocess.run([*args, "config"], cwd=REPO_ROOT, env=clean_env(**env), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)} config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each port entry, in v1 or v2 output form."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # v2: long syntax
            ports.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])))
        else:  # 1.29: "127.0.0.1:58081:8000/tcp"
            host_ip, published, target = str(entry).split("/")[0].rsplit(":", 2)
            ports.append((host_ip, int(published), int(target)))
    return ports


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path to host path of each bind mount, in v1 or v2 output form."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mounts[entry["target"]] = Path(entry["source"])
        else:
            source, target = str(entry).split(":")[:2]
            mounts[target] = Path(source)
    return mounts


def test_merged_gpu_config_is_valid(compose: list[str]) -> None:
    config = compose_config(compose, [COMPOSE_FILE, GPU_FILE])
    services = config["services"]
    assert set(services) == {"asr-api", "dashboard"}

    api = services["asr-api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert api["image"] == "asr-workbench:gpu"
    assert services["dashboard"]["image"] == "asr-workbench:gpu"
    assert "deploy" not in services["dashboard"]


def test_api_service(compose: list[str]) -> None:
    api = compose_config(compose, [COMPOSE_FILE])["services"]["asr-api"]
    assert published_ports(api) == [("127.0.0.1", API_PORT, API_CONTAINER_PORT)]
    assert bind_mounts(api) == {"/app/data": REPO_ROOT / "data", "/app/checkpoints": REPO_ROOT / "checkpoints"}
    environment = api["environment"]
    assert environment["ASR_DATA_DIR"] == "/app/data"
    assert environment["ASR_CHECKPOINTS_DIR"] == "/app/checkpoints"
    assert environment["ASR_LJSPEECH_PATH"] == "/app/data/ljspeech"
    assert f"--port {API_CONTAINER_PORT}" in " ".join(api["command"])
    assert "asrlib.api.app:app" in api["command"]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{API_CONTAINER_PORT}/api/health" in probe
    assert api["image"] == "asr-workbench:latest"


def test_dashboard_service(compose: list[str]) -> None:
    dashboard = compose_config(compose, [COMPOSE_FILE])["services"]["dashboard"]
    assert published_ports(dashboard) == [("127.0.0.1", DASHBOARD_PORT, VOILA_CONTAINER_PORT)]
    assert dashboard["environment"]["BACKEND_HOST"] == "asr-api"
    assert dashboard["environment"]["BACKEND_PORT"] == str(API_CONTAINER_PORT)
    assert dashboard["depends_on"]["asr-api"]["condition"] == "service_healthy"
    command = dashboard["command"]
    assert command[:2] == ["voila", "app.ipynb"]
    assert f"--port={VOILA_CONTAINER_PORT}" in command
    assert dashboard["working_dir"] == "/app/dashboards"
    assert (REPO_ROOT / "dashboards").is_dir()


def test_environment_overrides(compose: list[str]) -> None:
    config = compose_config(
        compose, [COMPOSE_FILE], ASR_API_PORT="18081", ASR_DASHBOARD_PORT="18080", ASR_PUBLISH_HOST="0.0.0.0",
        HTTP_PROXY="http://proxy.example:3128", HTTPS_PROXY="http://proxy.example:3128", NO_PROXY="intranet",
    )
    api, dashboard = config["services"]["asr-api"], config["services"]["dashboard"]
    assert published_ports(api) == [("0.0.0.0", 18081, API_CONTAINER_PORT)]
    assert published_ports(dashboard) == [("0.0.0.0", 18080, VOILA_CONTAINER_PORT)]
    for service in (api, dashboard):
        environment = service["environment"]
        assert environment["HTTP_PROXY"] == "http://proxy.example:3128"
        assert environment["https_proxy"] == "http://proxy.example:3128"
        assert environment["NO_PROXY"].split(",") == ["asr-api", "dashboard", "localhost", "127.0.0.1", "intranet"]
        assert service["build"]["args"]["HTTP_PROXY"] == "http://proxy.example:3128"


def test_no_proxy_without_environment(compose: list[str]) -> None:
    api = compose_config(compose, [COMPOSE_FILE])["services"]["asr-api"]
    assert api["environment"]["HTTP_PROXY"] == ""
    assert "asr-api" in api["environment"]["no_proxy"].split(",")


# --- agreement between the files -----------------------------------------------------------------


def _dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def test_dockerfile_matches_compose() -> None:
    dockerfile = _dockerfile()
    compose_text = yaml.safe_load(COMPOSE_FILE.read_text())
    api = compose_text["services"]["asr-api"]

    assert re.search(r"^ARG BASE=python:3\.11-", dockerfile, re.M)
    assert re.search(rf"^EXPOSE {API_CONTAINER_PORT} {VOILA_CONTAINER_PORT}$", dockerfile, re.M)
    assert 'VOLUME ["/app/data", "/app/checkpoints"]' in dockerfile
    assert re.search(r"^USER asr$", dockerfile, re.M), "the services must not run as root"
    for name in ("ASR_DATA_DIR", "ASR_CHECKPOINTS_DIR", "ASR_LJSPEECH_PATH"):
        match = re.search(rf"{name}=(\S+)", dockerfile)
        assert match, f"the Dockerfile sets no {name}"
        assert match.group(1) == api["environment"][name]
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and yaml.safe_load(cmd.group(1)) == api["command"]
    assert {"BASE", "TORCH_INDEX_URL", "ASR_UID", "ASR_GID"} <= set(api["build"]["args"])


def test_config_yaml_matches_compose() -> None:
    settings = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    if "api" in settings:
        assert settings["api"]["port"] == API_PORT
        origins = settings["api"].get("cors_origins", [])
        assert f"http://localhost:{DASHBOARD_PORT}" in origins
    ljspeech = settings["datasets"]["ljspeech"]
    assert ljspeech["path_env"] == "ASR_LJSPEECH_PATH"
    # data/ljspeech on the host is /app/data/ljspeech in the container.
    assert ljspeech["path"] == f"{settings['paths']['data']}/ljspeech"
    assert settings["paths"]["checkpoints"] == "checkpoints"


def test_run_local_defaults_match_compose() -> None:
    script = (REPO_ROOT / "run-local.sh").read_text()
    assert f"DEFAULT_API_PORT={API_PORT}" in script
    assert f"DEFAULT_DASHBOARD_PORT={DASHBOARD_PORT}" in script


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _environment() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def test_environment_yml_python_matches_pyproject() -> None:
    conda = [d for d in _environment()["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda
    assert _pyproject()["project"]["requires-python"] == ">=3.11,<3.12"
    assert "pip" in conda


def test_environment_yml_packages_match_pyproject() -> None:
    project = _pyproject()["project"]
    expected = {str(Requirement(r)) for r in project["dependencies"]}
    expected |= {str(Requirement(r)) for r in project["optional-dependencies"]["dev"]}
    pip_section = next(d["pip"] for d in _environment()["dependencies"] if isinstance(d, dict))
    listed = {str(Requirement(r)) for r in pip_section if not r.startswith("-")}
    missing = sorted(expected - listed)
    assert not missing, f"environment.yml lacks these pyproject.toml requirements: {missing}"
    extra = sorted(listed - expected)
    assert not extra, f"environment.yml lists requirements that pyproject.toml does not: {extra}"
    assert "--editable ." in pip_section


def test_torch_pins() -> None:
    requirements = {Requirement(r).name: str(Requirement(r).specifier) for r in _pyproject()["project"]["dependencies"]}
    assert requirements["torch"] == "==2.11.*"
    assert requirements["torchaudio"] == "==2.11.0"


def test_dockerignore_keeps_build_inputs() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    # The image installs from these; leaving one out of the build context breaks `pip install -e .`.
    for needed in ("pyproject.toml", "README.md", "asrlib", "config.yaml", "notebooks", "dashboards"):
        assert needed not in ignored
    for heavy in (".venv", "data", "checkpoints", ".git"):
        assert heavy in ignored
