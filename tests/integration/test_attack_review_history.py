"""Attack review of the verifiable history (1f59571), on a real secured nats-server: the signed
checkpoints' audit and the notary's receipts, against an admin who empties the checkpoint stream and
a job whose stream is longer than one answer of the notary.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import gpufleet.notary as notary_module
from events.store import JetStreamEventStore
from events.store.connection import connect_nats
from gpufleet.receipts import CheckpointKeeper, fetch_receipt
from projections.checkpoints import audit_checkpoints
from tests.integration.orchestra import all_jobs_ended, wait_for
from tests.integration.test_notary import (
    SPEC,
    _network,
    _rewrite_with_admin_credentials,
    _signed_up_to_head,
    _stop_notary,
)
from tests.secure import SecureServer


async def test_a_rewritten_log_does_not_pass_the_signed_audit_once_the_checkpoints_are_removed(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    """The admin rewrites the log, then deletes the checkpoint stream and re-creates it empty: with
    no checkpoint left to compare, the signed-checkpoint audit said "ok" (0 of 0 match). A log
    that holds events and no checkpoint at all is a finding: nothing vouches for it."""
    server = own_nats_server
    async with _network(server, tmp_path) as net:
        await net.tenants.submit("alice", "j1", SPEC)
        await wait_for(net.store, all_jobs_ended(1), timeout=30)
        await _signed_up_to_head(net)
        key = net.notary.key
        await net.sim.kill()
        assert net.orch is not None
        await net.orch.close()
        net.orch = None
        await _stop_notary(net.notary)
        await _rewrite_with_admin_credentials(server, "alice.j1")
        auditor = await JetStreamEventStore.connect(server.access("auditor", "a1"), reads="direct")
        try:
            assert not (await audit_checkpoints(auditor, key)).ok  # the checkpoints catch it
            admin = await connect_nats(server.access("admin"), name="mallory-admin")
            # (The stream denies purges and deletes of single checkpoints; the stream itself goes.)
            await admin.jetstream().delete_stream("GF_CHECKPOINTS")
            await admin.close()
            await server.ensure_topology()
            recreated = await audit_checkpoints(auditor, key)
            assert not recreated.ok, recreated.render()
            assert "no signed checkpoint" in recreated.findings[0]
        finally:
            await auditor.close()


async def test_a_receipt_holds_every_entry_of_a_job_longer_than_one_answer(
    own_nats_server: SecureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notary reads at most 4 x MAX_RECEIPT_ENTRIES messages of the job's stream, then of its
    tasks' streams, and pages from the last entry it returns: with the job stream longer than that,
    the task entries between two pages were never returned, and the receipt said it was whole."""
    monkeypatch.setattr(notary_module, "MAX_RECEIPT_ENTRIES", 2)  # pages of 2, reads of 8 per subject
    server = own_nats_server
    spec = {**SPEC, "split": {"kind": "count", "count": 8}}
    async with _network(server, tmp_path) as net:
        await net.tenants.submit("alice", "big", spec)
        await wait_for(net.store, all_jobs_ended(1), timeout=60)
        await _signed_up_to_head(net)
        auditor = await JetStreamEventStore.connect(server.access("auditor", "a1"), reads="direct")
        try:
            head = await auditor.head()
            want = [
                m.sequence
                async for m in auditor.read_raw(end=head)
                if m.subject.startswith(("gf.ev.job.alice.big", "gf.ev.task.alice.big."))
            ]
        finally:
            await auditor.close()
        assert len([p for p in want if p]) > 20
        nc = await connect_nats(server.access("submitter", "alice"), name="alice")
        try:
            receipt = await fetch_receipt(nc, "submitter", "alice", "alice.big", CheckpointKeeper(net.notary.key))
        finally:
            await nc.close()
        got = [e.position for e in receipt.entries]
        assert got == want, f"missing {sorted(set(want) - set(got))}"


async def test_a_backup_is_readable_by_its_owner_only(own_nats_server: SecureServer, tmp_path: Path) -> None:
    """A backup holds every tenant's jobs, inputs and results, and the intake: it was written with the
    process's umask (0644 files in a 0755 directory), so any local user could read it."""
    import os
    import stat

    from gpufleet.backup import take_backup

    old = os.umask(0o022)
    try:
        async with own_nats_server.connection("admin") as nc:
            await take_backup(nc, tmp_path / "backup")
    finally:
        os.umask(old)
    paths = [tmp_path / "backup", *sorted((tmp_path / "backup").iterdir())]
    assert len(paths) > 2
    loose = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths if p.stat().st_mode & 0o077}
    assert not loose, f"readable by others: {loose}"


async def test_a_flood_of_receipt_requests_is_answered_a_bounded_number_at_a_time(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    """Any submitter may ask for receipts, each answer reading up to thousands of entries: the notary
    started one read of the log per request, all at once, with no bound."""
    import asyncio
    from typing import Any

    server = own_nats_server
    async with _network(server, tmp_path) as net:
        await net.tenants.submit("alice", "j1", SPEC)
        await wait_for(net.store, all_jobs_ended(1), timeout=30)
        await _signed_up_to_head(net)
        serve = net.notary.serve
        now = peak = 0

        async def counted(subject: str, data: bytes) -> dict[str, Any]:
            nonlocal now, peak
            now += 1
            peak = max(peak, now)
            try:
                return await serve(subject, data)
            finally:
                now -= 1

        net.notary.serve = counted  # type: ignore[method-assign]
        nc = await connect_nats(server.access("submitter", "alice"), name="alice")
        try:
            body = b'{"op": "receipt", "job": "alice.j1"}'
            answers = await asyncio.gather(
                *(nc.request("gf.api.submitter.alice.tlog", body, timeout=30) for _ in range(120))
            )
        finally:
            await nc.close()
        assert all(b'"entries"' in a.data for a in answers)
        assert peak <= notary_module.MAX_CONCURRENT_ANSWERS, peak


async def test_a_receipt_pages_against_one_checkpoint_while_the_notary_signs_newer_ones(
    own_nats_server: SecureServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a CI run under load: the client started its receipt over whenever the notary had signed
    a newer checkpoint between two pages, so on a log that kept growing (providers judged lost and back
    on a loaded machine) a receipt of many pages never finished. Every page is now asked against the
    checkpoint of the first. Here the log grows, and the notary signs again, between every two pages."""
    import gpufleet.receipts as receipts_module
    from tests.integration.audited import eventually

    monkeypatch.setattr(notary_module, "MAX_RECEIPT_ENTRIES", 2)
    server = own_nats_server
    spec = {**SPEC, "split": {"kind": "count", "count": 6}}
    async with _network(server, tmp_path) as net:
        await net.tenants.submit("alice", "big", spec)
        await wait_for(net.store, all_jobs_ended(1), timeout=60)
        await _signed_up_to_head(net)
        real = receipts_module.notary_request
        pages = 0

        async def growing(*args: object, **kw: object) -> dict[str, object]:
            nonlocal pages
            doc = await real(*args, **kw)  # type: ignore[arg-type]
            pages += 1
            signed = net.notary.signed_size
            await net.tenants.submit("bob", f"filler{pages}", SPEC)
            await eventually(lambda: net.notary.signed_size > signed, "the notary to sign a newer checkpoint")
            return doc

        monkeypatch.setattr(receipts_module, "notary_request", growing)
        nc = await connect_nats(server.access("submitter", "alice"), name="alice")
        try:
            receipt = await asyncio.wait_for(
                fetch_receipt(nc, "submitter", "alice", "alice.big", CheckpointKeeper(net.notary.key)), 120
            )
        finally:
            await nc.close()
        assert pages > 3  # many pages, each followed by a newer checkpoint
        events = receipt.verify(net.notary.key)
        assert events and all(e.subject.split(".")[1:3] == ["alice", "big"] for e in events)
