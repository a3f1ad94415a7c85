"""The LJSpeech-format reader: metadata parsing, problems with their lines, audio probing and the split."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from asrlib.datasets.ljspeech import (
    load_corpus,
    load_split,
    make_split,
    probe_audio,
    read_metadata,
    save_split,
)


def _write_metadata(root: Path, text: str, *, encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_bytes(text.encode(encoding))
    return root


# ------------------------------------------------------------------ metadata


def test_unbalanced_quotes_keep_rows(tmp_path):
    root = _write_metadata(
        tmp_path,
        'LJ1|He said "stop|he said "stop\n'
        "LJ2|plain line|plain line\n"
        'LJ3|the end"|the end"\n',
    )
    corpus = read_metadata(root)
    assert [c.id for c in corpus.clips] == ["LJ1", "LJ2", "LJ3"]
    assert corpus.clips[0].text == 'he said "stop'
    assert corpus.clips[2].text == 'the end"'
    assert corpus.problems == []


def test_normalized_column_used(tmp_path):
    corpus = read_metadata(_write_metadata(tmp_path, "LJ1|In 1850 Mr. Smith|In eighteen fifty Mister Smith\n"))
    assert corpus.clips[0].text == "In eighteen fifty Mister Smith"


def test_two_field_lines_accepted(tmp_path):
    corpus = read_metadata(_write_metadata(tmp_path, "A1|first text\nA2|second text\n"))
    assert [(c.id, c.text) for c in corpus.clips] == [("A1", "first text"), ("A2", "second text")]
    assert corpus.problems == []


def test_audio_path_from_id(tmp_path):
    corpus = read_metadata(_write_metadata(tmp_path, "A1|text\n"))
    assert corpus.clips[0].audio_path == tmp_path / "wavs" / "A1.wav"


def test_malformed_rows_report_lines(tmp_path):
    root = _write_metadata(
        tmp_path,
        "A1|good|good\n"
        "only one field\n"
        "\n"
        "A2|too|many|fields\n"
        "A3|good|good\n",
    )
    corpus = read_metadata(root)
    assert [c.id for c in corpus.clips] == ["A1", "A3"]
    assert [p.line for p in corpus.problems] == [2, 4]
    assert "found 1" in corpus.problems[0].reason
    assert "found 4" in corpus.problems[1].reason
    assert str(corpus.problems[0]).startswith(f"{root / 'metadata.csv'}, line 2:")


def test_duplicate_id_reported(tmp_path):
    corpus = read_metadata(_write_metadata(tmp_path, "A1|one|one\nA2|two|two\nA1|again|again\n"))
    assert [c.text for c in corpus.clips] == ["one", "two"]
    [problem] = corpus.problems
    assert problem.clip_id == "A1"
    assert problem.line == 3
    assert "first seen on line 1" in problem.reason


@pytest.mark.parametrize("clip_id", ["../escape", "a/b", "a\\b", ".hidden", ""])
def test_invalid_id_reported(tmp_path, clip_id):
    corpus = read_metadata(_write_metadata(tmp_path, f"{clip_id}|text|text\n"))
    assert corpus.clips == []
    assert corpus.problems[0].line == 1
    assert "invalid clip id" in corpus.problems[0].reason


def test_empty_transcript_reported(tmp_path):
    corpus = read_metadata(_write_metadata(tmp_path, "A1|raw|  \n"))
    assert corpus.clips == []
    assert corpus.problems[0].reason == "empty transcript"
    assert corpus.problems[0].clip_id == "A1"


def test_crlf_and_bom_accepted(tmp_path):
    corpus = read_metadata(_write_metadata(tmp_path, "\ufeffA1|one|one\r\nA2|two|two\r\n"))
    assert [(c.id, c.text) for c in corpus.clips] == [("A1", "one"), ("A2", "two")]


@pytest.mark.parametrize("separator", ["\x0c", "\x1c", "\x85", "\u2028"])
def test_unicode_line_separator_inside_row(tmp_path, separator):
    """Only "\\n" ends a row; other Unicode line breaks inside a transcript stay in it."""
    corpus = read_metadata(_write_metadata(tmp_path, f"A1|raw{separator}text|normalized text\nA2|b|b\n"))
    assert [(c.id, c.text) for c in corpus.clips] == [("A1", "normalized text"), ("A2", "b")]
    assert corpus.problems == []


def test_invalid_utf8_rejected(tmp_path):
    root = _write_metadata(tmp_path, "A1|caf\u00e9|caf\u00e9\n", encoding="latin-1")
    with pytest.raises(ValueError, match="UTF-8"):
        read_metadata(root)


def test_missing_metadata_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv"):
        read_metadata(tmp_path)


# ------------------------------------------------------------------ audio


def test_missing_wav_reported(tmp_path, ljspeech_mini):
    root = _write_metadata(tmp_path, "LJ001-0002|a|a\nLJ001-0009|b|b\n")
    (root / "wavs").mkdir()
    shutil.copy(ljspeech_mini / "wavs" / "LJ001-0002.wav", root / "wavs")
    corpus = load_corpus(root)
    assert [c.id for c in corpus.clips] == ["LJ001-0002"]
    [problem] = corpus.problems
    assert problem.clip_id == "LJ001-0009"
    assert problem.reason == "audio file missing"


def test_unreadable_wav_reported(tmp_path):
    root = _write_metadata(tmp_path, "A1|a|a\n")
    (root / "wavs").mkdir()
    (root / "wavs" / "A1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    corpus = load_corpus(root)
    assert corpus.clips == []
    assert corpus.problems[0].clip_id == "A1"
    assert corpus.problems[0].reason.startswith("unreadable audio")


def test_probe_keeps_metadata_problems(tmp_path):
    root = _write_metadata(tmp_path, "bad line\n")
    assert [p.line for p in probe_audio(read_metadata(root)).problems] == [1]


def test_real_corpus_reads_cleanly(ljspeech_mini):
    corpus = load_corpus(ljspeech_mini)
    assert len(corpus.clips) == 130
    assert corpus.problems == []
    assert corpus.total_seconds == pytest.approx(848.07, abs=0.01)
    assert min(c.duration for c in corpus.clips) == pytest.approx(1.54, abs=0.01)
    assert max(c.duration for c in corpus.clips) == pytest.approx(10.04, abs=0.01)


def test_real_corpus_quoted_rows(ljspeech_mini):
    lines = (ljspeech_mini / "metadata.csv").read_text(encoding="utf-8").splitlines()
    quoted = {line.split("|")[0]: line.split("|")[2] for line in lines if '"' in line}
    clips = read_metadata(ljspeech_mini).by_id()
    assert len(quoted) == 9
    for clip_id, text in quoted.items():
        assert clips[clip_id].text == text


def test_max_clips_first_by_id(ljspeech_mini):
    corpus = load_corpus(ljspeech_mini, max_clips=3)
    assert [c.id for c in corpus.clips] == ["LJ001-0001", "LJ001-0002", "LJ001-0003"]


# ------------------------------------------------------------------ split


def _ids(count: int) -> list[str]:
    return [f"LJ{i // 100:03d}-{i % 100:04d}" for i in range(count)]


def test_split_deterministic():
    ids = _ids(500)
    assert make_split(ids, valid_fraction=0.05, test_fraction=0.05, seed=3) == make_split(
        ids, valid_fraction=0.05, test_fraction=0.05, seed=3
    )


def test_split_independent_of_order():
    ids = _ids(500)
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert make_split(shuffled, valid_fraction=0.05, test_fraction=0.05) == make_split(
        ids, valid_fraction=0.05, test_fraction=0.05
    )


def test_split_sizes_and_coverage():
    split = make_split(_ids(500), valid_fraction=0.02, test_fraction=0.04)
    assert len(split["valid"]) == 10
    assert len(split["test"]) == 20
    assert sorted(split["train"] + split["valid"] + split["test"]) == _ids(500)


def test_split_seed_changes_split():
    ids = _ids(200)
    first = make_split(ids, valid_fraction=0.1, test_fraction=0.1, seed=0)
    second = make_split(ids, valid_fraction=0.1, test_fraction=0.1, seed=1)
    assert first["valid"] != second["valid"]


def test_split_tiny_corpus_all_train():
    assert make_split(["b", "a"], valid_fraction=0.5, test_fraction=0.2) == {
        "valid": [], "test": [], "train": ["a", "b"]
    }


def test_split_duplicate_ids_once():
    split = make_split(["a", "b", "a", "c", "d"], valid_fraction=0.0, test_fraction=0.0)
    assert split["train"] == ["a", "b", "c", "d"]


def test_split_file_round_trip(tmp_path):
    split = make_split(_ids(50), valid_fraction=0.1, test_fraction=0.1)
    save_split(split, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == split


def test_split_file_missing_key_rejected(tmp_path):
    path = tmp_path / "split.json"
    path.write_text('{"train": [], "valid": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="test"):
        load_split(path)
