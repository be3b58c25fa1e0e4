"""Attack review of fair admission (issue 12): what a submitter, or someone who writes the log, can do
with the new quotas, windows and audit causes.

- A duplicate submission (same job id, another spec) that the job's decider refuses must not release
  the reservation of the first submission, still on its way to the log: else a burst of
  ``[X, X', Y, Y', ...]`` handled before the log shows them passes ``jobs_in_flight``.
- A quota refusal is taken on trust by the provenance audit, but only where a quota could refuse:
  a submitter's message, for a quota that refuses (never ``tasks_running`` or ``intake_burst``), and
  the job quotas only for a submission. A forged one that censors a provider's report, or names a
  quota that never refuses, is flagged.
- Windows stay exact through lease expiries, retries and completed jobs (the property test of
  ``tests/unit/test_window.py`` leases and cancels only).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from actors.admission import Admission, QuotaExceeded
from actors.job import CompleteJob
from actors.provenance import QUOTA, IntakeRecord, intake_from, replay
from actors.reactions import Intent
from actors.task import ExpireLease, ReportCompleted, ReportStarted
from actors.window import Usage
from events import Envelope
from events.intake import InputRejected
from events.quotas import QuotaConfig
from events.types import ResultRef
from tests.factories import T0
from tests.golden import history
from tests.unit.test_window import Net

# ---- admission: a refused duplicate frees nothing of the original's ----------------------------------


def test_a_refused_duplicate_does_not_free_the_reservation_of_the_submission_before_it() -> None:
    a = Admission(QuotaConfig.parse(["jobs_in_flight=1"]), clock=lambda: 0.0)
    log_has = set[str]()
    # X is admitted and on its way to the log (the log does not show it yet).
    assert a.admit_job("mallory", "mallory.x", 1, Usage(), log_has.__contains__) is None
    # X again, another spec: admitted as a resubmission, then refused by the job's decider
    # (DuplicateJob), so the orchestrator releases what it admitted for it.
    assert a.admit_job("mallory", "mallory.x", 1, Usage(), log_has.__contains__) is None
    a.release("mallory", "mallory.x")
    # X is still in flight: a second job is past jobs_in_flight=1.
    refused = a.admit_job("mallory", "mallory.y", 1, Usage(), log_has.__contains__)
    assert isinstance(refused, QuotaExceeded) and refused.field == "quota.jobs_in_flight"


def test_a_failed_submission_still_releases_its_own_reservation() -> None:
    a = Admission(QuotaConfig.parse(["jobs_in_flight=1"]), clock=lambda: 0.0)
    assert a.admit_job("alice", "alice.x", 1, Usage(), lambda j: False) is None
    a.release("alice", "alice.x")  # refused by the decider (say, a bad spec): it holds nothing
    assert a.admit_job("alice", "alice.y", 1, Usage(), lambda j: False) is None


# ---- the audit: a quota refusal only where a quota could refuse ----------------------------------------

LOG = history.read_log()
INTAKE = [IntakeRecord(r.seq, r.subject, r.body) for r in history.read_intake()]


def _with_refusal(subject: str, body: bytes, field: str) -> tuple[list[Envelope], list[IntakeRecord]]:
    """The golden log and intake, plus one more intake message whose outcome is a quota refusal."""
    seq = max(r.seq for r in INTAKE) + 1
    last = LOG[-1]
    at = last.data.at + timedelta(milliseconds=5)  # type: ignore[attr-defined]
    rejected = InputRejected(at=at, intake_seq=seq, subject=subject, reason=f"{field}: too much", field=field)
    role, name = subject.split(".")[2:4]
    env = Envelope(id=f"in-{seq}", source="gpufleet/orchestrator", subject=f"intake.{role}.{name}", data=rejected)
    log = [*LOG, env]
    return [e.at_position(i) for i, e in enumerate(log, start=1)], [*INTAKE, IntakeRecord(seq, subject, body)]


_REPORT = next(r for r in INTAKE if r.subject.startswith("gf.in.provider.") and b'"completed"' in r.body)
_SUBMIT = next(r for r in INTAKE if r.subject.startswith("gf.in.submitter.") and ".submit." in r.subject)
_CANCEL = next(r for r in INTAKE if ".cancel." in r.subject)


@pytest.mark.parametrize(
    ("subject", "body", "field"),
    [
        # A provider's completion, censored as if over a rate: providers are never rate-limited.
        (_REPORT.subject, _REPORT.body, "quota.intake_per_s"),
        # Quotas that never refuse anything (tasks_running parks; intake_burst is the bucket's size).
        (_SUBMIT.subject.replace(".submit.", ".submit.q"), _SUBMIT.body, "quota.tasks_running"),
        (_SUBMIT.subject.replace(".submit.", ".submit.q"), _SUBMIT.body, "quota.intake_burst"),
        # A made-up quota.
        (_SUBMIT.subject.replace(".submit.", ".submit.q"), _SUBMIT.body, "quota.anything"),
        # A job quota for a message that submits no job (a cancellation).
        (_CANCEL.subject, _CANCEL.body, "quota.jobs_in_flight"),
    ],
    ids=["provider-report-rate", "tasks_running", "intake_burst", "made-up", "cancel-jobs_in_flight"],
)
async def test_a_quota_refusal_no_quota_could_make_is_flagged(subject: str, body: bytes, field: str) -> None:
    log, intake = _with_refusal(subject, body, field)
    report = await replay(log, intake_from(intake))
    assert not report.ok, f"a forged {field} refusal of {subject} passed the audit on trust"
    assert report.problems[0].position == len(log)


@pytest.mark.parametrize("field", ["quota.intake_per_s", "quota.jobs_in_flight", "quota.tasks_queued"])
async def test_a_quota_refusal_of_a_submission_is_taken_on_trust(field: str) -> None:
    """The legitimate case stays a pass, counted apart (a regression test for the fix above)."""
    log, intake = _with_refusal(_SUBMIT.subject.replace(".submit.", ".submit.q"), _SUBMIT.body, field)
    report = await replay(log, intake_from(intake))
    assert report.ok, "\n".join(map(str, report.problems))
    assert report.causes[QUOTA] == 1 and report.on_trust == report.causes["liveness"] + 1


# ---- windows: exact through expiries, retries and completions ------------------------------------------


def _complete(net: Net, task_id: str) -> None:
    t = net.world.tasks[task_id]
    lease = t.lease
    assert lease is not None
    start = ReportStarted(command_id=f"st-{task_id}", at=T0, lease_id=lease.lease_id, provider_id="p1")
    net.run(Intent("task", task_id, start))
    result = ResultRef(sha256="0" * 64, size=1, inline={"ok": True})
    done = ReportCompleted(
        command_id=f"rc-{task_id}", at=T0, lease_id=lease.lease_id, provider_id="p1", gpu_ms=1, result=result
    )
    net.run(Intent("task", task_id, done))


def test_expiries_and_completions_leave_usage_exact_and_a_finished_submitter_forgotten() -> None:
    net = Net(window=4)
    job = net.submit("alice", "j", 10)
    w = net.core.windows
    # Lease 3, let one lease expire (back to the queue), complete the rest, until the job is done.
    first = net.queued(job)[:3]
    for t in first:
        net.lease(t)
    lease = net.world.tasks[first[0]].lease
    assert lease is not None
    expire = ExpireLease(command_id="ex-0", at=T0 + timedelta(minutes=5), lease_id=lease.lease_id, reason="expired")
    net.run(Intent("task", first[0], expire))
    assert net.world.tasks[first[0]].status == "queued"
    u = w.usage("alice")
    assert (u.jobs, u.waiting, u.running) == (1, 8, 2)
    assert u.materialised == len(net.queued(job))
    for _ in range(50):
        leased = [t for t in net.world.tasks_by_job[job] if net.world.tasks[t].status == "leased"]
        for t in leased:
            _complete(net, t)
        for t in net.queued(job):
            net.lease(t)
        if not leased and not net.queued(job):
            break
    assert net.world.jobs[job].status == "completed", net.world.jobs[job].status
    net.run(Intent("job", job, CompleteJob(command_id="cj-again", at=T0)))  # again: a no-op
    assert w.usage("alice") == Usage() and w.submitters() == []
    assert w.to_create(job) == 0


def test_creations_that_land_after_their_job_was_cancelled_are_cancelled_and_stop_counting() -> None:
    net = Net(window=4)
    job = net.submit("alice", "j", 100)
    net.hold = True
    for t in net.queued(job)[:2]:
        net.lease(t)  # the window frees up: 2 creations planned, still on their way to the log
    assert len(net.held) == 2
    net.hold = False
    net.cancel(job)
    for intent in net.held:  # they land after the job ended (a race the orchestrator cannot avoid)
        net.run(intent)
    tasks = net.world.tasks_by_job[job]
    assert len(tasks) == 6 and all(net.world.tasks[t].status == "cancelled" for t in tasks)
    w = net.core.windows
    assert w.usage("alice") == Usage() and w.submitters() == []
