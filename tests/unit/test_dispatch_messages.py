"""Dispatch messages: grants and revocations grouped per provider, in order, within the stream's limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from events.dispatch import (
    MAX_DISPATCH_BATCH,
    MAX_DISPATCH_BYTES,
    START_REPORT_S,
    Dispatch,
    LeaseBatch,
    LeaseGranted,
    LeaseRevoked,
    dispatch_messages,
    start_report_delay,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DISPATCH: TypeAdapter[LeaseGranted | LeaseRevoked | LeaseBatch] = TypeAdapter(Dispatch)


def grant(i: int, provider: str = "p1", pad: int = 0) -> LeaseGranted:
    return LeaseGranted(
        task_id=f"t{i}",
        job_id="j1",
        lease_id=f"l{i}",
        provider_id=provider,
        attempt=1,
        workload="noop",
        params={"pad": "x" * pad} if pad else {},
        timeout_s=60.0,
        expires_at=NOW + timedelta(seconds=30),
    )


def items_of(body: bytes) -> list[LeaseGranted | LeaseRevoked]:
    d = DISPATCH.validate_json(body)
    return list(d.items) if isinstance(d, LeaseBatch) else [d]


def test_one_item_goes_as_itself_under_its_leases_id() -> None:
    g = grant(1)
    r = LeaseRevoked(task_id="t2", lease_id="l2", provider_id="p1")
    assert dispatch_messages([g]) == [("p1", g.model_dump_json().encode(), "l1.g")]
    assert dispatch_messages([r]) == [("p1", r.model_dump_json().encode(), "l2.r")]


def test_items_are_grouped_per_provider_in_order() -> None:
    items: list[LeaseGranted | LeaseRevoked] = [grant(1, "a"), grant(2, "b"), grant(3, "a")]
    items.append(LeaseRevoked(task_id="t1", lease_id="l1", provider_id="a"))
    out = dispatch_messages(items)
    assert [p for p, _, _ in out] == ["a", "b"]
    (_, body_a, id_a), (_, _, id_b) = out
    assert [(type(i).__name__, i.lease_id) for i in items_of(body_a)] == [
        ("LeaseGranted", "l1"),
        ("LeaseGranted", "l3"),
        ("LeaseRevoked", "l1"),
    ]
    assert items_of(body_a) == [items[0], items[2], items[3]]
    assert id_a.startswith("b.") and id_b == "l2.g"


def test_a_batch_is_named_by_what_it_holds() -> None:
    # Re-sent as it was, a batch is deduplicated by the stream; grouped differently (after a restart),
    # it must not be, or a grant that was lost the first time would be dropped again.
    ((_, _, first),) = dispatch_messages([grant(1), grant(2)])
    ((_, _, again),) = dispatch_messages([grant(1), grant(2)])
    ((_, _, other),) = dispatch_messages([grant(1), grant(5)])
    assert first == again != other


def test_batches_keep_to_the_count_and_byte_limits() -> None:
    many = [grant(i) for i in range(MAX_DISPATCH_BATCH * 2 + 3)]
    out = dispatch_messages(many)
    assert [len(items_of(b)) for _, b, _ in out] == [MAX_DISPATCH_BATCH, MAX_DISPATCH_BATCH, 3]
    assert [i.lease_id for _, b, _ in out for i in items_of(b)] == [g.lease_id for g in many]
    big = [grant(i, pad=100_000) for i in range(12)]
    out = dispatch_messages(big)
    assert len(out) > 1
    assert all(len(b) <= MAX_DISPATCH_BYTES for _, b, _ in out)
    assert [i.lease_id for _, b, _ in out for i in items_of(b)] == [g.lease_id for g in big]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3000)), max_size=40))
def test_every_item_arrives_once_in_its_providers_order(spec: list[tuple[str, int]]) -> None:
    items = [grant(i, p, pad) for i, (p, pad) in enumerate(spec)]
    out = dispatch_messages(items)
    for provider in ("a", "b", "c"):
        sent = [i for p, b, _ in out if p == provider for i in items_of(b)]
        assert sent == [g for g in items if g.provider_id == provider]
        assert all(i.provider_id == provider for i in sent)


def test_a_batch_is_never_empty_nor_too_long() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LeaseBatch(provider_id="p1", items=[])
    with pytest.raises(ValueError, match="at most"):
        LeaseBatch(provider_id="p1", items=[grant(i) for i in range(MAX_DISPATCH_BATCH + 1)])


def test_the_start_is_reported_after_a_second_or_before_the_lease_would_lapse() -> None:
    g = grant(1)  # expires 30 s from NOW
    assert start_report_delay(g, NOW) == START_REPORT_S
    assert start_report_delay(g, NOW + timedelta(seconds=29)) == pytest.approx(0.25)
    assert start_report_delay(g, NOW + timedelta(seconds=40)) == 0.0
