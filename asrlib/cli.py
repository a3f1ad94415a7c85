"""The `asr` command: train, transcribe, evaluate, precompute features and manage datasets."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from asrlib.logs import setup_logging

log = logging.getLogger("asrlib.cli")


def _dataset_root(name_or_path: str, settings: dict) -> Path:
    from asrlib.datasets.catalog import resolve_dataset_path

    return resolve_dataset_path(name_or_path, settings)


def _train(args: argparse.Namespace) -> int:
    from asrlib.training.launch import run_training

    result = run_training(model_type=args.model, dataset=args.dataset, preset=args.preset, overrides=args.set or [],
                          resume_from=args.resume, run_id=args.run_id, checkpoints_dir=args.checkpoints,
                          config_path=args.config)
    print(json.dumps({"run_id": result.run_id, "state": result.state, "step": result.step,
                      "checkpoint": str(result.checkpoint), "metrics": result.metrics}))
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from asrlib.inference import Recognizer

    recognizer = Recognizer.from_checkpoint(args.model, device=args.device)
    results = recognizer.transcribe([str(f) for f in args.files], batch_size=args.batch_size)
    failures = 0
    for result in results:
        if result.error:
            failures += 1
            print(f"error: {result.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print(f"{result.source}\t{result.text}\t(RTF {result.rtf:.3f}, {result.duration:.2f} s)")
    ok = [r for r in results if not r.error]
    if ok:
        total_audio = sum(r.duration for r in ok)
        total_time = sum(r.processing_seconds for r in ok)
        print(f"transcribed {len(ok)} files, {total_audio:.1f} s of audio, RTF {total_time / total_audio:.3f}",
              file=sys.stderr)
    return 1 if failures else 0


def _features(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from asrlib.config import load_settings
    from asrlib.text import CharTokenizer
    from asrlib.training.data import SPEED_FACTORS, FeatureDataset, precompute_features, prepare_data
    from asrlib.training.launch import resolve_training

    overrides = list(args.set or [])
    if args.cache_dir:
        overrides.append(f"data.feature_cache_dir={Path(args.cache_dir).resolve()}")
    resolved = resolve_training(load_settings(args.config), model_type=args.model, dataset=args.dataset,
                                preset=args.preset, overrides=overrides)
    config = resolved.config
    if not config.data.feature_cache_dir:
        raise ValueError(
            "missing feature cache folder: pass --cache-dir DIR or set data.feature_cache_dir in config.yaml")
    tokenizer = CharTokenizer(config.text.charset)
    data = prepare_data(resolved.dataset_root, config.data, config.features, tokenizer)
    dataset = FeatureDataset(data.splits["train"], config.features, cache_dir=config.data.feature_cache_dir)
    speeds = SPEED_FACTORS if config.data.speed_perturb else (1.0,)
    with tqdm(total=len(dataset) * len(speeds), unit="clip", desc="features", file=sys.stderr,
              disable=args.quiet) as bar:
        fill = precompute_features(dataset, speeds=speeds, num_workers=args.workers, on_entry=bar.update)
    print(json.dumps({"cache_dir": str(dataset.cache_dir), "clips": len(dataset), "speeds": list(speeds),
                      "entries": fill.entries, "computed": fill.computed, "frames": fill.frames,
                      "seconds": round(fill.seconds, 2)}))
    hint = f"--set data.feature_cache_dir={dataset.cache_dir}"
    if config.data.speed_perturb:
        hint += " --set data.speed_perturb=true"
    print(f"train with {hint} to read these features", file=sys.stderr)
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value}: use 0 or more")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from asrlib.config import load_settings
    from asrlib.inference import Recognizer
    from asrlib.training.data import prepare_data
    from asrlib.training.trainer import evaluate_model

    recognizer = Recognizer.from_checkpoint(args.model, device=args.device)
    config = recognizer.config
    settings = load_settings(args.config)
    if args.folder:
        root, split = Path(args.folder), None
    else:
        from asrlib import checkpoints as ckpt
        from asrlib.inference import resolve_checkpoint

        payload = ckpt.load_checkpoint(resolve_checkpoint(args.model))
        root, split = _dataset_root(args.dataset or config.data.dataset, settings), payload.get("split")
    data = prepare_data(root, config.data, config.features, recognizer.tokenizer, split=split)
    utterances = [u for name in ([args.split] if not args.folder else list(data.splits)) for u in data.splits[name]]
    if not utterances:
        raise ValueError(f"split {args.split!r} of {root} is empty; choose another --split or use --folder")
    with torch.no_grad():
        result = evaluate_model(recognizer.model, utterances, config, recognizer.tokenizer, recognizer.device)
    print(json.dumps({"clips": len(utterances), "cer": result["cer"], "wer": result["wer"],
                      "loss": result["loss"]}))
    if args.hypotheses:
        for utt in utterances:
            print(f"{utt.id}\tREF {utt.text}\n{utt.id}\tHYP {result['hypotheses'][utt.id]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Train and use speech-recognition models.")
    parser.add_argument("--config", help="path to config.yaml (default: $ASR_CONFIG, ./config.yaml, the repository's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (a new run, or resume from a checkpoint)",
                           description="Train a model. Every run gets a folder under checkpoints/ with its "
                                       "config, metrics.jsonl, split and checkpoints.")
    train.add_argument("--model", default="conformer", choices=["conformer", "realtime"], help="model type")
    train.add_argument("--preset", help="size preset from config.yaml (tiny, small, medium)")
    train.add_argument("--dataset", help="catalog name or path of an LJSpeech-format folder")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.max_steps=500 (repeatable)")
    train.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint in a new run")
    train.add_argument("--run-id", help="name of the run folder (default: time, model and preset)")
    train.add_argument("--checkpoints", help="folder holding run folders (default: paths.checkpoints)")
    train.set_defaults(func=_train)

    transcribe = sub.add_parser("transcribe", help="transcribe audio files",
                                description="Print each file's transcript and real-time factor (RTF).")
    transcribe.add_argument("model", help="checkpoint file or run folder")
    transcribe.add_argument("files", nargs="+", type=Path, help="audio files (WAV, FLAC, OGG, MP3, WebM, ...)")
    transcribe.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    transcribe.add_argument("--batch-size", type=int, default=8, help="files decoded together")
    transcribe.add_argument("--json", action="store_true", help="print one JSON object per file")
    transcribe.set_defaults(func=_transcribe)

    features = sub.add_parser(
        "features", help="compute the training clips' features once and keep them on disk",
        description="Compute the log-mel features of a run's training split, at every speed when "
                    "data.speed_perturb is on, into data.feature_cache_dir. Runs with the same feature "
                    "settings and cache folder then read them instead of decoding audio. Takes the "
                    "same --model, --preset, --dataset and --set options as `asr train`.")
    features.add_argument("--model", default="conformer", choices=["conformer", "realtime"], help="model type")
    features.add_argument("--preset", help="size preset from config.yaml (tiny, small, medium)")
    features.add_argument("--dataset", help="catalog name or path of an LJSpeech-format folder")
    features.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    features.add_argument("--cache-dir", help="cache folder (default: data.feature_cache_dir)")
    features.add_argument("--workers", type=_non_negative_int, default=0,
                          help="worker processes (default: 0, this process)")
    features.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    features.set_defaults(func=_features)

    evaluate = sub.add_parser("evaluate", help="compute CER and WER on a split or a folder")
    evaluate.add_argument("model", help="checkpoint file or run folder")
    evaluate.add_argument("--dataset", help="catalog name or path (default: the dataset the model trained on)")
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"],
                          help="split saved with the model's run (default: test)")
    evaluate.add_argument("--folder", help="evaluate every clip of this LJSpeech-format folder instead")
    evaluate.add_argument("--device", default="cpu", help="torch device")
    evaluate.add_argument("--hypotheses", action="store_true", help="also print reference and hypothesis per clip")
    evaluate.set_defaults(func=_evaluate)

    # These modules import torch only when their command runs, so `asr --help` stays fast.
    from asrlib.datasets.cli import add_dataset_parser
    from asrlib.gpu import add_gpu_parser
    from asrlib.streaming_cli import add_stream_parser

    add_stream_parser(sub)
    add_dataset_parser(sub)
    add_gpu_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        # One line on stderr: the console log handler would print the same message a second time.
        log.debug("command failed", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
