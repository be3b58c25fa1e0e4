"""given(...).when(...).then(...) for deciders: no server, no asyncio."""

from __future__ import annotations

from typing import Any

import pytest

from actors.decider import Decider
from events.types import EventModel


class Spec:
    """One decider scenario."""

    def __init__(self, decider: Decider[Any, Any], given: tuple[EventModel, ...] = ()) -> None:
        self.decider = decider
        self.history = given
        self.command: Any = None

    def given(self, *events: EventModel) -> Spec:
        return Spec(self.decider, self.history + events)

    def when(self, command: Any) -> Spec:
        self.command = command
        return self

    def decide(self) -> list[EventModel]:
        return self.decider.decide(self.command, self.decider.fold(self.history))

    def then(self, *expected: EventModel) -> Any:
        got = self.decide()
        assert got == list(expected)
        return self.decider.fold([*self.history, *got])

    def then_types(self, *names: str) -> list[EventModel]:
        got = self.decide()
        assert [type(e).__name__ for e in got] == list(names)
        return got

    def then_raises(self, exc: type[BaseException]) -> BaseException:
        with pytest.raises(exc) as info:
            self.decide()
        return info.value


def given(decider: Decider[Any, Any], *events: EventModel) -> Spec:
    return Spec(decider, events)
