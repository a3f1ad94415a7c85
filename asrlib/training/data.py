"""From an LJSpeech-format folder to padded feature batches: checks, split, dataset, collate."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch.nn.utils.rnn import pad_sequence

from asrlib.atomic import atomic_open
from asrlib.audio import load_audio
from asrlib.config import REPO_ROOT, DataConfig, FeatureConfig
from asrlib.datasets.ljspeech import Corpus, Problem, load_corpus, make_split
from asrlib.features import FbankExtractor
from asrlib.models import subsampled_lengths
from asrlib.text import CharTokenizer, OOVReport, normalize_text
from asrlib.training.sampler import DurationBucketSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utterance:
    id: str
    audio_path: Path
    text: str  # normalised transcript
    labels: tuple[int, ...]
    duration: float  # seconds


@dataclass
class PreparedData:
    """The usable clips of a corpus, split, with everything that was excluded and why."""

    splits: dict[str, list[Utterance]]
    problems: list[Problem] = field(default_factory=list)
    oov: OOVReport = field(default_factory=OOVReport)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # reason -> clip ids

    def split_ids(self) -> dict[str, list[str]]:
        return {name: [u.id for u in utts] for name, utts in self.splits.items()}

    def summary(self) -> dict:
        return {
            "clips": {name: len(utts) for name, utts in self.splits.items()},
            "hours": {name: round(sum(u.duration for u in utts) / 3600, 4) for name, utts in self.splits.items()},
            "problems": [str(p) for p in self.problems],
            "excluded": {reason: ids for reason, ids in self.excluded.items() if ids},
            "oov": self.oov.to_dict() if self.oov else None,
        }


def ctc_min_frames(labels: tuple[int, ...] | list[int]) -> int:
    """Return the minimum number of encoder frames CTC needs: one per label, plus one blank per repeated pair."""
    repeats = sum(1 for a, b in itertools.pairwise(labels) if a == b)
    return len(labels) + repeats


def prepare_data(
    root: str | Path,
    data: DataConfig,
    features: FeatureConfig,
    tokenizer: CharTokenizer,
    *,
    split: dict[str, list[str]] | None = None,
) -> PreparedData:
    """Read, check and split a corpus. Every excluded clip is logged with its reason before training."""
    corpus: Corpus = load_corpus(root, max_clips=data.max_clips)
    extractor = FbankExtractor(features)
    oov = OOVReport()
    reasons = ("outside vocabulary", "too short", "too long", "too short for CTC")
    excluded: dict[str, list[str]] = {reason: [] for reason in reasons}
    usable: dict[str, Utterance] = {}
    for clip in corpus.clips:
        text = normalize_text(clip.text)
        bad = tokenizer.oov_chars(text)
        if bad:
            oov.add(clip.id, bad)
            excluded["outside vocabulary"].append(clip.id)
            continue
        duration = clip.duration or 0.0
        if duration < data.min_duration:
            excluded["too short"].append(clip.id)
            continue
        if duration > data.max_duration:
            excluded["too long"].append(clip.id)
            continue
        labels = tuple(tokenizer.encode(text))
        # With speed perturbation a clip can be played up to 10 % faster, so it must fit then too.
        fastest = max(SPEED_FACTORS) if data.speed_perturb else 1.0
        frames = extractor.num_frames(int(duration / fastest * features.sample_rate))
        if int(subsampled_lengths(torch.tensor(frames))) < ctc_min_frames(labels) or not labels:
            excluded["too short for CTC"].append(clip.id)
            continue
        usable[clip.id] = Utterance(clip.id, clip.audio_path, text, labels, duration)

    for problem in corpus.problems:
        log.warning("skipping %s", problem)
    if oov:
        log.warning("%s", oov.summary())
    for reason, ids in excluded.items():
        if ids and reason != "outside vocabulary":
            log.warning("excluded %d clips as %s: %s", len(ids), reason, ", ".join(ids[:10]))
    if not usable:
        raise ValueError(f"{root}: no usable clips ({len(corpus.clips)} read, {len(corpus.problems)} problems)")

    if split is None:
        split = make_split(
            usable, valid_fraction=data.valid_fraction, test_fraction=data.test_fraction, seed=data.split_seed
        )
    splits = {name: [usable[i] for i in ids if i in usable] for name, ids in split.items()}
    if data.train_on == "all":
        splits["train"] = [usable[i] for i in sorted(usable)]
    if not splits["train"]:
        raise ValueError(f"{root}: the training split is empty")
    sizes = [f"{name} {len(utts)} clips / {sum(u.duration for u in utts) / 60:.1f} min"
             for name, utts in splits.items()]
    log.info("data: %s", ", ".join(sizes))
    return PreparedData(splits=splits, problems=corpus.problems, oov=oov, excluded=excluded)


SPEED_FACTORS = (0.9, 1.0, 1.1)  # speed perturbation as in Kaldi and ESPnet recipes

ItemKey = int | tuple[int, int, int]  # index, or (index, epoch, clips in the global batch) in training


def speed_factor(seed: int, epoch: int, index: int) -> float:
    """The speed for one clip in one epoch: a fixed function of its arguments, so resume is exact."""
    return random.Random(f"speed:{seed}:{epoch}:{index}").choice(SPEED_FACTORS)


class FeatureDataset(torch.utils.data.Dataset):
    """Loads audio, resamples and computes log-mel features `(frames, num_mel_bins)`.

    Keys are plain indices, or `(index, epoch, global_batch_clips)` tuples from the training loop,
    which select the speed of the clip in that epoch when speed perturbation is on. Features can be
    kept in memory (`cache=True`) and on disk (`cache_dir`), keyed by the audio file's path, size
    and modification time, the feature settings and the speed.
    """

    def __init__(
        self,
        utterances: list[Utterance],
        features: FeatureConfig,
        *,
        cache: bool = False,
        cache_dir: str | Path | None = None,
        speed_perturb: bool = False,
        seed: int = 0,
    ) -> None:
        self.utterances = utterances
        self.config = features
        self.sample_rate = features.sample_rate
        self.extractor = FbankExtractor(features)
        self.cache: dict[tuple[int, float], torch.Tensor] | None = {} if cache else None
        self.cache_dir = None
        if cache_dir:
            # Relative to the repository root, like the paths in config.yaml, so that the CLI, the
            # job manager and notebooks share one folder whatever their working directory.
            self.cache_dir = Path(cache_dir) if Path(cache_dir).is_absolute() else REPO_ROOT / cache_dir
        self.speed_perturb = speed_perturb
        self.seed = seed
        self._write_failed = False  # warn once when the disk cache cannot be written

    def __len__(self) -> int:
        return len(self.utterances)

    def features(self, index: int, speed: float = 1.0) -> torch.Tensor:
        return self.load_or_compute(index, speed)[0]

    def load_or_compute(self, index: int, speed: float = 1.0) -> tuple[torch.Tensor, bool]:
        """Return the clip's features at `speed`, and whether they were computed rather than read."""
        if self.cache is not None and (index, speed) in self.cache:
            return self.cache[(index, speed)], False
        feats = self._from_disk(index, speed)
        computed = feats is None
        if feats is None:
            feats = self._compute(index, speed)
            self._to_disk(index, speed, feats)
        if self.cache is not None:
            self.cache[(index, speed)] = feats
        return feats, computed

    def _compute(self, index: int, speed: float) -> torch.Tensor:
        waveform = load_audio(self.utterances[index].audio_path, self.sample_rate)
        if speed != 1.0:
            # Reading the samples as if recorded at rate * speed and resampling to the rate plays
            # them `speed` times faster, changing tempo and pitch together like `sox speed`.
            waveform = torchaudio.functional.resample(waveform, round(self.sample_rate * speed), self.sample_rate)
        return self.extractor(waveform)

    def _cache_path(self, index: int, speed: float) -> Path | None:
        if self.cache_dir is None:
            return None
        path = self.utterances[index].audio_path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = hashlib.sha1(
            json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, asdict(self.config), speed]).encode()
        ).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.pt"

    def is_cached(self, index: int, speed: float = 1.0) -> bool:
        """Return whether the disk cache has this clip's features at this speed."""
        path = self._cache_path(index, speed)
        return path is not None and path.is_file()

    def _from_disk(self, index: int, speed: float) -> torch.Tensor | None:
        path = self._cache_path(index, speed)
        if path is None or not path.is_file():
            return None
        try:
            feats = torch.load(path, weights_only=True)
        except Exception as err:  # torch.load raises many types on a damaged file
            problem = f"{type(err).__name__}: {err}"
        else:
            problem = self._check_cached(feats)
            if problem is None:
                return feats
        # A damaged or foreign file is recomputed, and the rewrite replaces it.
        log.warning("ignoring feature cache file %s (%s); computing the features again", path, problem)
        return None

    def _check_cached(self, feats: Any) -> str | None:
        """Return what is wrong with a loaded cache entry, or None when it has the expected shape."""
        if not isinstance(feats, torch.Tensor):
            return f"contains a {type(feats).__name__}, not a tensor"
        if not feats.is_floating_point():
            return f"dtype {feats.dtype}, expected a floating-point type"
        if feats.dim() != 2 or feats.shape[0] == 0 or feats.shape[1] != self.config.num_mel_bins:
            return f"shape {tuple(feats.shape)}, expected (frames, {self.config.num_mel_bins})"
        return None

    def _to_disk(self, index: int, speed: float, feats: torch.Tensor) -> None:
        path = self._cache_path(index, speed)
        if path is None:
            return
        try:
            with atomic_open(path, "wb") as handle:
                torch.save(feats.clone(), handle)
        except OSError as err:
            # The cache only saves time, so a full disk or a read-only folder must not stop training.
            if not self._write_failed:
                log.warning("cannot store features in the cache %s (%s); going on without storing them",
                            self.cache_dir, err)
            self._write_failed = True

    def __getitem__(self, key: ItemKey) -> dict:
        index, epoch, global_clips = (key, None, None) if isinstance(key, int) else key
        speed = speed_factor(self.seed, epoch, index) if self.speed_perturb and epoch is not None else 1.0
        utt = self.utterances[index]
        return {"id": utt.id, "features": self.features(index, speed), "labels": torch.tensor(utt.labels),
                "duration": utt.duration / speed, "global_clips": global_clips}


@dataclass(frozen=True)
class CacheFill:
    """Counts and wall time of one precompute_features() call."""

    entries: int  # (clip, speed) pairs requested
    computed: int  # entries computed by this call; the others were already on disk
    frames: int  # feature frames over all entries
    seconds: float  # wall time of the call


class _CacheJobs(torch.utils.data.Dataset):
    """One (clip, speed) pair per item, so DataLoader workers can share the work."""

    def __init__(self, dataset: FeatureDataset, keys: list[tuple[int, float]]) -> None:
        self.dataset = dataset
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: int) -> tuple[bool, int, bool]:
        """Return (computed, frames, stored) for one entry."""
        index, speed = self.keys[item]
        feats, computed = self.dataset.load_or_compute(index, speed)
        return computed, feats.shape[0], self.dataset.is_cached(index, speed)


def precompute_features(
    dataset: FeatureDataset,
    *,
    speeds: tuple[float, ...] = (1.0,),
    num_workers: int = 0,
    on_entry: Callable[[], None] | None = None,
) -> CacheFill:
    """Compute every clip's features at every speed into the dataset's disk cache.

    Entries already on disk are read back, not recomputed. A training run with the same feature
    settings and `data.feature_cache_dir` then loads features instead of decoding and resampling
    audio, as recipes that extract features before training do. `on_entry` is called once per
    entry done, for progress bars.
    """
    if dataset.cache_dir is None:
        raise ValueError("missing feature cache folder: set data.feature_cache_dir or pass a cache_dir")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    problem = cache_dir_problem(dataset.cache_dir)
    if problem:
        raise ValueError(f"cannot store features in {dataset.cache_dir}: {problem}; choose another cache folder")
    started = time.perf_counter()
    keys = [(index, speed) for index in range(len(dataset)) for speed in speeds]
    loader = torch.utils.data.DataLoader(_CacheJobs(dataset, keys), batch_size=None, num_workers=num_workers)
    computed = frames = missing = 0
    for was_computed, clip_frames, stored in loader:
        computed += int(was_computed)
        frames += int(clip_frames)
        missing += int(not stored)
        if on_entry is not None:
            on_entry()
    if missing:
        raise ValueError(f"{missing} of {len(keys)} entries could not be stored in {dataset.cache_dir} (see the "
                         "warnings above); free disk space or choose another cache folder")
    return CacheFill(len(keys), computed, frames, time.perf_counter() - started)


def cache_dir_problem(folder: Path) -> str | None:
    """Return why features cannot be stored in `folder`, creating it if needed, or None when they can."""
    if folder.exists() and not folder.is_dir():
        return "it exists and is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


class EpochBatches:
    """Batch sampler for the DataLoader: the sampler's batches as `(index, epoch, global_clips)` keys."""

    def __init__(self, sampler: DurationBucketSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch = self.sampler.epoch
        for shard, global_clips in self.sampler.iter_with_global_size():
            yield [(index, epoch, global_clips) for index in shard]


@dataclass
class Batch:
    ids: list[str]
    features: torch.Tensor  # (B, T, F), zero-padded
    feature_lengths: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B, L), padded with -1
    label_lengths: torch.Tensor  # (B,)
    audio_seconds: float
    global_clips: int  # clips in this step's batch across all processes (B on a single process)

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            self.ids,
            self.features.to(device, non_blocking=non_blocking),
            self.feature_lengths.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.label_lengths.to(device, non_blocking=non_blocking),
            self.audio_seconds,
            self.global_clips,
        )

    def pin_memory(self) -> Batch:
        return Batch(self.ids, self.features.pin_memory(), self.feature_lengths.pin_memory(),
                     self.labels.pin_memory(), self.label_lengths.pin_memory(), self.audio_seconds,
                     self.global_clips)


def collate(items: list[dict]) -> Batch:
    feats = [item["features"] for item in items]
    labels = [item["labels"] for item in items]
    return Batch(
        ids=[item["id"] for item in items],
        features=pad_sequence(feats, batch_first=True),
        feature_lengths=torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
        labels=pad_sequence(labels, batch_first=True, padding_value=-1),
        label_lengths=torch.tensor([len(x) for x in labels], dtype=torch.long),
        audio_seconds=sum(item["duration"] for item in items),
        global_clips=items[0].get("global_clips") or len(items),
    )
