"""Attack review of the watermark / live log check (fcbdfa5, de76f09, 3ddc3a4).

The defects it found were strict xfails; the fixed ones are plain tests now, and the one left open is
still a strict xfail. The other tests pin behaviour checked to be fine.
No server: the orchestrator is built on a mock connection, its store's reads are replaced.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import NO_STREAM, LogRegressed, MemoryEventStore
from events.codec import encode
from events.errors import StoreError
from events.store.jetstream import JetStreamEventStore
from events.store.watermark import Watermark, check_watermark, watermark_file
from tests.factories import queued


def _apply_mark(orch: Orchestrator, mark: Watermark) -> None:
    """As if the orchestrator had applied the event ``mark`` names, on log ``mark.log``."""
    orch._log_id = mark.log
    orch._last_env = SimpleNamespace(sequence=mark.position, id=mark.event_id)  # type: ignore[assignment]


def _orch(tmp_path: Path | None = None) -> Orchestrator:
    nc = MagicMock()
    cfg = OrchestratorConfig(state_dir=tmp_path) if tmp_path is not None else OrchestratorConfig()
    return Orchestrator(nc, config=cfg)


def _healthy(orch: Orchestrator, mark: Watermark, *, event_id_at: Any = None) -> None:
    async def log_id() -> str:
        return mark.log

    async def head() -> int:
        return mark.position + 5

    async def default_event_id_at(position: int) -> Any:
        return mark.event_id

    async def missing() -> int:
        return 0

    orch.store.missing = missing  # type: ignore[method-assign]
    orch.store.log_id = log_id  # type: ignore[method-assign]
    orch.store.head = head  # type: ignore[method-assign]
    orch.store.event_id_at = event_id_at or default_event_id_at  # type: ignore[method-assign]


async def _settle(orch: Orchestrator) -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


# ---- passing: what was checked and is fine ---------------------------------------------------------


async def test_a_healthy_reconnect_resumes_writes() -> None:
    orch = _orch()
    mark = Watermark(10, "e10", "")
    _apply_mark(orch, mark)
    _healthy(orch, mark)
    orch.disconnected()
    assert not orch.store._writable.is_set()
    orch.reconnected()
    await _settle(orch)
    assert orch.store._writable.is_set()
    assert not orch.halted.is_set()


async def test_halt_then_close_twice_terminates() -> None:
    """_halt schedules stop(); close() (and a second close) while that runs do not hang."""
    orch = _orch()
    orch._halt(LogRegressed("orchestrator: log regressed from 5 to 2 events"))
    await asyncio.wait_for(orch.close(), 10)
    await asyncio.wait_for(orch.close(), 10)
    assert orch._stopping is not None and orch._stopping.done()
    with pytest.raises(LogRegressed):
        await orch.wait()


# ---- defects ---------------------------------------------------------------------------------------


# Was a strict xfail (fixed): see the attack review in the closing note.
async def test_a_transient_direct_get_error_during_the_recheck_does_not_pause_writes_forever() -> None:
    orch = _orch()
    mark = Watermark(10, "e10", "")
    _apply_mark(orch, mark)
    calls = 0

    async def flaky_event_id_at(position: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("direct get failed: 503 {'Status': '503'}")
        return mark.event_id

    _healthy(orch, mark, event_id_at=flaky_event_id_at)
    orch.disconnected()
    orch.reconnected()
    await asyncio.sleep(1.5)
    assert orch.store._writable.is_set() or orch.halted.is_set()


# Was a strict xfail (fixed): see the attack review in the closing note.
async def test_a_stale_recheck_does_not_resume_writes_after_a_newer_disconnect() -> None:
    orch = _orch()
    mark = Watermark(10, "e10", "")
    _apply_mark(orch, mark)
    gate = asyncio.Event()

    async def slow_event_id_at(position: int) -> Any:
        await gate.wait()  # the answer was already on its way when the link dropped again
        return mark.event_id

    _healthy(orch, mark, event_id_at=slow_event_id_at)
    orch.disconnected()
    orch.reconnected()  # recheck #1 starts
    await asyncio.sleep(0.05)
    orch.disconnected()  # the link drops again before recheck #1 ends
    gate.set()
    await _settle(orch)
    assert not orch.store._writable.is_set(), "writes resumed while disconnected"


# Was a strict xfail (fixed): see the attack review in the closing note.
async def test_a_log_that_changed_identity_under_a_running_orchestrator_halts() -> None:
    orch = _orch()
    mark = Watermark(10, "e10", "GF_EVENTS@2026-01-01T00:00:00Z")
    _apply_mark(orch, mark)
    _healthy(orch, Watermark(10, "e10", "GF_EVENTS@2026-06-01T00:00:00Z"))  # the server's new stream
    orch.disconnected()
    orch.reconnected()
    await _settle(orch)
    assert orch.halted.is_set() or not orch.store._writable.is_set()


# Was a strict xfail (fixed): see the attack review in the closing note.
async def test_a_watermark_at_an_event_this_version_does_not_know_is_not_reported_as_lost() -> None:
    env = queued("task.t1")
    body, headers = encode(env)
    data = json.loads(body)
    data["type"] = "FutureEventOfV2"
    body = json.dumps(data).encode()
    headers = {**headers, "ce-type": "FutureEventOfV2", "Nats-Subject": "ev.task.t1", "Nats-Sequence": "7"}
    store = JetStreamEventStore(MagicMock(), on_invalid=lambda p, e: None)
    store._prefix_len = len("ev.")

    async def direct_get(request: dict[str, Any], stream: str | None = None) -> Any:
        msg = MagicMock()
        msg.data, msg.headers = body, headers
        yield msg

    async def head() -> int:
        return 7

    async def log_id() -> str:
        return "L"

    async def missing() -> int:
        return 0

    store._direct_get = direct_get  # type: ignore[method-assign]
    store.head = head  # type: ignore[method-assign]
    store.log_id = log_id  # type: ignore[method-assign]
    store.missing = missing  # type: ignore[method-assign]
    assert await store.event_id_at(7) == env.id  # there, read from its headers, though it does not decode
    # the check reads the id from the headers, and finds the event still there:
    assert await check_watermark(store, Watermark(7, env.id, "L"), "orchestrator")


# Was a strict xfail (fixed): one watermark file per log, not per data directory.
async def test_a_shared_data_dir_does_not_disable_the_check_for_the_other_network(tmp_path: Path) -> None:
    ours = MemoryEventStore()
    for i in range(3):
        await ours.append(f"task.t{i}", [queued(f"task.t{i}")], expected=NO_STREAM)
    last_id = await ours.event_id_at(3)
    assert last_id is not None
    wm = watermark_file(tmp_path, "orchestrator", await ours.log_id())
    wm.save(Watermark(3, last_id, await ours.log_id()))
    # another network's orchestrator, same data dir, saves its own mark
    watermark_file(tmp_path, "orchestrator", "GF_EVENTS@another-network").save(
        Watermark(40, "other", "GF_EVENTS@another-network")
    )
    # our log then loses an event (a regressed store)
    shorter = MemoryEventStore()
    shorter.log_id = ours.log_id  # type: ignore[method-assign]
    for i in range(2):
        await shorter.append(f"task.t{i}", [queued(f"task.t{i}")], expected=NO_STREAM)
    with pytest.raises(LogRegressed):
        await check_watermark(shorter, wm.load(), "orchestrator")
