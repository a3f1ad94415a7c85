"""The `asr` command: train, transcribe, evaluate and manage datasets."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from asrlib.logs import run_context, setup_logging

log = logging.getLogger("asrlib.cli")


def _dataset_root(name_or_path: str, settings: dict) -> Path:
    from asrlib.datasets.catalog import resolve_dataset_path  # noqa: PLC0415 - keeps `asr --help` fast

    return resolve_dataset_path(name_or_path, settings)


def _train(args: argparse.Namespace) -> int:
    from asrlib import checkpoints as ckpt  # noqa: PLC0415
    from asrlib.config import RunConfig, checkpoints_dir, deep_merge, load_settings, parse_overrides, resolve_run_config  # noqa: PLC0415
    from asrlib.training.runs import new_run_id, validate_run_id  # noqa: PLC0415
    from asrlib.training.trainer import Trainer  # noqa: PLC0415

    settings = load_settings(args.config)
    overrides = parse_overrides(args.set or [])
    if args.dataset:
        overrides = deep_merge(overrides, {"data": {"dataset": args.dataset}})
    if args.resume:
        # The checkpoint's own config is the base; only the overrides given now change it.
        payload = ckpt.load_checkpoint(args.resume)
        config = RunConfig.from_dict(deep_merge(payload["config"], overrides))
    else:
        config = resolve_run_config(settings, model_type=args.model, preset=args.preset, overrides=overrides)
    run_id = validate_run_id(args.run_id) if args.run_id else new_run_id(config.model.type, config.model.preset)
    root = Path(args.checkpoints) if args.checkpoints else checkpoints_dir(settings)
    run_dir = root / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"run folder {run_dir} already exists; choose another --run-id")
    dataset_root = _dataset_root(config.data.dataset, settings)

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; finishing the current step and saving a checkpoint", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with run_context(run_id):
        trainer = Trainer(config, run_dir, dataset_root=dataset_root, resume_from=args.resume, should_stop=stop.is_set)
        result = trainer.fit()
    print(json.dumps({"run_id": result.run_id, "state": result.state, "step": result.step,
                      "checkpoint": str(result.checkpoint), "metrics": result.metrics}))
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from asrlib.inference import Recognizer  # noqa: PLC0415

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


def _evaluate(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from asrlib.config import load_settings  # noqa: PLC0415
    from asrlib.inference import Recognizer  # noqa: PLC0415
    from asrlib.training.data import prepare_data  # noqa: PLC0415
    from asrlib.training.trainer import Trainer, evaluate_model  # noqa: PLC0415

    recognizer = Recognizer.from_checkpoint(args.model, device=args.device)
    config = recognizer.config
    settings = load_settings(args.config)
    if args.folder:
        root, split = Path(args.folder), None
    else:
        from asrlib import checkpoints as ckpt  # noqa: PLC0415
        from asrlib.inference import resolve_checkpoint  # noqa: PLC0415

        payload = ckpt.load_checkpoint(resolve_checkpoint(args.model))
        root, split = _dataset_root(args.dataset or config.data.dataset, settings), payload.get("split")
    data = prepare_data(root, config.data, config.features, recognizer.tokenizer, split=split)
    utterances = [u for name in ([args.split] if not args.folder else list(data.splits)) for u in data.splits[name]]
    if not utterances:
        raise ValueError(f"split {args.split!r} of {root} is empty; choose another --split or use --folder")
    loss_fn = Trainer(config, Path("."), dataset_root=root)._loss
    with torch.no_grad():
        result = evaluate_model(recognizer.model, utterances, config, recognizer.tokenizer, recognizer.device,
                                loss_fn=loss_fn)
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

    evaluate = sub.add_parser("evaluate", help="compute CER and WER on a split or a folder")
    evaluate.add_argument("model", help="checkpoint file or run folder")
    evaluate.add_argument("--dataset", help="catalog name or path (default: the dataset the model trained on)")
    evaluate.add_argument("--split", default="test", choices=["train", "valid", "test"],
                          help="split saved with the model's run (default: test)")
    evaluate.add_argument("--folder", help="evaluate every clip of this LJSpeech-format folder instead")
    evaluate.add_argument("--device", default="cpu", help="torch device")
    evaluate.add_argument("--hypotheses", action="store_true", help="also print reference and hypothesis per clip")
    evaluate.set_defaults(func=_evaluate)

    try:
        from asrlib.datasets.cli import add_dataset_parser  # noqa: PLC0415
    except ImportError:
        pass
    else:
        add_dataset_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
