"""NATS names: streams, subjects, buckets, and how ids and identities map onto subjects.

Every subject an outsider may touch carries its identity as plain tokens, so that NATS permissions
(and filters) are plain wildcards:

- intake: ``gf.in.submitter.<name>.submit.<job>``, ``gf.in.provider.<name>.report.<task id>``;
- the domain log: ``gf.ev.job.<submitter>.<job>``, ``gf.ev.task.<submitter>.<job>.<index>``;
- objects: ``gf.obj.<role>.<owner>.<sha256>.<part>``, results ``gf.obj.result.<submitter>.<provider>.…``;
- requests to the network's services: ``gf.api.<role>.<name>.<operation>``;
- live progress (core NATS, never stored): ``gf.live.<submitter>.<job>.<index>.<provider>``.
"""

from __future__ import annotations

__all__ = [
    "API_PREFIX",
    "CHECKPOINTS_STREAM",
    "CHECKPOINT_PREFIX",
    "CHECKPOINT_SUBJECT",
    "DISPATCH_PREFIX",
    "DISPATCH_STREAM",
    "EVENTS_STREAM",
    "EVENT_PREFIX",
    "HEARTBEAT_BUCKET",
    "INTAKE_PREFIX",
    "INTAKE_STREAM",
    "LEADER_BUCKET",
    "LEGACY_OUTCOMES_STREAM",
    "LIVE_PREFIX",
    "OBJECTS_STREAM",
    "OBJECT_PREFIX",
    "TLOG_OPERATION",
    "api_subject",
    "dispatch_consumer",
    "dispatch_subject",
    "event_subject",
    "heartbeat_subject",
    "intake_subject",
    "job_id_of",
    "job_of_task",
    "job_owner",
    "live_filter",
    "live_sender",
    "live_subject",
    "object_name",
    "object_owner",
    "object_reader",
    "outcomes_stream",
    "outcomes_stream_of",
    "readable",
    "report_subject",
    "stream_name",
    "submitted_job",
    "task_id_of",
]

EVENTS_STREAM = "GF_EVENTS"
EVENT_PREFIX = "gf.ev"
INTAKE_STREAM = "GF_INTAKE"
INTAKE_PREFIX = "gf.in"
DISPATCH_STREAM = "GF_DISPATCH"
DISPATCH_PREFIX = "gf.dispatch"
HEARTBEAT_BUCKET = "gf_heartbeats"
LEADER_BUCKET = "gf_orchestrators"
OBJECTS_STREAM = "GF_OBJECTS"
OBJECT_PREFIX = "gf.obj"
API_PREFIX = "gf.api"
#: Live progress on core NATS: not a stream, not events (``events.live``).
LIVE_PREFIX = "gf.live"
#: Signed checkpoints of the log (``events.tlog``): outside GF_EVENTS, written by the notary alone.
CHECKPOINTS_STREAM = "GF_CHECKPOINTS"
CHECKPOINT_PREFIX = "gf.cp"
CHECKPOINT_SUBJECT = f"{CHECKPOINT_PREFIX}.checkpoint"
#: The notary's requests (proofs): ``gf.api.<role>.<name>.tlog``.
TLOG_OPERATION = "tlog"
#: Where intake outcomes went before outcomes were kept per identity (still read in old logs).
LEGACY_OUTCOMES_STREAM = "intake.outcomes"


def stream_name(kind: str, aggregate_id: str) -> str:
    """The event stream of one aggregate, for example ``task.alice.j1.0``."""
    return f"{kind}.{aggregate_id}"


def event_subject(stream: str) -> str:
    """The NATS subject that holds aggregate stream ``stream``: one subject per aggregate."""
    return f"{EVENT_PREFIX}.{stream}"


def job_id_of(submitter: str, name: str) -> str:
    """The id of job ``name`` of ``submitter``: ``<submitter>.<name>``."""
    return f"{submitter}.{name}"


def job_owner(job_id: str) -> str | None:
    """The submitter whose name is part of ``job_id``; None for a job from before identities."""
    owner, dot, _ = job_id.partition(".")
    return owner if dot else None


def task_id_of(job_id: str, index: int) -> str:
    """The id of task ``index`` of ``job_id``: ``<job id>.<index>`` (``<job>-<index>`` for an old job)."""
    return f"{job_id}.{index}" if "." in job_id else f"{job_id}-{index}"


def job_of_task(task_id: str) -> str:
    """The job a task id belongs to (the inverse of :func:`task_id_of`)."""
    return task_id.rsplit("." if "." in task_id else "-", 1)[0]


def intake_subject(role: str, name: str, verb: str, target: str = "") -> str:
    """Where identity ``role``/``name`` sends ``verb``: ``gf.in.<role>.<name>.<verb>[.<target>]``."""
    base = f"{INTAKE_PREFIX}.{role}.{name}.{verb}"
    return f"{base}.{target}" if target else base


def submitted_job(intake: str) -> str | None:
    """The job a submission on intake subject ``intake`` asked for (``gf.in.submitter.<name>.submit.<job
    name>`` → ``<name>.<job name>``), or None for any other subject. The id is the sender's own by
    construction: nobody can name another submitter's job by submitting."""
    parts = intake.split(".")
    prefix = INTAKE_PREFIX.split(".")
    n = len(prefix)
    if len(parts) != n + 4 or parts[:n] != prefix or parts[n] != "submitter" or parts[n + 2] != "submit":
        return None
    sender, name = parts[n + 1], parts[n + 3]
    return job_id_of(sender, name) if _token(sender) and _token(name) else None


def report_subject(provider_id: str, task_id: str) -> str:
    """Where a provider reports on a task it holds: ``gf.in.provider.<id>.report.<task id>``."""
    return intake_subject("provider", provider_id, "report", task_id)


def outcomes_stream(role: str, name: str) -> str:
    """The log stream of one identity's intake outcomes, so that each can read its own refusals."""
    return f"intake.{role}.{name}"


def outcomes_stream_of(intake: str) -> str:
    """Where the outcome of a message sent on intake subject ``intake`` is recorded: its sender's stream."""
    parts = intake.split(".")
    if len(parts) >= 4 and ".".join(parts[:2]) == INTAKE_PREFIX and _token(parts[2]) and _token(parts[3]):
        return outcomes_stream(parts[2], parts[3])
    return LEGACY_OUTCOMES_STREAM


def _token(value: str) -> bool:
    return 0 < len(value) <= 64 and value[0].isalnum() and all(c.isalnum() or c in "-_" for c in value)


def dispatch_subject(provider_id: str) -> str:
    """Where the orchestrator tells one provider about its leases and cancellations."""
    return f"{DISPATCH_PREFIX}.{provider_id}"


def dispatch_consumer(provider_id: str) -> str:
    """The durable pull consumer through which a provider (and only it) reads its dispatch."""
    return f"prov-{provider_id}"


def heartbeat_subject(provider_id: str, bucket: str = HEARTBEAT_BUCKET) -> str:
    """The KV subject of a provider's heartbeat key."""
    return f"$KV.{bucket}.{provider_id}"


def object_name(role: str, owner: str, sha256: str, *, for_submitter: str | None = None) -> str:
    """An object's name: who wrote it, for whom, and its content digest.

    ``<role>.<owner>.<sha256>`` for an identity's own objects (a submitter's inputs, a provider's
    checkpoints); ``result.<submitter>.<provider>.<sha256>`` for a result a provider writes for the
    submitter of the job, so that NATS permissions can let that submitter, and no other, read it.
    """
    if for_submitter is not None:
        return f"result.{for_submitter}.{owner}.{sha256}"
    return f"{role}.{owner}.{sha256}"


def object_owner(name: str) -> tuple[str, str] | None:
    """``(role, name)`` of the identity that wrote the object ``name``; None for a name not made by
    :func:`object_name` (an object store reference from before identities, for one)."""
    parts = name.split(".")
    if len(parts[-1]) != 64:
        return None
    if len(parts) == 4 and parts[0] == "result":
        return "provider", parts[2]
    if len(parts) == 3 and parts[0] in ("submitter", "provider"):
        return parts[0], parts[1]
    return None


def object_reader(name: str) -> str | None:
    """The submitter a result object was written for (None for any other object)."""
    parts = name.split(".")
    return parts[1] if len(parts) == 4 and parts[0] == "result" else None


def api_subject(role: str, name: str, operation: str) -> str:
    """A request from identity ``role``/``name`` to the network's services."""
    return f"{API_PREFIX}.{role}.{name}.{operation}"


def readable(role: str, name: str, stream_filter: str) -> bool:
    """May identity ``role``/``name`` read the log streams ``stream_filter`` (wildcards allowed)?

    A submitter reads its own jobs and tasks (``job.<name>.…``, ``task.<name>.…``) and its intake
    outcomes; a provider its own stream and intake outcomes; an auditor everything.
    """
    tokens = stream_filter.split(".")
    if not tokens or len(tokens) > 8 or any(not t for t in tokens):
        return False
    if any(t == ">" for t in tokens[:-1]) or any(("*" in t or ">" in t) and len(t) > 1 for t in tokens):
        return False
    if role == "auditor":
        return True
    own_outcomes = stream_filter == outcomes_stream(role, name)
    if role == "submitter":
        return own_outcomes or (tokens[0] in ("job", "task") and len(tokens) >= 3 and tokens[1] == name)
    if role == "provider":
        return own_outcomes or stream_filter == stream_name("provider", name)
    return False


def live_subject(task_id: str, provider_id: str) -> str | None:
    """Where ``provider_id`` publishes the live progress of task ``task_id`` it runs:
    ``gf.live.<submitter>.<job>.<index>.<provider>``; None for a task of a job from before identities
    (its progress goes through intake, as it always did).

    The submitter leads, so that it alone may subscribe (``gf.live.<name>.>``); the provider ends it,
    so that nobody may publish as another provider (``gf.live.*.*.*.<name>``).
    """
    job = job_of_task(task_id)
    owner = job_owner(job)
    if owner is None or "." not in job:
        return None
    name, index = job.partition(".")[2], task_id[len(job) + 1 :]
    if not (_token(owner) and _token(name) and _index(index) and _token(provider_id)):
        return None
    return f"{LIVE_PREFIX}.{owner}.{name}.{index}.{provider_id}"


def live_filter(job_id: str) -> str | None:
    """The wildcard of every task's live progress in job ``job_id``, from any provider."""
    owner = job_owner(job_id)
    name = job_id.partition(".")[2]
    if owner is None or not (_token(owner) and _token(name)):
        return None
    return f"{LIVE_PREFIX}.{owner}.{name}.*.*"


def live_sender(subject: str) -> tuple[str, str] | None:
    """``(task id, provider id)`` of a live progress subject (the provider is the publisher: the server
    lets no one else publish there); None for anything else."""
    parts = subject.split(".")
    prefix = LIVE_PREFIX.split(".")
    n = len(prefix)
    if len(parts) != n + 4 or parts[:n] != prefix:
        return None
    owner, name, index, provider = parts[n:]
    if not (_token(owner) and _token(name) and _index(index) and _token(provider)):
        return None
    return task_id_of(job_id_of(owner, name), int(index)), provider


def _index(value: str) -> bool:
    """A task index as :func:`task_id_of` writes it: digits, no leading zero."""
    return 0 < len(value) <= 9 and value.isascii() and value.isdigit() and str(int(value)) == value
