"""The whole job flow through the API with real training processes.

start a run -> step events on /ws -> stop -> resume in a new run -> completed -> register the
model -> transcribe with it -> delete it, with the conflicts that guard each step.
"""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from asrlib.client import ApiError, AsrClient

SMALL_RUN = {"data.max_clips": 6, "data.valid_fraction": 0.0, "data.test_fraction": 0.0,
             "training.max_batch_seconds": 20.0, "training.log_every": 1, "training.eval_every": 0,
             "training.warmup_steps": 5, "training.checkpoint_every": 2}


def _events_until(socket, done, timeout_s: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    events: list[dict] = []
    while not done(events):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; events so far: {[e.get('event') for e in events]}")
        events.append(json.loads(socket.recv(timeout=remaining)))
    return events


def _steps(events: list[dict]) -> list[int]:
    return [e["step"] for e in events if e.get("event") == "step"]


def _final(events: list[dict]) -> str | None:
    finals = [e["event"] for e in events if e.get("event") in ("completed", "stopped", "failed")]
    return finals[-1] if finals else None


def test_train_stop_resume_register_transcribe(client: AsrClient, ljspeech_mini, api_server):
    dataset = str(ljspeech_mini)
    first = client.start_run(preset="tiny", dataset=dataset, overrides={**SMALL_RUN, "training.max_steps": 5000},
                             run_id="flow-first")
    assert first.state in ("queued", "running")

    with connect(client.events_url(runs=[first.run_id])) as socket:
        assert json.loads(socket.recv(timeout=10))["event"] == "subscribed"
        events = _events_until(socket, lambda ev: len(_steps(ev)) >= 3 and any(e["event"] == "checkpoint" for e in ev))
        assert events[0]["channel"] == f"run:{first.run_id}"
        assert "started" in [e["event"] for e in events]
        assert _steps(events)[:3] == [1, 2, 3]

        # One run at a time (jobs.max_concurrent_runs: 1, on_limit: reject).
        with pytest.raises(ApiError) as error:
            client.start_run(preset="tiny", dataset=dataset, overrides=SMALL_RUN)
        assert error.value.status == 409
        # Checkpoints of an active run cannot be deleted.
        written = next(e for e in events if e["event"] == "checkpoint")
        with pytest.raises(ApiError) as error:
            client.delete_checkpoint(first.run_id, written["path"].rsplit("/", 1)[1])
        assert error.value.status == 409
        with pytest.raises(ApiError) as error:
            client.register_model(first.run_id)
        assert error.value.status == 409

        assert client.stop_run(first.run_id).state == "stopping"
        events += _events_until(socket, lambda ev: _final(ev) is not None)
    assert _final(events) == "stopped", events[-5:]
    # State events are snapshots of status.json per poll, so a short `stopping` may be missed.
    assert [e["state"] for e in events if e["event"] == "state"][:1] in (["queued"], ["running"])
    stopped = client.get_run(first.run_id)
    assert stopped.state == "stopped"
    with pytest.raises(ApiError) as error:
        client.stop_run(first.run_id)
    assert error.value.status == 409

    checkpoint = stopped.checkpoint.rsplit("/", 1)[1]
    second = client.start_run(preset="tiny", dataset=dataset, run_id="flow-second",
                              overrides={**SMALL_RUN, "training.max_steps": stopped.step + 4},
                              resume_from={"run_id": first.run_id, "checkpoint": checkpoint})
    # The resume source stays in use while the new run is queued or running.
    with pytest.raises(ApiError) as error:
        client.delete_checkpoint(first.run_id, checkpoint)
    assert error.value.status == 409, client.get_run(second.run_id)

    with connect(client.events_url(runs=second.run_id)) as socket:
        socket.recv(timeout=10)
        resumed = _events_until(socket, lambda ev: _final(ev) is not None)
    assert _final(resumed) == "completed", resumed[-3:]
    assert _steps(resumed)[0] == stopped.step + 1, resumed[:5]
    done = client.get_run(second.run_id)
    assert done.step == stopped.step + 4
    assert done.parent and done.parent.endswith(f"{first.run_id}/{checkpoint}")
    events_page = client.run_events(second.run_id, event="step")
    assert [e["step"] for e in events_page.events] == _steps(resumed)
    assert client.run_events(second.run_id, offset=events_page.next_offset).events == []

    model = client.register_model(second.run_id, name="flow-model")
    assert model.step == stopped.step + 4
    assert [entry["run_id"] for entry in model.lineage] == [second.run_id, first.run_id]
    wav = ljspeech_mini / "wavs" / "LJ001-0002.wav"
    result = client.transcribe(wav, "flow-model")
    assert result.model == "flow-model"
    assert result.duration > 0
    with pytest.raises(ApiError) as error:
        client.delete_model("flow-model")
    assert error.value.status == 409
    client.unload_model("flow-model")
    client.delete_model("flow-model")
    assert "flow-model" not in [m.name for m in client.list_models()]

    # Nothing is active any more, so checkpoints can go.
    client.delete_checkpoint(first.run_id, checkpoint)
    assert client.health().active_runs == []
