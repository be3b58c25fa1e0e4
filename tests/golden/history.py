"""A recorded history and what it means: the log and intake files, and the World, read models and audit they give.

The recording (``record.py``) writes these files once, from a real run; the tests (``test_golden_real.py``)
compute the same three results again from the same files with the current code and compare.

- ``golden_real_log.jsonl``: the domain log (GF_EVENTS) in order, one structured CloudEvent per line.
- ``golden_real_intake.jsonl``: every intake message, ``{"seq", "subject", "body"}`` per line.
- ``golden_real_meta.json``: how it was recorded (the orchestrator's settings the deciders saw).
- ``golden_real_world.json``: :func:`world_summary` of the log folded by ``actors.world.World``.
- ``golden_real_readmodels.json``: :func:`read_models`, every projection table rebuilt from the log.
- ``golden_real_audit.json``: :func:`audit`'s report.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from actors.provenance import IntakeRecord, intake_from, replay
from actors.world import World
from events import Envelope, MemoryEventStore, from_json_line
from projections import Projector, SqliteStore
from projections.audit import AuditReport, audit_events

__all__ = [
    "AUDIT",
    "INTAKE",
    "LOG",
    "META",
    "READ_MODELS",
    "WORLD",
    "IntakeRecord",
    "audit",
    "dump_json",
    "dump_tables",
    "read_intake",
    "read_log",
    "read_models",
    "redecide",
    "world_summary",
]

HERE = Path(__file__).parent
LOG = HERE / "golden_real_log.jsonl"
INTAKE = HERE / "golden_real_intake.jsonl"
META = HERE / "golden_real_meta.json"
WORLD = HERE / "golden_real_world.json"
READ_MODELS = HERE / "golden_real_readmodels.json"
AUDIT = HERE / "golden_real_audit.json"


def read_log(path: Path = LOG) -> list[Envelope]:
    """The recorded log, decoded by the current registry (old versions upcast)."""
    return [from_json_line(line) for line in path.read_text().splitlines() if line.strip()]


def read_intake(path: Path = INTAKE) -> list[IntakeRecord]:
    """The recorded intake messages, in stream order."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append(IntakeRecord(int(rec["seq"]), rec["subject"], rec["body"].encode()))
    return out


# ---- (a) the World ---------------------------------------------------------------------------------


def world_summary(log: list[Envelope]) -> dict[str, Any]:
    """The log folded by ``World`` (the deciders' ``evolve``), as stable JSON: what the log means today.

    Only what the log determines: statuses, counters, who holds what, the ledger as the job sees it,
    reputations. Lease ids and result digests are copied from the log; no wall-clock time is added.
    """
    w = World()
    for env in log:
        w.apply(env)
    jobs = {}
    for job_id, j in sorted(w.jobs.items()):
        jobs[job_id] = {
            "status": j.status,
            "submitter": j.spec.submitter if j.spec else None,
            "workload": j.spec.workload if j.spec else None,
            "task_count": j.task_count,
            "deadline_missed": j.deadline_missed,
            "metered": {t: [m.provider_id, m.gpu_ms, m.amount_micros] for t, m in sorted(j.metered.items())},
            "settled": {p: list(v) for p, v in sorted(j.settled.items())},
            "tasks": w.job_tasks(job_id),
        }
    tasks = {}
    for task_id, t in sorted(w.tasks.items()):
        tasks[task_id] = {
            "status": t.status,
            "attempt": t.attempt,
            "failures": t.failures,
            "lost_leases": t.lost_leases,
            "provider": t.lease.provider_id if t.lease else None,
            "lease": t.lease.lease_id if t.lease else None,
            "lease_started": t.lease is not None and t.lease.started_at is not None,
            "price_micros": t.lease.price_micros if t.lease else None,
            "progress": t.progress,
            "checkpoint": t.checkpoint.name if t.checkpoint else None,
            "checkpoint_step": t.checkpoint_step,
            "result": t.result.sha256 if t.result else None,
            "completed_lease": t.completed_lease,
            "gpu_ms": t.gpu_ms,
            "waiting_until_set": t.not_before is not None,
            "holders": sorted({provider for _, provider in t.held}),
        }
    providers = {}
    for pid, p in sorted(w.providers.items()):
        caps = p.capabilities
        rep = w.reputation.get(pid)
        providers[pid] = {
            "status": p.status,
            "name": p.name,
            "was_draining": p.was_draining,
            "backend": caps.backend if caps else None,
            "slots": caps.slots if caps else None,
            "price_micros": caps.price_micros if caps else None,
            "workloads": list(caps.workloads) if caps else None,
            "calibrated": p.calibration is not None,
            "active": sorted(w.active.get(pid, ())),
            "reputation": None
            if rep is None
            else {
                "completed": rep.completed,
                "failed": rep.failed,
                "expired": rep.expired,
                "refused": rep.refused,
                "value": round(rep.value, 9),
            },
        }
    return {
        "position": w.position,
        "events": w.events,
        "intake_low": w.intake_low,
        "unfinished": w.unfinished(),
        "jobs": jobs,
        "tasks": tasks,
        "providers": providers,
    }


# ---- (b) the read models ---------------------------------------------------------------------------


async def read_models(log: list[Envelope], batch_size: int = 17) -> dict[str, list[list[Any]]]:
    """Every projection table rebuilt from ``log`` (odd batches: commits fall mid-story), JSON-ready."""
    store = MemoryEventStore()
    for env in log:
        result = await store.append(env.subject, [env], expected=None)
        assert result.first == env.sequence, f"the log's positions must be 1..n, {env.sequence} is not"
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteStore(Path(tmp) / "golden.db")
        projector = Projector(store, db, batch_size=batch_size)
        await projector.catch_up()
        tables = {name: [list(row) for row in rows] for name, rows in projector.dump().items()}
        db.close()
    as_json: dict[str, list[list[Any]]] = json.loads(json.dumps(tables))  # as JSON reads them back
    return as_json


# ---- (c) the audit ---------------------------------------------------------------------------------


async def audit(log: list[Envelope], intake: list[IntakeRecord]) -> AuditReport:
    """The audit of the log, with the intake stream's sequence -> subject."""
    return await audit_events(log, {r.seq: r.subject for r in intake})


# ---- writing ---------------------------------------------------------------------------------------


def dump_json(value: Any) -> str:
    """Stable, reviewable JSON."""
    return json.dumps(value, indent=1, sort_keys=True) + "\n"


def dump_tables(tables: dict[str, list[list[Any]]]) -> str:
    """Tables as JSON with one row per line: small, and a change shows as a one-line diff."""
    parts = []
    for name in sorted(tables):
        rows = ",\n".join("  " + json.dumps(row, sort_keys=True) for row in tables[name])
        parts.append(f" {json.dumps(name)}: [\n{rows}\n ]" if rows else f" {json.dumps(name)}: []")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def redecide(log: list[Envelope], intake: list[IntakeRecord], *, grace_s: float) -> list[str]:
    """Every way the current deciders disagree with the recorded decisions (the product's provenance
    replayer, with the idempotence check on), as lines; empty when none do."""
    report = asyncio.run(replay(log, intake_from(intake), grace_s=grace_s, idempotence=True))
    return [str(p) for p in report.problems]
