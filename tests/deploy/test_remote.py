"""`./run-local.sh remote` against a real OpenSSH server on 127.0.0.1.

Each test starts Debian's sshd on a free loopback port with a throw-away host key and user key
(AllowUsers root). The "server" side of the forwarding is a small HTTP server on 127.0.0.1 at the
port being forwarded, so a request through the local port shows that the tunnel reaches it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    RUN_LOCAL,
    clean_env,
    default_sigint,
    free_port,
    http_get,
    kill_group,
    port_accepts,
    processes_mentioning,
    wait_for,
    wait_for_output,
)

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.skipif(not SSHD.exists(), reason="/usr/sbin/sshd is missing (Debian package openssh-server)"),
    pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                       reason="ssh or ssh-keygen is missing (Debian package openssh-client)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test sshd allows logins as root only, so it must run as root"),
]


@dataclass(frozen=True)
class SshServer:
    port: int
    identity: Path
    known_hosts: Path

    def client_args(self) -> list[str]:
        return ["root@127.0.0.1", "--port", str(self.port), "--identity", str(self.identity), "-F", "/dev/null",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes"]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    folder = tmp_path / "sshd"
    folder.mkdir()
    host_key, user_key = folder / "host_ed25519", folder / "user_ed25519"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    (folder / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    port = free_port()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text()}")
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nAllowUsers root\nPermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "AllowTcpForwarding yes\nStrictModes no\n"
    )
    # sshd needs its privilege separation folder; Debian creates it only when the service starts.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_accepts(port) or process.poll() is not None, 30, "sshd to listen", log)
        assert process.poll() is None, f"sshd exited:\n{log.read_text()}"
        yield SshServer(port=port, identity=user_key, known_hosts=known_hosts)
    finally:
        process.terminate()
        process.wait(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"far side {self.server.server_address[1]} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def far_side() -> Iterator[tuple[int, int]]:
    """HTTP servers on 127.0.0.1 standing in for the server's dashboard and API ports."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def _remote(sshd: SshServer, far_side: tuple[int, int], log: Path, *extra: str,
            local: tuple[int, int] | None = None) -> tuple[subprocess.Popen, int, int]:
    dashboard_local, api_local = local or (free_port(), free_port())
    env = clean_env(ASR_DASHBOARD_PORT=str(dashboard_local), ASR_API_PORT=str(api_local),
                    ASR_REMOTE_DASHBOARD_PORT=str(far_side[0]), ASR_REMOTE_API_PORT=str(far_side[1]))
    process = subprocess.Popen([str(RUN_LOCAL), "remote", *sshd.client_args(), *extra], env=env,
                               stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               process_group=0, preexec_fn=default_sigint)
    return process, dashboard_local, api_local


def _control_path(output: str) -> Path:
    match = re.search(r"control socket (\S+)\)", output)
    assert match, f"no control socket in the output:\n{output}"
    return Path(match.group(1))


@pytest.mark.parametrize(("signal_number", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_forwarding_reaches_far_side_and_closes(tmp_path: Path, sshd: SshServer, far_side: tuple[int, int],
                                                signal_number: int, exit_code: int) -> None:
    log = tmp_path / "remote.log"
    process, dashboard_local, api_local = _remote(sshd, far_side, log)
    try:
        output = wait_for_output(process, log, "press Ctrl-C to close the forwarding", START_TIMEOUT_S)
        control = _control_path(output)
        assert control.is_socket()
        assert processes_mentioning(str(control)), "no SSH master process uses the control socket"

        assert http_get(f"http://127.0.0.1:{dashboard_local}/") == (200, f"far side {far_side[0]} /".encode())
        expected = f"far side {far_side[1]} /api/health".encode()
        assert http_get(f"http://127.0.0.1:{api_local}/api/health") == (200, expected)

        process.send_signal(signal_number)
        assert process.wait(timeout=30) == exit_code
        assert "closing the port forwarding and the SSH master connection" in log.read_text()
        assert not control.exists()
        assert not control.parent.exists()
        assert processes_mentioning(str(control)) == [], "the SSH master outlived the command"
        assert not port_accepts(dashboard_local)
        assert not port_accepts(api_local)
    finally:
        kill_group(process)


def test_start_runs_workbench_in_dir(tmp_path: Path, sshd: SshServer, far_side: tuple[int, int]) -> None:
    """--start runs `./run-local.sh start --gpu` in --dir on the server before forwarding.

    The server's repository is a stand-in whose run-local.sh records how it was called, because no
    Docker engine runs here.
    """
    repository = tmp_path / "server repo"
    repository.mkdir()
    record = tmp_path / "called.txt"
    stub = repository / "run-local.sh"
    stub.write_text(f'#!/bin/sh\necho "$(pwd)|$*|$ASR_RUNNER|$ASR_API_PORT|$ASR_DASHBOARD_PORT" > "{record}"\n')
    stub.chmod(0o755)
    log = tmp_path / "remote.log"
    process, dashboard_local, _ = _remote(sshd, far_side, log, "--start", "--dir", str(repository))
    try:
        wait_for_output(process, log, "press Ctrl-C to close the forwarding", START_TIMEOUT_S)
        assert record.read_text().strip() == f"{repository}|start --gpu|docker|{far_side[1]}|{far_side[0]}"
        assert http_get(f"http://127.0.0.1:{dashboard_local}/")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
    finally:
        kill_group(process)


def test_start_failure_closes_master(tmp_path: Path, sshd: SshServer, far_side: tuple[int, int]) -> None:
    log = tmp_path / "remote.log"
    process, _, _ = _remote(sshd, far_side, log, "--start", "--no-gpu", "--dir", str(tmp_path / "missing"))
    try:
        assert process.wait(timeout=START_TIMEOUT_S) == 1
        output = log.read_text()
        assert "starting the workbench on root@127.0.0.1 failed" in output
        control = _control_path(output)
        assert not control.parent.exists()
        assert processes_mentioning(str(control)) == []
    finally:
        kill_group(process)


def test_refused_connection_fails_clearly(tmp_path: Path, far_side: tuple[int, int]) -> None:
    closed = SshServer(port=free_port(), identity=tmp_path / "none", known_hosts=tmp_path / "known_hosts")
    closed.identity.write_text("")
    log = tmp_path / "remote.log"
    process, _, _ = _remote(closed, far_side, log)
    try:
        assert process.wait(timeout=START_TIMEOUT_S) == 1
        output = log.read_text()
        assert "could not connect to root@127.0.0.1 over SSH" in output
        assert "Connection refused" in output
        assert not _control_path(output).parent.exists()
    finally:
        kill_group(process)


def test_taken_local_port_names_holder(tmp_path: Path, sshd: SshServer, far_side: tuple[int, int]) -> None:
    occupied = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    try:
        log = tmp_path / "remote.log"
        process, _, _ = _remote(sshd, far_side, log, local=(occupied.server_address[1], free_port()))
        assert process.wait(timeout=60) == 1
        output = log.read_text()
        port = occupied.server_address[1]
        assert f"port {port} for the forwarded dashboard is already in use by pid {os.getpid()}" in output
        assert "opening an SSH master connection" not in output
    finally:
        occupied.server_close()


def test_remote_help_and_missing_host() -> None:
    result = subprocess.run([str(RUN_LOCAL), "remote", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "--identity FILE" in result.stdout
    result = subprocess.run([str(RUN_LOCAL), "remote"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "remote needs a HOST" in result.stderr
