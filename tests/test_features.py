"""Log-mel features, global CMVN and SpecAugment."""

from __future__ import annotations

import dataclasses

import pytest
import soundfile as sf
import torch
import torchaudio

from asrlib.config import FeatureConfig, SpecAugmentConfig
from asrlib.features import FbankExtractor, GlobalCMVN, SpecAugment

WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms at 16 kHz


@pytest.fixture(scope="module")
def extractor() -> FbankExtractor:
    return FbankExtractor(FeatureConfig())


@pytest.fixture(scope="module")
def speech(ljspeech_mini) -> torch.Tensor:
    """Three seconds of a real LJSpeech clip at 16 kHz."""
    samples, rate = sf.read(ljspeech_mini / "wavs" / "LJ001-0002.wav", dtype="float32")
    waveform = torchaudio.functional.resample(torch.from_numpy(samples), rate, 16000)
    return waveform[: 3 * 16000]


# ------------------------------------------------------------------ filterbanks


@pytest.mark.parametrize("num_samples", [400, 401, 511, 559, 560, 16000, 16123])
def test_fbank_frame_count(extractor, num_samples):
    feats = extractor(torch.randn(num_samples))
    expected = 1 + (num_samples - WINDOW) // HOP
    assert feats.shape == (expected, 80)
    assert extractor.num_frames(num_samples) == expected


def test_fbank_batched_shape(extractor):
    feats = extractor(torch.randn(3, 16000))
    assert feats.shape == (3, 98, 80)


def test_fbank_too_short_rejected(extractor):
    with pytest.raises(ValueError, match="shorter than one analysis window"):
        extractor(torch.randn(WINDOW - 1))


def test_num_frames_short_is_zero(extractor):
    assert extractor.num_frames(WINDOW - 1) == 0


def test_fbank_silence_finite(extractor):
    feats = extractor(torch.zeros(4000))
    assert torch.isfinite(feats).all()


def test_fbank_frame_sees_own_window(extractor, speech):
    """Frame k depends on samples [k * hop, k * hop + window) and on no others."""
    reference = extractor(speech[:2000])
    changed_after = speech[:2000].clone()
    changed_after[HOP + WINDOW :] = 0.5  # after frame 1's window
    changed_before = speech[:2000].clone()
    changed_before[: HOP] = 0.5  # before frame 1's window
    changed_inside = speech[:2000].clone()
    changed_inside[HOP + WINDOW - 1] += 0.5  # last sample of frame 1's window

    assert torch.equal(extractor(changed_after)[1], reference[1])
    assert torch.equal(extractor(changed_before)[1], reference[1])
    assert not torch.allclose(extractor(changed_inside)[1], reference[1])


def test_fbank_chunked_equals_whole(extractor, speech):
    whole = extractor(speech)
    chunks = []
    buffer = torch.empty(0)
    generator = torch.Generator().manual_seed(0)
    position = 0
    while position < len(speech):
        size = int(torch.randint(50, 3000, (1,), generator=generator))
        buffer = torch.cat([buffer, speech[position : position + size]])
        position += size
        frames = extractor.num_frames(len(buffer))
        if frames:
            chunks.append(extractor(buffer)[:frames])
            buffer = buffer[frames * HOP :]
    streamed = torch.cat(chunks)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ CMVN


def test_cmvn_normalises_source_data(extractor, speech):
    feats = extractor(speech).double()
    cmvn = GlobalCMVN(80)
    cmvn.set_stats(feats.sum(0).float(), (feats**2).sum(0).float(), feats.shape[0])
    normalised = cmvn(feats.float())
    torch.testing.assert_close(normalised.mean(0), torch.zeros(80), atol=1e-3, rtol=0)
    torch.testing.assert_close(normalised.std(0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)


def test_cmvn_identity_by_default():
    feats = torch.randn(10, 80)
    assert torch.equal(GlobalCMVN(80)(feats), feats)


def test_cmvn_stats_in_state_dict():
    cmvn = GlobalCMVN(4)
    cmvn.set_stats(torch.full((4,), 20.0), torch.full((4,), 200.0), 10)
    restored = GlobalCMVN(4)
    restored.load_state_dict(cmvn.state_dict())
    assert torch.equal(restored.mean, torch.full((4,), 2.0))
    assert torch.allclose(restored.inv_std, torch.full((4,), 0.25))  # variance 200 / 10 - 2 ** 2 = 16


def test_cmvn_constant_bin_finite():
    cmvn = GlobalCMVN(2)
    feats = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    cmvn.set_stats(feats.sum(0), (feats**2).sum(0), 2)
    assert torch.isfinite(cmvn(feats)).all()


def test_cmvn_zero_frames_rejected():
    with pytest.raises(ValueError, match="zero frames"):
        GlobalCMVN(2).set_stats(torch.zeros(2), torch.zeros(2), 0)


# ------------------------------------------------------------------ SpecAugment

PAD_VALUE = 7.0  # marks padded frames, which no mask may touch


def _padded_batch(lengths: list[int], num_bins: int = 80) -> torch.Tensor:
    features = torch.full((len(lengths), max(lengths), num_bins), PAD_VALUE)
    for index, length in enumerate(lengths):
        features[index, :length] = torch.randn(length, num_bins).abs() + 1.0  # never zero
    return features


def test_specaugment_masks_only_inside_lengths():
    augment = SpecAugment(SpecAugmentConfig()).train()
    lengths = [300, 173, 41]
    for seed in range(20):
        torch.manual_seed(seed)
        features = _padded_batch(lengths)
        masked = augment(features, torch.tensor(lengths))
        for index, length in enumerate(lengths):
            assert torch.equal(masked[index, length:], features[index, length:]), (seed, index)


def test_specaugment_masks_something():
    torch.manual_seed(0)
    lengths = [300, 173, 41]
    masked = SpecAugment(SpecAugmentConfig()).train()(_padded_batch(lengths), torch.tensor(lengths))
    for index, length in enumerate(lengths):
        assert (masked[index, :length] == 0).any(), index


def test_specaugment_does_not_modify_input():
    torch.manual_seed(0)
    features = _padded_batch([100, 80])
    original = features.clone()
    SpecAugment(SpecAugmentConfig()).train()(features, torch.tensor([100, 80]))
    assert torch.equal(features, original)


def test_specaugment_time_mask_ratio():
    config = dataclasses.replace(SpecAugmentConfig(), num_freq_masks=0, num_time_masks=2, time_mask_width=40)
    augment = SpecAugment(config).train()
    length = 50  # time masks are at most int(50 * 0.2) = 10 frames each
    for seed in range(30):
        torch.manual_seed(seed)
        masked = augment(_padded_batch([length]), torch.tensor([length]))
        masked_frames = int((masked[0, :length] == 0).all(dim=-1).sum())
        assert masked_frames <= 2 * 10, seed


def test_specaugment_off_in_eval():
    features = _padded_batch([100, 60])
    augment = SpecAugment(SpecAugmentConfig()).eval()
    assert torch.equal(augment(features, torch.tensor([100, 60])), features)


def test_specaugment_disabled_in_train():
    features = _padded_batch([100, 60])
    augment = SpecAugment(dataclasses.replace(SpecAugmentConfig(), enabled=False)).train()
    assert torch.equal(augment(features, torch.tensor([100, 60])), features)


def test_specaugment_seed_deterministic():
    augment = SpecAugment(SpecAugmentConfig()).train()
    features = _padded_batch([200, 120])
    lengths = torch.tensor([200, 120])
    torch.manual_seed(3)
    first = augment(features, lengths)
    torch.manual_seed(3)
    second = augment(features, lengths)
    torch.manual_seed(4)
    other = augment(features, lengths)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
