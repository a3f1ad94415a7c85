"""Export a trained acoustic model to TorchScript or ONNX, and check the export against eager PyTorch.

Both formats take log-mel features and return CTC log-probabilities, like the model's forward:
`features (B, T, num_mel_bins) float32, lengths (B,) int64 -> log_probs (B, T', vocab) float32,
out_lengths (B,) int64`. Feature extraction (`asrlib.features.FbankExtractor`) and decoding stay
outside the exported graph; the settings they need are written beside it as JSON.

Why the Conformer needs a wrapper for TorchScript: `ConformerCTC` masks padded frames with forward
pre-hooks bound to the model and with a `try` block, and `torch.jit.script` compiles neither.
`torch.jit.trace` records some batch and time sizes of `nn.MultiheadAttention` as constants, so a
trace fails on any other input shape (torch 2.11, torchaudio 2.11). `_ScriptableConformerCTC`
calls the same submodules with the same weights and applies the mask explicitly, and each export
is run against the eager model on a batch of another shape before it is kept. The ONNX export
uses the wrapper too, because torchaudio's padding mask calls `.item()`, which `torch.export`
cannot trace without a fallback to strict mode.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asrlib.atomic import atomic_open, atomic_write_text
from asrlib.models.conformer import ChannelLayerNorm, ConformerCTC

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
ONNX_OPSET = 18
# The exported and the eager model may differ by float rounding only; real differences are far larger.
MAX_ABS_DIFFERENCE = 1e-3


class ExportError(RuntimeError):
    """An export that failed or whose output differs from the eager model; the message gives the reason."""


class _MaskedConformerLayer(nn.Module):
    """torchaudio's ConformerLayer (convolution after attention) with the depthwise-input mask applied inline."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        if layer.convolution_first:
            raise ExportError("export supports Conformer layers with convolution after attention only")
        conv = layer.conv_module
        self.ffn1 = layer.ffn1
        self.attn_norm = layer.self_attn_layer_norm
        self.attn = layer.self_attn
        self.attn_dropout = layer.self_attn_dropout
        self.conv_norm = conv.layer_norm
        self.pointwise_in = conv.sequential[0]
        self.glu = conv.sequential[1]
        self.depthwise = conv.sequential[2]
        norm = conv.sequential[3]
        # ChannelLayerNorm calls super().forward, which TorchScript cannot compile, so a plain
        # LayerNorm with the same weights is applied to channels-last input instead.
        self.channels_last_norm = isinstance(norm, ChannelLayerNorm)
        if self.channels_last_norm:
            plain = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine)
            plain.load_state_dict(norm.state_dict())
            norm = plain
        self.conv_norm_inner = norm
        self.activation = conv.sequential[4]
        self.pointwise_out = conv.sequential[5]
        self.conv_dropout = conv.sequential[6]
        self.ffn2 = layer.ffn2
        self.final_norm = layer.final_layer_norm

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        """`x` (T, B, D); `padding_mask` (B, T) True at padding; `valid_frames` (B, 1, T) True at frames."""
        x = self.ffn1(x) * 0.5 + x
        y = self.attn_norm(x)
        y, _ = self.attn(y, y, y, key_padding_mask=padding_mask, need_weights=False)
        x = self.attn_dropout(y) + x
        c = self.conv_norm(x.transpose(0, 1)).transpose(1, 2)  # (B, D, T)
        c = self.glu(self.pointwise_in(c))
        c = self.depthwise(c.masked_fill(~valid_frames, 0.0))
        if self.channels_last_norm:
            c = self.conv_norm_inner(c.transpose(1, 2)).transpose(1, 2)
        else:
            c = self.conv_norm_inner(c)
        c = self.conv_dropout(self.pointwise_out(self.activation(c)))
        x = x + c.transpose(1, 2).transpose(0, 1)
        x = self.ffn2(x) * 0.5 + x
        return self.final_norm(x)


class _ScriptableConformerCTC(nn.Module):
    """The inference path of ConformerCTC (no SpecAugment, no dropout) in a form torch.jit.script accepts."""

    def __init__(self, model: ConformerCTC) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        for layer in model.encoder.conformer_layers:
            # The copies still carry the pre-hooks bound to the original model; the wrapper masks itself.
            layer.conv_module.sequential[2]._forward_pre_hooks.clear()
        self.cmvn = model.cmvn
        self.subsampling = model.subsampling
        self.layers = nn.ModuleList([_MaskedConformerLayer(layer) for layer in model.encoder.conformer_layers])
        self.head = model.head
        self.eval()

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.subsampling(self.cmvn(features), lengths)
        frames = torch.arange(x.shape[1], device=x.device)
        valid_frames = (frames < out_lengths[:, None]).unsqueeze(1)
        padding_mask = ~valid_frames.squeeze(1)
        x = x.transpose(0, 1)
        for layer in self.layers:
            x = layer(x, padding_mask, valid_frames)
        return self.head(x.transpose(0, 1)).float().log_softmax(dim=-1), out_lengths


def _example_inputs(num_mel_bins: int, batch: int, frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, frames, num_mel_bins, generator=generator)
    lengths = torch.linspace(frames, frames // 2, batch).round().long()
    lengths[0] = frames  # the longest clip fills the batch, as after pad_sequence
    return features, lengths


def _check_outputs(
    fmt: str, expected: tuple[torch.Tensor, torch.Tensor], actual: tuple[torch.Tensor, torch.Tensor]
) -> float:
    """Compare exported against eager outputs on the valid frames; return the max absolute difference."""
    log_probs, out_lengths = expected
    got_log_probs, got_lengths = actual
    if not torch.equal(got_lengths.long(), out_lengths.long()):
        raise ExportError(f"{fmt} export returns lengths {got_lengths.tolist()}, expected {out_lengths.tolist()}")
    if got_log_probs.shape != log_probs.shape:
        raise ExportError(f"{fmt} export returns shape {tuple(got_log_probs.shape)}, expected {tuple(log_probs.shape)}")
    worst = 0.0
    for i, length in enumerate(out_lengths.tolist()):
        worst = max(worst, float((got_log_probs[i, :length] - log_probs[i, :length]).abs().max()))
    if worst > MAX_ABS_DIFFERENCE:
        raise ExportError(f"{fmt} export differs from the eager model by {worst:.2e} (limit {MAX_ABS_DIFFERENCE:.0e})")
    return worst


def _exportable(model: nn.Module) -> nn.Module:
    return _ScriptableConformerCTC(model) if isinstance(model, ConformerCTC) else model


def _export_torchscript(model: nn.Module, path: Path) -> torch.jit.ScriptModule:
    try:
        scripted = torch.jit.script(_exportable(model))
    except Exception as err:  # the TorchScript compiler raises several error types
        raise ExportError(f"torch.jit.script failed for {type(model).__name__}: {type(err).__name__}: {err}") from err
    with atomic_open(path, "wb") as handle:
        torch.jit.save(scripted, handle)
    return torch.jit.load(str(path))


def _export_onnx(model: nn.Module, path: Path, example: tuple[torch.Tensor, torch.Tensor]) -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ExportError("ONNX export needs onnxruntime to check the result; pip install onnxruntime") from err
    batch = torch.export.Dim("batch", min=1, max=1024)
    # 8 feature frames (0.1 s) are the fewest that leave one frame after the x4 subsampling.
    frames = torch.export.Dim("frames", min=8, max=1 << 20)
    tmp = path.with_name(path.name + ".partial")
    try:
        # The dynamo exporter (the default of torch 2.11) keeps batch and time symbolic; the old
        # TorchScript-based exporter would record fixed sizes like torch.jit.trace does.
        torch.onnx.export(
            model, example, str(tmp), dynamo=True, opset_version=ONNX_OPSET, external_data=False,
            input_names=["features", "lengths"], output_names=["log_probs", "out_lengths"],
            dynamic_shapes={"features": {0: batch, 1: frames}, "lengths": {0: batch}}, verbose=False,
        )
        os.replace(tmp, path)
    except Exception as err:  # torch.export and onnxscript raise many error types
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {type(err).__name__}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_model(
    model: nn.Module, fmt: str, out_dir: str | os.PathLike[str], *, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Export `model` in eval mode as `fmt` into `out_dir`, check it on an input of another shape.

    Writes `model.torchscript.pt` or `model.onnx` and `<format>.json` (config, tokenizer, inputs)
    and returns that JSON's contents. Raises ExportError when the export fails or differs.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"invalid export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAMES[fmt]
    model = model.eval()
    num_mel_bins = int(metadata["config"]["features"]["num_mel_bins"])
    example = _example_inputs(num_mel_bins, batch=2, frames=200, seed=0)
    check = _example_inputs(num_mel_bins, batch=3, frames=331, seed=1)
    with torch.no_grad():
        expected = model(*check)
        if fmt == "torchscript":
            exported = _export_torchscript(model, path)
            actual = exported(*check)
        else:
            session = _export_onnx(_exportable(model), path, example)
            outputs = session.run(None, {"features": check[0].numpy(), "lengths": check[1].numpy()})
            actual = (torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]))
    difference = _check_outputs(fmt, expected, actual)
    info = {
        **metadata,
        "format": fmt,
        "file": path.name,
        "size": path.stat().st_size,
        "max_abs_difference": difference,
        "inputs": {"features": "float32 (batch, frames, num_mel_bins) log-mel from asrlib.features.FbankExtractor",
                   "lengths": "int64 (batch,) valid frames per clip"},
        "outputs": {"log_probs": "float32 (batch, frames / 4, vocab) CTC log-probabilities, blank at 0",
                    "out_lengths": "int64 (batch,)"},
    }
    atomic_write_text(out_dir / f"{fmt}.json", json.dumps(info, indent=1) + "\n")
    log.info("exported %s to %s (max difference %.1e)", fmt, path, difference)
    return info
