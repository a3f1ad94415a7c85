"""Conformer-CTC: output shapes and lengths, probabilities, and independence from batch padding."""

from __future__ import annotations

import pytest
import torch

from asrlib.config import ModelConfig, RunConfig, SpecAugmentConfig
from asrlib.models import ConformerCTC, build_model, subsampled_lengths
from asrlib.models.conformer import Conv2dSubsampling

NUM_BINS = 80
VOCAB = 29

# Narrower than `tiny` so the tests stay fast, with the same kernel size, so padding would reach
# 7 frames into a shorter utterance if it were not masked.
SMALL = ModelConfig(d_model=64, num_layers=2, num_heads=4, ffn_dim=128, conv_kernel_size=15,
                    subsampling_channels=32, dropout=0.1)


@pytest.fixture(scope="module")
def model() -> ConformerCTC:
    torch.manual_seed(0)
    model = ConformerCTC(SMALL, num_mel_bins=NUM_BINS, vocab_size=VOCAB, spec_augment=SpecAugmentConfig())
    # Non-trivial CMVN statistics, as after training starts.
    model.cmvn.set_stats(torch.full((NUM_BINS,), -500.0), torch.full((NUM_BINS,), 2600.0), 100)
    return model.eval()


def test_output_shape(model):
    features = torch.randn(3, 120, NUM_BINS)
    with torch.no_grad():
        log_probs, lengths = model(features, torch.tensor([120, 90, 33]))
    assert log_probs.shape == (3, int(subsampled_lengths(torch.tensor(120))), VOCAB)
    assert log_probs.dtype == torch.float32
    assert lengths.tolist() == subsampled_lengths(torch.tensor([120, 90, 33])).tolist()


@pytest.mark.parametrize("num_frames", [*range(7, 40), 63, 64, 65, 101, 999, 1000, 1001])
def test_subsampled_lengths_match_conv(num_frames):
    subsampling = Conv2dSubsampling(NUM_BINS, channels=4, d_model=8)
    with torch.no_grad():
        out, lengths = subsampling(torch.randn(1, num_frames, NUM_BINS), torch.tensor([num_frames]))
    assert out.shape[1] == int(subsampled_lengths(torch.tensor(num_frames)))
    assert int(lengths[0]) == out.shape[1]


@pytest.mark.parametrize("num_frames", [7, 8, 11, 50, 257])
def test_model_lengths_match_output(model, num_frames):
    with torch.no_grad():
        log_probs, lengths = model(torch.randn(1, num_frames, NUM_BINS), torch.tensor([num_frames]))
    assert int(lengths[0]) == log_probs.shape[1]
    assert log_probs.shape[1] >= 1


def test_subsampled_lengths_formula():
    lengths = torch.tensor([7, 10, 11, 100, 101])
    assert subsampled_lengths(lengths).tolist() == [1, 1, 2, 24, 24]


def test_log_probs_normalised(model):
    with torch.no_grad():
        log_probs, _ = model(torch.randn(2, 80, NUM_BINS), torch.tensor([80, 80]))
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, log_probs.shape[1]))


def test_padding_does_not_change_output(model):
    torch.manual_seed(1)
    lengths = [211, 150, 37]
    utterances = [torch.randn(length, NUM_BINS) * 3 - 5 for length in lengths]
    batch = torch.zeros(len(lengths), max(lengths), NUM_BINS)
    for index, utterance in enumerate(utterances):
        batch[index, : len(utterance)] = utterance

    with torch.no_grad():
        batched, batched_lengths = model(batch, torch.tensor(lengths))
        for index, utterance in enumerate(utterances):
            alone, alone_lengths = model(utterance[None], torch.tensor([len(utterance)]))
            frames = int(alone_lengths[0])
            assert int(batched_lengths[index]) == frames
            torch.testing.assert_close(batched[index, :frames], alone[0], atol=1e-4, rtol=0)


def test_padding_content_ignored(model):
    features = torch.randn(2, 100, NUM_BINS)
    other = features.clone()
    other[0, 60:] = torch.randn(40, NUM_BINS) * 10  # only the padding of utterance 0 differs
    lengths = torch.tensor([60, 100])
    with torch.no_grad():
        first, out_lengths = model(features, lengths)
        second, _ = model(other, lengths)
    frames = int(out_lengths[0])
    torch.testing.assert_close(first[0, :frames], second[0, :frames], atol=1e-4, rtol=0)


def test_eval_deterministic(model):
    features = torch.randn(2, 90, NUM_BINS)
    lengths = torch.tensor([90, 70])
    with torch.no_grad():
        first, _ = model(features, lengths)
        second, _ = model(features, lengths)
    assert torch.equal(first, second)


def test_train_mode_gradients_finite():
    torch.manual_seed(0)
    model = ConformerCTC(SMALL, num_mel_bins=NUM_BINS, vocab_size=VOCAB, spec_augment=SpecAugmentConfig())
    model.train()
    log_probs, lengths = model(torch.randn(2, 120, NUM_BINS), torch.tensor([120, 80]))
    loss = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), torch.tensor([[1, 2, 3], [4, 5, -1]]).clamp_min(0), lengths,
        torch.tensor([3, 2]),
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_vocab_size_below_two_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        ConformerCTC(SMALL, num_mel_bins=NUM_BINS, vocab_size=1)


def test_cmvn_in_state_dict(model):
    state = model.state_dict()
    assert "cmvn.mean" in state
    assert "cmvn.inv_std" in state


def test_build_model_from_run_config():
    config = RunConfig(model=SMALL)
    model = build_model(config, vocab_size=VOCAB)
    assert isinstance(model, ConformerCTC)
    assert model.head.out_features == VOCAB
    assert model.spec_augment is not None
