"""The synthetic espeak-ng demo dataset and its sentence generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asrlib.audio import audio_info
from asrlib.datasets.demo import DEMO_VOCABULARY, demo_sentences, make_demo_dataset
from asrlib.datasets.manager import DatasetManager


def test_demo_sentences_deterministic_and_distinct() -> None:
    sentences = demo_sentences(200, seed=3)

    assert sentences == demo_sentences(200, seed=3)
    assert sentences != demo_sentences(200, seed=4)
    assert len(set(sentences)) == 200
    assert all(set(s.split()) <= set(DEMO_VOCABULARY) for s in sentences)
    assert all(3 <= len(s.split()) <= 8 for s in sentences)


def test_demo_sentences_exclude_gives_held_out() -> None:
    train = demo_sentences(100, seed=0)

    held_out = demo_sentences(20, seed=1, exclude=train)

    assert len(held_out) == 20
    assert set(held_out).isdisjoint(train)


def test_demo_dataset_layout_and_label(tmp_path: Path) -> None:
    dest = make_demo_dataset(tmp_path / "demo", num_sentences=8, seed=0)

    lines = (dest / "metadata.csv").read_text().splitlines()
    description = json.loads((dest / "dataset.json").read_text())
    assert len(lines) == 8
    assert lines[0] == f"DEMO-0001|{demo_sentences(8, 0)[0]}|{demo_sentences(8, 0)[0]}"
    assert description["synthetic"] is True
    assert description["generator"].startswith("eSpeak NG")
    assert {clip["voice"] for clip in description["clips"]} == {"en-us", "en"}
    assert len({clip["rate_wpm"] for clip in description["clips"]}) > 1
    assert "synthetic speech, not recorded speech" in (dest / "SOURCE.md").read_text()
    for line in lines:
        info = audio_info(dest / "wavs" / f"{line.split('|')[0]}.wav")
        assert info.sample_rate == 22050
        assert info.channels == 1
        assert 0.5 < info.duration < 6.0


def test_demo_dataset_same_seed_same_audio(tmp_path: Path) -> None:
    first = make_demo_dataset(tmp_path / "a", num_sentences=4, seed=7)
    second = make_demo_dataset(tmp_path / "b", num_sentences=4, seed=7)

    assert (first / "metadata.csv").read_bytes() == (second / "metadata.csv").read_bytes()
    for wav in sorted((first / "wavs").iterdir()):
        assert wav.read_bytes() == (second / "wavs" / wav.name).read_bytes()


def test_demo_listed_as_synthetic(tmp_path: Path, make_catalog_settings: Any, ljspeech_archive: Any) -> None:
    manager = DatasetManager(make_catalog_settings(tmp_path, "http://127.0.0.1:9/unused", ljspeech_archive))

    path = manager.make_demo(num_sentences=12, seed=0)

    status = manager.status("demo")
    assert status.present
    assert status.synthetic
    assert status.clips == 12
    assert (path / "split.json").is_file()
    with pytest.raises(ValueError, match="synthetic and has no download"):
        manager.download("demo")
