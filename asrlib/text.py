"""Text normalisation and the character tokenizer.

Normalisation, in order: typographic apostrophes to `'`; Unicode NFKC; lowercase; every other
punctuation or symbol character (Unicode categories P* and S*) to a space; whitespace runs to a
single space. Letters and digits are kept as they are, so a character outside the tokenizer's
charset (a digit, an accented letter) is still visible and gets counted rather than vanishing.
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BLANK = "<blank>"
_APOSTROPHES = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"}


def normalize_text(text: str) -> str:
    """Normalise a transcript for character modelling (see the module docstring)."""
    # Apostrophes are mapped before NFKC, which decomposes the acute accent into a space and a
    # combining mark, and again after it, which turns the fullwidth grave accent into "`".
    text = "".join(_APOSTROPHES.get(char, char) for char in text)
    text = unicodedata.normalize("NFKC", text).lower()
    out = []
    for char in text:
        char = _APOSTROPHES.get(char, char)
        if char == "'":
            out.append(char)
        elif char.isspace() or unicodedata.category(char)[0] in "PS":
            out.append(" ")
        else:
            out.append(char)
    return " ".join("".join(out).split())


@dataclass
class OOVReport:
    """Characters outside the vocabulary: how often each occurs and in which clips."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    clip_ids: set[str] = field(default_factory=set)
    max_examples: int = 5

    def add(self, clip_id: str, chars: Iterable[str]) -> None:
        for char in chars:
            self.counts[char] += 1
            if len(self.examples[char]) < self.max_examples and clip_id not in self.examples[char]:
                self.examples[char].append(clip_id)
            self.clip_ids.add(clip_id)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        parts = [
            f"{char!r} x{count} (e.g. {', '.join(self.examples[char])})"
            for char, count in self.counts.most_common()
        ]
        return f"{len(self.clip_ids)} clips contain characters outside the vocabulary: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "clips": sorted(self.clip_ids),
            "characters": {c: {"count": n, "examples": self.examples[c]} for c, n in self.counts.most_common()},
        }


class CharTokenizer:
    """Maps normalised text to integer labels; id 0 is the CTC blank."""

    def __init__(self, charset: Sequence[str]) -> None:
        chars = list(charset)
        if not chars:
            raise ValueError("charset is empty; list the characters the model should output")
        duplicates = sorted({c for c in chars if chars.count(c) > 1})
        if duplicates:
            raise ValueError(f"charset contains duplicate characters: {duplicates}")
        if any(len(c) != 1 for c in chars):
            raise ValueError("charset entries must be single characters")
        self.symbols: list[str] = [BLANK, *chars]
        self._index = {c: i for i, c in enumerate(self.symbols)}

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def oov_chars(self, normalized: str) -> list[str]:
        """Return the characters of a normalised text that the tokenizer cannot encode."""
        return [c for c in normalized if c not in self._index]

    def encode(self, normalized: str) -> list[int]:
        """Encode normalised text; raises ValueError on characters outside the vocabulary."""
        try:
            return [self._index[c] for c in normalized]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the tokenizer vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Turn label ids (no blanks, already collapsed) into text with single spaces between words."""
        return " ".join("".join(self.symbols[i] for i in ids if i != 0).split())

    def to_dict(self) -> dict:
        return {"type": "char", "symbols": self.symbols[1:]}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        if data.get("type") != "char":
            raise ValueError(f"unsupported tokenizer type {data.get('type')!r}")
        return cls(data["symbols"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.symbols == other.symbols
