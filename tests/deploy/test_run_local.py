"""./run-local.sh without Docker: both services from .venv, the port checks and the runner choice."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import (
    RUN_LOCAL,
    clean_env,
    default_sigint,
    free_port,
    http_get,
    kill_group,
    port_accepts,
    process_alive,
    processes_mentioning,
    wait_for,
    wait_for_output,
)

API_APP = REPO_ROOT / "asrlib" / "api" / "app.py"
DASHBOARD_NOTEBOOK = REPO_ROOT / "dashboards" / "app.ipynb"
START_TIMEOUT_S = 240  # importing torch and the API on two busy CPU cores takes up to a minute


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    # A process group of its own, so a failed test can kill everything the script started.
    return subprocess.Popen([str(RUN_LOCAL), *args], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, process_group=0,
                            preexec_fn=default_sigint)


@pytest.fixture
def holder() -> Iterator[tuple[subprocess.Popen, int]]:
    """A separate process listening on a free 127.0.0.1 port."""
    port = free_port()
    code = ("import socket, sys, time\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('127.0.0.1', {port})); s.listen(); print('ready', flush=True); time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    yield process, port
    process.kill()
    process.wait()


@pytest.mark.skipif(not API_APP.exists(), reason="asrlib/api/app.py does not exist yet")
@pytest.mark.skipif(not DASHBOARD_NOTEBOOK.exists(), reason="dashboards/app.ipynb does not exist yet")
def test_start_serves_both_and_ctrl_c_stops(tmp_path: Path) -> None:
    api_port, dashboard_port = free_port(), free_port()
    log = tmp_path / "run-local.log"
    env = clean_env(ASR_RUNNER="venv", ASR_SKIP_SETUP="1", ASR_API_PORT=str(api_port),
                    ASR_DASHBOARD_PORT=str(dashboard_port), ASR_DATA_DIR=str(tmp_path / "data"),
                    ASR_CHECKPOINTS_DIR=str(tmp_path / "checkpoints"), ASR_START_TIMEOUT=str(START_TIMEOUT_S))
    process = _start(env, log)
    try:
        output = wait_for_output(process, log, "press Ctrl-C to stop both", START_TIMEOUT_S + 30)
        assert f"API:       http://127.0.0.1:{api_port}/api" in output
        assert f"dashboard: http://127.0.0.1:{dashboard_port}/" in output
        pids = {name: int(pid) for name, pid in re.findall(r"started the (API|dashboard) \(pid (\d+)\)", output)}
        assert set(pids) == {"API", "dashboard"}

        status, body = http_get(f"http://127.0.0.1:{api_port}/api/health")
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "ok"
        assert Path(health["checkpoints_root"]) == (tmp_path / "checkpoints").resolve()

        # Voila executes the notebook for the page, so the first load takes a while.
        status, page = http_get(f"http://127.0.0.1:{dashboard_port}/", timeout=180)
        assert status == 200
        assert b"<html" in page.lower()
        output = log.read_text()
        assert "Kernel started" in output  # Voila ran the notebook in a kernel for the page
        kernel_dirs = re.findall(r"Storing connection files in (\S+?)\.?$", output, re.M)
        assert kernel_dirs

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        output = log.read_text()
        assert "stopping the API and the dashboard" in output
        for name, pid in pids.items():
            assert not process_alive(pid), f"the {name} (pid {pid}) still runs after Ctrl-C"
        assert not port_accepts(api_port)
        assert not port_accepts(dashboard_port)
        for folder in kernel_dirs:
            assert processes_mentioning(folder) == [], f"a dashboard kernel of {folder} outlived the dashboard"
    finally:
        kill_group(process)


def test_taken_api_port_names_holder(tmp_path: Path, holder: tuple[subprocess.Popen, int]) -> None:
    process, port = holder
    log = tmp_path / "run-local.log"
    env = clean_env(ASR_RUNNER="venv", ASR_SKIP_SETUP="1", ASR_API_PORT=str(port), ASR_DASHBOARD_PORT=str(free_port()))
    run = _start(env, log)
    assert run.wait(timeout=60) == 1
    output = log.read_text()
    assert f"port {port} for the API is already in use by pid {process.pid}" in output
    assert "python" in output  # the holder's command line
    assert "ASR_API_PORT=PORT" in output


def test_taken_dashboard_port_names_holder(tmp_path: Path, holder: tuple[subprocess.Popen, int]) -> None:
    process, port = holder
    log = tmp_path / "run-local.log"
    env = clean_env(ASR_RUNNER="venv", ASR_SKIP_SETUP="1", ASR_API_PORT=str(free_port()), ASR_DASHBOARD_PORT=str(port))
    assert _start(env, log).wait(timeout=60) == 1
    output = log.read_text()
    assert f"port {port} for the dashboard is already in use by pid {process.pid}" in output
    assert "ASR_DASHBOARD_PORT=PORT" in output


def _bash_function(call: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one function of run-local.sh: sourcing it defines the functions and runs nothing."""
    return subprocess.run(["bash", "-c", f'source "$0"; {call}', str(RUN_LOCAL)], env=env or clean_env(),
                          capture_output=True, text=True, timeout=60)


def test_proc_fallback_finds_holder(holder: tuple[subprocess.Popen, int]) -> None:
    process, port = holder
    result = _bash_function(f"proc_listener_pids {port}")
    assert result.returncode == 0
    assert result.stdout.split() == [str(process.pid)]
    result = _bash_function(f"port_listener_pids {port}")
    assert result.stdout.split() == [str(process.pid)]


def test_free_port_has_no_listener() -> None:
    port = free_port()
    assert _bash_function(f"port_in_use {port}").returncode == 1
    assert _bash_function(f"proc_listener_pids {port}").returncode == 1


def test_invalid_port_rejected(tmp_path: Path) -> None:
    result = subprocess.run([str(RUN_LOCAL)], cwd=REPO_ROOT, env=clean_env(ASR_RUNNER="venv", ASR_API_PORT="80a"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "invalid ASR_API_PORT '80a'" in result.stderr


def _fake_docker(folder: Path, engine_responds: bool) -> dict[str, str]:
    """A PATH whose `docker` succeeds for `info` and `compose version` as with an engine, or fails."""
    folder.mkdir()
    status = 0 if engine_responds else 1
    docker = folder / "docker"
    docker.write_text(f"#!/bin/sh\n[ {status} = 0 ] || echo 'Cannot connect to the Docker daemon' >&2\nexit {status}\n")
    docker.chmod(0o755)
    return clean_env(PATH=f"{folder}:/usr/bin:/bin")


def test_runner_without_engine_is_venv(tmp_path: Path) -> None:
    env = _fake_docker(tmp_path / "bin", engine_responds=False)
    result = _bash_function("select_runner", env)
    assert result.stdout.strip() == "venv"


def test_runner_with_engine_is_docker(tmp_path: Path) -> None:
    env = _fake_docker(tmp_path / "bin", engine_responds=True)
    result = _bash_function("select_runner", env)
    assert result.stdout.strip() == "docker"


def test_forced_docker_without_engine_fails(tmp_path: Path) -> None:
    env = _fake_docker(tmp_path / "bin", engine_responds=False)
    env["ASR_RUNNER"] = "docker"
    result = _bash_function("select_runner", env)
    assert result.returncode == 1
    assert "no Docker engine responds" in result.stderr


def test_docker_only_commands_explain_venv_mode(tmp_path: Path) -> None:
    env = _fake_docker(tmp_path / "bin", engine_responds=False)
    for command in ("logs", "down", "restart", "build"):
        result = subprocess.run([str(RUN_LOCAL), command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1, command
        assert f"'{command}' needs Docker" in result.stderr


def test_help_lists_commands() -> None:
    result = subprocess.run([str(RUN_LOCAL), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for command in ("setup", "test", "build", "logs", "down", "restart", "gpu-check", "remote"):
        assert f"./run-local.sh {command}" in result.stdout
    assert os.access(RUN_LOCAL, os.X_OK)


def test_unknown_command_fails() -> None:
    result = subprocess.run([str(RUN_LOCAL), "deploy"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "unknown command 'deploy'" in result.stderr


def test_port_check_holder_of_other_address(holder: tuple[subprocess.Popen, int]) -> None:
    """A listener on 127.0.0.1 blocks a service that would listen on 0.0.0.0 too, and is reported."""
    process, port = holder
    with socket.socket() as probe:
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", port)) == 0
    result = _bash_function(f"require_free_port {port} API ASR_API_PORT")
    assert result.returncode == 1
    assert f"pid {process.pid}" in result.stderr
    wait_for(lambda: process.poll() is None, 1, "the holder to keep running")



def test_docker_commands_with_fake_engine(tmp_path: Path) -> None:
    """FAKE: no Docker engine runs here, so a stand-in `docker` records the Compose commands.

    Its `compose up -d` starts a static HTTP server that serves /api/health on the API port, in
    place of the asr-api container.
    """
    api_port, dashboard_port = free_port(), free_port()
    site = tmp_path / "site"
    (site / "api").mkdir(parents=True)
    (site / "api" / "health").write_text("{}")
    record, server_pid = tmp_path / "docker-calls.txt", tmp_path / "server.pid"
    folder = tmp_path / "bin"
    folder.mkdir()
    docker = folder / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        f'echo "$* |uid=$ASR_UID" >> "{record}"\n'
        'case "$*" in\n'
        '*" up -d")\n'
        f"  {sys.executable} -m http.server {api_port} --bind 127.0.0.1 --directory {site} >/dev/null 2>&1 &\n"
        f'  echo $! > "{server_pid}" ;;\n'
        f'*" down") kill "$(cat "{server_pid}")"; rm "{server_pid}" ;;\n'
        f'*" ps -q"*) if [ -f "{server_pid}" ]; then echo c0ffee; fi ;;\n'
        "esac\n"
    )
    docker.chmod(0o755)
    env = clean_env(PATH=f"{folder}:/usr/bin:/bin", ASR_API_PORT=str(api_port), ASR_DASHBOARD_PORT=str(dashboard_port))
    compose = f"compose -f {REPO_ROOT}/docker-compose.yml"
    gpu_compose = f"{compose} -f {REPO_ROOT}/docker-compose.gpu.yml"

    def run(*args: str) -> tuple[list[str], str]:
        record.write_text("")
        result = subprocess.run([str(RUN_LOCAL), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return record.read_text().splitlines(), result.stderr

    try:
        calls, output = run("start", "--gpu")
        assert "info |uid=" in calls
        assert f"{gpu_compose} up -d |uid={os.getuid()}" in calls
        assert "one NVIDIA GPU for the API" in output
        assert f"API:       http://127.0.0.1:{api_port}/api" in output
        assert f"dashboard: http://127.0.0.1:{dashboard_port}/" in output

        calls, _ = run("gpu-check", "--gpu")
        assert f"{gpu_compose} exec asr-api python -m asrlib.gpu |uid=" in calls
        calls, _ = run("logs", "-f", "asr-api")
        assert f"{compose} logs -f asr-api |uid=" in calls
        calls, _ = run("down", "--gpu")
        assert f"{gpu_compose} down |uid=" in calls
        calls, _ = run("gpu-check", "--gpu")  # no container runs: a one-off container instead
        assert f"{gpu_compose} run --rm --no-deps asr-api python -m asrlib.gpu |uid=" in calls
        calls, _ = run("build")
        assert f"{compose} build |uid={os.getuid()}" in calls
    finally:
        if server_pid.exists():
            os.kill(int(server_pid.read_text()), signal.SIGTERM)
