"""The audit of the signed checkpoints: the log recomputed at every checkpoint's size must give its root.

A step of its own beside the rest of the audit (``replay --audit``): it reads every checkpoint kept
in the checkpoint stream, checks each is signed by the trusted notary key, then hashes the log once
(``events.tlog``, the leaves as the notary takes them) and compares the Merkle root at each
checkpoint's size. A rewritten log cannot pass: recomputing the unsigned chain does not help, since
nobody but the notary can sign a new root. A mismatch names the checkpoint, and the positions
between the last checkpoint that still matches and it: the rewrite is there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nats.errors

from events.errors import StoreUnavailable
from events.store.jetstream import JetStreamEventStore
from events.subjects import CHECKPOINTS_STREAM
from events.tlog import Checkpoint, CompactTree, NoteKey, TlogError, leaf_hash, open_checkpoint, stored_leaf_bytes

__all__ = ["CheckpointAudit", "audit_checkpoints"]


@dataclass
class CheckpointAudit:
    """What the checkpoint step found."""

    key: str
    checkpoints: int = 0
    verified: int = 0
    last_size: int = 0
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every checkpoint is signed by the key and matches the log."""
        return not self.findings

    def render(self) -> str:
        """Lines for the audit report."""
        status = "ok" if self.ok else f"{len(self.findings)} finding(s)"
        lines = [
            f"  signed checkpoints {status}: {self.verified} of {self.checkpoints} match the log"
            f" (up to size {self.last_size}; key {self.key})"
        ]
        lines += [f"      [checkpoints] {f}" for f in self.findings[:50]]
        return "\n".join(lines)


async def _head(store: JetStreamEventStore, stream: str) -> int:
    try:
        info = await store.js.stream_info(stream)
    except nats.errors.Error as e:
        if "not found" in str(e).lower():
            return -1
        raise StoreUnavailable(f"cannot read stream {stream}: {e!s}") from e
    return int(info.state.last_seq)


async def audit_checkpoints(
    store: JetStreamEventStore, key: NoteKey, *, stream: str = CHECKPOINTS_STREAM
) -> CheckpointAudit:
    """Check every checkpoint in ``stream`` against ``key`` and against the log of ``store``."""
    out = CheckpointAudit(key.vkey)
    end = await _head(store, stream)
    if end < 0:
        out.findings.append(f"there is no checkpoint stream {stream}: nothing vouches for the log")
        return out
    signed: dict[int, tuple[int, Checkpoint]] = {}
    async for m in store.read_raw(stream, end=end):
        out.checkpoints += 1
        try:
            cp = open_checkpoint(m.data.decode("utf-8", "replace"), key)
        except TlogError as e:
            out.findings.append(f"checkpoint #{m.sequence} of {stream} is refused: {e}")
            continue
        first = signed.setdefault(cp.size, (m.sequence, cp))
        if first[1].root != cp.root:
            out.findings.append(
                f"checkpoints #{first[0]} and #{m.sequence} sign two different logs of {cp.size} events: "
                "the notary key signed a fork"
            )
    sizes = sorted(signed)
    head = await store.head()
    if not sizes or sizes[-1] == 0:
        if head > 0:
            # An empty checkpoint stream vouches for nothing: an admin may delete and re-create it.
            out.findings.append(
                f"no signed checkpoint covers any of the log's {head} events: nothing vouches for it "
                f"({stream} holds {out.checkpoints} message(s); was it deleted and re-created?)"
            )
        if not sizes:
            return out
    tree = CompactTree()
    cut = len(store.settings.prefix) + 1
    good = 0
    diverged = False
    want = iter(sizes)
    nxt = next(want, None)
    while nxt == 0:
        out.verified += 1
        nxt = next(want, None)
    last = min(head, sizes[-1])
    if last > 0 and nxt is not None:
        async for m in store.read_raw(end=last):
            if m.sequence != tree.size + 1:
                out.findings.append(f"position {tree.size + 1} is missing from the log (next is {m.sequence})")
                break
            tree.append(leaf_hash(stored_leaf_bytes(m.sequence, m.subject[cut:], m.data, m.headers)))
            while nxt is not None and tree.size == nxt:
                seq, cp = signed[nxt]
                if tree.root() == cp.root:
                    out.verified += 1
                    good = nxt
                elif not diverged:
                    # Every later checkpoint covers the same rewrite: it is reported once, here.
                    diverged = True
                    since = f"the checkpoint of size {good} still matches" if good else "no earlier checkpoint"
                    out.findings.append(
                        f"checkpoint #{seq} (size {nxt}) does not match the log: an entry between positions "
                        f"{good + 1} and {nxt} was rewritten ({since})"
                    )
                nxt = next(want, None)
    if nxt is not None:
        out.findings.append(f"history lost: checkpoints were signed up to size {sizes[-1]}, the log has {head} events")
    out.last_size = sizes[-1]
    return out
