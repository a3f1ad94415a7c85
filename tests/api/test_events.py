"""The event hub, the /ws protocol, and dataset operations whose progress streams over /ws."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from asrlib.api.events import QUEUE_SIZE, EventHub, channel_matches
from asrlib.api.tasks import DatasetTasks, TaskConflict
from asrlib.client import ApiError, AsrClient

SUBSET = ["LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ001-0004", "LJ001-0005"]


# --------------------------------------------------------------------- the hub


def test_history_bounded_per_channel():
    hub = EventHub(history=200)
    for step in range(250):
        hub.publish("run:a", {"event": "step", "step": step})
    hub.publish("run:b", {"event": "step", "step": 0})
    stored = hub.recent(frozenset({"run:a"}))
    assert len(stored) == 200
    assert stored[0]["step"] == 50
    assert stored[-1]["step"] == 249
    assert [m["channel"] for m in hub.recent(frozenset({"run:b"}))] == ["run:b"]


def test_late_subscriber_gets_replay():
    hub = EventHub(history=10)
    for step in range(5):
        hub.publish("run:a", {"event": "step", "step": step})
    hub.publish("dataset:x", {"event": "progress"})
    subscription = hub.subscribe(frozenset({"run:a"}), replay=3)
    replayed = [subscription.queue.get_nowait()["step"] for _ in range(subscription.queue.qsize())]
    assert replayed == [2, 3, 4]
    hub.publish("run:a", {"event": "step", "step": 5})
    hub.publish("run:other", {"event": "step", "step": 9})
    assert subscription.queue.get_nowait()["step"] == 5
    assert subscription.queue.empty()


def test_resubscribe_replays_new_channels_only():
    hub = EventHub()
    hub.publish("run:a", {"event": "step"})
    hub.publish("dataset:x", {"event": "progress"})
    subscription = hub.subscribe(frozenset({"run:a"}), replay=10)
    subscription.queue.get_nowait()
    hub.resubscribe(subscription, frozenset({"run:a", "dataset:*"}), replay=10)
    assert subscription.queue.get_nowait()["channel"] == "dataset:x"
    assert subscription.queue.empty()


def test_slow_subscriber_drops_oldest():
    hub = EventHub(history=10)
    subscription = hub.subscribe(frozenset({"*"}), replay=0)
    for step in range(QUEUE_SIZE + 5):
        hub.publish("run:a", {"event": "step", "step": step})
    assert subscription.dropped == 5
    assert subscription.queue.get_nowait()["step"] == 5


def test_channel_patterns():
    assert channel_matches(frozenset({"*"}), "run:a")
    assert channel_matches(frozenset({"run:*"}), "run:a")
    assert not channel_matches(frozenset({"run:*"}), "dataset:a")
    assert channel_matches(frozenset({"dataset:a"}), "dataset:a")
    assert not channel_matches(frozenset({"dataset:a"}), "dataset:ab")


# --------------------------------------------------------------------- /ws and dataset operations


@pytest.fixture(scope="module")
def subset_folder(tmp_path_factory, ljspeech_mini: Path) -> Path:
    """Five real clips in LJSpeech layout, to import quickly."""
    folder = tmp_path_factory.mktemp("subset") / "mini5"
    (folder / "wavs").mkdir(parents=True)
    lines = [line for line in (ljspeech_mini / "metadata.csv").read_text(encoding="utf-8").splitlines()
             if line.split("|", 1)[0] in SUBSET]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for clip in SUBSET:
        shutil.copy(ljspeech_mini / "wavs" / f"{clip}.wav", folder / "wavs" / f"{clip}.wav")
    return folder


def _read_until(socket, final_events: set[str], timeout_s: float = 60) -> list[dict]:
    events = []
    while True:
        event = json.loads(socket.recv(timeout=timeout_s))
        events.append(event)
        if event.get("event") in final_events:
            return events


@pytest.fixture(scope="module")
def import_events(api_server, subset_folder: Path) -> list[dict]:
    """Import the subset as dataset `mini5` through the API; return the events /ws delivered."""
    with AsrClient(api_server.base_url) as api, connect(api.events_url(datasets=["mini5"], replay=0)) as socket:
        hello = json.loads(socket.recv(timeout=10))
        assert hello == {"event": "subscribed", "channels": ["dataset:mini5"]}
        task = api.import_dataset("mini5", str(subset_folder))
        assert task.state == "running"
        assert task.operation == "import"
        return _read_until(socket, {"completed", "failed"})


def test_import_progress_over_ws(client: AsrClient, import_events: list[dict]):
    events = import_events
    assert events[0]["event"] == "started"
    assert events[-1]["event"] == "completed", events[-1]
    assert all(e["channel"] == "dataset:mini5" for e in events)
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["phase"] for e in progress} >= {"validate"}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

    dataset = client.get_dataset("mini5")
    assert dataset.present
    assert dataset.clips == len(SUBSET)
    assert dataset.task is not None and dataset.task.state == "completed"
    assert "mini5" in [d.name for d in client.list_datasets()]


def test_late_subscriber_replay_over_ws(client: AsrClient, import_events: list[dict]):
    late = list(_take(client.events(datasets="mini5", timeout_s=10), len(import_events) + 1))
    assert late[0]["event"] == "subscribed"
    assert [e["seq"] for e in late[1:]] == [e["seq"] for e in import_events]


def _take(iterator, count: int):
    yield from itertools.islice(iterator, count)
    iterator.close()


def test_validate_over_ws(client: AsrClient, import_events: list[dict]):
    with connect(client.events_url(datasets="mini5", replay=0)) as socket:
        socket.recv(timeout=10)
        task = client.validate_dataset("mini5")
        assert task.operation == "validate"
        events = _read_until(socket, {"completed", "failed"})
    assert events[-1]["event"] == "completed", events[-1]
    assert events[-1]["result"]


def test_validation_report_endpoint(client: AsrClient, import_events: list[dict]):
    report = client.dataset_report("mini5")
    assert report is not None
    assert report["num_clips"] == len(SUBSET)
    assert "split" in report
    with pytest.raises(ApiError) as error:
        client.dataset_report("no-such-dataset")
    assert error.value.status == 404


def test_dataset_tasks_one_at_a_time():
    tasks = DatasetTasks(EventHub())
    release = threading.Event()
    tasks.start("busy", "validate", lambda progress: release.wait(10))
    with pytest.raises(TaskConflict):
        tasks.start("busy", "import", lambda progress: None)
    release.set()
    assert tasks.wait("busy", timeout_s=10).state == "completed"
    assert tasks.start("busy", "import", lambda progress: None).operation == "import"


def test_dataset_errors(client: AsrClient, tmp_path: Path):
    with pytest.raises(ApiError) as error:
        client.download_dataset("no-such-dataset")
    assert error.value.status == 404
    with pytest.raises(ApiError) as error:
        client.download_dataset("demo")
    assert error.value.status == 400
    with pytest.raises(ApiError) as error:
        client.validate_dataset("ljspeech")  # in the catalog but not downloaded here
    assert error.value.status == 409
    with pytest.raises(ApiError) as error:
        client.import_dataset("from-nowhere", "/no/such/folder")
    assert error.value.status == 404
    (tmp_path / "empty").mkdir()
    with connect(client.events_url(datasets="not-a-dataset", replay=0)) as socket:
        socket.recv(timeout=10)
        client.import_dataset("not-a-dataset", str(tmp_path / "empty"))
        events = _read_until(socket, {"completed", "failed"}, timeout_s=30)
    assert events[-1]["event"] == "failed"
    assert "metadata.csv" in events[-1]["error"]
    assert client.get_dataset("ljspeech").task is None
    assert client.health().status == "ok"


def test_ws_rejects_invalid_subscription(client: AsrClient):
    with connect(client.events_url(runs="../x")) as socket:
        error = json.loads(socket.recv(timeout=10))
        assert error["event"] == "error"
        assert "../x" in error["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert closed.value.rcvd.code == 1008


def test_ws_subscribe_message(client: AsrClient, import_events: list[dict]):
    with connect(client.events_url(runs="nothing-yet", replay=0)) as socket:
        assert json.loads(socket.recv(timeout=10))["channels"] == ["run:nothing-yet"]
        socket.send("not json")
        assert json.loads(socket.recv(timeout=10))["event"] == "error"
        socket.send(json.dumps({"subscribe": {"datasets": ["mini5"]}, "replay": 2}))
        ack = json.loads(socket.recv(timeout=10))
        assert ack == {"event": "subscribed", "channels": ["dataset:mini5"]}
        replayed = [json.loads(socket.recv(timeout=10)) for _ in range(2)]
    assert all(e["channel"] == "dataset:mini5" for e in replayed)
    assert replayed[-1]["event"] in ("completed", "failed")
