"""The training loop: one trainer for every model type, configured by a RunConfig."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from asrlib import checkpoints as ckpt
from asrlib.atomic import atomic_write_text
from asrlib.config import RunConfig
from asrlib.decoding import error_rates, greedy_ctc_decode
from asrlib.logs import add_file_handler, run_context
from asrlib.models import build_model, count_parameters
from asrlib.text import CharTokenizer
from asrlib.training.data import (
    Batch,
    FeatureDataset,
    PreparedData,
    Utterance,
    collate,
    prepare_data,
)
from asrlib.training.runs import RunPaths, write_config, write_status
from asrlib.training.sampler import DurationBucketSampler

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]
CMVN_MAX_CLIPS = 500  # clips read to estimate the global feature mean and variance
# Sections that define the network and its inputs: a resumed run must not change them.
FROZEN_SECTIONS = ("model", "features", "text")


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    state: str  # completed or stopped
    step: int
    checkpoint: Path | None
    metrics: dict[str, float]


def lr_at(step: int, *, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to `peak`, then inverse square-root decay (`step` counts from 1)."""
    step = max(step, 1)
    if warmup_steps <= 0:
        return peak
    return peak * min(step / warmup_steps, math.sqrt(warmup_steps / step))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"training.device is {name!r} but no CUDA device is visible; use cpu or auto")
    return device


def config_differences(old: dict[str, Any], new: dict[str, Any], sections=FROZEN_SECTIONS) -> list[str]:
    """Dotted keys whose values differ between two config dicts, within `sections`."""
    diffs = []
    for section in sections:
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if key != "preset" and a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def _same_data(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when two data sections select the same clips in the same order (workers and caching aside)."""
    ignored = ("num_workers", "cache_features")
    return {k: v for k, v in old.items() if k not in ignored} == {k: v for k, v in new.items() if k not in ignored}


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        self.device = resolve_device(config.training.device)
        self.tokenizer = CharTokenizer(config.text.charset)
        self.step = 0
        self.epoch = 0
        self.best_wer: float | None = None
        self.best_path: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_eval_step: int | None = None

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
        return payload

    def _prepare(self, payload: dict[str, Any] | None) -> PreparedData:
        split = None
        if payload is not None and payload["config"]["data"]["dataset"] == self.config.data.dataset:
            split = payload.get("split")
        data = prepare_data(self.dataset_root, self.config.data, self.config.features, self.tokenizer, split=split)
        atomic_write_text(self.paths.split, json.dumps(data.split_ids(), indent=1) + "\n")
        atomic_write_text(self.paths.tokenizer, json.dumps(self.tokenizer.to_dict()) + "\n")
        atomic_write_text(self.paths.data_report, json.dumps(data.summary(), indent=1, ensure_ascii=False) + "\n")
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

    def _emit(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), "run_id": self.paths.run_id, **record}
        with open(self.paths.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.on_event is not None:
            try:
                self.on_event(record)
            except Exception:  # a broken listener must not end the training
                log.exception("event callback failed for %s", record.get("event"))

    # ----------------------------------------------------------------- main loop

    def fit(self) -> TrainResult:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        handler = add_file_handler(str(self.paths.log))
        try:
            with run_context(self.paths.run_id):
                return self._fit()
        except BaseException as err:
            write_status(self.paths, "failed", step=self.step, error=f"{type(err).__name__}: {err}")
            self._emit({"event": "failed", "step": self.step, "error": f"{type(err).__name__}: {err}"})
            raise
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()

    def _fit(self) -> TrainResult:
        cfg = self.config
        write_status(self.paths, "running", step=0, pid=os.getpid(), max_steps=cfg.training.max_steps,
                     model_type=cfg.model.type, preset=cfg.model.preset, dataset=cfg.data.dataset,
                     parent=str(self.resume_from) if self.resume_from else None)
        write_config(self.paths, {**cfg.to_dict(), "dataset_root": str(self.dataset_root),
                                  "resume_from": str(self.resume_from) if self.resume_from else None})
        torch.manual_seed(cfg.training.seed)
        random.seed(cfg.training.seed)
        np.random.seed(cfg.training.seed)

        payload = self._load_resume_payload()
        data = self._prepare(payload)
        train_set = FeatureDataset(data.splits["train"], cfg.features, cache=cfg.data.cache_features)
        model = build_model(cfg, self.tokenizer.vocab_size).to(self.device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.training.lr, betas=(0.9, 0.98), eps=1e-9,
            weight_decay=cfg.training.weight_decay,
        )
        scaler = torch.amp.GradScaler("cuda", enabled=self._use_fp16())
        sampler = DurationBucketSampler(
            [u.duration for u in data.splits["train"]],
            max_batch_seconds=cfg.training.max_batch_seconds,
            num_buckets=cfg.training.num_buckets,
            seed=cfg.training.seed,
        )
        if payload is None:
            self._init_cmvn(model, train_set)
        else:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            if payload.get("scaler"):
                scaler.load_state_dict(payload["scaler"])
            self.step, self.epoch = int(payload["step"]), int(payload["epoch"])
            if _same_data(payload["config"]["data"], cfg.to_dict()["data"]):
                sampler.load_state_dict(payload["sampler"])
            else:
                log.warning("data settings changed since the checkpoint; batches restart at epoch %d", self.epoch)
                sampler.start_epoch(self.epoch)
            _set_rng_state(payload["rng"])
            log.info("resumed from %s at step %d, epoch %d", self.resume_from, self.step, self.epoch)

        log.info("model %s/%s: %.2f M parameters on %s", cfg.model.type, cfg.model.preset,
                 count_parameters(model) / 1e6, self.device)
        self._emit({"event": "started", "step": self.step, "epoch": self.epoch,
                    "parameters": count_parameters(model), "device": str(self.device),
                    "max_steps": cfg.training.max_steps,
                    "train_clips": len(data.splits["train"]), "parent": str(self.resume_from or "") or None})

        if len(sampler) == 0:
            raise ValueError("the training split yields no batches; add clips or lower the number of processes")
        # Persistent workers keep their feature caches across epochs; the sampler is read in this
        # process at each epoch start, so its position still controls which batches come next.
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.training.seed),
            persistent_workers=cfg.data.num_workers > 0,
        )
        state = "completed"
        while self.step < cfg.training.max_steps:
            if cfg.training.max_epochs is not None and self.epoch >= cfg.training.max_epochs:
                break
            stopped = self._run_epoch(model, optimizer, scaler, sampler, loader, data)
            if stopped:
                state = "stopped"
                break
            if self.step < cfg.training.max_steps:
                self.epoch += 1
                sampler.start_epoch(self.epoch)

        if state == "completed" and (cfg.training.eval_every == 0 or self.step % cfg.training.eval_every):
            self._evaluate(model, data.splits.get("valid") or [])
        path = self._save(model, optimizer, scaler, sampler, data)
        write_status(self.paths, state, step=self.step, checkpoint=str(path), metrics=self.last_metrics,
                     best_checkpoint=str(self.best_path) if self.best_path else None)
        self._emit({"event": state, "step": self.step, "epoch": self.epoch, "checkpoint": str(path)})
        log.info("run %s at step %d; final checkpoint %s", state, self.step, path)
        return TrainResult(self.paths.run_id, state, self.step, path, dict(self.last_metrics))

    def _use_fp16(self) -> bool:
        return self.device.type == "cuda" and self.config.training.precision == "fp16"

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.training.precision
        if self.device.type != "cuda" or precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with self._autocast():
            log_probs, out_lengths = model(batch.features, batch.feature_lengths)
        # CTC in float32 whatever the autocast dtype: its recursions underflow in half precision.
        loss = F.ctc_loss(
            log_probs.float().transpose(0, 1), batch.labels.clamp_min(0), out_lengths, batch.label_lengths,
            blank=self.tokenizer.blank_id, reduction="sum", zero_infinity=False,
        ) / len(batch.ids)
        return loss, log_probs, out_lengths

    def _run_epoch(self, model, optimizer, scaler, sampler, loader, data: PreparedData) -> bool:
        """Train until the epoch ends or max_steps is reached; return True if a stop was requested."""
        cfg = self.config.training
        model.train()
        iterator = iter(loader)
        window = {"loss": 0.0, "steps": 0, "audio": 0.0, "wait": 0.0, "time": 0.0, "grad_norm": 0.0,
                  "frames": 0, "padded": 0}
        while self.step < cfg.max_steps:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return False
            fetched = time.perf_counter()
            batch = batch.to(self.device, non_blocking=True)
            lr = lr_at(self.step + 1, peak=cfg.lr, warmup_steps=cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, _, _ = self._loss(model, batch)
            if not torch.isfinite(loss):
                # Should not happen after the CTC length filter; skip rather than poison the weights.
                log.warning("non-finite loss at step %d on clips %s; batch skipped", self.step + 1, batch.ids)
                sampler.advance()
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            sampler.advance()
            self.step += 1

            done = time.perf_counter()
            window["loss"] += float(loss.detach())
            window["grad_norm"] += float(grad_norm)
            window["steps"] += 1
            window["audio"] += batch.audio_seconds
            window["wait"] += fetched - started
            window["time"] += done - started
            window["frames"] += int(batch.feature_lengths.sum())
            window["padded"] += batch.features.shape[0] * batch.features.shape[1]
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self._log_step(window, lr)
                window = dict.fromkeys(window, 0)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self._evaluate(model, data.splits.get("valid") or [])
                model.train()
            if self.should_stop():
                log.info("stop requested at step %d", self.step)
                return True
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                self._save(model, optimizer, scaler, sampler, data)
        return False

    def _log_step(self, window: dict[str, float], lr: float) -> None:
        steps = max(window["steps"], 1)
        record = {
            "event": "step", "step": self.step, "epoch": self.epoch,
            "loss": window["loss"] / steps, "lr": lr, "grad_norm": window["grad_norm"] / steps,
            "audio_seconds_per_second": window["audio"] / max(window["time"], 1e-9),
            "data_wait_share": window["wait"] / max(window["time"], 1e-9),
            "padding_share": 1 - window["frames"] / max(window["padded"], 1),
        }
        self.last_metrics.update(loss=record["loss"])
        log.info("step %d epoch %d loss %.4f lr %.2e grad_norm %.2f %.1f audio-s/s", self.step, self.epoch,
                 record["loss"], lr, record["grad_norm"], record["audio_seconds_per_second"])
        self._emit(record)

    @torch.no_grad()
    def _evaluate(self, model: torch.nn.Module, utterances: list[Utterance]) -> None:
        if not utterances:
            return
        result = evaluate_model(model, utterances, self.config, self.tokenizer, self.device,
                                loss_fn=self._loss)
        self.last_metrics.update(valid_loss=result["loss"], cer=result["cer"], wer=result["wer"])
        self.last_eval_step = self.step
        self._emit({"event": "eval", "step": self.step, "epoch": self.epoch, "valid_loss": result["loss"],
                    "cer": result["cer"], "wer": result["wer"], "clips": len(utterances)})
        log.info("eval at step %d: valid loss %.4f CER %.4f WER %.4f", self.step, result["loss"],
                 result["cer"], result["wer"])

    def _save(self, model, optimizer, scaler, sampler, data: PreparedData) -> Path:
        path = self.paths.root / ckpt.checkpoint_name(self.step)
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"type": "warmup_inverse_sqrt", "step": self.step,
                          "peak_lr": self.config.training.lr, "warmup_steps": self.config.training.warmup_steps},
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.epoch,
            "sampler": sampler.state_dict(),
            "rng": _rng_state(),
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
        write_status(self.paths, "running", step=self.step, checkpoint=str(path))
        self._emit({"event": "checkpoint", "step": self.step, "epoch": self.epoch, "path": str(path),
                    "size": info.size, "metrics": metrics})
        return path


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    utterances: list[Utterance],
    config: RunConfig,
    tokenizer: CharTokenizer,
    device: torch.device,
    *,
    loss_fn: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    """Greedy-decode `utterances`; return the mean CTC loss, CER, WER and the hypotheses by clip id."""
    was_training = model.training
    model.eval()
    dataset = FeatureDataset(utterances, config.features)
    sampler = DurationBucketSampler([u.duration for u in utterances], max_batch_seconds=config.training.max_batch_seconds,
                                    num_buckets=1, shuffle=False)
    total_loss, refs, hyps, ids = 0.0, [], [], []
    for indices in sampler:
        batch = collate([dataset[i] for i in indices]).to(device)
        loss, log_probs, out_lengths = loss_fn(model, batch)
        total_loss += float(loss) * len(indices)
        for index, hyp in zip(indices, greedy_ctc_decode(log_probs, out_lengths, tokenizer.blank_id)):
            ids.append(utterances[index].id)
            refs.append(utterances[index].text)
            hyps.append(tokenizer.decode(hyp.tokens))
    rates = error_rates(refs, hyps)
    model.train(was_training)
    return {"loss": total_loss / len(utterances), "cer": rates.cer, "wer": rates.wer,
            "hypotheses": dict(zip(ids, hyps))}
