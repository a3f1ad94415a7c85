"""A synthetic demo dataset in LJSpeech layout, spoken by espeak-ng.

Sentences are drawn from a small fixed vocabulary with a few templates. Each clip gets its own
voice, speaking rate (espeak-ng `-s`, words per minute) and pitch (`-p`, 0 to 99) from a seeded
generator, so the same seed and espeak-ng version give identical files. The folder says it is
synthetic in `dataset.json` (`"synthetic": true`) and in `SOURCE.md`, so it is never mistaken
for recorded speech. The generator is public so that tests can make held-out sentences from the
same vocabulary.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from asrlib.atomic import atomic_write_text
from asrlib.datasets.extract import install_dir, make_temp_dir, remove_stale_temp_dirs
from asrlib.datasets.progress import ProgressCallback, ProgressMeter

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 22050  # espeak-ng's output rate, which is also LJSpeech's
VOICES = ("en-us", "en")  # American and British English
RATE_WPM_RANGE = (130, 210)  # espeak-ng -s; its default is 175
PITCH_RANGE = (25, 75)  # espeak-ng -p; its default is 50
CLIP_PREFIX = "DEMO"

_DETERMINERS = ("the", "a", "my", "your", "this", "that", "one", "every")
_ADJECTIVES = ("red", "green", "blue", "big", "small", "old", "new", "happy", "quiet", "bright", "dark", "warm")
_NOUNS = ("cat", "dog", "bird", "house", "car", "tree", "boat", "river", "book", "lamp", "chair", "garden",
          "window", "apple", "horse", "teacher")
_VERBS = ("sees", "finds", "likes", "moves", "takes", "opens", "follows", "paints", "watches", "carries")
_ADVERBS = ("quickly", "slowly", "today", "again", "now", "later", "quietly")
_PREPOSITIONS = ("near", "under", "behind", "beside", "over")

DEMO_VOCABULARY: tuple[str, ...] = tuple(
    sorted(set(_DETERMINERS + _ADJECTIVES + _NOUNS + _VERBS + _ADVERBS + _PREPOSITIONS))
)

# Each template is a sequence of word classes; sentences are three to eight words long.
_TEMPLATES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (_DETERMINERS, _NOUNS, _VERBS),
    (_DETERMINERS, _ADJECTIVES, _NOUNS, _VERBS, _ADVERBS),
    (_DETERMINERS, _NOUNS, _VERBS, _DETERMINERS, _NOUNS),
    (_DETERMINERS, _ADJECTIVES, _NOUNS, _VERBS, _DETERMINERS, _ADJECTIVES, _NOUNS),
    (_DETERMINERS, _NOUNS, _VERBS, _DETERMINERS, _NOUNS, _PREPOSITIONS, _DETERMINERS, _NOUNS),
    (_DETERMINERS, _NOUNS, _PREPOSITIONS, _DETERMINERS, _NOUNS, _VERBS, _ADVERBS),
)


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class DemoClip:
    id: str
    text: str
    voice: str
    rate_wpm: int
    pitch: int


def demo_sentences(n: int, seed: int = 0, *, exclude: Collection[str] = ()) -> list[str]:
    """Return `n` distinct sentences from DEMO_VOCABULARY, the same for the same seed.

    Sentences in `exclude` are skipped, which gives held-out sentences for a trained model.
    """
    if n < 0:
        raise ValueError(f"number of sentences must be non-negative, got {n}")
    rng = random.Random(f"demo-sentences:{seed}")
    excluded = set(exclude)
    sentences: list[str] = []
    seen: set[str] = set()
    # The templates allow over a million sentences, so this loop ends quickly for any sane n.
    max_tries = 100 * n + 1000
    for _ in range(max_tries):
        if len(sentences) == n:
            break
        template = rng.choice(_TEMPLATES)
        sentence = " ".join(rng.choice(words) for words in template)
        if sentence not in seen and sentence not in excluded:
            seen.add(sentence)
            sentences.append(sentence)
    if len(sentences) < n:
        raise ValueError(f"could not draw {n} distinct demo sentences; ask for fewer")
    return sentences


def demo_clips(num_sentences: int, seed: int = 0) -> list[DemoClip]:
    """Return the clips of the demo dataset: id, sentence, voice, speaking rate and pitch."""
    rng = random.Random(f"demo-voices:{seed}")
    clips = []
    for index, text in enumerate(demo_sentences(num_sentences, seed), start=1):
        clips.append(DemoClip(
            id=f"{CLIP_PREFIX}-{index:04d}",
            text=text,
            voice=VOICES[index % len(VOICES)],
            rate_wpm=rng.randint(*RATE_WPM_RANGE),
            pitch=rng.randint(*PITCH_RANGE),
        ))
    return clips


def espeak_version() -> str:
    """Return the version line of espeak-ng, or raise SynthesisError when it is not installed."""
    if shutil.which("espeak-ng") is None:
        raise SynthesisError("espeak-ng not found on PATH; install it (Debian: apt-get install espeak-ng)")
    result = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip().split("  Data at")[0] or "espeak-ng (unknown version)"


def make_demo_dataset(
    dest: str | os.PathLike[str],
    *,
    num_sentences: int = 300,
    seed: int = 0,
    overwrite: bool = False,
    num_workers: int = 2,
    progress: ProgressCallback | None = None,
) -> Path:
    """Synthesise the demo dataset into `dest` (metadata.csv, wavs/, dataset.json, SOURCE.md)."""
    dest = Path(dest)
    if num_sentences < 1:
        raise ValueError(f"num_sentences must be at least 1, got {num_sentences}")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise FileExistsError(f"{dest} already exists; remove it, or pass overwrite=True (--force) to replace it")
    version = espeak_version()
    clips = demo_clips(num_sentences, seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(dest)
    tmp = make_temp_dir(dest)
    try:
        (tmp / "wavs").mkdir()
        meter = ProgressMeter(progress, phase="synthesise", total=len(clips), unit="clip")
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            for done, clip in enumerate(pool.map(lambda c: _synthesise(c, tmp / "wavs"), clips), start=1):
                meter.update(done, item=clip.id)
        meter.close()
        lines = "".join(f"{clip.id}|{clip.text}|{clip.text}\n" for clip in clips)
        atomic_write_text(tmp / "metadata.csv", lines)
        _write_description(tmp, clips, seed=seed, version=version)
        for name in ("metadata.csv", "dataset.json", "SOURCE.md"):
            (tmp / name).chmod(0o644)  # atomic_write_text creates owner-only files
        install_dir(tmp, dest, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("synthesised %d demo clips into %s", len(clips), dest)
    return dest


def _synthesise(clip: DemoClip, wavs: Path) -> DemoClip:
    path = wavs / f"{clip.id}.wav"
    command = ["espeak-ng", "-v", clip.voice, "-s", str(clip.rate_wpm), "-p", str(clip.pitch),
               "-w", str(path), clip.text]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SynthesisError(f"espeak-ng failed for clip {clip.id}: {err}") from None
    if result.returncode != 0 or not path.is_file() or path.stat().st_size <= 44:
        reason = result.stderr.strip() or "no audio written"
        raise SynthesisError(f"espeak-ng failed for clip {clip.id} (exit {result.returncode}): {reason}")
    return clip


def _write_description(folder: Path, clips: list[DemoClip], *, seed: int, version: str) -> None:
    generator = f"{version} via asrlib.datasets.demo"
    description = {
        "name": "demo",
        "synthetic": True,
        "generator": generator,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "num_clips": len(clips),
        "sample_rate": SAMPLE_RATE_HZ,
        "voices": list(VOICES),
        "rate_wpm_range": list(RATE_WPM_RANGE),
        "pitch_range": list(PITCH_RANGE),
        "vocabulary": list(DEMO_VOCABULARY),
        "clips": [asdict(clip) for clip in clips],
    }
    atomic_write_text(folder / "dataset.json", json.dumps(description, indent=1) + "\n")
    atomic_write_text(folder / "SOURCE.md", (
        "# Demo dataset (synthetic)\n\n"
        "This is synthetic speech, not recorded speech. It was generated by "
        f"{generator} with seed {seed}: {len(clips)} sentences from a vocabulary of "
        f"{len(DEMO_VOCABULARY)} words, voices {', '.join(VOICES)}, speaking rates "
        f"{RATE_WPM_RANGE[0]}-{RATE_WPM_RANGE[1]} words per minute and pitch {PITCH_RANGE[0]}-{PITCH_RANGE[1]}, "
        f"mono WAV at {SAMPLE_RATE_HZ} Hz. It is meant for tests and a first training run; a model "
        "trained on it says nothing about accuracy on real speech.\n\n"
        "Regenerate it with `asr dataset demo --force`. `dataset.json` lists every clip's voice, "
        "rate and pitch.\n"
    ))
