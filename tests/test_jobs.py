"""The job manager with real training processes: stop, resume, limits, restarts and crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asrlib import checkpoints as ckpt
from asrlib.config import load_settings
from asrlib.jobs import Conflict, InvalidRequest, JobManager, JobSpec, NotFound
from asrlib.training.runs import RunPaths, read_status, write_status
from tests.conftest import LJSPEECH_MINI, REPO_ROOT

SMALL_RUN = {"data.max_clips": 6, "data.valid_fraction": 0.0, "data.test_fraction": 0.0,
             "training.max_batch_seconds": 20.0, "training.log_every": 1, "training.eval_every": 0,
             "training.warmup_steps": 5}


def _spec(max_steps: int, **extra) -> JobSpec:
    overrides = {**SMALL_RUN, "training.max_steps": max_steps, **extra.pop("overrides", {})}
    return JobSpec(preset="tiny", dataset=str(LJSPEECH_MINI), overrides=overrides, **extra)


def _manager(root: Path, **kwargs) -> JobManager:
    return JobManager(load_settings(REPO_ROOT / "config.yaml"), checkpoints_root=root, **kwargs)


def _wait_for(predicate, timeout_s: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _step_events(manager: JobManager, run_id: str) -> list[dict]:
    events, _ = manager.read_events(run_id)
    return [e for e in events if e["event"] == "step"]


def test_notebook_run_stops_and_resumes(tmp_path):
    manager = _manager(tmp_path, executor="notebook")
    try:
        run = manager.start(_spec(5000))
        _wait_for(lambda: len(_step_events(manager, run.run_id)) >= 3, what="step events")
        assert manager.stop(run.run_id).state == "stopping"
        stopped = manager.wait(run.run_id, timeout_s=120)
        assert stopped.state == "stopped"
        info = ckpt.read_info(stopped.checkpoint)
        assert info.valid and info.step == stopped.step
        executed = json.loads((tmp_path / run.run_id / "train.ipynb").read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])

        resumed = manager.start(_spec(stopped.step + 4, resume_from=f"{run.run_id}/{Path(stopped.checkpoint).name}"))
        done = manager.wait(resumed.run_id, timeout_s=180)
        assert done.state == "completed"
        assert done.step == stopped.step + 4
        assert done.parent == stopped.checkpoint
        steps = [e["step"] for e in _step_events(manager, resumed.run_id)]
        assert steps[0] == stopped.step + 1
        figure_outputs = [o for c in json.loads((tmp_path / resumed.run_id / "train.ipynb").read_text())["cells"]
                          for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert figure_outputs, "the executed notebook keeps the plots of the run's curves"
    finally:
        manager.shutdown()


def test_limit_rejects_second_run(tmp_path):
    manager = _manager(tmp_path, executor="process", max_concurrent=1, on_limit="reject")
    try:
        first = manager.start(_spec(5000))
        with pytest.raises(Conflict, match="limit is 1") as caught:
            manager.start(_spec(10))
        assert first.run_id in str(caught.value)
        assert len(manager.list()) == 1
        manager.stop(first.run_id)
        assert manager.wait(first.run_id, timeout_s=120).state == "stopped"
        second = manager.start(_spec(2))
        assert manager.wait(second.run_id, timeout_s=120).state == "completed"
    finally:
        manager.shutdown()


def test_queue_mode_starts_later(tmp_path):
    manager = _manager(tmp_path, executor="process", max_concurrent=1, on_limit="queue")
    try:
        first = manager.start(_spec(3))
        second = manager.start(_spec(2))
        assert manager.get(second.run_id).state == "queued"
        assert manager.wait(first.run_id, timeout_s=120).state == "completed"
        assert manager.wait(second.run_id, timeout_s=120).state == "completed"
        first_end = manager.get(first.run_id).updated
        started = next(e for e in manager.read_events(second.run_id)[0] if e["event"] == "started")
        assert started["time"] >= first_end - 1.0
    finally:
        manager.shutdown()


def test_bad_requests_rejected(tmp_path):
    manager = _manager(tmp_path, executor="process")
    try:
        with pytest.raises(InvalidRequest, match=r"training\.lrr"):
            manager.start(_spec(2, overrides={"training.lrr": 1}))
        with pytest.raises(InvalidRequest, match=r"nowhere.* not found"):
            manager.start(JobSpec(preset="tiny", dataset=str(tmp_path / "nowhere")))
        with pytest.raises(InvalidRequest, match="invalid run id"):
            manager.start(_spec(2, run_id="../escape"))
        with pytest.raises(NotFound):
            manager.start(_spec(2, resume_from="no-such-run/ckpt-0000001.pt"))
        with pytest.raises(NotFound):
            manager.get("../x")
        with pytest.raises(NotFound):
            manager.stop("missing")
        assert manager.list() == []
        assert not (tmp_path.parent / "escape").exists()
    finally:
        manager.shutdown()


def test_recover_marks_dead_run_failed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths = RunPaths(tmp_path / "orphan")
    paths.root.mkdir()
    write_status(paths, "running", step=12, pid=dead.pid, created=time.time())
    manager = _manager(tmp_path, executor="process")
    try:
        assert manager.recover() == ["orphan"]
        info = manager.get("orphan")
        assert info.state == "failed"
        assert "ended without a final status" in info.error
    finally:
        manager.shutdown()


def _kill_when(manager: JobManager, run_id: str, *, during_write: bool, rng: random.Random) -> None:
    """SIGKILL the run's training process at a random step, or while a checkpoint is being written."""
    pid = _wait_for(lambda: (read_status(RunPaths(manager.root / run_id)) or {}).get("pid"), what="trainer pid")
    _wait_for(lambda: _step_events(manager, run_id), what="first step")
    if during_write:
        _wait_for(lambda: list((manager.root / run_id).glob(".tmp-*")), timeout_s=60, what="a checkpoint write")
    else:
        time.sleep(rng.uniform(0.0, 2.0))
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_never_leaves_bad_checkpoints(tmp_path):
    rng = random.Random(7)
    manager = _manager(tmp_path, executor="process")
    resume_from = None
    progress = []
    try:
        for attempt in range(10):
            spec = _spec(100_000, resume_from=resume_from, overrides={"training.checkpoint_every": 1,
                                                                       "training.keep_last": 3})
            run = manager.start(spec)
            _kill_when(manager, run.run_id, during_write=attempt % 2 == 0, rng=rng)
            info = manager.wait(run.run_id, timeout_s=60)
            assert info.state == "failed", f"attempt {attempt}: {info.state}"
            assert "killed by signal 9" in info.error

            listed = ckpt.list_checkpoints(tmp_path / run.run_id)
            valid = [c for c in listed if c.valid]
            for checkpoint in valid:
                payload = ckpt.load_checkpoint(checkpoint.path)
                assert payload["step"] == checkpoint.step
            for checkpoint in listed:
                if checkpoint.path.name.startswith(".tmp-"):
                    assert not checkpoint.valid
            if valid:
                resume_from = str(valid[-1].path)
                progress.append(valid[-1].step)
        assert progress == sorted(progress)
        assert progress[-1] > progress[0]

        # The newest valid checkpoint of the last killed run continues to completion.
        final = manager.start(_spec(progress[-1] + 2, resume_from=resume_from))
        done = manager.wait(final.run_id, timeout_s=120)
        assert done.state == "completed"
        assert next(e["step"] for e in _step_events(manager, final.run_id)) == progress[-1] + 1
    finally:
        manager.shutdown()
