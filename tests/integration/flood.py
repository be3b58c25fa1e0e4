"""A flood of intake from one abusive submitter, a victim submitter beside it, and the orchestrator's RSS.

Used by ``tests/integration/test_admission_flood.py`` and ``bench/admission.py`` (issue 12). Everything
is real: a secured nats-server, the orchestrator and the simulated providers as processes of their own
(so that the orchestrator's memory is its own), and each outsider on a connection with its own
credentials.

- :class:`Network` starts ``gpufleet orchestrator run`` (with quotas, where the CLI takes them) and,
  optionally, ``gpufleet provider simulate`` against a server, and stops them.
- :func:`flood` sends, as fast as one client can (JetStream ``publish_async``: no wait for each
  acknowledgement), a shuffled mix of malformed JSON, ~400 KB random blobs and valid ``noop`` jobs whose
  count splits total :attr:`FloodPlan.tasks_total` tasks.
- :func:`submit_and_wait`: one submission, and the seconds from sending it to its ``JobCompleted``.
- :class:`RssSampler`: the orchestrator's resident memory, sampled, and its peak (``VmHWM``).
- :func:`flood_outcomes`, :func:`subjects_under`, :func:`messages_under`, :func:`job_appends`: cheap
  counts of the log (consumer info, headers only), so that checking a big log stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from events.store.connection import Access, connect_nats
from events.subjects import EVENTS_STREAM, event_subject, intake_subject, outcomes_stream

__all__ = [
    "Ended",
    "FloodPlan",
    "FloodReport",
    "JobAppends",
    "Network",
    "RssSampler",
    "Server",
    "cli_takes_quotas",
    "cpu_seconds",
    "flood",
    "flood_outcomes",
    "job_appends",
    "messages_under",
    "peak_rss_mb",
    "rss_mb",
    "subjects_under",
    "submit_and_wait",
]

_MB = 1024 * 1024


class Server(Protocol):
    """What the harness needs of a server: ``tests.secure.SecureServer`` or ``gpufleet.network.EmbeddedServer``."""

    @property
    def url(self) -> str: ...

    def access(self, role: str, name: str | None = None) -> Access: ...


# --- the orchestrator's memory -------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` now, MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of process ``pid`` so far (the kernel's high-water mark), MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) process ``pid`` has used so far, seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples one process's RSS every ``interval`` seconds while running; the peak is the kernel's
    high-water mark, so nothing between two samples is missed.

    With ``kill_above_mb``, a process that grows past it is killed (SIGKILL) and ``killed`` is set: a
    runaway orchestrator must not take the machine's memory from everything else on it."""

    def __init__(self, pid: int, interval: float = 0.25, kill_above_mb: float | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.kill_above_mb = kill_above_mb
        self.samples: list[tuple[float, float]] = []
        self.peak_mb = 0.0
        self.killed = False
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> float:
        now = rss_mb(self.pid)
        self.samples.append((time.monotonic(), now))
        self.peak_mb = max(self.peak_mb, peak_rss_mb(self.pid))
        if self.kill_above_mb is not None and now > self.kill_above_mb and not self.killed:
            self.killed = True
            os.kill(self.pid, signal.SIGKILL)
        return now

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, LookupError):  # the process ended: keep what was seen
                self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> RssSampler:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> float:
        """Stop sampling (a last sample first); the peak, MiB."""
        with contextlib.suppress(OSError, LookupError):
            self.sample()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak_mb


# --- the network's processes ---------------------------------------------------------------------


def cli_takes_quotas() -> bool:
    """Whether ``gpufleet orchestrator run`` takes ``--quota KEY=VALUE`` (issue 12)."""
    from gpufleet import cli

    return "quota" in inspect.signature(cli.orchestrator_run).parameters


@dataclass
class Network:
    """The orchestrator (and simulated providers) of ``server`` as processes of their own, logging to
    ``workdir``. ``async with Network(...) as net:``; ``net.orchestrator.pid`` is the one to measure."""

    server: Server
    data_dir: Path
    workdir: Path
    providers: int = 4
    slots: int = 8
    quotas: Mapping[str, str] = field(default_factory=dict)
    orchestrator_args: tuple[str, ...] = ()
    orchestrator: subprocess.Popen[bytes] | None = None
    fleet: subprocess.Popen[bytes] | None = None
    quotas_applied: bool = False
    #: Also run the projector (``python -m projections run``, the read models in SQLite) as a process.
    projections: bool = False
    projector: subprocess.Popen[bytes] | None = None

    def _spawn(self, log: str, *args: str, module: str = "gpufleet") -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        out = (self.workdir / log).open("wb")
        head = ["--log-format", "json"] if module == "gpufleet" else []
        try:
            return subprocess.Popen(
                [sys.executable, "-m", module, *head, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()

    def start(self) -> Network:
        self.workdir.mkdir(parents=True, exist_ok=True)
        access = self.server.access("orchestrator")
        args = ["orchestrator", "run", "--nats", self.server.url, "--creds", str(access.creds)]
        args += ["--data-dir", str(self.workdir / "orchestrator")]
        if self.quotas and cli_takes_quotas():
            for key, value in self.quotas.items():
                args += ["--quota", f"{key}={value}"]
            self.quotas_applied = True
        self.orchestrator = self._spawn("orchestrator.log", *args, *self.orchestrator_args)
        if self.providers:
            self.fleet = self._spawn(
                "providers.log", "provider", "simulate", "--nats", self.server.url,
                "--data-dir", str(self.data_dir), "--count", str(self.providers), "--slots", str(self.slots),
            )  # fmt: skip
        if self.projections:
            reader = self.server.access("orchestrator")
            self.projector = self._spawn(
                "projector.log", "run", "--url", self.server.url, "--creds", str(reader.creds),
                "--db", str(self.workdir / "readmodels.sqlite"), module="projections",
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.orchestrator is not None
        return self.orchestrator.pid

    def check_alive(self) -> None:
        """Raise, with the tail of its log, if a process has exited."""
        procs = (("orchestrator", self.orchestrator), ("providers", self.fleet), ("projector", self.projector))
        for name, proc in procs:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the {name} process exited with {proc.returncode}: {self.tail(name)}")

    def tail(self, name: str = "orchestrator", chars: int = 3000) -> str:
        """The end of a process's log (``orchestrator`` or ``providers``)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self) -> None:
        for proc in (self.projector, self.fleet, self.orchestrator):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (self.projector, self.fleet, self.orchestrator):
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    async def __aenter__(self) -> Network:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


# --- the log, read cheaply -----------------------------------------------------------------------


async def _pending(nc: NATS, config: api.ConsumerConfig) -> int:
    """How many messages of the domain log a consumer of ``config`` would deliver (consumer info only)."""
    js = nc.jetstream()
    config.ack_policy = api.AckPolicy.NONE
    config.inactive_threshold = 30.0
    config.mem_storage = True
    info = await js.add_consumer(EVENTS_STREAM, config)
    try:
        return int(info.num_pending or 0)
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(EVENTS_STREAM, info.name)


async def messages_under(nc: NATS, *filters: str, after: int = 0) -> int:
    """Messages of the domain log on ``filters`` (NATS subjects, wildcards allowed) after sequence ``after``."""
    config = api.ConsumerConfig(filter_subjects=list(filters))
    if after:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = after + 1
    return await _pending(nc, config)


async def subjects_under(nc: NATS, *filters: str) -> int:
    """Distinct subjects of the domain log on ``filters``: one per aggregate (a task subject: a task created)."""
    return await _pending(
        nc, api.ConsumerConfig(filter_subjects=list(filters), deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
    )


async def _headers(
    nc: NATS,
    filters: list[str],
    *,
    start: int = 0,
    until_quiet: float = 1.0,
    stop: Callable[[Any], bool] | None = None,
) -> AsyncIterator[Any]:
    """The messages of the domain log on ``filters`` (headers only), until none came for ``until_quiet``
    seconds or ``stop(msg)`` is true."""
    js = nc.jetstream()
    config = api.ConsumerConfig(filter_subjects=filters, headers_only=True)
    if start:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start
    sub = await js.subscribe(filters[0], stream=EVENTS_STREAM, ordered_consumer=True, config=config)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=until_quiet)
            except TimeoutError:
                return
            yield msg
            if stop is not None and stop(msg):
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _header(msg: Any, name: str) -> str:
    return str((msg.headers or {}).get(name, ""))


async def flood_outcomes(nc: NATS, report: FloodReport, submitter: str, timeout: float) -> Counter[int]:
    """How many outcomes each message ``report`` says ``submitter`` sent has in the log: an explicit one
    (event id ``in-<seq>``, accepted or refused, in the sender's outcomes stream) and facts (ids
    ``in-<seq>.<n>``: the first event of the job it names), counted once. Waits up to ``timeout``
    seconds for every message to have one. Bounded: the outcomes stream, headers only, and one direct
    read per message (of the first event of the job it names)."""
    deadline = time.monotonic() + timeout
    js = nc.jetstream()
    stored = report.stored
    facts: set[int] = set()
    while True:
        explicit: Counter[int] = Counter()
        async for msg in _headers(nc, [event_subject(outcomes_stream("submitter", submitter))], until_quiet=0.5):
            head, dot, _ = _header(msg, "Nats-Msg-Id").removeprefix("in-").partition(".")
            if head.isdigit() and not dot:
                explicit[int(head)] += 1
        unknown = [(seq, name) for seq, name in report.names.items() if seq not in facts]
        for i in range(0, len(unknown), 200):
            chunk = unknown[i : i + 200]
            firsts = await asyncio.gather(*(_first_id(js, f"job.{submitter}.{name}") for _, name in chunk))
            facts.update(seq for (seq, _), first in zip(chunk, firsts, strict=True) if first.startswith(f"in-{seq}."))
        out = Counter({seq: explicit[seq] + (seq in facts) for seq in stored})
        if all(out[s] for s in stored) or time.monotonic() > deadline:
            return out
        await asyncio.sleep(0.5)


async def _first_id(js: Any, stream: str) -> str:
    """The event id of the first event of aggregate stream ``stream`` ('' if it has none)."""
    try:
        first = await js.get_msg(EVENTS_STREAM, seq=1, subject=event_subject(stream), next=True)
    except NotFoundError:
        return ""
    return str((first.headers or {}).get("Nats-Msg-Id", ""))


@dataclass(frozen=True)
class JobAppends:
    """The domain events one job's acceptance wrote."""

    #: Events of the job and of its tasks up to and including its ``JobAccepted`` (sequence order).
    until_accepted: int
    #: Events of the job and of its tasks once its writes went quiet (no provider takes its tasks).
    settled: int
    #: Its tasks created by then.
    tasks_created: int
    #: Seconds from submission to ``JobAccepted``.
    accept_s: float
    #: Why it was refused, if it was.
    refused: str | None = None


async def job_appends(
    submitter_nc: NATS,
    reader: NATS,
    who: str,
    name: str,
    spec: Mapping[str, Any],
    *,
    quiet_s: float = 2.0,
    timeout: float = 120.0,
    pid: int | None = None,
) -> JobAppends:
    """Submit job ``name`` as ``who`` and count the domain events its acceptance writes.

    Meant for a network with no provider online (nothing takes its tasks, so what is written is what
    accepting it costs): ``until_accepted`` counts the job's and its tasks' events up to its
    ``JobAccepted``; ``settled`` counts them once no new one came for ``quiet_s`` seconds and, given
    the orchestrator's ``pid``, it was idle meanwhile (under 10 % of a core: not still preparing
    appends), at most ``timeout`` seconds after submission."""
    job_subject = event_subject(f"job.{who}.{name}")
    task_subjects = event_subject(f"task.{who}.{name}.>")
    outcome = event_subject(outcomes_stream("submitter", who))
    head = (await reader.jetstream().stream_info(EVENTS_STREAM)).state.last_seq
    t0 = time.perf_counter()
    ack = await submitter_nc.jetstream().publish(
        intake_subject("submitter", who, "submit", name), json.dumps(dict(spec)).encode()
    )
    accepted_seq = 0
    accept_s = 0.0
    deadline = time.monotonic() + timeout
    while not accepted_seq:
        async for msg in _headers(reader, [job_subject, outcome], start=head + 1, until_quiet=0.5):
            kind = _header(msg, "ce-type")
            if kind == "JobAccepted":
                accepted_seq = msg.metadata.sequence.stream
                accept_s = time.perf_counter() - t0
                break
            if kind in ("JobRejected", "InputRejected") and (
                kind == "JobRejected" or _header(msg, "Nats-Msg-Id") == f"in-{ack.seq}"
            ):
                return JobAppends(0, 0, 0, time.perf_counter() - t0, refused=await _reason(reader, msg))
        if not accepted_seq and time.monotonic() > deadline:
            raise TimeoutError(f"job {who}.{name} not accepted within {timeout:g} s")

    # Quiet: the count of its events stops moving for quiet_s, the orchestrator idle (or the deadline).
    def cpu() -> float:
        return cpu_seconds(pid) if pid is not None else 0.0

    last, since, used = -1, time.monotonic(), cpu()
    while True:
        n = await messages_under(reader, job_subject, task_subjects, after=head)
        now = time.monotonic()
        if n != last or cpu() - used > 0.1 * (now - since):
            last, since, used = n, now, cpu()
        elif now - since >= quiet_s or now > deadline:
            break
        if now > deadline:
            break
        await asyncio.sleep(0.25)
    after_accept = await messages_under(reader, job_subject, task_subjects, after=accepted_seq)
    until = await messages_under(reader, job_subject, task_subjects, after=head) - after_accept
    tasks = await subjects_under(reader, task_subjects)
    return JobAppends(until, last, tasks, accept_s)


async def _reason(reader: NATS, msg: Any) -> str:
    """The reason a refusal (``msg``, headers only) gives."""
    got = await reader.jetstream().get_msg(EVENTS_STREAM, seq=msg.metadata.sequence.stream)
    try:
        body = json.loads(got.data or b"{}")
    except ValueError:
        return "refused"
    data = body.get("data", body)
    reason, where = str(data.get("reason", "refused")), str(data.get("field") or "")
    return (reason if not where or reason.startswith(where) else f"{where}: {reason}")[:200]


# --- the flood -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloodPlan:
    """What one abusive (but authenticated) submitter sends, shuffled."""

    submitter: str = "flood"
    #: Valid ``noop`` jobs with count splits totalling this many tasks...
    tasks_total: int = 10_000_000
    #: ... this many per job (the last one takes the rest).
    tasks_per_job: int = 100_000
    #: Random blobs of ``blob_bytes`` each (not JSON, not UTF-8).
    blobs: int = 300
    blob_bytes: int = 400_000
    #: Malformed messages: broken JSON, wrong types, out-of-bounds numbers, unknown workloads.
    malformed: int = 2_600
    #: Acknowledgements outstanding at once (nats-py's ``publish_async`` window).
    max_pending: int = 4_000
    seed: int = 12

    @property
    def jobs(self) -> int:
        return -(-self.tasks_total // self.tasks_per_job)

    @property
    def messages(self) -> int:
        return self.jobs + self.blobs + self.malformed

    def bodies(self) -> list[tuple[str, str, bytes]]:
        """(kind, job name, body) of every message, shuffled (the seed fixes the order and the blobs)."""
        rng = random.Random(self.seed)
        out: list[tuple[str, str, bytes]] = []
        left = self.tasks_total
        for j in range(self.jobs):
            count = min(self.tasks_per_job, left)
            left -= count
            spec = {"workload": "noop", "split": {"kind": "count", "count": count}}
            out.append(("job", f"j{j}", json.dumps(spec).encode()))
        blob = rng.randbytes(self.blob_bytes)
        for b in range(self.blobs):
            # Each blob differs (a different window of one random buffer and a counter): no deduplication.
            cut = b % 1024
            out.append(("blob", f"b{b}", b.to_bytes(4, "big") + blob[cut:] + blob[:cut]))
        broken = [
            b"{",
            b"not json at all",
            b'{"workload": 5}',
            b'{"workload": "noop", "split": {"kind": "count", "count": -1}}',
            b'{"workload": "noop", "split": {"kind": "count", "count": 1000000000000}}',
            b'{"workload": "no-such-workload"}',
            b"[1, 2, 3]",
            b'{"workload": "noop", "priority": "urgent"}',
            b"\xff\xfe\x00garbage",
            b"",
        ]
        out.extend(("malformed", f"m{m}", broken[m % len(broken)]) for m in range(self.malformed))
        rng.shuffle(out)
        return out


@dataclass
class FloodReport:
    """What the flood sent and how fast."""

    sent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    #: Intake sequence of each message the server stored, by kind.
    seqs: dict[str, list[int]] = field(default_factory=dict)
    #: The job name each stored message was sent for (its subject's last token), by intake sequence.
    names: dict[int, str] = field(default_factory=dict)
    #: Messages the server refused to store (intake full, too big...): their errors.
    not_stored: Counter[str] = field(default_factory=Counter)

    @property
    def msgs_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_sent / _MB / self.seconds if self.seconds else 0.0

    @property
    def stored(self) -> set[int]:
        return {s for seqs in self.seqs.values() for s in seqs}


async def flood(access: Access, plan: FloodPlan, halfway: asyncio.Event | None = None) -> FloodReport:
    """Send ``plan`` as ``access`` (a submitter) as fast as one client can; ``halfway`` is set once half
    the messages are sent. The report's ``seconds`` run from the first send to the last acknowledgement."""
    bodies = plan.bodies()  # built before the clock starts
    nc = await connect_nats(access, name=f"flood-{plan.submitter}")
    js = nc.jetstream(publish_async_max_pending=plan.max_pending)
    report = FloodReport()
    futures: list[tuple[str, str, asyncio.Future[Any]]] = []
    try:
        t0 = time.perf_counter()
        for i, (kind, name, body) in enumerate(bodies):
            subject = intake_subject("submitter", plan.submitter, "submit", name)
            futures.append((kind, name, await js.publish_async(subject, body)))
            report.sent += 1
            report.bytes_sent += len(body)
            if halfway is not None and i + 1 == len(bodies) // 2:
                halfway.set()
                await asyncio.sleep(0)  # let the victim send now, in the middle
        await asyncio.wait_for(js.publish_async_completed(), timeout=120)
        report.seconds = time.perf_counter() - t0
    finally:
        if halfway is not None:
            halfway.set()
        await nc.close()
    for kind, name, fut in futures:
        try:
            ack = fut.result()
        except (APIError, asyncio.CancelledError, Exception) as e:
            report.not_stored[f"{type(e).__name__}: {e}"[:120]] += 1
            continue
        report.seqs.setdefault(kind, []).append(ack.seq)
        report.names[ack.seq] = name
    return report


# --- the victim ----------------------------------------------------------------------------------


class Ended(Exception):
    """The victim's job ended otherwise than completed (refused, failed, cancelled)."""


async def submit_and_wait(
    submitter_nc: NATS,
    reader: NATS,
    who: str,
    name: str,
    spec: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    sent: Callable[[], None] | None = None,
) -> float | None:
    """Submit job ``name`` as ``who`` (waiting for the server's acknowledgement, as an honest client
    does) and wait for its ``JobCompleted``: the seconds from sending to it, or None past ``timeout``.

    ``reader`` watches the log (a connection that may read it). Raises :class:`Ended` if the job ends
    otherwise or its submission is refused."""
    job_subject = event_subject(f"job.{who}.{name}")
    outcome = event_subject(outcomes_stream("submitter", who))
    js = reader.jetstream()
    head = (await js.stream_info(EVENTS_STREAM)).state.last_seq
    config = api.ConsumerConfig(
        filter_subjects=[job_subject, outcome],
        headers_only=True,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=head + 1,
    )
    sub = await js.subscribe(job_subject, stream=EVENTS_STREAM, ordered_consumer=True, config=config)
    try:
        t0 = time.perf_counter()
        body = json.dumps(dict(spec or {"workload": "noop"})).encode()
        ack = await submitter_nc.jetstream().publish(intake_subject("submitter", who, "submit", name), body)
        if sent is not None:
            sent()
        deadline = t0 + timeout
        while (left := deadline - time.perf_counter()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                break
            kind = _header(msg, "ce-type")
            if kind == "JobCompleted":
                return time.perf_counter() - t0
            if kind in ("JobRejected", "JobFailed", "JobCancelled") or (
                kind == "InputRejected" and _header(msg, "Nats-Msg-Id") == f"in-{ack.seq}"
            ):
                raise Ended(f"job {who}.{name}: {kind}: {await _reason(reader, msg)}")
        return None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
