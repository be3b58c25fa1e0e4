"""The intake's fair queue: round-robin across identities, FIFO within one, urgent first, bounded."""

from __future__ import annotations

import pytest

from actors.intake_queue import FairQueue


def drain(q: FairQueue[str]) -> list[str]:
    out = []
    while (item := q.take()) is not None:
        out.append(item)
    return out


def test_a_burst_is_interleaved_one_for_one_with_everyone_elses_messages() -> None:
    q: FairQueue[str] = FairQueue(max_items=100, max_bytes=10_000)
    for i in range(5):
        assert q.offer("submitter.a", f"a{i}", 10)
    assert q.offer("submitter.b", "b0", 10)
    assert q.offer("submitter.c", "c0", 10)
    assert q.offer("submitter.c", "c1", 10)
    assert drain(q) == ["a0", "b0", "c0", "a1", "c1", "a2", "a3", "a4"]


def test_one_identitys_messages_keep_their_order() -> None:
    q: FairQueue[str] = FairQueue(max_items=100, max_bytes=10_000)
    q.offer("submitter.a", "submit", 1)
    q.offer("submitter.b", "x", 1)
    q.offer("submitter.a", "cancel", 1)
    taken = drain(q)
    assert taken.index("submit") < taken.index("cancel")


def test_an_identity_that_arrives_later_is_served_within_one_round() -> None:
    q: FairQueue[str] = FairQueue(max_items=100, max_bytes=10_000)
    for i in range(10):
        q.offer("submitter.a", f"a{i}", 1)
    q.offer("submitter.b", "b0", 1)
    assert [q.take(), q.take()] == ["a0", "b0"]
    assert q.take() == "a1"
    q.offer("submitter.late", "l0", 1)  # joins the end of the round: after a's next turn at most
    assert [q.take(), q.take()] == ["a2", "l0"]


def test_urgent_identities_go_strictly_first_round_robin_among_themselves() -> None:
    q: FairQueue[str] = FairQueue(max_items=100, max_bytes=10_000)
    for i in range(3):
        q.offer("submitter.a", f"a{i}", 1)
    q.offer("provider.p", "p0", 1, urgent=True)
    q.offer("provider.p", "p1", 1, urgent=True)
    q.offer("provider.r", "r0", 1, urgent=True)
    assert [q.take(), q.take(), q.take()] == ["p0", "r0", "p1"]
    assert q.take() == "a0"
    q.offer("provider.r", "r1", 1, urgent=True)  # a provider's report never waits behind submissions
    assert q.take() == "r1"
    assert drain(q) == ["a1", "a2"]


def test_it_is_bounded_by_items_and_refuses_without_dropping() -> None:
    q: FairQueue[str] = FairQueue(max_items=3, max_bytes=10_000)
    assert q.room() == 3
    assert all(q.offer("submitter.a", f"a{i}", 1) for i in range(3))
    assert q.room() == 0
    assert not q.offer("submitter.b", "b0", 1)  # full: the caller keeps it and stops fetching
    assert not q.offer("provider.p", "p0", 1, urgent=True)  # urgent or not: the bound holds
    assert len(q) == 3 and q.identities == 1
    assert q.take() == "a0"
    assert q.room() == 1
    assert q.offer("submitter.b", "b0", 1)
    assert drain(q) == ["a1", "b0", "a2"]


def test_it_is_bounded_by_bytes_but_never_wedged_by_one_large_message() -> None:
    q: FairQueue[str] = FairQueue(max_items=100, max_bytes=100)
    assert q.offer("submitter.a", "a0", 60)
    assert not q.offer("submitter.a", "a1", 60)  # 120 bytes would not fit
    assert q.offer("submitter.a", "a1", 40)
    assert q.bytes == 100 and q.room() == 0
    assert drain(q) == ["a0", "a1"]
    assert q.bytes == 0
    assert q.offer("submitter.a", "huge", 1_000)  # alone in an empty queue: let in
    assert q.room() == 0
    assert not q.offer("submitter.b", "b0", 1)
    assert q.take() == "huge"


def test_empty_identity_queues_are_forgotten() -> None:
    q: FairQueue[str] = FairQueue(max_items=1_000, max_bytes=10**6)
    for i in range(500):
        q.offer(f"submitter.s{i}", "m", 1)
    assert q.identities == 500
    assert len(drain(q)) == 500
    assert q.identities == 0 and len(q) == 0 and q.bytes == 0
    assert q.take() is None


def test_a_queue_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError):
        FairQueue(max_items=0, max_bytes=1)
