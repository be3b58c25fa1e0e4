"""The audit chain: a sha256 hash chain over the whole log, in order, for tamper evidence.

``digest_n = sha256(digest_{n-1} + canonical_bytes(event_n))`` with ``digest_0`` = 32 zero bytes.
The canonical bytes of an event (``events.tlog.canonical_bytes``, the same bytes the signed
transparency log takes as its leaves) are its log position and CloudEvents attributes, then the event's
JSON body exactly as an append stores it (``EventRegistry.encode``). Free-form objects in events
(parameters, results, metrics) are kept with sorted keys by the catalogue itself, so the encoding
is one byte form per event, derived from the envelope alone: a JetStream log and its JSON-lines
copy give the same chain.

The live chain periodically appends ``AuditCheckpointed(position, digest, events)`` to the
``audit.chain`` stream; a later replay recomputes the chain and compares it with every checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from events.audit import AuditCheckpointed
from events.envelope import Envelope
from events.tlog import canonical_body, canonical_bytes
from projections.storage import Table
from projections.view import View

__all__ = [
    "AUDIT_CHAIN",
    "CHAIN_STREAM",
    "GENESIS",
    "ChainRow",
    "ChainView",
    "canonical_body",
    "canonical_bytes",
    "chain_step",
]

#: The aggregate stream that holds the chain's checkpoints.
CHAIN_STREAM = "audit.chain"
#: The digest before the first event.
GENESIS = bytes(32)


def chain_step(digest: bytes, env: Envelope) -> bytes:
    """The chain's digest after ``env``, given the digest before it."""
    return hashlib.sha256(digest + canonical_bytes(env)).digest()


@dataclass(slots=True)
class ChainRow:
    """The chain's head, and the last checkpoint recorded in the log."""

    name: str
    position: int = 0
    events: int = 0
    digest: str = GENESIS.hex()
    checkpoint_position: int = 0
    checkpoint_events: int = 0
    checkpoint_digest: str | None = None
    checkpoints: int = 0


AUDIT_CHAIN = Table.of("audit_chain", ChainRow, key=("name",))


class ChainView(View):
    """Folds every event into the hash chain (one row)."""

    name: ClassVar[str] = "audit_chain"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[Table[object], ...]] = (AUDIT_CHAIN,)  # type: ignore[assignment]
    all_events: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, ChainRow] = self.data[AUDIT_CHAIN.name]
        self.head = ChainRow("chain")
        self._digest = GENESIS
        self._sha = hashlib.sha256
        self._dirty = self.dirty[AUDIT_CHAIN.name]
        #: When the last folded event happened: the ``at`` of the next checkpoint.
        self.last_at: datetime | None = None

    def loaded(self) -> None:
        """Take the head from the stored row."""
        self.head = self.rows.get("chain") or ChainRow("chain")
        self._digest = bytes.fromhex(self.head.digest)

    @property
    def digest(self) -> bytes:
        """The current digest."""
        return self._digest

    def evolve(self, env: Envelope) -> None:
        """Every event extends the chain; checkpoints are also noted."""
        self._digest = self._sha(self._digest + canonical_bytes(env)).digest()
        head = self.head
        head.digest = self._digest.hex()
        head.position = env.sequence
        head.events += 1
        data = env.data
        self.last_at = env.time
        if isinstance(data, AuditCheckpointed):
            head.checkpoint_position = data.position
            head.checkpoint_events = data.events
            head.checkpoint_digest = data.digest
            head.checkpoints += 1
        self.rows["chain"] = head
        self._dirty.add("chain")
