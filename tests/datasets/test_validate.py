"""Validation reports of a downloaded dataset and of a damaged copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asrlib.audio import audio_info
from asrlib.datasets.ljspeech import load_split
from asrlib.datasets.validate import ValidationOptions, validate_dataset

CHARSET = "abcdefghijklmnopqrstuvwxyz' "


def test_downloaded_dataset_validated(downloaded_ljspeech_subset: Path, ljspeech_archive: Any) -> None:
    root = downloaded_ljspeech_subset
    saved = json.loads((root / "validation.json").read_text())
    split = load_split(root / "split.json")
    clips = len(ljspeech_archive.clip_ids)
    seconds = sum(audio_info(root / "wavs" / f"{i}.wav").duration for i in ljspeech_archive.clip_ids)

    assert saved["num_clips"] == clips
    assert saved["metadata_entries"] == clips
    assert abs(saved["total_hours"] - seconds / 3600) < 1e-9
    assert sum(b["count"] for b in saved["duration_histogram"]) == clips
    assert saved["sample_rates"] == {"22050": clips}
    assert saved["channels"] == {"1": clips}
    assert saved["missing"] == []
    assert saved["corrupt"] == []
    assert saved["silent"] == []
    assert saved["metadata_problems"] == []
    assert saved["split"]["counts"] == {name: len(ids) for name, ids in split.items()}
    assert sorted(split["train"] + split["valid"] + split["test"]) == sorted(ljspeech_archive.clip_ids)
    assert len(split["valid"]) == 2
    assert len(split["test"]) == 2


def test_damaged_dataset_problems_listed(tmp_path: Path, downloaded_ljspeech_subset: Path) -> None:
    root = tmp_path / "damaged"
    shutil.copytree(downloaded_ljspeech_subset, root)
    lines = (root / "metadata.csv").read_text(encoding="utf-8").splitlines()
    ids = [line.split("|", 1)[0] for line in lines]
    (root / "wavs" / f"{ids[0]}.wav").unlink()
    (root / "wavs" / f"{ids[1]}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(root / "wavs" / f"{ids[2]}.wav", np.zeros(22050, dtype=np.float32), 22050, subtype="PCM_16")
    sf.write(root / "wavs" / f"{ids[3]}.wav", np.full(22050, 1e-4, dtype=np.float32), 22050, subtype="PCM_16")
    shutil.copy(root / "wavs" / f"{ids[5]}.wav", root / "wavs" / "EXTRA-0001.wav")
    lines[4] = f"{ids[4]}|Caf\u00e9 in 1884|Caf\u00e9 in 1884"
    lines.insert(6, "a line without separators")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    report = validate_dataset(root, charset=CHARSET, split_seed=0, valid_fraction=0.1, test_fraction=0.1,
                              options=ValidationOptions(num_workers=1, min_duration_s=2.0, max_duration_s=8.0))

    assert report.missing == [ids[0]]
    assert [c["id"] for c in report.corrupt] == [ids[1]]
    assert [c["id"] for c in report.silent] == [ids[2], ids[3]]
    assert report.silent[0]["peak_dbfs"] == -120.0
    assert report.metadata_problems == [
        {"line": 7, "clip_id": None, "reason": "expected 3 fields separated by '|', found 1"}
    ]
    assert report.unlisted_audio == ["EXTRA-0001.wav"]
    oov = report.out_of_vocabulary["characters"]
    assert set(oov) == {"\u00e9", "1", "8", "4"}
    assert oov["\u00e9"]["examples"] == [ids[4]]
    assert oov["8"]["count"] == 2
    assert report.num_clips == len(ids) - 4
    assert not report.ok
    split_ids = {i for ids in load_split(root / "split.json").values() for i in ids}
    assert split_ids.isdisjoint({ids[0], ids[1], ids[2], ids[3]})
    assert len(split_ids) == report.num_clips
    durations = {i: audio_info(root / "wavs" / f"{i}.wav").duration for i in split_ids}
    assert report.too_short == sorted(i for i, d in durations.items() if d < 2.0)
    assert report.too_long == sorted(i for i, d in durations.items() if d > 8.0)
    assert json.loads((root / "validation.json").read_text()) == report.to_dict()
    assert "missing: 1, corrupt: 1, silent: 2" in report.summary()


def test_validate_without_saving(tmp_path: Path, downloaded_ljspeech_subset: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(downloaded_ljspeech_subset, root)
    (root / "validation.json").unlink()
    (root / "split.json").unlink()

    report = validate_dataset(root, charset=CHARSET, split_seed=0, valid_fraction=0.1, test_fraction=0.1,
                              save=False)

    assert report.ok
    assert not (root / "validation.json").exists()
    assert not (root / "split.json").exists()
