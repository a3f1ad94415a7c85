"""The dashboard page: header with the API state and the language switch, and one tab per feature."""

from __future__ import annotations

import html
import logging

import ipywidgets as widgets

from asrlib.client import AsrClient
from asrlib.dashboard.backend import backend_url, describe_error
from asrlib.dashboard.context import Context
from asrlib.dashboard.events import EventStream
from asrlib.dashboard.i18n import LANGUAGE_NAMES, LANGUAGES, Messages
from asrlib.dashboard.settings import DashboardSettings, read_settings
from asrlib.dashboard.tabs.checkpoints import CheckpointsTab
from asrlib.dashboard.tabs.datasets import DatasetsTab
from asrlib.dashboard.tabs.inference import InferenceTab
from asrlib.dashboard.tabs.models import ModelsTab
from asrlib.dashboard.tabs.realtime import RealtimeTab
from asrlib.dashboard.tabs.training import TrainingTab
from asrlib.dashboard.tasks import TaskRunner, call

log = logging.getLogger(__name__)

TAB_KEYS = ("tab.training", "tab.inference", "tab.realtime", "tab.models", "tab.checkpoints", "tab.datasets")
STYLE = """
<style>
.asr-app { font-size: 14px; }
.asr-app .asr-table .widget-html-content { line-height: 1.5; }
.asr-app .asr-details th, .asr-app .asr-details td { padding: 2px 8px; vertical-align: top; }
.asr-app .asr-words td, .asr-app .asr-words th { border-bottom: 1px solid #e5e5e5; }
/* ipywidgets 8 Layout has no gap; boxes of the page space their children here. */
.asr-app .widget-hbox { gap: 8px; }
.asr-app .widget-vbox { gap: 2px; }
.asr-header { border-bottom: 2px solid #1f4e79; padding-bottom: 6px; margin-bottom: 8px; }
.asr-tabs > .lm-TabBar .lm-TabBar-tab { flex: 0 0 auto !important; min-width: 9em; max-width: none !important; }
</style>
"""


class DashboardApp(widgets.VBox):
    def __init__(self, *, base_url: str | None = None, settings: DashboardSettings | None = None,
                 language: str | None = None, client: AsrClient | None = None) -> None:
        super().__init__()
        self.add_class("asr-app")
        settings = settings or read_settings()
        url = base_url or backend_url()
        messages = Messages(language or settings.language)
        api = client or AsrClient(url)
        self.context = Context(messages=messages, client=api, settings=settings, base_url=url,
                               runner=TaskRunner(url), events=EventStream(api))
        self.messages = messages

        self.title = widgets.HTML()
        self.connection = widgets.HTML()
        self.connection.add_class("asr-connection")
        self.language = widgets.ToggleButtons(options=[(LANGUAGE_NAMES[code], code) for code in LANGUAGES],
                                              value=messages.language, style={"button_width": "6.5em"})
        self.language.add_class("asr-language")
        self.language.observe(lambda change: setattr(messages, "language", change["new"]), names="value")
        header = widgets.HBox([self.title, self.connection, self.language],
                              layout=widgets.Layout(justify_content="space-between", align_items="center"))
        header.add_class("asr-header")

        self.training = TrainingTab(self.context)
        self.inference = InferenceTab(self.context)
        self.realtime = RealtimeTab(self.context)
        self.models = ModelsTab(self.context)
        self.checkpoints = CheckpointsTab(self.context, resume=self.training.resume_from)
        self.datasets = DatasetsTab(self.context)
        self.tabs = widgets.Tab([self.training, self.inference, self.realtime, self.models, self.checkpoints,
                                 self.datasets])
        self.tabs.add_class("asr-tabs")
        self.children = [widgets.HTML(STYLE), header, self.tabs]

        self._connected: bool | None = None
        self._connection_error: str | None = None
        messages.on_change(self._render)
        self.context.events.on_state(self._connection_changed)
        self.context.events.on_connected(self.reload_all)
        self._render()

    def start(self) -> DashboardApp:
        """Check the API and open the event stream; the tabs load their data once it connects."""
        self.context.runner.spawn(self._check_health())
        self.context.events.start()
        return self

    def reload_all(self) -> None:
        for tab in (self.inference, self.realtime, self.models, self.checkpoints, self.datasets):
            tab.reload()

    async def _check_health(self) -> None:
        try:
            await call(self.context.client.health)
        except Exception as err:  # shown in the header; the stream keeps retrying
            self._connected = False
            self._connection_error = describe_error(err, self.context.base_url).render(self.messages)
            self._render()

    def _connection_changed(self, connected: bool, error: str | None) -> None:
        self._connected = connected
        self._connection_error = None if connected else error
        self._render()

    def _render(self) -> None:
        t = self.messages.t
        self.title.value = f"<h2 style='margin:0'>{html.escape(t('app.title'))}</h2>"
        self.tabs.titles = tuple(t(key) for key in TAB_KEYS)
        url = html.escape(self.context.base_url)
        if self._connected:
            state, color = t("app.connected", url=url), "#1e6b2e"
        elif self._connected is None:
            state, color = t("app.connecting", url=url), "#555"
        else:
            state, color = t("app.disconnected", url=url), "#a61b1b"
        self.connection.value = f"<span style='color:{color}' data-connected='{bool(self._connected)}'>● {state}</span>"


def build_app(**kwargs: object) -> DashboardApp:
    """Build the dashboard and start its connection to the API (call in a running kernel)."""
    return DashboardApp(**kwargs).start()  # type: ignore[arg-type]
