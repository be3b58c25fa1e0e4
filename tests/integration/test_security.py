"""The security suite: every role, and an anonymous client, tries every attack we know of on a live,
secured network. The server must refuse each one, and none may change the log.

The network under attack is real: a secured nats-server, the orchestrator and its event feed, an honest
provider running a task for an honest submitter (alice), an input of alice's and a result written for
her. Each attacker connects with credentials of its own role (or none) and tries the whole catalogue
below. Evidence of refusal is the server's own: a permissions violation it reports to the client, or a
refused connection; for the event feed (our service), its refusal. Afterwards the streams must have
the configuration and the messages they had (none deleted, purged or updated), nothing an attacker
wrote may be found in any stream, alice's job and the honest provider must be untouched, and the audit
of the whole log must pass.

``CATALOGUE`` is the list of attacks; ``test_the_catalogue_covers_the_issue`` keeps it complete.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from actors.orchestrator import OrchestratorConfig
from events import AccessDenied, JetStreamEventStore, encode, new_envelope
from events.dispatch import LeaseGranted
from events.job import JobCancelled, ProviderCredited
from events.provider import ProviderRegistered
from events.store.blobs import BlobStore
from events.store.connection import Access, connect_nats, denied_subjects
from events.subjects import heartbeat_subject, intake_subject, report_subject
from events.types import Capabilities
from gpufleet.sim import SimulatedProvider
from tests.integration.audited import assert_audit_passes
from tests.integration.orchestra import Tenants, every_input_has_its_outcome, orchestrated, read_world, wait_for
from tests.secure import SecureServer

MARK = "FORGED-by-an-attacker"
#: What the confused-deputy attack stores legitimately under the attacker's own name, hoping the server
#: will replay it onto someone else's intake subject: it may be in the objects stream, nowhere else.
DEPUTY = "FORGED-through-the-server"
STREAMS = ("GF_EVENTS", "GF_INTAKE", "GF_DISPATCH", "GF_OBJECTS", "KV_gf_heartbeats")
FAST = OrchestratorConfig(heartbeat_timeout_s=2.0, lease_start_timeout_s=5.0, lease_grace_s=10.0)
#: Alice's job: it runs on the honest provider while the attackers try their catalogue.
ALICE_SPEC = {"workload": "sleep", "params": {"seconds": 120.0}}


@dataclass
class Victims:
    """What the attackers go after: alice's running job and objects, the honest provider."""

    job_id: str
    task_id: str
    input_name: str
    result_name: str
    provider: str = "honest"


@dataclass
class Attack:
    """One attempt: ``run`` does it on a connection; ``subject`` is what the server must refuse."""

    name: str
    subject: Callable[[Victims], str]
    run: Callable[[NATS, Victims], Awaitable[Any]]
    #: Roles entitled to do this: for them it is no attack.
    allowed: frozenset[str] = frozenset()
    #: "publish": a permissions violation on ``subject``; "feed": the event feed refuses;
    #: "deputy": nothing lands on ``subject`` in the intake stream.
    evidence: str = "publish"


def _ce(stream: str, event: Any) -> tuple[bytes, dict[str, str]]:
    env = new_envelope(stream, event, id=f"{MARK}-{stream}", source=MARK)
    return encode(env)


async def _pub(nc: NATS, subject: str, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
    await nc.publish(subject, body, headers=headers, reply=nc.new_inbox())


def _api(subject: str, body: dict[str, Any] | None = None) -> Callable[[NATS, Victims], Awaitable[None]]:
    async def run(nc: NATS, v: Victims) -> None:
        await _pub(nc, subject, json.dumps(body or {"marker": MARK}).encode())

    return run


def _sub(subject: str) -> Callable[[NATS, Victims], Awaitable[None]]:
    async def run(nc: NATS, v: Victims) -> None:
        async def cb(msg: Any) -> None:
            return None

        await nc.subscribe(subject, cb=cb)

    return run


async def _forge_cancel(nc: NATS, v: Victims) -> None:
    body, headers = _ce(f"job.{v.job_id}", JobCancelled(at=datetime.now(UTC), job_id=v.job_id, reason=MARK))
    await _pub(nc, f"gf.ev.job.{v.job_id}", body, headers)


async def _forge_credit(nc: NATS, v: Victims) -> None:
    credit = ProviderCredited(
        at=datetime.now(UTC), job_id=v.job_id, provider_id="mallory", amount_micros=10**9, gpu_ms=1
    )
    body, headers = _ce(f"job.{v.job_id}", credit)
    await _pub(nc, f"gf.ev.job.{v.job_id}", body, headers)


CAPS = Capabilities(backend="cuda", gpu_model=MARK, vram_mb=10**6, slots=64, price_micros=0)


async def _forge_registered(nc: NATS, v: Victims) -> None:
    reg = ProviderRegistered(at=datetime.now(UTC), provider_id="mallory", name=MARK, capabilities=CAPS)
    body, headers = _ce("provider.mallory", reg)
    await _pub(nc, "gf.ev.provider.mallory", body, headers)


async def _forge_dispatch(nc: NATS, v: Victims) -> None:
    grant = LeaseGranted(
        task_id="free.compute.0",
        job_id="free.compute",
        lease_id=MARK,
        provider_id=v.provider,
        attempt=1,
        workload="sleep",
        params={"seconds": 60.0},
        timeout_s=60.0,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
    )
    await _pub(nc, f"gf.dispatch.{v.provider}", grant.model_dump_json().encode())


def _report(v: Victims) -> bytes:
    return json.dumps(
        {
            "report": "completed",
            "lease_id": MARK,
            "result": {"sha256": "0" * 64, "size": 4, "inline": MARK},
            "gpu_ms": 10**12,
        }
    ).encode()


def _registration() -> bytes:
    return json.dumps({"name": MARK, "capabilities": CAPS.model_dump(mode="json")}).encode()


async def _feed_others(nc: NATS, v: Victims) -> Any:
    """Ask the feed, as oneself, for alice's job."""
    me = _identity_of(nc)
    req = {"streams": [f"job.{v.job_id}", f"task.{v.job_id}.*"], "after": 0}
    msg = await nc.request(f"gf.api.{me}.events", json.dumps(req).encode(), timeout=5)
    return json.loads(msg.data)


async def _deputy_direct_get(nc: NATS, v: Victims) -> None:
    """Store a valid cancellation body as one's own object (or pick a stored intake message, as an
    auditor), then ask the server for it with alice's cancel subject as the reply subject: the server
    itself, not the attacker, would publish it there. Cross-account, the reply stays in the edge."""
    role, name = _identity_of(nc).split(".")
    target = intake_subject("submitter", "alice", "cancel", v.job_id.split(".")[1])
    if role in ("submitter", "provider"):
        ref = await BlobStore(nc, role, name).put(json.dumps({"reason": DEPUTY}).encode())
        get = f"$JS.API.DIRECT.GET.GF_OBJECTS.gf.obj.{ref.name}.0"
        await nc.publish(get, b"", reply=target)
        # (A pull request waits for a dispatch to this provider, which never comes: nothing to await.)
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.GF_DISPATCH.prov-{name}", b'{"batch":1}', reply=target)
        body = b""
    else:
        get, body = "$JS.API.DIRECT.GET.GF_INTAKE", b'{"seq":1}'
        await nc.publish(get, body, reply=target)
    # The barrier: the same request again, answered to ourselves. Requests to one stream are served in
    # order, so once this answer is here the server has sent the first one wherever it was going.
    # (``_assert_untouched`` then waits for every intake message to be decided before looking.)
    await nc.request(get, body, timeout=5.0)


def _identity_of(nc: NATS) -> str:
    """``<role>.<name>`` of a connection, from its inbox prefix ``_INBOX.<role>.<name>``."""
    prefix = bytes(nc._inbox_prefix).decode()
    return ".".join(prefix.split(".")[1:3])


HUB = frozenset({"admin", "orchestrator"})
CATALOGUE: list[Attack] = [
    # Stream and bucket management: the admin's alone.
    Attack(
        "delete the domain log",
        lambda v: "$JS.API.STREAM.DELETE.GF_EVENTS",
        _api("$JS.API.STREAM.DELETE.GF_EVENTS"),
        frozenset({"admin"}),
    ),
    Attack(
        "shorten the domain log's max_age to 1s",
        lambda v: "$JS.API.STREAM.UPDATE.GF_EVENTS",
        _api("$JS.API.STREAM.UPDATE.GF_EVENTS", {"name": "GF_EVENTS", "subjects": ["gf.ev.>"], "max_age": 10**9}),
        frozenset({"admin"}),
    ),
    Attack(
        "purge the intake",
        lambda v: "$JS.API.STREAM.PURGE.GF_INTAKE",
        _api("$JS.API.STREAM.PURGE.GF_INTAKE"),
        frozenset({"admin"}),
    ),
    Attack(
        "delete the heartbeat bucket",
        lambda v: "$JS.API.STREAM.DELETE.KV_gf_heartbeats",
        _api("$JS.API.STREAM.DELETE.KV_gf_heartbeats"),
        frozenset({"admin"}),
    ),
    Attack(
        "delete the objects",
        lambda v: "$JS.API.STREAM.DELETE.GF_OBJECTS",
        _api("$JS.API.STREAM.DELETE.GF_OBJECTS"),
        frozenset({"admin"}),
    ),
    Attack(
        "delete one event",
        lambda v: "$JS.API.STREAM.MSG.DELETE.GF_EVENTS",
        _api("$JS.API.STREAM.MSG.DELETE.GF_EVENTS", {"seq": 1}),
        frozenset({"admin"}),
    ),
    Attack(
        "create a stream",
        lambda v: "$JS.API.STREAM.CREATE.EVIL",
        _api("$JS.API.STREAM.CREATE.EVIL", {"name": "EVIL", "subjects": ["evil.>"]}),
        frozenset({"admin"}),
    ),
    Attack(
        "open a consumer on the domain log",
        lambda v: "$JS.API.CONSUMER.CREATE.GF_EVENTS",
        _api(
            "$JS.API.CONSUMER.CREATE.GF_EVENTS",
            {"stream_name": "GF_EVENTS", "config": {"deliver_subject": "gf.in.submitter.alice.cancel.x"}},
        ),
        HUB,
    ),
    Attack(
        "delete a provider's dispatch consumer",
        lambda v: f"$JS.API.CONSUMER.DELETE.GF_DISPATCH.prov-{v.provider}",
        lambda nc, v: _api(f"$JS.API.CONSUMER.DELETE.GF_DISPATCH.prov-{v.provider}")(nc, v),
        HUB,
    ),
    # The domain log and dispatch: the orchestrator's alone.
    Attack(
        "append JobCancelled to someone's job",
        lambda v: f"gf.ev.job.{v.job_id}",
        _forge_cancel,
        frozenset({"orchestrator"}),
    ),
    Attack(
        "append ProviderCredited to the ledger",
        lambda v: f"gf.ev.job.{v.job_id}",
        _forge_credit,
        frozenset({"orchestrator"}),
    ),
    Attack(
        "append ProviderRegistered", lambda v: "gf.ev.provider.mallory", _forge_registered, frozenset({"orchestrator"})
    ),
    Attack(
        "dispatch free compute to an honest provider",
        lambda v: f"gf.dispatch.{v.provider}",
        _forge_dispatch,
        frozenset({"orchestrator"}),
    ),
    # Another provider's identity.
    Attack(
        "put another provider's heartbeat",
        lambda v: heartbeat_subject(v.provider),
        lambda nc, v: _pub(nc, heartbeat_subject(v.provider), MARK.encode()),
    ),
    Attack(
        "delete another provider's heartbeat",
        lambda v: heartbeat_subject(v.provider),
        lambda nc, v: _pub(nc, heartbeat_subject(v.provider), b"", {"KV-Operation": "DEL"}),
    ),
    Attack(
        "drain another provider",
        lambda v: intake_subject("provider", v.provider, "drain"),
        lambda nc, v: _pub(nc, intake_subject("provider", v.provider, "drain"), json.dumps({"reason": MARK}).encode()),
    ),
    Attack(
        "make another provider leave",
        lambda v: intake_subject("provider", v.provider, "leave"),
        lambda nc, v: _pub(nc, intake_subject("provider", v.provider, "leave"), json.dumps({"reason": MARK}).encode()),
    ),
    Attack(
        "register under another provider's name",
        lambda v: intake_subject("provider", v.provider, "register"),
        lambda nc, v: _pub(nc, intake_subject("provider", v.provider, "register"), _registration()),
    ),
    Attack(
        "report on another provider's lease",
        lambda v: report_subject(v.provider, v.task_id),
        lambda nc, v: _pub(nc, report_subject(v.provider, v.task_id), _report(v)),
    ),
    Attack(
        "take another provider's leases",
        lambda v: f"$JS.API.CONSUMER.MSG.NEXT.GF_DISPATCH.prov-{v.provider}",
        _api("$JS.API.CONSUMER.MSG.NEXT.GF_DISPATCH.prov-honest", {"batch": 10, "expires": 10**9}),
        HUB,
    ),
    # Another submitter's identity.
    Attack(
        "submit as another submitter",
        lambda v: intake_subject("submitter", "alice", "submit", "evil"),
        lambda nc, v: _pub(
            nc,
            intake_subject("submitter", "alice", "submit", "evil"),
            json.dumps({"workload": "noop", "labels": {"m": MARK}}).encode(),
        ),
    ),
    Attack(
        "cancel another submitter's job",
        lambda v: intake_subject("submitter", "alice", "cancel", v.job_id.split(".")[1]),
        lambda nc, v: _pub(
            nc,
            intake_subject("submitter", "alice", "cancel", v.job_id.split(".")[1]),
            json.dumps({"reason": MARK}).encode(),
        ),
    ),
    Attack(
        "ask the feed as another submitter",
        lambda v: "gf.api.submitter.alice.events",
        _api("gf.api.submitter.alice.events", {"streams": ["job.alice.>"], "after": 0}),
    ),
    # Reading other people's data.
    Attack(
        "read another submitter's events through the feed",
        lambda v: "",
        _feed_others,
        frozenset({"auditor"}) | HUB,
        evidence="feed",
    ),
    Attack(
        "read the domain log directly",
        lambda v: "$JS.API.DIRECT.GET.GF_EVENTS",
        _api("$JS.API.DIRECT.GET.GF_EVENTS", {"seq": 1, "batch": 100}),
        frozenset({"auditor"}) | HUB,
    ),
    Attack(
        "read another submitter's input",
        lambda v: f"$JS.API.DIRECT.GET.GF_OBJECTS.gf.obj.{v.input_name}.m",
        lambda nc, v: _pub(nc, f"$JS.API.DIRECT.GET.GF_OBJECTS.gf.obj.{v.input_name}.m", b""),
        # Providers read inputs (by digest, from their leases); auditors read everything.
        frozenset({"auditor", "provider"}) | HUB,
    ),
    Attack(
        "read another submitter's result",
        lambda v: f"$JS.API.DIRECT.GET.GF_OBJECTS.gf.obj.{v.result_name}.m",
        lambda nc, v: _pub(nc, f"$JS.API.DIRECT.GET.GF_OBJECTS.gf.obj.{v.result_name}.m", b""),
        frozenset({"auditor"}) | HUB,
    ),
    Attack(
        "list every object",
        lambda v: "$JS.API.STREAM.INFO.GF_OBJECTS",
        _api("$JS.API.STREAM.INFO.GF_OBJECTS", {"subjects_filter": ">"}),
        frozenset({"auditor"}) | HUB,
    ),
    Attack(
        "read by sequence any object",
        lambda v: "$JS.API.DIRECT.GET.GF_OBJECTS",
        _api("$JS.API.DIRECT.GET.GF_OBJECTS", {"seq": 1}),
        frozenset({"auditor"}) | HUB,
    ),
    # Writing other people's objects.
    Attack(
        "overwrite another submitter's input",
        lambda v: f"gf.obj.{v.input_name}.0",
        lambda nc, v: _pub(nc, f"gf.obj.{v.input_name}.0", MARK.encode()),
    ),
    Attack(
        "write a result in another provider's name",
        lambda v: f"gf.obj.result.alice.{v.provider}.{'1' * 64}.m",
        lambda nc, v: _pub(nc, f"gf.obj.result.alice.{v.provider}.{'1' * 64}.m", MARK.encode()),
    ),
    # Listening to everything.
    Attack("subscribe to >", lambda v: ">", _sub(">")),
    Attack("subscribe to everyone's replies", lambda v: "_INBOX.>", _sub("_INBOX.>"), HUB),
    Attack("subscribe to all intake", lambda v: "gf.in.>", _sub("gf.in.>")),
    Attack("subscribe to all dispatch", lambda v: "gf.dispatch.>", _sub("gf.dispatch.>")),
    Attack("subscribe to the domain log's subjects", lambda v: "gf.ev.>", _sub("gf.ev.>")),
    # The server as a confused deputy: a reply subject pointing at someone else's intake.
    Attack(
        "make the server publish a stored message onto another's intake subject",
        lambda v: intake_subject("submitter", "alice", "cancel", v.job_id.split(".")[1]),
        _deputy_direct_get,
        HUB,
        evidence="deputy",
    ),
]

#: Every attack the identity-and-permissions issue lists, by the name it has here.
ISSUE_LIST = (
    "append JobCancelled to someone's job",
    "append ProviderCredited to the ledger",
    "append ProviderRegistered",
    "shorten the domain log's max_age to 1s",
    "delete the objects",
    "put another provider's heartbeat",
    "make another provider leave",
    "report on another provider's lease",
    "dispatch free compute to an honest provider",
    "submit as another submitter",
    "delete the domain log",
    "purge the intake",
    "drain another provider",
    "cancel another submitter's job",
    "read another submitter's events through the feed",
    "read another submitter's input",
    "read another submitter's result",
    "subscribe to >",
)


def test_the_catalogue_covers_the_issue() -> None:
    names = [a.name for a in CATALOGUE]
    assert len(names) == len(set(names))
    assert set(ISSUE_LIST) <= set(names)


@dataclass
class Network:
    server: SecureServer
    victims: Victims
    tenants: Tenants
    store: JetStreamEventStore
    before: dict[str, Any] = field(default_factory=dict)
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def _state(nc: NATS) -> dict[str, Any]:
    js = nc.jetstream()
    out = {}
    for name in STREAMS:
        info = await js.stream_info(name)
        cfg = info.config.as_dict()
        out[name] = (cfg, info.state.first_seq, info.state.last_seq)
    return out


@pytest.fixture
async def network(own_nats_server: SecureServer) -> AsyncIterator[Network]:
    async with orchestrated(own_nats_server, FAST) as store:
        net = await _victims(own_nats_server, store)
        try:
            yield net
        finally:
            for done in net.cleanup:
                await done()


async def _victims(server: SecureServer, store: JetStreamEventStore) -> Network:
    """alice's running job, her input, a result written for her, and the honest provider running it."""
    honest = await (await SimulatedProvider.connect(server.access("provider", "honest"), slots=1)).start()
    tenants = Tenants(server)
    job = await tenants.submit("alice", "j1", ALICE_SPEC)
    w, _ = await wait_for(store, lambda w: any(t.status == "running" for t in w.tasks.values()), timeout=20, poll=0.2)
    task_id = next(iter(w.tasks))
    alice = await tenants.nc("submitter", "alice")
    inp = await BlobStore(alice, "submitter", "alice").put(b"alice's private input")
    honest_nc = honest.nc
    res = await BlobStore(honest_nc, "provider", "honest").put(b"alice's private result", for_submitter="alice")
    victims = Victims(job, task_id, inp.name, res.name)
    async with server.connection("admin") as admin:
        before = await _state(admin)
    return Network(server, victims, tenants, store, before, cleanup=[honest.kill, tenants.close])


async def _refused(nc: NATS, subject: str, timeout: float = 3.0) -> bool:
    """The server reported a permissions violation for ``subject`` to this connection."""
    deadline = asyncio.get_running_loop().time() + timeout
    with_suppress = subject.lower()
    while asyncio.get_running_loop().time() < deadline:
        await nc.flush()
        if with_suppress in denied_subjects(nc):
            return True
        await asyncio.sleep(0.05)
    return False


async def _attack(nc: NATS, role: str, net: Network) -> list[str]:
    """Run every attack this role is not entitled to; the names of those the server did not refuse."""
    through = []
    tried = 0
    for attack in CATALOGUE:
        if role in attack.allowed:
            continue
        tried += 1
        v = net.victims
        if attack.evidence == "feed":
            try:
                answer = await attack.run(nc, v)
            except Exception as e:  # no answer at all is a refusal too (the server dropped it)
                answer = {"error": repr(e)}
            if "error" not in answer:
                through.append(f"{attack.name}: the feed answered {str(answer)[:200]}")
            continue
        if attack.evidence == "deputy":
            await attack.run(nc, v)
            continue  # checked at the end: nothing may have landed on the target subject
        await attack.run(nc, v)
        if not await _refused(nc, attack.subject(v)):
            through.append(f"{attack.name}: no permissions violation for {attack.subject(v)}")
    assert tried >= 10, f"only {tried} attacks for {role}"
    return through


async def _assert_untouched(net: Network) -> None:
    """The streams, the log, alice's job and the honest provider are as an honest network left them."""
    # A barrier first: alice sends her submission again (it changes nothing), so the intake stream holds
    # a message stored after anything an attack got into it; once the orchestrator has decided every
    # intake message up to that one, whatever got through has had its effect on the log.
    await net.tenants.submit("alice", net.victims.job_id.split(".")[1], ALICE_SPEC)
    await every_input_has_its_outcome(net.store)
    async with net.server.connection("admin") as admin:
        after = await _state(admin)
    for name in STREAMS:
        cfg0, first0, last0 = net.before[name]
        cfg1, first1, last1 = after[name]
        assert cfg1 == cfg0, f"{name}'s configuration changed"
        assert last1 >= last0, f"{name} went back: {last0} -> {last1}"
        if name in ("GF_EVENTS", "GF_INTAKE", "GF_OBJECTS"):  # the others drop what is done with
            assert first1 == first0, f"{name} lost messages: {first0}..{last0} -> {first1}..{last1}"
    su = await JetStreamEventStore.connect(net.server.superuser())
    try:
        for name in ("GF_EVENTS", "GF_INTAKE", "GF_DISPATCH", "GF_OBJECTS"):
            async for m in su.read_raw(name):
                blob = m.data + json.dumps(m.headers).encode()
                assert MARK.encode() not in blob, f"an attacker's message is in {name} at {m.sequence}: {m.subject}"
                if name != "GF_OBJECTS":
                    assert DEPUTY.encode() not in blob, f"the server replayed an attacker's object into {name}"
                # Nothing but alice herself may have written on her intake subjects.
                assert not (name == "GF_INTAKE" and m.subject.startswith("gf.in.submitter.alice.cancel")), m
    finally:
        await su.close()
    w, _ = await read_world(net.store)
    job = w.jobs[net.victims.job_id]
    assert job.status == "accepted", f"alice's job is {job.status}"
    assert w.tasks[net.victims.task_id].status == "running"
    honest = w.providers["honest"]
    assert honest.status == "online" and honest.capabilities is not None
    assert honest.capabilities.gpu_model == "simulated"
    assert "mallory" not in w.providers
    await assert_audit_passes(net.store)


async def test_an_anonymous_client_cannot_even_connect(network: Network) -> None:
    with pytest.raises(AccessDenied) as info:
        await connect_nats(network.server.url, timeout=3.0)
    assert "without credentials" in str(info.value) and "gpufleet creds issue" in str(info.value)
    # Nor with a well-formed credential that another network issued.
    other = SecureServer(network.server.root.parent / "elsewhere")
    stranger = other.authority.own_creds("submitter", "alice")
    with pytest.raises(AccessDenied) as info:
        await connect_nats(Access(network.server.url, stranger), timeout=3.0)
    assert "refused the credentials" in str(info.value)
    await _assert_untouched(network)


@pytest.mark.parametrize(
    ("role", "name"),
    [
        ("submitter", "mallory"),
        ("provider", "mallory"),
        ("auditor", "snoop"),
        ("admin", "admin"),
        ("orchestrator", "orchestrator"),
    ],
)
async def test_each_role_is_refused_every_attack_and_the_log_is_untouched(
    network: Network, role: str, name: str
) -> None:
    nc = await connect_nats(network.server.access(role, name), name=f"attacker-{role}")
    try:
        through = await _attack(nc, role, network)
    finally:
        await nc.close()
    assert not through, f"{role} {name} got through:\n" + "\n".join(through)
    await _assert_untouched(network)


async def test_the_honest_roles_still_do_their_jobs(network: Network) -> None:
    """The same permissions let each role do what it is for (or the suite would pass by refusing all)."""
    v = network.victims
    # The auditor reads the whole log and every object, with direct gets.
    async with network.server.connection("auditor", "snoop") as aud:
        su = JetStreamEventStore(aud, reads="direct")
        await su.ensure()
        assert [e async for e in su.read_all()], "the auditor reads the log"
        data = await BlobStore(aud, "auditor", "snoop").get((await _ref(network, v.result_name)).model_copy())
        assert data == b"alice's private result"
        await su.close()
    # Alice reads her own result and her job's events; the honest provider its input by digest.
    alice = await network.tenants.nc("submitter", "alice")
    assert (
        await BlobStore(alice, "submitter", "alice").get(await _ref(network, v.result_name))
        == b"alice's private result"
    )
    me = json.loads(
        (
            await alice.request(
                "gf.api.submitter.alice.events",
                json.dumps({"streams": [f"job.{v.job_id}"], "after": 0}).encode(),
                timeout=5,
            )
        ).data
    )
    assert [e["type"] for e in me["events"]][:2] == ["JobSubmitted", "JobAccepted"]
    async with network.server.connection("provider", "other") as other:
        assert (
            await BlobStore(other, "provider", "other").get(await _ref(network, v.input_name))
            == b"alice's private input"
        )
    # The admin manages streams: it may create one (and remove it again).
    async with network.server.connection("admin") as admin:
        js = admin.jetstream()
        await js.add_stream(api.StreamConfig(name="ADMIN_SCRATCH", subjects=["scratch.>"]))
        await js.delete_stream("ADMIN_SCRATCH")
    await assert_audit_passes(network.store)


async def _ref(net: Network, name: str) -> Any:
    from events.types import ObjectRef

    async with net.server.connection("admin") as admin:
        msg = await admin.request(f"$JS.API.DIRECT.GET.GF_OBJECTS.gf.obj.{name}.m", b"", timeout=5)
    m = json.loads(msg.data)
    return ObjectRef(bucket="GF_OBJECTS", name=name, sha256=m["sha256"], size=m["size"])
