"""Refused submissions are jobs people can see, and the tables people read fit 80 columns.

A submission refused at intake (a bad field sent over raw NATS) never became a job, yet its submitter
asks `gpufleet status` and `gpufleet jobs` about it: the jobs view shows it as rejected, with the
reason and the field. And at 80 columns every table keeps its ids whole and its devices on one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace

from rich.console import Console

from events import Envelope, new_envelope
from events.intake import InputRejected
from events.subjects import intake_subject, outcomes_stream_of, submitted_job
from projections.eta import EtaJobRow
from projections.fleet import ProviderRow
from projections.jobs import JobRow, JobsView
from tests.factories import at

WIDTH = 80


def refused(
    seq: int, subject: str, reason: str = "Input should be less than or equal to 9", field: str = "priority"
) -> Envelope:
    """The log's record of intake message ``seq`` on ``subject`` being refused, at position ``seq``."""
    return new_envelope(
        outcomes_stream_of(subject),
        InputRejected(at=at(seq), intake_seq=seq, subject=subject, reason=reason, field=field),
        id=f"out-{seq}",
        source="tests",
    ).at_position(seq)


def test_the_submission_subject_names_the_senders_own_job_and_nothing_else() -> None:
    assert submitted_job(intake_subject("submitter", "alice", "submit", "j1")) == "alice.j1"
    assert submitted_job(intake_subject("submitter", "alice", "cancel", "j1")) is None
    assert submitted_job(intake_subject("provider", "alice", "submit", "j1")) is None
    assert submitted_job("gf.in.submitter.alice.submit.bob.j1") is None  # one token: never another's job
    assert submitted_job("gf.in.submitter.alice.submit") is None
    assert submitted_job("gf.in.submitter.al*ce.submit.j1") is None


def test_a_submission_refused_at_intake_is_a_rejected_job_with_its_reason_and_field() -> None:
    v = JobsView()
    v.fold([refused(7, intake_subject("submitter", "alice", "submit", "raw"))])
    job = v.jobs["alice.raw"]
    assert (job.status, job.submitter, job.reason_field, job.position) == ("rejected", "alice", "priority", 7)
    assert "less than or equal to 9" in job.reason and job.finished_at is not None
    # Other refusals (a cancel, a provider's report) make no job.
    v.fold([refused(8, intake_subject("submitter", "alice", "cancel", "other"))])
    v.fold([refused(9, intake_subject("provider", "p1", "report", "alice.x.0"), field="body")])
    assert set(v.jobs) == {"alice.raw"}


def test_the_latest_refusal_shows_and_a_job_that_exists_keeps_its_row() -> None:
    v = JobsView()
    v.jobs["alice.j1"] = JobRow("alice.j1", "alice", "sleep", status="accepted", task_count=2, position=3)
    before = dataclasses.replace(v.jobs["alice.j1"])
    # A refused resubmission of a job that exists changes nothing.
    v.fold([refused(10_000, intake_subject("submitter", "alice", "submit", "j1"), reason="already used", field="id")])
    assert v.jobs["alice.j1"] == before
    # Two refusals of a submission that never became a job: the latest one shows.
    subject = intake_subject("submitter", "alice", "submit", "j2")
    v.fold([refused(10_001, subject, reason="first"), refused(10_002, subject, reason="second", field="params.n")])
    assert (v.jobs["alice.j2"].reason, v.jobs["alice.j2"].reason_field) == ("second", "params.n")


# ---- 80 columns --------------------------------------------------------------------------------


def render(table: object, width: int = WIDTH) -> str:
    console = Console(width=width, record=True, force_terminal=False)
    console.print(table)
    return console.export_text()


def printed(show: Callable[[], None]) -> str:
    """What one of the CLI's printers shows in an 80-column terminal."""
    from gpufleet import cli

    saved = cli.console
    cli.console = Console(width=WIDTH, record=True, force_terminal=False)
    try:
        show()
        return cli.console.export_text()
    finally:
        cli.console = saved


def fits(text: str, width: int = WIDTH) -> None:
    too_wide = [line for line in text.splitlines() if len(line.rstrip()) > width]
    assert not too_wide, "\n".join(too_wide)


def test_the_jobs_table_fits_80_columns_with_whole_ids_and_shows_more_when_wide() -> None:
    from gpufleet.tables import jobs_table, refusals

    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    rows = [
        JobRow("alice.j1a22f12e4b63082f1d1", "alice", "montecarlo", status="running", task_count=40,
               tasks_completed=17, progress=0.43, cost_micros=1234567, verify="auto"),
        JobRow("bob.j1a22f12e152d5ecc738", "bob", "elementwise", status="completed", task_count=3,
               tasks_completed=3, progress=1.0, invalid_results=2, verify="replicate"),
        JobRow("carol.raw-bad-priority", "carol", status="rejected", reason="Input should be at most 9",
               reason_field="priority"),
    ]
    etas = {"alice.j1a22f12e4b63082f1d1": EtaJobRow("alice.j1a22f12e4b63082f1d1", predicted_s=300.0,
                                                   eta_ts=now + 250.0, eta_low_ts=now + 220.0,
                                                   eta_high_ts=now + 305.0)}
    text = render(jobs_table(rows, etas, now, WIDTH))
    fits(text)
    for r in rows:
        assert r.job_id in text  # whole, on one line
    assert "4m 10s" in text and "completed, 2" in text and "invalid" in text and "17/40 43%" in text
    # Narrow: the cost, submitter and policy columns wait for width (the id names the submitter).
    assert "credits" not in text and "submitter" not in text and "replicate" not in text
    wide = render(jobs_table(rows, etas, now, 130), 130)
    assert "submitter" in wide and "replicate" in wide and "1.234567" in wide
    assert "4m 10s (3m 40s\N{EN DASH}5m 05s)" in wide
    assert refusals(rows) == ["carol.raw-bad-priority: priority: Input should be at most 9"]
    rows[2].reason = "priority: Input should be at most 9"  # a reason that names its field already
    assert refusals(rows) == ["carol.raw-bad-priority: priority: Input should be at most 9"]
    assert JobRow("a.b").why() == "" and JobRow("a.b", reason="no field").why() == "no field"


def test_the_fleet_table_keeps_each_device_on_one_line_at_80_columns() -> None:
    from gpufleet.tables import device_text, fleet_table

    rows = [
        ProviderRow("local-vm", status="online", backend="cpu", gpu_model="Intel(R) Xeon(R) Processor",
                    vram_mb=23 * 1024, slots=1, completions=5, reputation=0.86, earnings_micros=12),
        ProviderRow("h100-rack-07", status="online", backend="cuda", gpu_model="NVIDIA H100 80GB HBM3",
                    vram_mb=81559, slots=8, utilisation=0.75, completions=123456, invalid_results=3,
                    consecutive_valid=40, reputation=0.99, earnings_micros=987654321),
        ProviderRow("laptop", status="lost", backend="cuda",
                    gpu_model="NVIDIA GeForce RTX 4090 Laptop GPU with a very long marketing name",
                    vram_mb=16 * 1024, slots=1),
    ]
    text = render(fleet_table(rows))
    fits(text)
    lines = text.splitlines()
    for r in rows:
        (line,) = [x for x in lines if x.startswith(r.provider_id)]  # one line per provider
        assert device_text(r.backend, r.gpu_model, r.vram_mb)[:15] in line
    assert "cpu Intel Xeon 23G" in text and "cuda H100 80GB HBM3" in text and "(R)" not in text
    assert "cuda RTX 4090 Lapt\N{HORIZONTAL ELLIPSIS}" in text  # shortened, not wrapped
    wide = render(fleet_table(rows, 120), 120)
    assert "rep." in wide and "0.99" in wide and "Laptop GPU with a" in wide


def test_the_quote_table_fits_80_columns() -> None:
    from gpufleet import cli

    span = SimpleNamespace
    q = SimpleNamespace(
        runnable=True, tasks=40, workload="montecarlo", submitter="alice", slots=9, ahead=120, runs=1.0,
        start_s=12.5, finish_s=span(expected=4000.0, low=3500.0, high=4800.0),
        cost_micros=span(expected=12_345_678, low=10_000_000, high=15_000_000), why={},
        options=[
            SimpleNamespace(
                device_class="cuda:NVIDIA H100 80GB HBM3", runs=1.0,
                providers=[SimpleNamespace(provider_id=f"h100-rack-0{i}", free=i, slots=8) for i in range(4)],
                per_task=span(seconds=0.00121, low=0.00066, high=0.0022, basis="probe"),
                cost_micros=span(expected=12_345_678, low=10_000_000, high=15_000_000, basis=""),
                start_s=12.5, finish_s=span(expected=4000.0, low=3500.0, high=4800.0),
            )
        ],
    )
    text = printed(lambda: cli._print_quote(q))
    fits(text)
    assert "cuda H100 80GB HBM3" in text and "+2" in text
    assert "1.21 ms" in text and "e+0" not in text


def test_the_up_table_fits_80_columns_and_names_the_device_shortly() -> None:
    from gpufleet import cli

    net = SimpleNamespace(
        cluster=None,
        url="nats://127.0.0.1:42583",
        server=SimpleNamespace(store_dir="/home/someone/.gpufleet/nats"),
        tls_ca=None,
        orchestrator=SimpleNamespace(world=SimpleNamespace(position=12345, jobs={}, retired_jobs=7)),
        projector=object(),
        read_models_db="/home/someone/.gpufleet/readmodels.sqlite",
        dashboard=SimpleNamespace(url="http://127.0.0.1:8222/"),
        metrics_server=None,
        provider=SimpleNamespace(
            provider_id="local-vm",
            capabilities=SimpleNamespace(backend="cpu", gpu_model="Intel(R) Xeon(R) Processor", slots=2),
        ),
    )
    text = printed(lambda: cli._print_network(net))
    fits(text)
    assert "gpufleet submit --workload montecarlo -p samples=1000000 --watch" in text  # one line, to copy
    assert "local-vm: cpu Intel Xeon, 2 slot(s)" in text and "http://127.0.0.1:8222/metrics" in text


def test_the_quota_tables_fit_80_columns() -> None:
    from gpufleet.tables import quota_table

    limits = {
        "jobs_in_flight": 1_000,
        "tasks_queued": 10_000_000,
        "tasks_running": 10_000,
        "intake_per_s": 500.0,
        "intake_burst": 1_000,
        "object_bytes": 4 * 1024**3,
    }
    usage = {
        "jobs_in_flight": 999,
        "tasks_queued": 9_999_999,
        "tasks_running": 10_000,
        "object_bytes": 3 * 1024**3,
        "intake_refused": 12,
    }
    mine = render(quota_table({"submitter": "alice", "limits": limits, "usage": usage}))
    assert all(len(line) <= WIDTH for line in mine.splitlines()), mine
    assert "9,999,999" in mine and "10,000,000" in mine and "3.0GiB" in mine and "burst 1,000" in mine
    name = "a-submitter-with-a-long-name"
    everyone = render(quota_table({"default": limits, "submitters": {name: {"limits": limits, "usage": usage}}}))
    assert all(len(line) <= WIDTH for line in everyone.splitlines()), everyone
    assert name in everyone.replace("\n", "").replace(" ", "") and "(default)" in everyone
    assert "999/1,000" in everyone and "10.0M/10.0M" in everyone and "3.0GiB/4.0GiB" in everyone
