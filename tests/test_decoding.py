"""Greedy CTC decoding and corpus-level error rates."""

from __future__ import annotations

import pytest
import torch

from asrlib.decoding import error_rates, greedy_ctc_decode

VOCAB = 5


def _log_probs(paths: list[list[int]], vocab: int = VOCAB) -> torch.Tensor:
    """Log-probabilities `(B, T, V)` whose best path is `paths[b]`; shorter paths are padded with 1."""
    frames = max(len(p) for p in paths)
    logits = torch.zeros(len(paths), frames, vocab)
    for b, path in enumerate(paths):
        padded = path + [1] * (frames - len(path))
        logits[b, torch.arange(frames), torch.tensor(padded)] = 10.0
    return logits.log_softmax(-1)


def test_greedy_collapses_and_drops_blanks():
    log_probs = _log_probs([[0, 1, 1, 0, 1, 2, 2, 0, 3]])
    [hyp] = greedy_ctc_decode(log_probs, torch.tensor([9]))
    assert hyp.tokens == [1, 1, 2, 3]
    assert hyp.frames == [1, 4, 5, 8]


def test_greedy_all_blank_empty():
    [hyp] = greedy_ctc_decode(_log_probs([[0, 0, 0]]), torch.tensor([3]))
    assert hyp.tokens == []
    assert hyp.frames == []


def test_greedy_respects_lengths():
    log_probs = _log_probs([[2, 2, 3, 0, 4], [1, 0, 2]])  # the second row is padded with 1s
    hyps = greedy_ctc_decode(log_probs, torch.tensor([3, 3]))
    assert hyps[0].tokens == [2, 3]
    assert hyps[1].tokens == [1, 2]


def test_greedy_zero_length():
    [hyp] = greedy_ctc_decode(_log_probs([[1, 2]]), torch.tensor([0]))
    assert hyp.tokens == []
    assert hyp.score == 0.0


def test_greedy_frames_point_at_emissions():
    torch.manual_seed(0)
    log_probs = torch.randn(4, 50, VOCAB).log_softmax(-1)
    lengths = torch.tensor([50, 31, 7, 1])
    best = log_probs.argmax(-1)
    for b, hyp in enumerate(greedy_ctc_decode(log_probs, lengths)):
        assert len(hyp.frames) == len(hyp.tokens)
        assert all(frame < int(lengths[b]) for frame in hyp.frames)
        assert [int(best[b, t]) for t in hyp.frames] == hyp.tokens
        assert all(int(best[b, t - 1]) != int(best[b, t]) for t in hyp.frames if t > 0)


def test_greedy_score_sums_best():
    torch.manual_seed(1)
    log_probs = torch.randn(1, 20, VOCAB).log_softmax(-1)
    [hyp] = greedy_ctc_decode(log_probs, torch.tensor([12]))
    assert hyp.score == pytest.approx(float(log_probs[0, :12].max(-1).values.sum()), rel=1e-6)


def test_greedy_custom_blank():
    log_probs = _log_probs([[4, 1, 4, 1, 1, 0]])
    [hyp] = greedy_ctc_decode(log_probs, torch.tensor([6]), blank=4)
    assert hyp.tokens == [1, 1, 0]


# ------------------------------------------------------------------ error rates


def test_error_rates_hand_computed():
    rates = error_rates(["the cat sat", "hello"], ["the bat sat", "help"])
    assert rates.wer == pytest.approx(2 / 4)  # one substitution in each sentence
    assert rates.cer == pytest.approx(3 / 16)  # c->b; l->p and a deleted o
    assert rates.words == 4
    assert rates.chars == 16


def test_error_rates_perfect():
    rates = error_rates(["a b c"], ["a b c"])
    assert rates.cer == 0.0
    assert rates.wer == 0.0


def test_error_rates_insertion():
    rates = error_rates(["a b"], ["a b c"])
    assert rates.wer == pytest.approx(1 / 2)
    assert rates.cer == pytest.approx(2 / 3)  # " c" inserted after "a b"


def test_error_rates_empty_hypothesis():
    rates = error_rates(["one two", "three"], ["", "three"])
    assert rates.wer == pytest.approx(2 / 3)
    assert rates.cer == pytest.approx(7 / 12)


def test_error_rates_skip_empty_reference():
    rates = error_rates(["", "abc"], ["noise", "abd"])
    assert rates.cer == pytest.approx(1 / 3)
    assert rates.words == 1


def test_error_rates_no_references():
    rates = error_rates(["", " "], ["a", "b"])
    assert (rates.cer, rates.wer, rates.words, rates.chars) == (0.0, 0.0, 0, 0)


def test_error_rates_length_mismatch_rejected():
    with pytest.raises(ValueError):
        error_rates(["a", "b"], ["a"])
