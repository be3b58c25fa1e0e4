"""Checkpoint and resume across a lost provider, and a drain that finishes its work before leaving."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
from typing import Any

import nats.js.errors
import numpy as np
import pytest

from events.live import LiveProgress
from events.store.blobs import ObjectIntegrityError
from events.store.topology import OBJECT_CHUNK_BYTES, Topology
from events.subjects import intake_subject, job_of_task, live_filter, live_subject, object_name, report_subject
from events.types import ObjectRef
from tests.integration.runtime_support import Orchestrator, new_id, provider
from tests.runtime_reference import ref_stencil
from tests.secure import SecureServer

STENCIL: dict[str, Any] = {"n": 40, "steps": 240, "alpha": 0.2, "checkpoint_every": 20, "step_delay_s": 0.01}


async def test_killed_mid_task_then_resumed_elsewhere_from_the_checkpoint(nats_server: SecureServer) -> None:
    async with Orchestrator.connect(nats_server) as orch:
        async with provider(nats_server) as a:
            task = await orch.grant(a.provider_id, "stencil", STENCIL)
            await orch.wait_for(task, ("progress",), where=lambda b: b.checkpoint_step >= 60)
            (pid,) = a.worker_pids()
            os.kill(pid, signal.SIGKILL)  # the worker dies mid-task
            failed = await orch.finished(task)
            assert failed.reason == "worker_crashed" and "SIGKILL" in failed.message
        # Provider a is gone (closed without a word, as a lost provider). The orchestrator hands the
        # task to another provider with the newest checkpoint it was told about.
        latest = max((s.body for s in orch.of(task, "progress") if s.body.checkpoint), key=lambda b: b.checkpoint_step)
        step, ref = latest.checkpoint_step, latest.checkpoint
        assert 60 <= step < STENCIL["steps"]
        # The checkpoint is a's own object, named by its digest; another provider can still read it.
        assert ref.name == object_name("provider", a.provider_id, ref.sha256)
        assert ref.name.startswith(f"provider.{a.provider_id}.")
        saved_bytes = await orch.get_object(ref)
        assert hashlib.sha256(saved_bytes).hexdigest() == ref.sha256 and len(saved_bytes) == ref.size
        with np.load(io.BytesIO(saved_bytes)) as saved:
            assert int(saved["_step"]) == step and saved["u"].shape == (40, 40)
        n_reports = len(orch.reports[task])

        async with provider(nats_server) as b:
            body = await orch.run(
                b.provider_id, "stencil", STENCIL, task_id=task, attempt=2, resume_from=ref, resume_step=step
            )
            resumed = await orch.result(body)
            # It resumed: it did not start from zero.
            assert resumed["resumed_from_step"] == step
            assert resumed["steps_run"] == STENCIL["steps"] - step
            second = orch.reports[task][n_reports:]
            first_progress = next(s.body for s in second if s.kind == "progress")
            assert first_progress.fraction > step / STENCIL["steps"]
            # And it reached exactly the state an uninterrupted run reaches.
            fresh = await orch.result(await orch.run(b.provider_id, "stencil", {**STENCIL, "step_delay_s": 0.0}))
            for key in ("sum", "l2", "center"):
                assert resumed[key] == fresh[key]
            u = ref_stencil(40, STENCIL["steps"], 0.2)
            assert resumed["sum"] == pytest.approx(u.sum(), rel=1e-12)

            # A checkpoint whose digest does not match is refused, not silently used: a reference
            # whose sha256 is not that of the bytes it names, ...
            bad = ref.model_copy(update={"sha256": "0" * 64})
            refused = await orch.run(
                b.provider_id, "stencil", STENCIL, task_id=task, attempt=3, resume_from=bad, resume_step=step
            )
            assert refused.report == "failed" and refused.reason == "invalid_params" and "sha256" in refused.message
            # ... and a consistent reference to stored bytes that are not what its digest says (written
            # behind the providers' backs by a hub user: no provider may write under a's name).
            forged = await forge_object(orch, a.provider_id, saved_bytes)
            with pytest.raises(ObjectIntegrityError):
                await orch.get_object(forged)
            refused = await orch.run(
                b.provider_id, "stencil", STENCIL, task_id=task, attempt=4, resume_from=forged, resume_step=step
            )
            assert refused.report == "failed" and refused.reason == "invalid_params" and "sha256" in refused.message
            assert all(s.body.lease_id != refused.lease_id for s in orch.of(task, "started"))  # never ran
            # Every lease ended once (the killed one too, reported by a), and nothing came after its end.
            await orch.assert_contract_kept(b, ended=[a.provider_id])


async def forge_object(orch: Orchestrator, owner: str, original: bytes) -> ObjectRef:
    """Store tampered bytes of ``original`` under provider ``owner``'s name and a digest they do not have."""
    t = Topology()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    digest = hashlib.sha256(b"forged" + original).hexdigest()  # not the digest of any bytes stored here
    name = object_name("provider", owner, digest)
    chunks = [bytes(tampered[i : i + OBJECT_CHUNK_BYTES]) for i in range(0, len(tampered), OBJECT_CHUNK_BYTES)]
    for i, chunk in enumerate(chunks):
        await orch.js.publish(f"{t.object_prefix}.{name}.{i}", chunk)
    manifest = {"size": len(tampered), "chunks": len(chunks), "sha256": digest}
    await orch.js.publish(f"{t.object_prefix}.{name}.m", json.dumps(manifest, sort_keys=True).encode())
    return ObjectRef(bucket=t.objects_stream, name=name, sha256=digest, size=len(tampered))


async def test_drain_finishes_running_work_then_leaves(nats_server: SecureServer) -> None:
    async with Orchestrator.connect(nats_server) as orch, provider(nats_server) as rt:
        pid = rt.provider_id
        task = await orch.grant(pid, "sleep", {"seconds": 1.0, "steps": 10})
        await orch.wait_for(task, ("started", "progress"))  # running (progress implies the start)
        drain = asyncio.create_task(rt.drain("maintenance"))
        await orch.wait_for_subject(intake_subject("provider", pid, "drain"))
        late = await orch.grant(pid, "noop", {})
        refused = await orch.finished(late)
        assert refused.report == "failed" and refused.reason == "provider_error" and "draining" in refused.message
        await asyncio.wait_for(drain, 10)
        assert (await orch.finished(task)).report == "completed"
        subjects = [s for s, _ in orch.intake]
        leave = subjects.index(intake_subject("provider", pid, "leave"))
        assert leave > max(i for i, s in enumerate(subjects) if s == report_subject(pid, task))
        kv = await orch.js.key_value("gf_heartbeats")
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(pid)
        assert rt.worker_pids() == []
        await orch.assert_contract_kept(ended=[pid])


async def test_live_progress_is_not_durable_and_a_resume_starts_from_the_last_checkpoint(
    nats_server: SecureServer,
) -> None:
    """A task of a submitter's job: its fraction and rate go live on core NATS, only its checkpoints go
    through intake. Killed past its last checkpoint, its live progress is lost, and that costs nothing:
    the next attempt resumes from the checkpoint, exactly."""
    params = {**STENCIL, "steps": 300, "checkpoint_every": 100}  # a checkpoint a second, progress twice
    task_id = f"alice.{new_id('j')}.0"
    live: list[tuple[str, LiveProgress]] = []

    async def heard(msg: Any) -> None:
        live.append((msg.subject, LiveProgress.model_validate_json(msg.data)))

    async with nats_server.connection("submitter", "alice") as alice, Orchestrator.connect(nats_server) as orch:
        await alice.subscribe(str(live_filter(job_of_task(task_id))), cb=heard)
        await alice.flush()
        async with provider(nats_server) as a:
            await orch.grant(a.provider_id, "stencil", params, task_id=task_id)
            first = await orch.wait_for(task_id, ("progress",), where=lambda b: b.checkpoint_step >= 100)
            step = first.body.checkpoint_step
            # Wait for live progress past that checkpoint, then kill the worker before the next one.
            for _ in range(200):
                if any(p.fraction > step / params["steps"] for _, p in live):
                    break
                await asyncio.sleep(0.02)
            (pid,) = a.worker_pids()
            os.kill(pid, signal.SIGKILL)
            failed = await orch.finished(task_id)
            assert failed.reason == "worker_crashed"
            lease_id, holder = failed.lease_id, a.provider_id
        # Through intake: only reports that carry a checkpoint (and the start and the end).
        durable = orch.of(task_id, "progress")
        assert durable and all(b.body.checkpoint is not None for b in durable)
        latest = max(durable, key=lambda s: s.body.checkpoint_step).body
        # Live: from the holder, under its lease, on its own subject; further than the checkpoint.
        assert live and {s for s, _ in live} == {live_subject(task_id, holder)}
        assert {p.lease_id for _, p in live} == {lease_id}
        lost = max(p.fraction for _, p in live)
        assert lost > latest.checkpoint_step / params["steps"], "the live progress went no further"
        async with provider(nats_server) as b:
            body = await orch.run(
                b.provider_id,
                "stencil",
                params,
                task_id=task_id,
                attempt=2,
                resume_from=latest.checkpoint,
                resume_step=latest.checkpoint_step,
            )
            resumed = await orch.result(body)
            assert resumed["resumed_from_step"] == latest.checkpoint_step
            assert resumed["steps_run"] == params["steps"] - latest.checkpoint_step
            fresh = await orch.result(await orch.run(b.provider_id, "stencil", {**params, "step_delay_s": 0.0}))
            assert all(resumed[k] == fresh[k] for k in ("sum", "l2", "center"))
        await orch.assert_contract_kept()
