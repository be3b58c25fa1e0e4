"""Backup and restore for real: a network runs jobs, its admin backs up every stream and bucket, the
server's store is deleted, a fresh server with the same identities gets the backup back, and the
network goes on: the audit passes, the read models rebuild to the same rows, every stream has the same
messages and sequences, and new work completes. An older backup is refused until the operator accepts
the loss; a corrupted file, a stream in the way and a non-admin identity are refused in one line.
A real nats-server, real files, the real command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import LogRegressed
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from events.store.watermark import WatermarkFile, watermark_file
from gpufleet.backup import (
    MANIFEST,
    BackupError,
    local_watermarks,
    read_manifest,
    restore,
    settle_watermarks,
    take_backup,
)
from gpufleet.sim import SimulatedProvider
from projections.audit import audit_jetstream
from projections.projector import Projector
from projections.storage import SqliteStore
from tests.integration.audited import assert_audit_passes, eventually
from tests.integration.orchestra import Tenants, all_jobs_ended, read_world, wait_for
from tests.secure import SecureServer

ROOT = Path(__file__).resolve().parents[2]
FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)
JOB = {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 3}}


def _config(state: Path) -> OrchestratorConfig:
    return OrchestratorConfig(**{**FAST.__dict__, "state_dir": state})


async def _run_jobs(server: SecureServer, state: Path, jobs: list[str]) -> int:
    """``jobs`` to completion with a watermarking orchestrator and the projector of ``state``; all
    stopped at the end (the orchestrator saves its watermark). The log's head."""
    orch = await Orchestrator.connect(server.access("orchestrator"), config=_config(state))
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), heartbeat_s=0.2, slots=2)).start()
    tenants = Tenants(server)
    db = SqliteStore(str(state / "readmodels.sqlite"))
    projector = Projector(store, db, flush_interval=0.02)
    follower = asyncio.create_task(projector.run())
    try:
        before = len((await read_world(store))[0].jobs)  # (the orchestrator's own world forgets ended jobs)
        for name in jobs:
            await tenants.submit("alice", name, JOB)
        await wait_for(store, all_jobs_ended(before + len(jobs)), timeout=30, poll=0.1)
        await assert_audit_passes(store)  # every intake message has its outcome: the log is at rest
        head = await store.head()
        await eventually(lambda: projector.position >= head, "the projector at the head")
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        db.close()
        await sim.kill()
        await tenants.close()
        await orch.close()
        await store.close()
    return head


async def _states(server: SecureServer) -> dict[str, tuple[int, int, int, int, int]]:
    """Every stream: messages, first and last sequence, bytes, consumers."""
    async with server.connection("admin") as nc:
        js = nc.jetstream()
        out = {}
        for info in await js.streams_info():
            name, st = info.config.name, info.state
            # An empty stream's first sequence reads 0 or 1: it holds nothing either way.
            out[name] = (st.messages, st.first_seq if st.messages else 0, st.last_seq, st.bytes, st.consumer_count)
        return out


async def _read_models(store: JetStreamEventStore, path: Path) -> dict[str, Any]:
    """Every read model rebuilt from position 0 of the log, table by table."""
    db = SqliteStore(str(path))
    try:
        projector = Projector(store, db)
        projector.open()
        await projector.rebuild()
        return projector.dump()
    finally:
        db.close()


def _gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
        | {"NO_COLOR": "1", "COLUMNS": "200"},
    )


async def _cli(server: SecureServer, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``gpufleet ARGS`` as the network's admin, with ``state`` as the data directory."""
    creds = server.access("admin").creds
    assert creds is not None
    full = [*args, "--nats", server.url, "--creds", str(creds), "--data-dir", str(state)]
    return await asyncio.to_thread(_gpufleet, *full)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    return proc.stderr.strip()


def _destroy_and_restart(server: SecureServer) -> None:
    """The disk is gone: the server's whole store is deleted; a fresh server, same identities, no streams."""
    server.stop()
    shutil.rmtree(server.store_dir)
    server.start()


async def test_backup_destroy_the_store_restore_and_the_network_goes_on(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    server = own_nats_server
    state, backup_dir = tmp_path / "state", tmp_path / "backup"
    state.mkdir()
    head = await _run_jobs(server, state, ["j0", "j1", "j2"])
    before = await _states(server)
    # Every stream and bucket gpufleet keeps: the log, intake, dispatch, objects and the KV buckets.
    assert {"GF_EVENTS", "GF_INTAKE", "GF_DISPATCH", "GF_OBJECTS"} <= set(before)
    assert any(n.startswith("KV_") for n in before), before
    assert before["GF_DISPATCH"][4] >= 1, "the provider's dispatch consumer"
    assert before["GF_EVENTS"][2] == head
    reader = await JetStreamEventStore.connect(server.access("orchestrator"))
    try:
        models_before = await _read_models(reader, tmp_path / "before.sqlite")
        log_before = await reader.log_id()
    finally:
        await reader.close()
    assert models_before["jobs"], "the read models hold the jobs"

    proc = await _cli(server, state, "backup", str(backup_dir))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    manifest = read_manifest(backup_dir)
    assert [s.name for s in manifest.streams] == ["GF_EVENTS", *sorted(n for n in before if n != "GF_EVENTS")]
    assert manifest.log == log_before
    assert {s.name: s.messages for s in manifest.streams} == {n: v[0] for n, v in before.items()}

    _destroy_and_restart(server)
    assert not await _states(server), "a fresh server without a single stream"

    proc = await _cli(server, state, "restore", str(backup_dir))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"GF_EVENTS {head} 1 {head}" in " ".join(proc.stdout.replace("│", " ").split())
    assert "gpufleet up" in proc.stdout

    # Byte for byte: the same messages, sequences and bytes in every stream.
    assert await _states(server) == before
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    try:
        # The server gives the restored stream a new creation time, so the log a new identity: the
        # orchestrator's watermark was carried over to it (its own check then applies, and passes).
        carried = WatermarkFile(watermark_file(state, "orchestrator", await store.log_id()).path).load()
        assert carried is not None and carried.position == head
        report = await assert_audit_passes(store)
        assert report.last_position == head
        assert await _read_models(store, tmp_path / "after.sqlite") == models_before
        # The network's projector rebuilds on the restored log, to the same rows.
        db = SqliteStore(str(state / "readmodels.sqlite"))
        try:
            live = Projector(store, db)
            assert await live.catch_up() == head
            for table, rows in live.dump().items():
                assert rows == models_before[table], table
        finally:
            db.close()
    finally:
        await store.close()

    # The orchestrator accepts the restored log (its watermark is at the head) and new work completes.
    await _run_jobs(server, state, ["after-restore"])
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    try:
        world, _ = await wait_for(store, all_jobs_ended(4))
        assert world.jobs["alice.after-restore"].status == "completed"
        assert await store.head() > head
    finally:
        await store.close()


async def test_an_older_backup_is_refused_until_the_operator_accepts_the_loss(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    server = own_nats_server
    state, backup_dir = tmp_path / "state", tmp_path / "backup"
    state.mkdir()
    at_backup = await _run_jobs(server, state, ["j0"])
    async with server.connection("admin") as nc:
        await take_backup(nc, backup_dir)
    head = await _run_jobs(server, state, ["j1"])  # the network went on after the backup
    assert head > at_backup
    reader = await JetStreamEventStore.connect(server.access("orchestrator"))
    log = await reader.log_id()
    await reader.close()
    mark_file = watermark_file(state, "orchestrator", log).path
    assert json.loads(mark_file.read_text())["position"] == head

    _destroy_and_restart(server)
    # Nobody but the admin may restore, not even the orchestrator.
    nc = await connect_nats(server.access("orchestrator"))
    try:
        with pytest.raises(BackupError, match=r"permission denied: .*STREAM\.RESTORE\.GF_EVENTS to orchestrator"):
            await restore(nc, backup_dir, access=server.access("orchestrator"))
    finally:
        await nc.close()
    line = _one_line_error(await _cli(server, state, "restore", str(backup_dir)))
    assert f"applied {head} events, this backup's log ends at {at_backup}" in line, line
    assert "nothing was restored" in line and "--accept-restored" in line, line
    assert not await _states(server), "nothing was restored"

    # Restored all the same (the library, without the command's check): the orchestrator's own
    # watermark check refuses the restored log, its watermark carried over to it.
    async with server.connection("admin") as nc:
        await restore(nc, backup_dir)
        store = JetStreamEventStore(nc)
        await store.ensure()
        _, problems = await settle_watermarks(store, state, local_watermarks(store, state), log, accept=False)
        await store.close()
    assert [p.who for p in problems] == ["orchestrator", "projector"]
    with pytest.raises(LogRegressed, match=f"orchestrator: log regressed from {head} to {at_backup} events"):
        await Orchestrator.connect(server.access("orchestrator"), config=_config(state))

    # The operator accepts the loss: the watermarks are set aside (renamed), and the network goes on.
    proc = await _cli(server, state, "restore", str(backup_dir), "--force", "--accept-restored")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "set aside" in proc.stdout, proc.stdout
    assert not list(state.glob("orchestrator.*.watermark.json"))
    kept = sorted(p.name for p in state.glob("*.before-restore-*"))
    assert any(n.startswith(mark_file.name) for n in kept), kept

    # The orchestrator takes the restored history, and the network goes on from the backup's head.
    await _run_jobs(server, state, ["after-restore"])
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    try:
        world, _ = await wait_for(store, all_jobs_ended(2))
        assert set(world.jobs) == {"alice.j0", "alice.after-restore"}  # j1 was after the backup: lost
        assert world.jobs["alice.after-restore"].status == "completed"
        assert (await audit_jetstream(store)).ok
    finally:
        await store.close()


async def test_a_corrupt_backup_a_stream_in_the_way_and_a_stranger_are_refused(
    own_nats_server: SecureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = own_nats_server
    # Small chunks and window: the server waits for acknowledgements many times over (flow control).
    monkeypatch.setattr("gpufleet.backup.SNAPSHOT_CHUNK", 512)
    monkeypatch.setattr("gpufleet.backup.SNAPSHOT_WINDOW", 2048)
    tenants = Tenants(server)
    for i in range(20):
        # Intake messages (nobody orchestrates them here), with something that does not compress.
        await tenants.submit("alice", f"j{i}", {**JOB, "params": {"pad": os.urandom(1500).hex()}})
    await tenants.close()
    backup_dir = tmp_path / "backup"
    async with server.connection("admin") as nc:
        manifest = await take_backup(nc, backup_dir)
        # The same server still holds every stream: refused, named, nothing touched.
        with pytest.raises(
            BackupError, match=r"already has stream\(s\) GF_EVENTS, .*GF_INTAKE.*: restore into a fresh server"
        ):
            await restore(nc, backup_dir)
    intake = manifest.stream("GF_INTAKE")
    assert intake is not None and intake.messages == 20 and intake.size > 4 * 2048

    # Only the admin may back up: the server refuses a submitter and an auditor.
    for role in ("submitter", "auditor", "orchestrator"):
        nc = await connect_nats(server.access(role, "eve"))
        try:
            with pytest.raises(BackupError, match=f"permission denied: .* to {role} eve: backup and restore need"):
                await take_backup(nc, tmp_path / role, access=server.access(role, "eve"))
        finally:
            await nc.close()

    # One byte flipped in one file: refused before anything is touched, even with --force.
    victim = backup_dir / intake.file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    line = _one_line_error(await _cli(server, tmp_path / "state", "restore", str(backup_dir), "--force"))
    assert f"{victim} is corrupt" in line and "nothing was restored" in line, line
    assert (await _states(server))["GF_INTAKE"][0] == 20

    # A backup directory is never overwritten.
    line = _one_line_error(await _cli(server, tmp_path / "state", "backup", str(backup_dir)))
    assert "already holds a backup" in line, line
    assert not (backup_dir / f".{MANIFEST}.tmp").exists()


async def test_with_no_network_running_they_work_on_the_data_directorys_own_store(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    """The default path on the machine of ``gpufleet up``: the network is stopped, and the commands serve
    its store themselves, as its admin (no --nats, no --creds)."""
    server = own_nats_server
    home = server.root  # the data directory: auth/ and nats/, as ``gpufleet up`` keeps them
    tenants = Tenants(server)
    for i in range(5):
        await tenants.submit("alice", f"j{i}", JOB)
    await tenants.close()
    before = await _states(server)
    server.stop()

    proc = await asyncio.to_thread(_gpufleet, "backup", str(tmp_path / "backup"), "--data-dir", str(home))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "the network is not running" in proc.stdout, proc.stdout
    shutil.rmtree(server.store_dir)  # the disk is lost
    proc = await asyncio.to_thread(_gpufleet, "restore", str(tmp_path / "backup"), "--data-dir", str(home))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    server.start()
    assert await _states(server) == before
