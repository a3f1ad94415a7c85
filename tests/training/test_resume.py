"""Exact resume: N steps plus a resume for N more equals 2N steps in one run, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from asrlib.checkpoints import load_checkpoint
from asrlib.config import load_settings, resolve_run_config
from asrlib.training.trainer import Trainer
from tests.conftest import REPO_ROOT

# Six short clips in batches of at most 12 s give several batches per epoch, so step 7 falls in
# the middle of an epoch. Dropout and SpecAugment stay on: their randomness must resume too.
RESUME_OVERRIDES = {
    "data": {"max_clips": 6, "train_on": "all", "valid_fraction": 0.0, "test_fraction": 0.0},
    "training": {"lr": 0.001, "warmup_steps": 5, "max_batch_seconds": 12.0, "num_buckets": 2,
                 "log_every": 1, "eval_every": 0, "checkpoint_every": 7, "keep_last": 0},
}


def _config(max_steps: int, **training):
    overrides = {**RESUME_OVERRIDES, "training": {**RESUME_OVERRIDES["training"], "max_steps": max_steps, **training}}
    return resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset="tiny", overrides=overrides)


def _losses(run_dir):
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, ljspeech_mini):
    run_dir = tmp_path_factory.mktemp("resume") / "straight"
    result = Trainer(_config(14), run_dir, dataset_root=ljspeech_mini).fit()
    return run_dir, result


def test_resume_mid_epoch_is_exact(straight_run, tmp_path, ljspeech_mini):
    straight_dir, straight = straight_run
    midway = straight_dir / "ckpt-0000007.pt"
    payload = load_checkpoint(midway)
    assert 0 < payload["sampler"]["position"], "step 7 must fall inside an epoch for this test"

    resumed = Trainer(_config(14), tmp_path / "resumed", dataset_root=ljspeech_mini, resume_from=midway).fit()
    assert resumed.step == 14

    expected, actual = _losses(straight_dir), _losses(tmp_path / "resumed")
    assert sorted(actual) == list(range(8, 15))
    for step in range(8, 15):
        assert actual[step] == expected[step], f"loss differs at step {step}"
    a = load_checkpoint(straight.checkpoint)["model"]
    b = load_checkpoint(resumed.checkpoint)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), f"weights differ in {name}"


def test_resume_allows_new_learning_rate(straight_run, tmp_path, ljspeech_mini):
    straight_dir, _ = straight_run
    config = _config(9, lr=0.0005, max_batch_seconds=10.0)
    result = Trainer(config, tmp_path / "lr", dataset_root=ljspeech_mini,
                     resume_from=straight_dir / "ckpt-0000007.pt").fit()
    assert result.step == 9
    saved = load_checkpoint(result.checkpoint)
    assert saved["config"]["training"]["lr"] == 0.0005
    assert saved["config"]["training"]["max_batch_seconds"] == 10.0
    status = json.loads((tmp_path / "lr" / "status.json").read_text())
    assert status["parent"].endswith("ckpt-0000007.pt")


def test_resume_rejects_other_architecture(straight_run, tmp_path, ljspeech_mini):
    straight_dir, _ = straight_run
    config = resolve_run_config(
        load_settings(REPO_ROOT / "config.yaml"), preset="tiny",
        overrides={**RESUME_OVERRIDES, "model": {"num_layers": 2}, "text": {"charset": "abc "}},
    )
    trainer = Trainer(config, tmp_path / "bad", dataset_root=ljspeech_mini,
                      resume_from=straight_dir / "ckpt-0000007.pt")
    with pytest.raises(ValueError, match=r"model\.num_layers") as caught:
        trainer.fit()
    assert "text.charset" in str(caught.value)
    assert not list((tmp_path / "bad").glob("ckpt-*.pt"))


def test_gradient_accumulation_steps(tmp_path, ljspeech_mini):
    config = _config(2, accumulate_grad_batches=2, checkpoint_every=0)
    result = Trainer(config, tmp_path / "acc", dataset_root=ljspeech_mini).fit()
    assert result.step == 2
    sampler = load_checkpoint(result.checkpoint)["sampler"]
    # Each optimizer step consumed two batches of the first epoch.
    assert (sampler["epoch"], sampler["position"]) == (0, 4)


def test_accumulation_longer_than_epoch_rejected(tmp_path, ljspeech_mini):
    config = _config(3, accumulate_grad_batches=50)
    with pytest.raises(ValueError, match=r"fewer than training\.accumulate_grad_batches"):
        Trainer(config, tmp_path / "too-many", dataset_root=ljspeech_mini).fit()
