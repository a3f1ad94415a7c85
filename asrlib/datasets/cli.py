"""`asr dataset list|download|import|validate|demo`: the dataset manager on the command line.

`add_dataset_parser` registers the subcommands on the `asr` parser. Each command returns an exit
code: 0 on success, 2 with a one-line `error: ...` message on stderr for a failure the user can fix,
130 when interrupted (a download then resumes on the next run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from asrlib.datasets.progress import Progress

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class TqdmProgress:
    """Progress callback that draws one tqdm bar per phase on stderr."""

    def __init__(self, *, disable: bool = False) -> None:
        self.disable = disable
        self._bar: Any = None
        self._phase: str | None = None

    def __call__(self, event: Progress) -> None:
        from tqdm import tqdm

        if self._bar is None or event.phase != self._phase:
            self.close()
            self._phase = event.phase
            self._bar = tqdm(total=event.total, initial=event.done, unit=event.unit, unit_scale=event.unit == "B",
                             unit_divisor=1024 if event.unit == "B" else 1000, desc=event.phase,
                             dynamic_ncols=True, disable=self.disable, file=sys.stderr)
        elif event.done < self._bar.n:  # a download restarted from byte 0
            self._bar.reset(total=event.total)
        self._bar.update(event.done - self._bar.n)
        if event.final:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
        self._phase = None


class LineProgress:
    """Progress callback for logs and pipes: one line per phase every `interval_s`, and at its end."""

    def __init__(self, *, interval_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def __call__(self, event: Progress) -> None:
        now = time.monotonic()
        if not event.final and now - self._last.get(event.phase, -math.inf) < self.interval_s:
            return
        self._last[event.phase] = now
        if event.unit == "B":
            amount = _bytes(event.done) + (f" of {_bytes(event.total)}" if event.total else "")
        else:
            amount = f"{event.done}" + (f" of {event.total}" if event.total else "") + f" {event.unit}s"
        parts = [f"{event.phase}: {amount}"]
        if event.fraction is not None:
            parts.append(f"{100 * event.fraction:.0f}%")
        if event.rate_per_s and not event.final:
            rate = _bytes(event.rate_per_s) if event.unit == "B" else f"{event.rate_per_s:.1f} {event.unit}s"
            parts.append(f"{rate}/s")
        if event.eta_s is not None and not event.final:
            parts.append(f"{event.eta_s / 60:.1f} min left")
        print(", ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        self._last.clear()


def _bytes(value: float) -> str:
    for prefix in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if prefix == "B" else f"{value:.1f} {prefix}"
        value /= 1024
    return f"{value:.1f} GiB"


def make_progress(*, quiet: bool) -> TqdmProgress | LineProgress:
    """Return tqdm bars on a terminal, periodic lines otherwise, and nothing with `quiet`."""
    if quiet:
        return TqdmProgress(disable=True)
    return TqdmProgress() if sys.stderr.isatty() else LineProgress()


def add_dataset_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `dataset` and its subcommands on an argparse subparsers object; return its parser."""
    parser = subparsers.add_parser(
        "dataset", help="list, download, import, validate and generate datasets",
        description="Manage the datasets of the catalog in config.yaml (section `datasets:`).",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="do not draw progress bars")
    sub = parser.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", help="show every dataset, whether it is present, and its size",
                             description="Show catalog datasets and imported ones: present or not, "
                                         "synthetic or not, clips and hours once validated, and "
                                         "partial downloads.")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")

    download = sub.add_parser(
        "download", help="download, verify, extract and validate a catalog dataset",
        description="Download a catalog dataset's archive (resuming a partial download), verify its size "
                    "and SHA-256, extract it safely and validate it.",
    )
    download.add_argument("name", help="catalog name, e.g. ljspeech")
    download.add_argument("--url", help="download from this URL instead of the catalog's (a mirror); a local path "
                               "counts as --archive")
    download.add_argument("--archive", help="use this local archive file instead of downloading")
    download.add_argument("--force", action="store_true", help="replace the dataset folder if it exists")
    download.add_argument("--no-validate", action="store_true", help="skip validation after extraction")
    download.add_argument("--remove-archive", action="store_true",
                          help="delete the downloaded archive after a successful extraction")
    download.add_argument("--retries", type=int, default=5,
                          help="retries after consecutive failed attempts (default: 5)")
    download.add_argument("--timeout", type=float, default=60.0,
                          help="seconds to wait for the server on connect and on each read (default: 60)")

    importing = sub.add_parser(
        "import", help="import an LJSpeech-format folder or a local archive",
        description="Import an LJSpeech-format folder (metadata.csv and wavs/) or an archive of one. A "
                    "folder is copied unless --link is given.",
    )
    importing.add_argument("name", help="catalog name, or a new name for a folder under the data directory")
    importing.add_argument("source", help="folder or archive file (tar.bz2, tar.gz, tar.xz, tar or zip)")
    importing.add_argument("--link", action="store_true",
                           help="symlink the folder instead of copying it; validation then writes its "
                                "reports into the source folder")
    importing.add_argument("--force", action="store_true", help="replace the dataset folder if it exists")
    importing.add_argument("--no-validate", action="store_true", help="skip validation after the import")

    validate = sub.add_parser(
        "validate", help="check every clip and save validation.json and split.json",
        description="Check a dataset's metadata and audio, write validation.json and the train/valid/test "
                    "split (split.json) into its folder, and print a summary.",
    )
    validate.add_argument("dataset", help="catalog name, imported name or folder path")
    validate.add_argument("--json", action="store_true", help="print the whole report as JSON")

    demo = sub.add_parser(
        "demo", help="synthesise the demo dataset with espeak-ng",
        description="Generate a synthetic dataset in LJSpeech layout with espeak-ng, for tests and a first "
                    "run. It is labelled synthetic everywhere it is listed.",
    )
    demo.add_argument("--sentences", type=int, default=300, help="number of clips (default: 300)")
    demo.add_argument("--seed", type=int, default=0, help="seed of sentences, voices, rates and pitches (default: 0)")
    demo.add_argument("--force", action="store_true", help="replace the demo folder if it exists")
    demo.add_argument("--no-validate", action="store_true", help="skip validation after generation")

    parser.set_defaults(func=run_dataset_command)
    return parser


def run_dataset_command(args: argparse.Namespace) -> int:
    """Run a parsed `asr dataset ...` command and return its exit code."""
    from asrlib.config import load_settings
    from asrlib.datasets.demo import SynthesisError
    from asrlib.datasets.download import DownloadError, DownloadOptions
    from asrlib.datasets.extract import ArchiveError
    from asrlib.datasets.manager import DatasetManager

    progress = make_progress(quiet=getattr(args, "quiet", False))
    try:
        settings = load_settings(getattr(args, "config", None))
        options = DownloadOptions(max_retries=getattr(args, "retries", 5), timeout_s=getattr(args, "timeout", 60.0))
        manager = DatasetManager(settings, download_options=options)
        return _COMMANDS[args.dataset_command](manager, args, progress)
    except (DownloadError, ArchiveError, SynthesisError, ValueError, OSError) as err:
        progress.close()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        progress.close()
        print("interrupted; a partial download resumes when you run the same command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        progress.close()


def _list(manager: Any, args: argparse.Namespace, progress: Any) -> int:
    statuses = manager.list()
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=1))
        return 0
    print(f"{'NAME':<12} {'STATE':<18} {'KIND':<10} {'CLIPS':>7} {'HOURS':>7}  PATH")
    for status in statuses:
        kind = "imported"
        if status.synthetic:
            kind = "synthetic"
        elif status.in_catalog:
            kind = "recorded"
        clips = str(status.clips) if status.clips is not None else "-"
        hours = f"{status.hours:.2f}" if status.hours is not None else "-"
        print(f"{status.name:<12} {_state(status):<18} {kind:<10} {clips:>7} {hours:>7}  {status.path}")
    return 0


def _state(status: Any) -> str:
    if status.present:
        return "present" if status.clips is not None else "present, unchecked"
    download = status.download
    if download is None:
        return "absent"
    if download.state == "complete":
        return "downloaded"
    if download.total_bytes:
        return f"partial {100 * download.bytes_done / download.total_bytes:.0f}%"
    return f"partial {download.bytes_done} B"


def _download(manager: Any, args: argparse.Namespace, progress: Any) -> int:
    path = manager.download(args.name, url=args.url, archive=args.archive, overwrite=args.force,
                            validate=not args.no_validate, remove_archive=args.remove_archive, progress=progress)
    progress.close()
    _print_summary(manager, args.name, path, validated=not args.no_validate)
    return 0


def _import(manager: Any, args: argparse.Namespace, progress: Any) -> int:
    path = manager.import_(args.name, args.source, mode="symlink" if args.link else "copy", overwrite=args.force,
                           validate=not args.no_validate, progress=progress)
    progress.close()
    _print_summary(manager, args.name, path, validated=not args.no_validate)
    return 0


def _validate(manager: Any, args: argparse.Namespace, progress: Any) -> int:
    report = manager.validate(args.dataset, progress=progress)
    progress.close()
    print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False) if args.json else report.summary())
    return 0


def _demo(manager: Any, args: argparse.Namespace, progress: Any) -> int:
    path = manager.make_demo(num_sentences=args.sentences, seed=args.seed, overwrite=args.force,
                             validate=not args.no_validate, progress=progress)
    progress.close()
    _print_summary(manager, "demo", path, validated=not args.no_validate)
    return 0


def _print_summary(manager: Any, name: str, path: Any, *, validated: bool) -> None:
    from asrlib.datasets.validate import load_report

    report = load_report(path) if validated else None
    if report is None:
        print(f"{name}: ready at {path}")
        return
    print(f"{name}: ready at {path}, {report['num_clips']} usable clips, {report['total_hours']:.2f} hours")


_COMMANDS = {"list": _list, "download": _download, "import": _import, "validate": _validate, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    """Run `dataset ...` arguments without the rest of the `asr` command (python -m asrlib.datasets.cli)."""
    parser = argparse.ArgumentParser(prog="asr")
    parser.add_argument("--config", help="path to config.yaml (default: $ASR_CONFIG, ./config.yaml, the repository's)")
    add_dataset_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
