"""The layout of a run folder under `checkpoints/<run_id>/` and its status file."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asrlib.atomic import atomic_write_text

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESERVED_NAMES = ("models",)  # folders under checkpoints/ that are not runs
STATES = ("queued", "running", "stopping", "stopped", "completed", "failed")


def validate_run_id(run_id: str) -> str:
    """Reject ids that could escape the checkpoints folder or break a URL (`../x`, `a/b`, empty)."""
    if not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise ValueError(
            f"invalid run id {run_id!r}; use letters, digits, '.', '_' and '-' (at most 128, no '..')"
        )
    if run_id in RESERVED_NAMES:
        raise ValueError(
            f"invalid run id {run_id!r}: the name is reserved for the model registry folder; choose another")
    return run_id


def new_run_id(model_type: str, preset: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model_type}-{preset}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"


def write_status(paths: RunPaths, state: str, **fields: Any) -> dict[str, Any]:
    if state not in STATES:
        raise ValueError(f"invalid run state {state!r}")
    previous = read_status(paths) or {}
    status = {**previous, **fields, "state": state, "run_id": paths.run_id, "updated": time.time()}
    atomic_write_text(paths.status, json.dumps(status, indent=1) + "\n")
    return status


def read_status(paths: RunPaths) -> dict[str, Any] | None:
    try:
        return json.loads(paths.status.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_config(paths: RunPaths, config: dict[str, Any]) -> None:
    atomic_write_text(paths.config, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
