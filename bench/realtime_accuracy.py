"""Accuracy of a realtime model streamed in chunks, against the same weights with more context.

Three decodes of each clip of a split, all greedy CTC:

- streamed: a StreamingRecognizer fed chunk-sized pieces of audio with the service's default
  endpointing; the transcript joins its finals. This is what /ws/asr and `asr stream` return.
- chunked: the whole clip at once through the chunk-causal mask the model was configured with.
  Up to the first endpoint this is the function the stream computes.
- full context: the whole clip with every frame attending to every other, which dynamic chunk
  training also teaches the model.

The gap between streamed and full context is the accuracy that streaming costs.

Run from the repository root, on a trained realtime run:

    .venv/bin/python bench/realtime_accuracy.py checkpoints/<run_id> --dataset demo --json rt-accuracy.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from common import REPO_ROOT, print_machine, quiet_training_logs, run_main, set_threads

from asrlib import checkpoints as ckpt
from asrlib.audio import load_audio
from asrlib.config import load_settings
from asrlib.datasets.catalog import resolve_dataset_path
from asrlib.decoding import error_rates
from asrlib.inference import Recognizer, resolve_checkpoint
from asrlib.streaming import StreamingModel, StreamingRecognizer, join_finals
from asrlib.training.data import Utterance, prepare_data


def split_clips(checkpoint: Path, recognizer: Recognizer, dataset: str | None, split: str) -> list[Utterance]:
    """Return the clips of `split` as the run that wrote `checkpoint` divided its dataset."""
    config = recognizer.config
    payload = ckpt.load_checkpoint(checkpoint)
    root = resolve_dataset_path(dataset or config.data.dataset, load_settings(REPO_ROOT / "config.yaml"))
    data = prepare_data(root, config.data, config.features, recognizer.tokenizer, split=payload.get("split"))
    clips = data.splits.get(split) or []
    if not clips:
        raise ValueError(f"split {split!r} of {root} is empty for this run; choose another --split")
    return clips


def offline(recognizer: Recognizer, clips: list[Utterance], chunk_frames: int, left_chunks: int) -> list[str]:
    """Transcribe whole clips with the given attention context (chunk_frames <= 0: full context)."""
    network = recognizer.model
    saved = network.decoding_chunk_frames, network.decoding_left_chunks
    network.set_decoding_context(chunk_frames, left_chunks)
    try:
        return [t.text for t in recognizer.transcribe([str(c.audio_path) for c in clips])]
    finally:
        network.set_decoding_context(*saved)


def streamed(model: StreamingModel, clips: list[Utterance]) -> list[str]:
    """Stream each clip in pieces of one chunk and join the finals."""
    rate = model.config.features.sample_rate
    texts = []
    for clip in clips:
        samples = load_audio(clip.audio_path, rate)
        recognizer = StreamingRecognizer(model)
        piece = round(recognizer.chunk_seconds * rate)
        results = []
        for position in range(0, samples.shape[0], piece):
            results += recognizer.accept_waveform(samples[position : position + piece], rate)
        results += recognizer.finalize()
        texts.append(join_finals(results))
    return texts


def measure(args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = resolve_checkpoint(args.model)
    recognizer = Recognizer.from_checkpoint(checkpoint)
    config = recognizer.config
    if config.model.type != "realtime":
        raise ValueError(f"{checkpoint} is a {config.model.type} model; pass a realtime run or checkpoint")
    clips = split_clips(checkpoint, recognizer, args.dataset, args.split)
    references = [c.text for c in clips]
    chunk, left = config.model.chunk_frames, config.model.left_chunks
    hypotheses = {
        "streamed": streamed(StreamingModel.from_checkpoint(checkpoint), clips),
        "chunked": offline(recognizer, clips, chunk, left),
        "full context": offline(recognizer, clips, 0, -1),
    }
    rows = []
    for mode, texts in hypotheses.items():
        rates = error_rates(references, texts)
        rows.append({"mode": mode, "cer": rates.cer, "wer": rates.wer,
                     "differs_from_chunked": sum(a != b for a, b in zip(texts, hypotheses["chunked"], strict=True))})
    chunk_seconds = chunk * 4 * config.features.frame_shift_ms / 1000
    return {"checkpoint": str(checkpoint), "preset": config.model.preset, "split": args.split, "clips": len(clips),
            "audio_seconds": sum(c.duration for c in clips), "chunk_frames": chunk, "chunk_seconds": chunk_seconds,
            "left_chunks": left, "rows": rows}


def format_table(report: dict[str, Any]) -> str:
    lines = ["| decode | CER | WER | clips that differ from chunked |", "|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['mode']} | {row['cer']:.4f} | {row['wer']:.4f} | {row['differs_from_chunked']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CER and WER of a realtime model streamed, chunked and with full "
                                                 "context, on a split of the run's dataset.")
    parser.add_argument("model", help="realtime checkpoint file or run folder")
    parser.add_argument("--dataset", help="catalog name or path (default: the dataset the model trained on)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"],
                        help="split saved with the run (default: test)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_training_logs()
    set_threads(args.threads)
    machine = print_machine(torch.device("cpu"))
    report = measure(args)
    print(f"{report['preset']}: {report['clips']} clips of the {report['split']} split, "
          f"{report['audio_seconds']:.0f} s of audio, chunk {report['chunk_seconds']:.2f} s, "
          f"left chunks {report['left_chunks']}")
    print()
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, **report}, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_main(main)
