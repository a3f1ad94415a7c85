"""Small widgets shared by the tabs: a status line, a table with row selection, a confirmation bar."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from asrlib.dashboard.backend import Problem
from asrlib.dashboard.i18n import Messages

STATUS_COLORS = {"info": "#1f4e79", "success": "#1e6b2e", "error": "#a61b1b", "warning": "#8a5a00"}
MAX_TABLE_ROWS = 200  # more rows would create thousands of widgets; the filters narrow a longer list


class StatusLine(widgets.HTML):
    """One line of feedback: a catalog message (re-translated on a language change) or the API's text."""

    def __init__(self, messages: Messages, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_class("asr-status")
        self._messages = messages
        self._current: tuple[str, Problem] | None = None
        messages.on_change(self._render)

    def show(self, key: str, kind: str = "info", **params: Any) -> None:
        self._current = (kind, Problem(key, params))
        self._render()

    def show_problem(self, problem: Problem) -> None:
        self._current = ("error", problem)
        self._render()

    def clear(self) -> None:
        self._current = None
        self._render()

    @property
    def kind(self) -> str | None:
        return self._current[0] if self._current else None

    def _render(self) -> None:
        if self._current is None:
            self.value = ""
            return
        kind, problem = self._current
        text = html.escape(problem.render(self._messages))
        self.value = f'<div class="asr-status-{kind}" style="color:{STATUS_COLORS[kind]}">{text}</div>'


@dataclass(frozen=True)
class Column:
    """A table column: header message key, the row field it shows, and the API sort key if sortable."""

    title_key: str
    field: str
    width: str = "auto"
    sort_key: str | None = None
    align: str = "left"


class SelectableTable(widgets.VBox):
    """A grid of text cells with one selectable row; sortable column headers call `on_sort(sort_key)`.

    Rows are dicts of display strings plus an "id" that `on_select` receives.
    """

    def __init__(self, messages: Messages, columns: Sequence[Column], *, on_select: Callable[[str | None], None],
                 on_sort: Callable[[str], None] | None = None, empty_key: str = "table.empty",
                 css_class: str = "") -> None:
        super().__init__()
        self.add_class("asr-table")
        if css_class:
            self.add_class(css_class)
        self._messages = messages
        self.columns = list(columns)
        self.on_select = on_select
        self.on_sort = on_sort
        self.empty_key = empty_key
        self.rows: list[dict[str, str]] = []
        self.selected: str | None = None
        self.sort: tuple[str, bool] | None = None  # (sort key, descending) shown as an arrow
        self._grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=" ".join(["2.2em", *(c.width for c in self.columns)]),
            grid_gap="0px 6px", align_items="center", width="100%"))
        self._footer = widgets.HTML()
        self.children = [self._grid, self._footer]
        messages.on_change(self._render)
        self._render()

    def set_rows(self, rows: list[dict[str, str]], *, keep_selection: bool = True) -> None:
        self.rows = rows
        ids = {row["id"] for row in rows}
        if not keep_selection or self.selected not in ids:
            previous, self.selected = self.selected, None
            if previous is not None:
                self.on_select(None)
        self._render()

    def select(self, row_id: str | None) -> None:
        self.selected = row_id
        self._render()
        self.on_select(row_id)

    def _render(self) -> None:
        cells: list[widgets.Widget] = [widgets.HTML("")]
        for column in self.columns:
            cells.append(self._header(column))
        for row in self.rows[:MAX_TABLE_ROWS]:
            chosen = row["id"] == self.selected
            toggle = widgets.ToggleButton(value=chosen, description="●" if chosen else "○",
                                          tooltip=self._messages.t("table.select"),
                                          layout=widgets.Layout(width="2em", height="1.8em", padding="0"))
            toggle.add_class("asr-row-select")
            toggle.observe(lambda change, row_id=row["id"]: self._toggled(row_id, change["new"]), names="value")
            cells.append(toggle)
            for column in self.columns:
                text = html.escape(str(row.get(column.field, "")))
                weight = "font-weight:600;" if chosen else ""
                cells.append(widgets.HTML(f'<div style="text-align:{column.align};{weight}white-space:nowrap;'
                                          f'overflow:hidden;text-overflow:ellipsis" title="{text}">{text}</div>'))
        previous = self._grid.children
        self._grid.children = cells
        for cell in previous:
            cell.close()  # a replaced cell would otherwise stay registered in the kernel until the page closes
        if not self.rows:
            self._footer.value = f"<i>{html.escape(self._messages.t(self.empty_key))}</i>"
        elif len(self.rows) > MAX_TABLE_ROWS:
            self._footer.value = html.escape(self._messages.t("table.truncated", shown=MAX_TABLE_ROWS,
                                                              total=len(self.rows)))
        else:
            self._footer.value = ""

    def _header(self, column: Column) -> widgets.Widget:
        title = self._messages.t(column.title_key)
        if column.sort_key is None or self.on_sort is None:
            return widgets.HTML(f"<b>{html.escape(title)}</b>")
        if self.sort and self.sort[0] == column.sort_key:
            title += " ▼" if self.sort[1] else " ▲"
        button = widgets.Button(description=title, tooltip=self._messages.t("table.sort"),
                                layout=widgets.Layout(width="auto", height="1.9em"))
        button.style.font_weight = "bold"
        button.on_click(lambda _b, key=column.sort_key: self.on_sort(key))
        return button

    def _toggled(self, row_id: str, value: bool) -> None:
        if value:
            self.select(row_id)
        elif row_id == self.selected:
            self.select(None)


class ConfirmBar(widgets.HBox):
    """An inline "are you sure?" row that runs its action only after a second, explicit click."""

    def __init__(self, messages: Messages) -> None:
        self._messages = messages
        self._text = widgets.HTML()
        self.confirm_button = widgets.Button(button_style="danger")
        self.cancel_button = widgets.Button()
        messages.bind(self.cancel_button, "description", "common.cancel")
        super().__init__([self._text, self.confirm_button, self.cancel_button],
                         layout=widgets.Layout(display="none", align_items="center"))
        self.add_class("asr-confirm")
        self._action: Callable[[], None] | None = None
        self._prompt: tuple[str, dict[str, Any], str] | None = None
        self.confirm_button.on_click(self._confirmed)
        self.cancel_button.on_click(lambda _b: self.hide())
        messages.on_change(self._render)

    def ask(self, key: str, action: Callable[[], None], *, confirm_key: str = "common.delete", **params: Any) -> None:
        self._prompt = (key, params, confirm_key)
        self._action = action
        self._render()
        self.layout.display = "flex"

    def hide(self) -> None:
        self._action = None
        self._prompt = None
        self.layout.display = "none"

    def _render(self) -> None:
        if self._prompt is None:
            return
        key, params, confirm_key = self._prompt
        self._text.value = f"<b>{html.escape(self._messages.t(key, **params))}</b>"
        self.confirm_button.description = self._messages.t(confirm_key)

    def _confirmed(self, _button: widgets.Button) -> None:
        action = self._action
        self.hide()
        if action is not None:
            action()


def heading(messages: Messages, key: str) -> widgets.HTML:
    widget = widgets.HTML()

    def render() -> None:
        widget.value = f"<h3 style='margin:4px 0'>{html.escape(messages.t(key))}</h3>"

    render()
    messages.on_change(render)
    return widget


def details_html(messages: Messages, rows: Sequence[tuple[str, str]]) -> str:
    """Render (message key, value) pairs as a two-column definition table."""
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:12px;font-weight:600'>{html.escape(messages.t(key))}</th>"
        f"<td style='word-break:break-all'>{html.escape(value)}</td></tr>"
        for key, value in rows
    )
    return f"<table class='asr-details'>{body}</table>"
