"""Resolve and run a training from user-level parameters; shared by the CLI, the job manager and
the training notebook, so a run started from any of them is configured the same way."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrlib import checkpoints as ckpt
from asrlib.config import (
    RunConfig,
    deep_merge,
    load_settings,
    parse_overrides,
    resolve_run_config,
)
from asrlib.config import checkpoints_dir as default_checkpoints_dir
from asrlib.logs import run_context
from asrlib.training.distributed import init_distributed
from asrlib.training.runs import RunPaths, new_run_id, read_status, validate_run_id, write_status
from asrlib.training.trainer import FROZEN_SECTIONS, Trainer, TrainResult, config_differences

log = logging.getLogger(__name__)

STOP_FILE = "STOP"  # created in a run folder to ask its trainer to save and stop


@dataclass(frozen=True)
class ResolvedRun:
    config: RunConfig
    dataset_root: Path
    resume_from: Path | None


def normalise_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Accept overrides as a nested mapping, a flat mapping of dotted keys, or `KEY=VALUE` strings."""
    if overrides is None:
        return {}
    if isinstance(overrides, list):
        return parse_overrides(overrides)
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides: expected a mapping or a list of KEY=VALUE strings, got {overrides!r}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"overrides: invalid key {key!r}")
        part: dict[str, Any] = {}
        node = part
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
        nested = deep_merge(nested, part)
    return nested


def resolve_checkpoint_path(resume_from: str | os.PathLike[str], root: Path) -> Path:
    """Find a checkpoint given as a path or as `RUN_ID/ckpt-NNNNNNN.pt` under the checkpoints folder."""
    path = Path(resume_from)
    if not path.is_absolute() and not path.exists():
        path = root / path
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {resume_from}")
    return path


def resolve_training(
    settings: dict[str, Any],
    *,
    model_type: str = "conformer",
    dataset: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    checkpoints_root: Path | None = None,
) -> ResolvedRun:
    """Build the run configuration and check it can start: dataset present, resume compatible."""
    from asrlib.datasets.catalog import resolve_dataset_path

    root = checkpoints_root or default_checkpoints_dir(settings)
    extra = normalise_overrides(overrides)
    if dataset:
        extra = deep_merge(extra, {"data": {"dataset": dataset}})
    resume_path = None
    if resume_from:
        resume_path = resolve_checkpoint_path(resume_from, root)
        payload = ckpt.load_checkpoint(resume_path)
        if "optimizer" not in payload or "sampler" not in payload:
            raise ValueError(
                f"cannot resume from {resume_path}: it contains weights only (an averaged checkpoint or a "
                "registered model); resume from one of the run's ckpt-*.pt files"
            )
        config = RunConfig.from_dict(deep_merge(payload["config"], extra))
        if model_type and model_type != config.model.type:
            raise ValueError(
                f"cannot resume a {payload['config']['model']['type']} checkpoint as model type {model_type}"
            )
        diffs = config_differences(payload["config"], config.to_dict(), FROZEN_SECTIONS)
        if diffs:
            raise ValueError(
                f"cannot resume from {resume_path}: the model architecture or tokenizer differs "
                f"({'; '.join(diffs)}); start a new run instead"
            )
    else:
        config = resolve_run_config(settings, model_type=model_type, preset=preset, overrides=extra)
    dataset_root = resolve_dataset_path(config.data.dataset, settings)
    if not (dataset_root / "metadata.csv").is_file():
        raise FileNotFoundError(
            f"dataset {config.data.dataset!r} is not present at {dataset_root}; download or import it first "
            "(asr dataset download/import, or asr dataset demo)"
        )
    return ResolvedRun(config=config, dataset_root=dataset_root, resume_from=resume_path)


@contextlib.contextmanager
def _stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """Turn Ctrl-C (or a Jupyter interrupt) into a graceful stop while training runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s; saving a checkpoint and stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_training(
    *,
    model_type: str = "conformer",
    dataset: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    resume_from: str | None = None,
    run_id: str | None = None,
    checkpoints_dir: str | None = None,
    config_path: str | None = None,
    processes: int = 1,
) -> TrainResult:
    """Train one run to its end; the parameters are those of notebooks/train.ipynb.

    A run folder that the job manager prepared (state `queued`) is used as it is; any other
    existing, non-empty folder is rejected so that a run is never overwritten. With
    `processes > 1` the run is handed to torchrun (DDP on this machine) and this call waits for it.
    """
    settings = load_settings(config_path)
    root = Path(checkpoints_dir) if checkpoints_dir else default_checkpoints_dir(settings)
    resolved = resolve_training(settings, model_type=model_type, dataset=dataset, preset=preset,
                                overrides=overrides, resume_from=resume_from, checkpoints_root=root)
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        run_id = validate_run_id(run_id) if run_id else new_run_id(resolved.config.model.type,
                                                                     resolved.config.model.preset)
        return _run_torchrun(processes, run_id=run_id, root=root, model_type=model_type, dataset=dataset,
                             preset=preset, overrides=normalise_overrides(overrides), resume_from=resume_from,
                             config_path=config_path)
    # Under torchrun every rank runs this function: rank 0 names the run and checks its folder.
    ctx, _ = init_distributed(resolved.config.training.device)
    run_id = validate_run_id(run_id) if run_id else new_run_id(resolved.config.model.type, resolved.config.model.preset)
    run_id = ctx.broadcast(run_id)
    paths = RunPaths(root / run_id)
    problem = None
    if ctx.is_main:
        prepared = (read_status(paths) or {}).get("state") in ("queued", "stopping")
        if paths.root.exists() and any(paths.root.iterdir()) and not prepared:
            problem = f"run folder {paths.root} already exists; choose another run id"
    problem = ctx.broadcast(problem)
    if problem:
        raise ValueError(problem)
    stop_file = paths.root / STOP_FILE
    if stop_file.exists():
        log.info("run %s was stopped before it started", run_id)
        if ctx.is_main:
            write_status(paths, "stopped", step=0)
        return TrainResult(run_id, "stopped", 0, None, {}, paths.root)
    stop = threading.Event()
    with run_context(run_id), _stop_on_sigint(stop):
        trainer = Trainer(resolved.config, paths.root, dataset_root=resolved.dataset_root,
                          resume_from=resolved.resume_from,
                          should_stop=lambda: stop.is_set() or stop_file.exists())
        return trainer.fit()


def _flatten(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    items = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


def _run_torchrun(processes: int, *, run_id: str, root: Path, model_type: str, dataset: str | None,
                  preset: str | None, overrides: dict[str, Any], resume_from: str | None,
                  config_path: str | None) -> TrainResult:
    """Run `torchrun --nproc-per-node N -m asrlib.train` for this run and return its final status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "asrlib.train", "--model", model_type, "--run-id", run_id, "--checkpoints", str(root)]
    for flag, value in (("--dataset", dataset), ("--preset", preset), ("--resume", resume_from),
                        ("--config", config_path)):
        if value:
            command += [flag, str(value)]
    for item in _flatten(overrides):
        command += ["--set", item]
    log.info("starting %d training processes: %s", processes, " ".join(command))
    # torchrun forwards SIGINT and SIGTERM to its workers, whose rank 0 then saves and stops.
    code = subprocess.run(command, check=False).returncode
    status = read_status(RunPaths(root / run_id)) or {}
    if code != 0 and status.get("state") not in ("stopped", "completed"):
        raise RuntimeError(f"torchrun exited with code {code}; see {root / run_id / 'train.log'}")
    checkpoint = status.get("checkpoint")
    return TrainResult(run_id, status.get("state", "failed"), int(status.get("step", 0)),
                       Path(checkpoint) if checkpoint else None, status.get("metrics") or {}, root / run_id)
