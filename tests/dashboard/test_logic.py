"""Pure logic of the dashboard: event to curve points, progress and ETA, filters, forms, formatting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asrlib.dashboard.audioview import waveform_envelope
from asrlib.dashboard.backend import Problem, backend_url, describe_detail, describe_error
from asrlib.dashboard.curves import CurvePoint, CurveStore, RunProgress, estimate_eta, points_from_event, run_id_of
from asrlib.dashboard.errors import FormError
from asrlib.dashboard.filters import ModelFilter, parse_percent
from asrlib.dashboard.formatting import (
    EMPTY,
    format_bytes,
    format_duration,
    format_number,
    format_percent,
)
from asrlib.dashboard.i18n import Messages
from asrlib.dashboard.realtime import Transcript, asr_url
from asrlib.dashboard.runform import RunForm, resume_request
from asrlib.dashboard.tabs.checkpoints import parent_reference
from asrlib.dashboard.tabs.datasets import progress_text
from asrlib.dashboard.tabs.realtime import pcm16_chunks

STEP = {"event": "step", "run_id": "r1", "step": 20, "epoch": 1, "loss": 2.5, "lr": 1e-4, "time": 100.0}
EVAL = {"event": "eval", "run_id": "r1", "step": 500, "valid_loss": 1.5, "cer": 0.2, "wer": 0.4}


# ---------------------------------------------------------------- event -> curve points

def test_step_event_gives_loss_and_lr():
    assert points_from_event(STEP) == [CurvePoint("r1", "train_loss", 20, 2.5), CurvePoint("r1", "lr", 20, 1e-4)]


def test_eval_event_gives_valid_loss_cer_wer():
    points = points_from_event(EVAL)
    assert [(p.series, p.chart, p.value) for p in points] == [
        ("valid_loss", "loss", 1.5), ("cer", "error", 0.2), ("wer", "error", 0.4)]


@pytest.mark.parametrize("event", [
    {"event": "checkpoint", "run_id": "r1", "step": 5},
    {"event": "state", "run_id": "r1", "state": "running"},
    {"event": "step", "run_id": "r1", "loss": 1.0},  # no step
    {"event": "step", "step": 3, "loss": 1.0},  # no run
    {"event": "step", "run_id": "r1", "step": True, "loss": 1.0},  # a bool is not a step
])
def test_events_without_points(event):
    assert points_from_event(event) == []


def test_nonfinite_values_are_skipped():
    points = points_from_event({**STEP, "loss": math.nan, "lr": math.inf})
    assert points == []


def test_run_id_from_channel():
    assert run_id_of({"channel": "run:abc", "event": "step"}) == "abc"
    assert run_id_of({"channel": "dataset:demo"}) is None


def test_store_appends_in_step_order_and_drops_repeats():
    store = CurveStore()
    assert store.add_event(STEP) == 2
    assert store.add_event(STEP) == 0  # the same event again from /ws replay or history
    assert store.add_event({**STEP, "step": 10}) == 0  # older than the last point
    assert store.add_event({**STEP, "step": 30, "loss": 2.0}) == 2
    assert store.series[("r1", "train_loss")].steps == [20, 30]
    assert store.series[("r1", "train_loss")].values == [2.5, 2.0]


def test_store_reports_dirty_series_once():
    store = CurveStore()
    store.add_event(STEP)
    store.add_event(EVAL)
    assert store.take_dirty() == {("r1", s) for s in ("train_loss", "lr", "valid_loss", "cer", "wer")}
    assert store.take_dirty() == set()


def test_store_overlays_runs():
    store = CurveStore()
    store.add_event(STEP)
    store.add_event({**STEP, "run_id": "r2"})
    assert store.runs() == ["r1", "r2"]
    store.forget_run("r1")
    assert store.runs() == ["r2"]


# ---------------------------------------------------------------- progress and ETA

def test_progress_follows_events():
    progress = RunProgress("r1")
    progress.update({"event": "started", "step": 0, "epoch": 0, "max_steps": 100, "time": 0.0})
    for step, when in ((10, 10.0), (20, 20.0), (30, 30.0)):
        progress.update({"event": "step", "step": step, "epoch": 0, "time": when})
    assert progress.state == "running"
    assert progress.fraction == pytest.approx(0.3)
    assert progress.eta_s == pytest.approx(70.0)  # one step per second, 70 steps left
    progress.update({"event": "stopped", "step": 31, "epoch": 0})
    assert progress.state == "stopped"
    assert progress.eta_s is None


def test_progress_state_event_carries_error():
    progress = RunProgress("r1")
    progress.update({"event": "state", "state": "failed", "error": "killed"})
    assert (progress.state, progress.error) == ("failed", "killed")


@pytest.mark.parametrize(("samples", "step", "max_steps", "expected"), [
    ([], 0, 100, None),
    ([(0.0, 0)], 0, 100, None),
    ([(0.0, 10), (10.0, 10)], 10, 100, None),  # no progress
    ([(0.0, 0), (5.0, 10)], 10, 100, 45.0),
    ([(0.0, 0), (5.0, 10)], 10, None, None),
    ([(0.0, 0), (5.0, 10)], 120, 100, 0.0),
])
def test_estimate_eta(samples, step, max_steps, expected):
    assert estimate_eta(samples, step, max_steps) == expected


# ---------------------------------------------------------------- model filters

def test_filter_defaults_give_sorted_list():
    assert ModelFilter().to_params() == {"type": None, "dataset": None, "status": None, "name_contains": None,
                                         "wer_min": None, "wer_max": None, "sort": "created", "descending": True}


def test_filter_maps_fields_and_percentages():
    params = ModelFilter(model_type="realtime", dataset="ljspeech", status="completed", name_contains="  tiny ",
                         wer_min_percent=5, wer_max_percent=25.5).to_params()
    assert params["type"] == "realtime"
    assert params["dataset"] == "ljspeech"
    assert params["status"] == "completed"
    assert params["name_contains"] == "tiny"
    assert params["wer_min"] == pytest.approx(0.05)
    assert params["wer_max"] == pytest.approx(0.255)


def test_filter_rejects_inverted_wer_range():
    with pytest.raises(FormError) as error:
        ModelFilter(wer_min_percent=30, wer_max_percent=10).to_params()
    assert error.value.key == "models.filter.wer_range_invalid"


def test_filter_rejects_unknown_sort():
    with pytest.raises(FormError):
        ModelFilter(sort="loss").to_params()


def test_header_click_toggles_and_switches_sort():
    first = ModelFilter(sort="created", descending=True)
    assert first.toggled_sort("created").descending is False
    by_wer = first.toggled_sort("wer")
    assert (by_wer.sort, by_wer.descending) == ("wer", False)  # best first
    assert first.toggled_sort("size").descending is True


@pytest.mark.parametrize(("text", "expected"), [("", None), ("  ", None), ("12.5", 12.5), ("12,5 %", 12.5),
                                                 ("0", 0.0)])
def test_parse_percent(text, expected):
    assert parse_percent(text, "wer_min") == expected


@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf"])
def test_parse_percent_rejects(text):
    with pytest.raises(FormError):
        parse_percent(text, "wer_max")


# ---------------------------------------------------------------- run form

FORM = RunForm(model_type="conformer", dataset="ljspeech", preset="tiny", max_steps=300, lr=1e-3, warmup_steps=10,
               max_batch_seconds=40.0, eval_every=100, checkpoint_every=100, log_every=5, precision="fp32",
               device="cpu", max_clips=10, run_name="")


def test_run_form_request():
    request = FORM.to_request()
    assert request["model_type"] == "conformer"
    assert request["dataset"] == "ljspeech"
    assert request["preset"] == "tiny"
    assert request["run_id"] is None
    assert request["overrides"]["training.max_steps"] == 300
    assert request["overrides"]["data.max_clips"] == 10
    assert request["overrides"]["training.log_every"] == 5


def test_run_form_all_clips_sets_no_limit():
    from dataclasses import replace

    assert "data.max_clips" not in replace(FORM, max_clips=0).to_request()["overrides"]


@pytest.mark.parametrize(("change", "key"), [
    ({"dataset": None}, "training.error.no_dataset"),
    ({"max_steps": 0}, "training.error.too_small"),
    ({"lr": 0.0}, "training.error.positive"),
    ({"run_name": "../escape"}, "training.error.run_name"),
])
def test_run_form_rejects(change, key):
    from dataclasses import replace

    with pytest.raises(FormError) as error:
        replace(FORM, **change).to_request()
    assert error.value.key == key


def test_resume_request_keeps_model_type():
    request = resume_request({"run_id": "r1", "model_type": "realtime"}, "ckpt-0000100.pt", 500)
    assert request == {"model_type": "realtime", "resume_from": {"run_id": "r1", "checkpoint": "ckpt-0000100.pt"},
                       "overrides": {"training.max_steps": 500}}


# ---------------------------------------------------------------- formatting

@pytest.mark.parametrize(("value", "expected"), [(None, EMPTY), (512, "512 B"), (2048, "2.0 KiB"),
                                                 (5 * 1024**2, "5.0 MiB"), (3 * 1024**3, "3.0 GiB")])
def test_format_bytes(value, expected):
    assert format_bytes(value) == expected


@pytest.mark.parametrize(("value", "expected"), [(None, EMPTY), (-1, EMPTY), (math.nan, EMPTY), (65, "1:05"),
                                                 (3725, "1:02:05")])
def test_format_duration(value, expected):
    assert format_duration(value) == expected


def test_format_percent_and_number():
    assert format_percent(0.1234) == "12.3 %"
    assert format_percent(None) == EMPTY
    assert format_number(2.34567) == "2.346"
    assert format_number(0.0001234) == "1.234e-04"
    assert format_number(1200) == "1,200"


def test_progress_text_bytes():
    messages = Messages("en")
    text = progress_text({"phase": "download", "done": 1024**2, "total": 4 * 1024**2, "unit": "B",
                          "rate_per_s": 1024**2, "eta_s": 3}, messages)
    assert text == "download · 1.0 MiB / 4.0 MiB · 1.0 MiB/s · ETA 0:03"


def test_progress_text_counts():
    messages = Messages("ja")
    text = progress_text({"phase": "validate", "done": 5, "total": 10, "unit": "clip"}, messages)
    assert text == "検証 · 5 clip / 10 clip"


# ---------------------------------------------------------------- errors

def test_backend_url_from_environment():
    assert backend_url({}) == "http://127.0.0.1:58081"
    assert backend_url({"BACKEND_HOST": "asr-api", "BACKEND_PORT": "8000"}) == "http://asr-api:8000"
    assert backend_url({"BACKEND_HOST": "::1"}) == "http://[::1]:58081"
    with pytest.raises(ValueError, match="BACKEND_PORT"):
        backend_url({"BACKEND_PORT": "http"})


def test_api_detail_shown_as_is():
    from asrlib.client import ApiError

    problem = describe_error(ApiError(409, "run limit reached; wait for run r1"))
    assert problem == Problem(text="run limit reached; wait for run r1")


def test_validation_detail_is_one_line():
    detail = [{"loc": ["body", "overrides", "training.lr"], "msg": "not a number", "type": "x"}]
    assert describe_detail(detail) == "overrides.training.lr: not a number"


def test_connection_error_is_translated():
    import httpx

    problem = describe_error(httpx.ConnectError("refused"), "http://127.0.0.1:1")
    assert problem.render(Messages("en")).startswith("Cannot reach the API at http://127.0.0.1:1")
    assert problem.render(Messages("ja")).startswith("API (http://127.0.0.1:1) に接続できません")


def test_unexpected_error_has_no_traceback():
    text = describe_error(KeyError("x")).render(Messages("en"))
    assert "Traceback" not in text
    assert "KeyError" in text


# ---------------------------------------------------------------- realtime and audio helpers

def test_transcript_partials_then_final():
    transcript = Transcript()
    transcript.apply({"type": "partial", "text": "hel", "utterance": 0})
    transcript.apply({"type": "partial", "text": "hello wor", "utterance": 0})
    assert (transcript.final_text, transcript.partial_text) == ("", "hello wor")
    transcript.apply({"type": "final", "text": "hello world", "utterance": 0, "latency_ms": 120})
    transcript.apply({"type": "partial", "text": "hello", "utterance": 0})  # late partial
    transcript.apply({"type": "partial", "text": "again", "utterance": 1})
    assert transcript.final_text == "hello world"
    assert transcript.partial_text == "again"
    assert transcript.last_latency_ms == 120
    assert not transcript.apply({"type": "ready"})


def test_asr_url():
    assert asr_url("http://127.0.0.1:58081") == "ws://127.0.0.1:58081/ws/asr"
    assert asr_url("https://host/base/") == "wss://host/base/ws/asr"


def test_pcm16_chunks():
    chunks = pcm16_chunks(np.array([0.0, 1.0, -1.0, 0.5, 2.0], dtype=np.float32), 2)
    assert [len(c) for c in chunks] == [4, 4, 2]
    values = np.frombuffer(b"".join(chunks), dtype="<i2")
    assert values.tolist() == [0, 32767, -32768, 16383, 32767]


def test_waveform_envelope():
    samples = np.sin(np.linspace(0, 20 * np.pi, 16000)).astype(np.float32)
    times, low, high = waveform_envelope(samples, 16000, points=100)
    assert len(times) == len(low) == len(high) == 100
    assert times[0] > 0
    assert times[-1] < 1.0
    assert low.min() == pytest.approx(-1.0, abs=1e-3)
    assert high.max() == pytest.approx(1.0, abs=1e-3)


def test_parent_reference():
    assert parent_reference("/data/checkpoints/run-a/ckpt-0000100.pt") == ("run-a", "ckpt-0000100.pt")
    assert parent_reference(None) is None
    assert parent_reference("") is None
