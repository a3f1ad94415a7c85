"""Streaming latency of the `realtime` model, with offline Conformer and pocketsphinx RTF on the same clips.

Measures, for one `realtime` preset (default `small`) with random weights:

1. compute time per encoder chunk (one `accept_waveform` call per chunk of audio) on one
   thread, p50 / p95 / max, and the streaming real-time factor (RTF);
2. RTF and per-chunk p95 with 1 and 4 concurrent streams (one Python thread per stream,
   sharing one model, audio fed as fast as possible);
3. audio-in to partial-out latency over the WebSocket `/ws/asr`, with the server (a real
   uvicorn on 127.0.0.1) in a separate process and clients pacing 20 ms pcm16 frames at real
   time. For each partial, "latency from chunk start" is the arrival time minus the moment the
   first sample of its newest chunk was recorded (the worst-placed sample of that chunk), and
   "latency from chunk end" the arrival time minus the moment its last sample was recorded;
4. on the same clips, the RTF of the offline `conformer` preset (`Recognizer.decode`, batch 1,
   random weights) and of pocketsphinx (its bundled en-us model, whole-utterance decoding).

Random weights are fine for timing: the network runs the same operations whatever its weights.
The only data-dependent parts, greedy decoding and endpointing, cost microseconds per frame.
Audio is decoded and resampled to 16 kHz before any timer starts, for every system.

Run from the repository root:

    .venv/bin/python bench/streaming_latency.py --json streaming.json
    .venv/bin/python bench/streaming_latency.py --clips 0 --ws-seconds 60   # all 130 clips
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import LJSPEECH_MINI, REPO_ROOT, machine_info, print_machine, set_threads

from asrlib import checkpoints as ckpt
from asrlib.audio import load_audio
from asrlib.config import RunConfig, load_settings, resolve_run_config
from asrlib.datasets.ljspeech import load_corpus
from asrlib.inference import Recognizer
from asrlib.models import build_model, count_parameters
from asrlib.streaming import StreamingModel, StreamingRecognizer
from asrlib.text import CharTokenizer

log = logging.getLogger("bench.streaming_latency")

SAMPLE_RATE = 16000
WS_FRAME_MS = 20  # a browser or telephony client sends 10 to 100 ms frames; 20 ms is common
MODEL_RUN = "bench-realtime"  # run folder of the random-weight checkpoint that the server loads
SERVER_START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Clip:
    id: str
    samples: torch.Tensor  # (T,) float32 at SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / SAMPLE_RATE


def load_clips(count: int) -> list[Clip]:
    """Load the first `count` LJSpeech-mini clips by id (all for 0), resampled to 16 kHz."""
    corpus = load_corpus(LJSPEECH_MINI, max_clips=count or None)
    return [Clip(c.id, load_audio(c.audio_path, SAMPLE_RATE)) for c in corpus.clips]


def random_model(model_type: str, preset: str) -> tuple[torch.nn.Module, RunConfig, CharTokenizer]:
    """Build a preset with seeded random weights."""
    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), model_type=model_type, preset=preset)
    tokenizer = CharTokenizer(config.text.charset)
    torch.manual_seed(0)
    return build_model(config, tokenizer.vocab_size).eval(), config, tokenizer


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.array(values) * 1000
    return {"p50_ms": float(np.percentile(array, 50)), "p95_ms": float(np.percentile(array, 95)),
            "max_ms": float(array.max()), "count": len(values)}


# ----------------------------------------------------------------- in-process streaming


def stream_clips(model: StreamingModel, clips: list[Clip], piece: int) -> tuple[list[float], float]:
    """Feed every clip in pieces of `piece` samples; return per-chunk call times and the total time."""
    chunk_times: list[float] = []
    total = 0.0
    for clip in clips:
        recognizer = StreamingRecognizer(model)
        for position in range(0, clip.samples.shape[0], piece):
            started = time.perf_counter()
            results = recognizer.accept_waveform(clip.samples[position : position + piece], SAMPLE_RATE)
            elapsed = time.perf_counter() - started
            total += elapsed
            if any(r.type == "partial" for r in results):
                chunk_times.append(elapsed)
        started = time.perf_counter()
        recognizer.finalize()
        total += time.perf_counter() - started
    return chunk_times, total


def measure_streams(model: StreamingModel, clips: list[Clip], piece: int, streams: int) -> dict[str, Any]:
    """Run `streams` threads that each stream every clip as fast as possible."""
    outcomes: list[tuple[list[float], float]] = [([], 0.0)] * streams
    barrier = threading.Barrier(streams + 1)

    def run(index: int) -> None:
        barrier.wait()
        outcomes[index] = stream_clips(model, clips, piece)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    audio = sum(c.seconds for c in clips)
    chunk_times = [t for times, _ in outcomes for t in times]
    return {"streams": streams, "audio_seconds_per_stream": audio, "wall_seconds": wall,
            # Each stream must keep up with its own audio: wall time over one stream's audio.
            "rtf_per_stream": wall / audio, "chunk": percentiles(chunk_times)}


# ----------------------------------------------------------------- WebSocket


def serve(root: Path, port: int, threads: int) -> None:
    """Serve /ws/asr on 127.0.0.1:port (the server process of the WebSocket measurement)."""
    import uvicorn
    from fastapi import FastAPI

    from asrlib.api import streaming
    from asrlib.api.streaming import StreamingServiceSettings

    torch.set_num_threads(threads)
    app = FastAPI()
    app.include_router(streaming.router)
    streaming.install_streaming(app, checkpoints_root=root, settings=StreamingServiceSettings(max_sessions=16))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the benchmark server exited with status {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the benchmark server did not listen on port {port} within {SERVER_START_TIMEOUT_S} s")


def paced_session(url: str, samples: torch.Tensor, chunk_seconds: float) -> dict[str, list[float]]:
    """Stream pcm16 at real time in WS_FRAME_MS frames; return latencies of the partials in seconds."""
    from websockets.sync.client import connect

    pcm = (samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().astype("<i2").tobytes()
    frame_bytes = 2 * SAMPLE_RATE * WS_FRAME_MS // 1000
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with connect(url, open_timeout=60, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "model": MODEL_RUN, "sample_rate": SAMPLE_RATE, "encoding": "pcm16"}))
        while json.loads(ws.recv(timeout=120)) != {"type": "status", "detail": "ready"}:
            pass

        def receive() -> None:
            try:
                while True:
                    message = json.loads(ws.recv())
                    arrivals.append((time.perf_counter(), message))
            except Exception:  # the server closed after the end message
                return

        receiver = threading.Thread(target=receive)
        receiver.start()
        origin = time.perf_counter()  # the moment sample 0 was recorded
        for index, offset in enumerate(range(0, len(pcm), frame_bytes)):
            # A live client sends a frame once its last sample has been recorded.
            time.sleep(max(0.0, origin + (index + 1) * WS_FRAME_MS / 1000 - time.perf_counter()))
            ws.send(pcm[offset : offset + frame_bytes])
        ws.send(json.dumps({"type": "end"}))
        receiver.join(timeout=120)
    partials = [(at, m) for at, m in arrivals if m["type"] == "partial"]
    return {
        "from_chunk_start": [at - origin - (m["end"] - chunk_seconds) for at, m in partials],
        "from_chunk_end": [at - origin - m["end"] for at, m in partials],
        "server": [m["latency_ms"] / 1000 for _, m in partials],
    }


def measure_websocket(url: str, clips: list[Clip], seconds: float, streams: int, chunk_seconds: float) -> dict:
    """Run `streams` paced sessions at once, each on `seconds` of concatenated clips."""
    audio, total = [], 0.0
    for clip in clips * (1 + int(seconds // max(sum(c.seconds for c in clips), 1e-9))):
        if total >= seconds:
            break
        audio.append(clip.samples)
        total += clip.seconds
    samples = torch.cat(audio)
    outcomes: list[dict[str, list[float]]] = [{}] * streams

    def run(index: int) -> None:
        outcomes[index] = paced_session(url, samples, chunk_seconds)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = {key: [v for o in outcomes for v in o.get(key, [])] for key in ("from_chunk_start", "from_chunk_end",
                                                                             "server")}
    return {"streams": streams, "audio_seconds_per_stream": total,
            **{key: percentiles(values) for key, values in merged.items()}}


# ----------------------------------------------------------------- offline peers


def measure_conformer(clips: list[Clip], preset: str) -> dict[str, Any]:
    net, config, tokenizer = random_model("conformer", preset)
    recognizer = Recognizer(net, config, tokenizer, torch.device("cpu"))
    recognizer.decode([clips[0].samples])  # warm-up
    elapsed = 0.0
    for clip in clips:
        started = time.perf_counter()
        recognizer.decode([clip.samples])
        elapsed += time.perf_counter() - started
    audio = sum(c.seconds for c in clips)
    return {"preset": preset, "parameters": count_parameters(net), "rtf": elapsed / audio}


def measure_pocketsphinx(clips: list[Clip]) -> dict[str, Any]:
    try:
        from pocketsphinx import Decoder
    except ImportError:
        return {"error": "pocketsphinx is not installed; pip install -e '.[bench]'"}
    decoder = Decoder(loglevel="FATAL")  # the bundled US English acoustic model, dictionary and 3-gram LM
    elapsed = 0.0
    for clip in clips:
        pcm = (clip.samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
        started = time.perf_counter()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        elapsed += time.perf_counter() - started
    return {"rtf": elapsed / sum(c.seconds for c in clips)}


# ----------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    chunk_ms = results["chunk_seconds"] * 1000
    single = results["single_thread"]
    lines = [
        f"realtime/{results['preset']} ({results['parameters'] / 1e6:.1f} M parameters, random weights), "
        f"chunk {chunk_ms:.0f} ms, {results['clips']} clips, {results['audio_seconds']:.1f} s of audio",
        "",
        "| measurement | p50 (ms) | p95 (ms) | max (ms) | count | RTF |",
        "|---|---|---|---|---|---|",
        f"| compute per chunk, 1 stream, 1 thread | {single['chunk']['p50_ms']:.1f} | {single['chunk']['p95_ms']:.1f} "
        f"| {single['chunk']['max_ms']:.1f} | {single['chunk']['count']} | {single['rtf_per_stream']:.4f} |",
    ]

    for row in results["concurrent"]:
        lines.append(f"| compute per chunk, {row['streams']} concurrent streams | {row['chunk']['p50_ms']:.1f} "
                     f"| {row['chunk']['p95_ms']:.1f} | {row['chunk']['max_ms']:.1f} | {row['chunk']['count']} "
                     f"| {row['rtf_per_stream']:.4f} |")
    for row in results["websocket"]:
        for key, label in (("from_chunk_start", "from chunk start"), ("from_chunk_end", "from chunk end"),
                           ("server", "server latency_ms")):
            stats = row[key]
            lines.append(f"| WebSocket partial latency {label}, {row['streams']} paced stream(s) | "
                         f"{stats['p50_ms']:.0f} | {stats['p95_ms']:.0f} | {stats['max_ms']:.0f} "
                         f"| {stats['count']} | |")

    conformer = results["conformer"]
    lines.append(f"| offline conformer/{conformer['preset']}, batch 1 | | | | {results['clips']} | "
                 f"{conformer['rtf']:.4f} |")
    sphinx = results["pocketsphinx"]
    lines.append(f"| pocketsphinx 5 (en-us) | | | | {results['clips']} | "
                 + (f"{sphinx['rtf']:.4f} |" if "rtf" in sphinx else f"{sphinx['error']} |"))

    targets = results["targets"]
    lines += ["", f"target p95 compute per chunk <= 40 ms: {targets['compute']}",
              f"target WebSocket p95 latency from chunk start <= chunk + 100 ms ({chunk_ms + 100:.0f} ms): "
              f"{targets['websocket']}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="realtime and conformer preset (default: small)")
    parser.add_argument("--clips", type=int, default=20, help="first N LJSpeech-mini clips by id; 0 for all 130")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="concurrent streams (default: 1 4)")
    parser.add_argument("--ws-streams", type=int, nargs="+", default=[1, 4],
                        help="concurrent paced WebSocket sessions (default: 1 4)")
    parser.add_argument("--ws-seconds", type=float, default=30.0,
                        help="seconds of audio each paced WebSocket session sends (default: 30)")
    parser.add_argument("--skip-websocket", action="store_true", help="skip the WebSocket measurement")
    parser.add_argument("--skip-pocketsphinx", action="store_true", help="skip the pocketsphinx measurement")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--serve", type=Path, metavar="ROOT", help=argparse.SUPPRESS)  # server process mode
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.port, args.threads)
        return 0
    logging.basicConfig(level=logging.WARNING)
    set_threads(args.threads)
    info = print_machine(torch.device("cpu"))

    clips = load_clips(args.clips)
    net, config, tokenizer = random_model("realtime", args.preset)
    model = StreamingModel(net, config, tokenizer, f"realtime/{args.preset} random weights")
    chunk_seconds = config.model.chunk_frames * 4 * config.features.frame_shift_ms / 1000
    piece = round(chunk_seconds * SAMPLE_RATE)
    stream_clips(model, clips[:1], piece)  # warm-up
    results: dict[str, Any] = {
        "machine": info, "preset": args.preset, "parameters": count_parameters(net), "clips": len(clips),
        "audio_seconds": sum(c.seconds for c in clips), "chunk_seconds": chunk_seconds,
        "single_thread": measure_streams(model, clips, piece, 1),
        "concurrent": [measure_streams(model, clips, piece, n) for n in args.streams if n > 1],
        "websocket": [],
    }
    print(f"streamed in process: p95 compute per chunk {results['single_thread']['chunk']['p95_ms']:.1f} ms",
          flush=True)

    if not args.skip_websocket:
        with tempfile.TemporaryDirectory() as folder:
            run_dir = Path(folder) / MODEL_RUN
            run_dir.mkdir()
            ckpt.save_checkpoint(run_dir / ckpt.checkpoint_name(0), {
                "model": net.state_dict(), "config": config.to_dict(), "tokenizer": tokenizer.to_dict()},
                step=0, epoch=0)
            port = _free_port()
            server = subprocess.Popen([sys.executable, __file__, "--serve", folder, "--port", str(port),
                                       "--threads", str(args.threads)], cwd=REPO_ROOT)
            try:
                _wait_for_port(port, server)
                url = f"ws://127.0.0.1:{port}/ws/asr"
                for streams in args.ws_streams:
                    results["websocket"].append(measure_websocket(url, clips, args.ws_seconds, streams, chunk_seconds))
            finally:
                server.terminate()
                server.wait(timeout=30)

    results["conformer"] = measure_conformer(clips, args.preset)
    results["pocketsphinx"] = (
        {"error": "skipped (--skip-pocketsphinx)"} if args.skip_pocketsphinx else measure_pocketsphinx(clips)
    )
    ws_first = results["websocket"][0]["from_chunk_start"]["p95_ms"] if results["websocket"] else None
    results["targets"] = {
        "compute": "met" if results["single_thread"]["chunk"]["p95_ms"] <= 40 else "missed",
        "websocket": "not measured" if ws_first is None else
        ("met" if ws_first <= chunk_seconds * 1000 + 100 else "missed"),
    }
    results["machine_after"] = {"load_average_1min": machine_info(torch.device("cpu"))["load_average_1min"]}
    print(report(results))
    print(f"load average after the run: {results['machine_after']['load_average_1min']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
