"""Admission (``actors.admission``) and quota configuration (``events.quotas``): each limit refuses
with a reason that names it, a burst admitted concurrently cannot overshoot, and bad settings are
one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.admission import Admission, QuotaExceeded
from actors.window import Usage
from events.errors import InvalidPayload
from events.quotas import QuotaConfig


def admission(*settings: str) -> tuple[Admission, list[float]]:
    now = [0.0]
    return Admission(QuotaConfig.parse(list(settings)), clock=lambda: now[0]), now


def never(job_id: str) -> bool:
    return False


def test_jobs_in_flight_counts_the_log_and_the_submissions_not_in_it_yet() -> None:
    a, _ = admission("jobs_in_flight=3")
    usage = Usage(jobs=1)
    assert a.admit_job("alice", "alice.a", 1, usage, never) is None
    assert a.admit_job("alice", "alice.b", 1, usage, never) is None  # 1 in the log + 1 admitted
    refused = a.admit_job("alice", "alice.c", 1, usage, never)
    assert isinstance(refused, QuotaExceeded) and refused.field == "quota.jobs_in_flight"
    assert "3 jobs in flight" in str(refused) and str(refused).startswith("quota.jobs_in_flight: ")
    # Once the log has them, they are counted there (not twice); a released one holds nothing.
    a.release("alice", "alice.b")
    assert a.admit_job("alice", "alice.c", 1, usage, never) is None
    # Another submitter has its own quota.
    assert a.admit_job("bob", "bob.a", 1, Usage(), never) is None


def test_tasks_queued_refuses_a_job_that_would_pass_it_and_admits_one_that_fits() -> None:
    a, _ = admission("tasks_queued=1000")
    refused = a.admit_job("alice", "alice.big", 901, Usage(jobs=1, waiting=100), never)
    assert isinstance(refused, QuotaExceeded) and refused.field == "quota.tasks_queued"
    assert a.admit_job("alice", "alice.fits", 900, Usage(jobs=1, waiting=100), never) is None
    refused = a.admit_job("alice", "alice.one", 1, Usage(jobs=1, waiting=100), never)
    assert isinstance(refused, QuotaExceeded), "the admitted 900 count before the log shows them"


def test_a_resubmission_is_left_to_the_jobs_decider() -> None:
    a, _ = admission("jobs_in_flight=1")
    assert a.admit_job("alice", "alice.a", 1, Usage(), never) is None
    assert a.admit_job("alice", "alice.a", 1, Usage(), never) is None  # the same job again
    assert a.admit_job("alice", "alice.a", 1, Usage(jobs=1), lambda j: j == "alice.a") is None


def test_object_bytes_refuses_submissions_while_past_it() -> None:
    a, _ = admission("object_bytes=1000")
    a.stored("alice", 999)
    assert a.admit_job("alice", "alice.a", 1, Usage(), never) is None
    a.stored("alice", 2)
    refused = a.admit_job("alice", "alice.b", 1, Usage(), never)
    assert isinstance(refused, QuotaExceeded) and refused.field == "quota.object_bytes"
    assert a.admit_job("bob", "bob.a", 1, Usage(), never) is None


def test_the_intake_rate_is_a_token_bucket_per_submitter_and_never_limits_providers() -> None:
    a, now = admission("intake_per_s=10", "intake_burst=5", "alice.intake_per_s=100")
    assert [a.arrival("submitter", "bob") is None for _ in range(6)] == [True] * 5 + [False]
    refusal = a.arrival("submitter", "bob")
    assert isinstance(refusal, QuotaExceeded) and refusal.field == "quota.intake_per_s"
    now[0] = 0.1  # one token back
    assert a.arrival("submitter", "bob") is None
    assert a.arrival("submitter", "bob") is not None
    assert all(a.arrival("provider", "p1") is None for _ in range(1000))
    assert a.rate_refused == {"bob": 3}


def test_the_quota_report_tells_a_submitter_its_own_and_an_auditor_everyones() -> None:
    a, _ = admission("tasks_running=64", "alice.tasks_running=8")
    usage = {"alice": Usage(jobs=2, waiting=10, running=3, materialised=4)}

    def of(who: str) -> Usage:
        return usage.get(who, Usage())

    mine = a.report("submitter", "alice", of, ["alice"])
    assert mine["submitter"] == "alice" and mine["limits"]["tasks_running"] == 8
    assert mine["usage"]["jobs_in_flight"] == 2 and mine["usage"]["tasks_queued"] == 10
    everyone = a.report("auditor", "audit", of, ["alice"])
    assert everyone["default"]["tasks_running"] == 64 and set(everyone["submitters"]) == {"alice"}
    assert "error" in a.report("provider", "p1", of, ["alice"])


def test_quota_settings_and_files(tmp_path: Path) -> None:
    f = tmp_path / "quotas.toml"
    f.write_text("[default]\njobs_in_flight = 5\n[submitters.alice]\ntasks_running = 2\n")
    c = QuotaConfig.parse(["bob.intake_per_s=1.5"], f)
    assert c.of("alice").jobs_in_flight == 5 and c.of("alice").tasks_running == 2
    assert c.of("bob").intake_per_s == 1.5 and c.of("carol") == c.default
    for bad, field in (
        (["tasks_running=0"], "quota.tasks_running"),
        (["nonsense=1"], "quota.nonsense"),
        (["tasks_running"], "quota"),
        (["a b.tasks_running=1"], "quota.a b"),
    ):
        with pytest.raises(InvalidPayload) as e:
            QuotaConfig.parse(bad)
        assert e.value.field == field
    f.write_text("[nope]\n")
    with pytest.raises(InvalidPayload, match="unknown table"):
        QuotaConfig.parse([], f)


def test_quota_requests_are_rate_limited_per_identity() -> None:
    a, now = admission()
    assert all(a.ask("submitter", "alice") for _ in range(20))
    assert not a.ask("submitter", "alice")
    assert a.ask("submitter", "bob") and a.ask("auditor", "alice")  # each identity its own
    now[0] = 0.1
    assert a.ask("submitter", "alice")  # one back after a tenth of a second
