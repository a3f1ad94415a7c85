"""Greedy CTC decoding with frame positions, and error rates."""

from __future__ import annotations

from dataclasses import dataclass

import jiwer
import torch


@dataclass(frozen=True)
class GreedyHypothesis:
    tokens: list[int]  # label ids after collapsing repeats and removing blanks
    frames: list[int]  # encoder frame index where each token was emitted
    score: float  # sum of the chosen frames' log-probabilities


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[GreedyHypothesis]:
    """Best path decoding of `(B, T, V)` log-probabilities; frames past each length are ignored."""
    best, indices = log_probs.max(dim=-1)
    hyps = []
    for b in range(log_probs.shape[0]):
        n = int(lengths[b])
        path = indices[b, :n].tolist()
        tokens, frames = [], []
        previous = blank
        for t, token in enumerate(path):
            if token != blank and token != previous:
                tokens.append(token)
                frames.append(t)
            previous = token
        hyps.append(GreedyHypothesis(tokens, frames, float(best[b, :n].sum())))
    return hyps


@dataclass(frozen=True)
class ErrorRates:
    cer: float
    wer: float
    words: int  # reference words
    chars: int  # reference characters


def error_rates(references: list[str], hypotheses: list[str]) -> ErrorRates:
    """Corpus-level CER and WER with jiwer; empty references are skipped."""
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    if not pairs:
        return ErrorRates(0.0, 0.0, 0, 0)
    refs, hyps = zip(*pairs, strict=True)
    # jiwer rejects empty hypotheses in some versions; a lone space scores the same as nothing.
    hyps = [h if h.strip() else " " for h in hyps]
    return ErrorRates(
        cer=float(jiwer.cer(list(refs), hyps)),
        wer=float(jiwer.wer(list(refs), hyps)),
        words=sum(len(r.split()) for r in refs),
        chars=sum(len(r) for r in refs),
    )
