"""From an LJSpeech-format folder to padded feature batches: checks, split, dataset, collate."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from asrlib.audio import load_audio
from asrlib.config import DataConfig, FeatureConfig
from asrlib.datasets.ljspeech import Corpus, Problem, load_corpus, make_split
from asrlib.features import FbankExtractor
from asrlib.models import subsampled_lengths
from asrlib.text import CharTokenizer, OOVReport, normalize_text

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
    """Fewest encoder frames CTC needs: one per label plus a blank between each repeated pair."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
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
    excluded: dict[str, list[str]] = {"outside vocabulary": [], "too short": [], "too long": [], "too short for CTC": []}
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
        frames = extractor.num_frames(int(duration * features.sample_rate))
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
    log.info(
        "data: %s",
        ", ".join(f"{name} {len(utts)} clips / {sum(u.duration for u in utts) / 60:.1f} min" for name, utts in splits.items()),
    )
    return PreparedData(splits=splits, problems=corpus.problems, oov=oov, excluded=excluded)


class FeatureDataset(torch.utils.data.Dataset):
    """Loads audio, resamples and computes log-mel features; optionally keeps them in memory."""

    def __init__(self, utterances: list[Utterance], features: FeatureConfig, *, cache: bool = False) -> None:
        self.utterances = utterances
        self.sample_rate = features.sample_rate
        self.extractor = FbankExtractor(features)
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.utterances)

    def features(self, index: int) -> torch.Tensor:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        utt = self.utterances[index]
        waveform = load_audio(utt.audio_path, self.sample_rate)
        feats = self.extractor(waveform)
        if self.cache is not None:
            self.cache[index] = feats
        return feats

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        return {"id": utt.id, "features": self.features(index), "labels": torch.tensor(utt.labels, dtype=torch.long),
                "duration": utt.duration}


@dataclass
class Batch:
    ids: list[str]
    features: torch.Tensor  # (B, T, F), zero-padded
    feature_lengths: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B, L), padded with -1
    label_lengths: torch.Tensor  # (B,)
    audio_seconds: float

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            self.ids,
            self.features.to(device, non_blocking=non_blocking),
            self.feature_lengths.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.label_lengths.to(device, non_blocking=non_blocking),
            self.audio_seconds,
        )

    def pin_memory(self) -> Batch:
        return Batch(self.ids, self.features.pin_memory(), self.feature_lengths.pin_memory(),
                     self.labels.pin_memory(), self.label_lengths.pin_memory(), self.audio_seconds)


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
    )
