"""`asr stream MODEL FILE`: feed an audio file through StreamingRecognizer and print partial results.

Wired into asrlib/cli.py by `add_stream_parser(sub)`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from asrlib.streaming import StreamingOptions, StreamingRecognizer, StreamingResult


def add_stream_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `stream` command to the `asr` parser's subcommands and return its parser."""
    stream = subparsers.add_parser(
        "stream", help="stream an audio file through a realtime model and print partial results",
        description="Feed FILE to a realtime model piece by piece, as a live source would, and print each "
                    "partial and final result with its compute time. With --realtime the pieces are paced at "
                    "real time and each line also shows its lag behind the audio.",
    )
    stream.add_argument("model", help="registry model name, checkpoint file or run folder of a realtime model")
    stream.add_argument("file", type=Path, help="audio file (WAV, FLAC, OGG, MP3, WebM, ...), fed at its own rate")
    stream.add_argument("--realtime", action="store_true",
                        help="pace the pieces at real time (default: as fast as possible)")
    stream.add_argument("--chunk-ms", type=float, default=640.0,
                        help="milliseconds of audio per piece fed to the recognizer (default: 640)")
    stream.add_argument("--model-chunk-frames", type=int,
                        help="encoder chunk in 40 ms frames (default: the model's chunk_frames)")
    stream.add_argument("--endpoint-silence", type=float, default=0.8,
                        help="seconds of trailing blank that close an utterance; 0 disables (default: 0.8)")
    stream.add_argument("--no-reset", action="store_true",
                        help="keep the encoder context across utterances instead of emptying it at endpoints")
    stream.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    stream.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    stream.add_argument("--checkpoints", help="folder of run folders and models/ (default: paths.checkpoints)")
    stream.add_argument("--json", action="store_true", help="print one JSON object per result")
    stream.set_defaults(func=run_stream)
    return stream


def _print(result: StreamingResult, compute_ms: float, lag_ms: float | None, as_json: bool) -> None:
    if as_json:
        record = {**result.to_dict(), "compute_ms": round(compute_ms, 2)}
        if lag_ms is not None:
            record["lag_ms"] = round(lag_ms, 1)
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    lag = f", lag {lag_ms:.0f} ms" if lag_ms is not None else ""
    print(f"[utt {result.utterance} {result.start:6.2f}-{result.end:6.2f} s] {result.type:7s} "
          f"{result.text!r} (compute {compute_ms:.1f} ms{lag})", flush=True)


def run_stream(args: argparse.Namespace) -> int:
    """Run `asr stream`; return the exit status."""
    from asrlib.audio import load_audio_with_rate
    from asrlib.config import checkpoints_dir, load_settings
    from asrlib.streaming import resolve_streaming_model

    if args.chunk_ms <= 0:
        raise ValueError(f"--chunk-ms must be positive, got {args.chunk_ms}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    root = Path(args.checkpoints) if args.checkpoints else checkpoints_dir(load_settings(args.config))
    checkpoint = resolve_streaming_model(args.model, root)
    options = StreamingOptions(chunk_frames=args.model_chunk_frames,
                               endpoint_silence_s=args.endpoint_silence or None,
                               reset_on_endpoint=not args.no_reset)
    recognizer = StreamingRecognizer.from_checkpoint(checkpoint, options, device=args.device)
    samples, rate = load_audio_with_rate(args.file)
    piece = max(1, round(rate * args.chunk_ms / 1000))

    compute: list[float] = []
    started = time.perf_counter()
    for position in range(0, samples.shape[0], piece):
        chunk = samples[position : position + piece]
        if args.realtime:
            # A live source hands over a piece when its last sample has been recorded.
            time.sleep(max(0.0, started + (position + chunk.shape[0]) / rate - time.perf_counter()))
        before = time.perf_counter()
        results = recognizer.accept_waveform(chunk, rate)
        after = time.perf_counter()
        compute.append(after - before)
        for result in results:
            lag = (after - started - result.end) * 1000 if args.realtime else None
            _print(result, (after - before) * 1000, lag, args.json)
    before = time.perf_counter()
    finals = recognizer.finalize()
    after = time.perf_counter()
    compute.append(after - before)
    for result in finals:
        _print(result, (after - before) * 1000, (after - started - result.end) * 1000 if args.realtime else None,
               args.json)

    audio_seconds = samples.shape[0] / rate
    p50, p95 = np.percentile(np.array(compute) * 1000, [50, 95])
    print(f"streamed {audio_seconds:.2f} s in pieces of {args.chunk_ms:g} ms: compute per piece p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms, RTF {sum(compute) / audio_seconds:.3f}", file=sys.stderr)
    return 0
