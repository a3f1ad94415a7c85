"""Trainer step details: the learning-rate schedule, non-finite gradients and torch.compile."""

from __future__ import annotations

import json
import math

import pytest
import torch

from asrlib.checkpoints import load_checkpoint
from asrlib.config import load_settings, resolve_run_config
from asrlib.training.trainer import Trainer, lr_at, zero_nonfinite_grads_
from tests.conftest import REPO_ROOT

NAN_STEP = 3  # the step whose loss the test trainer turns into NaN


def test_lr_warmup_then_inverse_sqrt():
    assert lr_at(1, peak=1e-3, warmup_steps=10) == pytest.approx(1e-4)
    assert lr_at(10, peak=1e-3, warmup_steps=10) == pytest.approx(1e-3)
    assert lr_at(40, peak=1e-3, warmup_steps=10) == pytest.approx(5e-4)


def test_lr_without_warmup_is_peak():
    assert lr_at(1, peak=2e-3, warmup_steps=0) == 2e-3
    assert lr_at(1000, peak=2e-3, warmup_steps=0) == 2e-3


def _parameters_with_grads() -> list[torch.nn.Parameter]:
    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(1, 3)).sum().backward()
    return list(layer.parameters())


def test_finite_gradients_kept():
    parameters = _parameters_with_grads()
    before = [p.grad.clone() for p in parameters]
    zero_nonfinite_grads_(parameters, torch.tensor(True))
    for grad, parameter in zip(before, parameters, strict=True):
        assert torch.equal(parameter.grad, grad)


def test_nonfinite_gradients_zeroed():
    parameters = _parameters_with_grads()
    parameters[0].grad[0, 0] = math.nan
    zero_nonfinite_grads_(parameters, torch.tensor(False))
    for parameter in parameters:
        assert torch.count_nonzero(parameter.grad) == 0


def test_no_gradients_accepted():
    zero_nonfinite_grads_([torch.nn.Parameter(torch.ones(2))], torch.tensor(False))


class NanLossTrainer(Trainer):
    """A Trainer whose loss is NaN at one step, as after an overflow or a corrupt clip."""

    def _loss(self, model, batch):
        loss, log_probs, lengths = super()._loss(model, batch)
        if self.step + 1 == NAN_STEP:
            loss = loss * math.nan
        return loss, log_probs, lengths


def test_nan_step_skipped_run_continues(tmp_path, ljspeech_mini):
    overrides = {
        "data": {"max_clips": 6, "train_on": "all", "valid_fraction": 0.0, "test_fraction": 0.0},
        "training": {"max_steps": 5, "max_batch_seconds": 12.0, "log_every": 1, "eval_every": 0,
                     "checkpoint_every": 0, "keep_last": 0},
    }
    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset="tiny", overrides=overrides)
    result = NanLossTrainer(config, tmp_path / "run", dataset_root=ljspeech_mini).fit()
    assert result.state == "completed"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in records if r["event"] == "step"}
    assert steps[NAN_STEP]["nonfinite_steps"] == 1
    assert steps[NAN_STEP]["grad_norm"] == 0.0
    assert sum(r["nonfinite_steps"] for r in steps.values()) == 1
    assert math.isfinite(steps[NAN_STEP + 1]["loss"])
    weights = load_checkpoint(result.checkpoint)["model"]
    for name, tensor in weights.items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name


def _step_losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "step"]


def test_compiled_model_trains_like_eager(tmp_path, ljspeech_mini):
    """torch.compile (inductor on the CPU, so a C++ compiler is needed) gives the eager losses."""
    overrides = {
        "data": {"max_clips": 4, "train_on": "all", "valid_fraction": 0.0, "test_fraction": 0.0},
        "spec_augment": {"enabled": False},
        "model": {"dropout": 0.0},
        "training": {"max_steps": 3, "max_batch_seconds": 100.0, "num_buckets": 1, "log_every": 1,
                     "eval_every": 0, "checkpoint_every": 0, "keep_last": 0},
    }
    losses = {}
    for compiled in (False, True):
        overrides["training"]["compile"] = compiled
        config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset="tiny", overrides=overrides)
        Trainer(config, tmp_path / str(compiled), dataset_root=ljspeech_mini).fit()
        losses[compiled] = _step_losses(tmp_path / str(compiled))
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
