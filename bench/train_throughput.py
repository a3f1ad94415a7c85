"""Training throughput of the asrlib Trainer, a hand-written PyTorch loop and the model alone.

For each preset, three loops train the same model configuration on the same clips:

- trainer: asrlib's Trainer in a temporary run folder. Its figures come from the per-step
  records of metrics.jsonl (log_every=1), after the warm-up steps.
- plain: what a user would write by hand. A DataLoader with shuffle=True and a fixed batch size
  that gives the trainer's mean batch audio, features computed by the same code, AdamW and
  F.ctc_loss.
- model only: the same forward, backward and optimizer step on the trainer's own batches,
  pre-built in memory (on the device for CUDA). This is the limit without data loading.

Run from the repository root:

    .venv/bin/python bench/train_throughput.py --presets tiny small --json train.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
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
    busy_warning,
    describe_machine,
    machine_info,
    resolve_device,
    set_threads,
)
from torch.nn.utils.rnn import pad_sequence

from asrlib.audio import load_audio
from asrlib.config import RunConfig, load_settings, resolve_run_config
from asrlib.features import FbankExtractor
from asrlib.models import build_model
from asrlib.text import CharTokenizer
from asrlib.training.data import FeatureDataset, Utterance, prepare_data
from asrlib.training.sampler import DurationBucketSampler
from asrlib.training.trainer import Trainer

# config.yaml's batch budget (240 s) is sized for a GPU. On CPU a smaller budget keeps the
# default run to a few minutes; --max-batch-seconds overrides it.
CPU_MAX_BATCH_SECONDS = 60.0


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class StepSample:
    """One measured optimizer step."""

    audio_seconds: float  # unpadded audio in the batch
    step_seconds: float  # from asking for the batch to the end of the optimizer step
    wait_seconds: float  # part of step_seconds spent waiting for the batch
    frames: int  # real feature frames in the batch
    padded_frames: int  # batch size x longest clip, in feature frames
    clips: int


@dataclass
class LoopResult:
    """The measured steps of one loop on one preset."""

    preset: str
    loop: str
    samples: list[StepSample]
    wall_seconds: float  # wall clock over the measured steps, including time outside the step window
    notes: list[str] = field(default_factory=list)

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
        return {
            "preset": self.preset,
            "loop": self.loop,
            "steps": steps,
            "clips_per_batch": sum(s.clips for s in self.samples) / steps,
            "batch_audio_seconds": self.audio_seconds / steps,
            "seconds_per_step": self.step_seconds / steps,
            "audio_seconds_per_second": self.audio_seconds / self.step_seconds,
            "wall_audio_seconds_per_second": self.audio_seconds / self.wall_seconds,
            "data_wait_share": sum(s.wait_seconds for s in self.samples) / self.step_seconds,
            "padding_share": 1 - frames / padded,
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

    def sample(self, step_seconds: float, wait_seconds: float) -> StepSample:
        return StepSample(
            audio_seconds=self.audio_seconds,
            step_seconds=step_seconds,
            wait_seconds=wait_seconds,
            frames=int(self.feature_lengths.sum()),
            padded_frames=self.features.shape[0] * self.features.shape[1],
            clips=self.features.shape[0],
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


# ----------------------------------------------------------------------------- shared set-up


@dataclass
class BenchData:
    """The clips of one preset's run, with features computed once for the in-memory loops."""

    preset: str
    config: RunConfig
    utterances: list[Utterance]  # the trainer's training split, in the trainer's index order
    features: list[torch.Tensor]  # log-mel features per utterance, as FeatureDataset computes them
    trainer_batches: list[list[int]]  # utterance indices of each trainer step, in step order

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
        # One record per step, so warm-up steps can be dropped one by one.
        "log_every": 1,
        # No validation and no intermediate checkpoints: both would run between measured steps.
        "eval_every": 0,
        "checkpoint_every": 0,
        "keep_last": 0,
    }
    if max_batch_seconds is not None:
        training["max_batch_seconds"] = max_batch_seconds
    overrides = {
        "data": {"max_clips": args.clips, "train_on": "all", "valid_fraction": 0.0,
                 "test_fraction": 0.0, "num_workers": args.num_workers},
        "training": training,
    }
    return resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset=preset,
                              overrides=overrides)


def trainer_batch_order(utterances: list[Utterance], config: RunConfig, steps: int) -> list[list[int]]:
    """Rebuild the trainer's batches, step by step, from its seeded DurationBucketSampler.

    The sampler's order depends only on its seed and the epoch, which is what lets the trainer
    resume mid-epoch, so the same sampler built here yields the same batches.
    """
    sampler = DurationBucketSampler(
        [u.duration for u in utterances],
        max_batch_seconds=config.training.max_batch_seconds,
        num_buckets=config.training.num_buckets,
        seed=config.training.seed,
    )
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        sampler.start_epoch(epoch)
        batches.extend(sampler)
        epoch += 1
    return batches[:steps]


def load_bench_data(preset: str, args: argparse.Namespace, device: torch.device) -> BenchData:
    """Select the clips as the trainer will, and compute their features once."""
    config = bench_config(preset, args, device)
    tokenizer = CharTokenizer(config.text.charset)
    prepared = prepare_data(args.data, config.data, config.features, tokenizer)
    utterances = prepared.splits["train"]
    dataset = FeatureDataset(utterances, config.features)
    features = [dataset.features(i) for i in range(len(dataset))]
    batches = trainer_batch_order(utterances, config, config.training.max_steps)
    return BenchData(preset, config, utterances, features, batches)


def cmvn_stats(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-bin sums of x and x^2 and the frame count, as the trainer computes them for CMVN."""
    stacked = torch.cat(features).double()
    return stacked.sum(0).float(), (stacked**2).sum(0).float(), stacked.shape[0]


# ----------------------------------------------------------------------------- trainer


def run_trainer(data: BenchData, args: argparse.Namespace, device: torch.device) -> LoopResult:
    """Run the asrlib Trainer and turn its per-step metric records into StepSamples."""
    stamps: dict[int, float] = {}

    def on_event(record: dict[str, Any]) -> None:
        # The wall clock at each step record; "started" marks step 0, just before the loop.
        if record["event"] in ("started", "step"):
            stamps[record["step"]] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
        # The trainer was configured for `device` by bench_config().
        run_dir = Path(tmp) / f"bench-{data.preset}"
        Trainer(data.config, run_dir, dataset_root=args.data, on_event=on_event).fit()
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r for r in records if r["event"] == "step" and r["step"] > args.warmup_steps]
    samples = [trainer_sample(data, record) for record in steps]
    last = data.config.training.max_steps
    wall = stamps[last] - stamps[args.warmup_steps]
    result = LoopResult(data.preset, "trainer", samples, wall)
    outside = wall - result.step_seconds
    result.notes.append(f"{outside:.2f} s of wall time fell outside the trainer's step timer")
    return result


def trainer_sample(data: BenchData, record: dict[str, Any]) -> StepSample:
    """Recover one step's absolute figures from the trainer's ratios and the rebuilt batch.

    A step record contains ratios only. The rebuilt batch gives the audio seconds, and the step time
    follows as audio / audio_seconds_per_second. The padding share must match the record exactly,
    which checks that the rebuilt batch is the one the trainer ran.
    """
    batch = data.batch(data.trainer_batches[record["step"] - 1])
    step_seconds = batch.audio_seconds / record["audio_seconds_per_second"]
    sample = batch.sample(step_seconds, record["data_wait_share"] * step_seconds)
    expected_padding = 1 - sample.frames / max(sample.padded_frames, 1)
    if abs(expected_padding - record["padding_share"]) > 1e-9:
        raise RuntimeError(
            f"step {record['step']}: the trainer logged padding share {record['padding_share']:.6f} "
            f"but the rebuilt batch has {expected_padding:.6f}; the trainer did not run the batches "
            "of its sampler in order (a skipped non-finite batch shifts them), so its step times "
            "cannot be recovered"
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


StepFunction = Callable[[PaddedBatch], torch.Tensor]


def make_step_function(data: BenchData, device: torch.device) -> StepFunction:
    """Build a fresh model and AdamW optimizer; return one training step on a batch.

    The step does what the trainer's step does (same optimizer settings, gradient clipping,
    CTC loss summed and divided by the batch size, autocast on CUDA only) without the
    learning-rate schedule, whose cost is negligible.
    """
    config = data.config
    tokenizer = CharTokenizer(config.text.charset)
    torch.manual_seed(config.training.seed)
    model = build_model(config, tokenizer.vocab_size)
    model.cmvn.set_stats(*cmvn_stats(data.features))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.training.lr, betas=(0.9, 0.98),
                                  eps=1e-9, weight_decay=config.training.weight_decay)
    autocast = contextlib.nullcontext()
    if device.type == "cuda" and config.training.precision == "bf16":
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)

    def step(batch: PaddedBatch) -> torch.Tensor:
        with autocast:
            log_probs, out_lengths = model(batch.features, batch.feature_lengths)
        loss = F.ctc_loss(log_probs.float().transpose(0, 1), batch.labels, out_lengths,
                          batch.label_lengths, blank=tokenizer.blank_id, reduction="sum")
        loss = loss / batch.features.shape[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.grad_clip)
        optimizer.step()
        return loss.detach()

    return step


def timed_loop(fetch: Callable[[], PaddedBatch], step: StepFunction, *, total_steps: int,
               warmup_steps: int, device: torch.device) -> tuple[list[StepSample], float]:
    """Run `total_steps` steps; return the samples and wall time of the steps after warm-up."""
    samples: list[StepSample] = []
    wall_started = time.perf_counter()
    for index in range(total_steps):
        if index == warmup_steps:
            wall_started = time.perf_counter()
        started = time.perf_counter()
        batch = fetch().to(device)
        fetched = time.perf_counter()
        # Reading the loss, as a hand-written loop does to print it, waits for the device, and
        # synchronize() makes sure the optimizer step is inside the timed window too.
        float(step(batch))
        synchronize(device)
        done = time.perf_counter()
        if index >= warmup_steps:
            samples.append(batch.sample(done - started, fetched - started))
    return samples, time.perf_counter() - wall_started


def endless(loader: torch.utils.data.DataLoader) -> Iterator[PaddedBatch]:
    """Iterate over `loader` epoch after epoch; restarting it counts as waiting for data."""
    while True:
        yield from loader


def plain_batch_size(data: BenchData) -> int:
    """Clips per batch that give a random batch the trainer's mean batch audio."""
    batch_audio = sum(sum(data.utterances[i].duration for i in b) for b in data.trainer_batches)
    batch_audio /= len(data.trainer_batches)
    mean_clip = sum(u.duration for u in data.utterances) / len(data.utterances)
    return max(1, round(batch_audio / mean_clip))


def run_plain(data: BenchData, args: argparse.Namespace, device: torch.device) -> LoopResult:
    batch_size = plain_batch_size(data)
    loader = torch.utils.data.DataLoader(
        ClipDataset(data.utterances, data.config),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=pad_batch,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(data.config.training.seed),
    )
    batches = endless(loader)
    samples, wall = timed_loop(lambda: next(batches), make_step_function(data, device),
                               total_steps=data.config.training.max_steps,
                               warmup_steps=args.warmup_steps, device=device)
    return LoopResult(data.preset, "plain", samples, wall, [f"batch size {batch_size} clips"])


def run_model_only(data: BenchData, args: argparse.Namespace, device: torch.device) -> LoopResult:
    prebuilt = [data.batch(indices).to(device) for indices in data.trainer_batches]
    synchronize(device)
    batches = iter(prebuilt)
    samples, wall = timed_loop(lambda: next(batches), make_step_function(data, device),
                               total_steps=len(prebuilt), warmup_steps=args.warmup_steps,
                               device=device)
    return LoopResult(data.preset, "model only", samples, wall,
                      ["the trainer's batches, held in memory"])


# ----------------------------------------------------------------------------- report


def format_table(summaries: list[dict[str, Any]]) -> str:
    """Format the summaries as a Markdown table, one row per preset and loop.

    The `x plain` column divides each wall throughput by the plain loop's on the same preset.
    """
    header = ("| preset | loop | steps | clips/batch | batch audio (s) | s/step | audio-s/s "
              "| wall audio-s/s | x plain | data wait | padding |")
    rows = [header, "|" + "---|" * header.count(" | ") + "---|"]
    plain = {s["preset"]: s["wall_audio_seconds_per_second"] for s in summaries if s["loop"] == "plain"}
    for s in summaries:
        ratio = s["wall_audio_seconds_per_second"] / plain[s["preset"]] if s["preset"] in plain else None
        rows.append(
            f"| {s['preset']} | {s['loop']} | {s['steps']} | {s['clips_per_batch']:.1f} "
            f"| {s['batch_audio_seconds']:.1f} | {s['seconds_per_step']:.2f} "
            f"| {s['audio_seconds_per_second']:.1f} | {s['wall_audio_seconds_per_second']:.1f} "
            f"| {'-' if ratio is None else f'{ratio:.2f}'} | {s['data_wait_share']:.1%} "
            f"| {s['padding_share']:.1%} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure training throughput (audio seconds per second) of the asrlib Trainer, "
                    "a hand-written PyTorch loop and the model alone, on the same clips.")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"],
                        help="Conformer presets from config.yaml (default: tiny small)")
    parser.add_argument("--steps", type=int, default=10,
                        help="measured optimizer steps per loop, after warm-up (default: 10)")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="steps run first and left out of the figures (default: 2)")
    parser.add_argument("--clips", type=int, default=None,
                        help="use only the first N clips by id (default: all)")
    parser.add_argument("--max-batch-seconds", type=float, default=None,
                        help="trainer batch budget in audio seconds, padding included (default: "
                             f"{CPU_MAX_BATCH_SECONDS:g} on CPU, training.max_batch_seconds of "
                             "config.yaml on CUDA)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader worker processes of the trainer and the plain loop "
                             "(default: 0, as data.num_workers in config.yaml)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to train (default: cuda when visible, else cpu)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16 autocast; like the trainer, applied on CUDA only (default: fp32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the usable CPU cores)")
    parser.add_argument("--data", type=Path, default=LJSPEECH_MINI,
                        help=f"LJSpeech-format folder (default: {LJSPEECH_MINI})")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be 0 or more, got {args.warmup_steps}")
    if args.clips is not None and args.clips < 1:
        parser.error(f"--clips must be at least 1, got {args.clips}")
    if not args.data.is_dir():
        parser.error(f"data folder not found: {args.data}; pass --data with an LJSpeech-format folder")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    # The trainer opens the asrlib logger to INFO for its train.log; keep its step lines off the console.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    set_threads(args.threads)
    device = resolve_device(args.device)
    machine = machine_info(device)
    print(describe_machine(machine), flush=True)
    warning = busy_warning(machine)
    if warning:
        print(warning, flush=True)
    if args.precision == "bf16" and device.type != "cuda":
        print("note: bf16 applies on CUDA only, as in the trainer, so this CPU run is fp32", flush=True)

    results: list[LoopResult] = []
    for preset in args.presets:
        data = load_bench_data(preset, args, device)
        print(f"{preset}: {len(data.utterances)} clips, "
              f"{sum(u.duration for u in data.utterances):.0f} s of audio, max batch "
              f"{data.config.training.max_batch_seconds:g} s", flush=True)
        for run in (run_trainer, run_plain, run_model_only):
            started = time.perf_counter()
            results.append(run(data, args, device))
            print(f"  {results[-1].loop}: {time.perf_counter() - started:.0f} s", flush=True)

    summaries = [r.summary() for r in results]
    print()
    print(format_table(summaries))
    for s in summaries:
        for note in s["notes"]:
            print(f"- {s['preset']} {s['loop']}: {note}")
    machine["load_average_1min_after"] = machine_info(device)["load_average_1min"]
    if args.json:
        payload = {
            "machine": machine,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summaries": summaries,
            "steps": {f"{r.preset}/{r.loop}": [asdict(s) for s in r.samples] for r in results},
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        # Bad settings (an unknown preset, a missing CUDA device) end with one line, not a traceback.
        sys.exit(f"error: {err}")
