"""The transparency log over the event log: RFC 9162 Merkle trees, proofs, and signed checkpoints.

- **Leaves.** Leaf ``i`` is the log position ``i + 1``; its bytes are :func:`leaf_bytes`: the position,
  the CloudEvents attributes and the event's JSON body, the same framing the audit chain hashes
  (:func:`canonical_bytes` of a decoded envelope). The notary takes the body *as stored*
  (:func:`stored_leaf_bytes`, nothing decoded), so a leaf never depends on the registry: an upcaster
  added later, or an event of a type this version does not know, never changes a signed leaf. For
  every event the current registry writes, both give the same bytes.
- **Tree.** ``leaf = SHA-256(0x00 || bytes)``, ``node = SHA-256(0x01 || left || right)``, the root of
  ``n`` leaves as RFC 9162 §2.1.1 defines it; inclusion and consistency proofs and their verification
  as §2.1.3 and §2.1.4 give them. Proofs are built from any ``subtree(lo, hi)`` function; the notary
  keeps every complete subtree's hash on disk in the order of Go's ``golang.org/x/mod/sumdb/tlog``
  (:func:`stored_hash_index`), so a proof costs O(log² n) reads, never a pass over the log.
- **Checkpoints.** C2SP ``tlog-checkpoint`` bodies (origin, size, base64 root) in C2SP ``signed-note``
  form, signed with Ed25519 (an nkeys key pair); keys written as signed-note verifier keys
  ``<name>+<hex key id>+<base64(0x01 || public key)>``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nkeys

from events.envelope import Envelope
from events.errors import GpufleetError
from events.registry import DEFAULT_REGISTRY, EventRegistry
from events.types import EventModel

__all__ = [
    "EMPTY_ROOT",
    "BadProof",
    "BadSignature",
    "Checkpoint",
    "CompactTree",
    "HistoryRewritten",
    "LeafFields",
    "NoteKey",
    "TlogError",
    "canonical_body",
    "canonical_bytes",
    "consistency_proof",
    "inclusion_proof",
    "leaf_bytes",
    "leaf_hash",
    "merkle_root",
    "new_signing_seed",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "parse_leaf",
    "root_from_inclusion",
    "sign_checkpoint",
    "sign_note",
    "stored_hash_count",
    "stored_hash_index",
    "stored_leaf_bytes",
    "stored_subtree",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_SEP = "\x1f"
_BODY = b"\x1e"
_ALG_ED25519 = 1
_DASH = "\u2014 "
#: A checkpoint's size is a decimal without leading zeros, of at most this many digits.
_MAX_SIZE_DIGITS = 19
_MAX_NOTE = 64 * 1024


class TlogError(GpufleetError):
    """A proof, a signature or a checkpoint that does not hold."""


class BadProof(TlogError):
    """A Merkle proof that does not lead to the root it should."""


class BadSignature(TlogError):
    """A note not signed by the trusted key, or not a well-formed signed note."""


class HistoryRewritten(TlogError):
    """A signed log that does not extend an earlier signed state of itself."""


# ---- leaves --------------------------------------------------------------------------------------


def canonical_body(data: EventModel, registry: EventRegistry = DEFAULT_REGISTRY) -> bytes:
    """The event's JSON as an append stores it; canonical because free-form objects are sorted."""
    return registry.encode(data)


def leaf_bytes(
    position: int,
    event_id: str,
    stream: str,
    source: str,
    correlationid: str | None,
    causationid: str | None,
    body: bytes,
    specversion: str = "1.0",
    datacontenttype: str = "application/json",
) -> bytes:
    """The bytes that stand for one stored event: position, attributes, then the JSON body."""
    head = _SEP.join(
        (
            str(position),
            event_id,
            stream,
            source,
            correlationid or "",
            causationid or "",
            specversion,
            datacontenttype,
        )
    )
    return head.encode() + _BODY + body


def canonical_bytes(env: Envelope, registry: EventRegistry = DEFAULT_REGISTRY) -> bytes:
    """The bytes of a decoded ``env`` that the chain hashes: :func:`leaf_bytes` of its canonical body."""
    return leaf_bytes(
        env.sequence,
        env.id,
        env.subject,
        env.source,
        env.correlationid,
        env.causationid,
        canonical_body(env.data, registry),
        env.specversion,
        env.datacontenttype,
    )


def stored_leaf_bytes(position: int, stream: str, body: bytes, headers: Mapping[str, str] | None) -> bytes:
    """:func:`leaf_bytes` of a stored message as it is, undecoded: the attributes read from its headers
    the way ``events.codec.decode_message`` reads them (``stream`` without the subject prefix)."""
    h = headers or {}
    return leaf_bytes(
        position,
        h.get("ce-id") or h.get("Nats-Msg-Id") or "",
        stream,
        h.get("ce-source", ""),
        h.get("ce-correlationid"),
        h.get("ce-causationid"),
        body,
    )


@dataclass(frozen=True, slots=True)
class LeafFields:
    """A leaf's bytes taken apart again (see :func:`leaf_bytes`)."""

    position: int
    event_id: str
    stream: str
    source: str
    correlationid: str | None
    causationid: str | None
    body: bytes

    def headers(self) -> dict[str, str]:
        """The ``ce-*`` headers ``decode_message`` reads, to decode :attr:`body` as it was stored."""
        h = {"ce-id": self.event_id, "ce-source": self.source}
        if self.correlationid:
            h["ce-correlationid"] = self.correlationid
        if self.causationid:
            h["ce-causationid"] = self.causationid
        return h


def parse_leaf(data: bytes) -> LeafFields:
    """The fields of :func:`leaf_bytes`; ``BadProof`` if ``data`` is not in that form."""
    head, sep, body = data.partition(_BODY)
    parts = head.decode("utf-8", "replace").split(_SEP)
    if not sep or len(parts) != 8 or not parts[0].isdigit():
        raise BadProof("not the bytes of a log entry")
    return LeafFields(int(parts[0]), parts[1], parts[2], parts[3], parts[4] or None, parts[5] or None, body)


# ---- hashing -------------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The root of a tree of these leaf hashes (RFC 9162 §2.1.1), built level by level."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        # Pairing left to right and carrying an odd last node up gives the RFC's tree: its left
        # subtrees are always the largest power of two.
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


Subtree = Callable[[int, int], bytes]


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[0:size])``, leaf first; ``subtree(lo, hi)`` = MTH(D[lo:hi])."""
    if not 0 <= index < size:
        raise BadProof(f"no entry {index} in a log of {size}")
    out: list[bytes] = []

    def path(m: int, lo: int, hi: int) -> None:
        n = hi - lo
        if n == 1:
            return
        k = _split(n)
        if m < k:
            path(m, lo, lo + k)
            out.append(subtree(lo + k, hi))
        else:
            path(m - k, lo + k, hi)
            out.append(subtree(lo, lo + k))

    path(index, 0, size)
    return out


def consistency_proof(old: int, new: int, subtree: Subtree) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(old, D[0:new])``; empty when ``old`` is 0 or equal to ``new``."""
    if not 0 <= old <= new:
        raise BadProof(f"a log of {new} cannot extend one of {old}")
    out: list[bytes] = []
    if old in (0, new):
        return out

    def sub(m: int, lo: int, hi: int, whole: bool) -> None:
        n = hi - lo
        if m == n:
            if not whole:
                out.append(subtree(lo, hi))
            return
        k = _split(n)
        if m <= k:
            sub(m, lo, lo + k, whole)
            out.append(subtree(lo + k, hi))
        else:
            sub(m - k, lo + k, hi, False)
            out.append(subtree(lo, lo + k))

    sub(old, 0, new, True)
    return out


def _hashes_ok(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root that ``proof`` leads to from leaf hash ``leaf`` at ``index``."""
    if not 0 <= index < size or not _hashes_ok(leaf, *proof):
        raise BadProof(f"no entry {index} in a log of {size}, or a malformed proof")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise BadProof("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise BadProof("the inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ``BadProof`` unless ``proof`` shows leaf hash ``leaf`` at ``index`` of the tree ``root``."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise BadProof(f"entry {index} is not in the log of {size} with that root")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise ``HistoryRewritten`` unless the tree of ``new`` leaves with ``new_root``
    extends the one of ``old`` leaves with ``old_root``."""
    if not 0 <= old <= new:
        raise HistoryRewritten(f"the log went from {old} entries back to {new}")
    if not _hashes_ok(old_root, new_root, *proof):
        raise HistoryRewritten("a malformed consistency proof")
    if old == new:
        if proof or old_root != new_root:
            raise HistoryRewritten(f"two different logs of {old} entries")
        return
    if old == 0:
        if proof:
            raise HistoryRewritten("a non-empty proof from the empty log")
        return
    if not proof:
        raise HistoryRewritten("an empty consistency proof")
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise HistoryRewritten("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise HistoryRewritten(f"the log of {new} entries does not extend the signed log of {old}")


# ---- the compact tree and stored hashes ---------------------------------------------------------


def stored_hash_index(level: int, n: int) -> int:
    """Where the ``n``-th hash of ``level`` is kept when each leaf's hash is followed by the hashes of
    the subtrees it completes (Go's ``tlog.StoredHashIndex``)."""
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def stored_hash_count(size: int) -> int:
    """How many hashes are kept for a tree of ``size`` leaves."""
    if size == 0:
        return 0
    count = stored_hash_index(0, size - 1) + 1
    n = size - 1
    while n & 1:
        count += 1
        n >>= 1
    return count


def stored_subtree(lo: int, hi: int, read: Callable[[Sequence[int]], Sequence[bytes]]) -> bytes:
    """MTH(D[lo:hi]) from stored hashes (``read`` maps stored indexes to hashes): the range is split
    into complete subtrees, largest first, and those are joined right to left."""
    if not 0 <= lo < hi:
        raise BadProof(f"no subtree [{lo}, {hi})")
    indexes: list[int] = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        k = 1 << level
        if lo & (k - 1):
            raise BadProof(f"[{lo}, {hi}) is not a subtree of the log")
        indexes.append(stored_hash_index(level, lo >> level))
        lo += k
    hashes = read(indexes)
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


class CompactTree:
    """The right edge of a Merkle tree: one hash per complete subtree (O(log n)), enough to append and
    to compute the root; ``append`` also returns the hashes to store, in :func:`stored_hash_index` order."""

    __slots__ = ("_peaks", "size")

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()) -> None:
        if len(peaks) != size.bit_count() or not _hashes_ok(*peaks):
            raise BadProof(f"a tree of {size} leaves has {size.bit_count()} complete subtrees, not {len(peaks)}")
        self.size = size
        self._peaks = list(peaks)

    @classmethod
    def from_stored(cls, size: int, read: Callable[[Sequence[int]], Sequence[bytes]]) -> CompactTree:
        """The tree of ``size`` leaves, from its stored hashes."""
        indexes = []
        lo = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                indexes.append(stored_hash_index(level, lo >> level))
                lo += 1 << level
        return cls(size, list(read(indexes)) if indexes else [])

    @property
    def peaks(self) -> list[bytes]:
        """The complete subtrees' hashes, largest (leftmost) first."""
        return list(self._peaks)

    def append(self, leaf: bytes) -> list[bytes]:
        """Add a leaf hash; the hashes the tree now has that it did not: the leaf's, then the subtrees
        it completes, in the order :func:`stored_hash_index` keeps them."""
        out = [leaf]
        h, n = leaf, self.size
        peaks = self._peaks
        while n & 1:
            h = node_hash(peaks.pop(), h)
            out.append(h)
            n >>= 1
        peaks.append(h)
        self.size += 1
        return out

    def root(self) -> bytes:
        """The tree's root (RFC 9162 MTH)."""
        if not self._peaks:
            return EMPTY_ROOT
        r = self._peaks[-1]
        for p in reversed(self._peaks[:-1]):
            r = node_hash(p, r)
        return r


# ---- signed notes --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise BadSignature(f"not base64: {text[:40]!r}") from e


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name) or len(name) > 256:
        raise BadSignature(f"a key name has no spaces or '+': {name[:60]!r}")
    return name


@dataclass(frozen=True, slots=True)
class NoteKey:
    """A note verifier key: its name (the log's origin) and its Ed25519 public key."""

    name: str
    public: bytes

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id: the start of SHA-256(name || '\\n' || 0x01 || public key)."""
        return hashlib.sha256(self.name.encode() + b"\n" + bytes([_ALG_ED25519]) + self.public).digest()[:4]

    @property
    def vkey(self) -> str:
        """The verifier key as text: ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([_ALG_ED25519]) + self.public)}"

    @property
    def nkey(self) -> str:
        """The same public key as an nkeys server key (``N...``)."""
        raw = bytearray([nkeys.PREFIX_BYTE_SERVER, *self.public])
        raw += nkeys.crc16(raw).to_bytes(2, "little")
        return base64.b32encode(bytes(raw)).decode().rstrip("=")

    @classmethod
    def parse(cls, vkey: str) -> NoteKey:
        """A verifier key from its text form; ``BadSignature`` (one line) if it is not one."""
        name, _, rest = vkey.strip().partition("+")
        hexid, _, b64 = rest.partition("+")
        try:
            key_id = bytes.fromhex(hexid)
        except ValueError as e:
            raise BadSignature(f"not a verifier key (<name>+<key id>+<key>): {vkey[:80]!r}") from e
        raw = _unb64(b64)
        if len(key_id) != 4 or len(raw) != 33 or raw[0] != _ALG_ED25519:
            raise BadSignature(f"not an Ed25519 verifier key: {vkey[:80]!r}")
        key = cls(_check_name(name), raw[1:])
        if key.key_id != key_id:
            raise BadSignature(f"the verifier key's id does not match its key: {vkey[:80]!r}")
        return key

    @classmethod
    def of_seed(cls, name: str, seed: bytes | str) -> NoteKey:
        """The verifier key of an nkeys seed."""
        return cls(_check_name(name), bytes(_keypair(seed)._keys.verify_key))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``message``."""
        import nacl.exceptions
        import nacl.signing

        try:
            nacl.signing.VerifyKey(self.public).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True


def _keypair(seed: bytes | str) -> Any:
    try:
        return nkeys.from_seed(seed.encode() if isinstance(seed, str) else seed)
    except (nkeys.NkeysError, ValueError, TypeError) as e:
        raise BadSignature("not an nkeys seed") from e


def new_signing_seed() -> bytes:
    """A fresh Ed25519 key as an nkeys server seed (``SN...``)."""
    import os

    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_SERVER))


def sign_note(text: str, name: str, seed: bytes | str) -> str:
    """``text`` (ending in a newline) as a signed note, signed by key ``name`` with the nkeys ``seed``."""
    if not text.endswith("\n") or "\n\n" in text:
        raise BadSignature("a note's text ends with one newline and has no blank line")
    kp = _keypair(seed)
    key = NoteKey(_check_name(name), bytes(kp._keys.verify_key))
    sig = kp.sign(text.encode())
    return f"{text}\n{_DASH}{name} {_b64(key.key_id + sig)}\n"


def open_note(note: str, key: NoteKey) -> str:
    """The text of ``note`` if ``key`` signed it (other signatures are ignored); else ``BadSignature``."""
    if len(note) > _MAX_NOTE:
        raise BadSignature("the note is too long")
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise BadSignature("not a signed note: no blank line before the signatures")
    text, sigs = note[: split + 1], note[split + 2 :]
    for line in sigs[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise BadSignature(f"not a signature line: {line[:60]!r}")
        name, _, blob = line[len(_DASH) :].partition(" ")
        if name != key.name:
            continue
        raw = _unb64(blob)
        if len(raw) < 5 or raw[:4] != key.key_id:
            continue
        if key.verify(text.encode(), raw[4:]):
            return text
        raise BadSignature(f"the signature of {name} does not verify: the note was altered, or forged")
    raise BadSignature(f"the note is not signed by the trusted key {key.name}+{key.key_id.hex()}")


# ---- checkpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's state: its origin (name), size (entries) and root hash (C2SP tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        """The checkpoint's text, as signed."""
        return f"{self.origin}\n{self.size}\n{_b64(self.root)}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """A checkpoint body (extension lines after the root are allowed, and ignored)."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise BadSignature("a checkpoint has an origin, a size and a root hash, one per line")
        origin, size, root = lines[0], lines[1], lines[2]
        if not origin or not size.isdigit() or len(size) > _MAX_SIZE_DIGITS or (size[0] == "0" and size != "0"):
            raise BadSignature(f"not a checkpoint: origin {origin[:60]!r}, size {size[:30]!r}")
        raw = _unb64(root)
        if len(raw) != HASH_SIZE:
            raise BadSignature("a checkpoint's root hash has 32 bytes")
        return cls(origin, int(size), raw)


def sign_checkpoint(checkpoint: Checkpoint, seed: bytes | str) -> str:
    """The checkpoint as a signed note, signed with the key named after its origin."""
    return sign_note(checkpoint.body(), checkpoint.origin, seed)


def open_checkpoint(note: str, key: NoteKey) -> Checkpoint:
    """The checkpoint in ``note`` once ``key`` (whose name is the log's origin) signed it."""
    cp = Checkpoint.parse(open_note(note, key))
    if cp.origin != key.name:
        raise BadSignature(f"the checkpoint is of log {cp.origin[:60]!r}, not {key.name!r}")
    return cp
