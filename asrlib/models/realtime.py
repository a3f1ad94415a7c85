"""Streaming Conformer-CTC: chunk-causal attention, causal convolutions, and a cached step function.

The encoder is a Conformer (Gulati et al., 2020) made streamable the way WeNet's U2 models are
(Zhang et al., 2020, "Unified Streaming and Non-streaming Two-pass End-to-end Model"):

- Self-attention is restricted by a chunk mask. Frames are grouped into chunks of
  `chunk_frames`. A frame attends to every frame of its own chunk and of the `left_chunks`
  chunks before it, and never to a later chunk.
- The depthwise convolution of each block is causal (left padding only), and its normalisation
  is a LayerNorm, so a frame's output depends on its own and earlier frames only, whatever the
  batch or the padding.
- There is no positional encoding, as in torchaudio's Conformer. The causal convolutions give
  the blocks their sense of order, so attention is the same wherever a chunk starts.
- Subsampling is `Conv2dSubsampling` of the offline model (two 3x3 convolutions with stride 2
  and no time padding). Encoder frame t reads feature frames 4t to 4t + 6, which is a fixed
  look-ahead of 6 feature frames (60 ms, plus the 25 ms analysis window); streaming keeps the 3
  feature frames that two neighbouring windows share.
- With `right_frames` R > 0, a depthwise "look-ahead convolution" (Amodei et al., 2016,
  Deep Speech 2) mixes each subsampled frame with the R frames after it before the encoder.
  A chunk is then encoded once R more frames have arrived.

Training samples the chunk size per batch (dynamic chunk training, see `DYNAMIC_CHUNK_SHARES`),
so one model decodes with the configured chunk, with other chunk sizes, or with full context.
In eval mode `forward` applies the configured chunk mask, so an offline decode of a whole clip
computes the same function as `stream_step` fed chunk by chunk: the two agree to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asrlib.config import ModelConfig, RunConfig, SpecAugmentConfig
from asrlib.features import GlobalCMVN, SpecAugment
from asrlib.models.conformer import Conv2dSubsampling

__all__ = [
    "SUBSAMPLING_FACTOR",
    "SUBSAMPLING_OVERLAP",
    "SUBSAMPLING_WINDOW",
    "RealtimeConformerCTC",
    "StreamState",
    "build_realtime_model",
    "chunk_attention_mask",
]

SUBSAMPLING_FACTOR = 4  # feature frames per encoder frame
SUBSAMPLING_WINDOW = 7  # feature frames that one encoder frame reads (receptive field in time)
SUBSAMPLING_OVERLAP = SUBSAMPLING_WINDOW - SUBSAMPLING_FACTOR  # feature frames two windows share

# Dynamic chunk training: the share of training batches that use (configured chunk and left
# context, full context, a random chunk of 1 to 2 x chunk_frames with a random left context).
# The configured setting gets a fixed third so that a short training run, such as the tests'
# overfit run, still learns the setting it will stream with.
DYNAMIC_CHUNK_SHARES = (1 / 3, 1 / 3, 1 / 3)


def chunk_attention_mask(
    num_frames: int, chunk_frames: int, left_chunks: int, device: torch.device | None = None
) -> torch.Tensor:
    """Return the `(T, T)` boolean mask (True = may attend) of chunk-causal self-attention.

    Frame i in chunk `i // chunk_frames` may attend to frame j when j's chunk is the same or one
    of the `left_chunks` chunks before it. `chunk_frames <= 0` means full context (all True), and
    `left_chunks < 0` means every earlier chunk.
    """
    if chunk_frames <= 0:
        return torch.ones(num_frames, num_frames, dtype=torch.bool, device=device)
    chunk = torch.arange(num_frames, device=device) // chunk_frames
    query, key = chunk[:, None], chunk[None, :]
    allowed = key <= query
    if left_chunks >= 0:
        allowed &= key >= query - left_chunks
    return allowed


class FeedForward(nn.Module):
    """Pre-norm feed-forward module `(B, T, D) -> (B, T, D)`: LayerNorm, Linear, SiLU, Linear."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ChunkSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values can be extended by a cache of earlier frames."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, T, head_dim)

    def _merge(self, attended: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attend within `x` `(B, T, D)` under `mask` `(B, 1, T, T)` (True = may attend)."""
        q, k, v = self._heads(x)
        p = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))

    def step(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend from one chunk `(B, C, D)` to the cached frames `(B, H, L, head_dim)` and itself.

        Returns the output `(B, C, D)` and the keys and values of cache plus chunk, untrimmed.
        """
        q, k, v = self._heads(x)
        k = torch.cat([k_cache, k], dim=2)
        v = torch.cat([v_cache, v], dim=2)
        return self._merge(F.scaled_dot_product_attention(q, k, v)), k, v


class CausalConvModule(nn.Module):
    """Conformer convolution module with a causal depthwise convolution, `(B, T, D) -> (B, T, D)`.

    LayerNorm replaces the usual BatchNorm after the depthwise convolution, because batch
    statistics would mix padded frames and other utterances into a frame's output.
    """

    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"conv_kernel_size must be at least 1, got {kernel_size}")
        self.cache_frames = kernel_size - 1
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.depthwise_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.pointwise_in(self.norm(x)), dim=-1).transpose(1, 2)  # (B, D, T)

    def _post(self, y: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.depthwise_norm(y.transpose(1, 2)))
        return self.dropout(self.pointwise_out(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._pre(x)
        return self._post(self.depthwise(F.pad(y, (self.cache_frames, 0))))

    def step(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve one chunk `(B, C, D)` after the cached inputs `(B, D, kernel_size - 1)`.

        Returns the output `(B, C, D)` and the new cache, the last kernel_size - 1 inputs.
        """
        y = torch.cat([cache, self._pre(x)], dim=2)
        new_cache = y[:, :, y.shape[2] - self.cache_frames :]
        return self._post(self.depthwise(y)), new_cache


class RealtimeConformerLayer(nn.Module):
    """Macaron Conformer block: half feed-forward, attention, convolution, half feed-forward, LayerNorm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ffn1 = FeedForward(config.d_model, config.ffn_dim, config.dropout)
        self.attention = ChunkSelfAttention(config.d_model, config.num_heads, config.dropout)
        self.attention_dropout = nn.Dropout(config.dropout)
        self.conv = CausalConvModule(config.d_model, config.conv_kernel_size, config.dropout)
        self.ffn2 = FeedForward(config.d_model, config.ffn_dim, config.dropout)
        self.final_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attention_dropout(self.attention(x, mask))
        x = x + self.conv(x)
        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x)

    def step(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, conv_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run one chunk `(B, C, D)`; return it and the untrimmed keys, values and the conv cache."""
        x = x + 0.5 * self.ffn1(x)
        attended, k, v = self.attention.step(x, k_cache, v_cache)
        x = x + attended
        conv, conv_cache = self.conv.step(x, conv_cache)
        x = x + conv
        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x), k, v, conv_cache


class LookaheadConv(nn.Module):
    """Residual depthwise convolution over frames t to t + R: `(B, T, D) -> (B, T, D)`.

    Frames past the end of the input count as zeros, both here and in streaming at the end of
    the stream.
    """

    def __init__(self, d_model: int, right_frames: int) -> None:
        super().__init__()
        self.right_frames = right_frames
        self.conv = nn.Conv1d(d_model, d_model, right_frames + 1, groups=d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix every frame with the next R; the input is zero-padded on the right by R frames."""
        return self.window(F.pad(x, (0, 0, 0, self.right_frames)))

    def window(self, x: torch.Tensor) -> torch.Tensor:
        """Mix frames of a window `(B, C + R, D)` that already contains its R future frames; return `(B, C, D)`."""
        mixed = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return x[:, : mixed.shape[1]] + mixed


@dataclass
class StreamState:
    """Everything a stream carries from one `stream_step` call to the next (batch size B).

    Every tensor is bounded. `features` keeps fewer than 7 + 4 feature frames, `pending` fewer
    than chunk_frames + right_frames + 1 encoder frames, and the attention caches at most
    left_chunks x chunk_frames frames (unbounded only when left_chunks is -1).
    """

    chunk_frames: int
    left_chunks: int
    features: torch.Tensor  # (B, n, F) normalised feature frames not yet subsampled
    pending: torch.Tensor  # (B, p, D) subsampled frames not yet encoded
    k_cache: list[torch.Tensor]  # per layer (B, H, L, head_dim)
    v_cache: list[torch.Tensor]  # per layer (B, H, L, head_dim)
    conv_cache: list[torch.Tensor]  # per layer (B, D, kernel_size - 1)
    frames_done: int = 0  # encoder frames returned so far

    def tensors(self) -> list[torch.Tensor]:
        return [self.features, self.pending, *self.k_cache, *self.v_cache, *self.conv_cache]

    def nbytes(self) -> int:
        """Bytes held by the state's tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


class RealtimeConformerCTC(nn.Module):
    """Chunk-causal Conformer-CTC for streaming recognition (see the module docstring).

    Args:
        config: sizes and streaming settings from a `realtime` preset in config.yaml.
        num_mel_bins: feature dimension F of the input.
        vocab_size: output classes, including the CTC blank at index 0.
        spec_augment: masking applied in training mode only; None disables it.
        dynamic_chunks: sample the chunk size per training batch; when False, training uses the
            configured chunk and left context only.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        num_mel_bins: int,
        vocab_size: int,
        spec_augment: SpecAugmentConfig | None = None,
        dynamic_chunks: bool = True,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (blank and one symbol), got {vocab_size}")
        if config.chunk_frames < 1:
            raise ValueError(f"model.chunk_frames must be at least 1, got {config.chunk_frames}")
        if config.left_chunks < -1:
            raise ValueError(f"model.left_chunks must be -1 (unlimited) or at least 0, got {config.left_chunks}")
        if config.right_frames < 0:
            raise ValueError(f"model.right_frames must be at least 0, got {config.right_frames}")
        if config.d_model % config.num_heads:
            raise ValueError(f"model.d_model ({config.d_model}) must be divisible by model.num_heads "
                             f"({config.num_heads})")
        self.config = config
        self.dynamic_chunks = dynamic_chunks
        self.cmvn = GlobalCMVN(num_mel_bins)
        self.spec_augment = SpecAugment(spec_augment) if spec_augment is not None else None
        self.subsampling = Conv2dSubsampling(num_mel_bins, config.subsampling_channels, config.d_model)
        self.lookahead = LookaheadConv(config.d_model, config.right_frames) if config.right_frames else None
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(RealtimeConformerLayer(config) for _ in range(config.num_layers))
        self.head = nn.Linear(config.d_model, vocab_size)
        # The chunk and left context of eval-mode forward; `set_decoding_context` changes them.
        self.decoding_chunk_frames = config.chunk_frames
        self.decoding_left_chunks = config.left_chunks

    # ----------------------------------------------------------------- whole sequences

    def set_decoding_context(self, chunk_frames: int, left_chunks: int) -> None:
        """Set the chunk (<= 0 for full context) and left chunks (-1 for all) of eval-mode forward."""
        if left_chunks < -1:
            raise ValueError(f"left_chunks must be -1 (unlimited) or at least 0, got {left_chunks}")
        self.decoding_chunk_frames = chunk_frames
        self.decoding_left_chunks = left_chunks

    def _training_context(self) -> tuple[int, int]:
        """Draw (chunk_frames, left_chunks) for one training batch from the global torch generator."""
        chunk, left = self.config.chunk_frames, self.config.left_chunks
        if not self.dynamic_chunks:
            return chunk, left
        draw = float(torch.rand(()))
        configured_share, full_share, _ = DYNAMIC_CHUNK_SHARES
        if draw < configured_share:
            return chunk, left
        if draw < configured_share + full_share:
            return 0, -1
        random_chunk = int(torch.randint(1, 2 * chunk + 1, ()))
        if left < 0:
            return random_chunk, -1
        # Left context up to the configured one, counted in frames rather than chunks.
        max_left = math.ceil(left * chunk / random_chunk)
        return random_chunk, int(torch.randint(0, max_left + 1, ()))

    def forward(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        *,
        chunk_frames: int | None = None,
        left_chunks: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map log-mel features `(B, T, F)` to CTC log-probabilities `(B, T', V)` (float32) and T' lengths.

        The chunk mask comes from the arguments when given, else from a random draw in training
        mode, else from the decoding context (the configured chunk unless changed).
        """
        if chunk_frames is None and left_chunks is None:
            if self.training:
                chunk_frames, left_chunks = self._training_context()
            else:
                chunk_frames, left_chunks = self.decoding_chunk_frames, self.decoding_left_chunks
        chunk_frames = self.decoding_chunk_frames if chunk_frames is None else chunk_frames
        left_chunks = self.decoding_left_chunks if left_chunks is None else left_chunks

        x = self.cmvn(features)
        if self.spec_augment is not None:
            x = self.spec_augment(x, lengths)
        x, out_lengths = self.subsampling(x, lengths)
        frames = torch.arange(x.shape[1], device=x.device)
        valid = frames[None, :] < out_lengths[:, None]  # (B, T')
        if self.lookahead is not None:
            # Zero the padding, so that the look-ahead reads zeros past a clip's end as it does for a clip alone.
            x = self.lookahead(x * valid[..., None].to(x.dtype))
        x = self.dropout(x)

        mask = chunk_attention_mask(x.shape[1], chunk_frames, left_chunks, x.device)[None] & valid[:, None, :]
        # A padded query whose chunk contains no valid key would get an all-False row, which
        # softmax turns into NaN, and attention would spread the NaN through its values. Such a
        # frame attends to itself instead. Valid frames never read padded keys, so they are unaffected.
        mask |= torch.eye(x.shape[1], dtype=torch.bool, device=x.device)[None]
        mask = mask.unsqueeze(1)  # (B, 1, T', T')
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(x).float().log_softmax(dim=-1), out_lengths

    # ----------------------------------------------------------------- streaming

    def init_stream(
        self,
        batch_size: int = 1,
        *,
        chunk_frames: int | None = None,
        left_chunks: int | None = None,
        device: torch.device | str | None = None,
    ) -> StreamState:
        """Return the state of new streams; chunk and left context default to the configured ones."""
        chunk = self.config.chunk_frames if chunk_frames is None else chunk_frames
        left = self.config.left_chunks if left_chunks is None else left_chunks
        if chunk < 1:
            raise ValueError(f"chunk_frames must be at least 1 for streaming, got {chunk}")
        if left < -1:
            raise ValueError(f"left_chunks must be -1 (unlimited) or at least 0, got {left}")
        param = self.head.weight
        device = torch.device(device) if device is not None else param.device
        d_model, heads = self.config.d_model, self.config.num_heads
        empty_kv = torch.zeros(batch_size, heads, 0, d_model // heads, device=device, dtype=param.dtype)
        return StreamState(
            chunk_frames=chunk,
            left_chunks=left,
            features=torch.zeros(batch_size, 0, self.cmvn.mean.shape[0], device=device, dtype=param.dtype),
            pending=torch.zeros(batch_size, 0, d_model, device=device, dtype=param.dtype),
            k_cache=[empty_kv] * len(self.layers),
            v_cache=[empty_kv] * len(self.layers),
            conv_cache=[torch.zeros(batch_size, d_model, layer.conv.cache_frames, device=device, dtype=param.dtype)
                        for layer in self.layers],
        )

    def reset_stream_context(self, state: StreamState) -> None:
        """Empty the attention and convolution caches, as at the start of a stream.

        Buffered features and frames are kept, so the next chunk continues on the same frame grid
        but is encoded as if it began a new utterance.
        """
        fresh = self.init_stream(state.features.shape[0], chunk_frames=state.chunk_frames,
                                 left_chunks=state.left_chunks, device=state.features.device)
        state.k_cache, state.v_cache, state.conv_cache = fresh.k_cache, fresh.v_cache, fresh.conv_cache

    @torch.no_grad()
    def stream_step(
        self, features: torch.Tensor, state: StreamState, *, final: bool = False, max_chunks: int | None = None
    ) -> list[torch.Tensor]:
        """Feed new feature frames `(B, n, F)` (n may be 0) and encode every chunk that is complete.

        A chunk is complete when chunk_frames + right_frames subsampled frames are available.
        With `final=True` the remaining frames are encoded too, with zeros as their look-ahead,
        and the stream must not be fed again. At most `max_chunks` chunks are encoded per call
        (all when None); the rest stay buffered for the next call. Returns one `(B, c, V)`
        float32 log-probability tensor per encoded chunk, in order; `state` is updated in place.
        """
        if self.training:
            raise RuntimeError("stream_step needs eval mode (dropout and SpecAugment off); call model.eval()")
        x = torch.cat([state.features, self.cmvn(features.to(state.features.dtype))], dim=1)
        num_out = (x.shape[1] - SUBSAMPLING_WINDOW) // SUBSAMPLING_FACTOR + 1 if x.shape[1] >= SUBSAMPLING_WINDOW else 0
        if num_out > 0:
            used = SUBSAMPLING_FACTOR * (num_out - 1) + SUBSAMPLING_WINDOW
            lengths = torch.full((x.shape[0],), used, device=x.device)
            sub, _ = self.subsampling(x[:, :used], lengths)
            state.pending = torch.cat([state.pending, sub], dim=1)
            x = x[:, SUBSAMPLING_FACTOR * num_out :]
        # Clone, so that the kept frames do not pin the whole concatenated buffer in memory.
        state.features = x.clone()

        right = self.config.right_frames
        outputs: list[torch.Tensor] = []
        while state.pending.shape[1] >= state.chunk_frames + right or (final and state.pending.shape[1] > 0):
            if max_chunks is not None and len(outputs) >= max_chunks:
                break
            size = min(state.chunk_frames, state.pending.shape[1])
            window = state.pending[:, : size + right]
            if self.lookahead is not None:
                window = F.pad(window, (0, 0, 0, size + right - window.shape[1]))
                chunk = self.lookahead.window(window)
            else:
                chunk = window
            state.pending = state.pending[:, size:].clone()
            outputs.append(self._encode_chunk(chunk, state))
        return outputs

    def _encode_chunk(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        """Run one chunk `(B, c, D)` through the layers with the caches; return log-probs `(B, c, V)`."""
        keep = state.left_chunks * state.chunk_frames  # cached frames the next chunk attends to
        for i, layer in enumerate(self.layers):
            x, k, v, state.conv_cache[i] = layer.step(x, state.k_cache[i], state.v_cache[i], state.conv_cache[i])
            if keep >= 0:
                # Trimming keeps the cache bounded; the clone releases the frames cut off.
                start = k.shape[2] - min(keep, k.shape[2])
                k, v = k[:, :, start:].clone(), v[:, :, start:].clone()
            state.k_cache[i], state.v_cache[i] = k, v
        state.frames_done += x.shape[1]
        return self.head(x).float().log_softmax(dim=-1)


def build_realtime_model(config: RunConfig, vocab_size: int) -> RealtimeConformerCTC:
    """Build the `realtime` model of a run configuration."""
    return RealtimeConformerCTC(
        config.model,
        num_mel_bins=config.features.num_mel_bins,
        vocab_size=vocab_size,
        spec_augment=config.spec_augment,
    )
