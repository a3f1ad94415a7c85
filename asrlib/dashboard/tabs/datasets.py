"""Datasets tab: download, import, validate and generate datasets with live progress; validation report."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import bqplot as bq
import ipywidgets as widgets

from asrlib.dashboard.context import Context
from asrlib.dashboard.formatting import EMPTY, format_bytes, format_count, format_duration, format_number
from asrlib.dashboard.i18n import Lazy
from asrlib.dashboard.tasks import call
from asrlib.dashboard.ui import Column, SelectableTable, StatusLine, details_html, heading

log = logging.getLogger(__name__)

REPORT_FILE = "validation.json"
COLUMNS = (
    Column("datasets.col.name", "name", "minmax(8em, 1fr)"),
    Column("datasets.col.present", "present", "6em"),
    Column("datasets.col.kind", "kind", "7em"),
    Column("datasets.col.clips", "clips", "6em", align="right"),
    Column("datasets.col.hours", "hours", "6em", align="right"),
    Column("datasets.col.validated", "validated", "11em"),
    Column("datasets.col.download", "download", "minmax(8em, 1fr)"),
    Column("datasets.col.task", "task", "minmax(8em, 1fr)"),
)


def amount(value: float | int | None, unit: str) -> str:
    """Return a progress amount: bytes in binary units, other units as counts."""
    if value is None:
        return EMPTY
    return format_bytes(value) if unit == "B" else f"{format_count(int(value))} {unit}"


def progress_text(event: dict[str, Any], messages: Any) -> str:
    """Describe one progress event: phase, done of total, rate and time left."""
    unit = event.get("unit") or ""
    done, total = event.get("done"), event.get("total")
    parts = [messages.t(f"datasets.phase.{event.get('phase', 'unknown')}")]
    parts.append(f"{amount(done, unit)} / {amount(total, unit)}" if total else amount(done, unit))
    rate = event.get("rate_per_s")
    if isinstance(rate, (int, float)) and rate > 0:
        parts.append(f"{format_bytes(rate)}/s" if unit == "B" else f"{format_number(float(rate), 3)} {unit}/s")
    eta = event.get("eta_s")
    if isinstance(eta, (int, float)):
        parts.append(messages.t("datasets.eta", eta=format_duration(eta)))
    return " · ".join(parts)


def download_text(download: dict[str, Any] | None, messages: Any) -> str:
    if not download:
        return EMPTY
    done, total = download.get("bytes_done"), download.get("total_bytes")
    state = messages.t(f"datasets.download.{download.get('state', 'partial')}")
    return f"{state} {format_bytes(done)} / {format_bytes(total)}" if total else f"{state} {format_bytes(done)}"


def dataset_row(dataset: dict[str, Any], messages: Any) -> dict[str, str]:
    task = dataset.get("task") or {}
    task_text = EMPTY
    if task:
        task_text = f"{messages.t('datasets.op.' + task['operation'])}: {messages.t('task.' + task['state'])}"
    hours = dataset.get("hours")
    return {
        "id": dataset["name"],
        "name": dataset["name"],
        "present": messages.t("common.yes" if dataset.get("present") else "common.no"),
        "kind": messages.t("datasets.synthetic" if dataset.get("synthetic") else "datasets.real"),
        "clips": format_count(dataset.get("clips")),
        "hours": EMPTY if hours is None else f"{hours:.2f}",
        "validated": (dataset.get("validated_at") or EMPTY).replace("T", " ")[:16],
        "download": download_text(dataset.get("download"), messages),
        "task": task_text,
    }


def read_report(client: Any, dataset: dict[str, Any]) -> dict[str, Any] | None:
    """Return a dataset's validation report, or None if there is none or it is not readable from here.

    The report comes from the API (`GET /api/datasets/{name}/report`); a client without that
    method falls back to reading the file from the dataset folder on this machine.
    """
    fetch = getattr(client, "dataset_report", None)
    if fetch is not None:
        return fetch(dataset["name"])
    path = Path(dataset["path"]) / REPORT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.info("validation report of %s not readable at %s: %s", dataset["name"], path, err)
        return None


class DatasetsTab(widgets.VBox):
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.add_class("asr-tab-datasets")
        self.context = context
        self.messages = t = context.messages
        self.status = StatusLine(t)
        self.datasets: dict[str, dict[str, Any]] = {}
        self.report: dict[str, Any] | None = None
        self.progress_rows: dict[str, tuple[widgets.FloatProgress, widgets.HTML, widgets.HBox]] = {}
        self._last_events: dict[str, dict[str, Any]] = {}  # per dataset, to redraw its row in another language

        refresh = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(refresh, "description", "common.refresh")
        refresh.on_click(lambda _b: self.reload())
        self.table = SelectableTable(t, COLUMNS, on_select=lambda _n: self._render_selected(),
                                     empty_key="datasets.empty", css_class="asr-datasets-table")
        self.progress_box = widgets.VBox()
        self.progress_box.add_class("asr-dataset-progress")

        self.download_button = widgets.Button(button_style="primary", layout=widgets.Layout(width="10em"))
        t.bind(self.download_button, "description", "datasets.download")
        self.download_button.on_click(lambda _b: self._act("download"))
        self.overwrite = widgets.Checkbox(value=False, indent=False, layout=widgets.Layout(width="12em"))
        t.bind(self.overwrite, "description", "datasets.overwrite")
        self.validate_button = widgets.Button(layout=widgets.Layout(width="10em"))
        self.validate_button.add_class("asr-validate")
        t.bind(self.validate_button, "description", "datasets.validate")
        self.validate_button.on_click(lambda _b: self._act("validate"))
        self.demo_button = widgets.Button(layout=widgets.Layout(width="14em"))
        t.bind(self.demo_button, "description", "datasets.make_demo")
        self.demo_button.on_click(lambda _b: self._act("demo"))
        self.actions = widgets.HBox([self.download_button, self.validate_button, self.demo_button, self.overwrite],
                                    layout=widgets.Layout(display="none"))

        self.import_name = widgets.Text(layout=widgets.Layout(width="18em"), style={"description_width": "6em"})
        t.bind(self.import_name, "description", "datasets.import_name")
        self.import_source = widgets.Text(layout=widgets.Layout(width="34em"), style={"description_width": "6em"})
        t.bind(self.import_source, "description", "datasets.import_source")
        t.bind(self.import_source, "placeholder", "datasets.import_source_placeholder")
        self.import_mode = widgets.Dropdown(layout=widgets.Layout(width="14em"), style={"description_width": "5em"})
        t.bind(self.import_mode, "description", "datasets.import_mode")
        t.bind_options(self.import_mode, [("datasets.mode.copy", "copy"), ("datasets.mode.symlink", "symlink")])
        self.import_button = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(self.import_button, "description", "datasets.import")
        self.import_button.on_click(lambda _b: self.context.runner.spawn(self._import(), status=self.status,
                                                                         busy=[self.import_button]))

        self.summary = widgets.HTML()
        self.summary.add_class("asr-validation-summary")
        self.histogram_x = bq.OrdinalScale()
        self.histogram_y = bq.LinearScale(min=0.0)
        self.histogram = bq.Bars(x=[], y=[], scales={"x": self.histogram_x, "y": self.histogram_y},
                                 colors=["#4a78a8"], padding=0.05)
        x_axis = bq.Axis(scale=self.histogram_x, tick_rotate=0)
        y_axis = bq.Axis(scale=self.histogram_y, side="left", tick_format="d")
        t.bind(x_axis, "label", "datasets.histogram_x")
        t.bind(y_axis, "label", "datasets.histogram_y")
        self.histogram_figure = bq.Figure(marks=[self.histogram], axes=[x_axis, y_axis],
                                          fig_margin={"top": 40, "bottom": 50, "left": 60, "right": 20},
                                          layout=widgets.Layout(width="720px", height="300px"),
                                          title_style={"font-size": "14px"})
        t.bind(self.histogram_figure, "title", "datasets.histogram")
        self.histogram_figure.add_class("asr-duration-histogram")

        self.children = [
            widgets.HBox([heading(t, "datasets.heading"), refresh], layout=widgets.Layout(align_items="center")),
            self.table, self.actions, self.progress_box, self.status,
            heading(t, "datasets.import_heading"),
            widgets.HBox([self.import_name, self.import_mode, self.import_button]),
            self.import_source,
            heading(t, "datasets.report"), self.summary, self.histogram_figure,
        ]
        context.events.subscribe("dataset:", self._on_event)
        context.on_changed("datasets", self.reload)
        t.on_change(self._render)
        t.on_change(self._render_progress_rows)

    # ------------------------------------------------------------------ loading

    def reload(self) -> None:
        self.context.runner.spawn(self._reload(), status=self.status)

    async def _reload(self) -> None:
        datasets = await call(self.context.client.list_datasets)
        self.datasets = {d.name: d.model_dump() for d in datasets}
        self._render()
        for dataset in self.datasets.values():
            task = dataset.get("task")
            if task and task.get("state") == "running" and task.get("progress"):
                self._show_progress(dataset["name"], task["progress"])

    def _render(self) -> None:
        self.table.set_rows([dataset_row(d, self.messages) for d in self.datasets.values()])
        self._render_selected()

    def _render_selected(self) -> None:
        name = self.table.selected
        dataset = self.datasets.get(name) if name else None
        if dataset is None:
            self.actions.layout.display = "none"
            self.summary.value = f"<i>{html.escape(self.messages.t('datasets.select_hint'))}</i>"
            self._show_histogram([])
            return
        self.actions.layout.display = "flex"
        self.download_button.layout.display = "none" if dataset.get("synthetic") or not dataset.get("in_catalog") \
            else "inline-flex"
        self.demo_button.layout.display = "inline-flex" if dataset.get("synthetic") else "none"
        self.validate_button.disabled = not dataset.get("present")
        self.report = None
        self._render_report(dataset)
        if dataset.get("present"):
            self.context.runner.spawn(self._load_report(dataset), status=self.status)

    async def _load_report(self, dataset: dict[str, Any]) -> None:
        report = await call(read_report, self.context.client, dataset)
        if self.table.selected == dataset["name"]:
            self.report = report
            self._render_report(dataset)

    def _render_report(self, dataset: dict[str, Any]) -> None:
        t = self.messages
        report = self.report
        if report is None:
            key = "datasets.no_report" if dataset.get("present") else "datasets.not_present"
            self.summary.value = f"<i>{html.escape(t.t(key, name=dataset['name']))}</i>"
            self._show_histogram([])
            return
        durations = report.get("duration_s") or {}
        oov = (report.get("out_of_vocabulary") or {}).get("characters") or {}
        rows = [
            ("datasets.col.name", dataset["name"]), ("datasets.detail.path", report.get("path", dataset["path"])),
            ("datasets.col.clips", format_count(report.get("num_clips"))),
            ("datasets.col.hours", f"{report.get('total_hours', 0):.2f}"),
            ("datasets.detail.durations", t.t("datasets.duration_range",
                                              min=format_number(durations.get("min"), 3),
                                              mean=format_number(durations.get("mean"), 3),
                                              max=format_number(durations.get("max"), 3))),
            ("datasets.detail.sample_rates", ", ".join(f"{rate} Hz ×{count}" for rate, count in
                                                      (report.get("sample_rates") or {}).items()) or EMPTY),
            ("datasets.detail.problems", t.t("datasets.problem_counts",
                                             missing=len(report.get("missing") or []),
                                             corrupt=len(report.get("corrupt") or []),
                                             silent=len(report.get("silent") or []),
                                             metadata=len(report.get("metadata_problems") or []),
                                             unlisted=len(report.get("unlisted_audio") or []))),
            ("datasets.detail.out_of_range", t.t("datasets.out_of_range", short=len(report.get("too_short") or []),
                                                 long=len(report.get("too_long") or []))),
            ("datasets.detail.oov", ", ".join(f"{char!r} ×{info.get('count')}" for char, info in oov.items())
             or EMPTY),
            ("datasets.detail.split", ", ".join(f"{k} {v}" for k, v in
                                                 ((report.get("split") or {}).get("counts") or {}).items()) or EMPTY),
            ("datasets.col.validated", (report.get("created_at") or EMPTY).replace("T", " ")[:19]),
        ]
        self.summary.value = details_html(t, rows)
        self._show_histogram(report.get("duration_histogram") or [])

    def _show_histogram(self, bins: list[dict[str, Any]]) -> None:
        # The figure stays displayed even when empty: bqplot does not size a figure that was hidden
        # while its data arrived, so toggling its display would leave the bars invisible.
        with self.histogram_figure.hold_sync():
            self.histogram.x = [f"{b['start_s']:g}–{b['end_s']:g}" for b in bins]
            self.histogram.y = [b["count"] for b in bins]

    # ------------------------------------------------------------------ progress

    def _on_event(self, event: dict[str, Any]) -> None:
        name = event.get("dataset") or str(event.get("channel", "")).partition(":")[2]
        kind = event.get("event")
        if kind == "progress":
            self._show_progress(name, event)
        elif kind == "started":
            self._show_progress(name, {"phase": event.get("operation", "unknown"), "done": 0, "total": None})
        elif kind in ("completed", "failed"):
            self._finish_progress(name, event)
            self.context.changed("datasets")
            if kind == "completed" and event.get("operation") in ("download", "import", "demo"):
                self.context.changed("runs")  # the Training tab lists present datasets

    def _progress_row(self, name: str) -> tuple[widgets.FloatProgress, widgets.HTML, widgets.HBox]:
        if name not in self.progress_rows:
            bar = widgets.FloatProgress(value=0, min=0, max=1, layout=widgets.Layout(width="320px"))
            text = widgets.HTML()
            row = widgets.HBox([widgets.HTML(f"<b>{html.escape(name)}</b>", layout=widgets.Layout(width="9em")),
                                bar, text], layout=widgets.Layout(align_items="center"))
            self.progress_rows[name] = (bar, text, row)
            self.progress_box.children = [r for _, _, r in self.progress_rows.values()]
        return self.progress_rows[name]

    def _render_progress_rows(self) -> None:
        for name, event in list(self._last_events.items()):
            if event.get("event") in ("completed", "failed"):
                self._finish_progress(name, event)
            else:
                self._show_progress(name, event)

    def _show_progress(self, name: str, event: dict[str, Any]) -> None:
        self._last_events[name] = event
        bar, text, _row = self._progress_row(name)
        fraction = event.get("fraction")
        if fraction is None and event.get("total"):
            fraction = min(1.0, (event.get("done") or 0) / event["total"])
        bar.bar_style = "info"
        bar.value = float(fraction) if isinstance(fraction, (int, float)) else 0.0
        text.value = html.escape(progress_text(event, self.messages))

    def _finish_progress(self, name: str, event: dict[str, Any]) -> None:
        self._last_events[name] = event
        bar, text, _row = self._progress_row(name)
        if event.get("event") == "completed":
            bar.value, bar.bar_style = 1.0, "success"
            text.value = html.escape(self.messages.t("datasets.task_completed",
                                                     operation=Lazy(f"datasets.op.{event.get('operation')}")))
        else:
            bar.bar_style = "danger"
            text.value = f"<span style='color:#a61b1b'>{html.escape(str(event.get('error') or ''))}</span>"

    # ------------------------------------------------------------------ actions

    def _act(self, operation: str) -> None:
        name = self.table.selected
        if name is None and operation != "demo":
            return
        self.context.runner.spawn(self._start(operation, name), status=self.status,
                                  busy=[self.download_button, self.validate_button, self.demo_button])

    async def _start(self, operation: str, name: str | None) -> None:
        client = self.context.client
        overwrite = self.overwrite.value
        if operation == "download":
            task = await call(client.download_dataset, name, overwrite=overwrite)
        elif operation == "validate":
            task = await call(client.validate_dataset, name)
        else:
            task = await call(client.make_demo, overwrite=overwrite)
        self._show_progress(task.name, {"phase": task.operation, "done": 0, "total": None})
        self.status.show("datasets.task_started", kind="success", name=task.name,
                         operation=Lazy(f"datasets.op.{task.operation}"))

    async def _import(self) -> None:
        name, source = self.import_name.value.strip(), self.import_source.value.strip()
        if not name or not source:
            self.status.show("datasets.error.import_fields", kind="warning")
            return
        task = await call(self.context.client.import_dataset, name, source, mode=self.import_mode.value,
                          overwrite=self.overwrite.value)
        self._show_progress(task.name, {"phase": "import", "done": 0, "total": None})
        self.status.show("datasets.task_started", kind="success", name=task.name,
                         operation=Lazy("datasets.op.import"))
