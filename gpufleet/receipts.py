"""What a reader checks of the log's signed checkpoints, and receipts that verify offline.

- :class:`CheckpointKeeper` holds the last checkpoint a reader verified (in memory, and in a file when
  given one) and accepts a newer one only if the trusted notary key signed it **and** a consistency
  proof shows it extends the one kept: a log rewritten behind the reader's back fails here, even one
  rewritten by someone holding the network's admin credentials (they do not hold the notary key).
- :class:`Receipt` is a checkpoint and, for each entry of a job, its bytes and inclusion proof:
  ``verify(key)`` needs nothing but the notary's public key, and keeps verifying after any later
  rewrite of the log (which could not change the signed root the receipt holds).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors

from events.codec import decode_message
from events.envelope import Envelope
from events.errors import AccessDenied, InvalidPayload, StoreUnavailable
from events.store.connection import raise_if_denied
from events.subjects import CHECKPOINT_SUBJECT, CHECKPOINTS_STREAM, TLOG_OPERATION, api_subject
from events.tlog import (
    BadProof,
    Checkpoint,
    NoteKey,
    leaf_hash,
    open_checkpoint,
    parse_leaf,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "CheckpointKeeper",
    "Receipt",
    "ReceiptEntry",
    "fetch_checkpoint_note",
    "fetch_receipt",
    "notary_request",
    "refresh",
]


class CheckpointKeeper:
    """The last checkpoint verified with ``key``; ``path`` keeps it across runs (its signed note)."""

    def __init__(self, key: NoteKey, path: Path | None = None) -> None:
        self.key = key
        self.path = path
        self.last: Checkpoint | None = None
        self.note: str | None = None
        if path is not None and path.exists():
            note = path.read_text()
            self.last, self.note = open_checkpoint(note, key), note

    def accept(self, note: str, proof: Sequence[bytes]) -> Checkpoint:
        """Verify ``note`` (signature, and extension of the kept one by ``proof``) and keep it.

        Raises ``BadSignature`` (not the trusted key's) or ``HistoryRewritten`` (does not extend)."""
        cp = open_checkpoint(note, self.key)
        last = self.last
        if last is not None:
            verify_consistency(last.size, cp.size, last.root, cp.root, proof)
            if cp.size == last.size:
                return cp
        self.last, self.note = cp, note
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(note)
            os.replace(tmp, self.path)
        return cp


@dataclass(frozen=True, slots=True)
class ReceiptEntry:
    """One entry of the log: its position, its bytes (``events.tlog.leaf_bytes``) and inclusion proof."""

    position: int
    leaf: bytes
    proof: tuple[bytes, ...]

    def envelope(self) -> Envelope:
        """The event these bytes hold, decoded as the log's readers decode it."""
        f = parse_leaf(self.leaf)
        if f.position != self.position:
            raise BadProof(f"the entry at {self.position} says it is at {f.position}")
        try:
            return decode_message(f.stream, f.body, f.headers(), f.position)
        except InvalidPayload as e:
            raise BadProof(f"the entry at {self.position} does not decode: {e}") from e


@dataclass(frozen=True, slots=True)
class Receipt:
    """Inclusion proofs of a job's entries in the log a signed checkpoint names."""

    job_id: str
    checkpoint: str
    entries: tuple[ReceiptEntry, ...] = field(default=())

    def verify(self, key: NoteKey) -> list[Envelope]:
        """The entries' events, once every proof leads to the root the notary signed; ``BadSignature``
        or ``BadProof`` otherwise. Offline: needs only the notary's public key."""
        cp = open_checkpoint(self.checkpoint, key)
        out = []
        for e in self.entries:
            verify_inclusion(e.position - 1, cp.size, leaf_hash(e.leaf), list(e.proof), cp.root)
            out.append(e.envelope())
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, to keep."""
        return {
            "job_id": self.job_id,
            "checkpoint": self.checkpoint,
            "entries": [
                {
                    "position": e.position,
                    "leaf": base64.b64encode(e.leaf).decode(),
                    "proof": [base64.b64encode(p).decode() for p in e.proof],
                }
                for e in self.entries
            ],
        }

    @classmethod
    def from_json(cls, doc: Any) -> Receipt:
        """The inverse of :meth:`to_json`; ``BadProof`` (one line) if it is not a receipt."""
        try:
            return cls(
                job_id=str(doc["job_id"]),
                checkpoint=str(doc["checkpoint"]),
                entries=tuple(_entry(e) for e in doc["entries"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BadProof(f"not a receipt: {e!s}") from e


def _entry(doc: Any) -> ReceiptEntry:
    return ReceiptEntry(
        position=int(doc["position"]),
        leaf=base64.b64decode(doc["leaf"], validate=True),
        proof=tuple(base64.b64decode(p, validate=True) for p in doc["proof"]),
    )


async def notary_request(nc: Any, role: str, name: str, body: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Ask the notary (``gf.api.<role>.<name>.tlog``); its answer, or a typed one-line error."""
    subject = api_subject(role, name, TLOG_OPERATION)
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    except nats.errors.NoRespondersError as e:
        raise StoreUnavailable("the network's notary does not answer (is it running?)") from e
    except nats.errors.TimeoutError as e:
        raise_if_denied(nc, subject, f"{role} {name}")
        raise StoreUnavailable("the network's notary did not answer in time") from e
    except (nats.errors.Error, OSError) as e:
        raise StoreUnavailable(f"cannot reach the notary: {e!s}") from e
    try:
        doc: dict[str, Any] = json.loads(msg.data)
    except ValueError as e:
        raise StoreUnavailable("the notary answered something that is not JSON") from e
    if "error" in doc:
        raise AccessDenied(f"the notary refused: {doc['error']}")
    return doc


async def fetch_checkpoint_note(nc: Any, stream: str = CHECKPOINTS_STREAM) -> str | None:
    """The latest checkpoint note in the checkpoint stream (a direct get: the notary need not be up)."""
    req = json.dumps({"last_by_subj": CHECKPOINT_SUBJECT}).encode()
    subject = f"$JS.API.DIRECT.GET.{stream}"
    try:
        msg = await nc.request(subject, req, timeout=5.0)
    except nats.errors.NoRespondersError as e:
        raise StoreUnavailable(f"no checkpoint stream {stream} on this network") from e
    except nats.errors.TimeoutError as e:
        raise_if_denied(nc, subject, "these credentials")
        raise StoreUnavailable(f"no answer reading {stream}") from e
    except (nats.errors.Error, OSError) as e:
        raise StoreUnavailable(f"cannot read {stream}: {e!s}") from e
    if msg.headers and msg.headers.get("Status") and not msg.data:
        return None
    return str(msg.data.decode("utf-8", "replace"))


def _proof(doc: dict[str, Any]) -> list[bytes]:
    try:
        return [base64.b64decode(p, validate=True) for p in doc.get("proof", [])]
    except (TypeError, ValueError) as e:
        raise BadProof("the notary's proof is not base64") from e


async def refresh(nc: Any, role: str, name: str, keeper: CheckpointKeeper) -> Checkpoint:
    """The latest signed checkpoint, verified and shown to extend the one ``keeper`` holds."""
    note = await fetch_checkpoint_note(nc)
    if note is None:
        raise StoreUnavailable("no checkpoint has been signed yet")
    cp = open_checkpoint(note, keeper.key)
    proof: list[bytes] = []
    last = keeper.last
    if last is not None and 0 < last.size < cp.size:
        doc = await notary_request(nc, role, name, {"op": "consistency", "old": last.size, "new": cp.size})
        proof = _proof(doc)
    return keeper.accept(note, proof)


async def fetch_receipt(nc: Any, role: str, name: str, job_id: str, keeper: CheckpointKeeper) -> Receipt:
    """Every entry of ``job_id`` this identity may have, with proofs against one signed checkpoint
    (which must extend the one ``keeper`` holds); verified before it is returned."""
    entries: list[ReceiptEntry] = []
    after = 0
    note: str | None = None
    size: int | None = None
    for _ in range(1000):
        body: dict[str, Any] = {"op": "receipt", "job": job_id, "after": after}
        if size is not None:
            body["size"] = size  # every page against the checkpoint of the first, however many come after
        try:
            doc = await notary_request(nc, role, name, body)
        except AccessDenied:
            if size is None:
                raise
            # That checkpoint is no longer kept (the paging outlasted the notary's memory): start over.
            entries, after, note, size = [], 0, None, None
            await asyncio.sleep(0)
            continue
        if note is None:
            note = doc.get("checkpoint")
            size = doc.get("size") if type(doc.get("size")) is int else None
            if not note:
                raise StoreUnavailable("no checkpoint has been signed yet: ask again in a few seconds")
        elif doc.get("checkpoint") != note:
            # (A notary that does not pin answered against a newer checkpoint: start over.)
            entries, after, note, size = [], 0, None, None
            await asyncio.sleep(0)
            continue
        try:
            entries.extend(_entry(e) for e in doc.get("entries", []))
        except (KeyError, TypeError, ValueError) as e:
            raise BadProof(f"the notary's receipt is malformed: {e!s}") from e
        # The notary says where to go on ("next": past entries this identity may not have, too).
        nxt = doc.get("next", entries[-1].position if entries else after)
        if not doc.get("more") or type(nxt) is not int or nxt <= after:
            break
        after = nxt
    assert note is not None
    cp = open_checkpoint(note, keeper.key)
    proof: list[bytes] = []
    if keeper.last is not None and 0 < keeper.last.size < cp.size:
        proof = _proof(
            await notary_request(nc, role, name, {"op": "consistency", "old": keeper.last.size, "new": cp.size})
        )
    keeper.accept(note, proof)
    receipt = Receipt(job_id, note, tuple(entries))
    receipt.verify(keeper.key)
    return receipt
