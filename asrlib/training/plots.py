"""Matplotlib figures of a run's curves, for the executed training notebook and for reports."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_run(run_dir: str | Path) -> plt.Figure:
    """Draw loss, learning rate and validation CER/WER against the step."""
    events = read_metrics(run_dir)
    steps = [e for e in events if e.get("event") == "step"]
    evals = [e for e in events if e.get("event") == "eval"]
    figure, (loss_ax, lr_ax, err_ax) = plt.subplots(1, 3, figsize=(14, 3.5))
    loss_ax.plot([e["step"] for e in steps], [e["loss"] for e in steps], label="train")
    if evals:
        loss_ax.plot([e["step"] for e in evals], [e["valid_loss"] for e in evals], "o-", label="valid")
    loss_ax.set(title="CTC loss per utterance", xlabel="step", yscale="log")
    loss_ax.legend()
    lr_ax.plot([e["step"] for e in steps], [e["lr"] for e in steps])
    lr_ax.set(title="learning rate", xlabel="step")
    for key in ("cer", "wer"):
        err_ax.plot([e["step"] for e in evals], [e[key] for e in evals], "o-", label=key.upper())
    err_ax.set(title="validation error rate", xlabel="step", ylim=(0, None))
    err_ax.legend()
    figure.suptitle(Path(run_dir).name)
    figure.tight_layout()
    return figure
