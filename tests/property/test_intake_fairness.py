"""Fairness of the intake queue under random arrival bursts (hypothesis).

Bursts from several identities arrive over time, interleaved with takes; some offers find the queue
full and are held back by the caller (as the orchestrator's fetch loop does) and offered again later.
Whatever happens:

- from the moment a message of identity S is offered until it is taken, no other identity of its
  class has more messages taken than S had ahead of it in its own queue, plus one (its fair share);
  while an urgent identity's message waits, no other class's message is taken at all;
- each identity's messages are taken in the order they were offered;
- nothing offered and accepted is ever lost or taken twice; a refused offer changes nothing.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.intake_queue import FairQueue

SUBMITTERS = [f"submitter.s{i}" for i in range(5)]
PROVIDERS = [f"provider.p{i}" for i in range(2)]
IDENTITIES = SUBMITTERS + PROVIDERS


@dataclass(frozen=True)
class Msg:
    identity: str
    serial: int
    size: int


@dataclass
class Waiting:
    ahead: int
    taken_then: Counter[str]


def urgent(identity: str) -> bool:
    return identity.startswith("provider.")


steps = st.lists(
    st.one_of(
        st.tuples(st.just("burst"), st.sampled_from(IDENTITIES), st.integers(1, 40), st.integers(0, 300)),
        st.tuples(st.just("take"), st.integers(1, 30), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, max_items=st.integers(1, 64), max_bytes=st.integers(1, 5_000))
def test_no_identity_waits_behind_more_than_its_fair_share(
    steps: list[tuple[str, str, int, int]], max_items: int, max_bytes: int
) -> None:
    q: FairQueue[Msg] = FairQueue(max_items=max_items, max_bytes=max_bytes)
    serial = 0
    held: deque[Msg] = deque()  # refused offers, kept by the caller and offered again in order
    queued: Counter[str] = Counter()  # per identity, as the model counts them
    taken: Counter[str] = Counter()
    waiting: dict[Msg, Waiting] = {}
    accepted: list[Msg] = []
    out: list[Msg] = []
    last_taken: dict[str, int] = {}

    def offer(m: Msg) -> bool:
        before = (len(q), q.bytes)
        ahead = queued[m.identity]
        if not q.offer(m.identity, m, m.size, urgent=urgent(m.identity)):
            assert (len(q), q.bytes) == before  # a refusal changes nothing
            return False
        queued[m.identity] += 1
        waiting[m] = Waiting(ahead, taken.copy())
        accepted.append(m)
        return True

    def take() -> Msg | None:
        m = q.take()
        if m is None:
            assert not waiting and len(q) == 0 and q.bytes == 0
            return None
        assert m in waiting, f"{m} taken but never offered, or taken twice"
        w = waiting.pop(m)
        queued[m.identity] -= 1
        for other in IDENTITIES:
            if other == m.identity:
                continue
            got = taken[other] - w.taken_then[other]
            if urgent(other) == urgent(m.identity):
                assert got <= w.ahead + 1, (
                    f"{other} had {got} messages taken while {m} waited behind {w.ahead} of its own"
                )
            elif urgent(m.identity):
                assert got == 0, f"{other} was served while the urgent {m} waited"
        assert last_taken.get(m.identity, -1) < m.serial, f"{m.identity}'s messages out of order"
        last_taken[m.identity] = m.serial
        taken[m.identity] += 1
        out.append(m)
        return m

    for kind, identity, n, size in steps:
        if kind == "burst":
            for _ in range(n):
                serial += 1
                held.append(Msg(identity, serial, size))
        else:
            for _ in range(n):
                take()
        # The caller offers what it holds, in order, until the queue says it is full.
        while held and offer(held[0]):
            held.popleft()
        assert len(q) == sum(queued.values()) <= max_items
        assert q.bytes <= max_bytes or len(q) == 1  # one large message alone is let in
    while True:
        while held and offer(held[0]):
            held.popleft()
        if take() is None and not held:
            break
    assert sorted(out, key=lambda m: m.serial) == sorted(accepted, key=lambda m: m.serial)
    assert len({m.serial for m in out}) == len(out) == serial  # every message, exactly once
    assert q.identities == 0
