"""Data preparation: split, exclusions with their reports, the CTC length filter and collate."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from asrlib.config import DataConfig, FeatureConfig, ModelConfig, TextConfig
from asrlib.models import ConformerCTC, subsampled_lengths
from asrlib.text import CharTokenizer
from asrlib.training.data import FeatureDataset, collate, ctc_min_frames, prepare_data

FEATURES = FeatureConfig()
REAL_IDS = ("LJ001-0002", "LJ001-0003", "LJ001-0004")  # 1.9 s, 10.0 s and 5.2 s of speech


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer(TextConfig().charset)


def _config(**changes) -> DataConfig:
    return dataclasses.replace(DataConfig(valid_fraction=0.0, test_fraction=0.0), **changes)


def _make_corpus(root: Path, source: Path, rows: dict[str, str], synthetic: dict[str, float]) -> Path:
    """Write an LJSpeech-format folder: real clips copied from `source`, plus noise clips of given seconds."""
    (root / "wavs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for clip_id, seconds in synthetic.items():
        sf.write(root / "wavs" / f"{clip_id}.wav", 0.1 * rng.standard_normal(int(seconds * 16000)), 16000,
                 subtype="PCM_16")
    for clip_id in rows:
        if clip_id not in synthetic:
            shutil.copy(source / "wavs" / f"{clip_id}.wav", root / "wavs" / f"{clip_id}.wav")
    lines = [f"{clip_id}|{text}|{text}" for clip_id, text in rows.items()]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _real_rows(ljspeech_mini: Path) -> dict[str, str]:
    rows = {}
    for line in (ljspeech_mini / "metadata.csv").read_text(encoding="utf-8").splitlines():
        clip_id, _, text = line.split("|")
        if clip_id in REAL_IDS:
            rows[clip_id] = text
    return rows


# ------------------------------------------------------------------ ctc_min_frames


@pytest.mark.parametrize(
    ("labels", "frames"),
    [((), 0), ((5,), 1), ((1, 2, 3), 3), ((1, 1), 3), ((1, 1, 1), 5), ((1, 2, 1), 3), ((4, 4, 2, 2), 6)],
)
def test_ctc_min_frames_cases(labels, frames):
    assert ctc_min_frames(labels) == frames


def test_ctc_min_frames_is_tight():
    """CTC loss is finite with exactly ctc_min_frames frames and infinite with one fewer."""
    labels = torch.tensor([[3, 3, 4, 4, 4]])
    needed = ctc_min_frames(labels[0].tolist())
    for frames, finite in ((needed, True), (needed - 1, False)):
        log_probs = torch.randn(frames, 1, 6).log_softmax(-1)
        loss = F.ctc_loss(log_probs, labels, torch.tensor([frames]), torch.tensor([5]), reduction="sum")
        assert bool(torch.isfinite(loss)) is finite, frames


# ------------------------------------------------------------------ collate


def test_collate_pads_features_and_labels():
    items = [
        {"id": "a", "features": torch.ones(5, 80), "labels": torch.tensor([1, 2, 3]), "duration": 0.5},
        {"id": "b", "features": torch.ones(8, 80) * 2, "labels": torch.tensor([4]), "duration": 0.8},
    ]
    batch = collate(items)
    assert batch.ids == ["a", "b"]
    assert batch.features.shape == (2, 8, 80)
    assert torch.equal(batch.features[0, 5:], torch.zeros(3, 80))
    assert batch.feature_lengths.tolist() == [5, 8]
    assert batch.labels.tolist() == [[1, 2, 3], [4, -1, -1]]
    assert batch.label_lengths.tolist() == [3, 1]
    assert batch.audio_seconds == pytest.approx(1.3)


# ------------------------------------------------------------------ prepare_data on real clips


def test_prepare_split_deterministic(ljspeech_mini, tokenizer):
    config = DataConfig(max_clips=40, valid_fraction=0.1, test_fraction=0.1)
    first = prepare_data(ljspeech_mini, config, FEATURES, tokenizer).split_ids()
    second = prepare_data(ljspeech_mini, config, FEATURES, tokenizer).split_ids()
    assert first == second
    assert len(first["valid"]) == 4
    assert len(first["test"]) == 4
    assert len(first["train"]) == 32


def test_prepare_split_disjoint_complete(ljspeech_mini, tokenizer):
    config = DataConfig(max_clips=40, valid_fraction=0.1, test_fraction=0.1)
    split = prepare_data(ljspeech_mini, config, FEATURES, tokenizer).split_ids()
    ids = [clip_id for name in ("train", "valid", "test") for clip_id in split[name]]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(p.stem for p in (ljspeech_mini / "wavs").glob("*.wav"))[:40]


def test_prepare_split_seed_changes_split(ljspeech_mini, tokenizer):
    config = DataConfig(max_clips=40, valid_fraction=0.1, test_fraction=0.1)
    first = prepare_data(ljspeech_mini, config, FEATURES, tokenizer).split_ids()
    other = prepare_data(ljspeech_mini, dataclasses.replace(config, split_seed=1), FEATURES, tokenizer)
    assert other.split_ids()["valid"] != first["valid"]


def test_prepare_given_split_used(ljspeech_mini, tokenizer):
    config = DataConfig(max_clips=6)
    split = {"train": ["LJ001-0001", "LJ001-0002", "missing"], "valid": ["LJ001-0003"], "test": []}
    prepared = prepare_data(ljspeech_mini, config, FEATURES, tokenizer, split=split)
    assert prepared.split_ids() == {"train": ["LJ001-0001", "LJ001-0002"], "valid": ["LJ001-0003"], "test": []}


def test_prepare_train_on_all(ljspeech_mini, tokenizer):
    config = DataConfig(max_clips=10, train_on="all", valid_fraction=0.2)
    prepared = prepare_data(ljspeech_mini, config, FEATURES, tokenizer)
    assert len(prepared.splits["train"]) == 10
    assert len(prepared.splits["valid"]) == 2


def test_prepare_utterance_labels(ljspeech_mini, tokenizer):
    prepared = prepare_data(ljspeech_mini, _config(max_clips=2), FEATURES, tokenizer)
    utterance = prepared.splits["train"][1]
    assert utterance.id == "LJ001-0002"
    assert utterance.text == "in being comparatively modern"
    assert tokenizer.decode(utterance.labels) == utterance.text
    assert utterance.duration == pytest.approx(1.9, abs=0.05)


def test_estimated_frames_not_above_actual(ljspeech_mini, tokenizer):
    """The CTC filter estimates frames from the duration; the estimate must not exceed the real count."""
    prepared = prepare_data(ljspeech_mini, _config(max_clips=5), FEATURES, tokenizer)
    dataset = FeatureDataset(prepared.splits["train"], FEATURES)
    for index, utterance in enumerate(prepared.splits["train"]):
        estimated = dataset.extractor.num_frames(int(utterance.duration * FEATURES.sample_rate))
        actual = dataset.features(index).shape[0]
        assert estimated <= actual, utterance.id
        assert actual - estimated <= 1, utterance.id


# ------------------------------------------------------------------ exclusions


def test_oov_clip_excluded_and_reported(tmp_path, ljspeech_mini, tokenizer):
    rows = _real_rows(ljspeech_mini)
    rows["LJ001-0003"] = "For although the Chinese took impressions in 1850 at the café"
    root = _make_corpus(tmp_path / "corpus", ljspeech_mini, rows, {})
    prepared = prepare_data(root, _config(), FEATURES, tokenizer)
    report = prepared.summary()
    assert prepared.excluded["outside vocabulary"] == ["LJ001-0003"]
    assert "LJ001-0003" not in prepared.split_ids()["train"]
    assert report["oov"]["clips"] == ["LJ001-0003"]
    assert report["oov"]["characters"]["é"]["examples"] == ["LJ001-0003"]
    assert report["oov"]["characters"]["5"]["count"] == 1


def test_short_clip_excluded_ctc_finite(tmp_path, ljspeech_mini, tokenizer):
    rows = _real_rows(ljspeech_mini)
    rows["SHORT-0001"] = "a transcript far too long for a third of a second of audio"
    root = _make_corpus(tmp_path / "corpus", ljspeech_mini, rows, {"SHORT-0001": 0.35})
    prepared = prepare_data(root, _config(), FEATURES, tokenizer)
    assert prepared.excluded["too short for CTC"] == ["SHORT-0001"]
    assert prepared.summary()["excluded"] == {"too short for CTC": ["SHORT-0001"]}
    assert sorted(prepared.split_ids()["train"]) == sorted(REAL_IDS)

    torch.manual_seed(0)
    model = ConformerCTC(ModelConfig(d_model=64, num_layers=1, num_heads=4, ffn_dim=128, subsampling_channels=16),
                         num_mel_bins=FEATURES.num_mel_bins, vocab_size=tokenizer.vocab_size).eval()
    dataset = FeatureDataset(prepared.splits["train"], FEATURES)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        log_probs, lengths = model(batch.features, batch.feature_lengths)
        losses = F.ctc_loss(log_probs.transpose(0, 1), batch.labels.clamp_min(0), lengths, batch.label_lengths,
                            reduction="none")
    assert torch.isfinite(losses).all(), losses


def test_short_clip_would_give_infinite_loss(tmp_path, tokenizer):
    """The excluded clip really is too short: its CTC loss would be infinite."""
    text = "a transcript far too long for a third of a second of audio"
    samples = int(0.35 * FEATURES.sample_rate)
    frames = int(subsampled_lengths(torch.tensor(1 + (samples - 400) // 160)))
    labels = torch.tensor([tokenizer.encode(text)])
    log_probs = torch.randn(frames, 1, tokenizer.vocab_size).log_softmax(-1)
    loss = F.ctc_loss(log_probs, labels, torch.tensor([frames]), torch.tensor([labels.shape[1]]))
    assert frames < ctc_min_frames(labels[0].tolist())
    assert torch.isinf(loss)


def test_too_short_duration_excluded(tmp_path, ljspeech_mini, tokenizer):
    rows = _real_rows(ljspeech_mini)
    rows["TINY-0001"] = "a"
    root = _make_corpus(tmp_path / "corpus", ljspeech_mini, rows, {"TINY-0001": 0.2})
    prepared = prepare_data(root, _config(min_duration=0.3), FEATURES, tokenizer)
    assert prepared.excluded["too short"] == ["TINY-0001"]


def test_too_long_duration_excluded(ljspeech_mini, tokenizer):
    prepared = prepare_data(ljspeech_mini, _config(max_clips=5, max_duration=9.0), FEATURES, tokenizer)
    assert prepared.excluded["too long"] == ["LJ001-0001", "LJ001-0003"]  # 9.66 s and 10.04 s


def test_missing_audio_reported(tmp_path, ljspeech_mini, tokenizer):
    rows = _real_rows(ljspeech_mini)
    root = _make_corpus(tmp_path / "corpus", ljspeech_mini, rows, {})
    (root / "wavs" / "LJ001-0004.wav").unlink()
    prepared = prepare_data(root, _config(), FEATURES, tokenizer)
    assert [p.clip_id for p in prepared.problems] == ["LJ001-0004"]
    assert "audio file missing" in prepared.summary()["problems"][0]
    assert "LJ001-0004" not in prepared.split_ids()["train"]


def test_no_usable_clips_rejected(tmp_path, ljspeech_mini, tokenizer):
    root = _make_corpus(tmp_path / "corpus", ljspeech_mini, {"LJ001-0002": "in 1850"}, {})
    with pytest.raises(ValueError, match="no usable clips"):
        prepare_data(root, _config(), FEATURES, tokenizer)
