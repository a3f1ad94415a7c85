"""The job manager: training runs in their own processes, owned by one service.

Each run executes `notebooks/train.ipynb` through papermill in a child process (or, with the
`process` executor, calls the trainer directly in that child), so a closed browser tab or a
restarted API never takes a training down with it. Every fact about a run lives in its folder
(`status.json`, `metrics.jsonl`, checkpoints); the manager keeps only process handles, so after
a restart it rebuilds its view from disk and marks runs whose process is gone as `failed`.

Usage as the worker entry point: `python -m asrlib.jobs RUN_DIR`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asrlib.atomic import atomic_write_text
from asrlib.config import REPO_ROOT, checkpoints_dir, load_settings
from asrlib.training.launch import STOP_FILE, resolve_training
from asrlib.training.runs import RunPaths, new_run_id, read_status, validate_run_id, write_config, write_status

log = logging.getLogger(__name__)

TRAIN_NOTEBOOK = REPO_ROOT / "notebooks" / "train.ipynb"
EXECUTORS = ("notebook", "process")
ACTIVE_STATES = ("queued", "running", "stopping")
JOB_FILE = "job.json"
POLL_S = 0.5


class JobError(Exception):
    status_code = 400


class InvalidRequest(JobError):
    status_code = 400


class NotFound(JobError):
    status_code = 404


class Conflict(JobError):
    status_code = 409


@dataclass(frozen=True)
class JobSpec:
    """A request to train: the parameters of notebooks/train.ipynb."""

    model_type: str = "conformer"
    dataset: str | None = None  # catalog name or folder; None keeps config.yaml's data.dataset
    preset: str | None = None  # None takes the model's default preset
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted or nested config overrides
    resume_from: str | None = None  # checkpoint path, or RUN_ID/ckpt-NNNNNNN.pt under the checkpoints folder
    run_id: str | None = None  # None generates one
    processes: int = 1  # training processes on this machine; more than 1 runs DDP under torchrun


@dataclass
class RunInfo:
    run_id: str
    state: str
    model_type: str | None = None
    preset: str | None = None
    dataset: str | None = None
    created: float | None = None
    updated: float | None = None
    step: int = 0
    max_steps: int | None = None
    epoch: int | None = None
    error: str | None = None
    parent: str | None = None
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    pid: int | None = None

    @classmethod
    def from_status(cls, run_id: str, status: dict[str, Any]) -> RunInfo:
        known = {k: status[k] for k in cls.__dataclass_fields__ if k in status and k != "run_id"}
        return cls(run_id=run_id, **{"state": "failed", **known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _process_start_ticks(pid: int) -> int | None:
    """Return the start time of `pid` in clock ticks since boot; a reused pid has a different one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None
    if fields[0] == "Z":  # a zombie has exited; only its exit status is left
        return None
    return int(fields[19])


def _alive(pid: int | None, start_ticks: int | None) -> bool:
    if not pid:
        return False
    ticks = _process_start_ticks(pid)
    return ticks is not None and (start_ticks is None or ticks == start_ticks)


class JobManager:
    """Starts, stops, queues and watches training runs under one checkpoints folder.

    Args:
        settings: the mapping from config.yaml (`jobs:` section: max_concurrent_runs, on_limit,
            executor).
        checkpoints_root: folder of run folders; defaults to `paths.checkpoints`.
        max_concurrent: runs allowed at once (default 1: one GPU trains one run well).
        on_limit: `reject` raises Conflict for a start past the limit; `queue` starts it later.
        executor: `notebook` (papermill, the executed notebook is kept in the run folder) or
            `process` (the trainer called directly; faster to start).
    """

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        *,
        checkpoints_root: Path | None = None,
        max_concurrent: int | None = None,
        on_limit: str | None = None,
        executor: str | None = None,
        config_path: str | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings(config_path)
        self.config_path = config_path
        jobs = self.settings.get("jobs") or {}
        self.root = Path(checkpoints_root) if checkpoints_root else checkpoints_dir(self.settings)
        self.max_concurrent = int(max_concurrent or jobs.get("max_concurrent_runs", 1))
        self.on_limit = on_limit or jobs.get("on_limit", "reject")
        self.executor = executor or jobs.get("executor", "notebook")
        if self.on_limit not in ("reject", "queue"):
            raise ValueError(f"jobs.on_limit: invalid value {self.on_limit!r}; use reject or queue")
        if self.executor not in EXECUTORS:
            raise ValueError(f"jobs.executor: invalid value {self.executor!r}; use one of {EXECUTORS}")
        if self.max_concurrent < 1:
            raise ValueError(f"jobs.max_concurrent_runs must be at least 1, got {self.max_concurrent}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._processes: dict[str, subprocess.Popen] = {}
        self._queue: deque[str] = deque()
        self._adopted: set[str] = set()  # live runs started by an earlier manager process
        self._closed = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="job-monitor", daemon=True)
        self._monitor.start()

    # ----------------------------------------------------------------- queries

    def _paths(self, run_id: str) -> RunPaths:
        try:
            validate_run_id(run_id)
        except ValueError as err:
            raise NotFound(str(err)) from None
        paths = RunPaths(self.root / run_id)
        if not paths.root.is_dir():
            raise NotFound(f"run {run_id!r} not found")
        return paths

    def get(self, run_id: str) -> RunInfo:
        paths = self._paths(run_id)
        status = read_status(paths)
        if status is None:
            raise NotFound(f"run {run_id!r} has no status.json; it is not a run folder")
        return RunInfo.from_status(run_id, status)

    def list(self) -> list[RunInfo]:
        runs = []
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            status = read_status(RunPaths(folder)) if folder.is_dir() else None
            if status is not None:
                runs.append(RunInfo.from_status(folder.name, status))
        return sorted(runs, key=lambda r: r.created or 0, reverse=True)

    def active_run_ids(self) -> list[str]:
        with self._lock:
            return [run_id for run_id in self._tracked() if self.get(run_id).state in ACTIVE_STATES]

    def checkpoints_in_use(self) -> set[Path]:
        """Resume sources of active runs, and every checkpoint inside an active run's folder."""
        used: set[Path] = set()
        for run_id in self.active_run_ids():
            info = self.get(run_id)
            if info.parent:
                used.add(Path(info.parent).resolve())
            used.update(p.resolve() for p in (self.root / run_id).glob("ckpt-*.pt"))
        return used

    def read_events(self, run_id: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Metrics records appended to a run's metrics.jsonl after byte `offset`, and the new offset."""
        paths = self._paths(run_id)
        try:
            with open(paths.metrics, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], offset
        # Only complete lines count: the trainer may be in the middle of appending one.
        end = data.rfind(b"\n") + 1
        events = []
        for line in data[:end].splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("run %s: skipping an unreadable metrics line", run_id)
        return events, offset + end

    # ----------------------------------------------------------------- commands

    def start(self, spec: JobSpec) -> RunInfo:
        """Validate a request, create its run folder and launch (or queue) it."""
        run_id = spec.run_id
        if not 1 <= spec.processes <= 64:
            raise InvalidRequest(f"processes must be between 1 and 64, got {spec.processes}")
        try:
            if run_id:
                validate_run_id(run_id)
            resolved = resolve_training(
                self.settings, model_type=spec.model_type, dataset=spec.dataset, preset=spec.preset,
                overrides=spec.overrides, resume_from=spec.resume_from, checkpoints_root=self.root,
            )
        except FileNotFoundError as err:
            raise (NotFound if spec.resume_from and "checkpoint" in str(err) else InvalidRequest)(str(err)) from None
        except ValueError as err:
            raise InvalidRequest(str(err)) from None
        config = resolved.config
        with self._lock:
            run_id = run_id or new_run_id(config.model.type, config.model.preset)
            paths = RunPaths(self.root / run_id)
            if paths.root.exists():
                raise Conflict(f"run {run_id!r} already exists; choose another run id")
            active = self.active_run_ids()
            running = [r for r in active if r not in self._queue]
            if len(running) >= self.max_concurrent and self.on_limit == "reject":
                raise Conflict(
                    f"{len(running)} run(s) already active ({', '.join(running)}); the limit is "
                    f"{self.max_concurrent} (jobs.max_concurrent_runs). Stop a run or wait for it to end"
                )
            paths.root.mkdir(parents=True)
            write_config(paths, {**config.to_dict(), "dataset_root": str(resolved.dataset_root),
                                 "resume_from": str(resolved.resume_from) if resolved.resume_from else None})
            job = {**asdict(spec), "run_id": run_id, "executor": self.executor,
                   "checkpoints_dir": str(self.root), "config_path": self.config_path}
            atomic_write_text(paths.root / JOB_FILE, json.dumps(job, indent=1) + "\n")
            write_status(paths, "queued", created=time.time(), step=0, model_type=config.model.type,
                         preset=config.model.preset, dataset=config.data.dataset,
                         max_steps=config.training.max_steps,
                         parent=str(resolved.resume_from) if resolved.resume_from else None)
            log.info("run %s queued (%s/%s on %s)", run_id, config.model.type, config.model.preset,
                     config.data.dataset)
            self._queue.append(run_id)
            self._launch_queued()
        return self.get(run_id)

    def stop(self, run_id: str) -> RunInfo:
        """Ask a run to stop: it finishes its step, saves a checkpoint and ends as `stopped`."""
        with self._lock:
            info = self.get(run_id)
            paths = self._paths(run_id)
            if info.state == "queued" and run_id in self._queue:
                self._queue.remove(run_id)
                write_status(paths, "stopped", error=None)
                log.info("run %s removed from the queue", run_id)
                return self.get(run_id)
            if info.state not in ACTIVE_STATES:
                raise Conflict(f"run {run_id!r} is {info.state}; only a queued or running run can be stopped")
            (paths.root / STOP_FILE).touch()
            write_status(paths, "stopping")
            log.info("run %s: stop requested", run_id)
        return self.get(run_id)

    def wait(self, run_id: str, timeout_s: float = 600.0) -> RunInfo:
        """Block until a run reaches a final state and its worker process has exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.get(run_id)
            if info.state not in ACTIVE_STATES:
                # The notebook executor still writes the plots after the trainer's final status.
                process = self._processes.get(run_id)
                if process is not None:
                    try:
                        process.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        break
                return self.get(run_id)
            time.sleep(0.2)
        raise TimeoutError(f"run {run_id} still {self.get(run_id).state} after {timeout_s} s")

    def recover(self) -> list[str]:
        """Mark runs left active by a process that no longer exists as failed; adopt live ones."""
        failed = []
        with self._lock:
            for info in self.list():
                if info.state not in ACTIVE_STATES or info.run_id in self._processes:
                    continue
                job = self._job(info.run_id)
                if _alive(job.get("worker_pid"), job.get("worker_start_ticks")) or _alive(info.pid, None):
                    log.info("run %s: training process is still alive; watching it", info.run_id)
                    self._adopted.add(info.run_id)
                    continue
                reason = "the training process ended without a final status (service restarted or process killed)"
                write_status(RunPaths(self.root / info.run_id), "failed", error=reason)
                log.warning("run %s marked failed: %s", info.run_id, reason)
                failed.append(info.run_id)
        return failed

    def shutdown(self, *, stop_runs: bool = True, timeout_s: float = 60.0) -> None:
        """Stop the monitor; with `stop_runs`, ask active runs to save and stop, and wait for them."""
        if stop_runs:
            for run_id in self.active_run_ids():
                try:
                    self.stop(run_id)
                except JobError:
                    pass
            deadline = time.monotonic() + timeout_s
            for process in list(self._processes.values()):
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("worker %d did not stop in time", process.pid)
        self._closed.set()
        self._monitor.join(timeout=5)

    # ----------------------------------------------------------------- internals

    def _tracked(self) -> list[str]:
        return [*self._processes, *self._queue, *sorted(self._adopted)]

    def _job(self, run_id: str) -> dict[str, Any]:
        try:
            return json.loads((self.root / run_id / JOB_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _launch_queued(self) -> None:
        while self._queue and len(self._processes) + len(self._adopted) < self.max_concurrent:
            run_id = self._queue.popleft()
            paths = RunPaths(self.root / run_id)
            # Not a with-block: the child process writes to this file until it exits.
            log_file = open(paths.root / "job.log", "ab")
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "asrlib.jobs", str(paths.root)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=REPO_ROOT, start_new_session=True,
                )
            except OSError as err:
                write_status(paths, "failed", error=f"could not start the training process: {err}")
                log.error("run %s: could not start the training process: %s", run_id, err)
                continue
            finally:
                log_file.close()
            job = self._job(run_id)
            job.update(worker_pid=process.pid, worker_start_ticks=_process_start_ticks(process.pid))
            atomic_write_text(paths.root / JOB_FILE, json.dumps(job, indent=1) + "\n")
            self._processes[run_id] = process
            log.info("run %s started in process %d (%s executor)", run_id, process.pid, self.executor)

    def _watch(self) -> None:
        while not self._closed.wait(POLL_S):
            try:
                self._poll()
            except Exception:  # the monitor must outlive any single bad run folder
                log.exception("job monitor poll failed")

    def _poll(self) -> None:
        with self._lock:
            for run_id, process in list(self._processes.items()):
                code = process.poll()
                if code is None:
                    continue
                del self._processes[run_id]
                self._finish(run_id, f"exit code {code}" if code >= 0 else f"killed by signal {-code}")
            for run_id in list(self._adopted):
                info = self.get(run_id)
                job = self._job(run_id)
                if info.state not in ACTIVE_STATES:
                    self._adopted.discard(run_id)
                elif not (_alive(job.get("worker_pid"), job.get("worker_start_ticks")) or _alive(info.pid, None)):
                    self._adopted.discard(run_id)
                    self._finish(run_id, "process disappeared")
            self._launch_queued()

    def _finish(self, run_id: str, how: str) -> None:
        paths = RunPaths(self.root / run_id)
        status = read_status(paths) or {}
        if status.get("state") in ACTIVE_STATES:
            detail = _last_error(paths.root / "job.log")
            reason = f"training process ended ({how}) before the run finished" + (f": {detail}" if detail else "")
            write_status(paths, "failed", error=reason)
            log.warning("run %s failed: %s", run_id, reason)
        else:
            log.info("run %s ended as %s", run_id, status.get("state"))
        (paths.root / STOP_FILE).unlink(missing_ok=True)


def _last_error(log_path: Path, max_chars: int = 400) -> str:
    """Return the last line of a worker log that looks like an error, for the failure reason."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "error:" in line or "Exception" in line:
            return line.strip()[:max_chars]
    return ""


# --------------------------------------------------------------------- worker


def run_job(run_dir: Path) -> int:
    """Worker process body: run one job folder with its executor; the trainer writes the status."""
    from asrlib.logs import run_context, setup_logging

    setup_logging()
    job = json.loads((run_dir / JOB_FILE).read_text(encoding="utf-8"))
    parameters = {
        "model_type": job["model_type"], "dataset": job["dataset"], "preset": job["preset"],
        "overrides": job["overrides"], "resume_from": job["resume_from"], "run_id": job["run_id"],
        "checkpoints_dir": job["checkpoints_dir"], "config_path": job.get("config_path"),
        "processes": job.get("processes", 1),
    }
    with run_context(job["run_id"]):
        if job["executor"] == "process":
            from asrlib.training.launch import run_training

            run_training(**parameters)
            return 0
        import papermill

        try:
            papermill.execute_notebook(
                str(TRAIN_NOTEBOOK), str(run_dir / "train.ipynb"), parameters=parameters,
                kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False, log_output=True,
            )
        except papermill.PapermillExecutionError as err:
            log.error("training notebook failed: %s: %s", err.ename, err.evalue)
            return 1
        except Exception as err:  # a dead kernel and similar failures of the executor itself
            paths = RunPaths(run_dir)
            if (read_status(paths) or {}).get("state") in ACTIVE_STATES:
                write_status(paths, "failed", error=f"training kernel failed: {type(err).__name__}: {err}")
            log.error("training kernel failed: %s: %s", type(err).__name__, err)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1])))
