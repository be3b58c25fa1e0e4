"""The audit chain view: a sha256 chain over the log; canonical bytes survive a JSON-lines copy."""

from __future__ import annotations

import hashlib

from events import from_json_line, to_json_line
from projections.chain import GENESIS, ChainView, canonical_bytes, chain_step
from tests.golden.loggen import golden_scenario


def test_chain_is_sha256_of_previous_digest_and_event_bytes() -> None:
    events = golden_scenario(checkpoint_every=None).events
    v = ChainView()
    v.fold(events[:2])
    d1 = hashlib.sha256(GENESIS + canonical_bytes(events[0])).digest()
    d2 = hashlib.sha256(d1 + canonical_bytes(events[1])).digest()
    assert v.digest == d2 == chain_step(d1, events[1])
    assert v.head.position == 2 and v.head.events == 2 and v.head.digest == d2.hex()


def test_canonical_bytes_are_the_same_for_the_json_lines_copy() -> None:
    for env in golden_scenario().events:
        assert canonical_bytes(from_json_line(to_json_line(env))) == canonical_bytes(env)


def test_any_change_changes_the_digest() -> None:
    events = golden_scenario(checkpoint_every=None).events
    v1, v2 = ChainView(), ChainView()
    v1.fold(events)
    changed = [*events]
    line = to_json_line(events[50]).replace('"source":"gpufleet.orchestrator"', '"source":"mallory"')
    changed[50] = from_json_line(line)
    v2.fold(changed)
    assert v1.digest != v2.digest


def test_checkpoints_in_the_log_are_noted() -> None:
    events = golden_scenario(checkpoint_every=30).events
    recorded = [e.data for e in events if e.type == "AuditCheckpointed"]
    v = ChainView()
    v.fold(events)
    assert v.head.checkpoints == len(recorded) == 3
    last = recorded[-1]
    assert (v.head.checkpoint_position, v.head.checkpoint_events) == (last.position, last.events)  # type: ignore[attr-defined]
    assert v.head.checkpoint_digest == last.digest  # type: ignore[attr-defined]
