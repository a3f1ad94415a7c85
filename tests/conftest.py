"""Shared fixtures: the real LJSpeech and FSDD clips in ../shared/data, and small trained models."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LJSPEECH_MINI = SHARED_DATA / "ljspeech-mini"
FSDD_MINI = SHARED_DATA / "fsdd-mini"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not LJSPEECH_MINI.is_dir():
        pytest.fail(f"real clips not found at {SHARED_DATA}; the tests read ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ljspeech_mini(shared_data: Path) -> Path:
    return LJSPEECH_MINI


# Settings that make `tiny` memorise ten real clips within a few hundred steps on two CPU cores:
# no SpecAugment, every clip in training, features cached in memory.
OVERFIT_OVERRIDES = {
    "data": {"max_clips": 10, "train_on": "all", "valid_fraction": 0.0, "test_fraction": 0.0,
             "cache_features": True},
    "spec_augment": {"enabled": False},
    "training": {"max_steps": 300, "lr": 0.002, "warmup_steps": 40, "max_batch_seconds": 40.0,
                 "log_every": 25, "eval_every": 0, "checkpoint_every": 100, "keep_last": 0},
}


def train_tiny(run_dir: Path, dataset_root: Path, overrides: dict, *, model_type: str = "conformer"):
    """Train a `tiny` model with the repository's config.yaml plus `overrides`; return the TrainResult."""
    from asrlib.config import load_settings, resolve_run_config
    from asrlib.training.trainer import Trainer

    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), model_type=model_type, preset="tiny",
                                overrides=overrides)
    return Trainer(config, run_dir, dataset_root=dataset_root).fit()


@pytest.fixture(scope="session")
def overfit_run(tmp_path_factory: pytest.TempPathFactory, ljspeech_mini: Path):
    """A `tiny` Conformer-CTC trained until it reproduces the first ten LJSpeech clips."""
    run_dir = tmp_path_factory.mktemp("runs") / "overfit"
    result = train_tiny(run_dir, ljspeech_mini, OVERFIT_OVERRIDES)
    return run_dir, result
