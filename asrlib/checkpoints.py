"""Checkpoint files: atomic writes, a JSON sidecar with the sha256, and verified loading.

A checkpoint `ckpt-000100.pt` is valid only when its sidecar `ckpt-000100.json` exists and the
file's size and sha256 match it. The `.pt` file is written to a temporary name, fsynced and
renamed, and the sidecar is written the same way afterwards, so a crash at any moment leaves
either a valid pair, an orphan `.pt` without a sidecar (listed as corrupt), or a temporary file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from asrlib.atomic import TEMP_PREFIX, atomic_open, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_GLOB = "ckpt-*.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or incompatible; the message names the file."""


@dataclass
class CheckpointInfo:
    path: Path
    step: int | None = None
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None
    size: int | None = None
    created: float | None = None
    parent: str | None = None  # checkpoint this run resumed from, if any
    run_id: str | None = None
    valid: bool = False
    problem: str | None = None  # why the checkpoint is not valid

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:07d}.pt"


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str],
    payload: dict[str, Any],
    *,
    step: int,
    epoch: int,
    metrics: dict[str, float] | None = None,
    parent: str | None = None,
    run_id: str | None = None,
) -> CheckpointInfo:
    """Write `payload` with torch.save atomically, then its sidecar; return the sidecar's contents."""
    path = Path(path)
    payload = {**payload, "format_version": FORMAT_VERSION}
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)
    # Hash what reached the disk rather than trusting the serializer; until the sidecar exists
    # the file is not listed as valid, so reading it back after the rename is safe.
    info = CheckpointInfo(
        path=path,
        step=step,
        epoch=epoch,
        metrics=dict(metrics or {}),
        sha256=file_sha256(path),
        size=path.stat().st_size,
        created=time.time(),
        parent=parent,
        run_id=run_id,
        valid=True,
    )
    sidecar = {k: v for k, v in info.to_dict().items() if k not in ("valid", "problem")}
    sidecar["path"] = path.name
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=1) + "\n")
    return info


def read_info(path: str | os.PathLike[str], *, verify: bool = True) -> CheckpointInfo:
    """Read a checkpoint's sidecar and, with `verify`, check the file's size and sha256 against it."""
    path = Path(path)
    info = CheckpointInfo(path=path)
    side = sidecar_path(path)
    if not path.is_file():
        info.problem = "checkpoint file missing"
        return info
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        info.problem = "sidecar missing (the write was interrupted)"
        return info
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        info.problem = f"sidecar unreadable: {err}"
        return info
    if not isinstance(data, dict):
        info.problem = f"sidecar unreadable: expected a JSON object, got {type(data).__name__}"
        return info
    for key in ("step", "epoch", "metrics", "sha256", "size", "created", "parent", "run_id"):
        if key in data:
            setattr(info, key, data[key])
    size = path.stat().st_size
    if info.size is not None and size != info.size:
        info.problem = f"size {size} differs from the recorded {info.size}"
    elif verify and file_sha256(path) != info.sha256:
        info.problem = "sha256 does not match the sidecar"
    else:
        info.valid = True
    return info


def list_checkpoints(run_dir: str | os.PathLike[str], *, verify: bool = True) -> list[CheckpointInfo]:
    """List a run's checkpoints by step, valid or not; leftover temporary files are listed as corrupt."""
    run_dir = Path(run_dir)
    infos = [read_info(p, verify=verify) for p in sorted(run_dir.glob(CHECKPOINT_GLOB))]
    for tmp in sorted(run_dir.glob(TEMP_PREFIX + "ckpt-*")):
        infos.append(CheckpointInfo(path=tmp, problem="temporary file left by an interrupted write"))
    return sorted(infos, key=lambda i: (i.step is None, i.step or 0, i.path.name))


def latest_valid(run_dir: str | os.PathLike[str]) -> CheckpointInfo | None:
    valid = [i for i in list_checkpoints(run_dir) if i.valid]
    return valid[-1] if valid else None


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu", verify: bool = True
) -> dict[str, Any]:
    """Load a checkpoint with `torch.load(weights_only=True)` after checking its sidecar."""
    path = Path(path)
    if verify:
        info = read_info(path)
        if not info.valid:
            raise CheckpointError(f"{path}: {info.problem}; choose another checkpoint of the run")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: not an asrlib checkpoint (missing model or config)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {payload['format_version']} is newer than this asrlib supports "
            f"({FORMAT_VERSION}); upgrade asrlib"
        )
    return payload


def prune_checkpoints(run_dir: str | os.PathLike[str], *, keep_last: int, keep: set[Path] = frozenset()) -> list[Path]:
    """Delete all but the newest `keep_last` valid checkpoints and those in `keep`; 0 keeps everything."""
    if keep_last <= 0:
        return []
    valid = [i for i in list_checkpoints(run_dir, verify=False) if i.valid]
    removed = []
    for info in valid[:-keep_last]:
        if info.path in keep:
            continue
        # The .pt goes first: a crash in between leaves a sidecar that no listing looks at.
        info.path.unlink(missing_ok=True)
        sidecar_path(info.path).unlink(missing_ok=True)
        removed.append(info.path)
    return removed


# --------------------------------------------------------------------- averaging and deletion

AVERAGE_GLOB = "avg-*.pt"  # averaged checkpoints: weights only, so `prune_checkpoints` leaves them alone


class CheckpointInUse(Exception):
    """A checkpoint that an active run trains into or resumes from; the message names it."""

    status_code = 409


def averaged_name(steps: list[int]) -> str:
    return f"avg-{min(steps):07d}-{max(steps):07d}-{len(steps)}.pt"


def list_run_checkpoints(run_dir: str | os.PathLike[str], *, verify: bool = True) -> list[CheckpointInfo]:
    """List a run's training checkpoints by step, then its averaged checkpoints by name."""
    run_dir = Path(run_dir)
    averaged = [read_info(p, verify=verify) for p in sorted(run_dir.glob(AVERAGE_GLOB))]
    return list_checkpoints(run_dir, verify=verify) + averaged


def is_resumable(path: str | os.PathLike[str]) -> bool:
    """False for checkpoints written without optimizer state (averaged ones, registry models)."""
    try:
        data = json.loads(sidecar_path(Path(path)).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return True  # `load_checkpoint` reports the real problem with a better message
    return not isinstance(data, dict) or data.get("resumable", True) is not False


def mark_weights_only(path: Path) -> None:
    """Record in the sidecar that `path` has no optimizer state, so a resume can be rejected early.

    `read_info` ignores unknown sidecar keys, and the size and sha256 describe only the `.pt`.
    """
    side = sidecar_path(path)
    data = json.loads(side.read_text(encoding="utf-8"))
    data["resumable"] = False
    atomic_write_text(side, json.dumps(data, indent=1) + "\n")


def average_checkpoints(
    paths: list[str | os.PathLike[str]], out_path: str | os.PathLike[str], *, run_id: str | None = None
) -> CheckpointInfo:
    """Average the model weights of `paths` into a new checkpoint at `out_path`.

    All checkpoints must share the model, features and text settings and the state_dict keys and
    shapes. Floating-point tensors are averaged in float64 and cast back; integer tensors (such as
    BatchNorm's `num_batches_tracked`) are taken from the last checkpoint. The result contains the
    config, tokenizer and split of the last checkpoint and no optimizer state, so it can be
    evaluated, transcribed with or registered, but not resumed.
    """
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least 2 checkpoints, got {len(paths)}")
    out_path = Path(out_path)
    total: dict[str, torch.Tensor] = {}
    last: dict[str, Any] = {}
    steps: list[int] = []
    first_config: dict[str, Any] | None = None
    for path in paths:
        payload = load_checkpoint(path)
        state = payload["model"]
        if first_config is None:
            first_config = payload["config"]
            total = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            _check_same_model(first_config, payload["config"], Path(paths[0]), Path(path))
            if state.keys() != total.keys():
                raise CheckpointError(f"{path}: model weights have other keys than {paths[0]}; cannot average them")
            for key, value in state.items():
                if value.shape != total[key].shape:
                    raise CheckpointError(
                        f"{path}: {key} has shape {tuple(value.shape)}, {paths[0]} has {tuple(total[key].shape)}"
                    )
                total[key] = total[key] + value.double() if value.is_floating_point() else value.clone()
        steps.append(int(payload.get("step", 0)))
        last = payload
    averaged = {
        key: (value / len(paths)).to(last["model"][key].dtype) if value.is_floating_point() else value
        for key, value in total.items()
    }
    sources = [Path(p).name for p in paths]
    out = {
        "model": averaged,
        "config": last["config"],
        "tokenizer": last.get("tokenizer"),
        "split": last.get("split"),
        "step": last.get("step"),
        "epoch": last.get("epoch"),
        "run_id": run_id or last.get("run_id"),
        "averaged_from": sources,
    }
    info = save_checkpoint(out_path, out, step=int(last.get("step") or 0), epoch=int(last.get("epoch") or 0),
                           metrics={}, parent=str(Path(paths[-1])), run_id=out["run_id"])
    mark_weights_only(out_path)
    log.info("averaged %d checkpoints (%s) into %s", len(paths), ", ".join(sources), out_path)
    return info


def _check_same_model(first: dict[str, Any], other: dict[str, Any], first_path: Path, path: Path) -> None:
    for section in ("model", "features", "text"):
        a = {k: v for k, v in (first.get(section) or {}).items() if k != "preset"}
        b = {k: v for k, v in (other.get(section) or {}).items() if k != "preset"}
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise CheckpointError(
                f"{path}: {section}.{keys[0]} differs from {first_path}; only checkpoints of one model can be averaged"
            )


def delete_checkpoint(path: str | os.PathLike[str], *, in_use: set[Path] = frozenset()) -> None:
    """Delete a checkpoint and its sidecar; raise CheckpointInUse when `path` is in `in_use`."""
    path = Path(path)
    if path.resolve() in {Path(p).resolve() for p in in_use}:
        raise CheckpointInUse(f"checkpoint {path} is used by an active run; stop the run or wait for it to end")
    if not path.exists() and not sidecar_path(path).exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # The .pt goes first, as in prune_checkpoints: a leftover sidecar is never listed.
    path.unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)
    log.info("deleted checkpoint %s", path)
