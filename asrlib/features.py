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
    CMVN. Randomness comes from the global torch generator, which checkpoints save and restore.
    """

    def __init__(self, config: SpecAugmentConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if not self.training or not cfg.enabled:
            return features
        features = features.clone()
        spec = features.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T), a view into `features`
        for i, length in enumerate(lengths.tolist()):
            utterance = spec[i : i + 1, :, :, :length]
            for _ in range(cfg.num_freq_masks):
                utterance = torchaudio.functional.mask_along_axis(utterance, cfg.freq_mask_width, 0.0, axis=2)
            time_width = min(cfg.time_mask_width, int(length * cfg.time_mask_max_ratio))
            if time_width > 0:
                for _ in range(cfg.num_time_masks):
                    utterance = torchaudio.functional.mask_along_axis(utterance, time_width, 0.0, axis=3)
            spec[i : i + 1, :, :, :length] = utterance
        return features
