"""End to end on real speech: train `tiny` on ten LJSpeech clips, then transcribe in a new process."""

from __future__ import annotations

import json
import subprocess
import sys

from asrlib.datasets.ljspeech import read_metadata
from asrlib.decoding import error_rates
from asrlib.inference import Recognizer
from asrlib.text import normalize_text


def _first_clips(root, n=10):
    return sorted(read_metadata(root).clips, key=lambda c: c.id)[:n]


def test_overfit_reaches_low_cer(overfit_run, ljspeech_mini):
    _, result = overfit_run
    assert result.state == "completed"
    assert result.step == 300
    clips = _first_clips(ljspeech_mini)
    recognizer = Recognizer.from_checkpoint(result.checkpoint)
    hypotheses = [t.text for t in recognizer.transcribe([str(c.audio_path) for c in clips])]
    rates = error_rates([normalize_text(c.text) for c in clips], hypotheses)
    assert rates.cer <= 0.05, f"CER {rates.cer:.3f}: {hypotheses}"


def test_transcribe_cli_matches_in_process(overfit_run, ljspeech_mini):
    _, result = overfit_run
    clips = _first_clips(ljspeech_mini)
    files = [str(c.audio_path) for c in clips]
    expected = [t.text for t in Recognizer.from_checkpoint(result.checkpoint).transcribe(files)]

    proc = subprocess.run(
        [sys.executable, "-m", "asrlib.cli", "transcribe", str(result.checkpoint), *files, "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["source"] for p in printed] == files
    assert [p["text"] for p in printed] == expected
    assert all(p["rtf"] > 0 for p in printed)
    assert "RTF" in proc.stderr


def test_run_folder_contents(overfit_run):
    run_dir, _ = overfit_run
    for name in ("config.yaml", "metrics.jsonl", "split.json", "tokenizer.json", "status.json", "train.log"):
        assert (run_dir / name).is_file(), name
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["loss"] > 10 * steps[-1]["loss"]
    for key in ("loss", "lr", "grad_norm", "audio_seconds_per_second", "data_wait_share", "padding_share"):
        assert key in steps[-1]
    assert events[-1]["event"] == "completed"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert all(e["run_id"] == run_dir.name for e in events)
    assert f"[{run_dir.name}]" in (run_dir / "train.log").read_text()
