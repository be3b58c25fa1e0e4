"""JetStream-only behaviour: stream configuration, malformed records, restarts, timeouts."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from events import NO_STREAM, InvalidPayload, StoreUnavailable
from events.store import JetStreamEventStore, StreamSettings
from gpufleet.natsserver import NatsServer
from tests.conftest import isolated_settings
from tests.contract.test_event_store import collect, ids
from tests.factories import queued
from tests.secure import SecureServer


async def test_stream_is_created_idempotently_with_explicit_config(nats_server: SecureServer) -> None:
    settings = StreamSettings(name="CFGTEST", prefix="cfgtest.ev", duplicate_window_s=90.0)
    store = await JetStreamEventStore.connect(nats_server.superuser(), create=True, settings=settings)
    await store.ensure(create=True)  # a second time changes nothing
    info = await store.js.stream_info("CFGTEST")
    cfg = info.config
    assert str(getattr(cfg.storage, "value", cfg.storage)) == "file"
    assert cfg.deny_delete and cfg.deny_purge
    assert cfg.duplicate_window == 90.0
    assert cfg.num_replicas == 1
    assert cfg.max_msg_size is not None and cfg.max_msg_size > settings.max_event_bytes
    assert cfg.allow_atomic and cfg.allow_direct
    assert cfg.subjects == ["cfgtest.ev.>"]
    await store.close()


async def test_malformed_messages_are_skipped_and_reported_never_blocking(nats_server: SecureServer) -> None:
    settings = isolated_settings()
    seen: list[tuple[int, str | None]] = []
    store = await JetStreamEventStore.connect(
        nats_server.superuser(),
        create=True,
        settings=settings,
        on_invalid=lambda pos, err: seen.append((pos, err.field)),
    )
    good1 = queued("task.m")
    await store.append("task.m", [good1], expected=NO_STREAM)
    # Outsiders bypassing intake and writing junk straight into the domain subjects:
    subj = f"{settings.prefix}.task.m"
    await store.js.publish(subj, b"{not json")
    await store.js.publish(subj, b'{"type":"TaskQueued","v":1}', headers={"ce-id": "x1"})
    await store.js.publish(subj, b'{"type":"Martian","v":1}', headers={"ce-id": "x2"})
    await store.js.publish(subj, b'{"type":"TaskQueued","v":9}', headers={"ce-id": "x3"})
    good2 = queued("task.m")
    await store.append("task.m", [good2], expected=None)

    assert ids(await collect(store.read_all())) == [good1.id, good2.id]
    assert [p for p, _ in seen] == [2, 3, 4, 5]
    assert [f for _, f in seen] == ["ce-id", "at", "type", "v"]
    seen.clear()
    assert ids(await store.read_stream("task.m")) == [good1.id, good2.id]
    assert len(seen) == 4
    seen.clear()
    sub = store.subscribe()
    assert ids(await collect(sub, 2)) == [good1.id, good2.id]
    await sub.aclose()  # type: ignore[attr-defined]
    await store.close()


async def test_restart_loses_nothing(own_nats_server: SecureServer) -> None:
    settings = StreamSettings()
    store = await JetStreamEventStore.connect(own_nats_server.superuser(), create=True, settings=settings)
    written = []
    for i in range(20):
        batch = [queued(f"task.r{i}") for _ in range(1 + i % 3)]
        await store.append(f"task.r{i}", batch, expected=NO_STREAM)
        written += batch
    await store.close()

    own_nats_server.stop()  # graceful
    own_nats_server.start()
    store = await JetStreamEventStore.connect(own_nats_server.superuser(), create=True, settings=settings)
    assert ids(await collect(store.read_all())) == ids(written)
    more = queued("task.after")
    await store.append("task.after", [more], expected=NO_STREAM)
    await store.close()

    own_nats_server.kill()  # a crash this time
    own_nats_server.start()
    store = await JetStreamEventStore.connect(own_nats_server.superuser(), create=True, settings=settings)
    assert ids(await collect(store.read_all())) == [*ids(written), more.id]
    assert await store.head() == len(written) + 1
    await store.close()


async def test_subscription_survives_a_server_restart(own_nats_server: SecureServer) -> None:
    store = await JetStreamEventStore.connect(own_nats_server.superuser(), create=True)
    await store.append("task.live", [queued("task.live")], expected=NO_STREAM)
    sub = store.subscribe()
    assert len(await collect(sub, 1)) == 1
    own_nats_server.stop()
    own_nats_server.start()
    after = queued("task.live2")

    async def write_when_back() -> None:
        for _ in range(100):
            try:
                await store.append("task.live2", [after], expected=NO_STREAM)
                return
            except StoreUnavailable:
                await asyncio.sleep(0.2)  # retrying while the store reconnects
        raise AssertionError("the store could not append for 20 s after the server came back")

    writer = asyncio.create_task(write_when_back())
    got = await collect(sub, 1, timeout=30)
    await writer
    assert ids(got) == [after.id]
    await sub.aclose()  # type: ignore[attr-defined]
    await store.close()


@pytest.mark.parametrize("batch", [1, 3])
async def test_timed_out_publish_is_retried_and_confirmed(own_nats_server: SecureServer, batch: int) -> None:
    """The server stalls past the publish timeout; the retry must neither fail nor duplicate."""
    store = await JetStreamEventStore.connect(own_nats_server.superuser(), create=True, timeout=0.4, retries=5)
    first = queued("task.slow")
    r0 = await store.append("task.slow", [first], expected=NO_STREAM)
    events = [queued("task.slow") for _ in range(batch)]
    assert own_nats_server.proc is not None
    pid = own_nats_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    loop.call_later(0.7, os.kill, pid, signal.SIGCONT)
    result = await store.append("task.slow", events, expected=r0.last)
    await store.close()
    # Checked by a reader with an ordinary timeout: a server just thawed on a busy machine may take
    # longer than the 0.4 s the writer was given to answer a read.
    reader = await JetStreamEventStore.connect(own_nats_server.superuser())
    stored = await reader.read_stream("task.slow")
    assert ids(stored) == [first.id, *ids(events)]
    assert result.last == stored[-1].sequence
    await reader.close()


async def test_unreachable_server_is_a_typed_error() -> None:
    with pytest.raises(StoreUnavailable) as info:
        await JetStreamEventStore.connect("nats://127.0.0.1:1", timeout=1.0)
    assert "cannot reach NATS" in str(info.value)


async def test_server_without_jetstream_is_a_typed_error(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "plain", jetstream=False).start()
    try:
        with pytest.raises(StoreUnavailable) as info:
            await JetStreamEventStore.connect(server.url, timeout=1.0)
        assert "JetStream" in str(info.value)
    finally:
        server.kill()


async def test_decoding_errors_name_the_field() -> None:
    from events.codec import decode_message

    with pytest.raises(InvalidPayload) as info:
        body = b'{"type":"TaskQueued","v":1,"at":"2026-01-01T00:00:00Z"}'
        decode_message("task.x", body, {"ce-id": "a"}, 1)
    assert info.value.field == "task_id"
    with pytest.raises(InvalidPayload) as info:
        decode_message(
            "task.x",
            b'{"type":"TaskQueued","v":1,"at":"2026-01-01T00:00:00Z","task_id":"x"}',
            {"ce-id": "a", "ce-type": "TaskLeased"},
            1,
        )
    assert info.value.field == "ce-type"


@pytest.mark.parametrize("window", [1, 4])
async def test_raw_reads_with_direct_gets_see_every_message_once_across_gaps(
    nats_server: SecureServer, window: int
) -> None:
    """What an auditor reads: batches asked for several at a time must neither skip nor repeat, even
    where messages were deleted (a gap makes a batch run past the start of the next one)."""
    from nats.js import api

    name = isolated_settings().name + "RAW"
    store = await JetStreamEventStore.connect(nats_server.superuser(), create=True, settings=isolated_settings())
    await store.js.add_stream(api.StreamConfig(name=name, subjects=[f"{name.lower()}.>"], allow_direct=True))
    for i in range(95):
        await store.js.publish(f"{name.lower()}.s{i % 7}", str(i).encode())
    for seq in (3, 10, 11, 12, 40, 90):
        await store.js.delete_msg(name, seq)
    expected = [s for s in range(1, 96) if s not in (3, 10, 11, 12, 40, 90)]
    got = [m.sequence async for m in store.read_raw(name, end=95, batch=10, window=window)]
    assert got == expected
    got = [m.sequence async for m in store.read_raw(name, after=20, end=60, batch=7, window=window)]
    assert got == [s for s in expected if 20 < s <= 60]
    assert [int(m.data) for m in [x async for x in store.read_raw(name, end=5, batch=2, window=window)]] == [0, 1, 3, 4]
    filtered = [m.subject async for m in store.read_raw(name, subject=f"{name.lower()}.s2", end=95, batch=3)]
    assert filtered and set(filtered) == {f"{name.lower()}.s2"}
    await store.js.delete_stream(name)
    await store.close()
