"""`asr gpu-check`: report the CUDA GPUs PyTorch detects and check a bf16 matrix product on each.

For each visible device the check prints its name, compute capability, free and total memory, the
CUDA and cuDNN versions PyTorch was built with, and the NVIDIA driver version when nvidia-smi is
on PATH. It then multiplies two random matrices in bf16 on the device and compares the product
with the fp32 product of the same inputs. Exit codes: 0 when every device passes, 1 when a device
fails the matrix check, 3 when PyTorch detects no CUDA GPU. `python -m asrlib.gpu` runs the same check.

torch is imported inside the functions, so that adding the subcommand to `asr` costs no import time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_NO_GPU = 3

DEFAULT_SIZE = 2048
# bf16 keeps 8 significant bits, so rounding the inputs alone gives a relative error of about
# 2**-9 * sqrt(2) = 0.3 % in the product; a wrong kernel or broken memory gives errors near 100 %.
DEFAULT_TOLERANCE = 0.02


@dataclass(frozen=True)
class MatmulCheck:
    """The bf16 product of two size x size matrices compared with their fp32 product."""

    size: int
    relative_error: float  # Frobenius norm of (bf16 - fp32) over that of fp32
    tolerance: float
    bf16_tflops: float  # measured speed of the bf16 product, counting 2 * size**3 operations
    passed: bool


@dataclass(frozen=True)
class DeviceReport:
    index: int
    name: str
    compute_capability: str
    total_memory_bytes: int
    free_memory_bytes: int
    bf16_supported: bool
    matmul: MatmulCheck | None = None
    error: str | None = None  # a CUDA error raised during the check


@dataclass
class GpuReport:
    torch_version: str
    cuda_version: str | None  # the CUDA runtime PyTorch was built with
    cudnn_version: str | None
    driver_version: str | None  # from nvidia-smi
    devices: list[DeviceReport] = field(default_factory=list)
    problem: str | None = None  # why no GPU is usable, when none is

    @property
    def exit_code(self) -> int:
        if self.problem is not None:
            return EXIT_NO_GPU
        if all(d.error is None and d.matmul is not None and d.matmul.passed for d in self.devices):
            return EXIT_OK
        return EXIT_CHECK_FAILED


def cudnn_version_text() -> str | None:
    """Format torch's cuDNN version number (91900 for cuDNN 9.19.0) as major.minor.patch."""
    import torch

    number = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not number:
        return None
    major, rest = divmod(number, 10000) if number >= 10000 else divmod(number, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def nvidia_driver_version() -> str | None:
    """Read the driver version from nvidia-smi; None when nvidia-smi is missing or fails."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return None
    try:
        result = subprocess.run(
            [nvidia_smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    versions = sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})
    return ", ".join(versions) or None


def no_gpu_reason() -> str | None:
    """Explain why PyTorch detects no CUDA GPU, or return None when it detects at least one."""
    import torch

    # torch.cuda.is_available() reports a failed CUDA initialisation (an old driver, say) as a warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available and torch.cuda.device_count() > 0:
        return None

    lines = [f"no CUDA GPU is visible to PyTorch {torch.__version__}"]
    if torch.version.cuda is None:
        lines.append("this PyTorch is a CPU-only build; install a CUDA build of torch==2.11.*")
    for warning in caught:
        lines.append(f"CUDA initialisation: {str(warning.message).strip()}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        lines.append(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU; unset it or list device indices")
    if shutil.which("nvidia-smi") is None:
        lines.append("nvidia-smi is not on PATH: on a host, install the NVIDIA driver; in a container, "
                     "start it with a GPU (docker run --gpus all, or docker-compose.gpu.yml)")
    else:
        lines.append(f"nvidia-smi reports driver {nvidia_driver_version() or 'unknown'}; PyTorch's CUDA "
                     f"{torch.version.cuda} needs a driver that supports it (CUDA 13.0: the 580 series or newer)")
    return "\n  ".join(lines)


def cuda_device(index: int) -> torch.device:
    import torch

    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_bf16_matmul(device: torch.device, size: int = DEFAULT_SIZE,
                      tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> MatmulCheck:
    """Multiply two random size x size matrices in bf16 on `device` and compare with fp32.

    TF32 is switched off for the fp32 reference, so that the reference is a true fp32 product.
    """
    import torch

    if size < 1:
        raise ValueError(f"matrix size must be at least 1, got {size}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)

    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        reference = a @ b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32

    a16, b16 = a.bfloat16(), b.bfloat16()
    product = a16 @ b16  # warm-up; also the product that is checked
    synchronize(device)
    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        a16 @ b16
    synchronize(device)
    seconds = (time.perf_counter() - start) / repeats

    error = (torch.linalg.matrix_norm(product.float() - reference) / torch.linalg.matrix_norm(reference)).item()
    tflops = 2 * size**3 / seconds / 1e12 if seconds > 0 else float("inf")
    passed = bool(torch.isfinite(product).all().item()) and error <= tolerance
    return MatmulCheck(size=size, relative_error=error, tolerance=tolerance, bf16_tflops=tflops, passed=passed)


def check_device(index: int, size: int, tolerance: float) -> DeviceReport:
    """Describe CUDA device `index` and run the bf16 check on it; a CUDA error goes in `error`."""
    import torch

    properties = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    report = DeviceReport(
        index=index, name=torch.cuda.get_device_name(index),
        compute_capability=f"{properties.major}.{properties.minor}",
        total_memory_bytes=int(total), free_memory_bytes=int(free),
        bf16_supported=bf16_supported(index),
    )
    try:
        matmul = check_bf16_matmul(cuda_device(index), size, tolerance)
    except RuntimeError as err:  # torch raises CUDA errors (out of memory, launch failures) as RuntimeError
        return replace(report, error=f"bf16 matrix product failed: {err}")
    return replace(report, matmul=matmul)


def bf16_supported(index: int) -> bool:
    import torch

    with torch.cuda.device(index):
        return bool(torch.cuda.is_bf16_supported())


def run_gpu_check(devices: list[int] | None = None, size: int = DEFAULT_SIZE,
                  tolerance: float = DEFAULT_TOLERANCE) -> GpuReport:
    """Check the listed CUDA devices (default: all visible ones)."""
    import torch

    report = GpuReport(torch_version=torch.__version__, cuda_version=torch.version.cuda,
                       cudnn_version=cudnn_version_text(), driver_version=nvidia_driver_version())
    report.problem = no_gpu_reason()
    if report.problem is not None:
        return report
    count = torch.cuda.device_count()
    indices = list(range(count)) if devices is None else devices
    for index in indices:
        if not 0 <= index < count:
            raise ValueError(f"invalid --device {index}; PyTorch detects {count} device(s): 0 to {count - 1}")
        report.devices.append(check_device(index, size, tolerance))
    return report


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def format_report(report: GpuReport) -> str:
    lines = [
        f"PyTorch {report.torch_version}, CUDA {report.cuda_version or 'none'}, "
        f"cuDNN {report.cudnn_version or 'none'}, NVIDIA driver {report.driver_version or 'unknown'}",
    ]
    if report.problem is not None:
        lines.append(f"error: {report.problem}")
        return "\n".join(lines)
    for device in report.devices:
        lines.append(
            f"cuda:{device.index}  {device.name}  compute capability {device.compute_capability}  "
            f"memory {_gib(device.free_memory_bytes)} free of {_gib(device.total_memory_bytes)}  "
            f"bf16 {'supported' if device.bf16_supported else 'not supported'}"
        )
        if device.error is not None:
            lines.append(f"  FAILED: {device.error}")
        elif device.matmul is not None:
            check = device.matmul
            verdict = "ok" if check.passed else "FAILED"
            lines.append(
                f"  bf16 matmul {check.size}x{check.size}: relative error {check.relative_error:.2e} against "
                f"fp32 (limit {check.tolerance:.0e}), {check.bf16_tflops:.1f} TFLOP/s: {verdict}"
            )
    return "\n".join(lines)


def report_dict(report: GpuReport) -> dict[str, Any]:
    return {**asdict(report), "exit_code": report.exit_code}


def _gpu_check(args: argparse.Namespace) -> int:
    report = run_gpu_check(args.device, size=args.size, tolerance=args.tolerance)
    if args.json:
        print(json.dumps(report_dict(report)))
    else:
        stream = sys.stdout if report.exit_code == EXIT_OK else sys.stderr
        print(format_report(report), file=stream)
    return report.exit_code


def add_gpu_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `asr gpu-check` to the `asr` command's subparsers."""
    parser = subparsers.add_parser(
        "gpu-check", help="report the CUDA GPUs PyTorch detects and test a bf16 matrix product on each",
        description="Print each visible GPU's name, memory and the CUDA and cuDNN versions, then compare a "
                    "bf16 matrix product on the GPU with the fp32 product. Exit status: 0 all checks passed, "
                    f"{EXIT_CHECK_FAILED} a check failed, {EXIT_NO_GPU} no CUDA GPU is visible.",
    )
    parser.add_argument("--device", type=int, action="append", metavar="INDEX",
                        help="check only this CUDA device index (repeatable; default: every visible device)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"rows and columns of the test matrices (default {DEFAULT_SIZE})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest accepted relative Frobenius error of the bf16 product against fp32 "
                             f"(default {DEFAULT_TOLERANCE})")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=_gpu_check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asrlib.gpu")
    add_gpu_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gpu-check", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
