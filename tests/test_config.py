"""Typed run configuration: dotted overrides, key and type checks, presets and path settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asrlib.config import (
    REPO_ROOT,
    RunConfig,
    checkpoints_dir,
    config_path,
    data_dir,
    load_settings,
    parse_overrides,
    resolve_run_config,
)
from asrlib.models import build_model, count_parameters


@pytest.fixture(scope="module")
def settings() -> dict:
    return load_settings(REPO_ROOT / "config.yaml")


# ------------------------------------------------------------------ overrides


def test_override_exponent_parsed_as_float(settings):
    config = resolve_run_config(settings, overrides=parse_overrides(["training.lr=3e-4"]))
    assert config.training.lr == 3e-4
    assert isinstance(config.training.lr, float)


def test_override_exponent_for_int_field(settings):
    config = resolve_run_config(settings, overrides=parse_overrides(["training.max_steps=2e4"]))
    assert config.training.max_steps == 20000
    assert isinstance(config.training.max_steps, int)


def test_override_numeric_text_for_string_field(settings):
    config = resolve_run_config(settings, overrides=parse_overrides(["data.dataset=1e3"]))
    assert config.data.dataset == "1e3"


def test_override_values_parsed_as_yaml():
    overrides = parse_overrides(
        ["data.max_clips=10", "spec_augment.enabled=false", "training.device=cuda:0", "training.lr=0.002"]
    )
    assert overrides["data"] == {"max_clips": 10}
    assert overrides["spec_augment"] == {"enabled": False}
    assert overrides["training"] == {"device": "cuda:0", "lr": 0.002}


def test_override_empty_value_is_null():
    assert parse_overrides(["data.max_clips="]) == {"data": {"max_clips": None}}


def test_override_without_equals_rejected():
    with pytest.raises(ValueError, match=r"training\.lr"):
        parse_overrides(["training.lr"])


def test_override_value_and_section_rejected():
    with pytest.raises(ValueError, match="both a value and a section"):
        parse_overrides(["training=1", "training.lr=0.1"])


def test_overrides_apply_to_run_config():
    config = RunConfig.from_dict(parse_overrides(["training.lr=3e-4", "data.max_clips=10"]))
    assert config.training.lr == 3e-4
    assert config.data.max_clips == 10
    assert config.training.max_steps == RunConfig().training.max_steps


# ------------------------------------------------------------------ key and type checks


def test_unknown_nested_key_named():
    with pytest.raises(ValueError, match=r"training\.lrr"):
        RunConfig.from_dict({"training": {"lrr": 0.1}})


def test_unknown_top_level_key_named():
    with pytest.raises(ValueError, match="unknown config key optimizer"):
        RunConfig.from_dict({"optimizer": {}})


def test_wrong_type_names_key():
    with pytest.raises(ValueError, match=r"training\.max_steps"):
        RunConfig.from_dict({"training": {"max_steps": "many"}})


def test_bool_for_int_rejected():
    with pytest.raises(ValueError, match=r"model\.num_layers"):
        RunConfig.from_dict({"model": {"num_layers": True}})


def test_float_for_int_rejected():
    with pytest.raises(ValueError, match=r"model\.d_model"):
        RunConfig.from_dict(parse_overrides(["model.d_model=1.5"]))


def test_int_for_float_accepted():
    config = RunConfig.from_dict({"training": {"lr": 1}})
    assert config.training.lr == 1.0
    assert isinstance(config.training.lr, float)


def test_string_for_bool_rejected():
    with pytest.raises(ValueError, match=r"spec_augment\.enabled"):
        RunConfig.from_dict({"spec_augment": {"enabled": "yes please"}})


def test_optional_field_type_checked():
    with pytest.raises(ValueError, match=r"data\.max_clips"):
        RunConfig.from_dict(parse_overrides(["data.max_clips=ten"]))


def test_optional_field_accepts_null():
    config = RunConfig.from_dict(parse_overrides(["data.max_clips=5", "training.max_epochs="]))
    assert config.data.max_clips == 5
    assert config.training.max_epochs is None


def test_null_for_required_field_rejected():
    with pytest.raises(ValueError, match=r"training\.lr"):
        RunConfig.from_dict(parse_overrides(["training.lr="]))


def test_scalar_for_section_rejected():
    with pytest.raises(ValueError, match="spec_augment"):
        RunConfig.from_dict({"spec_augment": 0})


@pytest.mark.parametrize("key", ["sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms"])
def test_nonpositive_feature_setting_rejected(key):
    with pytest.raises(ValueError, match=rf"features\.{key}: invalid value 0"):
        RunConfig.from_dict({"features": {key: 0}})


def test_invalid_precision_rejected():
    with pytest.raises(ValueError, match=r"training\.precision"):
        RunConfig.from_dict({"training": {"precision": "fp8"}})


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        RunConfig.from_dict({"model": {"d_model": 100, "num_heads": 3}})


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize(
    ("preset", "expected_millions"), [("tiny", 2.5), ("small", 11.0), ("medium", 31.0)]
)
def test_preset_parameter_count(settings, preset, expected_millions):
    config = resolve_run_config(settings, preset=preset)
    millions = count_parameters(build_model(config, vocab_size=29)) / 1e6
    assert config.model.preset == preset
    assert abs(millions - expected_millions) <= 0.1 * expected_millions, f"{preset}: {millions:.2f} M"


def test_default_preset_from_settings(settings):
    config = resolve_run_config(settings)
    assert config.model.preset == settings["models"]["conformer"]["default_preset"]


def test_preset_sizes_applied(settings):
    config = resolve_run_config(settings, preset="medium")
    assert config.model.d_model == 384
    assert config.model.num_layers == 8


def test_overrides_win_over_preset(settings):
    config = resolve_run_config(settings, preset="tiny", overrides={"model": {"dropout": 0.3}})
    assert config.model.dropout == 0.3
    assert config.model.d_model == 144


def test_unknown_preset_lists_choices(settings):
    with pytest.raises(ValueError, match="tiny"):
        resolve_run_config(settings, preset="huge")


def test_unknown_model_type_rejected(settings):
    with pytest.raises(ValueError, match="transformer"):
        resolve_run_config(settings, model_type="transformer")


# ------------------------------------------------------------------ round trip


def test_run_config_dict_round_trip(settings):
    config = resolve_run_config(settings, preset="small", overrides=parse_overrides(["data.max_clips=7"]))
    assert RunConfig.from_dict(config.to_dict()) == config


def test_run_config_yaml_round_trip(settings):
    config = resolve_run_config(settings, preset="tiny", overrides={"training": {"max_epochs": 3}})
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    assert RunConfig.from_dict(yaml.safe_load(text)) == config


# ------------------------------------------------------------------ paths


def test_data_dir_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("ASR_DATA_DIR", str(tmp_path))
    assert data_dir({"paths": {"data": "elsewhere"}}) == tmp_path


def test_checkpoints_dir_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("ASR_CHECKPOINTS_DIR", str(tmp_path))
    assert checkpoints_dir({"paths": {"checkpoints": "elsewhere"}}) == tmp_path


def test_relative_path_from_repo(monkeypatch):
    monkeypatch.delenv("ASR_DATA_DIR", raising=False)
    monkeypatch.delenv("ASR_CHECKPOINTS_DIR", raising=False)
    settings = {"paths": {"data": "some/data", "checkpoints": "ckpts"}}
    assert data_dir(settings) == REPO_ROOT / "some" / "data"
    assert checkpoints_dir(settings) == REPO_ROOT / "ckpts"


def test_path_defaults_without_settings(monkeypatch):
    monkeypatch.delenv("ASR_DATA_DIR", raising=False)
    assert data_dir({}) == REPO_ROOT / "data"


def test_config_env_selects_file(monkeypatch, tmp_path):
    file = tmp_path / "other.yaml"
    file.write_text("paths: {data: /x}\n", encoding="utf-8")
    monkeypatch.setenv("ASR_CONFIG", str(file))
    assert config_path() == file
    assert load_settings() == {"paths": {"data": "/x"}}


def test_missing_config_file_names_env(tmp_path):
    with pytest.raises(FileNotFoundError, match="ASR_CONFIG"):
        load_settings(tmp_path / "missing.yaml")


def test_non_mapping_config_rejected(tmp_path):
    file = tmp_path / "list.yaml"
    file.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(Path(file))
