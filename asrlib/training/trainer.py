"""The training loop: one trainer for every model type, configured by a RunConfig.

The same loop runs on one CPU, one GPU, or several processes under torchrun (DDP). Only rank 0
writes the run folder; every rank keeps its own RNG state in the checkpoint, so a resume with the
same world size continues exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from asrlib import checkpoints as ckpt
from asrlib.atomic import atomic_write_text
from asrlib.config import RunConfig
from asrlib.decoding import error_rates, greedy_ctc_decode
from asrlib.logs import add_file_handler, run_context
from asrlib.models import build_model, count_parameters
from asrlib.text import CharTokenizer
from asrlib.training.data import (
    SPEED_FACTORS,
    Batch,
    EpochBatches,
    FeatureDataset,
    PreparedData,
    Utterance,
    cache_dir_problem,
    collate,
    prepare_data,
)
from asrlib.training.distributed import DistributedContext, init_distributed
from asrlib.training.runs import RunPaths, write_config, write_status
from asrlib.training.sampler import DurationBucketSampler
from asrlib.training.state import (
    FROZEN_SECTIONS,
    config_differences,
    rng_state,
    same_data_order,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger(__name__)

__all__ = [
    "FROZEN_SECTIONS",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "config_differences",
    "evaluate_model",
    "load_optimizer_state",
    "lr_at",
    "skip_step_unless_finite",
]

EventCallback = Callable[[dict[str, Any]], None]
CMVN_MAX_CLIPS = 500  # clips read to estimate the global feature mean and variance


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    state: str  # completed or stopped
    step: int
    checkpoint: Path | None
    metrics: dict[str, float]
    run_dir: Path | None = None


def build_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Create the fused AdamW that the trainer uses: one kernel per step on the CPU and on CUDA."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=weight_decay,
                             fused=True)


def skip_step_unless_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """Make the next optimizer.step() a no-op unless `finite`, a 0-dim bool tensor, is true.

    A non-finite gradient would poison the weights. A fused optimizer reads `found_inf`, as set by
    torch.amp.GradScaler, and on a nonzero value leaves weights, moments and step count as they
    were, on the device and without a host sync. With fp16 the GradScaler replaces the value with
    its own check of the same gradients.
    """
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        raise TypeError(f"{type(optimizer).__name__} cannot skip a step on the device; create it with fused=True")
    optimizer.found_inf = (~finite).to(torch.float32)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved AdamW state into the fused optimizer, whatever implementation saved it.

    load_state_dict() takes the `fused` flag from the saved groups, and an unfused AdamW keeps its
    step counts on the CPU, so a checkpoint of the unfused optimizer would turn the fused one back.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"] = True
        for param in group["params"]:
            param_state = optimizer.state.get(param, {})
            if "step" in param_state:
                param_state["step"] = param_state["step"].to(param.device, torch.float32)


def lr_at(step: int, *, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to `peak`, then inverse square-root decay (`step` counts from 1)."""
    step = max(step, 1)
    if warmup_steps <= 0:
        return peak
    return peak * min(step / warmup_steps, math.sqrt(warmup_steps / step))


def resolve_device(name: str, *, setting: str = "training.device") -> torch.device:
    """Map auto, cpu, cuda or cuda:N to a device; raise ValueError naming `setting` when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{setting} is {name!r} but no CUDA device is visible; use cpu or auto")
    return device


class _Window:
    """Step statistics between two metric lines, kept on the device so the loop never waits for it."""

    def __init__(self, device: torch.device) -> None:
        self.totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss, grad norm, non-finite steps
        self.steps = 0
        self.audio_seconds = 0.0
        self.frames = 0
        self.padded_frames = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()


class Trainer:
    """Trains a model on an LJSpeech-format corpus, writing metrics and checkpoints into a run folder.

    Args:
        config: the resolved run configuration.
        run_dir: the run folder, created if missing; its name is the run id.
        dataset_root: the LJSpeech-format folder to train on.
        resume_from: a checkpoint to continue from; weights, optimizer, step, sampler position
            and RNG states are restored, so the continuation matches an uninterrupted run.
        should_stop: polled after every step; when it returns True the trainer saves a
            checkpoint and ends with state `stopped`.
        on_event: receives every metrics record (the same dicts as in metrics.jsonl).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        dataset_root: str | Path,
        resume_from: str | Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.config = config
        self.paths = RunPaths(Path(run_dir))
        self.dataset_root = Path(dataset_root)
        self.resume_from = Path(resume_from) if resume_from else None
        self.should_stop = should_stop or (lambda: False)
        self.on_event = on_event
        self.ctx = DistributedContext()
        self.device = torch.device("cpu")
        self.tokenizer = CharTokenizer(config.text.charset)
        self.step = 0
        self.epoch = 0
        self.best_wer: float | None = None
        self.best_path: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval_step: int | None = None
        self._valid_set: FeatureDataset | None = None  # the validation clips' features, built at the first evaluation

    # ----------------------------------------------------------------- run folder

    def _status(self, state: str, **fields: Any) -> None:
        if self.ctx.is_main:
            write_status(self.paths, state, **fields)

    def _emit(self, record: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        record = {"time": round(time.time(), 3), "run_id": self.paths.run_id, **record}
        with open(self.paths.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.on_event is not None:
            try:
                self.on_event(record)
            except Exception:  # a broken listener must not end the training
                log.exception("event callback failed for %s", record.get("event"))

    # ----------------------------------------------------------------- setup

    def _load_resume_payload(self) -> dict[str, Any] | None:
        if self.resume_from is None:
            return None
        payload = ckpt.load_checkpoint(self.resume_from)
        diffs = config_differences(payload["config"], self.config.to_dict())
        if diffs:
            raise ValueError(
                f"cannot resume from {self.resume_from}: the model architecture or tokenizer differs "
                f"({'; '.join(diffs)}); start a new run instead"
            )
        if CharTokenizer.from_dict(payload["tokenizer"]) != self.tokenizer:
            raise ValueError(f"cannot resume from {self.resume_from}: the tokenizer differs")
        saved_world = int(payload["sampler"].get("world_size", 1))
        if saved_world != self.ctx.world_size:
            raise ValueError(
                f"cannot resume from {self.resume_from}: it was written by {saved_world} process(es) and this "
                f"run has {self.ctx.world_size}; resume with torchrun --nproc-per-node {saved_world} "
                "(or the same total over nodes)"
            )
        return payload

    def _prepare(self, payload: dict[str, Any] | None) -> PreparedData:
        split = None
        if payload is not None and payload["config"]["data"]["dataset"] == self.config.data.dataset:
            split = payload.get("split")
        data = prepare_data(self.dataset_root, self.config.data, self.config.features, self.tokenizer, split=split)
        if self.ctx.is_main:
            atomic_write_text(self.paths.split, json.dumps(data.split_ids(), indent=1) + "\n")
            atomic_write_text(self.paths.tokenizer, json.dumps(self.tokenizer.to_dict()) + "\n")
            atomic_write_text(self.paths.data_report,
                              json.dumps(data.summary(), indent=1, ensure_ascii=False) + "\n")
        return data

    @torch.no_grad()
    def _init_cmvn(self, model: torch.nn.Module, dataset: FeatureDataset) -> None:
        count, total, total_sq = 0, None, None
        for index in range(min(len(dataset), CMVN_MAX_CLIPS)):
            feats = dataset.features(index).double()
            total = feats.sum(0) if total is None else total + feats.sum(0)
            total_sq = (feats**2).sum(0) if total_sq is None else total_sq + (feats**2).sum(0)
            count += feats.shape[0]
        model.cmvn.set_stats(total.float(), total_sq.float(), count)

    # ----------------------------------------------------------------- main loop

    def fit(self) -> TrainResult:
        self.ctx, local_device = init_distributed(self.config.training.device)
        self.device = local_device or resolve_device(self.config.training.device)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        handler = add_file_handler(str(self.paths.log)) if self.ctx.is_main else None
        try:
            with run_context(self.paths.run_id if self.ctx.is_main else f"{self.paths.run_id}:rank{self.ctx.rank}"):
                return self._fit()
        except BaseException as err:
            self._status("failed", step=self.step, error=f"{type(err).__name__}: {err}")
            self._emit({"event": "failed", "step": self.step, "error": f"{type(err).__name__}: {err}"})
            raise
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()

    def _fit(self) -> TrainResult:
        cfg = self.config
        parent = str(self.resume_from) if self.resume_from else None
        self._status("running", step=0, pid=os.getpid(), max_steps=cfg.training.max_steps, model_type=cfg.model.type,
                     preset=cfg.model.preset, dataset=cfg.data.dataset, parent=parent,
                     world_size=self.ctx.world_size)
        if self.ctx.is_main:
            write_config(self.paths, {**cfg.to_dict(), "dataset_root": str(self.dataset_root), "resume_from": parent})
        # Ranks draw different dropout and SpecAugment masks; DDP copies rank 0's initial weights.
        seed_everything(cfg.training.seed + self.ctx.rank)

        payload = self._load_resume_payload()
        data = self._prepare(payload)
        train_set = FeatureDataset(
            data.splits["train"], cfg.features, cache=cfg.data.cache_features, cache_dir=cfg.data.feature_cache_dir,
            speed_perturb=cfg.data.speed_perturb, seed=cfg.training.seed,
        )
        if train_set.cache_dir is not None:
            self._check_feature_cache(train_set)
        model = build_model(cfg, self.tokenizer.vocab_size).to(self.device)
        optimizer = build_optimizer(model, lr=cfg.training.lr, weight_decay=cfg.training.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=self._use_fp16())
        sampler = DurationBucketSampler(
            [u.duration for u in data.splits["train"]], max_batch_seconds=cfg.training.max_batch_seconds,
            num_buckets=cfg.training.num_buckets, seed=cfg.training.seed,
            rank=self.ctx.rank, world_size=self.ctx.world_size,
        )
        if payload is None:
            self._init_cmvn(model, train_set)
        else:
            self._restore(payload, model, optimizer, scaler, sampler)
        accumulate = cfg.training.accumulate_grad_batches
        if len(sampler) < accumulate:
            raise ValueError(
                f"the training split yields {len(sampler)} batches per epoch, fewer than "
                f"training.accumulate_grad_batches ({accumulate}); add clips, lower the batch budget or "
                "the accumulation, or use fewer processes"
            )

        train_model: torch.nn.Module = model
        if self.ctx.enabled:
            train_model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.training.compile:
            train_model = torch.compile(train_model)

        log.info("model %s/%s: %.2f M parameters on %s (%d process(es))", cfg.model.type, cfg.model.preset,
                 count_parameters(model) / 1e6, self.device, self.ctx.world_size)
        self._emit({"event": "started", "step": self.step, "epoch": self.epoch, "parameters": count_parameters(model),
                    "device": str(self.device), "world_size": self.ctx.world_size, "max_steps": cfg.training.max_steps,
                    "train_clips": len(data.splits["train"]), "parent": parent})

        # Persistent workers keep their feature caches across epochs; the batch sampler runs in
        # this process at each epoch start, so the sampler position still decides what comes next.
        workers = cfg.data.num_workers
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=EpochBatches(sampler), collate_fn=collate, num_workers=workers,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.training.seed),
            persistent_workers=workers > 0, prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        )
        state = "completed"
        while self.step < cfg.training.max_steps:
            if cfg.training.max_epochs is not None and self.epoch >= cfg.training.max_epochs:
                break
            if self._run_epoch(model, train_model, optimizer, scaler, sampler, loader, data):
                state = "stopped"
                break
            if self.step < cfg.training.max_steps:
                self.epoch += 1
                sampler.start_epoch(self.epoch)

        if state == "completed" and self.last_eval_step != self.step:
            self._evaluate(model, data.splits.get("valid") or [])
        path = self._save(model, optimizer, scaler, sampler, data)
        self._status(state, step=self.step, epoch=self.epoch, checkpoint=str(path), metrics=self.last_metrics,
                     best_checkpoint=str(self.best_path) if self.best_path else None)
        self._emit({"event": state, "step": self.step, "epoch": self.epoch, "checkpoint": str(path)})
        log.info("run %s at step %d; final checkpoint %s", state, self.step, path)
        return TrainResult(self.paths.run_id, state, self.step, path, dict(self.last_metrics), self.paths.root)

    def _check_feature_cache(self, train_set: FeatureDataset) -> None:
        """Log how much of the training split the disk cache already has, and whether it can grow."""
        folder = train_set.cache_dir
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"data.feature_cache_dir {folder} exists and is not a folder; choose another path")
        speeds = SPEED_FACTORS if self.config.data.speed_perturb else (1.0,)
        cached = sum(train_set.is_cached(index, speed) for index in range(len(train_set)) for speed in speeds)
        log.info("feature cache %s has %d of %d entries (%d training clips at speeds %s)", folder, cached,
                 len(train_set) * len(speeds), len(train_set), ", ".join(f"{s:g}" for s in speeds))
        problem = cache_dir_problem(folder) if self.ctx.is_main else None
        if problem:
            log.warning("feature cache %s cannot be written (%s): cached features are read, and the others are "
                        "computed each time they are needed", folder, problem)

    def _restore(self, payload, model, optimizer, scaler, sampler) -> None:
        model.load_state_dict(payload["model"])
        load_optimizer_state(optimizer, payload["optimizer"])
        if payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        self.step, self.epoch = int(payload["step"]), int(payload["epoch"])
        if same_data_order(payload["config"]["data"], self.config.to_dict()["data"]):
            sampler.load_state_dict(payload["sampler"])
        else:
            log.warning("data settings changed since the checkpoint; batches restart at epoch %d", self.epoch)
            sampler.start_epoch(self.epoch)
        set_rng_state(payload["rng"][self.ctx.rank])
        log.info("resumed from %s at step %d, epoch %d", self.resume_from, self.step, self.epoch)

    def _use_fp16(self) -> bool:
        return self.device.type == "cuda" and self.config.training.precision == "fp16"

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.training.precision
        if self.device.type != "cuda" or precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CTC loss per utterance of the global batch; DDP's gradient average then yields its mean."""
        with self._autocast():
            log_probs, out_lengths = model(batch.features, batch.feature_lengths)
        # CTC in float32 whatever the autocast dtype: its recursions underflow in half precision.
        total = F.ctc_loss(
            log_probs.float().transpose(0, 1), batch.labels.clamp_min(0), out_lengths, batch.label_lengths,
            blank=self.tokenizer.blank_id, reduction="sum", zero_infinity=False,
        )
        return total * self.ctx.world_size / batch.global_clips, log_probs, out_lengths

    def _run_epoch(self, model, train_model, optimizer, scaler, sampler, loader, data: PreparedData) -> bool:
        """Train until the epoch ends or max_steps is reached; return True if a stop was requested."""
        cfg = self.config.training
        train_model.train()
        accumulate = cfg.accumulate_grad_batches
        window = _Window(self.device)
        iterator = iter(loader)
        epoch_batches = len(sampler)
        while self.step < cfg.max_steps:
            if epoch_batches - sampler.position < accumulate:
                return False  # the epoch's tail is too short for a whole step; it is not computed
            optimizer.zero_grad(set_to_none=True)
            lr = lr_at(self.step + 1, peak=cfg.lr, warmup_steps=cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(accumulate):
                fetch_started = time.perf_counter()
                try:
                    cpu_batch = next(iterator)
                except StopIteration:
                    return False
                window.data_wait += time.perf_counter() - fetch_started
                window.audio_seconds += cpu_batch.audio_seconds
                window.frames += int(cpu_batch.feature_lengths.sum())
                window.padded_frames += cpu_batch.features.shape[0] * cpu_batch.features.shape[1]
                batch = cpu_batch.to(self.device, non_blocking=True)
                last = micro == accumulate - 1
                sync = contextlib.nullcontext() if last or not self.ctx.enabled else train_model.no_sync()
                with sync:
                    loss, _, _ = self._loss(train_model, batch)
                    scaler.scale(loss / accumulate).backward()
                window.totals[0] += loss.detach() / accumulate
                sampler.advance()
            self._optimizer_step(model, optimizer, scaler, window)
            self.step += 1
            window.steps += 1

            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self._log_window(window, lr)
                window = _Window(self.device)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self._evaluate(model, data.splits.get("valid") or [])
                train_model.train()
            if self._stop_requested():
                log.info("stop requested at step %d", self.step)
                return True
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                self._save(model, optimizer, scaler, sampler, data)
        return False

    def _optimizer_step(self, model, optimizer, scaler, window: _Window) -> None:
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.training.grad_clip)
        finite = torch.isfinite(grad_norm)
        skip_step_unless_finite(optimizer, finite)
        window.totals[1] += torch.where(finite, grad_norm, 0.0)
        window.totals[2] += (~finite).to(torch.float64)
        scaler.step(optimizer)
        scaler.update()

    def _stop_requested(self) -> bool:
        # Under DDP every rank must stop at the same step, so the flag is agreed on collectively.
        if self.ctx.enabled and self.step % self.config.training.log_every:
            return False
        return self.ctx.any(self.should_stop() if self.ctx.is_main else False, self.device)

    def _log_window(self, window: _Window, lr: float) -> None:
        totals = self.ctx.all_reduce_sum(window.totals.clone())
        counts = self.ctx.all_reduce_sum(torch.tensor(
            [window.audio_seconds, window.frames, window.padded_frames], dtype=torch.float64, device=self.device))
        loss_sum, norm_sum, nonfinite = totals.tolist()  # the one host sync of the window
        audio, frames, padded = counts.tolist()
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        steps = max(window.steps, 1)
        record = {
            "event": "step", "step": self.step, "epoch": self.epoch,
            "loss": loss_sum / self.ctx.world_size / steps, "lr": lr,
            "grad_norm": norm_sum / self.ctx.world_size / steps,
            "audio_seconds_per_second": audio / elapsed, "data_wait_share": window.data_wait / elapsed,
            "padding_share": 1 - frames / max(padded, 1), "nonfinite_steps": int(nonfinite / self.ctx.world_size),
        }
        if record["nonfinite_steps"]:
            log.warning("%d steps with a non-finite gradient before step %d were skipped", record["nonfinite_steps"],
                        self.step)
        self.last_metrics.update(loss=record["loss"])
        log.info("step %d epoch %d loss %.4f lr %.2e grad_norm %.2f %.1f audio-s/s", self.step, self.epoch,
                 record["loss"], lr, record["grad_norm"], record["audio_seconds_per_second"])
        self._emit(record)

    @torch.no_grad()
    def _evaluate(self, model: torch.nn.Module, utterances: list[Utterance]) -> None:
        """Validate on rank 0 while the other ranks wait at a barrier."""
        if utterances and self.ctx.is_main:
            if self._valid_set is None or self._valid_set.utterances is not utterances:
                # Kept between evaluations, so that the feature caches serve every evaluation after the first.
                data = self.config.data
                self._valid_set = FeatureDataset(utterances, self.config.features, cache=data.cache_features,
                                                 cache_dir=data.feature_cache_dir)
            result = evaluate_model(model, utterances, self.config, self.tokenizer, self.device,
                                    loss_fn=self._eval_loss, dataset=self._valid_set)
            self.last_metrics.update(valid_loss=result["loss"], cer=result["cer"], wer=result["wer"])
            self._emit({"event": "eval", "step": self.step, "epoch": self.epoch, "valid_loss": result["loss"],
                        "cer": result["cer"], "wer": result["wer"], "clips": len(utterances)})
            log.info("eval at step %d: valid loss %.4f CER %.4f WER %.4f", self.step, result["loss"],
                     result["cer"], result["wer"])
        self.last_eval_step = self.step
        self.ctx.barrier()

    def _eval_loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return ctc_batch_loss(model, batch, self.tokenizer.blank_id, self._autocast())

    def _save(self, model, optimizer, scaler, sampler, data: PreparedData) -> Path:
        path = self.paths.root / ckpt.checkpoint_name(self.step)
        rng_states = self.ctx.gather(rng_state())  # a collective: every rank takes part
        if self.ctx.is_main:
            self._write_checkpoint(path, model, optimizer, scaler, sampler, data, rng_states)
        self.ctx.barrier()
        return path

    def _write_checkpoint(self, path, model, optimizer, scaler, sampler, data, rng_states) -> None:
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"type": "warmup_inverse_sqrt", "step": self.step,
                          "peak_lr": self.config.training.lr, "warmup_steps": self.config.training.warmup_steps},
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.epoch,
            "sampler": sampler.state_dict(),
            "rng": rng_states,
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "split": data.split_ids(),
            "run_id": self.paths.run_id,
        }
        metrics = {k: v for k, v in self.last_metrics.items() if isinstance(v, (int, float))}
        if self.last_eval_step != self.step:
            # Validation numbers from an earlier step do not describe these weights.
            metrics = {k: v for k, v in metrics.items() if k not in ("valid_loss", "cer", "wer")}
        info = ckpt.save_checkpoint(path, payload, step=self.step, epoch=self.epoch, metrics=metrics,
                                    parent=str(self.resume_from) if self.resume_from else None,
                                    run_id=self.paths.run_id)
        if "wer" in metrics and (self.best_wer is None or metrics["wer"] <= self.best_wer):
            self.best_wer, self.best_path = metrics["wer"], path
        ckpt.prune_checkpoints(self.paths.root, keep_last=self.config.training.keep_last,
                               keep={self.best_path} if self.best_path else set())
        write_status(self.paths, "running", step=self.step, epoch=self.epoch, checkpoint=str(path))
        self._emit({"event": "checkpoint", "step": self.step, "epoch": self.epoch, "path": str(path),
                    "size": info.size, "metrics": metrics})


def ctc_batch_loss(
    model: torch.nn.Module, batch: Batch, blank: int, autocast: contextlib.AbstractContextManager | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean CTC loss per utterance of one batch, computed in float32, with the log-probs and lengths."""
    with autocast or contextlib.nullcontext():
        log_probs, out_lengths = model(batch.features, batch.feature_lengths)
    total = F.ctc_loss(log_probs.float().transpose(0, 1), batch.labels.clamp_min(0), out_lengths,
                       batch.label_lengths, blank=blank, reduction="sum", zero_infinity=False)
    return total / len(batch.ids), log_probs, out_lengths


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    utterances: list[Utterance],
    config: RunConfig,
    tokenizer: CharTokenizer,
    device: torch.device,
    *,
    loss_fn: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    dataset: FeatureDataset | None = None,
) -> dict[str, Any]:
    """Greedy-decode `utterances`; return the mean CTC loss, CER, WER and the hypotheses by clip id.

    `dataset` supplies the features of `utterances` (default: computed, with no cache).
    """
    loss_fn = loss_fn or (lambda m, b: ctc_batch_loss(m, b, tokenizer.blank_id))
    was_training = model.training
    model.eval()
    if dataset is None:  # not `or`: a FeatureDataset has a length, so an empty one is falsy
        dataset = FeatureDataset(utterances, config.features)
    sampler = DurationBucketSampler([u.duration for u in utterances],
                                    max_batch_seconds=config.training.max_batch_seconds, num_buckets=1, shuffle=False)
    total_loss, refs, hyps, ids = 0.0, [], [], []
    for indices in sampler:
        batch = collate([dataset[i] for i in indices]).to(device)
        loss, log_probs, out_lengths = loss_fn(model, batch)
        total_loss += float(loss) * len(indices)
        for index, hyp in zip(indices, greedy_ctc_decode(log_probs, out_lengths, tokenizer.blank_id), strict=True):
            ids.append(utterances[index].id)
            refs.append(utterances[index].text)
            hyps.append(tokenizer.decode(hyp.tokens))
    rates = error_rates(refs, hyps)
    model.train(was_training)
    return {"loss": total_loss / len(utterances), "cer": rates.cer, "wer": rates.wer,
            "hypotheses": dict(zip(ids, hyps, strict=True))}
