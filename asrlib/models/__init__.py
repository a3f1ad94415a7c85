"""Acoustic models and the factory that builds one from a run configuration."""

from __future__ import annotations

from torch import nn

from asrlib.config import RunConfig
from asrlib.models.conformer import ConformerCTC, subsampled_lengths

__all__ = ["ConformerCTC", "build_model", "count_parameters", "subsampled_lengths"]


def build_model(config: RunConfig, vocab_size: int) -> nn.Module:
    """Build the model named by `config.model.type`; its forward maps `(B, T, F)` features to CTC log-probs."""
    kind = config.model.type
    if kind == "conformer":
        return ConformerCTC(
            config.model,
            num_mel_bins=config.features.num_mel_bins,
            vocab_size=vocab_size,
            spec_augment=config.spec_augment,
        )
    if kind == "realtime":
        from asrlib.models.realtime import build_realtime_model

        return build_realtime_model(config, vocab_size)
    raise ValueError(f"unknown model type {kind!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
