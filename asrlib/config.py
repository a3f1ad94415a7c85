"""Typed configuration loaded from `config.yaml`, with dotted command-line overrides.

The YAML file contains the workbench settings (paths, dataset catalog, language) and the defaults of
a training run. A run's configuration is resolved once, from those defaults, the chosen model
preset and the user's overrides, and is then saved with the run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ENV = "ASR_CONFIG"
MODEL_TYPES = ("conformer", "realtime")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000  # Hz; audio is resampled to this rate before feature extraction
    num_mel_bins: int = 80  # log-mel filterbank channels
    frame_length_ms: float = 25.0  # analysis window
    frame_shift_ms: float = 10.0  # hop between frames


@dataclass(frozen=True)
class SpecAugmentConfig:
    enabled: bool = True  # applied only while training
    num_freq_masks: int = 2
    freq_mask_width: int = 27  # maximum width of one frequency mask, in mel bins
    num_time_masks: int = 2
    time_mask_width: int = 40  # maximum width of one time mask, in frames
    time_mask_max_ratio: float = 0.2  # a time mask covers at most this share of the utterance


@dataclass(frozen=True)
class TextConfig:
    charset: str = "abcdefghijklmnopqrstuvwxyz' "  # characters the tokenizer models, after normalisation


@dataclass(frozen=True)
class ModelConfig:
    type: str = "conformer"  # conformer or realtime
    preset: str = "tiny"  # name of the preset the sizes came from, for display only
    d_model: int = 144  # encoder width
    num_layers: int = 4  # Conformer blocks
    num_heads: int = 4  # attention heads per block
    ffn_dim: int = 576  # hidden size of each feed-forward module
    conv_kernel_size: int = 15  # depthwise convolution kernel of each block, in frames after subsampling
    subsampling_channels: int = 144  # channels of the two stride-2 convolutions in front of the encoder
    conv_norm: str = "layer"  # normalisation in each convolution module: layer (per frame) or batch
    dropout: float = 0.1
    # Streaming settings, used by the realtime model only.
    chunk_frames: int = 16  # encoder frames per chunk after subsampling (16 x 40 ms = 640 ms)
    left_chunks: int = 4  # chunks of left context each chunk attends to; -1 for unlimited
    right_frames: int = 0  # look-ahead frames after subsampling


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "ljspeech"  # a catalog name from `datasets:` or a path to an LJSpeech-format folder
    valid_fraction: float = 0.02  # share of clips held out for validation
    test_fraction: float = 0.02  # share of clips held out for the test split
    split_seed: int = 0  # seeds the deterministic train/valid/test split
    max_clips: int | None = None  # keep only the first N clips by id, for quick experiments
    min_duration: float = 0.3  # seconds; shorter clips are excluded and reported
    max_duration: float = 20.0  # seconds; longer clips are excluded and reported
    cache_features: bool = False  # keep computed features in memory after the first epoch
    feature_cache_dir: str | None = None  # also keep them on disk in this folder, relative to the repository root
    speed_perturb: bool = False  # resample each training clip at speed 0.9, 1.0 or 1.1 (chosen per epoch)
    num_workers: int = 0  # DataLoader worker processes
    prefetch_factor: int = 2  # batches each worker prepares ahead
    train_on: str = "train"  # split used for training: train, or all to overfit on every clip


@dataclass(frozen=True)
class TrainingConfig:
    max_steps: int = 20000  # optimizer steps; training ends at this step
    max_epochs: int | None = None  # optional bound on passes over the training split
    lr: float = 1e-3  # peak learning rate, reached after warm-up
    warmup_steps: int = 1000  # linear warm-up, then inverse square root decay
    weight_decay: float = 1e-3
    grad_clip: float = 5.0  # maximum global gradient norm
    max_batch_seconds: float = 240.0  # audio seconds per batch, counted with padding
    num_buckets: int = 20  # duration buckets of the batch sampler
    precision: str = "fp32"  # fp32, bf16 or fp16; reduced precision applies on CUDA only
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    seed: int = 0
    log_every: int = 10  # steps between metric lines
    eval_every: int = 500  # steps between validation passes; 0 evaluates only at the end
    checkpoint_every: int = 1000  # steps between checkpoints; a final one is always written
    keep_last: int = 5  # checkpoints kept besides the best; 0 keeps all
    accumulate_grad_batches: int = 1  # batches whose gradients are summed before each optimizer step
    # NOTE: torch.compile recompiles for new batch shapes and falls back to eager after 8 graphs.
    compile: bool = False  # torch.compile the whole model (CUDA recommended)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; saved with the run and in each checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, "")

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms"):
            value = getattr(self.features, name)
            if value <= 0:
                raise ValueError(f"features.{name}: invalid value {value}; use a positive number")
        if self.model.type not in MODEL_TYPES:
            raise ValueError(f"model.type: unknown model type {self.model.type!r}; use one of {MODEL_TYPES}")
        if self.training.precision not in PRECISIONS:
            raise ValueError(
                f"training.precision: invalid value {self.training.precision!r}; use one of {PRECISIONS}"
            )
        for name in ("max_steps", "warmup_steps", "log_every"):
            if getattr(self.training, name) < (1 if name != "warmup_steps" else 0):
                raise ValueError(f"training.{name}: invalid value {getattr(self.training, name)}")
        if self.training.max_batch_seconds <= 0:
            raise ValueError("training.max_batch_seconds must be positive")
        if not 0 <= self.data.valid_fraction < 1 or not 0 <= self.data.test_fraction < 1:
            raise ValueError("data.valid_fraction and data.test_fraction must be in [0, 1)")
        if self.training.accumulate_grad_batches < 1:
            raise ValueError(
                f"training.accumulate_grad_batches: invalid value {self.training.accumulate_grad_batches}; "
                "use 1 or more"
            )
        if self.data.train_on not in ("train", "all"):
            raise ValueError(f"data.train_on: invalid value {self.data.train_on!r}; use train or all")
        if self.model.conv_norm not in ("layer", "batch"):
            raise ValueError(f"model.conv_norm: invalid value {self.model.conv_norm!r}; use layer or batch")
        if self.model.d_model % self.model.num_heads:
            raise ValueError(
                f"model.d_model ({self.model.d_model}) must be divisible by model.num_heads "
                f"({self.model.num_heads})"
            )


T = TypeVar("T")


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with their dotted name."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name) if _has_defaults(cls) else None
        if is_dataclass(default):
            kwargs[name] = _build(type(default), {} if value is None else value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, default, f"{prefix}{name}", hints[name])
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in fields(cls)
    )


def _coerce(value: Any, default: Any, key: str, hint: Any) -> Any:
    """Check a leaf value against the type of its default, allowing int where a float is expected.

    A field whose default is None accepts null or a value of its annotated type (`int | None`).
    Numeric text such as "3e-4" becomes a number where the field is numeric, because YAML 1.1
    reads exponents without a dot as strings.
    """
    if isinstance(value, str):
        value = _number_from_text(value, default, hint)
    if value is None:
        if default is not None:
            raise ValueError(f"{key}: expected {type(default).__name__}, got null")
        return value
    if default is None:
        allowed = tuple(t for t in typing.get_args(hint) if t is not type(None))
        if allowed and (not isinstance(value, allowed) or isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in allowed)
            raise ValueError(f"{key}: expected {names} or null, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, type(default)) or isinstance(value, bool):
        raise ValueError(f"{key}: expected {type(default).__name__}, got {value!r}")
    return value


def _number_from_text(value: str, default: Any, hint: Any) -> Any:
    targets = (type(default),) if default is not None else typing.get_args(hint)
    for target in (int, float):
        if target in targets and not isinstance(default, bool):
            try:
                number = float(value)
            except ValueError:
                return value
            if target is int:
                return int(number) if number.is_integer() else value
            return number
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `["training.lr=3e-4", "data.max_clips=10"]` into a nested mapping (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"invalid override {item!r}; expected KEY=VALUE such as training.lr=3e-4")
        # Strings such as 3e-4 (YAML 1.1 reads them as text) become numbers in _coerce, which
        # has the field's type.
        value = yaml.safe_load(raw) if raw.strip() else None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"invalid override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Locate config.yaml: the argument, then $ASR_CONFIG, then ./config.yaml, then the repository's."""
    if path is not None:
        return Path(path)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    if Path("config.yaml").is_file():
        return Path("config.yaml")
    return REPO_ROOT / "config.yaml"


def load_settings(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read the raw settings mapping from config.yaml."""
    file = config_path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {file}; set {CONFIG_ENV} or run from the repository") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{file}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping at the top level")
    return data


def resolve_path(settings: dict[str, Any], key: str, env: str, default: str) -> Path:
    """Resolve a path setting: the environment variable wins, relative paths are taken from the repo."""
    raw = os.environ.get(env) or (settings.get("paths") or {}).get(key) or default
    path = Path(raw).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def data_dir(settings: dict[str, Any] | None = None) -> Path:
    return resolve_path(settings if settings is not None else load_settings(), "data", "ASR_DATA_DIR", "data")


def checkpoints_dir(settings: dict[str, Any] | None = None) -> Path:
    return resolve_path(
        settings if settings is not None else load_settings(), "checkpoints", "ASR_CHECKPOINTS_DIR", "checkpoints"
    )


def resolve_run_config(
    settings: dict[str, Any],
    *,
    model_type: str = "conformer",
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Combine the `run_defaults` section, a model preset and overrides into a RunConfig."""
    models = settings.get("models") or {}
    if model_type not in models:
        raise ValueError(f"unknown model type {model_type!r}; config.yaml defines {sorted(models)}")
    presets = models[model_type].get("presets") or {}
    preset = preset or models[model_type].get("default_preset") or next(iter(presets), None)
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for model {model_type}; choose from {sorted(presets)}")
    base = deep_merge(settings.get("run_defaults") or {}, {"model": dict(presets[preset])})
    base = deep_merge(base, {"model": {"type": model_type, "preset": preset}})
    return RunConfig.from_dict(deep_merge(base, overrides or {}))
