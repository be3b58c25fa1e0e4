"""The whole audit, wired: the read side's checks (``projections.audit``) and the provenance replayer
(``actors.provenance``) in one pass over the log, reported as one (neither package may import the other)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from actors.provenance import (
    IntakeRecord,
    ProvenanceReport,
    Replayer,
    intake_stream_source,
    object_loader,
    stream_head,
)
from events.codec import decode_message
from events.errors import InvalidPayload
from events.store.jetstream import JetStreamEventStore
from events.subjects import INTAKE_STREAM
from projections.audit import Auditor, AuditReport, Finding

__all__ = ["add_provenance", "full_audit"]


def add_provenance(report: AuditReport, provenance: ProvenanceReport) -> AuditReport:
    """Add the replayer's problems to ``report`` as ``provenance`` findings, with its coverage."""
    report.coverage["provenance"] = provenance.decisions
    for p in provenance.problems:
        report.findings.append(Finding("provenance", p.position or None, f"{p.event} on {p.stream}: {p.message}"))
    return report


async def full_audit(
    store: JetStreamEventStore, *, intake_stream: str = INTAKE_STREAM
) -> tuple[AuditReport, ProvenanceReport]:
    """Audit the log of ``store`` and re-decide every decision in it, reading the log and the intake
    stream once each; the provenance problems are also in the audit report (as ``provenance``)."""
    head = await store.head()
    intake_head = await stream_head(store, intake_stream)
    subjects: dict[int, str] = {}

    async def messages() -> AsyncIterator[IntakeRecord]:
        if intake_head:
            async for m in store.read_raw(intake_stream, end=intake_head):
                subjects[m.sequence] = m.subject
                yield IntakeRecord(m.sequence, m.subject, m.data)

    intake = messages()
    auditor = Auditor()
    replayer = Replayer(intake_stream_source(intake), load_object=object_loader(store))
    cut = len(store.settings.prefix) + 1
    async for m in store.read_raw(end=head):
        try:
            env = decode_message(m.subject[cut:], m.data, m.headers, m.sequence)
        except InvalidPayload as e:
            auditor.invalid(m.sequence, e)
            continue
        auditor.feed(env)
        await replayer.feed(env)
    provenance = await replayer.finish()
    async for _ in intake:  # the rest of the intake, which no decision named: its outcomes are checked
        pass
    report = auditor.report(subjects)
    return add_provenance(report, provenance), provenance
