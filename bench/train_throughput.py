"""Training throughput of the asrlib Trainer, a hand-written PyTorch loop and the model alone.

For each preset, three loops train the same model configuration on the same clips, with the same
precision, torch.compile setting and gradient accumulation:

- trainer: asrlib's Trainer in a temporary run folder. Its figures come from the per-step
  records of metrics.jsonl (log_every=1), after the warm-up steps.
- plain: what a user would write by hand. A DataLoader with shuffle=True and a fixed batch size
  that gives the trainer's mean batch audio, features computed by the same code, AdamW and
  F.ctc_loss.
- model only: the same forward, backward and optimizer step on the trainer's own batches,
  pre-built in memory (on the device for CUDA). This is the limit without data loading.

On CUDA, nvidia-smi samples GPU utilisation and memory during each loop's measured steps, and
torch reports each loop's peak allocated memory. After the tables the script checks two targets on
the `small` preset: data wait plus padding at most 5 % of the trainer's step time, and trainer
throughput at least 0.95 of the model-only loop's.

With --repeats N the three loops run N times in turn, and each loop's figures pool its steps from
every repeat, so that a slow spell of a shared machine falls on all three loops alike. With
--precompute-features the trainer reads features stored on disk beforehand, as after `asr features`.

Run from the repository root:

    .venv/bin/python bench/train_throughput.py --presets tiny small medium --json train.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from common import (
    LJSPEECH_MINI,
    REPO_ROOT,
    machine_info,
    print_machine,
    quiet_training_logs,
    resolve_device,
    run_main,
    set_threads,
)
from gpu_monitor import GpuMonitor, GpuUsage
from torch.nn.utils.rnn import pad_sequence
from train_report import TARGET_PRESET, print_report, target_checks

from asrlib.audio import load_audio
from asrlib.config import RunConfig, load_settings, resolve_run_config
from asrlib.features import FbankExtractor
from asrlib.models import build_model
from asrlib.text import CharTokenizer
from asrlib.training.data import FeatureDataset, Utterance, precompute_features, prepare_data
from asrlib.training.sampler import DurationBucketSampler
from asrlib.training.trainer import Trainer, build_optimizer

# config.yaml's batch budget (240 s) is sized for a GPU. On CPU a smaller budget keeps the
# default run to a few minutes; --max-batch-seconds overrides it.
CPU_MAX_BATCH_SECONDS = 60.0
WARMUP_STEPS = 2
# torch.compile compiles on the first step and, with asrlib's Conformer, again for most new batch
# shapes, up to torch._dynamo.config.recompile_limit (8 in torch 2.11). More warm-up steps keep
# some of that out of the figures; the notes count the graphs built while measuring.
COMPILE_WARMUP_STEPS = 5
# A measured step this many times slower than the median is reported (a recompilation, say).
SLOW_STEP_FACTOR = 2.0

MIB = 2**20


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class StepSample:
    """One measured optimizer step, over all its accumulated micro-batches."""

    audio_seconds: float  # unpadded audio in the step's batches
    step_seconds: float  # from asking for the first batch to the end of the optimizer step
    wait_seconds: float  # part of step_seconds spent waiting for batches
    frames: int  # real feature frames in the step's batches
    padded_frames: int  # per batch, batch size x longest clip in feature frames; summed
    clips: int


@dataclass
class LoopResult:
    """The measured steps of one loop on one preset."""

    preset: str
    loop: str
    device_type: str
    samples: list[StepSample]
    wall_seconds: float  # wall clock over the measured steps, including time outside the step window
    windows: list[tuple[float, float]]  # time.time() at the start and end of the measured steps, per repeat
    notes: list[str] = field(default_factory=list)
    compiled_graphs: int = 0  # graphs torch.compile built during the measured steps
    cuda_max_allocated_bytes: int | None = None  # over the whole loop, warm-up included
    gpu: GpuUsage | None = None  # filled in after the run, once nvidia-smi has stopped

    @property
    def audio_seconds(self) -> float:
        return sum(s.audio_seconds for s in self.samples)

    @property
    def step_seconds(self) -> float:
        return sum(s.step_seconds for s in self.samples)

    def summary(self) -> dict[str, Any]:
        """Aggregate over steps as the trainer aggregates a log window: sums first, then ratios."""
        steps = len(self.samples)
        frames = sum(s.frames for s in self.samples)
        padded = sum(s.padded_frames for s in self.samples)
        wall_throughput = self.audio_seconds / self.wall_seconds
        on_gpu = self.device_type == "cuda"
        return {
            "preset": self.preset,
            "loop": self.loop,
            "device": self.device_type,
            "steps": steps,
            "clips_per_step": sum(s.clips for s in self.samples) / steps,
            "step_audio_seconds": self.audio_seconds / steps,
            "seconds_per_step": self.step_seconds / steps,
            "audio_seconds_per_second": self.audio_seconds / self.step_seconds,
            "wall_audio_seconds_per_second": wall_throughput,
            # One second of wall time on one GPU per second of audio is one hour per GPU-hour.
            "audio_hours_per_gpu_hour": wall_throughput if on_gpu else None,
            "data_wait_share": sum(s.wait_seconds for s in self.samples) / self.step_seconds,
            "padding_share": 1 - frames / padded,
            "gpu_utilization_percent": self.gpu.mean_utilization_percent if self.gpu else None,
            "gpu_memory_used_peak_mib": self.gpu.peak_memory_used_mib if self.gpu else None,
            "gpu_samples": self.gpu.samples if self.gpu else None,
            "cuda_max_allocated_mib": (None if self.cuda_max_allocated_bytes is None
                                       else self.cuda_max_allocated_bytes / MIB),
            "compiled_graphs_while_measured": self.compiled_graphs,
            "notes": self.notes,
        }


class PaddedBatch(NamedTuple):
    features: torch.Tensor  # (B, T, F), zero-padded
    feature_lengths: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B, L), padded with 0; CTC reads only label_lengths entries
    label_lengths: torch.Tensor  # (B,)
    audio_seconds: float

    def to(self, device: torch.device) -> PaddedBatch:
        non_blocking = device.type == "cuda"
        return PaddedBatch(
            *(t.to(device, non_blocking=non_blocking) for t in self[:4]), self.audio_seconds
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self[:4])


def step_sample(batches: list[PaddedBatch], step_seconds: float, wait_seconds: float) -> StepSample:
    """Describe one optimizer step over its micro-batches."""
    return StepSample(
        audio_seconds=sum(b.audio_seconds for b in batches),
        step_seconds=step_seconds,
        wait_seconds=wait_seconds,
        frames=sum(int(b.feature_lengths.sum()) for b in batches),
        padded_frames=sum(b.features.shape[0] * b.features.shape[1] for b in batches),
        clips=sum(b.features.shape[0] for b in batches),
    )


def pad_batch(items: list[tuple[torch.Tensor, torch.Tensor, float]]) -> PaddedBatch:
    """Collate (features, labels, duration) items into one zero-padded batch."""
    features, labels, durations = zip(*items, strict=True)
    return PaddedBatch(
        features=pad_sequence(list(features), batch_first=True),
        feature_lengths=torch.tensor([f.shape[0] for f in features]),
        labels=pad_sequence(list(labels), batch_first=True),
        label_lengths=torch.tensor([len(x) for x in labels]),
        audio_seconds=float(sum(durations)),
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timestamp taken next includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled_graphs() -> int:
    """Count the graphs torch.compile has built in this process (a private torch counter)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def start_loop(args: argparse.Namespace, device: torch.device) -> None:
    """Give each loop the same start: no compiled code from an earlier loop, fresh memory peaks."""
    gc.collect()
    if args.compile:
        # Without the reset, a later loop would reuse the graphs compiled for an earlier one.
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def finish_loop(result: LoopResult, device: torch.device) -> LoopResult:
    if device.type == "cuda":
        result.cuda_max_allocated_bytes = torch.cuda.max_memory_allocated(device)
    durations = [s.step_seconds for s in result.samples]
    median = statistics.median(durations)
    slowest = max(range(len(durations)), key=durations.__getitem__)
    if durations[slowest] > SLOW_STEP_FACTOR * median:
        result.notes.append(f"measured step {slowest + 1} took {durations[slowest]:.2f} s, "
                            f"{durations[slowest] / median:.1f} times the median step")
    if result.compiled_graphs:
        result.notes.append(f"torch.compile built {result.compiled_graphs} graphs during the measured "
                            "steps, so compilation time is part of these figures")
    return result


# ----------------------------------------------------------------------------- shared set-up


@dataclass
class BenchData:
    """The clips of one preset's run, with features computed once for the in-memory loops."""

    preset: str
    config: RunConfig
    utterances: list[Utterance]  # the trainer's training split, in the trainer's index order
    features: list[torch.Tensor]  # log-mel features per utterance, as FeatureDataset computes them
    trainer_steps: list[list[list[int]]]  # per trainer step, the utterance indices of each micro-batch
    step_epochs: list[int]  # the epoch of each trainer step
    batches_per_epoch: int  # sampler batches in the first epoch

    @property
    def micro_batches(self) -> list[list[int]]:
        """The trainer's batches in the order its steps consume them."""
        return [batch for step in self.trainer_steps for batch in step]

    def batch(self, indices: list[int]) -> PaddedBatch:
        return pad_batch([self.item(i) for i in indices])

    def item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        utterance = self.utterances[index]
        return self.features[index], torch.tensor(utterance.labels), utterance.duration


def bench_config(preset: str, args: argparse.Namespace, device: torch.device) -> RunConfig:
    """Resolve the run configuration of `preset` for a short measured run on every clip."""
    max_batch_seconds = args.max_batch_seconds
    if max_batch_seconds is None and device.type == "cpu":
        max_batch_seconds = CPU_MAX_BATCH_SECONDS
    training: dict[str, Any] = {
        "max_steps": args.warmup_steps + args.steps,
        "precision": args.precision,
        "device": str(device),
        "compile": args.compile,
        "accumulate_grad_batches": args.accumulate,
        # One record per step, so warm-up steps can be dropped one by one.
        "log_every": 1,
        # No validation and no intermediate checkpoints: both would run between measured steps.
        "eval_every": 0,
        "checkpoint_every": 0,
        "keep_last": 0,
    }
    if max_batch_seconds is not None:
        training["max_batch_seconds"] = max_batch_seconds
    data: dict[str, Any] = {
        "max_clips": args.clips, "train_on": "all", "valid_fraction": 0.0, "test_fraction": 0.0,
        "num_workers": args.num_workers, "cache_features": args.cache_features,
        "feature_cache_dir": str(args.feature_cache_dir) if args.feature_cache_dir else None,
        # Speed perturbation changes each clip's length per epoch, and the script rebuilds the
        # trainer's batches at speed 1.
        "speed_perturb": False,
    }
    overrides = {"data": data, "training": training}
    return resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset=preset,
                              overrides=overrides)


def trainer_batch_order(utterances: list[Utterance], config: RunConfig,
                        steps: int) -> tuple[list[list[list[int]]], list[int], int]:
    """Rebuild the trainer's steps from its seeded DurationBucketSampler.

    The sampler's order depends only on its seed and the epoch, which is what lets the trainer
    resume mid-epoch, so the same sampler built here yields the same batches. Each step takes
    `accumulate_grad_batches` batches; the trainer drops an epoch's tail that is too short for a
    whole step. Returns the steps, the epoch of each step and the batches of the first epoch.
    """
    sampler = DurationBucketSampler(
        [u.duration for u in utterances],
        max_batch_seconds=config.training.max_batch_seconds,
        num_buckets=config.training.num_buckets,
        seed=config.training.seed,
    )
    accumulate = config.training.accumulate_grad_batches
    trainer_steps: list[list[list[int]]] = []
    epochs: list[int] = []
    first_epoch_batches = len(sampler)
    if first_epoch_batches < accumulate:
        raise ValueError(
            f"an epoch has {first_epoch_batches} batches, fewer than --accumulate {accumulate}, so the "
            "trainer would never take a step; lower --accumulate or --max-batch-seconds"
        )
    epoch = 0
    while len(trainer_steps) < steps:
        sampler.start_epoch(epoch)
        batches = list(sampler)
        whole = len(batches) - len(batches) % accumulate
        for start in range(0, whole, accumulate):
            trainer_steps.append(batches[start : start + accumulate])
            epochs.append(epoch)
        epoch += 1
    return trainer_steps[:steps], epochs[:steps], first_epoch_batches


def load_bench_data(preset: str, args: argparse.Namespace, device: torch.device) -> BenchData:
    """Select the clips as the trainer will, and compute their features once."""
    config = bench_config(preset, args, device)
    tokenizer = CharTokenizer(config.text.charset)
    prepared = prepare_data(args.data, config.data, config.features, tokenizer)
    utterances = prepared.splits["train"]
    dataset = FeatureDataset(utterances, config.features)
    if args.precompute_features:
        # The trainer's dataset reads this folder too: bench_config() sets data.feature_cache_dir.
        dataset = FeatureDataset(utterances, config.features, cache_dir=config.data.feature_cache_dir)
        fill = precompute_features(dataset)
        print(f"{preset}: features of {fill.entries} clips on disk in {dataset.cache_dir} "
              f"({fill.computed} computed, {fill.seconds:.1f} s)", flush=True)
    features = [dataset.features(i) for i in range(len(dataset))]
    steps, epochs, per_epoch = trainer_batch_order(utterances, config, config.training.max_steps)
    return BenchData(preset, config, utterances, features, steps, epochs, per_epoch)


def cmvn_stats(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-bin sums of x and x^2 and the frame count, as the trainer computes them for CMVN."""
    stacked = torch.cat(features).double()
    return stacked.sum(0).float(), (stacked**2).sum(0).float(), stacked.shape[0]


# ----------------------------------------------------------------------------- trainer


def run_trainer(data: BenchData, args: argparse.Namespace, device: torch.device) -> LoopResult:
    """Run the asrlib Trainer and turn its per-step metric records into StepSamples."""
    # perf_counter, time.time and the compiled-graph count at each step record; "started" marks
    # step 0, just before the loop.
    stamps: dict[int, tuple[float, float, int]] = {}

    def on_event(record: dict[str, Any]) -> None:
        if record["event"] in ("started", "step"):
            stamps[record["step"]] = (time.perf_counter(), time.time(), compiled_graphs())

    with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
        # The trainer was configured for `device` by bench_config().
        run_dir = Path(tmp) / f"bench-{data.preset}"
        Trainer(data.config, run_dir, dataset_root=args.data, on_event=on_event).fit()
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r for r in records if r["event"] == "step" and r["step"] > args.warmup_steps]
    if len(steps) != args.steps:
        raise RuntimeError(f"the trainer logged {len(steps)} measured steps, expected {args.steps}")
    samples = [trainer_sample(data, record) for record in steps]
    last = data.config.training.max_steps
    (start, start_time, start_graphs), (end, end_time, end_graphs) = stamps[args.warmup_steps], stamps[last]
    result = LoopResult(data.preset, "trainer", device.type, samples, end - start, [(start_time, end_time)],
                        compiled_graphs=end_graphs - start_graphs)
    outside = result.wall_seconds - result.step_seconds
    result.notes.append(f"{outside:.2f} s of wall time fell outside the trainer's step timer")
    nonfinite = sum(r.get("nonfinite_steps", 0) for r in steps)
    if nonfinite:
        result.notes.append(f"{nonfinite} measured steps had a non-finite gradient, so the trainer skipped "
                            "their update")
    if args.precompute_features:
        result.notes.append("features read from the disk cache filled before the loops")
    elif args.cache_features or args.feature_cache_dir:
        result.notes.append(cache_note(data, args))
    return result


def cache_note(data: BenchData, args: argparse.Namespace) -> str:
    """Say how many measured steps could read cached features: only those after the first epoch."""
    measured_epochs = data.step_epochs[args.warmup_steps :]
    later = sum(1 for epoch in measured_epochs if epoch > 0)
    text = (f"{later} of {len(measured_epochs)} measured steps are past the first epoch "
            f"({data.batches_per_epoch} batches), where cached features can be read")
    if args.num_workers > 1 and not args.feature_cache_dir:
        # Each worker process keeps its own in-memory cache, and batches go to the workers in
        # turn, so in the second epoch a clip reaches the worker that computed it 1 time in N.
        text += (f"; each of the {args.num_workers} workers caches only the clips it computed, "
                 "and no --feature-cache-dir shares them")
    return text


def trainer_sample(data: BenchData, record: dict[str, Any]) -> StepSample:
    """Recover one step's absolute figures from the trainer's ratios and the rebuilt batches.

    A step record contains ratios only. The rebuilt batches give the audio seconds, and the step
    time follows as audio / audio_seconds_per_second. The padding share must match the record
    exactly, which checks that the rebuilt batches are the ones the trainer ran.
    """
    batches = [data.batch(indices) for indices in data.trainer_steps[record["step"] - 1]]
    step_seconds = sum(b.audio_seconds for b in batches) / record["audio_seconds_per_second"]
    sample = step_sample(batches, step_seconds, record["data_wait_share"] * step_seconds)
    expected_padding = 1 - sample.frames / max(sample.padded_frames, 1)
    if abs(expected_padding - record["padding_share"]) > 1e-9:
        raise RuntimeError(
            f"step {record['step']}: the trainer logged padding share {record['padding_share']:.6f} "
            f"but the rebuilt batches have {expected_padding:.6f}; the trainer's sampler or step "
            "logic no longer matches trainer_batch_order(), so its step times cannot be recovered"
        )
    return sample


# ----------------------------------------------------------------------------- hand-written loops


class ClipDataset(torch.utils.data.Dataset):
    """Decodes a clip and computes its log-mel features on every access, as a user would write it."""

    def __init__(self, utterances: list[Utterance], config: RunConfig) -> None:
        self.utterances = utterances
        self.sample_rate = config.features.sample_rate
        self.extractor = FbankExtractor(config.features)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        utterance = self.utterances[index]
        features = self.extractor(load_audio(utterance.audio_path, self.sample_rate))
        return features, torch.tensor(utterance.labels), utterance.duration


class TrainStep:
    """A fresh model and the trainer's fused AdamW, trained as the trainer trains.

    Same optimizer, gradient clipping, CTC loss summed and divided by the batch size, gradient
    accumulation, autocast and fp16 loss scaling on CUDA only, and torch.compile of the whole
    model when the run compiles. Left out: the learning-rate schedule, whose cost is negligible,
    and the trainer's check that skips a step with a non-finite gradient, one isfinite per step.
    """

    def __init__(self, data: BenchData, device: torch.device, *, compile_model: bool) -> None:
        config = data.config
        self.tokenizer = CharTokenizer(config.text.charset)
        torch.manual_seed(config.training.seed)
        model = build_model(config, self.tokenizer.vocab_size)
        model.cmvn.set_stats(*cmvn_stats(data.features))
        model.to(device).train()
        self.parameters = list(model.parameters())
        self.model: Callable[..., tuple[torch.Tensor, torch.Tensor]] = (
            torch.compile(model) if compile_model else model)
        self.optimizer = build_optimizer(model, lr=config.training.lr, weight_decay=config.training.weight_decay)
        precision = config.training.precision if device.type == "cuda" else "fp32"
        self.autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
        if precision != "fp32":
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            self.autocast = torch.autocast("cuda", dtype=dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        self.accumulate = config.training.accumulate_grad_batches
        self.grad_clip = config.training.grad_clip

    def backward(self, batch: PaddedBatch) -> torch.Tensor:
        """Add one micro-batch's gradients; return its loss without waiting for the device."""
        with self.autocast:
            log_probs, out_lengths = self.model(batch.features, batch.feature_lengths)
        loss = F.ctc_loss(log_probs.float().transpose(0, 1), batch.labels, out_lengths,
                          batch.label_lengths, blank=self.tokenizer.blank_id, reduction="sum")
        loss = loss / batch.features.shape[0]
        self.scaler.scale(loss / self.accumulate).backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


class MeasuredSteps(NamedTuple):
    samples: list[StepSample]
    wall_seconds: float
    window: tuple[float, float]  # time.time() at the start and end of the measured steps
    compiled_graphs: int


def timed_loop(fetch: Callable[[], PaddedBatch], train: TrainStep, *, total_steps: int,
               warmup_steps: int, device: torch.device) -> MeasuredSteps:
    """Run `total_steps` optimizer steps and measure those after warm-up.

    As in the trainer, the data wait is the time spent in fetch(); the copy to the device is not.
    """
    samples: list[StepSample] = []
    wall_started, window_start, graphs = time.perf_counter(), time.time(), compiled_graphs()
    for index in range(total_steps):
        if index == warmup_steps:
            wall_started, window_start, graphs = time.perf_counter(), time.time(), compiled_graphs()
        started = time.perf_counter()
        wait = 0.0
        batches: list[PaddedBatch] = []
        losses: list[torch.Tensor] = []
        for _ in range(train.accumulate):
            fetch_started = time.perf_counter()
            batch = fetch()
            wait += time.perf_counter() - fetch_started
            batches.append(batch)
            losses.append(train.backward(batch.to(device)))
        train.optimizer_step()
        # Reading the loss, as a hand-written loop does to print it, waits for the device, and
        # synchronize() makes sure the optimizer step is inside the timed window too.
        float(sum(losses))
        synchronize(device)
        done = time.perf_counter()
        if index >= warmup_steps:
            samples.append(step_sample(batches, done - started, wait))
    return MeasuredSteps(samples, time.perf_counter() - wall_started, (window_start, time.time()),
                         compiled_graphs() - graphs)


def endless(loader: torch.utils.data.DataLoader) -> Iterator[PaddedBatch]:
    """Iterate over `loader` epoch after epoch; restarting it counts as waiting for data."""
    while True:
        yield from loader


def plain_batch_size(data: BenchData) -> int:
    """Clips per batch that give a random batch the trainer's mean batch audio."""
    batches = data.micro_batches
    batch_audio = sum(sum(data.utterances[i].duration for i in b) for b in batches) / len(batches)
    mean_clip = sum(u.duration for u in data.utterances) / len(data.utterances)
    return max(1, round(batch_audio / mean_clip))


def run_plain(data: BenchData, args: argparse.Namespace, device: torch.device) -> LoopResult:
    batch_size = plain_batch_size(data)
    workers = args.num_workers
    loader = torch.utils.data.DataLoader(
        ClipDataset(data.utterances, data.config),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=pad_batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(data.config.training.seed),
        # Like the trainer's loader, so neither loop restarts its workers at each epoch.
        persistent_workers=workers > 0,
        prefetch_factor=data.config.data.prefetch_factor if workers > 0 else None,
    )
    batches = endless(loader)
    train = TrainStep(data, device, compile_model=args.compile)
    measured = timed_loop(lambda: next(batches), train, total_steps=data.config.training.max_steps,
                          warmup_steps=args.warmup_steps, device=device)
    return LoopResult(data.preset, "plain", device.type, measured.samples, measured.wall_seconds,
                      [measured.window], [f"batch size {batch_size} clips"],
                      compiled_graphs=measured.compiled_graphs)


def run_model_only(data: BenchData, args: argparse.Namespace, device: torch.device) -> LoopResult:
    prebuilt = [data.batch(indices).to(device) for indices in data.micro_batches]
    synchronize(device)
    batches = iter(prebuilt)
    train = TrainStep(data, device, compile_model=args.compile)
    measured = timed_loop(lambda: next(batches), train, total_steps=data.config.training.max_steps,
                          warmup_steps=args.warmup_steps, device=device)
    notes = ["the trainer's batches, held in memory"]
    if device.type == "cuda":
        size = sum(b.nbytes() for b in prebuilt) / MIB
        notes.append(f"its CUDA max allocated includes {size:.0f} MiB of pre-built batches")
    return LoopResult(data.preset, "model only", device.type, measured.samples, measured.wall_seconds,
                      [measured.window], notes, compiled_graphs=measured.compiled_graphs)


# ----------------------------------------------------------------------------- report


def describe_settings(args: argparse.Namespace, device: torch.device) -> str:
    precision = args.precision
    if precision != "fp32" and device.type != "cuda":
        precision += " requested; as in the trainer it applies on CUDA only, so this run is fp32"
    caches = []
    if args.cache_features:
        caches.append("in memory")
    if args.feature_cache_dir:
        caches.append(f"on disk in {args.feature_cache_dir}")
    if args.precompute_features:
        caches.append("filled before the loops")
    cache = ", ".join(caches) or "off"
    return (f"settings: precision {precision}; torch.compile {'on' if args.compile else 'off'}; "
            f"batches per optimizer step {args.accumulate}; DataLoader workers {args.num_workers}; "
            f"feature cache {cache}; steps per loop {args.warmup_steps} warm-up + {args.steps} measured; "
            f"repeats {args.repeats}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure training throughput (audio seconds per second) of the asrlib Trainer, "
                    "a hand-written PyTorch loop and the model alone, on the same clips.")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"],
                        help="Conformer presets from config.yaml, e.g. tiny small medium (default: tiny small)")
    parser.add_argument("--steps", type=int, default=10,
                        help="measured optimizer steps per loop, after warm-up (default: 10)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help=f"steps run first and left out of the figures (default: {WARMUP_STEPS}, "
                             f"{COMPILE_WARMUP_STEPS} with --compile)")
    parser.add_argument("--clips", type=int, default=None,
                        help="use only the first N clips by id (default: all)")
    parser.add_argument("--max-batch-seconds", type=float, default=None,
                        help="trainer batch budget in audio seconds, padding included (default: "
                             f"{CPU_MAX_BATCH_SECONDS:g} on CPU, training.max_batch_seconds of "
                             "config.yaml on CUDA)")
    parser.add_argument("--accumulate", type=int, default=1, metavar="N",
                        help="batches whose gradients are summed before each optimizer step, in every "
                             "loop; sets training.accumulate_grad_batches (default: 1)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader worker processes of the trainer and the plain loop "
                             "(default: 0, as data.num_workers in config.yaml)")
    parser.add_argument("--cache-features", action="store_true",
                        help="keep the trainer's computed features in memory (data.cache_features); "
                             "only steps after the first epoch can read them")
    parser.add_argument("--feature-cache-dir", type=Path, default=None,
                        help="also keep the trainer's features on disk in this folder, shared by its "
                             "workers and kept between runs (data.feature_cache_dir)")
    parser.add_argument("--precompute-features", action="store_true",
                        help="before the loops, compute every clip's features into the disk cache "
                             "(--feature-cache-dir, else a temporary folder) as `asr features` does, so "
                             "that the trainer reads stored features")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the three loops this many times in turn and pool each loop's steps "
                             "(default: 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to train (default: cuda when visible, else cpu)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="autocast dtype, with loss scaling for fp16; like the trainer, applied on "
                             "CUDA only (default: fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model in every loop (sets training.compile)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the usable CPU cores)")
    parser.add_argument("--data", type=Path, default=LJSPEECH_MINI,
                        help=f"LJSpeech-format folder (default: {LJSPEECH_MINI})")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.warmup_steps is None:
        args.warmup_steps = COMPILE_WARMUP_STEPS if args.compile else WARMUP_STEPS
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be 0 or more, got {args.warmup_steps}")
    if args.clips is not None and args.clips < 1:
        parser.error(f"--clips must be at least 1, got {args.clips}")
    if args.accumulate < 1:
        parser.error(f"--accumulate must be at least 1, got {args.accumulate}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not args.data.is_dir():
        parser.error(f"data folder not found: {args.data}; pass --data with an LJSpeech-format folder")
    if args.feature_cache_dir is not None:
        # The trainer takes a relative data.feature_cache_dir from the repository root.
        args.feature_cache_dir = args.feature_cache_dir.resolve()
    return args


def measure(args: argparse.Namespace, device: torch.device) -> list[list[LoopResult]]:
    """Run the three loops on every preset, `args.repeats` times in turn; return one list per repeat."""
    repeats: list[list[LoopResult]] = [[] for _ in range(args.repeats)]
    for preset in args.presets:
        data = load_bench_data(preset, args, device)
        print(f"{preset}: {len(data.utterances)} clips, "
              f"{sum(u.duration for u in data.utterances):.0f} s of audio, max batch "
              f"{data.config.training.max_batch_seconds:g} s, {data.batches_per_epoch} batches per epoch",
              flush=True)
        for repeat, results in enumerate(repeats, start=1):
            for run in (run_trainer, run_plain, run_model_only):
                start_loop(args, device)
                started = time.perf_counter()
                result = finish_loop(run(data, args, device), device)
                results.append(result)
                # Printed as each loop ends, so a run cut short still shows the loops it finished.
                summary = result.summary()
                label = f" (repeat {repeat})" if args.repeats > 1 else ""
                print(f"  {result.loop}{label}: {time.perf_counter() - started:.0f} s with set-up and warm-up, "
                      f"{summary['wall_audio_seconds_per_second']:.1f} wall audio-s/s, "
                      f"data wait {summary['data_wait_share']:.1%}, padding {summary['padding_share']:.1%}",
                      flush=True)
        del data
    return repeats


def pool_repeats(repeats: list[list[LoopResult]]) -> list[LoopResult]:
    """Join each loop's results from every repeat into one: all its steps, wall times added."""
    pooled: list[LoopResult] = []
    for same_loop in zip(*repeats, strict=True):
        first = same_loop[0]
        notes = list(dict.fromkeys(note for result in same_loop for note in result.notes))
        allocated = [r.cuda_max_allocated_bytes for r in same_loop if r.cuda_max_allocated_bytes is not None]
        pooled.append(LoopResult(
            first.preset, first.loop, first.device_type,
            samples=[sample for result in same_loop for sample in result.samples],
            wall_seconds=sum(result.wall_seconds for result in same_loop),
            windows=[window for result in same_loop for window in result.windows],
            notes=notes,
            compiled_graphs=sum(result.compiled_graphs for result in same_loop),
            cuda_max_allocated_bytes=max(allocated) if allocated else None,
        ))
    return pooled


@contextlib.contextmanager
def feature_cache(args: argparse.Namespace) -> Iterator[None]:
    """Give --precompute-features a temporary cache folder when --feature-cache-dir is not set."""
    if not args.precompute_features or args.feature_cache_dir is not None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="asr-bench-features-") as folder:
        args.feature_cache_dir = Path(folder)
        try:
            yield
        finally:
            args.feature_cache_dir = None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_training_logs()
    set_threads(args.threads)
    device = resolve_device(args.device)
    machine = print_machine(device)
    print(describe_settings(args, device), flush=True)

    monitor = GpuMonitor(device)
    monitor.start()
    try:
        with feature_cache(args):
            repeats = measure(args, device)
    finally:
        monitor.stop()
    results = pool_repeats(repeats)
    for result in results:
        result.gpu = monitor.usage(result.windows)
        if result.gpu is not None and result.gpu.note:
            result.notes.append(f"GPU samples: {result.gpu.note}")

    summaries = [result.summary() for result in results]
    repeat_checks = [target_checks([r.summary() for r in results]) for results in repeats] if args.repeats > 1 else []
    print_report(summaries, device.type, monitor.unavailable, repeat_checks)
    machine["load_average_1min_after"] = machine_info(device)["load_average_1min"]
    if args.json:
        payload = {
            "machine": machine,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summaries": summaries,
            "targets": {"preset": TARGET_PRESET, "checks": target_checks(summaries),
                        "checks_per_repeat": repeat_checks},
            "gpu_monitor": monitor.unavailable or "nvidia-smi",
            "summaries_per_repeat": [[r.summary() for r in results] for results in repeats] if args.repeats > 1 else [],
            "steps": {f"{r.preset}/{r.loop}": [asdict(s) for s in r.samples] for r in results},
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_main(main)
