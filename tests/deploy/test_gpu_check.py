"""`asr gpu-check` (asrlib.gpu) and check_nvidia_runtime.sh.

The machines that run these tests have no GPU. The no-GPU path runs for real. The bf16 check
runs for real on the CPU, which computes bf16 products too. The report for a visible GPU is
tested with torch.cuda's device queries replaced by fakes, and check_nvidia_runtime.sh's success
path with stand-in nvidia-smi, toolkit and docker commands on PATH; both are marked below.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from asrlib import gpu
from tests.conftest import REPO_ROOT

CHECK_SCRIPT = REPO_ROOT / "check_nvidia_runtime.sh"


def _run_gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU, so the result is the same everywhere
    return subprocess.run([sys.executable, "-m", "asrlib.gpu", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)


def test_no_gpu_message_and_exit_code() -> None:
    result = _run_gpu_check()
    assert result.returncode == gpu.EXIT_NO_GPU == 3
    assert "error: no CUDA GPU is visible to PyTorch" in result.stderr
    assert "CUDA_VISIBLE_DEVICES=''" in result.stderr
    assert f"PyTorch {torch.__version__}" in result.stderr
    assert result.stdout == ""


def test_no_gpu_json() -> None:
    result = _run_gpu_check("--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["exit_code"] == 3
    assert report["devices"] == []
    assert report["cuda_version"] == torch.version.cuda
    assert "no CUDA GPU is visible" in report["problem"]


def test_asr_command_has_gpu_check() -> None:
    from asrlib.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    if "gpu-check" not in commands:
        pytest.skip("asrlib/cli.py does not add `asr gpu-check` yet (asrlib.gpu.add_gpu_parser)")
    args = parser.parse_args(["gpu-check", "--size", "64", "--json"])
    assert args.func is gpu._gpu_check
    assert args.size == 64


def test_bf16_matmul_on_cpu_passes() -> None:
    check = gpu.check_bf16_matmul(torch.device("cpu"), size=128)
    assert check.passed
    # bf16 keeps 8 significant bits: the error is well above fp32 rounding and well under the limit.
    assert 1e-4 < check.relative_error < gpu.DEFAULT_TOLERANCE
    assert check.bf16_tflops > 0


def test_bf16_matmul_fails_past_tolerance() -> None:
    check = gpu.check_bf16_matmul(torch.device("cpu"), size=64, tolerance=1e-6)
    assert not check.passed


def test_bf16_matmul_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        gpu.check_bf16_matmul(torch.device("cpu"), size=0)


@pytest.mark.parametrize(("number", "text"), [(91900, "9.19.0"), (90100, "9.1.0"), (8906, "8.9.6")])
def test_cudnn_version_text(monkeypatch: pytest.MonkeyPatch, number: int, text: str) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: number)
    assert gpu.cudnn_version_text() == text


@pytest.fixture
def fake_h200(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE: torch.cuda reports one H200; the matrix check runs on the CPU in its place."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(major=9, minor=0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (100 * 2**30, 140 * 2**30))
    monkeypatch.setattr(gpu, "bf16_supported", lambda index: True)
    monkeypatch.setattr(gpu, "cuda_device", lambda index: torch.device("cpu"))
    monkeypatch.setattr(gpu, "nvidia_driver_version", lambda: "580.65.06")


def test_gpu_report_with_fake_device(fake_h200: None) -> None:
    report = gpu.run_gpu_check(size=64)
    assert report.exit_code == gpu.EXIT_OK
    text = gpu.format_report(report)
    assert "NVIDIA driver 580.65.06" in text
    assert "cuda:0  NVIDIA H200  compute capability 9.0  memory 100.0 GiB free of 140.0 GiB" in text
    assert "bf16 matmul 64x64: relative error" in text
    assert text.rstrip().endswith(": ok")


def test_gpu_report_failed_check(fake_h200: None) -> None:
    report = gpu.run_gpu_check(size=64, tolerance=1e-6)
    assert report.exit_code == gpu.EXIT_CHECK_FAILED
    assert gpu.format_report(report).rstrip().endswith(": FAILED")


def test_gpu_report_cuda_error(fake_h200: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*args: object) -> None:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(gpu, "check_bf16_matmul", out_of_memory)
    report = gpu.run_gpu_check(size=64)
    assert report.exit_code == gpu.EXIT_CHECK_FAILED
    assert "FAILED: bf16 matrix product failed: CUDA error: out of memory" in gpu.format_report(report)


def test_gpu_check_rejects_unknown_device(fake_h200: None) -> None:
    with pytest.raises(ValueError, match="invalid --device 2"):
        gpu.run_gpu_check(devices=[2], size=64)


# --- check_nvidia_runtime.sh -----------------------------------------------------------------------


def _tool_folder(folder: Path, fakes: dict[str, str]) -> dict[str, str]:
    """A PATH with the real tools the script uses and the given stand-in scripts, nothing else."""
    folder.mkdir()
    for tool in ("sed", "grep", "head", "timeout"):
        real = shutil.which(tool)
        assert real, f"{tool} is missing"
        (folder / tool).symlink_to(real)
    for name, body in fakes.items():
        path = folder / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    return {"PATH": str(folder), "HOME": os.environ.get("HOME", "/root"),
            "DOCKER_DAEMON_JSON": str(folder / "daemon.json")}


def _run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(CHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_check_script_reports_every_missing_piece(tmp_path: Path) -> None:
    env = _tool_folder(tmp_path / "bin", {})
    result = _run_check(env)
    assert result.returncode == 1
    output = result.stdout
    assert "MISSING: nvidia-smi not found" in output
    assert "MISSING: NVIDIA Container Toolkit not found" in output
    assert "MISSING: nvidia-container-runtime-hook not found" in output
    assert "daemon.json does not exist" in output
    assert "MISSING: docker not found" in output
    assert "skipped the container smoke test: no Docker engine responds" in output
    assert "4 problem(s) found" in output


def test_check_script_without_engine(tmp_path: Path) -> None:
    env = _tool_folder(tmp_path / "bin", {"docker": "echo 'Cannot connect to the Docker daemon' >&2; exit 1"})
    result = _run_check(env)
    assert result.returncode == 1
    assert "MISSING: no Docker engine responds ('docker info' failed)" in result.stdout
    assert "Cannot connect to the Docker daemon" in result.stdout


# FAKE: stand-ins for a GPU host's tools, so that the path where everything is present runs here.
GPU_HOST_FAKES = {
    "nvidia-smi": 'echo "0, NVIDIA H200, 580.65.06, 143771 MiB"',
    "nvidia-ctk": 'echo "NVIDIA Container Toolkit CLI version 1.17.8"',
    "nvidia-container-runtime-hook": "exit 0",
    "docker": """case "$1 $2" in
  "info --format") echo "io.containerd.runc.v2 nvidia runc " ;;
  "compose version") echo "Docker Compose version v2.39.1" ;;
  "run --rm") echo "ran: $*" ;;
  "image inspect") exit 1 ;;
  *) echo "unexpected docker $*" >&2; exit 2 ;;
esac""",
}


def test_check_script_passes_on_gpu_host(tmp_path: Path) -> None:
    env = _tool_folder(tmp_path / "bin", GPU_HOST_FAKES)
    Path(env["DOCKER_DAEMON_JSON"]).write_text(
        '{"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}'
    )
    result = _run_check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    assert "0, NVIDIA H200, 580.65.06, 143771 MiB" in output
    assert "ok: nvidia-ctk: NVIDIA Container Toolkit CLI version 1.17.8" in output
    assert "registers the nvidia runtime" in output
    assert "ok: Docker lists the nvidia runtime" in output
    assert "ran: run --rm --gpus all ubuntu nvidia-smi" in output
    assert "no asr-workbench image yet" in output
    assert "this host can run docker-compose.gpu.yml" in output


def test_check_script_smoke_failure(tmp_path: Path) -> None:
    fakes = {**GPU_HOST_FAKES, "docker": GPU_HOST_FAKES["docker"].replace('echo "ran: $*"', "exit 125")}
    env = _tool_folder(tmp_path / "bin", fakes)
    result = _run_check(env)
    assert result.returncode == 1
    assert "MISSING: 'docker run --rm --gpus all ubuntu nvidia-smi' failed" in result.stdout
