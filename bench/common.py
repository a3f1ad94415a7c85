"""Helpers shared by the benchmark scripts: data location, thread set-up and a machine description."""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchaudio

from asrlib.training.trainer import resolve_device as trainer_device

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real clips live beside the repository and are read in place, never copied into it.
LJSPEECH_MINI = REPO_ROOT.parent / "shared" / "data" / "ljspeech-mini"
# A 1-minute load average above this share of the usable cores marks the numbers as noisy.
BUSY_LOAD_SHARE = 0.5


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which can be below os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # sched_getaffinity is Linux-only
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (default: all usable cores) and return it."""
    count = threads or usable_cores()
    if count < 1:
        raise ValueError(f"--threads must be at least 1, got {count}")
    torch.set_num_threads(count)
    return count


def cpu_model() -> str:
    """Read the CPU model name from /proc/cpuinfo, or use platform.processor() where it is missing."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def resolve_device(name: str) -> torch.device:
    """Map the --device option to a device, as the trainer maps training.device."""
    return trainer_device(name, setting="--device")


def machine_info(device: torch.device) -> dict[str, Any]:
    """Describe the machine and software that a benchmark number depends on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_average_1min": load_average(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """Format machine_info() as the one-paragraph header that both scripts print."""
    text = (
        f"machine: {info['cpu']}, {info['usable_cores']} usable of {info['logical_cores']} logical cores, "
        f"load average {info['load_average_1min']:.2f}\n"
        f"software: Python {info['python']}, torch {info['torch']}, torchaudio {info['torchaudio']}\n"
        f"threads: torch {info['torch_threads']} intra-op, {info['torch_interop_threads']} inter-op; "
        f"device {info['device']}"
    )
    if "gpu" in info:
        text += f" ({info['gpu']})"
    return text


def print_machine(device: torch.device) -> dict[str, Any]:
    """Print the machine header, and the busy warning where it applies; return machine_info()."""
    info = machine_info(device)
    print(describe_machine(info), flush=True)
    warning = busy_warning(info)
    if warning:
        print(warning, flush=True)
    return info


def quiet_training_logs() -> None:
    """Log warnings only on the console: the trainer raises the asrlib logger to INFO for train.log."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)


def run_main(main: Callable[[], object]) -> None:
    """Run a script's main(); bad settings (an unknown preset, a missing CUDA device) end in one line."""
    try:
        main()
    except (ValueError, OSError) as err:
        sys.exit(f"error: {err}")


def busy_warning(info: dict[str, Any]) -> str | None:
    """Return a warning when other processes were loading the CPUs, since numbers are then noisy."""
    load = info.get("load_average_1min")
    if load is None or load <= BUSY_LOAD_SHARE * info["usable_cores"]:
        return None
    return (
        f"WARNING: the 1-minute load average was {load:.2f} on {info['usable_cores']} cores before the run; "
        "other processes share the CPUs, so these numbers are noisy. Re-measure on an idle machine."
    )

