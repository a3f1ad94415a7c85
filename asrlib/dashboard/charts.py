"""Live bqplot charts of loss, learning rate and validation CER/WER, one line per run and series.

Events add points to a `CurveStore`. A flush scheduled shortly after the first new point sends
only the series that changed to the browser, so a burst of events costs one update per series
and a quiet run costs nothing.
"""

from __future__ import annotations

import asyncio
import html
import logging
from typing import Any

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from asrlib.dashboard.curves import CHARTS, SERIES_CHART, CurveStore
from asrlib.dashboard.i18n import Messages

log = logging.getLogger(__name__)

FLUSH_DELAY_S = 0.25  # events that arrive within this window go to the browser together
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22")
LINE_STYLES = {"train_loss": "solid", "valid_loss": "dashed", "lr": "solid", "cer": "solid", "wer": "dashed"}
MARKERS = {"valid_loss": "circle", "cer": "circle", "wer": "square"}  # eval points are sparse: show each one
TICK_FORMATS = {"loss": ".3~g", "lr": ".0e", "error": ".0%"}  # d3-format strings of the y axes
LOG_FLOOR = 1e-6  # the loss axis is logarithmic, so values at or below zero are drawn here
EMPTY_LOG_DOMAIN = (0.1, 10.0)  # the loss axis until the first point; then it follows the data


class LiveCharts(widgets.VBox):
    def __init__(self, messages: Messages) -> None:
        self._messages = messages
        self.store = CurveStore()
        self.marks: dict[tuple[str, str], bq.Lines] = {}
        self.visible_runs: set[str] | None = None  # None shows every run
        self._colors: dict[str, str] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self.figures: dict[str, bq.Figure] = {}
        self._x_scales: dict[str, bq.LinearScale] = {}
        self._y_scales: dict[str, bq.Scale] = {}
        for chart in CHARTS:
            self.figures[chart] = self._make_figure(chart)
        # The legend is HTML under the charts: run ids are too long for bqplot's legend box.
        self.legend = widgets.HTML()
        self.legend.add_class("asr-chart-legend")
        grid = widgets.GridBox(list(self.figures.values()),
                               layout=widgets.Layout(grid_template_columns="repeat(3, minmax(0, 1fr))", width="100%"))
        super().__init__([grid, self.legend], layout=widgets.Layout(width="100%"))
        self.add_class("asr-live-charts")
        self._messages.on_change(self._render_legend)
        self._render_legend()

    def _make_figure(self, chart: str) -> bq.Figure:
        x_scale = bq.LinearScale(min=0.0, allow_padding=False)
        if chart == "loss":
            # bqplot fails to draw a log axis over an empty domain, so it starts with a fixed one.
            y_scale: bq.Scale = bq.LogScale(min=EMPTY_LOG_DOMAIN[0], max=EMPTY_LOG_DOMAIN[1])
        else:
            # Learning rates and error rates start at zero; padding would draw negative ticks.
            y_scale = bq.LinearScale(min=0.0, allow_padding=False)
        x_axis = bq.Axis(scale=x_scale, num_ticks=5, tick_format=".6~g")
        y_axis = bq.Axis(scale=y_scale, side="left", num_ticks=5, tick_format=TICK_FORMATS[chart])
        self._messages.bind(x_axis, "label", "training.chart.step")
        figure = bq.Figure(axes=[x_axis, y_axis], marks=[], legend_location="top-right",
                           fig_margin={"top": 40, "bottom": 45, "left": 60, "right": 15},
                           layout=widgets.Layout(width="auto", height="300px"),
                           legend_style={"font-size": "11px"}, title_style={"font-size": "14px"})
        self._messages.bind(figure, "title", f"training.chart.{chart}")
        figure.add_class(f"asr-chart-{chart}")
        self._x_scales[chart] = x_scale
        self._y_scales[chart] = y_scale
        return figure

    # ------------------------------------------------------------------ data in

    def add_event(self, event: dict[str, Any], run_id: str | None = None) -> int:
        added = self.store.add_event(event, run_id)
        if added:
            self._schedule_flush()
        return added

    def add_events(self, events: list[dict[str, Any]], run_id: str | None = None) -> int:
        added = self.store.add_events(events, run_id)
        if added:
            self._schedule_flush()
        return added

    def show_runs(self, run_ids: set[str] | None) -> None:
        """Draw only these runs (None: all); the data of hidden runs is kept."""
        self.visible_runs = run_ids
        for (run_id, _series), mark in self.marks.items():
            mark.visible = run_ids is None or run_id in run_ids
        self._render_legend()

    def forget_run(self, run_id: str) -> None:
        self.store.forget_run(run_id)
        for key in [key for key in self.marks if key[0] == run_id]:
            mark = self.marks.pop(key)
            figure = self.figures[SERIES_CHART[key[1]]]
            figure.marks = [m for m in figure.marks if m is not mark]
        self._render_legend()

    def point_count(self, run_id: str, series: str) -> int:
        data = self.store.series.get((run_id, series))
        return len(data.steps) if data else 0

    # ------------------------------------------------------------------ drawing

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (unit tests, plain scripts): draw at once
            self.flush()
            return
        if self._flush_handle is None:
            self._flush_handle = loop.call_later(FLUSH_DELAY_S, self.flush)

    def flush(self) -> None:
        """Send the series that gained points to the browser."""
        self._flush_handle = None
        for key in sorted(self.store.take_dirty()):
            series = self.store.series.get(key)
            if series is None:
                continue
            steps = np.asarray(series.steps, dtype=float)
            values = np.asarray(series.values, dtype=float)
            if key[1] in CHARTS["loss"]:
                values = np.maximum(values, LOG_FLOOR)
                self._y_scales["loss"].min = None
                self._y_scales["loss"].max = None
            mark = self.marks.get(key)
            if mark is None:
                self._add_mark(*key, steps, values)
                continue
            with mark.hold_sync():
                mark.x = steps
                mark.y = values

    def _add_mark(self, run_id: str, series: str, steps: np.ndarray, values: np.ndarray) -> bq.Lines:
        # A mark starts with its first points: bqplot rejects the state of a line with empty arrays.
        chart = SERIES_CHART[series]
        new_run = run_id not in self._colors
        color = self._colors.setdefault(run_id, PALETTE[len(self._colors) % len(PALETTE)])
        mark = bq.Lines(x=steps, y=values, colors=[color], line_style=LINE_STYLES.get(series, "solid"),
                        marker=MARKERS.get(series), marker_size=24, stroke_width=1.8,
                        scales={"x": self._x_scales[chart], "y": self._y_scales[chart]},
                        visible=self.visible_runs is None or run_id in self.visible_runs)
        self.marks[(run_id, series)] = mark
        figure = self.figures[chart]
        figure.marks = [*figure.marks, mark]
        if new_run:
            self._render_legend()
        return mark

    def _render_legend(self) -> None:
        t = self._messages.t
        runs = [run for run in self._colors if self.visible_runs is None or run in self.visible_runs]
        swatches = "".join(
            f"<span class='asr-legend-run' data-run='{html.escape(run)}' style='margin-right:14px;"
            f"white-space:nowrap'><span class='asr-legend-swatch' style='display:inline-block;width:22px;"
            f"height:3px;background:{self._colors[run]};vertical-align:middle;margin-right:5px'></span>"
            f"{html.escape(run)}</span>" for run in runs)
        styles = t("training.legend_styles")
        self.legend.value = f"<div style='font-size:12px;color:#333'>{swatches}<br><i>{html.escape(styles)}</i></div>"
