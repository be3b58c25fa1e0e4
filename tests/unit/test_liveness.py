"""Liveness (``actors.liveness``) without a server: a real core (world and scheduler) fed with real
provider events, heartbeats as the KV bucket delivers them, and the intents it submits collected."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta

from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from actors.core import Core
from actors.liveness import Liveness
from actors.provider import HeartbeatLapsed, HeartbeatSeen
from actors.reactions import Intent
from events import new_envelope
from events.dispatch import Heartbeat
from events.provider import ProviderDraining, ProviderLeft, ProviderLost, ProviderOnline, ProviderRegistered
from events.store.topology import Topology
from events.types import Capabilities, EventModel, utc_now
from tests.factories import at

CAPS = Capabilities(backend="cpu", gpu_model="cpu", vram_mb=0, slots=1)
TIMEOUT_S = 2.0
_ids = itertools.count(1)


class Fleet:
    """A core with providers in every state, and a liveness judge over it that collects its intents."""

    def __init__(self) -> None:
        self.core = Core()
        self.intents: list[Intent] = []
        self.leading = True
        self.connected = True
        for pid, *after in (
            ("on", ProviderOnline),
            ("drain", ProviderOnline, ProviderDraining),
            ("lost", ProviderOnline, ProviderLost),
            ("left", ProviderOnline, ProviderLeft),
        ):
            events: list[EventModel] = [ProviderRegistered(at=at(0), provider_id=pid, name=pid, capabilities=CAPS)]
            events += [kind(at=at(1), provider_id=pid) for kind in after]
            for e in events:
                env = new_envelope(f"provider.{pid}", e, id=f"ev-{next(_ids)}", source="tests")
                self.core.apply(env, live=False)
        self.live = Liveness(
            NATS().jetstream(),
            Topology(),
            self.core.world,
            self.core.scheduler,
            submit=self.intents.append,
            timeout_s=TIMEOUT_S,
            leading=lambda: self.leading,
            connected=lambda: self.connected,
        )

    def commands(self) -> list[tuple[str, type]]:
        return [(i.aggregate_id, type(i.command)) for i in self.intents]

    def beat(self, pid: str, seen: datetime) -> None:
        hb = Heartbeat(provider_id=pid, at=seen, running=0, slots=1)
        self.live.heartbeat(pid, hb.model_dump_json().encode(), seen)


def test_the_states_are_what_the_tests_below_assume() -> None:
    f = Fleet()
    assert {p: s.status for p, s in f.core.world.providers.items()} == {
        "on": "online",
        "drain": "draining",
        "lost": "lost",
        "left": "left",
    }


def test_a_silent_online_or_draining_provider_lapses_once_and_gets_no_more_work() -> None:
    f = Fleet()
    now = utc_now()
    f.live.started_at = now - timedelta(seconds=TIMEOUT_S + 1)  # started long enough ago
    f.beat("on", now - timedelta(seconds=TIMEOUT_S / 2))  # heard within the timeout
    f.beat("drain", now - timedelta(seconds=TIMEOUT_S + 0.5))  # heard, but too long ago
    f.live.check(now)
    assert f.commands() == [("drain", HeartbeatLapsed)]
    lapse = f.intents[0].command
    assert lapse.at == now and lapse.reason == f"no heartbeat for {TIMEOUT_S:g}s"
    assert f.core.scheduler.providers["drain"].available is False  # before the loss is in the log
    assert f.core.scheduler.providers["on"].available is True
    # Once: the next tick does not report it again, however silent it stays.
    f.live.check(now + timedelta(seconds=0.25))
    assert f.commands() == [("drain", HeartbeatLapsed)]
    # The other one lapses when its own timeout runs out.
    f.live.check(now + timedelta(seconds=TIMEOUT_S / 2 + 0.1))
    assert f.commands() == [("drain", HeartbeatLapsed), ("on", HeartbeatLapsed)]
    assert f.core.scheduler.providers["on"].available is False


def test_a_provider_never_heard_gets_one_timeout_from_the_start() -> None:
    f = Fleet()
    start = f.live.started_at
    assert f.live.fresh("on", start + timedelta(seconds=TIMEOUT_S))
    assert not f.live.fresh("on", start + timedelta(seconds=TIMEOUT_S + 0.01))
    f.live.check(start + timedelta(seconds=TIMEOUT_S - 0.1))
    assert f.intents == []
    f.live.check(start + timedelta(seconds=TIMEOUT_S + 0.1))
    assert sorted(f.commands()) == [("drain", HeartbeatLapsed), ("on", HeartbeatLapsed)]


def test_a_provider_heard_before_the_clock_restarted_gets_one_timeout_from_the_restart() -> None:
    f = Fleet()
    long_ago = utc_now() - timedelta(seconds=60)
    f.live.started_at = long_ago
    f.beat("on", long_ago)
    f.live.restart_clock()  # this process took the lead: what it heard before proves nothing either way
    soon = utc_now() + timedelta(seconds=TIMEOUT_S / 2)
    assert f.live.fresh("on", soon)
    f.live.check(soon)
    assert f.intents == []


def test_a_heartbeat_older_than_the_last_one_does_not_move_it_back() -> None:
    f = Fleet()
    now = utc_now()
    f.beat("on", now)
    f.beat("on", now - timedelta(seconds=10))  # a watch that starts over replays an old one
    assert f.live.last_seen["on"] == now


def test_a_lost_provider_heard_again_recently_is_seen_again_by_the_leader_only() -> None:
    f = Fleet()
    now = utc_now()
    f.beat("lost", now - timedelta(seconds=TIMEOUT_S * 3))  # an old heartbeat, replayed: no proof
    assert f.intents == []
    f.leading = False
    f.beat("lost", now)
    assert f.intents == []  # only the leader judges
    f.leading = True
    f.beat("lost", now)
    assert f.commands() == [("lost", HeartbeatSeen)]
    f.beat("on", now)  # not lost: nothing to say
    assert f.commands() == [("lost", HeartbeatSeen)]


def test_a_heartbeat_that_does_not_decode_is_logged_and_changes_nothing() -> None:
    f = Fleet()
    with capture_logs() as logs:
        f.live.heartbeat("lost", b"{not json", utc_now())
    assert [(e["event"], e["key"]) for e in logs] == [("liveness.bad_heartbeat", "lost")]
    assert f.intents == [] and "lost" not in f.live.last_seen


def test_after_a_reconnect_every_provider_starts_over() -> None:
    f = Fleet()
    old = utc_now() - timedelta(seconds=60)
    f.live.started_at = old
    f.beat("on", old)
    f.live.hearing = True
    f.live.reconnected()
    assert f.live.last_seen == {} and f.live.hearing is False and f.live.started_at > old
    f.live.check(utc_now())
    assert f.intents == []  # one timeout from now, not from before the outage


async def test_the_lapse_loop_judges_only_as_the_connected_leader_that_hears_heartbeats() -> None:
    f = Fleet()
    f.live.timeout_s = 0.2
    f.live.started_at = utc_now() - timedelta(seconds=5)
    loop = asyncio.create_task(f.live.lapse_loop())
    try:
        for leading, connected, hearing in ((False, True, True), (True, False, True), (True, True, False)):
            f.leading, f.connected, f.live.hearing = leading, connected, hearing
            await asyncio.sleep(0.15)  # three ticks of 0.05 s
            assert f.intents == [], (leading, connected, hearing)
        f.live.hearing = True
        await asyncio.sleep(0.15)
        assert sorted(f.commands()) == [("drain", HeartbeatLapsed), ("on", HeartbeatLapsed)]
    finally:
        loop.cancel()
