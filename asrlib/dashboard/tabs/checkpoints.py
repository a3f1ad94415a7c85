"""Checkpoints tab: a run's checkpoints with details and lineage; resume from one; delete one."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from pathlib import PurePath
from typing import Any

import ipywidgets as widgets

from asrlib.client import ApiError
from asrlib.dashboard.context import Context
from asrlib.dashboard.curves import run_id_of
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

MAX_LINEAGE = 20  # parents followed at most; a longer chain is cut with "…"
COLUMNS = (
    Column("checkpoints.col.name", "name", "minmax(12em, 2fr)"),
    Column("checkpoints.col.step", "step", "6em", align="right"),
    Column("checkpoints.col.epoch", "epoch", "5em", align="right"),
    Column("checkpoints.col.loss", "loss", "6em", align="right"),
    Column("checkpoints.col.cer", "cer", "6em", align="right"),
    Column("checkpoints.col.wer", "wer", "6em", align="right"),
    Column("checkpoints.col.size", "size", "7em", align="right"),
    Column("checkpoints.col.created", "created", "9.5em"),
    Column("checkpoints.col.flags", "flags", "minmax(8em, 1fr)"),
)

ResumeCallback = Callable[[str, str], Awaitable[str]]


def checkpoint_flags(checkpoint: dict[str, Any], messages: Any) -> str:
    """Return the short flags of a checkpoint row: best, resumable, averaged, in use, invalid."""
    flags = [name for name, on in (("best", checkpoint.get("best")), ("resumable", checkpoint.get("resumable")),
                                   ("averaged", checkpoint.get("averaged")), ("in_use", checkpoint.get("in_use")),
                                   ("invalid", not checkpoint.get("valid", True))) if on]
    return ", ".join(messages.t(f"checkpoints.flag.{flag}") for flag in flags) or EMPTY


def checkpoint_row(checkpoint: dict[str, Any], messages: Any) -> dict[str, str]:
    metrics = checkpoint.get("metrics") or {}
    loss = metrics.get("valid_loss", metrics.get("loss"))
    return {
        "id": checkpoint["name"],
        "name": checkpoint["name"],
        "step": format_count(checkpoint.get("step")),
        "epoch": format_count(checkpoint.get("epoch")),
        "loss": format_number(loss),
        "cer": format_percent(metrics.get("cer")),
        "wer": format_percent(metrics.get("wer")),
        "size": format_bytes(checkpoint.get("size")),
        "created": format_timestamp(checkpoint.get("created")),
        "flags": checkpoint_flags(checkpoint, messages),
    }


def parent_reference(parent: str | None) -> tuple[str, str] | None:
    """Split a parent checkpoint path (…/RUN_ID/ckpt-N.pt) into (run id, file name)."""
    if not parent:
        return None
    path = PurePath(parent)
    if not path.name or not path.parent.name:
        return None
    return path.parent.name, path.name


class CheckpointsTab(widgets.VBox):
    def __init__(self, context: Context, resume: ResumeCallback) -> None:
        super().__init__()
        self.add_class("asr-tab-checkpoints")
        self.context = context
        self.messages = t = context.messages
        self.resume = resume
        self.status = StatusLine(t)
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.lineage: list[str] = []

        self.run = widgets.Dropdown(options=[], layout=widgets.Layout(width="36em"), style={"description_width": "6em"})
        self.run.add_class("asr-checkpoints-run")
        t.bind(self.run, "description", "training.run")
        self.run.observe(lambda _c: self.reload_checkpoints(), names="value")
        refresh = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(refresh, "description", "common.refresh")
        refresh.on_click(lambda _b: self.reload())
        self.table = SelectableTable(t, COLUMNS, on_select=self._selected, empty_key="checkpoints.empty",
                                     css_class="asr-checkpoints-table")
        self.details = widgets.HTML()
        self.resume_button = widgets.Button(button_style="primary", layout=widgets.Layout(width="10em"))
        self.resume_button.add_class("asr-checkpoint-resume")
        t.bind(self.resume_button, "description", "training.resume")
        self.resume_button.on_click(lambda _b: self.context.runner.spawn(self._resume(), status=self.status,
                                                                         busy=[self.resume_button]))
        self.delete_button = widgets.Button(button_style="danger", layout=widgets.Layout(width="8em"))
        self.delete_button.add_class("asr-checkpoint-delete")
        t.bind(self.delete_button, "description", "common.delete")
        self.delete_button.on_click(lambda _b: self._ask_delete())
        self.confirm = ConfirmBar(t)
        self.actions = widgets.VBox([widgets.HBox([self.resume_button, self.delete_button],
                                                  layout=widgets.Layout()), self.confirm],
                                    layout=widgets.Layout(display="none"))
        self.children = [widgets.HBox([self.run, refresh]), self.status, self.table,
                         heading(t, "checkpoints.details"), self.details, self.actions]
        context.on_changed("runs", self.reload)
        context.on_changed("checkpoints", self.reload)
        context.events.subscribe("run:", self._on_event)
        t.on_change(self._render)
        t.on_change(self._render_run_options)
        self._runs: list[dict[str, Any]] = []
        self._render()

    # ------------------------------------------------------------------ loading

    def reload(self) -> None:
        self.context.runner.spawn(self._reload(), status=self.status)

    async def _reload(self) -> None:
        runs = await call(self.context.client.list_runs)
        self._runs = [r.model_dump() for r in runs]
        self._render_run_options()

    def _render_run_options(self) -> None:
        options = [(f"{run['run_id']} · {self.messages.t('state.' + run['state'])}", run["run_id"])
                   for run in self._runs]
        current = self.run.value
        replace_options(self.run, options)
        if self.run.value is not None and self.run.value == current:
            self.reload_checkpoints()  # the value did not change, so its observer did not reload

    def reload_checkpoints(self) -> None:
        run_id = self.run.value
        if run_id is None:
            self.checkpoints = {}
            self._render()
            return
        self.context.runner.spawn(self._reload_checkpoints(run_id), status=self.status)

    async def _reload_checkpoints(self, run_id: str) -> None:
        checkpoints = await call(self.context.client.list_checkpoints, run_id)
        if run_id != self.run.value:
            return  # the user picked another run meanwhile
        self.checkpoints = {c.name: c.model_dump() for c in checkpoints}
        self._render()

    def _on_event(self, event: dict[str, Any]) -> None:
        # A new checkpoint (or a pruned old one) of the run on screen: list it again.
        if event.get("event") in ("checkpoint", "completed", "stopped") and run_id_of(event) == self.run.value:
            self.reload_checkpoints()

    # ------------------------------------------------------------------ rendering

    def _render(self) -> None:
        self.table.empty_key = "checkpoints.empty" if self.run.value else "checkpoints.no_run"
        self.table.set_rows([checkpoint_row(c, self.messages) for c in self.checkpoints.values()])
        self._render_details()

    def _selected(self, _name: str | None) -> None:
        self.confirm.hide()
        self.lineage = []
        self._render_details()
        name = self.table.selected
        if name is not None and self.run.value is not None:
            self.context.runner.spawn(self._load_lineage(self.run.value, name), status=self.status)

    async def _load_lineage(self, run_id: str, name: str) -> None:
        """Follow `parent` from checkpoint to checkpoint across runs, for the details panel."""
        chain: list[str] = []
        current = (self.checkpoints.get(name) or {}).get("parent")
        while current and len(chain) < MAX_LINEAGE:
            reference = parent_reference(current)
            if reference is None:
                chain.append(current)
                break
            chain.append(f"{reference[0]}/{reference[1]}")
            try:
                parent = await call(self.context.client.get_checkpoint, *reference)
            except ApiError:
                break  # the parent was deleted or lies outside the checkpoints folder
            current = parent.parent
        if current and len(chain) >= MAX_LINEAGE:
            chain.append("…")
        if self.table.selected == name and self.run.value == run_id:
            self.lineage = chain
            self._render_details()

    def _render_details(self) -> None:
        name = self.table.selected
        checkpoint = self.checkpoints.get(name) if name else None
        if checkpoint is None:
            self.details.value = f"<i>{html.escape(self.messages.t('checkpoints.select_hint'))}</i>"
            self.actions.layout.display = "none"
            return
        self.actions.layout.display = "flex"
        self.resume_button.disabled = not (checkpoint.get("resumable") and checkpoint.get("valid"))
        self.delete_button.disabled = bool(checkpoint.get("in_use"))
        metrics = ", ".join(f"{k} {format_number(v)}" for k, v in sorted((checkpoint.get("metrics") or {}).items()))
        yes_no = {True: self.messages.t("common.yes"), False: self.messages.t("common.no")}
        lineage = " ← ".join([f"{self.run.value}/{checkpoint['name']}", *self.lineage])
        rows = [
            ("checkpoints.col.name", checkpoint["name"]), ("checkpoints.detail.path", checkpoint["path"]),
            ("checkpoints.col.step", format_count(checkpoint.get("step"))),
            ("checkpoints.col.epoch", format_count(checkpoint.get("epoch"))),
            ("checkpoints.detail.metrics", metrics or EMPTY),
            ("checkpoints.col.size", format_bytes(checkpoint.get("size"))),
            ("checkpoints.detail.sha256", checkpoint.get("sha256") or EMPTY),
            ("checkpoints.col.created", format_timestamp(checkpoint.get("created"))),
            ("checkpoints.detail.valid", yes_no[bool(checkpoint.get("valid"))]
             + (f" ({checkpoint['problem']})" if checkpoint.get("problem") else "")),
            ("checkpoints.flag.resumable", yes_no[bool(checkpoint.get("resumable"))]),
            ("checkpoints.flag.best", yes_no[bool(checkpoint.get("best"))]),
            ("checkpoints.flag.averaged", yes_no[bool(checkpoint.get("averaged"))]),
            ("checkpoints.flag.in_use", yes_no[bool(checkpoint.get("in_use"))]),
            ("checkpoints.detail.lineage", lineage),
        ]
        self.details.value = details_html(self.messages, rows)

    # ------------------------------------------------------------------ actions

    async def _resume(self) -> None:
        run_id, name = self.run.value, self.table.selected
        if run_id is None or name is None:
            return
        new_run = await self.resume(run_id, name)
        self.status.show("training.resumed", kind="success", run_id=new_run, checkpoint=name)

    def _ask_delete(self) -> None:
        run_id, name = self.run.value, self.table.selected
        if run_id is None or name is None:
            return
        self.confirm.ask("checkpoints.confirm_delete", lambda: self.context.runner.spawn(
            self._delete(run_id, name), status=self.status, busy=[self.delete_button]), name=name, run_id=run_id)

    async def _delete(self, run_id: str, name: str) -> None:
        await call(self.context.client.delete_checkpoint, run_id, name)
        self.status.show("checkpoints.deleted", kind="success", name=name)
        self.table.select(None)
        self.reload_checkpoints()
