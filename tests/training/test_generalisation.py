"""Generalisation: train `tiny` on espeak-ng speech and recognise sentences it never heard."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asrlib.datasets.demo import make_demo_dataset
from tests.conftest import train_tiny

pytestmark = pytest.mark.slow

# 400 sentences at varied rate and pitch, about 14 minutes of audio; 10 % held out for validation
# and 10 % as a test split that training never sees.
GENERALISATION_OVERRIDES = {
    "data": {"valid_fraction": 0.1, "test_fraction": 0.1, "cache_features": True},
    "training": {"max_steps": 600, "lr": 0.002, "warmup_steps": 60, "max_batch_seconds": 60.0,
                 "log_every": 50, "eval_every": 200, "checkpoint_every": 200, "keep_last": 1},
}


def test_held_out_sentences_cer(tmp_path):
    corpus = make_demo_dataset(tmp_path / "demo", num_sentences=400, seed=0)
    result = train_tiny(tmp_path / "run", corpus, GENERALISATION_OVERRIDES)
    assert result.state == "completed"

    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert set(split["test"]).isdisjoint(split["train"])
    texts = dict(line.split("|")[:2] for line in (corpus / "metadata.csv").read_text().splitlines())
    train_texts = {texts[i] for i in split["train"]}
    assert all(texts[i] not in train_texts for i in split["test"])

    proc = subprocess.run(
        [sys.executable, "-m", "asrlib.cli", "evaluate", str(result.checkpoint), "--dataset", str(corpus),
         "--split", "test"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout.splitlines()[0])
    assert scores["clips"] == len(split["test"])
    assert scores["cer"] <= 0.05, scores
