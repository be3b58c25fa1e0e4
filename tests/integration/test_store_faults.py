"""Store faults on a real server's files, made while it is down (as a disk fault would leave them): one
byte flipped in a message block, with and without the block's index; a whole block deleted. Whatever
nats-server makes of it, the outcome is never a silent pass: either its repair is complete (the log is
whole and the audit passes), or the orchestrator refuses to run in one line and the audit names the loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import LogRegressed
from events.store import JetStreamEventStore
from gpufleet.audit import full_audit
from projections.projector import Projector
from projections.storage import SqliteStore
from tests.integration.test_log_regression import FAST, _run_some_jobs
from tests.secure import SecureServer


def _blocks(server: SecureServer) -> list[Path]:
    found = sorted(server.store_dir.glob("jetstream/*/streams/GF_EVENTS/msgs/*.blk"))
    assert found, f"no message blocks under {server.store_dir}"
    return found


async def _ids(store: JetStreamEventStore) -> list[str]:
    """The event ids the stream holds, read raw (a reader of events refuses a log with holes)."""
    head = await store.head()
    return [(m.headers or {}).get("ce-id", "") async for m in store.read_raw(end=head)] if head else []


def _flip(block: Path, at: float) -> None:
    data = bytearray(block.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    block.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "fault", ["flip-middle", "flip-middle-no-index", "flip-early", "flip-early-no-index", "block-deleted"]
)
async def test_a_damaged_store_never_passes_silently(own_nats_server: SecureServer, tmp_path: Path, fault: str) -> None:
    server = own_nats_server
    state, db_path = tmp_path / "state", tmp_path / "readmodels.sqlite"
    head = await _run_some_jobs(server, state, db_path)
    reader = await JetStreamEventStore.connect(server.access("auditor", "aud"), reads="direct")
    before = await _ids(reader)
    await reader.close()
    assert len(before) == head

    server.stop()
    blocks = _blocks(server)
    block = blocks[-1]
    if fault.startswith("flip"):
        _flip(block, 0.5 if "middle" in fault else 0.1)
        if fault.endswith("no-index"):
            (block.parent / "index.db").unlink(missing_ok=True)
    else:
        block.unlink()
    server.start()

    reader = await JetStreamEventStore.connect(server.access("auditor", "aud"), reads="direct")
    try:
        after = await _ids(reader)
        whole = after == before
        report, _ = await full_audit(reader)
    finally:
        await reader.close()
    refused: str | None = None
    # Its snapshot stands at the head, after the damage: a restart from it reads nothing behind it, and
    # its state is whole (as the projector's read models are, below); the audit above is what finds
    # damage in history it already applied. Without the snapshot, it reads the whole log again, and
    # must refuse.
    for snapshot in state.glob("orchestrator.*.snapshot"):
        snapshot.unlink()
    try:
        orch = await Orchestrator.connect(
            server.access("orchestrator"), config=OrchestratorConfig(**{**FAST.__dict__, "state_dir": state})
        )
        await orch.close()
    except LogRegressed as e:
        refused = str(e)
    # The projector, with its read models and watermark from before the fault: it refuses when the loss
    # reaches its watermark. A hole behind it is in history it already applied (its read models are
    # whole); it cannot see one without reading the log again, which a rebuild does, and refuses.
    projected: str | None = None
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    db = SqliteStore(str(db_path))
    try:
        projector = Projector(store, db)
        projector.open()
        try:
            await projector.catch_up()
        except LogRegressed as e:
            projected = str(e)
        if projected is None:
            rebuilt = Projector(store, SqliteStore(str(tmp_path / "rebuilt.sqlite")))
            rebuilt.open()
            try:
                await rebuilt.rebuild()
            except LogRegressed as e:
                projected = "rebuild: " + str(e)
    finally:
        db.close()
        await store.close()
    if whole:
        assert report.ok, report.render()
    else:
        assert not report.ok, f"{fault}: {len(after)} of {len(before)} events, and the audit passed"
        assert refused is not None and "\n" not in refused, f"{fault}: the orchestrator ran on a damaged log"
        assert projected is not None and "\n" not in projected, f"{fault}: the projector ran on a damaged log"
