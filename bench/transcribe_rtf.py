"""Real-time factor and per-clip latency of Recognizer.transcribe on the LJSpeech-mini clips.

RTF is total processing seconds divided by total audio seconds (below 1 is faster than real
time). Clips are sorted by duration and split into groups of the batch size, which are the
batches one transcribe() call over every clip would decode. Each group then gets its own timed
call, so a clip's latency is the wall time of its group's call. A clip's result is ready only
when its whole batch is.

Run from the repository root, with a checkpoint or run folder, or with none to train a quick
`tiny` model first:

    .venv/bin/python bench/transcribe_rtf.py checkpoints/RUN --batch-size 1 8
    .venv/bin/python bench/transcribe_rtf.py --train-tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
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

from asrlib.config import load_settings, resolve_run_config
from asrlib.datasets.ljspeech import Clip, load_corpus
from asrlib.inference import Recognizer, Transcription
from asrlib.models import count_parameters
from asrlib.training.trainer import Trainer

# Settings of the quick `tiny` run that only provides weights. RTF barely depends on accuracy,
# because the network runs the same operations whatever its weights. Only the per-character
# work of greedy decoding grows with the length of the output.
QUICK_TRAIN_CLIPS = 20
QUICK_TRAIN_BATCH_SECONDS = 20.0


def train_quick_tiny(data_root: Path, steps: int, workdir: Path, device: str) -> Path:
    """Train `tiny` for `steps` steps on a few clips and return its final checkpoint."""
    overrides = {
        "data": {"max_clips": QUICK_TRAIN_CLIPS, "train_on": "all", "valid_fraction": 0.0,
                 "test_fraction": 0.0, "cache_features": True},
        "training": {"max_steps": steps, "max_batch_seconds": QUICK_TRAIN_BATCH_SECONDS,
                     "warmup_steps": max(1, steps // 5), "log_every": steps, "eval_every": 0,
                     "checkpoint_every": 0, "keep_last": 0, "device": device},
    }
    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), preset="tiny",
                                overrides=overrides)
    result = Trainer(config, workdir / "quick-tiny", dataset_root=data_root).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the quick tiny run ended {result.state} without a checkpoint")
    return result.checkpoint


def select_clips(data_root: Path, count: int | None) -> list[Clip]:
    """Return the first `count` clips by id (all when None) whose audio could be probed."""
    corpus = load_corpus(data_root, max_clips=count)
    for problem in corpus.problems:
        logging.getLogger("bench.transcribe_rtf").warning("skipping %s", problem)
    clips = [c for c in corpus.clips if c.duration]
    if not clips:
        raise ValueError(f"{data_root}: no readable clips")
    return clips


def batch_groups(clips: list[Clip], batch_size: int) -> list[list[Clip]]:
    """Split clips, shortest first, into the batches that transcribe() forms from the whole list."""
    ordered = sorted(clips, key=lambda c: (c.duration, c.id))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def transcribe_group(recognizer: Recognizer, group: list[Clip], batch_size: int,
                     ) -> tuple[list[Transcription], float]:
    """Transcribe one batch of clips; return the results and the call's wall time in seconds."""
    started = time.perf_counter()
    results = recognizer.transcribe([str(c.audio_path) for c in group], batch_size=batch_size)
    elapsed = time.perf_counter() - started
    failed = [r for r in results if r.error]
    if failed:
        raise RuntimeError(f"transcription failed for {failed[0].source}: {failed[0].error}")
    return results, elapsed


def measure(recognizer: Recognizer, clips: list[Clip], batch_size: int, warmup_batches: int,
            ) -> dict[str, Any]:
    """Time every batch of `clips` after `warmup_batches` untimed calls on the first batch."""
    groups = batch_groups(clips, batch_size)
    for _ in range(warmup_batches):
        transcribe_group(recognizer, groups[0], batch_size)
    audio = processing = wall = 0.0
    latencies: list[float] = []
    for group in groups:
        results, elapsed = transcribe_group(recognizer, group, batch_size)
        audio += sum(r.duration for r in results)
        processing += sum(r.processing_seconds for r in results)
        wall += elapsed
        latencies.extend([elapsed] * len(results))
    return {
        "batch_size": batch_size,
        "clips": len(latencies),
        "audio_seconds": audio,
        "wall_seconds": wall,
        "rtf": wall / audio,
        # The Recognizer's own attribution: decode and resample time plus a length-weighted
        # share of its batch's model time. It leaves out the call's own overhead.
        "recognizer_rtf": processing / audio,
        "latency_mean_seconds": float(np.mean(latencies)),
        "latency_p95_seconds": float(np.percentile(latencies, 95)),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("| batch | clips | audio (s) | wall (s) | RTF | RTF (Recognizer) | mean latency (s) "
              "| p95 latency (s) |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | {r['clips']} | {r['audio_seconds']:.1f} | {r['wall_seconds']:.2f} "
            f"| {r['rtf']:.4f} | {r['recognizer_rtf']:.4f} | {r['latency_mean_seconds']:.3f} "
            f"| {r['latency_p95_seconds']:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the real-time factor (processing seconds / audio seconds) and per-clip "
                    "latency of Recognizer.transcribe on LJSpeech-format clips.")
    parser.add_argument("model", nargs="?", type=Path,
                        help="checkpoint file or run folder; without it a quick tiny model is trained")
    parser.add_argument("--train-tiny", action="store_true",
                        help="train a quick tiny model for its weights (the default when no model is given)")
    parser.add_argument("--train-steps", type=int, default=50,
                        help="optimizer steps of the quick tiny run (default: 50)")
    parser.add_argument("--clips", type=int, default=None,
                        help="transcribe the first N clips by id (default: all)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8],
                        help="clips per transcribe batch; each size is measured (default: 1 8)")
    parser.add_argument("--warmup-batches", type=int, default=1,
                        help="untimed calls on the first batch before timing each size (default: 1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                        help="where the model runs (default: cpu, as `asr transcribe`)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the usable CPU cores)")
    parser.add_argument("--data", type=Path, default=LJSPEECH_MINI,
                        help=f"LJSpeech-format folder (default: {LJSPEECH_MINI})")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.model is not None and args.train_tiny:
        parser.error("pass either a model or --train-tiny, not both")
    if args.model is not None and not args.model.exists():
        parser.error(f"model not found: {args.model}; pass a checkpoint file (.pt) or a run folder")
    if args.train_steps < 1:
        parser.error(f"--train-steps must be at least 1, got {args.train_steps}")
    if args.clips is not None and args.clips < 1:
        parser.error(f"--clips must be at least 1, got {args.clips}")
    if any(b < 1 for b in args.batch_size):
        parser.error(f"--batch-size values must be at least 1, got {args.batch_size}")
    if args.warmup_batches < 0:
        parser.error(f"--warmup-batches must be 0 or more, got {args.warmup_batches}")
    if not args.data.is_dir():
        parser.error(f"data folder not found: {args.data}; pass --data with an LJSpeech-format folder")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Load or train the model, then measure every batch size."""
    device = resolve_device(args.device)
    machine = print_machine(device)

    model = args.model
    if model is None:
        print(f"no model given: training tiny for {args.train_steps} steps only to have weights "
              "(RTF barely depends on accuracy)", flush=True)
        model = train_quick_tiny(args.data, args.train_steps, workdir, str(device))
    recognizer = Recognizer.from_checkpoint(model, device=str(device))
    config = recognizer.config
    print(f"model: {config.model.type}/{config.model.preset}, "
          f"{count_parameters(recognizer.model) / 1e6:.2f} M parameters, from {recognizer.source}",
          flush=True)

    clips = select_clips(args.data, args.clips)
    rows = [measure(recognizer, clips, size, args.warmup_batches) for size in args.batch_size]
    machine["load_average_1min_after"] = machine_info(device)["load_average_1min"]
    return {"machine": machine, "model": recognizer.source, "trained_for_benchmark": args.model is None,
            "preset": config.model.preset, "results": rows}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_training_logs()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="asr-bench-") as tmp:
        report = run(args, Path(tmp))
    print()
    print(format_table(report["results"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_main(main)
