"""The model registry: named, frozen copies of chosen checkpoints of finished runs.

A model `NAME` is the file `<checkpoints>/models/NAME.pt`, written with `save_checkpoint`, so it is
atomic and has the usual sha256 sidecar `NAME.json`. The file contains what inference and
evaluation need (weights, config, tokenizer, metrics and the run's split) and no optimizer state.
Because it has "model" and "config", `Recognizer.from_checkpoint` loads it directly. The registry metadata
(run, checkpoint, metrics, lineage) is stored under the key "registry" both in the sidecar, so
listing never loads weights, and in the file itself. Exports go to `models/exports/NAME/`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asrlib import checkpoints as ckpt
from asrlib.atomic import atomic_write_text
from asrlib.config import RunConfig
from asrlib.export import EXPORT_FORMATS, FILE_NAMES, export_model
from asrlib.models import build_model, count_parameters
from asrlib.text import CharTokenizer
from asrlib.training.runs import RUN_ID_PATTERN, RunPaths, read_status, validate_run_id

log = logging.getLogger(__name__)

MODELS_FOLDER = "models"
EXPORTS_FOLDER = "exports"
REGISTRABLE_STATES = ("completed", "stopped")
SORT_KEYS = ("created", "wer", "name", "size")
MAX_LINEAGE = 100  # parents followed at most, in case a damaged sidecar forms a cycle


class RegistryError(Exception):
    """Base of the registry errors; `status_code` is the HTTP status of the API's error response."""

    status_code = 400


class InvalidModelRequest(RegistryError, ValueError):
    status_code = 400


class ModelNotFound(RegistryError, LookupError):
    status_code = 404


class ModelConflict(RegistryError):
    status_code = 409


def validate_model_name(name: str) -> str:
    """Reject names that could escape the models folder or break a URL (`../x`, `a/b`, empty)."""
    if not isinstance(name, str) or not RUN_ID_PATTERN.match(name) or ".." in name:
        raise InvalidModelRequest(
            f"invalid model name {name!r}; use letters, digits, '.', '_' and '-' (at most 128, no '..')"
        )
    return name


@dataclass
class ModelInfo:
    """A registered model as listed by the registry (read from its sidecar, without the weights)."""

    name: str
    path: str
    run_id: str | None = None
    checkpoint: str | None = None  # file name of the source checkpoint inside the run folder
    step: int | None = None
    epoch: int | None = None
    model_type: str | None = None
    preset: str | None = None
    dataset: str | None = None
    run_status: str | None = None  # the run's state when the model was registered
    cer: float | None = None
    wer: float | None = None
    valid_loss: float | None = None
    loss: float | None = None  # training loss of the last logged steps
    parameters: int | None = None
    size: int | None = None  # bytes of the model file
    sha256: str | None = None
    created: float | None = None
    averaged_from: list[str] | None = None
    lineage: list[dict[str, Any]] = field(default_factory=list)  # source checkpoint first, then its parents
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> file, size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    """Registers, lists, renames, deletes and exports models under `<checkpoints_root>/models`.

    Methods are safe to call from several threads of one process; two processes that change
    the same registry at once may race on a name.
    """

    def __init__(self, checkpoints_root: str | os.PathLike[str]) -> None:
        self.root = Path(checkpoints_root)
        self.models_dir = self.root / MODELS_FOLDER
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- paths

    def model_path(self, name: str) -> Path:
        return self.models_dir / f"{validate_model_name(name)}.pt"

    def export_dir(self, name: str) -> Path:
        return self.models_dir / EXPORTS_FOLDER / validate_model_name(name)

    # ----------------------------------------------------------------- queries

    def get(self, name: str) -> ModelInfo:
        path = self.model_path(name)
        info = self._read(path)
        if info is None:
            raise ModelNotFound(f"model {name!r} not found; list the registered models with GET /api/models")
        return info

    def exists(self, name: str) -> bool:
        return self._read(self.model_path(name)) is not None

    def list(
        self,
        *,
        type: str | None = None,
        dataset: str | None = None,
        status: str | None = None,
        name_contains: str | None = None,
        wer_min: float | None = None,
        wer_max: float | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        sort: str = "created",
        descending: bool = False,
    ) -> list[ModelInfo]:
        """List models matching every given filter; a WER filter excludes models without a WER.

        `created_after` and `created_before` are Unix times in seconds. Models without the sort key
        (no WER yet) come last in either direction.
        """
        if sort not in SORT_KEYS:
            raise InvalidModelRequest(f"invalid sort key {sort!r}; use one of {', '.join(SORT_KEYS)}")
        models = []
        for path in sorted(self.models_dir.glob("*.pt")) if self.models_dir.is_dir() else []:
            info = self._read(path)
            if info is not None and _matches(info, type, dataset, status, name_contains, wer_min, wer_max,
                                             created_after, created_before):
                models.append(info)
        present = [m for m in models if getattr(m, sort) is not None]
        missing = [m for m in models if getattr(m, sort) is None]
        present.sort(key=lambda m: (getattr(m, sort), m.name), reverse=descending)
        return present + sorted(missing, key=lambda m: m.name)

    def _read(self, path: Path) -> ModelInfo | None:
        """Read a model's sidecar; None when the file or its sidecar is missing (a write in progress)."""
        try:
            sidecar = json.loads(ckpt.sidecar_path(path).read_text(encoding="utf-8"))
            size = path.stat().st_size
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(sidecar, dict):
            return None
        meta = sidecar.get("registry") or {}
        known = {k: meta[k] for k in ModelInfo.__dataclass_fields__ if k in meta and k not in ("name", "path")}
        info = ModelInfo(name=path.stem, path=str(path), **known)
        info.size = size
        info.sha256 = sidecar.get("sha256")
        info.created = info.created or sidecar.get("created")
        info.exports = self._exports(path.stem)
        return info

    def _exports(self, name: str) -> dict[str, dict[str, Any]]:
        folder = self.models_dir / EXPORTS_FOLDER / name
        exports = {}
        for meta_file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            file = folder / str(meta.get("file", ""))
            if file.is_file():
                exports[meta_file.stem] = {"path": str(file), "size": file.stat().st_size,
                                           "max_abs_difference": meta.get("max_abs_difference")}
        return exports

    # ----------------------------------------------------------------- commands

    def register(self, run_id: str, checkpoint: str | None = None, name: str | None = None) -> ModelInfo:
        """Copy a checkpoint of a completed or stopped run into the registry as model `name`.

        `checkpoint` is a file name inside the run folder. By default it is the run's best
        checkpoint from status.json, else its final one, else its newest valid one. `name`
        defaults to the run id. Raises ModelNotFound for an unknown run or checkpoint,
        ModelConflict for a run that has not ended or a name in use, and InvalidModelRequest for
        invalid names or files.
        """
        try:
            validate_run_id(run_id)
        except ValueError as err:
            raise InvalidModelRequest(str(err)) from None
        name = validate_model_name(name if name is not None else run_id)
        run = RunPaths(self.root / run_id)
        status = read_status(run) if run.root.is_dir() else None
        if status is None:
            raise ModelNotFound(f"run {run_id!r} not found under {self.root}")
        if status.get("state") not in REGISTRABLE_STATES:
            raise ModelConflict(
                f"run {run_id!r} is {status.get('state')}; only a completed or stopped run can be registered"
            )
        source = self._choose_checkpoint(run, status, checkpoint)
        try:
            payload = ckpt.load_checkpoint(source)
        except ckpt.CheckpointError as err:
            raise InvalidModelRequest(str(err)) from None
        source_info = ckpt.read_info(source, verify=False)
        config = RunConfig.from_dict(payload["config"])
        # Each checkpoint's sidecar has the metrics of its own step; the run's final metrics in
        # status.json describe only its final checkpoint.
        metrics = dict(source_info.metrics or {})
        if not metrics and source.name == Path(status.get("checkpoint") or "").name:
            metrics = dict(status.get("metrics") or {})
        meta = {
            "run_id": run_id,
            "checkpoint": source.name,
            "step": payload.get("step"),
            "epoch": payload.get("epoch"),
            "model_type": config.model.type,
            "preset": config.model.preset,
            "dataset": config.data.dataset,
            "run_status": status.get("state"),
            "cer": _number(metrics.get("cer")),
            "wer": _number(metrics.get("wer")),
            "valid_loss": _number(metrics.get("valid_loss")),
            "loss": _number(metrics.get("loss")),
            "parameters": _count_parameters(config, payload),
            "created": time.time(),
            "averaged_from": payload.get("averaged_from"),
            "lineage": self.lineage(source),
        }
        out = {
            "model": payload["model"],
            "config": payload["config"],
            "tokenizer": payload["tokenizer"],
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            # The split lets `asr evaluate` score the model on the test clips its run held out.
            "split": payload.get("split"),
            "step": payload.get("step"),
            "epoch": payload.get("epoch"),
            "run_id": run_id,
            "registry": {"name": name, **meta},
        }
        with self._lock:
            path = self.model_path(name)
            if path.exists():
                raise ModelConflict(f"model {name!r} already exists; choose another name or delete it first")
            ckpt.save_checkpoint(path, out, step=int(payload.get("step") or 0), epoch=int(payload.get("epoch") or 0),
                                 metrics=out["metrics"], parent=str(source), run_id=run_id)
            self._write_sidecar_meta(path, {"name": name, **meta})
        log.info("registered model %s from %s (step %s)", name, source, meta["step"])
        return self.get(name)

    def _choose_checkpoint(self, run: RunPaths, status: dict[str, Any], checkpoint: str | None) -> Path:
        if checkpoint is not None:
            if "/" in checkpoint or "\\" in checkpoint or ".." in checkpoint or not checkpoint.endswith(".pt"):
                raise InvalidModelRequest(
                    f"invalid checkpoint name {checkpoint!r}; give a file name of the run such as ckpt-0001000.pt"
                )
            path = run.root / checkpoint
            if not path.is_file():
                raise ModelNotFound(f"checkpoint {checkpoint!r} not found in run {run.run_id!r}")
            return path
        for key in ("best_checkpoint", "checkpoint"):
            if not status.get(key):
                continue
            # status.json stores full paths, but the run folder may have been moved or copied since
            # (a container mount, a backup), so the file of that name inside the run folder comes first.
            for candidate in (run.root / Path(status[key]).name, Path(status[key])):
                if ckpt.read_info(candidate, verify=False).valid:
                    return candidate
        latest = ckpt.latest_valid(run.root)
        if latest is None:
            raise ModelNotFound(f"run {run.run_id!r} has no valid checkpoint to register")
        return latest.path

    def _write_sidecar_meta(self, path: Path, meta: dict[str, Any]) -> None:
        side = ckpt.sidecar_path(path)
        data = json.loads(side.read_text(encoding="utf-8"))
        data.update(registry=meta, resumable=False)
        atomic_write_text(side, json.dumps(data, indent=1) + "\n")

    def lineage(self, checkpoint: Path) -> list[dict[str, Any]]:
        """Follow `parent` links from a checkpoint back to the run that started from scratch.

        Each entry has run_id, checkpoint (file name), path, step and exists. A pruned parent
        checkpoint has no sidecar left. Its run's status.json still names that run's own parent,
        so the chain continues through it.
        """
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        current: Path | None = checkpoint
        while current is not None and len(chain) < MAX_LINEAGE:
            key = str(current.resolve())
            if key in seen:
                break
            seen.add(key)
            info = ckpt.read_info(current, verify=False)
            run_id = info.run_id or current.parent.name
            chain.append({"run_id": run_id, "checkpoint": current.name, "path": str(current),
                          "step": info.step, "exists": current.is_file()})
            parent = info.parent
            if parent is None and not current.is_file():
                parent = (read_status(RunPaths(current.parent)) or {}).get("parent")
            current = self._resolve_parent(parent) if parent else None
        return chain

    def _resolve_parent(self, parent: str) -> Path:
        path = Path(parent)
        return path if path.is_absolute() else self.root / path

    def rename(self, name: str, new_name: str) -> ModelInfo:
        """Rename a model and its exports; ModelConflict when `new_name` is taken."""
        old_path = self.model_path(name)
        new_path = self.model_path(new_name)
        with self._lock:
            info = self.get(name)
            if name == new_name:
                return info
            if new_path.exists() or ckpt.sidecar_path(new_path).exists():
                raise ModelConflict(f"model {new_name!r} already exists; choose another name")
            # The new sidecar goes first and the old one last: a crash in between leaves one
            # listed model (a .pt with its sidecar) and a stray sidecar that no listing reads.
            side = json.loads(ckpt.sidecar_path(old_path).read_text(encoding="utf-8"))
            side["path"] = new_path.name
            side.setdefault("registry", {})["name"] = new_name
            atomic_write_text(ckpt.sidecar_path(new_path), json.dumps(side, indent=1) + "\n")
            os.replace(old_path, new_path)
            ckpt.sidecar_path(old_path).unlink(missing_ok=True)
            old_exports = self.models_dir / EXPORTS_FOLDER / name
            if old_exports.is_dir():
                shutil.rmtree(self.export_dir(new_name), ignore_errors=True)
                os.replace(old_exports, self.export_dir(new_name))
        log.info("renamed model %s to %s (was registered from run %s)", name, new_name, info.run_id)
        return self.get(new_name)

    def delete(self, name: str, in_use: Collection[str | Path] = frozenset()) -> None:
        """Delete a model, its sidecar and its exports.

        `in_use` contains the model names and paths that a job or a loaded inference session
        uses. Deleting one of them raises ModelConflict.
        """
        path = self.model_path(name)
        with self._lock:
            self.get(name)
            used = {str(Path(p).resolve()) if isinstance(p, Path) else p for p in in_use}
            if name in used or str(path.resolve()) in used:
                raise ModelConflict(
                    f"model {name!r} is in use by a running job or a loaded inference session; "
                    "stop the job or unload the model first"
                )
            path.unlink(missing_ok=True)
            ckpt.sidecar_path(path).unlink(missing_ok=True)
            shutil.rmtree(self.models_dir / EXPORTS_FOLDER / name, ignore_errors=True)
        log.info("deleted model %s", name)

    def export(self, name: str, format: str = "torchscript") -> Path:
        """Export a model to TorchScript or ONNX under `models/exports/NAME/`; return the file's path.

        Raises ExportError (from asrlib.export) with the reason when the export fails or its
        output differs from the eager model.
        """
        if format not in EXPORT_FORMATS:
            raise InvalidModelRequest(f"invalid export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
        info = self.get(name)
        payload = ckpt.load_checkpoint(info.path)
        config = RunConfig.from_dict(payload["config"])
        tokenizer = CharTokenizer.from_dict(payload["tokenizer"])
        model = build_model(config, tokenizer.vocab_size)
        model.load_state_dict(payload["model"])
        out_dir = self.export_dir(name)
        export_model(model.eval(), format, out_dir, metadata={
            "model": name, "sha256": info.sha256, "config": payload["config"], "tokenizer": payload["tokenizer"],
        })
        return out_dir / FILE_NAMES[format]


def _matches(info: ModelInfo, model_type, dataset, status, name_contains, wer_min, wer_max,
             created_after, created_before) -> bool:
    checks = [
        model_type is None or info.model_type == model_type,
        dataset is None or info.dataset == dataset,
        status is None or info.run_status == status,
        name_contains is None or name_contains.lower() in info.name.lower(),
        wer_min is None or (info.wer is not None and info.wer >= wer_min),
        wer_max is None or (info.wer is not None and info.wer <= wer_max),
        created_after is None or (info.created or 0) >= created_after,
        created_before is None or (info.created or 0) <= created_before,
    ]
    return all(checks)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count_parameters(config: RunConfig, payload: dict[str, Any]) -> int:
    """Trainable parameters: build the model and load the weights, which also checks they fit."""
    model = build_model(config, CharTokenizer.from_dict(payload["tokenizer"]).vocab_size)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise InvalidModelRequest(f"the checkpoint's weights do not fit its config: {err}") from None
    return count_parameters(model)
