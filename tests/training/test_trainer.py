"""Trainer step details: the learning-rate schedule, the optimizer, non-finite steps and torch.compile."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from asrlib.checkpoints import load_checkpoint
from asrlib.config import load_settings, resolve_run_config
from asrlib.training.data import FeatureDataset
from asrlib.training.trainer import (
    Trainer,
    build_optimizer,
    load_optimizer_state,
    lr_at,
    skip_step_unless_finite,
)
from tests.conftest import REPO_ROOT

NAN_STEP = 3  # the step whose loss the test trainer turns into NaN


def test_lr_warmup_then_inverse_sqrt():
    assert lr_at(1, peak=1e-3, warmup_steps=10) == pytest.approx(1e-4)
    assert lr_at(10, peak=1e-3, warmup_steps=10) == pytest.approx(1e-3)
    assert lr_at(40, peak=1e-3, warmup_steps=10) == pytest.approx(5e-4)


def test_lr_without_warmup_is_peak():
    assert lr_at(1, peak=2e-3, warmup_steps=0) == 2e-3
    assert lr_at(1000, peak=2e-3, warmup_steps=0) == 2e-3


def _optimizer_after_one_step() -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    layer = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(layer, lr=0.1, weight_decay=0.01)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return layer, optimizer


def _snapshot(layer: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in layer.parameters()]
    for state in optimizer.state.values():
        tensors += [value.clone() for value in state.values()]
    return tensors


def _step_with_grads(layer: torch.nn.Module, optimizer: torch.optim.Optimizer, value: float) -> None:
    for parameter in layer.parameters():
        parameter.grad = torch.full_like(parameter, value)
    finite = torch.isfinite(torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0))
    skip_step_unless_finite(optimizer, finite)
    optimizer.step()


def test_finite_step_updates_everything():
    layer, optimizer = _optimizer_after_one_step()
    before = _snapshot(layer, optimizer)
    _step_with_grads(layer, optimizer, 0.5)
    after = _snapshot(layer, optimizer)
    for old, new in zip(before, after, strict=True):
        assert not torch.equal(old, new)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_step_changes_nothing(value):
    layer, optimizer = _optimizer_after_one_step()
    before = _snapshot(layer, optimizer)
    _step_with_grads(layer, optimizer, value)
    for old, new in zip(before, _snapshot(layer, optimizer), strict=True):
        assert torch.equal(old, new)


def test_unfused_optimizer_rejected():
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), foreach=True)
    with pytest.raises(TypeError, match="fused=True"):
        skip_step_unless_finite(optimizer, torch.tensor(True))


def test_unfused_state_loads_fused():
    """A state saved by an unfused AdamW keeps the optimizer fused, so skipping still works."""
    layer = torch.nn.Linear(3, 2)
    unfused = torch.optim.AdamW(layer.parameters(), foreach=False)
    layer(torch.ones(1, 3)).sum().backward()
    unfused.step()
    optimizer = build_optimizer(layer, lr=0.1, weight_decay=0.01)
    load_optimizer_state(optimizer, unfused.state_dict())
    assert all(group["fused"] for group in optimizer.param_groups)
    before = _snapshot(layer, optimizer)
    _step_with_grads(layer, optimizer, math.nan)
    for old, new in zip(before, _snapshot(layer, optimizer), strict=True):
        assert torch.equal(old, new)


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
                     "checkpoint_every": 1, "keep_last": 0},
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
    # The skipped step leaves the weights and the optimizer's moments as the step before left them.
    before = load_checkpoint(tmp_path / "run" / f"ckpt-{NAN_STEP - 1:07d}.pt")
    skipped = load_checkpoint(tmp_path / "run" / f"ckpt-{NAN_STEP:07d}.pt")
    for name, tensor in before["model"].items():
        assert torch.equal(skipped["model"][name], tensor), name
    for index, state in before["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(skipped["optimizer"]["state"][index][key], value), (index, key)


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


def test_validation_features_computed_once(tmp_path, ljspeech_mini, monkeypatch):
    """With data.cache_features, repeated evaluations reuse the validation clips' features."""
    computed = Counter()
    original = FeatureDataset._compute

    def counting(self, index, speed):
        computed[(self.utterances[index].id, speed)] += 1
        return original(self, index, speed)

    monkeypatch.setattr(FeatureDataset, "_compute", counting)
    overrides = {
        "data": {"max_clips": 8, "valid_fraction": 0.25, "test_fraction": 0.0, "cache_features": True},
        "training": {"max_steps": 3, "max_batch_seconds": 30.0, "log_every": 1, "eval_every": 1,
                     "checkpoint_every": 0, "keep_last": 0},
    }
    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset="tiny", overrides=overrides)
    trainer = Trainer(config, tmp_path / "run", dataset_root=ljspeech_mini)
    trainer.fit()
    valid_ids = json.loads((tmp_path / "run" / "split.json").read_text())["valid"]
    evaluations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "eval" for e in evaluations) == 3
    assert valid_ids
    for clip_id in valid_ids:
        assert computed[(clip_id, 1.0)] == 1, clip_id
