"""WebSocket /ws: run events and dataset progress, with recent history replayed on subscribe.

Choosing channels, either in the query string or later in a JSON message:

* `/ws` receives every channel; `/ws?runs=ID1,ID2&datasets=ljspeech` only those;
  `runs=*` or `datasets=*` means every run or every dataset. Naming only `runs` leaves datasets out.
* `replay=N` (default: api.event_history) sends up to N recent events per channel first; 0 none.
* A message `{"subscribe": {"runs": ["ID"], "datasets": "*"}, "replay": 50}` replaces the
  channels; the history of newly added channels is replayed. `{"subscribe": "*"}` means all.

The server confirms each subscription with `{"event": "subscribed", "channels": [...]}`, then sends
event objects with `channel` and `seq`. `{"event": "dropped", "count": N}` reports that N events were
discarded because the client read too slowly. An invalid request gets `{"event": "error",
"detail": ...}`; an invalid query string also closes the socket with code 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from asrlib.api.events import WILDCARD, EventHub, Subscription
from asrlib.api.state import ApiState
from asrlib.training.runs import validate_run_id

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])


def parse_channels(runs: Any, datasets: Any) -> frozenset[str]:
    """Build channel patterns from run ids and dataset names (lists, comma-separated text or '*')."""
    if runs is None and datasets is None:
        return frozenset({WILDCARD})
    patterns: set[str] = set()
    for kind, value in (("run", runs), ("dataset", datasets)):
        if value is None:
            continue
        names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{kind}s: expected a list of names, a comma-separated string or '*', got {value!r}")
        for name in filter(None, names):
            if name != WILDCARD:
                validate_run_id(name)  # dataset names follow the same rule: no '/', no '..'
            patterns.add(f"{kind}:{name}")
    return frozenset(patterns)


async def _send_events(websocket: WebSocket, subscription: Subscription) -> None:
    while True:
        message = await subscription.queue.get()
        if subscription.dropped:
            await websocket.send_json({"event": "dropped", "count": subscription.dropped})
            subscription.dropped = 0
        await websocket.send_json(message)


async def _receive_commands(websocket: WebSocket, hub: EventHub, subscription: Subscription, replay: int) -> None:
    while True:
        text = await websocket.receive_text()
        try:
            command = json.loads(text)
            if not isinstance(command, dict) or "subscribe" not in command:
                raise ValueError('expected {"subscribe": {"runs": [...], "datasets": [...]}} or {"subscribe": "*"}')
            target = command["subscribe"]
            if target == WILDCARD:
                patterns = frozenset({WILDCARD})
            elif isinstance(target, dict):
                patterns = parse_channels(target.get("runs"), target.get("datasets"))
            else:
                raise ValueError(f"subscribe: expected an object or '*', got {target!r}")
            count = command.get("replay", replay)
            if not isinstance(count, int) or count < 0:
                raise ValueError(f"replay: expected a non-negative integer, got {count!r}")
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            log.warning("websocket %s: invalid message: %s", websocket.client, err)
            await websocket.send_json({"event": "error", "detail": str(err)})
            continue
        await websocket.send_json({"event": "subscribed", "channels": sorted(patterns)})
        hub.resubscribe(subscription, patterns, count)


@router.websocket("/ws")
async def events(websocket: WebSocket, runs: str | None = None, datasets: str | None = None,
                 replay: int | None = None) -> None:
    state: ApiState = websocket.app.state.api
    await websocket.accept()
    try:
        patterns = parse_channels(runs, datasets)
        if replay is not None and replay < 0:
            raise ValueError(f"replay: expected a non-negative integer, got {replay}")
    except ValueError as err:
        log.warning("websocket %s: rejected subscription: %s", websocket.client, err)
        await websocket.send_json({"event": "error", "detail": str(err)})
        await websocket.close(code=1008, reason="invalid subscription")
        return
    count = state.api.event_history if replay is None else replay
    await websocket.send_json({"event": "subscribed", "channels": sorted(patterns)})
    subscription = state.hub.subscribe(patterns, count)
    tasks = [asyncio.create_task(_send_events(websocket, subscription)),
             asyncio.create_task(_receive_commands(websocket, state.hub, subscription, count))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, WebSocketDisconnect):
                log.warning("websocket %s closed: %s: %s", websocket.client, type(error).__name__, error)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        state.hub.unsubscribe(subscription)
