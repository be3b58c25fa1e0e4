"""The pure parts of ``actors.intake_service``: who an intake subject names, and how much of the fair
queue each role may fill."""

from __future__ import annotations

import pytest

from actors.intake_queue import FairQueue
from actors.intake_service import _INTAKE_FETCH, intake_room, sender_of


@pytest.mark.parametrize(
    ("subject", "prefix", "sender"),
    [
        ("gf.in.submitter.alice.submit.j1", "gf.in", ("submitter", "alice")),
        ("gf.in.provider.p-1.report.alice.j1.0", "gf.in", ("provider", "p-1")),
        ("edge.gf.in.provider.p1.register", "edge.gf.in", ("provider", "p1")),
        ("gf.in.submitter", "gf.in", ("submitter", "")),
        ("gf.in", "gf.in", ("", "")),
    ],
)
def test_the_sender_is_the_two_tokens_after_the_prefix(subject: str, prefix: str, sender: tuple[str, str]) -> None:
    assert sender_of(subject, prefix) == sender


def test_submitters_leave_one_fetch_of_room_for_providers() -> None:
    queue: FairQueue[int] = FairQueue(max_items=_INTAKE_FETCH + 10, max_bytes=1 << 20)
    assert intake_room("provider", queue) == _INTAKE_FETCH + 10
    assert intake_room("submitter", queue) == 10
    for i in range(10):
        assert queue.offer("submitter.alice", i, 1)
    # Submitters are out of room; providers still have a whole fetch's worth.
    assert intake_room("submitter", queue) == 0
    assert intake_room("provider", queue) == _INTAKE_FETCH
