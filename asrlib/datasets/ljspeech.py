"""Reader for corpora in LJSpeech layout: `metadata.csv` plus `wavs/<ID>.wav`.

Each line of `metadata.csv` is `ID|raw transcript|normalized transcript`. The file is not CSV in
the quoting sense: transcripts contain unbalanced `"` characters, so it is split on `|` by hand;
a default CSV reader would merge rows. The normalized column (numbers and abbreviations spelled
out) is the training target; a two-field line `ID|text` is accepted as well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asrlib.atomic import atomic_write_text

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Clip:
    id: str
    audio_path: Path
    text: str  # the normalized transcript column, before asrlib.text normalisation
    duration: float | None = None  # seconds, known after probing the audio


@dataclass(frozen=True)
class Problem:
    """A metadata line or audio file that cannot be used, with where and why."""

    reason: str
    clip_id: str | None = None
    line: int | None = None  # 1-based line in metadata.csv
    path: str | None = None

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.clip_id:
            where.append(f"clip {self.clip_id}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


@dataclass
class Corpus:
    root: Path
    clips: list[Clip] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def by_id(self) -> dict[str, Clip]:
        return {clip.id: clip for clip in self.clips}

    @property
    def total_seconds(self) -> float:
        return sum(clip.duration or 0.0 for clip in self.clips)


def read_metadata(root: str | Path) -> Corpus:
    """Parse `root/metadata.csv` without touching the audio; malformed lines become problems."""
    root = Path(root)
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise FileNotFoundError(
            f"{metadata}: metadata.csv not found; an LJSpeech-format folder contains metadata.csv and wavs/"
        )
    corpus = Corpus(root=root)
    seen: dict[str, int] = {}
    try:
        text = metadata.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{metadata}: not valid UTF-8 ({err}); save the file as UTF-8") from None
    # Split on "\n" only: str.splitlines() also breaks at form feeds, U+0085 and U+2028, which can
    # occur inside a transcript, and would turn one row into two wrong clips.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) not in (2, 3):
            corpus.problems.append(
                Problem(f"expected 3 fields separated by '|', found {len(fields)}", line=number, path=str(metadata))
            )
            continue
        clip_id, transcript = fields[0].strip(), fields[-1].strip()
        if not clip_id or "/" in clip_id or "\\" in clip_id or clip_id.startswith("."):
            corpus.problems.append(Problem(f"invalid clip id {clip_id!r}", line=number, path=str(metadata)))
            continue
        if not transcript:
            corpus.problems.append(Problem("empty transcript", clip_id=clip_id, line=number, path=str(metadata)))
            continue
        if clip_id in seen:
            corpus.problems.append(
                Problem(f"duplicate id, first seen on line {seen[clip_id]}", clip_id=clip_id, line=number,
                        path=str(metadata))
            )
            continue
        seen[clip_id] = number
        corpus.clips.append(Clip(id=clip_id, audio_path=root / "wavs" / f"{clip_id}.wav", text=transcript))
    return corpus


def probe_audio(corpus: Corpus) -> Corpus:
    """Check every clip's audio file and record its duration; missing or unreadable files become problems."""
    from asrlib.audio import AudioError, audio_info

    kept: list[Clip] = []
    problems = list(corpus.problems)
    for clip in corpus.clips:
        if not clip.audio_path.is_file():
            problems.append(Problem("audio file missing", clip_id=clip.id, path=str(clip.audio_path)))
            continue
        try:
            info = audio_info(clip.audio_path)
        except AudioError as err:
            problems.append(Problem(f"unreadable audio: {err.reason}", clip_id=clip.id, path=str(clip.audio_path)))
            continue
        kept.append(Clip(clip.id, clip.audio_path, clip.text, info.duration))
    return Corpus(root=corpus.root, clips=kept, problems=problems)


def load_corpus(root: str | Path, *, max_clips: int | None = None) -> Corpus:
    """Read metadata and probe the audio of an LJSpeech-format folder."""
    corpus = read_metadata(root)
    if max_clips is not None:
        corpus.clips = sorted(corpus.clips, key=lambda c: c.id)[:max_clips]
    return probe_audio(corpus)


def make_split(
    ids: Iterable[str], *, valid_fraction: float, test_fraction: float, seed: int = 0
) -> dict[str, list[str]]:
    """Assign clip ids to train, valid and test by a seeded hash of each id.

    The order depends only on the seed and the ids, never on file order or the platform, so the
    same corpus always gives the same split.
    """
    ordered = sorted(set(ids), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n = len(ordered)
    n_valid = _share(n, valid_fraction)
    n_test = _share(n - n_valid, test_fraction)
    return {
        "valid": sorted(ordered[:n_valid]),
        "test": sorted(ordered[n_valid : n_valid + n_test]),
        "train": sorted(ordered[n_valid + n_test :]),
    }


def _share(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 3:
        return 0
    return max(1, round(n * fraction))


def save_split(split: dict[str, Sequence[str]], path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps({k: list(split[k]) for k in SPLITS}, indent=1) + "\n")


def load_split(path: str | Path) -> dict[str, list[str]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in SPLITS if k not in data]
    if missing:
        raise ValueError(f"{path}: split file lacks {', '.join(missing)}")
    return {k: list(data[k]) for k in SPLITS}


def problems_to_json(problems: Sequence[Problem]) -> list[dict]:
    return [asdict(p) for p in problems]
