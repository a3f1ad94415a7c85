"""Training tab: start, resume and stop runs; progress with ETA; live loss, learning-rate and CER/WER curves."""

from __future__ import annotations

import asyncio
import html
from typing import Any

import ipywidgets as widgets

from asrlib.dashboard.charts import LiveCharts
from asrlib.dashboard.context import Context
from asrlib.dashboard.curves import FINAL_STATES, RunProgress, run_id_of
from asrlib.dashboard.formatting import EMPTY, format_duration, format_timestamp
from asrlib.dashboard.i18n import Lazy
from asrlib.dashboard.runform import RunForm, resume_request
from asrlib.dashboard.selection import replace_options
from asrlib.dashboard.tasks import call
from asrlib.dashboard.ui import StatusLine, heading

ACTIVE_STATES = ("queued", "running", "stopping")
FIELD_STYLE = {"description_width": "12em"}
FIELD_LAYOUT = widgets.Layout(width="24em")


class TrainingTab(widgets.VBox):
    def __init__(self, context: Context) -> None:
        super().__init__()
        self.add_class("asr-tab-training")
        self.context = context
        self.messages = context.messages
        self.runs: dict[str, dict[str, Any]] = {}  # run id -> RunResponse as a dict, newest first
        self.progress: dict[str, RunProgress] = {}
        self._history_loaded: set[str] = set()
        self._reload_task: asyncio.Task[None] | None = None
        self._resumable: list[tuple[str, int | None]] = []  # (file name, step) of the selected run, newest first
        self.status = StatusLine(self.messages)
        self.charts = LiveCharts(self.messages)

        form = self._build_form()
        runs_panel = self._build_runs_panel()
        top = widgets.HBox([form, runs_panel], layout=widgets.Layout(align_items="flex-start",
                                                                     flex_flow="row wrap"))
        self.overlay = widgets.SelectMultiple(rows=4, layout=widgets.Layout(width="40em"))
        self.overlay.add_class("asr-overlay-runs")
        self.messages.bind(self.overlay, "description", "training.overlay")
        self.overlay.style.description_width = "11em"
        self.overlay.observe(self._overlay_changed, names="value")
        self.children = [top, self.status, heading(self.messages, "training.curves"), self.overlay, self.charts]

        context.events.subscribe("run:", self._on_event)
        context.events.on_connected(self.reload)
        context.on_changed("runs", self.reload)
        self.messages.on_change(self._render_progress)
        self.messages.on_change(self._render_run_options)
        self.messages.on_change(self._render_resume_options)

    # ------------------------------------------------------------------ layout

    def _build_form(self) -> widgets.Widget:
        settings = self.context.settings
        t = self.messages
        self.model_type = widgets.ToggleButtons(options=list(settings.model_types), style={"button_width": "8em"})
        self.model_type.add_class("asr-model-type")
        self.dataset = widgets.Dropdown(options=[], style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.dataset.add_class("asr-dataset")
        self.preset = widgets.Dropdown(options=[], style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.preset.add_class("asr-preset")
        self.model_type.observe(lambda _c: self._fill_presets(), names="value")
        self._fill_presets()

        default = settings.training_default
        self.max_steps = widgets.BoundedIntText(value=default("max_steps"), min=1, max=10_000_000,
                                                style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.max_steps.add_class("asr-max-steps")
        self.lr = widgets.BoundedFloatText(value=default("lr"), min=0.0, max=1.0, step=1e-4,
                                           style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.warmup_steps = widgets.BoundedIntText(value=default("warmup_steps"), min=0, max=10_000_000,
                                                   style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.max_batch_seconds = widgets.BoundedFloatText(value=default("max_batch_seconds"), min=0.0, max=1e5,
                                                          style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.eval_every = widgets.BoundedIntText(value=default("eval_every"), min=0, max=10_000_000,
                                                 style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.eval_every.add_class("asr-eval-every")
        self.checkpoint_every = widgets.BoundedIntText(value=default("checkpoint_every"), min=0, max=10_000_000,
                                                       style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.log_every = widgets.BoundedIntText(value=default("log_every"), min=1, max=100_000,
                                                style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.log_every.add_class("asr-log-every")
        self.max_clips = widgets.BoundedIntText(value=0, min=0, max=10_000_000, style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.max_clips.add_class("asr-max-clips")
        self.precision = widgets.Dropdown(options=list(settings.precisions), value=default("precision"),
                                          style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.device = widgets.Dropdown(options=["auto", "cpu", "cuda"], value=_known(default("device"),
                                       ("auto", "cpu", "cuda")), style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.run_name = widgets.Text(style=FIELD_STYLE, layout=FIELD_LAYOUT)
        self.run_name.add_class("asr-run-name")

        for widget, key in ((self.model_type, "training.model_type"), (self.dataset, "training.dataset"),
                            (self.preset, "training.preset"), (self.max_steps, "training.max_steps"),
                            (self.lr, "training.lr"), (self.warmup_steps, "training.warmup_steps"),
                            (self.max_batch_seconds, "training.max_batch_seconds"),
                            (self.eval_every, "training.eval_every"),
                            (self.checkpoint_every, "training.checkpoint_every"),
                            (self.log_every, "training.log_every"), (self.max_clips, "training.max_clips"),
                            (self.precision, "training.precision"), (self.device, "training.device"),
                            (self.run_name, "training.run_name")):
            t.bind(widget, "description", key)
        t.bind(self.run_name, "placeholder", "training.run_name_placeholder")
        self.model_type.style.description_width = "11em"

        self.start_button = widgets.Button(button_style="primary", layout=widgets.Layout(width="12em"))
        self.start_button.add_class("asr-start")
        t.bind(self.start_button, "description", "training.start")
        self.start_button.on_click(lambda _b: self.context.runner.spawn(self._start(), status=self.status,
                                                                        busy=[self.start_button]))

        advanced = widgets.VBox([self.warmup_steps, self.max_batch_seconds, self.checkpoint_every, self.precision,
                                 self.device])
        more = widgets.Accordion([advanced], selected_index=None)
        # Accordion titles are set per child index, not through a trait that `bind` could set.
        self.messages.on_change(lambda: more.set_title(0, self.messages.t("training.advanced")))
        more.set_title(0, self.messages.t("training.advanced"))
        return widgets.VBox([heading(t, "training.new_run"), self.model_type, self.dataset, self.preset,
                             self.max_steps, self.lr, self.eval_every, self.log_every, self.max_clips, self.run_name,
                             more, self.start_button], layout=widgets.Layout(width="28em"))

    def _build_runs_panel(self) -> widgets.Widget:
        t = self.messages
        self.run_select = widgets.Dropdown(options=[], layout=widgets.Layout(width="34em"),
                                           style={"description_width": "6em"})
        self.run_select.add_class("asr-run-select")
        t.bind(self.run_select, "description", "training.run")
        self.run_select.observe(lambda _c: self._current_changed(), names="value")
        self.refresh_button = widgets.Button(layout=widgets.Layout(width="8em"))
        t.bind(self.refresh_button, "description", "common.refresh")
        self.refresh_button.on_click(lambda _b: self.reload())
        self.stop_button = widgets.Button(button_style="danger", disabled=True, layout=widgets.Layout(width="8em"))
        self.stop_button.add_class("asr-stop")
        t.bind(self.stop_button, "description", "training.stop")
        self.stop_button.on_click(lambda _b: self.context.runner.spawn(self._stop(), status=self.status,
                                                                       busy=[self.stop_button]))
        self.progress_bar = widgets.FloatProgress(value=0, min=0, max=1, layout=widgets.Layout(width="34em"))
        self.progress_bar.add_class("asr-progress")
        self.progress_text = widgets.HTML()
        self.progress_text.add_class("asr-progress-text")
        self.run_details = widgets.HTML()

        self.resume_checkpoint = widgets.Dropdown(options=[], layout=widgets.Layout(width="26em"),
                                                  style={"description_width": "9em"})
        self.resume_checkpoint.add_class("asr-resume-checkpoint")
        t.bind(self.resume_checkpoint, "description", "training.resume_from")
        self.resume_steps = widgets.BoundedIntText(value=0, min=0, max=10_000_000, layout=widgets.Layout(width="16em"),
                                                   style={"description_width": "9em"})
        t.bind(self.resume_steps, "description", "training.max_steps")
        self.resume_button = widgets.Button(layout=widgets.Layout(width="8em"))
        self.resume_button.add_class("asr-resume")
        t.bind(self.resume_button, "description", "training.resume")
        self.resume_button.on_click(lambda _b: self.context.runner.spawn(self._resume(), status=self.status,
                                                                         busy=[self.resume_button]))
        resume = widgets.VBox([heading(t, "training.resume_heading"), self.resume_checkpoint,
                               widgets.HBox([self.resume_steps, self.resume_button])])
        return widgets.VBox([heading(t, "training.runs"), widgets.HBox([self.run_select, self.refresh_button]),
                             self.progress_bar, self.progress_text, self.stop_button, self.run_details, resume],
                            layout=widgets.Layout(min_width="36em"))

    def _fill_presets(self) -> None:
        settings = self.context.settings
        model_type = self.model_type.value
        options = list(settings.presets.get(model_type, ()))
        # tiny first: a first run from the page should finish on a CPU.
        preferred = "tiny" if "tiny" in options else settings.default_presets.get(model_type)
        replace_options(self.preset, options, preferred)

    # ------------------------------------------------------------------ loading

    def reload(self) -> None:
        self.context.runner.spawn(self._reload(), status=self.status)

    def _reload_once(self) -> None:
        """Reload unless a reload started by an event is still running (events come in bursts)."""
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = self.context.runner.spawn(self._reload(), status=self.status)

    async def _reload(self) -> None:
        client = self.context.client
        runs = await call(client.list_runs)
        datasets = await call(client.list_datasets)
        self.runs = {run.run_id: run.model_dump() for run in runs}
        for run in runs:
            progress = self.progress.setdefault(run.run_id, RunProgress(run.run_id))
            progress.state = run.state
            progress.step = max(progress.step, run.step)
            progress.max_steps = run.max_steps or progress.max_steps
            progress.epoch = run.epoch if run.epoch is not None else progress.epoch
            progress.error = run.error
        present = [d.name for d in datasets if d.present]
        replace_options(self.dataset, present, self.context.settings.default_dataset)
        self._render_run_options()
        if not self.overlay.value:
            self.overlay.value = tuple(self._default_overlay())
        for run_id in self.overlay.value:
            await self._load_history(run_id, force=True)
        self._current_changed()

    def _default_overlay(self) -> list[str]:
        active = [run_id for run_id, run in self.runs.items() if run["state"] in ACTIVE_STATES]
        return active or list(self.runs)[:1]

    async def _load_history(self, run_id: str, *, force: bool = False) -> None:
        if run_id in self._history_loaded and not force:
            return
        response = await call(self.context.client.run_events, run_id)
        progress = self.progress.setdefault(run_id, RunProgress(run_id))
        for event in response.events:
            progress.update(event)
        self.charts.add_events(response.events, run_id)
        self._history_loaded.add(run_id)
        if run_id == self.run_select.value:
            self._render_progress()

    def _render_run_options(self) -> None:
        options = [(self._run_label(run), run_id) for run_id, run in self.runs.items()]
        overlay = tuple(v for v in self.overlay.value if v in self.runs)
        active = [run_id for run_id, run in self.runs.items() if run["state"] in ACTIVE_STATES]
        replace_options(self.run_select, options, active[0] if active else None)
        self.overlay.options = [(run_id, run_id) for run_id in self.runs]
        self.overlay.value = overlay

    def _run_label(self, run: dict[str, Any]) -> str:
        state = self.messages.t(f"state.{run['state']}")
        return f"{run['run_id']} · {state}"

    # ------------------------------------------------------------------ events

    def _on_event(self, event: dict[str, Any]) -> None:
        run_id = run_id_of(event)
        if run_id is None:
            return
        progress = self.progress.setdefault(run_id, RunProgress(run_id))
        progress.update(event)
        self.charts.add_event(event, run_id)
        kind = event.get("event")
        known = run_id in self.runs
        if known and progress.state:
            self.runs[run_id]["state"] = progress.state
            self.runs[run_id]["step"] = progress.step
        if not known:
            self._reload_once()  # a run started elsewhere (another page, the CLI through the API)
        elif kind in ("state", *FINAL_STATES):
            self._render_run_options()
        if kind in FINAL_STATES:
            self.context.changed("checkpoints")
        if run_id == self.run_select.value:
            self._render_progress()
            if kind in ("checkpoint", *FINAL_STATES):
                self.context.runner.spawn(self._load_checkpoints(run_id), status=self.status)
            if kind in FINAL_STATES:
                level = {"completed": "success", "stopped": "info", "failed": "error"}[kind]
                self.status.show("training.ended", kind=level, run_id=run_id, state=Lazy(f"state.{kind}"))

    def _overlay_changed(self, change: dict[str, Any]) -> None:
        visible_runs = set(change["new"])
        self.charts.show_runs(visible_runs)
        for run_id in visible_runs - self._history_loaded:
            self.context.runner.spawn(self._load_history(run_id), status=self.status)

    def _current_changed(self) -> None:
        run_id = self.run_select.value
        self._render_progress()
        if run_id is not None:
            self.context.runner.spawn(self._load_checkpoints(run_id), status=self.status)

    async def _load_checkpoints(self, run_id: str) -> None:
        checkpoints = await call(self.context.client.list_checkpoints, run_id)
        self._resumable = [(c.name, c.step) for c in reversed(checkpoints) if c.valid and c.resumable]
        self._render_resume_options()
        run = self.runs.get(run_id) or {}
        self.resume_steps.value = int(run.get("max_steps") or 0)

    def _render_resume_options(self) -> None:
        t = self.messages.t
        replace_options(self.resume_checkpoint,
                        [(f"{name} · {t('training.step_short', step=step)}", name) for name, step in self._resumable])

    def _render_progress(self) -> None:
        run_id = self.run_select.value
        run = self.runs.get(run_id) if run_id else None
        if run is None:
            self.progress_bar.value = 0
            self.progress_text.value = html.escape(self.messages.t("training.no_run"))
            self.stop_button.disabled = True
            self.run_details.value = ""
            return
        progress = self.progress.setdefault(run_id, RunProgress(run_id))
        state = progress.state or run["state"]
        max_steps = progress.max_steps or run.get("max_steps")
        self.progress_bar.max = max(1, max_steps or 1)
        self.progress_bar.value = min(progress.step, self.progress_bar.max)
        self.progress_bar.bar_style = {"completed": "success", "failed": "danger", "stopped": "warning"}.get(state, "")
        text = self.messages.t(
            "training.progress", step=progress.step, max_steps=max_steps if max_steps else EMPTY,
            epoch=progress.epoch if progress.epoch is not None else EMPTY, eta=format_duration(progress.eta_s),
            state=self.messages.t(f"state.{state}"))
        self.progress_text.value = f"<span data-state='{html.escape(state)}'>{html.escape(text)}</span>"
        self.stop_button.disabled = state not in ("queued", "running")
        details = [self.messages.t("training.details", model_type=run.get("model_type") or EMPTY,
                                   preset=run.get("preset") or EMPTY, dataset=run.get("dataset") or EMPTY,
                                   created=format_timestamp(run.get("created")))]
        error = progress.error or run.get("error")
        if error:
            details.append(f"<span style='color:#a61b1b'>{html.escape(error)}</span>")
        self.run_details.value = "<br>".join(d if d.startswith("<span") else html.escape(d) for d in details)

    # ------------------------------------------------------------------ actions

    def form(self) -> RunForm:
        return RunForm(
            model_type=self.model_type.value, dataset=self.dataset.value, preset=self.preset.value,
            max_steps=self.max_steps.value, lr=self.lr.value, warmup_steps=self.warmup_steps.value,
            max_batch_seconds=self.max_batch_seconds.value, eval_every=self.eval_every.value,
            checkpoint_every=self.checkpoint_every.value, log_every=self.log_every.value,
            precision=self.precision.value, device=self.device.value, max_clips=self.max_clips.value,
            run_name=self.run_name.value,
        )

    async def _start(self) -> None:
        request = self.form().to_request()
        self.status.show("training.starting")
        run = await call(self.context.client.start_run, **request)
        await self._adopt(run.model_dump())
        self.status.show("training.started", kind="success", run_id=run.run_id)

    async def _resume(self) -> None:
        run_id = self.run_select.value
        checkpoint = self.resume_checkpoint.value
        if run_id is None or checkpoint is None:
            self.status.show("training.error.no_checkpoint", kind="warning")
            return
        request = resume_request(self.runs[run_id], checkpoint, self.resume_steps.value or None)
        run = await call(self.context.client.start_run, **request)
        await self._adopt(run.model_dump())
        self.status.show("training.resumed", kind="success", run_id=run.run_id, checkpoint=checkpoint)

    async def resume_from(self, run_id: str, checkpoint: str) -> str:
        """Resume `run_id` from `checkpoint` (used by the Checkpoints tab); return the new run's id."""
        run = self.runs.get(run_id) or (await call(self.context.client.get_run, run_id)).model_dump()
        request = resume_request(run, checkpoint, None)
        new_run = await call(self.context.client.start_run, **request)
        await self._adopt(new_run.model_dump())
        return new_run.run_id

    async def _adopt(self, run: dict[str, Any]) -> None:
        """Show a run this page just started: select it, overlay it and follow its events."""
        run_id = run["run_id"]
        self.runs = {run_id: run, **{k: v for k, v in self.runs.items() if k != run_id}}
        progress = self.progress.setdefault(run_id, RunProgress(run_id))
        progress.state = run["state"]
        progress.max_steps = run.get("max_steps") or progress.max_steps
        self._render_run_options()
        self.run_select.value = run_id
        self.overlay.value = tuple(dict.fromkeys([run_id, *self.overlay.value]))
        self.context.changed("checkpoints")
        # Events that reached /ws before this page knew the run are in its metrics history.
        await self._load_history(run_id, force=True)

    async def _stop(self) -> None:
        run_id = self.run_select.value
        if run_id is None:
            return
        run = await call(self.context.client.stop_run, run_id)
        self.runs[run_id] = run.model_dump()
        self.progress.setdefault(run_id, RunProgress(run_id)).state = run.state
        self._render_run_options()
        self._render_progress()
        self.status.show("training.stopping", run_id=run_id)


def _known(value: str, choices: tuple[str, ...]) -> str:
    return value if value in choices else choices[0]
