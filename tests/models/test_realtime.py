"""Realtime (chunk-causal Conformer-CTC) model: masks, shapes, padding, and streaming equal to offline."""

from __future__ import annotations

import pytest
import torch

from asrlib.config import ModelConfig, RunConfig, load_settings, resolve_run_config
from asrlib.models import build_model, subsampled_lengths
from asrlib.models.realtime import RealtimeConformerCTC, chunk_attention_mask
from tests.conftest import REPO_ROOT

NUM_BINS = 80
VOCAB = 29


def _config(**overrides) -> ModelConfig:
    # Narrower than `tiny` so that the tests stay fast; chunks of 4 frames give many chunks.
    base = dict(type="realtime", d_model=64, num_layers=2, num_heads=4, ffn_dim=128, conv_kernel_size=15,
                subsampling_channels=32, dropout=0.1, chunk_frames=4, left_chunks=2, right_frames=0)
    return ModelConfig(**{**base, **overrides})


def _model(**overrides) -> RealtimeConformerCTC:
    torch.manual_seed(0)
    model = RealtimeConformerCTC(_config(**overrides), num_mel_bins=NUM_BINS, vocab_size=VOCAB)
    # Non-trivial CMVN statistics, as after training starts.
    model.cmvn.set_stats(torch.full((NUM_BINS,), -500.0), torch.full((NUM_BINS,), 2600.0), 100)
    return model.eval()


def _stream(model: RealtimeConformerCTC, features: torch.Tensor, sizes: list[int], **init) -> torch.Tensor:
    """Feed `features` (1, T, F) in pieces of the given sizes, then finalize; return (1, T', V)."""
    state = model.init_stream(**init)
    outputs, position = [], 0
    for size in sizes:
        outputs += model.stream_step(features[:, position : position + size], state)
        position += size
    outputs += model.stream_step(features[:, position:], state, final=True)
    return torch.cat(outputs, dim=1)


def test_chunk_mask_small_case():
    mask = chunk_attention_mask(6, chunk_frames=2, left_chunks=1)
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_chunk_mask_unlimited_and_full():
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(chunk_attention_mask(5, chunk_frames=2, left_chunks=-1), expected)
    assert bool(chunk_attention_mask(5, chunk_frames=0, left_chunks=0).all())


def test_output_shape_and_lengths():
    model = _model()
    features = torch.randn(3, 120, NUM_BINS)
    lengths = torch.tensor([120, 90, 33])
    with torch.no_grad():
        log_probs, out_lengths = model(features, lengths)
    assert log_probs.shape == (3, int(subsampled_lengths(torch.tensor(120))), VOCAB)
    assert log_probs.dtype == torch.float32
    assert out_lengths.tolist() == subsampled_lengths(lengths).tolist()
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, log_probs.shape[1]), atol=1e-5)


@pytest.mark.parametrize("right_frames", [0, 2])
def test_padding_does_not_change_output(right_frames):
    model = _model(right_frames=right_frames)
    features = torch.randn(2, 250, NUM_BINS)
    with torch.no_grad():
        batch, lengths = model(features, torch.tensor([203, 250]))
        alone, _ = model(features[:1, :203], torch.tensor([203]))
    n = int(lengths[0])
    assert torch.allclose(batch[0, :n], alone[0], atol=1e-5)
    assert torch.isfinite(batch).all()


@pytest.mark.parametrize(
    ("right_frames", "left_chunks", "sizes"),
    [
        (0, 2, [1] * 60),  # one feature frame at a time
        (0, 2, [13, 0, 50, 7, 29]),
        (2, 2, [5, 31, 64, 3]),
        (3, 0, [40, 40, 40]),  # no left context
        (0, -1, [17] * 10),  # unlimited left context
    ],
)
def test_streaming_equals_offline(right_frames, left_chunks, sizes):
    model = _model(right_frames=right_frames, left_chunks=left_chunks)
    features = torch.randn(1, 203, NUM_BINS) * 3
    with torch.no_grad():
        offline, _ = model(features, torch.tensor([203]))
    streamed = _stream(model, features, sizes)
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-4), (streamed - offline).abs().max()


def test_streaming_with_another_chunk_size():
    model = _model()
    features = torch.randn(1, 150, NUM_BINS)
    with torch.no_grad():
        offline, _ = model(features, torch.tensor([150]), chunk_frames=6, left_chunks=1)
    streamed = _stream(model, features, [20] * 7, chunk_frames=6, left_chunks=1)
    assert torch.allclose(streamed, offline, atol=1e-4)


def test_stream_chunks_have_chunk_size():
    model = _model(right_frames=2)
    state = model.init_stream()
    chunks = model.stream_step(torch.randn(1, 100, NUM_BINS), state)
    # 100 feature frames give 24 subsampled frames; 2 are kept back as look-ahead.
    assert [c.shape[1] for c in chunks] == [4] * 5
    assert state.pending.shape[1] == 4
    assert [c.shape[1] for c in model.stream_step(torch.zeros(1, 0, NUM_BINS), state, final=True)] == [4]
    assert state.frames_done == 24


def test_stream_state_is_bounded():
    model = _model(left_chunks=2, chunk_frames=4)
    state = model.init_stream()
    sizes = []
    for _ in range(30):
        model.stream_step(torch.randn(1, 64, NUM_BINS), state)
        sizes.append(state.nbytes())
    assert all(k.shape[2] == 2 * 4 for k in state.k_cache)
    assert state.features.shape[1] < 7 + 4
    assert max(sizes[5:]) == min(sizes[5:])


def test_stream_step_needs_eval_mode():
    model = _model().train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.stream_step(torch.randn(1, 20, NUM_BINS), model.init_stream())


def test_dynamic_chunk_training_draws_contexts():
    model = _model(chunk_frames=4, left_chunks=2).train()
    torch.manual_seed(1)
    drawn = {model._training_context() for _ in range(300)}
    assert (4, 2) in drawn
    assert (0, -1) in drawn
    others = drawn - {(4, 2), (0, -1)}
    assert len(others) > 5
    assert all(1 <= chunk <= 8 and 0 <= left <= 8 for chunk, left in others)
    fixed = RealtimeConformerCTC(_config(), num_mel_bins=NUM_BINS, vocab_size=VOCAB, dynamic_chunks=False).train()
    assert {fixed._training_context() for _ in range(20)} == {(4, 2)}


def test_training_step_backward():
    model = _model().train()
    log_probs, lengths = model(torch.randn(2, 80, NUM_BINS), torch.tensor([80, 60]))
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), torch.randint(1, VOCAB, (2, 5)), lengths,
                                        torch.tensor([5, 5]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("chunk_frames", 0, "chunk_frames"), ("left_chunks", -2, "left_chunks"), ("right_frames", -1, "right_frames"),
     ("conv_kernel_size", 0, "conv_kernel_size")],
)
def test_invalid_config_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        RealtimeConformerCTC(_config(**{field: value}), num_mel_bins=NUM_BINS, vocab_size=VOCAB)


@pytest.mark.parametrize("preset", ["tiny", "small", "medium"])
def test_presets_build_realtime_model(preset):
    config = resolve_run_config(load_settings(REPO_ROOT / "config.yaml"), model_type="realtime", preset=preset)
    assert isinstance(config, RunConfig)
    model = build_model(config, VOCAB)
    assert isinstance(model, RealtimeConformerCTC)
    assert model.config.chunk_frames >= 1
    assert model.config.preset == preset
