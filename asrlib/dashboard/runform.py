"""The Training tab's new-run form as a value, and the `AsrClient.start_run` arguments it stands for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from asrlib.dashboard.errors import FormError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # as asrlib.training.runs.RUN_ID_PATTERN


@dataclass(frozen=True)
class RunForm:
    model_type: str
    dataset: str | None
    preset: str
    max_steps: int
    lr: float
    warmup_steps: int
    max_batch_seconds: float
    eval_every: int
    checkpoint_every: int
    log_every: int
    precision: str
    device: str
    max_clips: int = 0  # 0 uses every clip
    run_name: str = ""

    def to_request(self) -> dict[str, Any]:
        """Return the keyword arguments of `AsrClient.start_run`; FormError names the first invalid field."""
        if not self.dataset:
            raise FormError("training.error.no_dataset")
        checks = (("max_steps", self.max_steps, 1), ("log_every", self.log_every, 1),
                  ("warmup_steps", self.warmup_steps, 0), ("eval_every", self.eval_every, 0),
                  ("checkpoint_every", self.checkpoint_every, 0), ("max_clips", self.max_clips, 0))
        for name, value, minimum in checks:
            if value < minimum:
                raise FormError("training.error.too_small", field=name, minimum=minimum)
        if not self.lr > 0:
            raise FormError("training.error.positive", field="lr")
        if not self.max_batch_seconds > 0:
            raise FormError("training.error.positive", field="max_batch_seconds")
        name = self.run_name.strip()
        if name and (not RUN_NAME.match(name) or ".." in name):
            raise FormError("training.error.run_name", name=name)
        overrides: dict[str, Any] = {
            "training.max_steps": self.max_steps,
            "training.lr": self.lr,
            "training.warmup_steps": self.warmup_steps,
            "training.max_batch_seconds": self.max_batch_seconds,
            "training.eval_every": self.eval_every,
            "training.checkpoint_every": self.checkpoint_every,
            "training.log_every": self.log_every,
            "training.precision": self.precision,
            "training.device": self.device,
        }
        if self.max_clips:
            overrides["data.max_clips"] = self.max_clips
        return {"model_type": self.model_type, "dataset": self.dataset, "preset": self.preset,
                "overrides": overrides, "run_id": name or None}


def resume_request(run: dict[str, Any], checkpoint: str, max_steps: int | None) -> dict[str, Any]:
    """Return `start_run` arguments that continue `run` (a RunResponse dict) from one of its checkpoints.

    The model type must be the checkpoint's; a larger `max_steps` extends the training.
    """
    overrides = {"training.max_steps": max_steps} if max_steps else {}
    return {"model_type": run.get("model_type") or "conformer",
            "resume_from": {"run_id": run["run_id"], "checkpoint": checkpoint}, "overrides": overrides}
