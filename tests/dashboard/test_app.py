"""The dashboard's widget tree builds outside a browser and switches language in place."""

from __future__ import annotations

import ipywidgets as widgets

from asrlib.dashboard.app import TAB_KEYS, DashboardApp
from asrlib.dashboard.i18n import Messages
from asrlib.dashboard.settings import read_settings
from tests.conftest import REPO_ROOT


def _descriptions(root: widgets.Widget) -> set[str]:
    found: set[str] = set()
    stack = [root]
    while stack:
        widget = stack.pop()
        description = getattr(widget, "description", None)
        if isinstance(description, str) and description:
            found.add(description)
        stack.extend(child for child in getattr(widget, "children", ()) if isinstance(child, widgets.Widget))
    return found


def test_app_builds_in_japanese_by_default():
    app = DashboardApp(base_url="http://127.0.0.1:9", settings=read_settings({"language": "ja"}))
    assert app.messages.language == "ja"
    assert list(app.tabs.titles) == [Messages("ja").t(key) for key in TAB_KEYS]
    assert "学習開始" in _descriptions(app)


def test_language_switch_retitles_everything():
    app = DashboardApp(base_url="http://127.0.0.1:9", settings=read_settings({"language": "ja"}))
    app.language.value = "en"
    assert list(app.tabs.titles) == ["Training", "Inference", "Realtime", "Models", "Checkpoints", "Datasets"]
    descriptions = _descriptions(app)
    assert "Start training" in descriptions
    assert "学習開始" not in descriptions
    assert not any("\u3040" <= char <= "\u30ff" for text in descriptions for char in text)  # no kana left


def test_settings_from_config_file():
    import yaml

    raw = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))
    settings = read_settings(raw)
    assert settings.language == "ja"
    assert "tiny" in settings.presets["conformer"]
    assert settings.training_default("max_steps") == raw["run_defaults"]["training"]["max_steps"]


def test_unknown_language_falls_back_to_japanese():
    assert read_settings({"language": "de"}).language == "ja"


def test_voila_config_culls_kernels():
    import json

    config = json.loads((REPO_ROOT / "dashboards" / "voila.json").read_text(encoding="utf-8"))
    kernels = config["MappingKernelManager"]
    assert kernels["cull_idle_timeout"] > 0
    assert 0 < kernels["cull_interval"] <= kernels["cull_idle_timeout"]
    assert kernels["cull_connected"] is True  # a page left open must not hold its kernel forever
    assert config["VoilaConfiguration"]["preheat_kernel"] is False
    assert config["VoilaConfiguration"]["show_tracebacks"] is False


def test_app_notebook_only_builds_the_app():
    import nbformat

    notebook = nbformat.read(REPO_ROOT / "dashboards" / "app.ipynb", as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert code == ["from asrlib.dashboard import build_app\n\nbuild_app()"]
