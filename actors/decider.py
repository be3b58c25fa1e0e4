"""The decider: an aggregate as three pure functions, and folding events into state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from events.types import EventModel

__all__ = ["Decider", "fold"]

C = TypeVar("C")
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Decider(Generic[C, S]):
    """``decide(command, state) -> events`` and ``evolve(state, event) -> state``, with no I/O.

    Time and ids arrive inside commands, so the same commands give the same events.
    """

    kind: str
    initial_state: Callable[[], S]
    decide: Callable[[C, S], list[EventModel]]
    evolve: Callable[[S, EventModel], S]
    #: True for a command that creates the aggregate: the shell then appends expecting no stream
    #: instead of reading one first (a conflict, if it does exist, reloads and decides again).
    creates: Callable[[C], bool] = lambda _cmd: False

    def fold(self, events: Iterable[EventModel], state: S | None = None) -> S:
        """The state after ``events``, from ``state`` (default: the initial state)."""
        return fold(self.evolve, self.initial_state() if state is None else state, events)


def fold(evolve: Callable[[S, EventModel], S], state: S, events: Iterable[EventModel]) -> S:
    """Apply ``evolve`` to each event in order."""
    for e in events:
        state = evolve(state, e)
    return state
