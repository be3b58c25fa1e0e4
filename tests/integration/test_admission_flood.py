"""The flood of issue 12: one submitter's flood never stalls another's job, and the orchestrator's
memory and the domain log stay bounded.

Real parts only: a secured nats-server, ``gpufleet orchestrator run`` and ``gpufleet provider
simulate`` as processes of their own (so the orchestrator's RSS is its own), and each submitter on a
connection with its own credentials. The abusive submitter is authenticated: it may send, and it sends
as fast as one client can (``publish_async``) a shuffled mix of malformed JSON, ~400 KB random blobs,
and valid ``noop`` jobs totalling 10,000,000 tasks. In the middle of it, the victim (another
identity) submits a one-task job.

The bounds, stated and measured (``bench/admission.py`` prints the figures):

- the victim's job completes within ``VICTIM_BOUND_S`` of being sent;
- the orchestrator's peak RSS (``VmHWM``) stays under ``RSS_BOUND_MB``;
- every stored flood message has exactly one outcome in the log within ``OUTCOME_WAIT_S`` after the
  flood (none has two);
- the flood's tasks that exist in the log stay under ``TASKS_CREATED_BOUND``: far below the 10,000,000
  it asked for (they come into existence as capacity frees up, not all at acceptance).

The network runs with the quotas ``gpufleet up`` has by default (``QUOTAS`` overrides, where the CLI
takes ``--quota``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from events.store.connection import connect_nats
from events.subjects import event_subject
from tests.integration.flood import (
    FloodPlan,
    Network,
    RssSampler,
    flood,
    flood_outcomes,
    messages_under,
    subjects_under,
    submit_and_wait,
)
from tests.secure import SecureServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: Seconds from sending the victim's one-task job to its JobCompleted, under the flood. Measured on
#: 2 cores: 2.1 to 3.1 s (before issue 12: never, within 60 s); about 3x headroom for a noisy CI.
VICTIM_BOUND_S = 10.0
#: The orchestrator's peak resident memory under the flood, MiB. Measured: 170 to 260 (idle: about
#: 70; before issue 12: past 2,000 within 20 s, and 9 GiB within 90 s).
RSS_BOUND_MB = 600.0
#: Past this the orchestrator is killed at once (and the test fails): a runaway must not take the
#: memory of everything else on the machine.
RSS_KILL_MB = 2_000.0
#: Seconds after the flood's last acknowledgement for every flood message to have its outcome.
OUTCOME_WAIT_S = 30.0
#: Seconds the flood is watched (RSS sampled) from its start, at least.
OBSERVE_S = 20.0
#: The flood's tasks that may exist in the log by the end: 1 % of what it asked for.
TASKS_CREATED_BOUND = 100_000
#: Quotas for ``gpufleet orchestrator run --quota`` (none: the defaults of ``gpufleet up``).
QUOTAS: dict[str, str] = {}

PLAN = FloodPlan(submitter="flood", tasks_total=10_000_000, tasks_per_job=100_000, blobs=300, malformed=2_600)


async def test_a_flood_does_not_stall_another_submitters_job(own_nats_server: SecureServer, tmp_path: Path) -> None:
    server = own_nats_server
    net = Network(server, server.embedded.data_dir, tmp_path / "procs", providers=4, slots=8, quotas=QUOTAS)
    async with net:
        reader = await connect_nats(server.access("orchestrator"), name="test-reader")
        victim = await connect_nats(server.access("submitter", "victim"), name="test-victim")
        try:
            # The network is up once a first job of the victim's completes (orchestrator and providers).
            warm = await submit_and_wait(victim, reader, "victim", "warm", timeout=60)
            assert warm is not None, f"the network did not come up: {net.tail()}"
            rss = RssSampler(net.pid, kill_above_mb=RSS_KILL_MB).start()
            idle_mb = rss.peak_mb
            loop = asyncio.get_running_loop()
            started = loop.time()

            halfway = asyncio.Event()
            flooding = asyncio.create_task(flood(server.access("submitter", PLAN.submitter), PLAN, halfway))
            await halfway.wait()
            latency = await submit_and_wait(victim, reader, "victim", "v1", timeout=VICTIM_BOUND_S)
            report = await flooding
            outcomes = await flood_outcomes(reader, report, PLAN.submitter, timeout=OUTCOME_WAIT_S)
            await asyncio.sleep(max(0.0, started + OBSERVE_S - loop.time()))
            peak_mb = await rss.stop()
            flood_tasks = event_subject(f"task.{PLAN.submitter}.>")
            created = await subjects_under(reader, flood_tasks)
            task_events = await messages_under(reader, flood_tasks)
        finally:
            await victim.close()
            await reader.close()

    counts = Counter(outcomes.values())
    seen = (
        f"victim {'not completed' if latency is None else f'{latency:.2f} s'} (bound {VICTIM_BOUND_S:g} s); "
        f"orchestrator RSS idle {idle_mb:.0f} MiB, peak {peak_mb:.0f} MiB (bound {RSS_BOUND_MB:g})"
        f"{', killed past ' + str(RSS_KILL_MB) if rss.killed else ''}; "
        f"flood {report.sent} msgs, {report.bytes_sent / 2**20:.0f} MiB in {report.seconds:.2f} s, "
        f"{len(report.stored)} stored, not stored {dict(report.not_stored)}; "
        f"outcomes per message {dict(counts)}; flood tasks in the log {created:,} ({task_events:,} events, "
        f"bound {TASKS_CREATED_BOUND:,})"
    )
    print(seen)
    assert latency is not None and latency <= VICTIM_BOUND_S, seen
    assert not rss.killed and peak_mb <= RSS_BOUND_MB, seen
    assert report.stored and set(counts) == {1}, seen
    assert created <= TASKS_CREATED_BOUND, seen
