"""DDP under torchrun with the gloo backend: two CPU processes train like one with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from asrlib.checkpoints import load_checkpoint
from tests.conftest import LJSPEECH_MINI

pytestmark = pytest.mark.slow

BUDGET_S = 12.0  # per process; the single process gets twice this
# No dropout and no SpecAugment: the ranks' random masks would differ from the single process's.
COMMON = ["--preset", "tiny", "--dataset", str(LJSPEECH_MINI), "--set", "data.max_clips=8",
          "--set", "data.train_on=all", "--set", "model.dropout=0.0", "--set", "spec_augment.enabled=false",
          "--set", "training.num_buckets=1", "--set", "training.log_every=1", "--set", "training.eval_every=0",
          "--set", "training.warmup_steps=3", "--set", "training.keep_last=0", "--set", "training.device=cpu"]
LOSS_TOLERANCE = 1e-4  # relative; gradients are summed in another order across processes


def _train(tmp_path, run_id: str, processes: int, budget: float, steps: int, *extra: str):
    args = [*COMMON, "--checkpoints", str(tmp_path), "--run-id", run_id,
            "--set", f"training.max_batch_seconds={budget}", "--set", f"training.max_steps={steps}", *extra]
    if processes == 1:
        command = [sys.executable, "-m", "asrlib.train", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "asrlib.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _losses(run_dir) -> dict[int, float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    single = _train(root, "single", 1, 2 * BUDGET_S, 8)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _train(root, "ddp", 2, BUDGET_S, 8, "--set", "training.checkpoint_every=4")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return root


def test_two_processes_match_one(runs):
    single, ddp = _losses(runs / "single"), _losses(runs / "ddp")
    assert sorted(ddp) == sorted(single) == list(range(1, 9))
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=LOSS_TOLERANCE), f"step {step}"
    assert load_checkpoint(runs / "ddp" / "ckpt-0000008.pt")["sampler"]["world_size"] == 2


def test_ddp_resume_continues_exactly(runs):
    resumed = _train(runs, "ddp-resumed", 2, BUDGET_S, 8, "--resume", str(runs / "ddp" / "ckpt-0000004.pt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, again = _losses(runs / "ddp"), _losses(runs / "ddp-resumed")
    assert sorted(again) == [5, 6, 7, 8]
    for step in again:
        assert again[step] == straight[step], f"step {step}"


def test_resume_with_other_world_size_rejected(runs):
    proc = _train(runs, "wrong-size", 1, 2 * BUDGET_S, 8, "--resume", str(runs / "ddp" / "ckpt-0000004.pt"))
    assert proc.returncode == 2
    assert "written by 2 process(es)" in proc.stderr
    assert "--nproc-per-node 2" in proc.stderr


def test_job_manager_launches_ddp(tmp_path):
    from asrlib.config import load_settings
    from asrlib.jobs import JobManager, JobSpec
    from tests.conftest import REPO_ROOT

    manager = JobManager(load_settings(REPO_ROOT / "config.yaml"), checkpoints_root=tmp_path, executor="process")
    try:
        overrides = {"data.max_clips": 8, "data.train_on": "all", "training.max_steps": 3, "training.eval_every": 0,
                     "training.num_buckets": 1,
                     "training.max_batch_seconds": BUDGET_S, "training.log_every": 1, "training.device": "cpu"}
        run = manager.start(JobSpec(preset="tiny", dataset=str(LJSPEECH_MINI), overrides=overrides, processes=2))
        done = manager.wait(run.run_id, timeout_s=300)
        assert done.state == "completed", done.error
        started = [e for e in manager.read_events(run.run_id)[0] if e["event"] == "started"]
        assert started[0]["world_size"] == 2
    finally:
        manager.shutdown()
