"""Acoustic features: log-mel filterbanks, global mean/variance normalisation and SpecAugment."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from asrlib.config import FeatureConfig, SpecAugmentConfig

LOG_FLOOR = 1e-6  # added before the log so silent frames stay finite


class FbankExtractor(nn.Module):
    """Waveform `(..., T)` at `config.sample_rate` to log-mel frames `(..., frames, num_mel_bins)`.

    Frames are not centred (`center=False`), so frame k depends only on samples
    `[k * hop, k * hop + win)`. That keeps features of a stream fed in chunks identical to the
    features of the whole signal.
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.win_length = round(config.sample_rate * config.frame_length_ms / 1000)
        self.hop_length = round(config.sample_rate * config.frame_shift_ms / 1000)
        n_fft = 1 << (self.win_length - 1).bit_length()
        # torch.stft centres the window inside each n_fft-sample frame. Padding the signal by the
        # same offsets puts frame k's window on samples [k * hop, k * hop + win). The frame count
        # is then 1 + (T - win) // hop, not 1 + (T - n_fft) // hop.
        left = (n_fft - self.win_length) // 2
        self.padding = (left, n_fft - self.win_length - left)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate,
            n_fft=n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=config.num_mel_bins,
            center=False,
            power=2.0,
        )

    def num_frames(self, num_samples: int) -> int:
        return 0 if num_samples < self.win_length else 1 + (num_samples - self.win_length) // self.hop_length

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.shape[-1] < self.win_length:
            raise ValueError(
                f"audio of {waveform.shape[-1]} samples is shorter than one analysis window ({self.win_length})"
            )
        padded = torch.nn.functional.pad(waveform.float(), self.padding)
        return (self.mel(padded) + LOG_FLOOR).log().transpose(-1, -2)


class GlobalCMVN(nn.Module):
    """Subtracts the training-set mean and divides by its standard deviation, per mel bin.

    The statistics are buffers, so they travel with the model's state_dict into every checkpoint.
    """

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_bins))
        self.register_buffer("inv_std", torch.ones(num_bins))

    @torch.no_grad()
    def set_stats(self, total: torch.Tensor, total_sq: torch.Tensor, count: int) -> None:
        """Set the statistics from per-bin sums of x and x^2 over `count` frames."""
        if count <= 0:
            raise ValueError("cannot compute CMVN statistics from zero frames")
        mean = total / count
        var = (total_sq / count - mean**2).clamp_min(1e-8)
        self.mean.copy_(mean)
        self.inv_std.copy_(var.rsqrt())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) * self.inv_std


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019) on normalised features `(B, T, F)`.

    Masks are drawn per utterance within its true length and filled with zero, the mean after
    CMVN. All draws are tensors on the features' device, so masking never waits for the GPU.
    Randomness comes from the torch generator of that device, which checkpoints save and restore.
    """

    def __init__(self, config: SpecAugmentConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not self.training or not cfg.enabled:
            return features
        batch, frames, bins = features.shape
        device = features.device
        lengths = lengths.to(device)
        valid = torch.arange(frames, device=device) < lengths[:, None]  # (B, T)
        masked = torch.zeros(batch, frames, bins, dtype=torch.bool, device=device)
        if cfg.num_freq_masks and cfg.freq_mask_width:
            width_limit = torch.full((batch,), float(min(cfg.freq_mask_width, bins)), device=device)
            in_mask = _random_spans(width_limit, torch.full_like(width_limit, bins), cfg.num_freq_masks, bins)
            masked |= in_mask[:, None, :] & valid[:, :, None]
        if cfg.num_time_masks and cfg.time_mask_width:
            width_limit = torch.minimum(
                torch.full((batch,), float(cfg.time_mask_width), device=device),
                (lengths.float() * cfg.time_mask_max_ratio).floor(),
            )
            in_mask = _random_spans(width_limit, lengths.float(), cfg.num_time_masks, frames)
            masked |= in_mask[:, :, None]
        return features.masked_fill(masked, 0.0)


def _random_spans(width_limit: torch.Tensor, size: torch.Tensor, count: int, axis: int) -> torch.Tensor:
    """`count` spans per row with width uniform in [0, width_limit) inside [0, size); `(B, axis)` bool."""
    batch = width_limit.shape[0]
    device = width_limit.device
    width = (torch.rand(batch, count, device=device) * width_limit[:, None]).floor()
    start = (torch.rand(batch, count, device=device) * (size[:, None] - width).clamp_min(0)).floor()
    positions = torch.arange(axis, device=device)
    inside = (positions >= start[..., None]) & (positions < (start + width)[..., None])  # (B, count, axis)
    return inside.any(dim=1)
