"""Conformer-CTC: convolutional subsampling (x4), torchaudio's Conformer encoder, a linear CTC head."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from asrlib.config import ModelConfig, SpecAugmentConfig
from asrlib.features import GlobalCMVN, SpecAugment


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after two 3x3 convolutions with stride 2 and no padding: ((T - 1) // 2 - 1) // 2."""
    return torch.div(torch.div(lengths - 1, 2, rounding_mode="floor") - 1, 2, rounding_mode="floor")


class Conv2dSubsampling(nn.Module):
    """Reduces the frame rate by 4: `(B, T, F)` to `(B, T', d_model)` with T' = subsampled_lengths(T)."""

    def __init__(self, num_bins: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        reduced_bins = ((num_bins - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * reduced_bins, d_model)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(features.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b, t, c * f))
        return x, subsampled_lengths(lengths).clamp(min=0, max=t)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of `(B, C, T)` input, frame by frame.

    It replaces the BatchNorm of torchaudio's convolution module: per-frame statistics do not
    depend on the other utterances of the batch, on padding, or on the split of a batch across
    DDP processes, and a streaming model can use them chunk by chunk.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConformerCTC(nn.Module):
    """Offline Conformer-CTC acoustic model.

    Args:
        config: sizes from a preset in config.yaml.
        num_mel_bins: feature dimension F of the input.
        vocab_size: output classes, including the CTC blank at index 0.
        spec_augment: masking applied in training mode only; None disables it.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        num_mel_bins: int,
        vocab_size: int,
        spec_augment: SpecAugmentConfig | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (blank and one symbol), got {vocab_size}")
        self.config = config
        self.cmvn = GlobalCMVN(num_mel_bins)
        self.spec_augment = SpecAugment(spec_augment) if spec_augment is not None else None
        self.subsampling = Conv2dSubsampling(num_mel_bins, config.subsampling_channels, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = torchaudio.models.Conformer(
            input_dim=config.d_model,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            num_layers=config.num_layers,
            depthwise_conv_kernel_size=config.conv_kernel_size,
            dropout=config.dropout,
        )
        self.head = nn.Linear(config.d_model, vocab_size)
        # torchaudio's Conformer does not mask padded frames before the depthwise convolution, so
        # padding leaks into the last frames of a shorter utterance and, through attention, into
        # all of its frames. A pre-hook zeroes the padded frames at each depthwise input.
        self._valid_frames: torch.Tensor | None = None  # (B, 1, T') bool, set during forward
        for layer in self.encoder.conformer_layers:
            depthwise = layer.conv_module.sequential[2]
            if not (isinstance(depthwise, nn.Conv1d) and depthwise.groups == depthwise.in_channels > 1):
                raise RuntimeError(
                    f"unsupported torchaudio Conformer layout: expected a depthwise Conv1d, got {depthwise}"
                )
            depthwise.register_forward_pre_hook(self._mask_padded_frames)
            if config.conv_norm == "layer":
                layer.conv_module.sequential[3] = ChannelLayerNorm(depthwise.out_channels)

    def _mask_padded_frames(
        self, module: nn.Module, args: tuple[torch.Tensor]
    ) -> tuple[torch.Tensor] | None:
        if self._valid_frames is None:
            return None
        return (args[0].masked_fill(~self._valid_frames, 0.0),)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map log-mel features `(B, T, F)` to CTC log-probabilities `(B, T', V)` (float32) and T' lengths."""
        x = self.cmvn(features)
        if self.spec_augment is not None:
            x = self.spec_augment(x, lengths)
        x, out_lengths = self.subsampling(x, lengths)
        frames = torch.arange(x.shape[1], device=x.device)
        self._valid_frames = (frames < out_lengths[:, None]).unsqueeze(1)
        try:
            x, out_lengths = self.encoder(self.dropout(x), out_lengths)
        finally:
            self._valid_frames = None
        return self.head(x).float().log_softmax(dim=-1), out_lengths
