"""The dashboard's settings from config.yaml: the page language, the model presets and the form defaults.

The API validates every run request again, so these values only fill the form. A config.yaml the
dashboard cannot read leaves built-in defaults in place instead of failing the page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from asrlib.config import MODEL_TYPES, PRECISIONS, TrainingConfig, load_settings
from asrlib.dashboard.i18n import normalize_language

log = logging.getLogger(__name__)

FALLBACK_PRESETS = ("tiny", "small", "medium")


@dataclass(frozen=True)
class DashboardSettings:
    language: str = "ja"
    presets: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict.fromkeys(MODEL_TYPES, FALLBACK_PRESETS))
    default_presets: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # run_defaults.training
    default_dataset: str | None = None
    precisions: tuple[str, ...] = PRECISIONS
    model_types: tuple[str, ...] = MODEL_TYPES

    def training_default(self, key: str) -> Any:
        return self.training.get(key, getattr(TrainingConfig(), key))


def read_settings(raw: dict[str, Any] | None = None) -> DashboardSettings:
    """Build the dashboard settings from a config.yaml mapping (read from disk when None)."""
    if raw is None:
        try:
            raw = load_settings()
        except (OSError, ValueError) as err:
            log.warning("config.yaml not readable (%s); the dashboard uses built-in defaults", err)
            return DashboardSettings()
    models = raw.get("models") or {}
    presets: dict[str, tuple[str, ...]] = {}
    defaults: dict[str, str] = {}
    for model_type in MODEL_TYPES:
        section = models.get(model_type) or {}
        names = tuple((section.get("presets") or {}).keys())
        # A model type without its own section is trained with the conformer presets' sizes.
        presets[model_type] = names or tuple((models.get("conformer") or {}).get("presets") or FALLBACK_PRESETS)
        default = section.get("default_preset")
        if default in presets[model_type]:
            defaults[model_type] = default
    run_defaults = raw.get("run_defaults") or {}
    return DashboardSettings(
        language=normalize_language(raw.get("language")),
        presets=presets,
        default_presets=defaults,
        training=dict(run_defaults.get("training") or {}),
        default_dataset=(run_defaults.get("data") or {}).get("dataset"),
    )
