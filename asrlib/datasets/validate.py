"""Validation report of an LJSpeech-format dataset, saved as `validation.json` in its folder.

The report counts the usable clips (audio present, decodable and not silent) and their hours,
lists every missing, corrupt or silent file, every metadata problem with its line number, and
every transcript character outside the tokenizer's charset after `normalize_text`. It also saves
the train/valid/test split of the usable clips as `split.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asrlib.atomic import atomic_write_text
from asrlib.datasets.ljspeech import SPLITS, Clip, make_split, read_metadata, save_split
from asrlib.datasets.progress import ProgressCallback, ProgressMeter
from asrlib.text import OOVReport, normalize_text

logger = logging.getLogger(__name__)

REPORT_NAME = "validation.json"
SPLIT_NAME = "split.json"
_DBFS_FLOOR = -120.0


@dataclass(frozen=True)
class ValidationOptions:
    silence_peak_dbfs: float = -50.0  # a clip whose peak is below this level is silent
    silence_rms_dbfs: float = -60.0  # a clip whose RMS level is below this is silent
    histogram_bin_s: float = 1.0  # width of the duration histogram bins
    min_duration_s: float | None = None  # clips shorter than this are counted as too short
    max_duration_s: float | None = None  # clips longer than this are counted as too long
    num_workers: int = 2  # threads decoding audio; soundfile releases the GIL while decoding


@dataclass
class ValidationReport:
    path: str
    created_at: str
    charset: str
    metadata_entries: int  # well-formed lines of metadata.csv
    num_clips: int  # usable clips: present, decodable and not silent
    total_hours: float  # of the usable clips
    duration_s: dict[str, float]  # min, mean and max over the usable clips
    duration_histogram: list[dict[str, float]]  # {"start_s", "end_s", "count"} per bin
    sample_rates: dict[str, int]  # sample rate in Hz -> clips, over all decodable clips
    channels: dict[str, int]  # channel count -> clips
    missing: list[str] = field(default_factory=list)  # clip ids whose audio file does not exist
    corrupt: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason"}
    silent: list[dict[str, Any]] = field(default_factory=list)  # {"id", "peak_dbfs", "rms_dbfs"}
    too_short: list[str] = field(default_factory=list)  # below min_duration_s; still usable
    too_long: list[str] = field(default_factory=list)  # above max_duration_s; still usable
    unlisted_audio: list[str] = field(default_factory=list)  # files in wavs/ without a metadata line
    out_of_vocabulary: dict[str, Any] = field(default_factory=dict)  # OOVReport.to_dict()
    metadata_problems: list[dict[str, Any]] = field(default_factory=list)  # {"line", "clip_id", "reason"}
    split: dict[str, Any] = field(default_factory=dict)  # file, seed, fractions and clips per split

    @property
    def ok(self) -> bool:
        """True when every listed clip is usable and the metadata has no problems."""
        return not (self.missing or self.corrupt or self.silent or self.metadata_problems) and self.num_clips > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"{self.path}: {self.num_clips} usable clips, {self.total_hours:.2f} hours",
            f"sample rates: {', '.join(f'{rate} Hz x{n}' for rate, n in self.sample_rates.items()) or 'none'}",
            (
                f"missing: {len(self.missing)}, corrupt: {len(self.corrupt)}, silent: {len(self.silent)}, "
                f"metadata problems: {len(self.metadata_problems)}, unlisted audio: {len(self.unlisted_audio)}"
            ),
        ]
        oov = self.out_of_vocabulary.get("characters") or {}
        if oov:
            chars = ", ".join(f"{c!r} x{v['count']} (e.g. {', '.join(v['examples'])})" for c, v in oov.items())
            lines.append(f"characters outside the charset: {chars}")
        counts = self.split.get("counts", {})
        lines.append(f"split: {', '.join(f'{k} {v}' for k, v in counts.items())} (saved to {self.split.get('file')})")
        return "\n".join(lines)


@dataclass(frozen=True)
class _ClipCheck:
    clip: Clip
    status: str  # ok, missing, corrupt or silent
    reason: str = ""
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    peak_dbfs: float | None = None
    rms_dbfs: float | None = None


def validate_dataset(
    path: str | os.PathLike[str],
    *,
    charset: str,
    split_seed: int,
    valid_fraction: float,
    test_fraction: float,
    options: ValidationOptions | None = None,
    save: bool = True,
    progress: ProgressCallback | None = None,
) -> ValidationReport:
    """Check every clip of the dataset at `path`; with `save`, write validation.json and split.json there."""
    options = options or ValidationOptions()
    root = Path(path)
    corpus = read_metadata(root)
    meter = ProgressMeter(progress, phase="validate", total=len(corpus.clips), unit="clip")
    checks: list[_ClipCheck] = []
    with ThreadPoolExecutor(max_workers=max(1, options.num_workers)) as pool:
        for check in pool.map(lambda clip: _check_clip(clip, options), corpus.clips):
            checks.append(check)
            meter.update(len(checks), item=check.clip.id)
    meter.close()

    usable = [c for c in checks if c.status == "ok"]
    durations = [c.duration_s or 0.0 for c in usable]
    decoded = [c for c in checks if c.sample_rate is not None]
    oov = OOVReport()
    allowed = set(charset)
    for clip in corpus.clips:
        outside = [char for char in normalize_text(clip.text) if char not in allowed]
        if outside:
            oov.add(clip.id, outside)

    split = make_split([c.clip.id for c in usable], valid_fraction=valid_fraction,
                       test_fraction=test_fraction, seed=split_seed)
    report = ValidationReport(
        path=str(root),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        charset=charset,
        metadata_entries=len(corpus.clips),
        num_clips=len(usable),
        total_hours=sum(durations) / 3600.0,
        duration_s=_duration_stats(durations),
        duration_histogram=_histogram(durations, options.histogram_bin_s),
        sample_rates=_count(str(c.sample_rate) for c in decoded),
        channels=_count(str(c.channels) for c in decoded),
        missing=[c.clip.id for c in checks if c.status == "missing"],
        corrupt=[{"id": c.clip.id, "reason": c.reason} for c in checks if c.status == "corrupt"],
        silent=[{"id": c.clip.id, "peak_dbfs": c.peak_dbfs, "rms_dbfs": c.rms_dbfs}
                for c in checks if c.status == "silent"],
        too_short=[c.clip.id for c in usable
                   if options.min_duration_s is not None and (c.duration_s or 0.0) < options.min_duration_s],
        too_long=[c.clip.id for c in usable
                  if options.max_duration_s is not None and (c.duration_s or 0.0) > options.max_duration_s],
        unlisted_audio=_unlisted_audio(root, {clip.id for clip in corpus.clips}),
        out_of_vocabulary=oov.to_dict(),
        metadata_problems=[{"line": p.line, "clip_id": p.clip_id, "reason": p.reason} for p in corpus.problems],
        split={"file": SPLIT_NAME, "seed": split_seed, "valid_fraction": valid_fraction,
               "test_fraction": test_fraction, "counts": {name: len(split[name]) for name in SPLITS}},
    )
    if save:
        save_split(split, root / SPLIT_NAME)
        atomic_write_text(root / REPORT_NAME, json.dumps(report.to_dict(), indent=1, ensure_ascii=False) + "\n")
        for name in (SPLIT_NAME, REPORT_NAME):
            (root / name).chmod(0o644)  # atomic_write_text creates owner-only files
    logger.info("validated %s: %d usable clips of %d, %.2f hours", root, report.num_clips,
                report.metadata_entries, report.total_hours)
    return report


def load_report(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read the saved validation.json of a dataset folder, or None when there is none or it is unreadable."""
    file = Path(path) / REPORT_NAME
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as err:
        logger.warning("ignoring unreadable %s: %s", file, err)
        return None


def _check_clip(clip: Clip, options: ValidationOptions) -> _ClipCheck:
    from asrlib.audio import AudioError, audio_info, load_audio

    if not clip.audio_path.is_file():
        return _ClipCheck(clip, "missing")
    try:
        info = audio_info(clip.audio_path)
        waveform = load_audio(clip.audio_path, sample_rate=None).numpy()
    except AudioError as err:
        return _ClipCheck(clip, "corrupt", reason=err.reason)
    peak_dbfs = _dbfs(float(abs(waveform).max()) if waveform.size else 0.0)
    rms_dbfs = _dbfs(math.sqrt(float((waveform.astype("float64") ** 2).mean())) if waveform.size else 0.0)
    status = "ok"
    if peak_dbfs < options.silence_peak_dbfs or rms_dbfs < options.silence_rms_dbfs:
        status = "silent"
    return _ClipCheck(clip, status, sample_rate=info.sample_rate, channels=info.channels,
                      duration_s=info.duration, peak_dbfs=round(peak_dbfs, 1), rms_dbfs=round(rms_dbfs, 1))


def _dbfs(amplitude: float) -> float:
    # Floored at -120 dBFS, below the 16-bit noise floor, so digital silence stays valid JSON.
    return max(_DBFS_FLOOR, 20.0 * math.log10(amplitude)) if amplitude > 0 else _DBFS_FLOOR


def _duration_stats(durations: list[float]) -> dict[str, float]:
    if not durations:
        return {"min": 0.0, "mean": 0.0, "max": 0.0}
    return {"min": min(durations), "mean": sum(durations) / len(durations), "max": max(durations)}


def _histogram(durations: list[float], bin_s: float) -> list[dict[str, float]]:
    if not durations:
        return []
    if bin_s <= 0:
        raise ValueError(f"histogram_bin_s must be positive, got {bin_s}")
    num_bins = max(1, math.ceil(max(durations) / bin_s))
    counts = [0] * num_bins
    for duration in durations:
        counts[min(num_bins - 1, int(duration // bin_s))] += 1
    return [{"start_s": i * bin_s, "end_s": (i + 1) * bin_s, "count": n} for i, n in enumerate(counts)]


def _count(values: Any) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda item: int(item[0])))


def _unlisted_audio(root: Path, ids: set[str]) -> list[str]:
    wavs = root / "wavs"
    if not wavs.is_dir():
        return []
    return sorted(p.name for p in wavs.iterdir() if p.suffix.lower() == ".wav" and p.stem not in ids)
