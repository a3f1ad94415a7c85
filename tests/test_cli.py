"""The `asr` command as a user runs it: a new process, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import soundfile as sf

from tests.conftest import SHARED_DATA


def run_asr(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asrlib.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_commands():
    proc = run_asr("--help")
    assert proc.returncode == 0
    for command in ("train", "transcribe", "evaluate"):
        assert command in proc.stdout
    for command in ("train", "transcribe", "evaluate"):
        assert run_asr(command, "--help").returncode == 0


def test_transcribe_every_shared_clip(overfit_run):
    _, result = overfit_run
    files = sorted(str(p) for p in SHARED_DATA.glob("*/wavs/*.wav"))
    assert len(files) == 730
    proc = run_asr("transcribe", str(result.checkpoint), *files, "--json", "--batch-size", "16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["source"] for p in printed] == files
    assert all(p["error"] is None for p in printed)
    # The model memorised ten LJSpeech clips, so some transcript comes out for each real clip.
    lj = [p for p in printed if "ljspeech-mini" in p["source"]]
    assert all(p["text"].strip() for p in lj)


def _bad_files(tmp_path):
    rate = 16000
    speech, _ = sf.read(str(SHARED_DATA / "ljspeech-mini" / "wavs" / "LJ001-0002.wav"), dtype="int16")
    good = tmp_path / "good.wav"
    sf.write(good, speech, 22050, subtype="PCM_16")

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is a text file, not audio\n")
    html = tmp_path / "page.flac"
    html.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(int(0.02 * rate), dtype=np.float32), rate)
    missing = tmp_path / "missing.wav"
    return good, {
        empty: "empty",
        text: "not a recognised audio format",
        html: "not a recognised audio format",
        truncated: "truncated",
        short: "too short",
        missing: "not found",
    }


def test_transcribe_bad_files_reported(overfit_run, tmp_path):
    _, result = overfit_run
    good, bad = _bad_files(tmp_path)
    proc = run_asr("transcribe", str(result.checkpoint), str(good), *map(str, bad))
    assert proc.returncode == 1
    assert proc.stdout.count("\n") == 1
    assert proc.stdout.startswith(str(good))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    for path, reason in bad.items():
        line = next((e for e in errors if str(path) in e), None)
        assert line is not None, f"no error line names {path}"
        assert reason in line.lower(), line


def test_transcribe_unknown_model(tmp_path):
    proc = run_asr("transcribe", str(tmp_path / "nope.pt"), str(tmp_path / "a.wav"))
    assert proc.returncode == 2
    assert "model not found" in proc.stderr


def test_train_rejects_unknown_override(tmp_path):
    proc = run_asr("train", "--preset", "tiny", "--dataset", str(SHARED_DATA / "ljspeech-mini"),
                   "--checkpoints", str(tmp_path), "--set", "training.lrr=1")
    assert proc.returncode == 2
    assert "training.lrr" in proc.stderr
