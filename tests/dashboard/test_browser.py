"""The dashboard in real headless Chromium, served by a real Voila, talking to a real API."""

from __future__ import annotations

import time
from pathlib import Path

import jiwer
import pytest

from asrlib.client import AsrClient
from asrlib.dashboard.i18n import Messages
from asrlib.datasets.ljspeech import read_metadata
from asrlib.text import normalize_text
from tests.dashboard.conftest import PAGE_TIMEOUT_S, Backend, VoilaServer, has_route
from tests.dashboard.pages import TAB_ORDER, WIDGET_ERROR, DashboardPage, wait_until

# A text of each tab that only renders when the tab's widgets were built, in both languages.
TAB_MARKERS = {
    "training": "training.new_run",
    "inference": "inference.from_file",
    "realtime": "realtime.microphone",
    "models": "models.filters",
    "checkpoints": "checkpoints.details",
    "datasets": "datasets.import_heading",
}
POINTS_AFTER_EVENT_S = 10.0  # the loss curve must show a step event's point within this time
RUN_TIMEOUT_S = 240  # a tiny run's first steps on two busy CPU cores


@pytest.fixture
def dashboard(browser_context, voila_server: VoilaServer):
    page = DashboardPage.open(browser_context, voila_server.url, PAGE_TIMEOUT_S)
    yield page
    page.close()


@pytest.mark.parametrize("language", ["ja", "en"])
def test_every_tab_renders(dashboard: DashboardPage, language: str, artifacts: Path):
    messages = Messages(language)
    if language != "ja":  # config.yaml of the test API sets ja, so the page opens in Japanese
        dashboard.switch_language(language)
    assert dashboard.tab_titles() == [messages.t(f"tab.{name}") for name in TAB_ORDER]
    for name in TAB_ORDER:
        dashboard.open_tab(name)
        marker = messages.t(TAB_MARKERS[name])
        wait_until(lambda marker=marker, name=name: marker in dashboard.text(f".asr-tab-{name}"), 30,
                   f"{marker!r} in the {name} tab")
        dashboard.screenshot(artifacts / f"{language}-{name}.png")
        assert WIDGET_ERROR not in dashboard.body_text(), f"{name} tab in {language}"
    assert not [e for e in dashboard.console_errors if "Could not create a view" in e or "Error setting state" in e]


def test_language_switch_keeps_state(dashboard: DashboardPage):
    dashboard.fill_number("asr-max-steps", 1234)
    dashboard.switch_language("en")
    assert dashboard.page.locator(".asr-max-steps input").input_value() == "1234"
    assert "Start training" in dashboard.text(".asr-start")
    dashboard.switch_language("ja")
    assert "学習開始" in dashboard.text(".asr-start")


def _loss_points(dashboard: DashboardPage, run_id: str) -> int:
    """Count the points of `run_id`'s line on the loss chart, matching its colour in the legend."""
    return dashboard.page.evaluate(
        """(runId) => {
            const run = [...document.querySelectorAll('.asr-legend-run')].find(e => e.dataset.run === runId);
            if (!run) return 0;
            const color = getComputedStyle(run.querySelector('.asr-legend-swatch')).backgroundColor;
            let points = 0;
            for (const path of document.querySelectorAll('.asr-chart-loss path.line')) {
                if (getComputedStyle(path).stroke === color) {
                    points = Math.max(points, ((path.getAttribute('d') || '').match(/[ML]/g) || []).length);
                }
            }
            return points;
        }""", run_id)


def test_training_run_curves_and_stop(dashboard: DashboardPage, client: AsrClient, artifacts: Path):
    dashboard.switch_language("en")
    dashboard.fill_number("asr-max-steps", 400)
    dashboard.fill_number("asr-log-every", 1)
    dashboard.fill_number("asr-eval-every", 0)
    dashboard.fill_number("asr-max-clips", 3)
    before = {run.run_id for run in client.list_runs()}
    dashboard.page.click(".asr-start")

    run_id = wait_until(lambda: next((r.run_id for r in client.list_runs() if r.run_id not in before), None),
                        60, "the run started from the page")
    assert "tiny" in run_id

    # The time the API first has two step events, then the time the page draws them.
    wait_until(lambda: len(client.run_events(run_id, event="step").events) >= 2, RUN_TIMEOUT_S,
               f"two step events of {run_id}")
    events_seen = time.monotonic()
    wait_until(lambda: _loss_points(dashboard, run_id) >= 2, POINTS_AFTER_EVENT_S,
               f"two points of {run_id} on the loss curve")
    assert time.monotonic() - events_seen <= POINTS_AFTER_EVENT_S
    assert run_id in dashboard.text(".asr-run-select select option:checked")
    wait_until(lambda: "ETA" in dashboard.text(".asr-progress-text") and "step" in dashboard.text(
        ".asr-progress-text"), 30, "step, epoch and ETA in the progress text")
    dashboard.screenshot(artifacts / "en-training-live.png")

    dashboard.page.click(".asr-stop")
    wait_until(lambda: client.get_run(run_id).state == "stopped", 120, f"{run_id} to stop")
    wait_until(lambda: dashboard.page.locator(".asr-progress-text [data-state='stopped']").count(), 30,
               "the stopped state on the page")
    growth = _loss_points(dashboard, run_id)
    assert growth >= 2


def _expected_transcript(ljspeech_mini: Path, clip_id: str) -> str:
    corpus = read_metadata(ljspeech_mini)
    return normalize_text(next(c for c in corpus.clips if c.id == clip_id).text)


def test_upload_shows_transcript(trained_model: str, dashboard: DashboardPage, ljspeech_mini: Path,
                                 artifacts: Path):
    dashboard.switch_language("en")
    dashboard.open_tab("inference")
    dashboard.choose("asr-inference-model", trained_model)
    clip = "LJ001-0001"
    dashboard.upload("asr-upload", ljspeech_mini / "wavs" / f"{clip}.wav")
    wait_until(lambda: f"{clip}.wav" in dashboard.text(".asr-clip-info"), 30, "the uploaded clip")
    dashboard.page.click(".asr-transcribe")
    dashboard.page.wait_for_selector(".asr-transcript-text", timeout=120_000)
    transcript = dashboard.text(".asr-transcript-text")
    expected = _expected_transcript(ljspeech_mini, clip)
    assert jiwer.cer(expected, transcript) < 0.15, f"{transcript!r} vs {expected!r}"
    words = dashboard.page.locator(".asr-words tbody tr").count()
    assert words == len(transcript.split())
    envelope_points = wait_until(lambda: dashboard.page.evaluate(
        "() => Math.max(0, ...[...document.querySelectorAll('.asr-waveform path.line')]"
        ".map(p => ((p.getAttribute('d') || '').match(/L/g) || []).length))"), 30, "the waveform drawn")
    assert envelope_points > 100
    assert dashboard.page.locator(".asr-spectrogram").get_attribute("src")
    dashboard.screenshot(artifacts / "en-inference-result.png")


def test_realtime_microphone_partials(backend: Backend, request: pytest.FixtureRequest, browser_context,
                                      voila_server: VoilaServer, artifacts: Path):
    if not has_route(list(backend.app.routes), "/ws/asr"):
        pytest.skip("the API has no /ws/asr endpoint (asrlib.api.streaming is missing)")
    model = request.getfixturevalue("realtime_model")  # trained only when the endpoint exists
    dashboard = DashboardPage.open(browser_context, voila_server.url, PAGE_TIMEOUT_S)
    dashboard.switch_language("en")
    dashboard.open_tab("realtime")
    wait_until(lambda: "available" in dashboard.text(".asr-mic-support"), 30, "the microphone check")
    dashboard.choose("asr-realtime-model", model)
    dashboard.page.click(".asr-mic-button")
    partial = wait_until(lambda: dashboard.text(".asr-partial").strip(), 90, "partial text from the fake microphone")
    wait_until(lambda: dashboard.page.evaluate(
        "() => parseFloat(document.querySelector('.asr-mic-level').style.width || '0') > 0"), 10,
        "the level meter to move")
    time.sleep(4)  # two more passes of the looping clip
    dashboard.screenshot(artifacts / "en-realtime-live.png")
    dashboard.page.click(".asr-mic-button")
    final = wait_until(lambda: dashboard.text(".asr-final").strip(), 60, "final text after stop")
    dashboard.close()
    assert any(char.isalpha() for char in partial)
    # NOTE: the tiny realtime model of tests/test_streaming.py does not transcribe the clip exactly,
    # even from the file (about "nomparatively momparative"), so only the presence of text is checked.
    assert any(char.isalpha() for char in final)


def _select_row(dashboard: DashboardPage, table_class: str, row_id_text: str) -> None:
    """Click the selection button of the table row whose cells contain `row_id_text` (once selected, no click)."""
    dashboard.page.evaluate(
        """([tableClass, text]) => {
            const grid = document.querySelector('.' + tableClass + ' .widget-gridbox');
            const cells = grid ? [...grid.children] : [];
            const index = cells.findIndex(c => c.innerText.trim() === text);
            // The selection button is the first cell of the row: walk back to it.
            for (let i = index; i >= 0; i--) {
                if (cells[i].matches('.asr-row-select')) {
                    if (!cells[i].classList.contains('mod-active')) cells[i].click();
                    return;
                }
            }
            return false;  // not rendered yet; the caller waits and tries again
        }""", [table_class, row_id_text])


def test_dataset_validation_report(dashboard: DashboardPage, client: AsrClient, artifacts: Path):
    dashboard.switch_language("en")
    dashboard.open_tab("datasets")
    wait_until(lambda: "ljspeech" in dashboard.text(".asr-datasets-table"), 30, "the dataset table")
    _select_row(dashboard, "asr-datasets-table", "ljspeech")
    dashboard.page.click(".asr-validate")
    wait_until(lambda: dashboard.page.locator(".asr-dataset-progress .progress-bar-success").count(), 120,
               "the validation progress bar to complete")
    wait_until(lambda: "130" in dashboard.text(".asr-validation-summary"), 30, "the report's clip count")
    bars = wait_until(lambda: dashboard.page.locator(".asr-duration-histogram rect.bargroup, "
                                                     ".asr-duration-histogram .bargroup rect").count(), 30,
                      "bars of the duration histogram")
    assert bars >= 5  # the clips last 1.5 to 10 s, in 1 s bins
    visible = dashboard.page.evaluate("() => document.querySelector('.asr-duration-histogram')"
                                      ".getBoundingClientRect().height")
    assert visible > 100
    dashboard.screenshot(artifacts / "en-datasets-report.png")
    assert client.get_dataset("ljspeech").clips == 130


def test_dataset_import_with_progress(dashboard: DashboardPage, client: AsrClient, ljspeech_mini: Path):
    dashboard.switch_language("en")
    dashboard.open_tab("datasets")
    dashboard.page.locator(".asr-tab-datasets input[type=text]").nth(0).fill("mini-import")
    dashboard.page.locator(".asr-tab-datasets input[type=text]").nth(1).fill(str(ljspeech_mini))
    dashboard.page.locator(".asr-tab-datasets input[type=text]").nth(1).press("Tab")
    dashboard.page.select_option(".asr-tab-datasets select >> nth=0", "symlink")
    dashboard.page.click(".asr-tab-datasets button:has-text('Import')")
    wait_until(lambda: "mini-import" in dashboard.text(".asr-dataset-progress"), 30, "a progress row")
    wait_until(lambda: (client.get_dataset("mini-import").task or None) and
               client.get_dataset("mini-import").task.state == "completed", 180, "the import to complete")
    wait_until(lambda: "mini-import" in dashboard.text(".asr-datasets-table"), 30, "the imported dataset listed")


def test_models_filter_and_delete(trained_model: str, dashboard: DashboardPage, client: AsrClient,
                                  artifacts: Path):
    spare = client.register_model("dashboard-overfit", name="spare-model")
    dashboard.switch_language("en")
    dashboard.open_tab("models")
    dashboard.page.click(".asr-tab-models button:has-text('Refresh')")  # registered behind the page's back
    wait_until(lambda: "spare-model" in dashboard.text(".asr-models-table"), 30, "the spare model listed")
    name_filter = dashboard.page.locator(".asr-name-filter input")
    name_filter.fill("spare")
    name_filter.press("Enter")
    wait_until(lambda: trained_model not in dashboard.text(".asr-models-table"), 30, "the name filter")
    wer_max = dashboard.page.locator(".asr-wer-max input")
    wer_max.fill("abc")
    wer_max.press("Enter")
    wait_until(lambda: "Invalid wer_max abc" in dashboard.text(".asr-tab-models .asr-status"), 30,
               "the translated filter error")
    wer_max.fill("")
    wer_max.press("Enter")
    wait_until(lambda: "Invalid" not in dashboard.text(".asr-tab-models .asr-status"), 30,
               "the list reloaded without the WER bound")
    wait_until(lambda: _select_row(dashboard, "asr-models-table", spare.name) or
               "SHA-256" in dashboard.text(".asr-model-details"), 30, "the model details")
    dashboard.screenshot(artifacts / "en-models-details.png")
    dashboard.page.click(".asr-delete-model")
    wait_until(lambda: "Delete model spare-model?" in dashboard.text(".asr-confirm"), 30, "the confirmation")
    assert "spare-model" in {m.name for m in client.list_models()}  # nothing happens before the confirmation
    dashboard.page.click(".asr-confirm button:has-text('Delete')")
    wait_until(lambda: "spare-model" not in {m.name for m in client.list_models()}, 30, "the deletion")
    wait_until(lambda: "Deleted model spare-model" in dashboard.text(".asr-tab-models .asr-status"), 30,
               "the deletion message")


def test_checkpoint_details_and_lineage(trained_model: str, dashboard: DashboardPage, artifacts: Path):
    dashboard.switch_language("en")
    dashboard.open_tab("checkpoints")
    dashboard.choose("asr-checkpoints-run", "dashboard-overfit")
    wait_until(lambda: "ckpt-0000300.pt" in dashboard.text(".asr-checkpoints-table"), 30, "the checkpoint rows")
    details = wait_until(lambda: _select_row(dashboard, "asr-checkpoints-table", "ckpt-0000300.pt") or
                         dashboard.text(".asr-tab-checkpoints .asr-details"), 30, "the details")
    assert "dashboard-overfit/ckpt-0000300.pt" in details
    assert "resumable" in details.lower()
    dashboard.screenshot(artifacts / "en-checkpoints-details.png")
