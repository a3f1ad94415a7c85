"""Features on disk and speed perturbation: FeatureDataset's cache, precompute_features, `asr features`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asrlib.config import REPO_ROOT, FeatureConfig
from asrlib.training.data import SPEED_FACTORS, FeatureDataset, Utterance, precompute_features, speed_factor

FEATURES = FeatureConfig()
CLIP_IDS = ("LJ001-0002", "LJ001-0004", "LJ001-0005")


@pytest.fixture
def utterances(tmp_path: Path, ljspeech_mini: Path) -> list[Utterance]:
    """Three real clips, copied so that a test may touch or rewrite them."""
    folder = tmp_path / "wavs"
    folder.mkdir()
    clips = []
    for clip_id in CLIP_IDS:
        path = shutil.copy(ljspeech_mini / "wavs" / f"{clip_id}.wav", folder)
        clips.append(Utterance(clip_id, Path(path), "text", (1, 2, 3), 1.0))
    return clips


def _cache_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.pt"))


def test_disk_cache_matches_computed(utterances, tmp_path):
    cached = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    plain = FeatureDataset(utterances, FEATURES)
    first = [cached.features(index) for index in range(3)]
    assert len(_cache_files(tmp_path / "cache")) == 3
    for index in range(3):
        assert cached.is_cached(index)
        assert torch.equal(first[index], plain.features(index))
        assert torch.equal(cached.features(index), first[index])


def test_disk_cache_read_not_recomputed(utterances, tmp_path, monkeypatch):
    dataset = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    expected = dataset.features(0)

    def fail(*args):
        raise AssertionError("features were recomputed although they are cached on disk")

    reader = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(reader, "_compute", fail)
    assert torch.equal(reader.features(0), expected)


def test_disk_cache_invalid_after_audio_change(utterances, tmp_path):
    dataset = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    dataset.features(0)
    stat = utterances[0].audio_path.stat()
    os.utime(utterances[0].audio_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not dataset.is_cached(0)
    dataset.features(0)
    assert len(_cache_files(tmp_path / "cache")) == 2


def test_disk_cache_keyed_by_settings(utterances, tmp_path):
    FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache").features(0)
    other = FeatureDataset(utterances, FeatureConfig(num_mel_bins=40), cache_dir=tmp_path / "cache")
    assert not other.is_cached(0)
    assert other.features(0).shape[1] == 40


def test_damaged_cache_file_recomputed(utterances, tmp_path, caplog):
    dataset = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    expected = dataset.features(1)
    (damaged,) = _cache_files(tmp_path / "cache")
    damaged.write_bytes(b"not a tensor")
    with caplog.at_level(logging.WARNING, logger="asrlib.training.data"):
        features = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache").features(1)
    assert torch.equal(features, expected)
    assert str(damaged) in caplog.text


@pytest.mark.parametrize("content", [{"features": torch.zeros(3, 80)}, torch.zeros(5, 7), torch.zeros(4, 80).long()])
def test_foreign_cache_entry_recomputed(utterances, tmp_path, caplog, content):
    dataset = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    expected = dataset.features(0)
    (entry,) = _cache_files(tmp_path / "cache")
    torch.save(content, entry)
    with caplog.at_level(logging.WARNING, logger="asrlib.training.data"):
        features, computed = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache").load_or_compute(0)
    assert computed
    assert torch.equal(features, expected)
    assert str(entry) in caplog.text
    assert "computing the features again" in caplog.text
    assert torch.equal(torch.load(entry, weights_only=True), expected)


def test_unwritable_cache_warns_once(utterances, caplog):
    """A cache folder that cannot be created (here under /proc) costs the cache, not the run."""
    dataset = FeatureDataset(utterances, FEATURES, cache_dir="/proc/asr-feature-cache")
    with caplog.at_level(logging.WARNING, logger="asrlib.training.data"):
        for index in range(3):
            assert dataset.features(index).shape[1] == FEATURES.num_mel_bins
    assert caplog.text.count("cannot store features") == 1
    assert not dataset.is_cached(0)


def test_relative_cache_dir_from_repository():
    dataset = FeatureDataset([], FEATURES, cache_dir="data/feature-cache")
    assert dataset.cache_dir == REPO_ROOT / "data" / "feature-cache"


# ------------------------------------------------------------------ speed perturbation


def test_speed_factor_fixed_per_clip_and_epoch():
    draws = [speed_factor(0, epoch, index) for epoch in range(20) for index in range(20)]
    assert draws == [speed_factor(0, epoch, index) for epoch in range(20) for index in range(20)]
    assert set(draws) == set(SPEED_FACTORS)
    assert draws != [speed_factor(1, epoch, index) for epoch in range(20) for index in range(20)]


def test_speed_changes_frames_and_duration(utterances):
    dataset = FeatureDataset(utterances, FEATURES, speed_perturb=True, seed=0)
    normal = dataset.features(1).shape[0]
    for speed in (0.9, 1.1):
        frames = dataset.features(1, speed).shape[0]
        assert frames == pytest.approx(normal / speed, rel=0.01)
    epoch = next(e for e in range(50) if speed_factor(0, e, 1) != 1.0)
    item = dataset[(1, epoch, 3)]
    speed = speed_factor(0, epoch, 1)
    assert item["duration"] == pytest.approx(1.0 / speed)
    assert torch.equal(item["features"], dataset.features(1, speed))


def test_speed_one_without_perturbation(utterances):
    off = FeatureDataset(utterances, FEATURES, speed_perturb=False)
    on = FeatureDataset(utterances, FEATURES, speed_perturb=True)
    normal = off.features(2)
    assert torch.equal(off[(2, 5, 3)]["features"], normal)
    assert torch.equal(on[2]["features"], normal)


# ------------------------------------------------------------------ precompute_features


def test_precompute_fills_then_reuses(utterances, tmp_path):
    dataset = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    done = []
    first = precompute_features(dataset, speeds=SPEED_FACTORS, on_entry=lambda: done.append(1))
    assert first.entries == 9
    assert first.computed == 9
    assert len(done) == 9
    assert len(_cache_files(tmp_path / "cache")) == 9
    again = precompute_features(dataset, speeds=SPEED_FACTORS)
    assert again.computed == 0
    assert again.frames == first.frames
    assert all(dataset.is_cached(index, speed) for index in range(3) for speed in SPEED_FACTORS)


def test_precompute_workers_write_same_cache(utterances, tmp_path):
    serial = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "serial")
    parallel = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "parallel")
    precompute_features(serial)
    fill = precompute_features(parallel, num_workers=2)
    assert fill.computed == 3
    names = [p.relative_to(tmp_path / "serial") for p in _cache_files(tmp_path / "serial")]
    assert names == [p.relative_to(tmp_path / "parallel") for p in _cache_files(tmp_path / "parallel")]
    for index in range(3):
        assert torch.equal(serial.features(index), parallel.features(index))


def test_precompute_counts_recomputed_entry(utterances, tmp_path):
    dataset = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / "cache")
    precompute_features(dataset)
    _cache_files(tmp_path / "cache")[0].write_bytes(b"junk")
    assert precompute_features(dataset).computed == 1


@pytest.mark.parametrize("folder", ["file", "/proc/asr-feature-cache"])
def test_precompute_unwritable_cache_rejected(utterances, tmp_path, folder):
    (tmp_path / "file").write_text("not a folder")
    dataset = FeatureDataset(utterances, FEATURES, cache_dir=tmp_path / folder)
    with pytest.raises(ValueError, match="cannot store features in") as caught:
        precompute_features(dataset)
    assert str(dataset.cache_dir) in str(caught.value)


def test_precompute_without_cache_dir_rejected(utterances):
    with pytest.raises(ValueError, match="feature_cache_dir"):
        precompute_features(FeatureDataset(utterances, FEATURES))


# ------------------------------------------------------------------ asr features


def _asr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asrlib.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_features_read_by_training(ljspeech_mini, tmp_path):
    cache = tmp_path / "cache"
    options = ("--dataset", str(ljspeech_mini), "--preset", "tiny", "--set", "data.max_clips=6",
               "--set", "data.speed_perturb=true", "--cache-dir", str(cache), "-q")
    proc = _asr("features", *options)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["speeds"] == list(SPEED_FACTORS)
    assert report["entries"] == 3 * report["clips"]
    assert report["computed"] == report["entries"]
    assert len(_cache_files(cache)) == report["entries"]
    assert f"--set data.feature_cache_dir={cache} --set data.speed_perturb=true" in proc.stderr
    again = json.loads(_asr("features", *options).stdout)
    assert again["computed"] == 0
    train = _asr("train", "--dataset", str(ljspeech_mini), "--preset", "tiny", "--set", "data.max_clips=6",
                 "--set", "data.speed_perturb=true", "--set", f"data.feature_cache_dir={cache}",
                 "--set", "training.max_steps=1", "--checkpoints", str(tmp_path / "runs"), "--run-id", "cached")
    assert train.returncode == 0, train.stderr
    log = (tmp_path / "runs" / "cached" / "train.log").read_text(encoding="utf-8")
    clips = report["clips"]
    assert f"feature cache {cache} has {3 * clips} of {3 * clips} entries ({clips} training clips" in log


def test_cli_features_needs_cache_dir(ljspeech_mini):
    proc = _asr("features", "--dataset", str(ljspeech_mini), "-q")
    assert proc.returncode == 2
    assert "--cache-dir" in proc.stderr
    assert proc.stderr.count("missing feature cache folder") == 1


def test_cli_features_rejects_bad_values(ljspeech_mini, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    workers = _asr("features", "--dataset", str(ljspeech_mini), "--cache-dir", str(tmp_path), "--workers", "-1")
    assert workers.returncode == 2
    assert "--workers: invalid value -1" in workers.stderr
    text = _asr("features", "--dataset", str(ljspeech_mini), "--cache-dir", str(tmp_path), "--workers", "two")
    assert text.returncode == 2
    assert "--workers: invalid integer 'two'" in text.stderr
    file = _asr("features", "--dataset", str(ljspeech_mini), "--set", "data.max_clips=2",
                "--cache-dir", str(tmp_path / "file"), "--workers", "2", "-q")
    assert file.returncode == 2
    assert "exists and is not a folder" in file.stderr
    assert "Traceback" not in file.stderr


def test_training_rejects_file_as_cache(ljspeech_mini, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    train = _asr("train", "--dataset", str(ljspeech_mini), "--preset", "tiny", "--set", "data.max_clips=6",
                 "--set", f"data.feature_cache_dir={tmp_path / 'file'}", "--checkpoints", str(tmp_path / "runs"))
    assert train.returncode == 2
    assert "data.feature_cache_dir" in train.stderr
    assert "is not a folder" in train.stderr
