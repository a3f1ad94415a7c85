"""The message catalog: both languages for every key, matching placeholders, no missing or unused key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asrlib.config import MODEL_TYPES
from asrlib.dashboard.curves import CHARTS
from asrlib.dashboard.i18n import LANGUAGES, Messages, normalize_language, placeholders
from asrlib.dashboard.messages import CATALOG
from asrlib.training.runs import STATES

PACKAGE = Path(__file__).resolve().parents[2] / "asrlib" / "dashboard"
PREFIXES = ("app", "tab", "common", "table", "error", "state", "task", "model_type", "training", "inference",
            "realtime", "mic", "models", "checkpoints", "datasets")
KEY_LITERAL = re.compile(r"""["']((?:""" + "|".join(PREFIXES) + r""")\.[a-z0-9_.]+[a-z0-9_])["']""")
NOT_KEYS = {"mic.js"}  # file names that look like keys

# Keys built at run time from a prefix and a value, e.g. f"state.{run['state']}".
DYNAMIC_KEYS = (
    {f"state.{state}" for state in STATES}
    | {f"task.{state}" for state in ("running", "completed", "failed")}
    | {f"model_type.{model_type}" for model_type in MODEL_TYPES}
    | {f"training.chart.{chart}" for chart in CHARTS}
    | {f"datasets.phase.{phase}" for phase in ("download", "hash", "extract", "copy", "validate", "synthesise",
                                               "import", "demo", "unknown")}
    | {f"datasets.op.{operation}" for operation in ("download", "import", "validate", "demo")}
    | {f"datasets.download.{state}" for state in ("partial", "complete")}
    | {f"checkpoints.flag.{flag}" for flag in ("best", "resumable", "averaged", "in_use", "invalid")}
)


def used_keys() -> set[str]:
    keys: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "messages.py":
            continue
        keys |= set(KEY_LITERAL.findall(path.read_text(encoding="utf-8")))
    return (keys - NOT_KEYS) | DYNAMIC_KEYS


def test_every_entry_has_both_languages():
    incomplete = sorted(key for key, entry in CATALOG.items()
                        if set(entry) != set(LANGUAGES) or not all(entry.get(lang, "").strip() for lang in LANGUAGES))
    assert not incomplete, f"entries without a Japanese and an English text: {incomplete}"


def test_placeholders_match_between_languages():
    mismatched = sorted(key for key, entry in CATALOG.items() if placeholders(entry["ja"]) != placeholders(entry["en"]))
    assert not mismatched, f"entries whose languages take different {{fields}}: {mismatched}"


def test_every_used_key_exists():
    missing = sorted(used_keys() - set(CATALOG))
    assert not missing, f"keys used by the dashboard but not in the catalog: {missing}"


def test_every_catalog_key_is_used():
    unused = sorted(set(CATALOG) - used_keys())
    assert not unused, f"catalog keys no code uses: {unused}"


def test_japanese_texts_are_japanese():
    # A Japanese entry copied from English would slip through the other checks.
    exempt = {key for key, entry in CATALOG.items() if entry["ja"] == entry["en"]}
    allowed_same = {"model_type.conformer", "model_type.realtime", "models.col.cer", "models.col.wer",
                    "checkpoints.col.cer", "checkpoints.col.wer", "models.detail.sha256",
                    "checkpoints.detail.sha256"}
    assert exempt <= allowed_same, sorted(exempt - allowed_same)


def test_translate_formats_and_switches():
    messages = Messages("ja")
    assert messages.t("training.started", run_id="r1") == "学習 r1 を開始しました。"
    messages.language = "en"
    assert messages.t("training.started", run_id="r1") == "Run r1 started."


def test_translate_missing_key_returns_key():
    assert Messages("en").t("no.such.key") == "no.such.key"


def test_translate_missing_param_keeps_template():
    assert Messages("en").t("training.started") == "Run {run_id} started."


@pytest.mark.parametrize(("value", "expected"), [("ja", "ja"), ("EN", "en"), ("en-US", "en"), ("ja_JP", "ja"),
                                                  ("fr", "ja"), (None, "ja"), (3, "ja")])
def test_normalize_language(value, expected):
    assert normalize_language(value) == expected


def test_bind_follows_language():
    import ipywidgets as widgets

    messages = Messages("ja")
    button = widgets.Button()
    messages.bind(button, "description", "training.start")
    assert button.description == "学習開始"
    messages.language = "en"
    assert button.description == "Start training"


def test_bind_options_keeps_value():
    import ipywidgets as widgets

    messages = Messages("ja")
    dropdown = widgets.Dropdown()
    messages.bind_options(dropdown, [("common.all", ""), ("state.completed", "completed")])
    assert dropdown.value == ""
    dropdown.value = "completed"
    messages.language = "en"
    assert dropdown.value == "completed"
    assert dropdown.label == "completed"
    assert [label for label, _ in dropdown.options] == ["All", "completed"]


def test_lazy_parameter_follows_language():
    from asrlib.dashboard.i18n import Lazy

    messages = Messages("ja")
    state = Lazy("state.stopped")
    assert messages.t("training.ended", run_id="r1", state=state) == "学習 r1 は「停止」で終了しました。"
    messages.language = "en"
    assert messages.t("training.ended", run_id="r1", state=state) == "Run r1 ended: stopped."
