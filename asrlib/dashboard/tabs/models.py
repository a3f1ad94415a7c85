"""Models tab: the registry with filters and sorting, a model's details, register, rename and delete."""

from __future__ import annotations

import html
from dataclasses import replace
from typing import Any

import ipywidgets as widgets

from asrlib.dashboard.backend import describe_error
from asrlib.dashboard.context import Context
from asrlib.dashboard.filters import ALL, ModelFilter, parse_percent
from asrlib.dashboard.formatting import (
    EMPTY,
    format_bytes,
    format_count,
    format_number,
    format_percent,
    format_timestamp,
)
from asrlib.dashboard.selection import replace_options
from asrlib.dashboard.tasks import call
from asrlib.dashboard.ui import Column, ConfirmBar, SelectableTable, StatusLine, details_html, heading

COLUMNS = (
    Column("models.col.name", "name", "minmax(10em, 2fr)", sort_key="name"),
    Column("models.col.type", "model_type", "6.5em"),
    Column("models.col.preset", "preset", "5em"),
    Column("models.col.dataset", "dataset", "minmax(6em, 1fr)"),
    Column("models.col.status", "status", "6em"),
    Column("models.col.step", "step", "5em", align="right"),
    Column("models.col.cer", "cer", "5.5em", align="right"),
    Column("models.col.wer", "wer", "5.5em", sort_key="wer", align="right"),
    Column("models.col.size", "size", "6.5em", sort_key="size", align="right"),
    Column("models.col.created", "created", "9.5em", sort_key="created"),
)
REGISTRABLE_STATES = ("completed", "stopped")


def model_row(model: dict[str, Any], messages: Any) -> dict[str, str]:
    return {
        "id": model["name"],
        "name": model["name"],
        "model_type": model.get("model_type") or EMPTY,
        "preset": model.get("preset") or EMPTY,
        "dataset": model.get("dataset") or EMPTY,
        "status": messages.t(f"state.{model['run_status']}") if model.get("run_status") else EMPTY,
        "step": format_count(model.get("step")),
        "cer": format_percent(model.get("cer")),
        "wer": format_percent(model.get("wer")),
        "size": format_bytes(model.get("size")),
        "created": format_timestamp(model.get("created")),
    }


class ModelsTab(widgets.VBox):
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.add_class("asr-tab-models")
        self.context = context
        self.messages = t = context.messages
        self.status = StatusLine(t)
        self.filter = ModelFilter()
        self.models: dict[str, dict[str, Any]] = {}

        self.type_filter = widgets.Dropdown(layout=widgets.Layout(width="15em"), style={"description_width": "5em"})
        t.bind_options(self.type_filter, [("common.all", ALL)] + [(f"model_type.{m}", m)
                                                                  for m in context.settings.model_types])
        self.dataset_filter = widgets.Dropdown(options=[(t.t("common.all"), ALL)],
                                               layout=widgets.Layout(width="17em"), style={"description_width": "6em"})
        self.status_filter = widgets.Dropdown(layout=widgets.Layout(width="16em"), style={"description_width": "5em"})
        t.bind_options(self.status_filter, [("common.all", ALL)] + [(f"state.{s}", s) for s in REGISTRABLE_STATES])
        self.name_filter = widgets.Text(continuous_update=False, layout=widgets.Layout(width="18em"),
                                        style={"description_width": "5em"})
        self.name_filter.add_class("asr-name-filter")
        self.wer_min = widgets.Text(continuous_update=False, layout=widgets.Layout(width="12em"),
                                    style={"description_width": "6em"})
        self.wer_max = widgets.Text(continuous_update=False, layout=widgets.Layout(width="12em"),
                                    style={"description_width": "6em"})
        self.wer_max.add_class("asr-wer-max")
        for widget, key in ((self.type_filter, "models.filter.type"), (self.dataset_filter, "models.filter.dataset"),
                            (self.status_filter, "models.filter.status"), (self.name_filter, "models.filter.name"),
                            (self.wer_min, "models.filter.wer_min"), (self.wer_max, "models.filter.wer_max")):
            t.bind(widget, "description", key)
            widget.observe(lambda _c: self._filters_changed(), names="value")
        t.bind(self.name_filter, "placeholder", "models.filter.name_placeholder")
        t.bind(self.wer_min, "placeholder", "models.filter.percent_placeholder")
        t.bind(self.wer_max, "placeholder", "models.filter.percent_placeholder")
        refresh = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(refresh, "description", "common.refresh")
        refresh.on_click(lambda _b: self.reload())

        self.table = SelectableTable(t, COLUMNS, on_select=self._selected, on_sort=self._sort,
                                     empty_key="models.empty", css_class="asr-models-table")
        self.table.sort = (self.filter.sort, self.filter.descending)
        self.count = widgets.HTML()
        self.details = widgets.HTML()
        self.details.add_class("asr-model-details")
        self.new_name = widgets.Text(layout=widgets.Layout(width="20em"), style={"description_width": "6em"})
        t.bind(self.new_name, "description", "models.new_name")
        self.rename_button = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(self.rename_button, "description", "models.rename")
        self.rename_button.on_click(lambda _b: self.context.runner.spawn(self._rename(), status=self.status,
                                                                         busy=[self.rename_button]))
        self.unload_button = widgets.Button(layout=widgets.Layout(width="10em", display="none"))
        t.bind(self.unload_button, "description", "models.unload")
        self.unload_button.on_click(lambda _b: self.context.runner.spawn(self._unload(), status=self.status,
                                                                         busy=[self.unload_button]))
        self.delete_button = widgets.Button(button_style="danger", layout=widgets.Layout(width="8em"))
        self.delete_button.add_class("asr-delete-model")
        t.bind(self.delete_button, "description", "common.delete")
        self.delete_button.on_click(lambda _b: self._ask_delete())
        self.confirm = ConfirmBar(t)
        self.actions = widgets.VBox([widgets.HBox([self.new_name, self.rename_button, self.unload_button,
                                                   self.delete_button]),
                                     self.confirm], layout=widgets.Layout(display="none"))

        self.register_run = widgets.Dropdown(options=[], layout=widgets.Layout(width="30em"),
                                             style={"description_width": "6em"})
        t.bind(self.register_run, "description", "models.register_run")
        self.register_name = widgets.Text(layout=widgets.Layout(width="20em"), style={"description_width": "6em"})
        t.bind(self.register_name, "description", "models.col.name")
        t.bind(self.register_name, "placeholder", "models.register_name_placeholder")
        self.register_button = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(self.register_button, "description", "models.register")
        self.register_button.on_click(lambda _b: self.context.runner.spawn(self._register(), status=self.status,
                                                                           busy=[self.register_button]))

        filters = widgets.VBox([
            widgets.HBox([self.type_filter, self.dataset_filter, self.status_filter]),
            widgets.HBox([self.name_filter, self.wer_min, self.wer_max, refresh]),
        ])
        self.children = [heading(t, "models.filters"), filters, self.status, self.count, self.table,
                         heading(t, "models.details"), self.details, self.actions,
                         heading(t, "models.register_heading"),
                         widgets.HBox([self.register_run, self.register_name, self.register_button],
                                      layout=widgets.Layout())]
        context.on_changed("models", self.reload)
        context.on_changed("runs", self._reload_runs_soon)
        t.on_change(self._render_rows)
        t.on_change(self._render_details)

    # ------------------------------------------------------------------ loading

    def reload(self) -> None:
        self.context.runner.spawn(self._reload(), status=self.status)

    def _reload_runs_soon(self) -> None:
        self.context.runner.spawn(self._reload_runs(), status=self.status)

    async def _reload(self) -> None:
        params = self.filter.to_params()
        models = await call(self.context.client.list_models, **params)
        self.models = {m.name: m.model_dump() for m in models}
        if self.status.kind == "error":
            self.status.clear()
        self._render_rows()
        self._render_details()
        await self._reload_datasets()
        await self._reload_runs()

    async def _reload_datasets(self) -> None:
        # Every model's dataset, not only the filtered ones, so a narrow filter can be widened again.
        models = await call(self.context.client.list_models)
        names = sorted({m.dataset for m in models if m.dataset})
        current = self.dataset_filter.value
        options = [(self.messages.t("common.all"), ALL)] + [(name, name) for name in names]
        if current and current not in names:
            options.append((current, current))
        replace_options(self.dataset_filter, options)

    async def _reload_runs(self) -> None:
        runs = await call(self.context.client.list_runs)
        options = [(f"{r.run_id} · {self.messages.t(f'state.{r.state}')}", r.run_id)
                   for r in runs if r.state in REGISTRABLE_STATES]
        replace_options(self.register_run, options)

    def _filters_changed(self) -> None:
        try:
            self.filter = replace(
                self.filter, model_type=self.type_filter.value or ALL, dataset=self.dataset_filter.value or ALL,
                status=self.status_filter.value or ALL, name_contains=self.name_filter.value,
                wer_min_percent=parse_percent(self.wer_min.value, "wer_min"),
                wer_max_percent=parse_percent(self.wer_max.value, "wer_max"))
            self.filter.to_params()
        except ValueError as err:
            self.status.show_problem(describe_error(err))
            return
        self.reload()

    def _sort(self, key: str) -> None:
        self.filter = self.filter.toggled_sort(key)
        self.table.sort = (self.filter.sort, self.filter.descending)
        self.reload()

    # ------------------------------------------------------------------ rendering

    def _render_rows(self) -> None:
        self.table.set_rows([model_row(m, self.messages) for m in self.models.values()])
        self.count.value = html.escape(self.messages.t("models.count", count=len(self.models)))

    def _selected(self, name: str | None) -> None:
        self.confirm.hide()
        self._render_details()

    def _render_details(self) -> None:
        name = self.table.selected
        model = self.models.get(name) if name else None
        if model is None:
            self.details.value = f"<i>{html.escape(self.messages.t('models.select_hint'))}</i>"
            self.actions.layout.display = "none"
            return
        self.actions.layout.display = "flex"
        self.unload_button.layout.display = "inline-flex" if model.get("loaded") else "none"
        self.new_name.value = model["name"]
        lineage = " ← ".join(f"{item.get('run_id', '?')}/{item.get('checkpoint', '?')}"
                             for item in model.get("lineage") or []) or EMPTY
        exports = ", ".join(sorted(model.get("exports") or {})) or EMPTY
        rows = [
            ("models.col.name", model["name"]), ("models.detail.path", model["path"]),
            ("models.detail.run", model.get("run_id") or EMPTY), ("models.detail.checkpoint", model.get("checkpoint")
                                                                  or EMPTY),
            ("models.col.type", model.get("model_type") or EMPTY), ("models.col.preset", model.get("preset") or EMPTY),
            ("models.col.dataset", model.get("dataset") or EMPTY),
            ("models.col.step", format_count(model.get("step"))),
            ("models.detail.epoch", format_count(model.get("epoch"))),
            ("models.col.cer", format_percent(model.get("cer"))), ("models.col.wer", format_percent(model.get("wer"))),
            ("models.detail.valid_loss", format_number(model.get("valid_loss"))),
            ("models.detail.parameters", format_count(model.get("parameters"))),
            ("models.col.size", format_bytes(model.get("size"))),
            ("models.detail.sha256", model.get("sha256") or EMPTY),
            ("models.col.created", format_timestamp(model.get("created"))),
            ("models.detail.lineage", lineage), ("models.detail.exports", exports),
            ("models.detail.loaded", self.messages.t("common.yes" if model.get("loaded") else "common.no")),
        ]
        self.details.value = details_html(self.messages, rows)

    # ------------------------------------------------------------------ actions

    def _ask_delete(self) -> None:
        name = self.table.selected
        if name is None:
            return
        self.confirm.ask("models.confirm_delete", lambda: self.context.runner.spawn(
            self._delete(name), status=self.status, busy=[self.delete_button]), name=name)

    async def _delete(self, name: str) -> None:
        await call(self.context.client.delete_model, name)
        self.status.show("models.deleted", kind="success", name=name)
        self.table.select(None)
        self.context.changed("models")

    async def _rename(self) -> None:
        name = self.table.selected
        new_name = self.new_name.value.strip()
        if name is None or not new_name or new_name == name:
            return
        await call(self.context.client.rename_model, name, new_name)
        self.status.show("models.renamed", kind="success", name=name, new_name=new_name)
        self.context.changed("models")
        self.table.select(new_name)

    async def _unload(self) -> None:
        name = self.table.selected
        if name is None:
            return
        await call(self.context.client.unload_model, name)
        self.status.show("models.unloaded", kind="success", name=name)
        self.context.changed("models")

    async def _register(self) -> None:
        run_id = self.register_run.value
        if not run_id:
            self.status.show("models.error.no_run", kind="warning")
            return
        name = self.register_name.value.strip() or None
        model = await call(self.context.client.register_model, run_id, name=name)
        self.status.show("models.registered", kind="success", name=model.name, run_id=run_id)
        self.register_name.value = ""
        self.context.changed("models")
