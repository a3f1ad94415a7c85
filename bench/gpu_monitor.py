"""GPU utilisation and memory use, sampled by nvidia-smi in a background process.

nvidia-smi prints one line per GPU every 200 ms with its own timestamp, so each sample is placed in
time by nvidia-smi's clock and not by when the line reached this process. A measured phase is a
window of time.time() values; its usage is read from the samples inside that window.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

SAMPLE_INTERVAL_MS = 200
QUERY = "timestamp,uuid,utilization.gpu,memory.used"
TIMESTAMP_FORMAT = "%Y/%m/%d %H:%M:%S.%f"  # nvidia-smi's `timestamp` field, local time


@dataclass(frozen=True)
class GpuSample:
    time: float  # seconds since the epoch, as time.time()
    uuid: str  # lower case, without the GPU- prefix
    utilization_percent: float | None  # None where nvidia-smi prints [N/A], as under MIG
    memory_used_mib: float | None


@dataclass(frozen=True)
class GpuUsage:
    """The GPU samples of one measured phase."""

    samples: int
    mean_utilization_percent: float | None
    peak_memory_used_mib: float | None  # the whole GPU: every process, the CUDA context and cached blocks
    note: str | None = None


def normalise_uuid(uuid: str) -> str:
    """Compare torch's and nvidia-smi's spelling of a GPU UUID: lower case, no GPU- prefix."""
    uuid = uuid.strip().lower()
    return uuid.removeprefix("gpu-")


def parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # [N/A], [Not Supported]
        return None


def parse_line(line: str) -> GpuSample | None:
    """Parse one `timestamp, uuid, utilization.gpu, memory.used` line; None for anything else."""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 4:
        return None
    try:
        stamp = datetime.strptime(fields[0], TIMESTAMP_FORMAT).timestamp()
    except ValueError:
        return None
    return GpuSample(stamp, normalise_uuid(fields[1]), parse_number(fields[2]), parse_number(fields[3]))


def torch_uuid(device: torch.device) -> str | None:
    """Read the UUID of `device` as torch reports it; None on a torch without the property."""
    try:
        return normalise_uuid(str(torch.cuda.get_device_properties(device).uuid))
    except (AttributeError, RuntimeError):
        return None


class GpuMonitor:
    """Runs `nvidia-smi -lms 200` from start() to stop() and summarises its samples by time window.

    On a machine without nvidia-smi every usage is None and `unavailable` gives the reason.
    """

    def __init__(self, device: torch.device) -> None:
        self.uuid = torch_uuid(device) if device.type == "cuda" else None
        self.unavailable: str | None = None if device.type == "cuda" else "no CUDA device in use"
        self.process: subprocess.Popen[bytes] | None = None
        self.folder: tempfile.TemporaryDirectory[str] | None = None
        self.samples: list[GpuSample] = []

    def start(self) -> None:
        if self.unavailable:
            return
        executable = shutil.which("nvidia-smi")
        if executable is None:
            self.unavailable = "nvidia-smi not found on PATH"
            return
        command = [executable, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                   "-lms", str(SAMPLE_INTERVAL_MS)]
        # nvidia-smi writes through C stdio, which buffers output to a file in blocks. stdbuf
        # makes it write each line, so samples survive if the process has to be killed.
        if shutil.which("stdbuf"):
            command = ["stdbuf", "-oL", *command]
        self.folder = tempfile.TemporaryDirectory(prefix="asr-bench-gpu-")
        output = Path(self.folder.name) / "nvidia-smi.csv"
        with open(output, "wb") as stdout:
            self.process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """End nvidia-smi and read its samples; safe to call more than once."""
        if self.process is None or self.folder is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        text = (Path(self.folder.name) / "nvidia-smi.csv").read_text(encoding="utf-8", errors="replace")
        self.folder.cleanup()
        self.process, self.folder = None, None
        parsed = [parse_line(line) for line in text.splitlines()]
        self.samples = [sample for sample in parsed if sample is not None]
        if not self.samples:
            first_line = text.strip().splitlines()[0] if text.strip() else "no output"
            self.unavailable = f"nvidia-smi returned no samples ({first_line})"

    def usage(self, windows: Sequence[tuple[float, float]]) -> GpuUsage | None:
        """Summarise the samples taken inside the (start, end) windows of time.time() values, after stop()."""
        if self.unavailable:
            return None
        samples, note = self._own_samples()
        inside = [s for s in samples if any(start <= s.time <= end for start, end in windows)]
        utilization = [s.utilization_percent for s in inside if s.utilization_percent is not None]
        memory = [s.memory_used_mib for s in inside if s.memory_used_mib is not None]
        if samples and not inside:
            seconds = sum(end - start for start, end in windows)
            note = f"no sample inside the {seconds:.2f} s of measured steps; measure more steps"
        return GpuUsage(
            samples=len(inside),
            mean_utilization_percent=sum(utilization) / len(utilization) if utilization else None,
            peak_memory_used_mib=max(memory) if memory else None,
            note=note,
        )

    def _own_samples(self) -> tuple[list[GpuSample], str | None]:
        """Keep the samples of the GPU in use, found by UUID; a lone GPU is taken as that GPU."""
        own = [s for s in self.samples if s.uuid == self.uuid]
        if own:
            return own, None
        uuids = {s.uuid for s in self.samples}
        if len(uuids) == 1:
            # A MIG instance has its own UUID, and nvidia-smi reports the physical GPU around it.
            return self.samples, "the only GPU nvidia-smi lists; its UUID differs from torch's device"
        return [], f"none of the {len(uuids)} GPUs nvidia-smi lists has the UUID of torch's device"
