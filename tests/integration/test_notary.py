"""Signed checkpoints: a real secured nats-server, a real orchestrator, a simulated provider, the notary.

- A small, quiet log is checkpointed (every T seconds, not only every N events), and a submitter's
  receipt verifies offline; nobody gets proofs of another's job.
- Rewriting the log with admin credentials (delete GF_EVENTS, republish it with one event edited,
  the unsigned chain checkpoints recomputed) passes the unsigned audit but not the signed one:
  ``replay --audit`` fails naming the checkpoint, the notary refuses to sign it, a notary that lost
  its state (and its published checkpoints) signs it but a client holding an older checkpoint
  refuses it, and a checkpoint signed with another key is refused.
- Only the notary writes checkpoints, and the notary cannot write the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from actors.orchestrator import Orchestrator, OrchestratorConfig
from events import new_envelope
from events.audit import AuditCheckpointed
from events.codec import decode_message
from events.errors import AccessDenied
from events.registry import DEFAULT_REGISTRY
from events.store import JetStreamEventStore
from events.store.connection import connect_nats, denied_subjects
from events.subjects import CHECKPOINT_SUBJECT, EVENTS_STREAM
from events.tlog import BadProof, BadSignature, Checkpoint, HistoryRewritten, new_signing_seed, sign_checkpoint
from gpufleet.client import Client
from gpufleet.notary import Notary, NotaryError
from gpufleet.receipts import Receipt, notary_request
from gpufleet.sim import SimulatedProvider
from projections.audit import audit_jetstream
from projections.chain import CHAIN_STREAM, GENESIS, chain_step
from projections.checkpoints import audit_checkpoints
from tests.integration.audited import eventually
from tests.integration.orchestra import Tenants, all_jobs_ended, wait_for
from tests.secure import SecureServer

FAST = OrchestratorConfig(heartbeat_timeout_s=1.0, lease_start_timeout_s=2.0, lease_grace_s=5.0)
SPEC = {"workload": "sleep", "params": {"seconds": 0.01}, "split": {"kind": "count", "count": 2}}
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Net:
    server: SecureServer
    store: JetStreamEventStore
    notary: Notary
    notary_dir: Path
    tenants: Tenants
    orch: Orchestrator | None
    sim: Any


async def _start_notary(server: SecureServer, directory: Path, every_s: float = 0.3) -> Notary:
    store = await JetStreamEventStore.connect(server.access("notary"), reads="direct", name="test-notary")
    try:
        return await Notary(store, directory, every_events=1000, every_s=every_s, poll_s=0.05).start()
    except BaseException:
        await store.close()
        raise


async def _stop_notary(notary: Notary) -> None:
    await notary.stop()
    await notary.store.close()


@contextlib.asynccontextmanager
async def _network(server: SecureServer, tmp: Path) -> AsyncIterator[Net]:
    orch = await Orchestrator.connect(server.access("orchestrator"), config=FAST)
    store = await JetStreamEventStore.connect(server.access("orchestrator"))
    sim = await (await SimulatedProvider.connect(server.access("provider", "p1"), heartbeat_s=0.2, slots=2)).start()
    notary = await _start_notary(server, tmp / "notary")
    net = Net(server, store, notary, tmp / "notary", Tenants(server), orch, sim)
    try:
        yield net
    finally:
        with contextlib.suppress(Exception):
            await net.sim.kill()
        await net.tenants.close()
        if net.orch is not None:
            await net.orch.close()
        with contextlib.suppress(Exception):
            await _stop_notary(net.notary)
        await store.close()


async def _signed_up_to_head(net: Net) -> int:
    head = await net.store.head()
    await eventually(lambda: net.notary.signed_size >= head, f"a checkpoint of the whole log ({head})")
    return head


async def _client(server: SecureServer, role: str, name: str, notary: Notary, keep: Path | None = None) -> Client:
    a = server.access(role, name)
    c = await Client.connect(a.url, creds=a.creds)
    c.trust(notary.key.vkey, keep)
    return c


async def test_a_quiet_log_is_checkpointed_and_a_receipt_verifies_offline_for_its_owner_only(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    server = own_nats_server
    async with _network(server, tmp_path) as net:
        await net.tenants.submit("alice", "j1", SPEC)
        await net.tenants.submit("bob", "j2", SPEC)
        await wait_for(net.store, all_jobs_ended(2), timeout=30)
        await eventually(_credited(net.store, "alice.j1"), "alice.j1 settled (its provider credited)")
        # Far fewer than the 1000 events between count-based checkpoints: the clock signed it.
        head = await _signed_up_to_head(net)
        assert 0 < head < 1000

        alice = await _client(server, "submitter", "alice", net.notary)
        cp = await alice.checkpoint()
        assert cp.size >= head and alice.checkpoints is not None and alice.checkpoints.last == cp
        receipt = await alice.receipt("j1")
        events = receipt.verify(net.notary.key)
        assert events and {e.subject.split(".")[1] for e in events} == {"alice"}
        assert {"JobSubmitted", "TaskCompleted", "JobCompleted"} <= {e.type for e in events}
        assert "TaskResultReturned" not in {e.type for e in events}  # withheld from submitters, as by the feed
        # Offline: from its JSON, with nothing but the notary's public key.
        kept = Receipt.from_json(json.loads(json.dumps(receipt.to_json())))
        assert kept.verify(net.notary.key) == events
        forged = receipt.to_json()
        forged["entries"][0]["leaf"] = forged["entries"][0]["leaf"][:-4] + "AAAA"
        with pytest.raises(BadProof):
            Receipt.from_json(forged).verify(net.notary.key)
        with pytest.raises(AccessDenied, match="not alice's"):
            await alice.receipt("bob.j2")

        # A provider's receipt holds the usage and credits that name it, and nothing else.
        p1 = await _client(server, "provider", "p1", net.notary)
        mine = (await p1.receipt("alice.j1")).verify(net.notary.key)
        assert mine and {e.type for e in mine} <= {"UsageMetered", "ProviderCredited"}
        assert {e.data.provider_id for e in mine} == {"p1"}  # type: ignore[attr-defined]
        p2 = await _client(server, "provider", "p2", net.notary)
        assert (await p2.receipt("alice.j1")).entries == ()

        # Bad or out-of-bounds requests get one line naming the field; nobody gets another's entry.
        bob_entry = next(
            e.sequence for e in (await _receipt_as_auditor(server, net, "bob.j2")) if e.type == "JobSubmitted"
        )
        for body, field in (
            ({"op": "inclusion", "position": bob_entry}, "may not have a receipt for position"),
            ({"op": "inclusion", "position": 10**9}, "must be an integer from 1 to"),
            ({"op": "consistency", "old": -1}, "must be an integer from 0 to"),
            ({"op": "receipt", "job": "../x"}, "a job id is required"),
            ({"op": "forge"}, "op is checkpoint, consistency, inclusion or receipt"),
        ):
            with pytest.raises(AccessDenied, match=re.escape(field)):
                await notary_request(alice.nc, "submitter", "alice", body)
        answer = await alice.nc.request("gf.api.submitter.alice.tlog", b"{not json", timeout=5)
        assert json.loads(answer.data) == {"error": "the request is not JSON", "field": "body"}
        for c in (alice, p1, p2):
            await c.close()

        # A restart resumes from the notary's files (nothing re-read), and what it signs next extends
        # what a client kept: the consistency proof between the two verifies.
        root, size = net.notary.tree.root(), net.notary.tree.size
        await _stop_notary(net.notary)
        net.notary = await _start_notary(server, net.notary_dir)
        assert (net.notary.tree.size, net.notary.tree.root()) == (size, root)
        keep = tmp_path / "kept-checkpoint"
        carol = await _client(server, "submitter", "carol", net.notary, keep)
        first = await carol.checkpoint()
        await net.tenants.submit("carol", "j3", SPEC)
        await wait_for(net.store, all_jobs_ended(3), timeout=30)
        await _signed_up_to_head(net)
        await carol.close()
        carol = await _client(server, "submitter", "carol", net.notary, keep)
        assert carol.checkpoints is not None and carol.checkpoints.last == first
        later = await carol.checkpoint()
        assert later.size > first.size and carol.checkpoints.last == later
        await carol.close()

        # The CLI: a receipt written to a file verifies offline; an edited one is refused in one line.
        a = server.access("submitter", "alice")
        out = tmp_path / "receipt.json"
        key = net.notary.key.vkey
        got = await _gpufleet(
            "receipt", "j1", "--nats", a.url, "--creds", str(a.creds), "--notary-key", key, "--out", str(out)
        )
        assert got.returncode == 0 and "JobSubmitted" in got.stdout, got.stdout + got.stderr
        got = await _gpufleet("receipt", "j1", "--verify", str(out), "--notary-key", key)
        assert got.returncode == 0 and "verified" in got.stdout, got.stdout + got.stderr
        doc = json.loads(out.read_text())
        doc["checkpoint"] = doc["checkpoint"].replace("\n", "\n1", 1)
        out.write_text(json.dumps(doc))
        got = await _gpufleet("receipt", "j1", "--verify", str(out), "--notary-key", key)
        assert got.returncode == 1 and got.stderr.count("\n") == 1 and "Traceback" not in got.stderr, got.stderr
        got = await _gpufleet("checkpoint", "--nats", a.url, "--creds", str(a.creds), "--notary-key", key)
        assert got.returncode == 0 and f"signed by {key}" in got.stdout, got.stdout + got.stderr


def _credited(store: JetStreamEventStore, job: str) -> Any:
    async def probe() -> bool:
        return any(env.type == "ProviderCredited" for env in await store.read_stream(f"job.{job}"))

    return probe


async def _receipt_as_auditor(server: SecureServer, net: Net, job: str) -> list[Any]:
    auditor = await _client(server, "auditor", "a1", net.notary)
    try:
        return (await auditor.receipt(job)).verify(net.notary.key)
    finally:
        await auditor.close()


async def _gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess (in a thread: the notary under test runs in this event loop)."""
    env = {**os.environ, "COLUMNS": "200", "GPUFLEET_HOME": "/nonexistent"}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gpufleet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        check=False,
    )


async def _chain_checkpoint(store: JetStreamEventStore) -> None:
    """Append an ``AuditCheckpointed`` of the unsigned chain, as the projector does; its position."""
    digest, n, last = GENESIS, 0, None
    async for env in store.read_all():
        digest, n, last = chain_step(digest, env), n + 1, env
    assert last is not None
    event = AuditCheckpointed(at=last.time, position=last.sequence, digest=digest.hex(), events=n)
    env = new_envelope(CHAIN_STREAM, event, id=f"audit-{last.sequence}", source="projector")
    await store.append(CHAIN_STREAM, [env], expected=await store.stream_position(CHAIN_STREAM))


async def _rewrite_with_admin_credentials(server: SecureServer, victim: str) -> int:
    """Delete GF_EVENTS, recreate it, republish every event with ``victim``'s ``JobSubmitted`` edited
    and every unsigned chain checkpoint recomputed; the edited position."""
    admin = await JetStreamEventStore.connect(server.access("admin"), reads="direct", name="mallory-admin")
    msgs = [m async for m in admin.read_raw(end=await admin.head())]
    await admin.js.delete_stream(EVENTS_STREAM)
    await admin.close()
    await server.ensure_topology()
    nc = await connect_nats(server.access("orchestrator"), name="mallory")
    js = nc.jetstream()
    digest, after, edited = GENESIS, {0: GENESIS}, 0
    try:
        for m in msgs:
            stream = m.subject.removeprefix("gf.ev.")
            env = decode_message(stream, m.data, m.headers, m.sequence)
            data = env.data
            if env.type == "JobSubmitted" and stream == f"job.{victim}":
                doc = json.loads(m.data)
                doc["spec"]["params"]["seconds"] = 0.02
                data, edited = DEFAULT_REGISTRY.decode(json.dumps(doc).encode()), m.sequence
            if isinstance(data, AuditCheckpointed):
                data = data.model_copy(update={"digest": after[data.position].hex()})
            body = DEFAULT_REGISTRY.encode(data)
            env = decode_message(stream, body, m.headers, m.sequence)
            digest = after[m.sequence] = chain_step(digest, env)
            headers = {
                k: v for k, v in m.headers.items() if k.startswith("ce-") or k in ("content-type", "Nats-Msg-Id")
            }
            ack = await js.publish(m.subject, body, headers=headers)
            assert ack.seq == m.sequence
    finally:
        await nc.close()
    assert edited
    return edited


async def test_a_log_rewritten_with_admin_credentials_is_detected_by_the_signed_checkpoints(
    own_nats_server: SecureServer, tmp_path: Path
) -> None:
    server = own_nats_server
    keep = tmp_path / "alice-checkpoint"
    async with _network(server, tmp_path) as net:
        await net.tenants.submit("alice", "j1", SPEC)
        await wait_for(net.store, all_jobs_ended(1), timeout=30)
        await _chain_checkpoint(net.store)
        await net.tenants.submit("alice", "j2", SPEC)
        await wait_for(net.store, all_jobs_ended(2), timeout=30)
        await _signed_up_to_head(net)
        alice = await _client(server, "submitter", "alice", net.notary, keep)
        old = await alice.checkpoint()
        old_receipt = await alice.receipt("j1")
        await alice.close()
        key = net.notary.key
        await net.sim.kill()
        assert net.orch is not None
        await net.orch.close()
        net.orch = None
        await _stop_notary(net.notary)

        edited = await _rewrite_with_admin_credentials(server, "alice.j1")

        # The unsigned chain was recomputed: the old audit finds nothing wrong with it.
        auditor = await JetStreamEventStore.connect(server.access("auditor", "a1"), reads="direct")
        report = await audit_jetstream(auditor)
        assert report.of("chain") == [] and report.checkpoints_verified >= 1
        # The signed checkpoints do: the rewrite lies before the checkpoint that no longer matches.
        found = await audit_checkpoints(auditor, key)
        assert not found.ok
        (finding,) = found.findings
        m = re.search(
            r"checkpoint #\d+ \(size (\d+)\) does not match the log: an entry between positions (\d+) and", finding
        )
        assert m is not None, finding
        assert int(m[2]) <= edited <= int(m[1]) <= old.size
        await auditor.close()

        # ... and so does `gpufleet replay --audit`, as an auditor would run it.
        a = server.access("auditor", "a1")
        cli = subprocess.run(
            [sys.executable, "-m", "gpufleet", "replay", "--audit", "--nats", a.url, "--creds", str(a.creds),
             "--notary-key", key.vkey],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        )  # fmt: skip
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert "does not match the log" in cli.stdout and "the log is not the one the notary signed" in cli.stdout
        assert "Traceback" not in cli.stdout + cli.stderr

        # The notary, restarted on its own state, refuses to sign the rewritten log.
        with pytest.raises(NotaryError, match=f"history rewritten: position {edited} "):
            await _start_notary(server, net.notary_dir)
        # So does a notary that lost its state, as long as its last published checkpoint is there.
        fresh = tmp_path / "fresh-notary"
        fresh.mkdir()
        shutil.copy(net.notary_dir / "notary.nk", fresh / "notary.nk")
        with pytest.raises(NotaryError, match="history rewritten: the log's first"):
            await _start_notary(server, fresh)

        # With those gone too (the admin deletes the checkpoint stream), a notary with the same key
        # but no memory signs the rewritten log: a client holding an older checkpoint refuses it.
        admin = await connect_nats(server.access("admin"), name="mallory-admin")
        await admin.jetstream().delete_stream("GF_CHECKPOINTS")
        await admin.close()
        await server.ensure_topology()
        shutil.rmtree(fresh)
        fresh.mkdir()
        shutil.copy(net.notary_dir / "notary.nk", fresh / "notary.nk")
        amnesiac = await _start_notary(server, fresh, every_s=0.1)
        try:
            head = await net.store.head()
            await eventually(lambda: amnesiac.signed_size >= head, "the amnesiac notary's checkpoint")
            alice = await _client(server, "submitter", "alice", amnesiac, keep)
            assert alice.checkpoints is not None and alice.checkpoints.last == old  # kept across clients
            with pytest.raises(HistoryRewritten):
                await alice.checkpoint()
            assert alice.checkpoints.last == old  # still the old one: nothing was accepted
            await alice.close()
            # The receipt taken before the rewrite still verifies, and shows what was there.
            before = {e.sequence: e for e in old_receipt.verify(key)}
            assert before[edited].data.spec.params["seconds"] == 0.01  # type: ignore[attr-defined]

            # A checkpoint signed with another key (published by whoever holds the notary's
            # credentials but not its key) is refused by the client and by the audit.
            forger = await connect_nats(server.access("notary"), name="forger")
            note = sign_checkpoint(Checkpoint(key.name, head + 5, bytes(32)), new_signing_seed())
            await forger.jetstream().publish(CHECKPOINT_SUBJECT, note.encode())
            await forger.close()
            bob = await _client(server, "submitter", "bob", amnesiac)
            with pytest.raises(BadSignature):
                await bob.checkpoint()
            await bob.close()
        finally:
            await _stop_notary(amnesiac)


async def _refused(nc: Any, subject: str) -> bool:
    for _ in range(60):
        await nc.flush()
        if subject.lower() in denied_subjects(nc):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_only_the_notary_writes_checkpoints_and_it_cannot_write_the_log(own_nats_server: SecureServer) -> None:
    server = own_nats_server
    notary = await connect_nats(server.access("notary"), name="notary")
    try:
        await notary.publish("gf.ev.job.alice.j9", b"{}")
        assert await _refused(notary, "gf.ev.job.alice.j9")
        ack = await notary.jetstream().publish(CHECKPOINT_SUBJECT, b"not signed, but the notary's to write")
        assert ack.stream == "GF_CHECKPOINTS"
    finally:
        await notary.close()
    for role, name in (("admin", "admin"), ("orchestrator", "orchestrator"), ("submitter", "alice"),
                       ("provider", "p1"), ("auditor", "a1")):  # fmt: skip
        nc = await connect_nats(server.access(role, name), name=role)
        try:
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(CHECKPOINT_SUBJECT, b"forged")
            assert await _refused(nc, CHECKPOINT_SUBJECT), f"{role} may publish checkpoints"
        finally:
            await nc.close()


async def _log_grew(store: JetStreamEventStore) -> int:
    for _ in range(600):
        head = await store.head()
        if head:
            return head
        await asyncio.sleep(0.05)
    raise AssertionError("nothing reached the log in 30 s")


def _signed(notary: Notary, size: int) -> Any:
    return lambda: notary.signed_size >= size


async def test_up_makes_the_notary_key_once_records_it_and_signs_a_quiet_log(tmp_path: Path) -> None:
    from gpufleet.network import LocalNetwork, NetworkConfig

    config = NetworkConfig(
        data_dir=tmp_path / "net", port=0, provider=False, projections=False, orchestrator=FAST, notary_every_s=0.2
    )
    keys = []
    for _ in range(2):
        net = await LocalNetwork(config).start()
        try:
            assert net.notary is not None
            info = json.loads((config.data_dir / "network.json").read_text())
            seed = config.data_dir / "notary" / "notary.nk"
            assert (seed.stat().st_mode & 0o777) == 0o600
            assert info["notary_key"] == (config.data_dir / "notary" / "notary.vkey").read_text().strip()
            keys.append(info["notary_key"])
            nc = await connect_nats(net.access("submitter", "alice"), name="alice")
            await nc.jetstream().publish("gf.in.submitter.alice.submit.j1", json.dumps(SPEC).encode())
            a = net.access("submitter", "alice")
            alice = await Client.connect(a.url, creds=a.creds)
            alice.trust(info["notary_key"])
            head = await _log_grew(net.notary.store)
            await eventually(_signed(net.notary, head), "a checkpoint of the quiet log")
            assert (await alice.checkpoint()).size >= head
            await alice.close()
            await nc.close()
        finally:
            await net.stop()
    assert keys[0] == keys[1]  # made on the first start, kept
