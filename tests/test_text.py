"""Transcript normalisation, the out-of-vocabulary report and the character tokenizer."""

from __future__ import annotations

import pytest

from asrlib.config import TextConfig
from asrlib.text import BLANK, CharTokenizer, OOVReport, normalize_text


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer(TextConfig().charset)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello World", "hello world"),
        ("Printing, in the only sense.", "printing in the only sense"),
        ('He said "stop!" -- then left;', "he said stop then left"),
        ("don't", "don't"),
        ("don\u2019t", "don't"),  # right single quotation mark
        ("\u2018tis", "'tis"),  # left single quotation mark
        ("don\u02bct", "don't"),  # modifier letter apostrophe
        ("don`t", "don't"),
        ("don\u00b4t", "don't"),  # acute accent, which NFKC decomposes
        ("don\uff40t", "don't"),  # fullwidth grave accent, which NFKC maps to "`"
        ("  many \t spaces\n\nhere  ", "many spaces here"),
        ("\uff28\uff45\uff4c\uff4c\uff4f", "hello"),  # fullwidth letters, folded by NFKC
        ("\ufb01ne", "fine"),  # the "fi" ligature, folded by NFKC
        ("a+b=c", "a b c"),  # symbols become spaces
        ("", ""),
    ],
)
def test_normalize_text_cases(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_keeps_digits():
    assert normalize_text("In 1850, Mr. Smith") == "in 1850 mr smith"


def test_normalize_keeps_accented_letters():
    assert normalize_text("Café NAÏVE") == "café naïve"


def test_normalize_composes_accents():
    decomposed = "cafe\u0301"  # e followed by a combining acute accent
    assert normalize_text(decomposed) == "caf\u00e9"


def test_normalize_is_idempotent():
    text = normalize_text("\u201cWhat\u2019s   THIS?\u201d \u00b4 asked 1 caf\u00e9.")
    assert normalize_text(text) == text


# ------------------------------------------------------------------ OOV report


def test_oov_chars_digits_and_accents(tokenizer):
    text = normalize_text("In 1850 the Café")
    assert tokenizer.oov_chars(text) == ["1", "8", "5", "0", "é"]


def test_oov_report_counts_and_ids(tokenizer):
    report = OOVReport()
    report.add("LJ001-0001", tokenizer.oov_chars(normalize_text("in 1850")))
    report.add("LJ001-0002", tokenizer.oov_chars(normalize_text("in 1900 at the café")))
    assert report.counts["0"] == 3
    assert report.counts["é"] == 1
    assert report.clip_ids == {"LJ001-0001", "LJ001-0002"}
    assert report.examples["1"] == ["LJ001-0001", "LJ001-0002"]


def test_oov_report_to_dict(tokenizer):
    report = OOVReport()
    report.add("clip-b", ["é"])
    report.add("clip-a", ["é", "1"])
    data = report.to_dict()
    assert data["clips"] == ["clip-a", "clip-b"]
    assert data["characters"]["é"] == {"count": 2, "examples": ["clip-b", "clip-a"]}
    assert data["characters"]["1"]["count"] == 1


def test_oov_summary_names_clips():
    report = OOVReport()
    report.add("LJ002-0042", ["7"])
    summary = report.summary()
    assert "LJ002-0042" in summary
    assert "'7' x1" in summary
    assert summary.startswith("1 clips")


def test_oov_examples_capped():
    report = OOVReport(max_examples=2)
    for index in range(5):
        report.add(f"clip-{index}", ["9"])
    assert report.examples["9"] == ["clip-0", "clip-1"]
    assert report.counts["9"] == 5
    assert len(report.clip_ids) == 5


def test_oov_report_empty_is_false():
    report = OOVReport()
    report.add("clip", [])
    assert not report


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_blank_is_zero(tokenizer):
    assert tokenizer.blank_id == 0
    assert tokenizer.symbols[0] == BLANK
    assert tokenizer.vocab_size == len(TextConfig().charset) + 1


def test_tokenizer_round_trip(tokenizer):
    text = normalize_text("It isn't the Printing-Press, he said.")
    labels = tokenizer.encode(text)
    assert 0 not in labels
    assert tokenizer.decode(labels) == text


def test_tokenizer_encode_ids(tokenizer):
    assert tokenizer.encode("ab ") == [1, 2, 28]


def test_tokenizer_decode_skips_blank(tokenizer):
    assert tokenizer.decode([0, 1, 0, 2, 0]) == "ab"


def test_tokenizer_decode_collapses_spaces(tokenizer):
    space = tokenizer.encode(" ")[0]
    assert tokenizer.decode([space, 1, space, space, 2, space]) == "a b"


def test_tokenizer_encode_rejects_oov(tokenizer):
    with pytest.raises(ValueError, match="'7'"):
        tokenizer.encode("route 7")


def test_tokenizer_dict_round_trip(tokenizer):
    data = tokenizer.to_dict()
    assert data["type"] == "char"
    assert BLANK not in data["symbols"]
    assert CharTokenizer.from_dict(data) == tokenizer


def test_tokenizer_unknown_type_rejected():
    with pytest.raises(ValueError, match="bpe"):
        CharTokenizer.from_dict({"type": "bpe", "symbols": ["a"]})


def test_tokenizer_duplicates_rejected():
    with pytest.raises(ValueError, match=r"\['a'\]"):
        CharTokenizer("abca")


def test_tokenizer_empty_charset_rejected():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")


def test_tokenizer_multichar_entry_rejected():
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["a", "th"])


def test_tokenizer_equality_by_symbols():
    assert CharTokenizer("ab") != CharTokenizer("ba")
    assert CharTokenizer("ab") == CharTokenizer(["a", "b"])
