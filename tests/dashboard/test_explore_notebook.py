"""notebooks/explore.ipynb executes headless on the real LJSpeech clips with a trained tiny model."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import papermill

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"


def _stream_text(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
                   if output.get("output_type") == "stream")


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_explore_notebook_runs_with_model(tmp_path: Path, ljspeech_mini: Path, overfit_run):
    run_dir, _ = overfit_run
    output = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(output), cwd=str(NOTEBOOK.parent), kernel_name="python3",
                               parameters={"dataset": str(ljspeech_mini), "model": str(run_dir), "num_clips": 2},
                               progress_bar=False)
    executed = nbformat.read(output, as_version=4)
    text = _stream_text(executed)
    assert "130 clips" in text
    assert _images(executed) == 3  # durations, features, posteriors
    audio_players = sum("<audio" in output.get("data", {}).get("text/html", "")
                        for cell in executed.cells for output in cell.get("outputs", []))
    assert audio_players == 2
    cer = float(re.search(r"CER ([0-9.]+)", text).group(1))
    assert cer < 0.15, text  # the overfit model has memorised the first clips


def test_explore_notebook_runs_without_model(tmp_path: Path):
    # The repository-relative path, as the README gives it, from the notebook's own folder.
    output = tmp_path / "explore.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(output), cwd=str(NOTEBOOK.parent), kernel_name="python3",
                               parameters={"dataset": "../shared/data/ljspeech-mini", "num_clips": 1},
                               progress_bar=False)
    text = _stream_text(nbformat.read(output, as_version=4))
    assert "no model given" in text
