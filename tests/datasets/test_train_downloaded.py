"""A dataset downloaded over HTTP, extracted and validated is one the trainer can use."""

from __future__ import annotations

import json

from asrlib import checkpoints as ckpt
from tests.conftest import train_tiny


def test_trainer_runs_on_downloaded_dataset(downloaded_ljspeech_subset, tmp_path):
    report = json.loads((downloaded_ljspeech_subset / "validation.json").read_text())
    assert report["num_clips"] > 0

    result = train_tiny(tmp_path / "run", downloaded_ljspeech_subset, {
        "data": {"valid_fraction": 0.1, "test_fraction": 0.1},
        "training": {"max_steps": 4, "log_every": 1, "eval_every": 0, "max_batch_seconds": 30.0},
    })
    assert result.state == "completed"
    assert ckpt.read_info(result.checkpoint).valid
    summary = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert sum(summary["clips"].values()) == report["num_clips"]
