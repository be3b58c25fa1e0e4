"""The notary: signs checkpoints of the log (size and Merkle root) and answers proofs about it.

It runs under its own identity (role ``notary``): it reads ``GF_EVENTS``, and it is the only one that
may write the checkpoint stream (``GF_CHECKPOINTS``, outside the log it covers). Its Ed25519 key is an
nkeys seed in ``<data dir>/notary/notary.nk`` (0600), made by the first ``gpufleet up``; the public
half, ``notary.vkey`` beside it and ``notary_key`` in ``network.json``, is the key readers trust.

- It follows the log, hashes every position into an RFC 9162 tree (``events.tlog``) and keeps every
  complete subtree's hash on disk (``tree.hashes``, 32 bytes each, about 2 per event): a restart
  reads nothing back but its state, and memory stays O(log n).
- It signs a checkpoint every ``every_events`` events and every ``every_s`` seconds while the log
  grew, so a quiet or small log has one too.
- It refuses to sign a log that does not extend what it signed: if the log it finds is shorter, has a
  gap, or holds other bytes where it already hashed some (or, with its local state lost, does not
  match the last checkpoint it published), it stops with one line.
- On ``gf.api.<role>.<name>.tlog`` it answers: the latest checkpoint, a consistency proof from an
  older size, an inclusion proof of a position, and receipts (every entry of a job, each with its
  bytes and inclusion proof). A submitter gets only its own jobs' entries, a provider only the
  usage and credits that name it, an auditor anything; answers are bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
import structlog
from nats.aio.msg import Msg

from events.aio import cancel_and_wait
from events.errors import GpufleetError, StoreUnavailable
from events.store.jetstream import JetStreamEventStore, RawMessage
from events.store.topology import Topology
from events.subjects import API_PREFIX, CHECKPOINT_SUBJECT, TLOG_OPERATION, job_owner, readable
from events.tlog import (
    BadSignature,
    Checkpoint,
    CompactTree,
    NoteKey,
    TlogError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    new_signing_seed,
    open_checkpoint,
    sign_checkpoint,
    stored_hash_count,
    stored_hash_index,
    stored_leaf_bytes,
    stored_subtree,
)
from events.types import is_valid_id

T = TypeVar("T")

__all__ = [
    "DEFAULT_EVERY_EVENTS",
    "DEFAULT_EVERY_S",
    "HashFile",
    "Notary",
    "NotaryError",
    "ensure_notary_key",
    "latest_checkpoint_note",
    "read_trusted_key",
]

DEFAULT_EVERY_EVENTS = 1000
DEFAULT_EVERY_S = 5.0
#: At most this many entries in one receipt answer (the rest: ask again ``after`` the last).
MAX_RECEIPT_ENTRIES = 256
#: Requests answered at once (the rest wait their turn): a flood of receipt requests, each reading up
#: to thousands of entries, must not turn into as many concurrent reads of the log.
MAX_CONCURRENT_ANSWERS = 16
#: Signed checkpoints kept in memory for pinned requests (at one every 5 s of growth: minutes).
KEPT_NOTES = 64
#: Under the server's 1 MiB message limit, with room for the checkpoint and the JSON.
MAX_ANSWER_BYTES = 700 * 1024
#: Entries only auditors get (as the event feed withholds them: ``projections.feed.WITHHELD``).
WITHHELD_TYPES = frozenset({"TaskResultReturned"})
#: The entries a provider may have receipts for in a job's stream: those that name it.
PROVIDER_TYPES = frozenset({"UsageMetered", "ProviderCredited"})
_HASH = 32
#: Hashes held in memory at most before they are written (about 6 MiB).
_MAX_PENDING = 1 << 16
_log = structlog.get_logger("gpufleet.notary")


class NotaryError(GpufleetError):
    """The notary cannot go on: the log does not extend what it signed, or its files are unusable."""


# ---- the key -------------------------------------------------------------------------------------


def _origin(nkey: str) -> str:
    return f"gpufleet/{nkey[:20]}"


def ensure_notary_key(directory: Path) -> tuple[bytes, NoteKey]:
    """The notary's seed and verifier key in ``directory``, made on first use (seed 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "notary.nk"
    if not path.exists():
        seed = new_signing_seed()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
    try:
        seed = path.read_bytes().strip()
        probe = NoteKey.of_seed("probe", seed)
    except (OSError, BadSignature) as e:
        raise NotaryError(f"cannot read the notary key {path}: {e}") from e
    key = NoteKey.of_seed(_origin(probe.nkey), seed)
    vkey = directory / "notary.vkey"
    if not vkey.exists() or vkey.read_text().strip() != key.vkey:
        vkey.write_text(key.vkey + "\n")
    return seed, key


def read_trusted_key(text_or_path: str | Path) -> NoteKey:
    """A verifier key given as text (``<name>+<id>+<key>``) or as a file holding it."""
    text = str(text_or_path)
    if "+" not in text:
        try:
            text = Path(text).read_text().strip()
        except OSError as e:
            raise BadSignature(f"not a notary key, nor a readable file: {text[:80]!r}") from e
    return NoteKey.parse(text)


# ---- the hash file -------------------------------------------------------------------------------


class HashFile:
    """Every stored hash of the tree, in ``stored_hash_index`` order, appended to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.count = os.fstat(self._fd).st_size // _HASH
        self._pending: list[bytes] = []

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` hashes (what a crash may have left past the saved state goes)."""
        if count > self.count:
            raise NotaryError(f"{self.path} holds {self.count} hashes, the notary's state needs {count}")
        self._pending.clear()
        os.ftruncate(self._fd, count * _HASH)
        self.count = count

    @property
    def pending(self) -> int:
        """Hashes appended and not yet written."""
        return len(self._pending)

    def append(self, hashes: list[bytes]) -> None:
        """Add hashes (kept in memory until :meth:`flush`)."""
        self._pending.extend(hashes)

    def flush(self) -> None:
        """Write and fsync what was appended."""
        if self._pending:
            data = b"".join(self._pending)
            os.pwrite(self._fd, data, self.count * _HASH)
            self.count += len(self._pending)
            self._pending.clear()
            os.fsync(self._fd)

    def read(self, indexes: Any) -> list[bytes]:
        """The hashes at these stored indexes (written or still pending)."""
        out = []
        for i in indexes:
            if i >= self.count:
                out.append(self._pending[i - self.count])
                continue
            h = os.pread(self._fd, _HASH, i * _HASH)
            if len(h) != _HASH:
                raise NotaryError(f"{self.path} is shorter than its state says")
            out.append(h)
        return out

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        os.close(self._fd)


@dataclass
class _State:
    tree_size: int = 0
    signed_size: int = 0
    signed_root: str = ""
    note: str = ""
    log_id: str = ""


# ---- the notary ----------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Notary:
    """Follows the log of ``store`` and signs it; keeps its files in ``directory``. ``start``, ``stop``."""

    def __init__(
        self,
        store: JetStreamEventStore,
        directory: Path,
        *,
        every_events: int = DEFAULT_EVERY_EVENTS,
        every_s: float = DEFAULT_EVERY_S,
        topology: Topology | None = None,
        poll_s: float = 0.1,
    ) -> None:
        self.store = store
        self.directory = directory
        self.every_events = max(1, every_events)
        self.every_s = every_s
        self.poll_s = poll_s
        self.topology = topology or Topology()
        self.seed, self.key = ensure_notary_key(directory)
        self.origin = self.key.name
        self._hashes = HashFile(directory / "tree.hashes")
        self._state_path = directory / "state.json"
        self.state = self._load_state()
        self._hashes.truncate(stored_hash_count(self.state.tree_size))
        self.tree = CompactTree.from_stored(self.state.tree_size, self._hashes.read)
        self._prefix_len = len(store.settings.prefix) + 1
        self._js = store.nc.jetstream()
        self._task: asyncio.Task[None] | None = None
        #: Set by ``stop``: the follow loop ends at its next turn even if a cancellation was lost.
        self._stopping = False
        self._sub: Any = None
        self._answers: set[asyncio.Task[None]] = set()
        self._notes: dict[int, str] = {}
        self._answering = asyncio.Semaphore(MAX_CONCURRENT_ANSWERS)
        #: Why the notary stopped (one line), once it has.
        self.failed: str | None = None
        self._spot = 0
        self._log = _log.bind(origin=self.origin)

    # ---- state -----------------------------------------------------------------------------------

    def _load_state(self) -> _State:
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return _State()
        except (OSError, ValueError) as e:
            raise NotaryError(f"cannot read the notary's state {self._state_path}: {e}") from e
        return _State(**{k: raw[k] for k in asdict(_State()) if k in raw})

    def _save_state(self) -> None:
        self._hashes.flush()  # the state never names hashes that are not on disk
        self.state.tree_size = self.tree.size
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state)))
        os.replace(tmp, self._state_path)

    @property
    def latest(self) -> str | None:
        """The last checkpoint signed, as a signed note."""
        return self.state.note or None

    @property
    def signed_size(self) -> int:
        """The size of the last signed checkpoint."""
        return self.state.signed_size

    # ---- running ---------------------------------------------------------------------------------

    async def start(self) -> Notary:
        """Check the log against what was signed, answer requests, and follow the log (``NotaryError``,
        one line, if the log does not extend what was signed)."""
        try:
            await self._check_log()
        except BaseException:
            self._hashes.close()
            raise
        self._sub = await self.store.nc.subscribe(
            f"{API_PREFIX}.*.*.{TLOG_OPERATION}", queue="gf-notary", cb=self._on_request
        )
        self._task = asyncio.create_task(self._run(), name="notary")
        return self

    async def stop(self) -> None:
        """Stop following and answering; what was hashed is saved."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        self._stopping = True
        # Cancelled again until done (``events.aio``: a cancellation can be lost under a JetStream read).
        await cancel_and_wait([self._task, *self._answers], every_s=1.0)
        self._task = None
        await self._sign_last()
        self._hashes.flush()
        self._save_state()
        self._hashes.close()

    async def _sign_last(self, timeout_s: float = 5.0) -> None:
        """On a clean stop: sign the log as it ends, so that a network that lived less than ``every_s``
        (or whose tail grew since the last checkpoint) leaves a signed log behind. Never after a
        failure (a rewritten or lost log is not signed), never waiting long for an unreachable server."""
        if self.failed is not None or not self.store.nc.is_connected:
            return
        try:
            async with asyncio.timeout(timeout_s):
                head = await self.store.head()
                if head < self.tree.size:
                    return  # a shorter log: never signed (the next start says so, in one line)
                if head > self.tree.size:
                    await self._ingest(head, sign=False)
                if self.tree.size > self.signed_size:
                    await self._sign()
        except (TimeoutError, GpufleetError, nats.errors.Error, OSError) as e:
            self._log.warning("notary.last_checkpoint_unsigned", size=self.tree.size, error=str(e) or type(e).__name__)

    async def wait(self) -> None:
        """Until the notary stops: ``NotaryError`` if it stopped because the log was rewritten or lost."""
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        try:
            await self._follow()
        except NotaryError as e:
            self.failed = str(e)
            self._log.error("notary.stopped", reason=str(e))
            raise

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        last_sign = last_check = loop.time()
        while not self._stopping:
            head = await self._head()
            if head < self.tree.size:
                raise NotaryError(
                    f"history lost: the log has {head} events, the notary hashed {self.tree.size} "
                    f"(and signed {self.signed_size}): it signs nothing more"
                )
            if head > self.tree.size:
                await self._ingest(head)
            now = loop.time()
            # Within every_s of any growth, whatever the count: a small or quiet log is signed too.
            if self.tree.size > self.signed_size and now - last_sign >= self.every_s:
                await self._sign()
                last_sign = now
            if now - last_check >= self.every_s:
                last_check = now
                await self._spot_check()
            await asyncio.sleep(self.poll_s)

    async def _head(self) -> int:
        return await _readable(self.store.head)

    async def _ingest(self, head: int, *, sign: bool = True) -> None:
        """Hash positions after the tree's size up to ``head``, signing every ``every_events``."""
        tree, hashes, cut = self.tree, self._hashes, self._prefix_len
        async for m in self.store.read_raw(after=tree.size, end=head):
            if m.sequence != tree.size + 1:
                raise NotaryError(
                    f"history lost: position {tree.size + 1} is missing from the log (next is {m.sequence})"
                )
            hashes.append(tree.append(leaf_hash(stored_leaf_bytes(m.sequence, m.subject[cut:], m.data, m.headers))))
            if hashes.pending >= _MAX_PENDING:
                hashes.flush()  # memory stays bounded on a long catch-up (the state still names the last save)
            if sign and tree.size - self.signed_size >= self.every_events:
                await self._sign()

    async def _sign(self) -> None:
        """Make what was hashed durable, then sign it and publish the checkpoint."""
        self._hashes.flush()
        cp = Checkpoint(self.origin, self.tree.size, self.tree.root())
        note = sign_checkpoint(cp, self.seed)
        headers = {"Nats-Msg-Id": f"cp-{cp.size}-{cp.root.hex()[:16]}"}
        for attempt in range(20):
            try:
                await self._js.publish(CHECKPOINT_SUBJECT, note.encode(), headers=headers, timeout=5.0)
                break
            except (nats.errors.Error, OSError) as e:
                if attempt == 19:
                    raise NotaryError(f"cannot publish checkpoints to {self.topology.checkpoints_stream}: {e}") from e
                await asyncio.sleep(0.5)
        self.state.signed_size, self.state.signed_root, self.state.note = cp.size, cp.root.hex(), note
        self._keep_note(cp.size, note)
        self._save_state()
        self._log.debug("notary.signed", size=cp.size)

    # ---- checking the log against what was signed --------------------------------------------

    async def _check_log(self) -> None:
        """Before signing anything: the log must still hold what the tree hashed (all of it if the
        log was re-created since, else its last entry), and the tree must extend the last checkpoint
        this key published (when the notary's own state was lost)."""
        log_id = await self._log_id()
        head = await self._head()
        if head < self.tree.size:
            raise NotaryError(
                f"history lost: the log has {head} events, the notary signed {self.signed_size} "
                f"and hashed {self.tree.size}: it signs nothing more"
            )
        if self.tree.size and log_id != self.state.log_id:
            await self._compare(1, self.tree.size)
        elif self.tree.size:
            await self._compare(self.tree.size, self.tree.size)
        self.state.log_id = log_id
        published = await latest_checkpoint_note(self.store, self.topology)
        if published is not None:
            try:
                cp = open_checkpoint(published, self.key)
            except TlogError:
                cp = None  # not ours (another notary's key): nothing to extend
            if cp is not None:
                await self._extends_published(cp, published, head)
        self._save_state()

    async def _extends_published(self, cp: Checkpoint, note: str, head: int) -> None:
        """The tree must extend the last checkpoint this key published (hashing up to it if the
        notary's state is older: a lost or restored notary directory)."""
        if cp.size > self.tree.size:
            if cp.size > head:
                raise NotaryError(f"history lost: checkpoint {cp.size} was signed, the log now has {head} events")
            await self._ingest(cp.size, sign=False)
        got = stored_subtree(0, cp.size, self._hashes.read) if cp.size else self.tree.root()
        if cp.size and got != cp.root:
            raise NotaryError(
                f"history rewritten: the log's first {cp.size} events are not the ones checkpoint {cp.size} "
                "signed: it signs nothing more"
            )
        if cp.size >= self.signed_size:
            self.state.signed_size, self.state.signed_root, self.state.note = cp.size, cp.root.hex(), note
            self._keep_note(cp.size, note)

    async def _compare(self, first: int, last: int) -> None:
        """Raise ``NotaryError`` at the first position in [first, last] whose entry is not the one hashed."""
        cut = self._prefix_len
        position = first - 1
        batch = min(1000, last - first + 1)
        async for m in self.store.read_raw(after=first - 1, end=last, batch=batch, window=1 if batch == 1 else 4):
            position += 1
            stored = self._hashes.read([stored_hash_index(0, position - 1)])[0]
            got = leaf_hash(stored_leaf_bytes(m.sequence, m.subject[cut:], m.data, m.headers))
            if m.sequence != position or got != stored:
                raise NotaryError(
                    f"history rewritten: position {position} is not the entry the notary hashed"
                    f" (signed up to {self.signed_size}): it signs nothing more"
                )
        if position < last:
            raise NotaryError(f"history lost: the log ends at {position}, the notary hashed {last}")

    async def _spot_check(self) -> None:
        """Now and then: the log is still the same stream, and one hashed entry (in turn) is unchanged."""
        if not self.tree.size:
            return
        log_id = await self._log_id()
        if log_id != self.state.log_id:
            self._log.warning("notary.log_recreated", was=self.state.log_id, now=log_id)
            await self._compare(1, self.tree.size)
            self.state.log_id = log_id
            self._save_state()
            return
        self._spot = self._spot % self.tree.size + 1
        await self._compare(self._spot, self._spot)

    async def _log_id(self) -> str:
        return await _readable(self.store.log_id)

    # ---- answering -----------------------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        async with self._answering:
            try:
                body = await self.serve(msg.subject, msg.data)
            except _Refused as e:
                body = {"error": str(e), "field": e.field}
            except (GpufleetError, nats.errors.Error, OSError) as e:
                body = {"error": f"the notary cannot answer now: {e}", "field": None}
        with contextlib.suppress(nats.errors.Error):
            await self.store.nc.publish(msg.reply, json.dumps(body, separators=(",", ":")).encode())

    def _keep_note(self, size: int, note: str) -> None:
        """Keep the last ``KEPT_NOTES`` signed checkpoints, so that a reader paging through a receipt can
        ask every page against the same one while the notary signs newer ones."""
        self._notes[size] = note
        while len(self._notes) > KEPT_NOTES:
            self._notes.pop(next(iter(self._notes)))

    def _subtree(self, lo: int, hi: int) -> bytes:
        return stored_subtree(lo, hi, self._hashes.read)

    async def serve(self, subject: str, data: bytes) -> dict[str, Any]:
        """The answer to one request from the identity the subject names."""
        parts = subject.split(".")
        if len(parts) != 5:
            raise _Refused("not a notary request subject", "subject")
        role, name = parts[2], parts[3]
        if self.failed:
            raise _Refused(f"the notary stopped: {self.failed}")
        if len(data) > 4096:
            raise _Refused("the request is too large", "body")
        try:
            req = json.loads(data or b"{}")
        except ValueError as e:
            raise _Refused("the request is not JSON", "body") from e
        if not isinstance(req, dict):
            raise _Refused("the request must be a JSON object", "body")
        op = req.get("op", "checkpoint")
        size = self.signed_size
        out: dict[str, Any] = {"checkpoint": self.latest, "size": size}
        if op in ("receipt", "inclusion") and "size" in req:
            # Pinned to a checkpoint the reader already has (the first page of a receipt named it).
            pinned = _int(req, "size", 1, size)
            kept = self._notes.get(pinned) if pinned != size else self.latest
            if kept is None:
                raise _Refused(f"the checkpoint of size {pinned} is no longer kept: ask again", "size")
            size, out = pinned, {"checkpoint": kept, "size": pinned}
        if op == "checkpoint":
            return out
        if op == "consistency":
            new = _int(req, "new", 0, size) if "new" in req else size
            old = _int(req, "old", 0, new)
            out["old"], out["new"] = old, new
            out["proof"] = _b64s(consistency_proof(old, new, self._subtree))
            return out
        if op == "inclusion":
            position = _int(req, "position", 1, size)
            raw = await self._raw_at(position)
            if not self._may_see(role, name, raw):
                raise _Refused(f"{role} {name} may not have a receipt for position {position}", "position")
            out["entries"] = [self._entry(raw, size)]
            return out
        if op == "receipt":
            return await self._receipt(role, name, req, out, size)
        raise _Refused("op is checkpoint, consistency, inclusion or receipt", "op")

    async def _receipt(
        self, role: str, name: str, req: dict[str, Any], out: dict[str, Any], size: int
    ) -> dict[str, Any]:
        job = req.get("job")
        if not isinstance(job, str) or len(job) > 140 or not all(is_valid_id(t) for t in job.split(".")):
            raise _Refused("a job id is required", "job")
        if role == "submitter" and job_owner(job) != name:
            raise _Refused(f"job {job!r} is not {name}'s", "job")
        if role not in ("submitter", "provider", "auditor"):
            raise _Refused(f"a {role} gets no receipts", "job")
        after = _int(req, "after", 0, size)
        prefix = self.store.settings.prefix
        found: list[RawMessage] = []
        # Each subject is read up to a bound; where one was cut short, the others are taken only up to
        # the same position (the next page starts there), so that no entry falls between two pages.
        cut, limit = size, 4 * MAX_RECEIPT_ENTRIES
        for subject in (f"{prefix}.job.{job}", f"{prefix}.task.{job}.*"):
            read = 0
            async for m in self.store.read_raw(subject=subject, after=after, end=size, batch=MAX_RECEIPT_ENTRIES):
                found.append(m)
                read += 1
                if read >= limit:
                    cut = min(cut, m.sequence)
                    break
        found = sorted((m for m in found if m.sequence <= cut), key=lambda m: m.sequence)
        entries: list[dict[str, Any]] = []
        used = 0
        out["more"], out["next"] = cut < size, cut
        for m in found:
            if not self._may_see(role, name, m):
                continue
            entry = self._entry(m, size)
            used += sum(len(str(v)) for v in entry.values()) + 64
            if len(entries) >= MAX_RECEIPT_ENTRIES or used > MAX_ANSWER_BYTES:
                out["more"], out["next"] = True, entries[-1]["position"] if entries else m.sequence - 1
                break
            entries.append(entry)
        out["entries"] = entries
        out["pending"] = await self._head() > size
        return out

    def _may_see(self, role: str, name: str, m: RawMessage) -> bool:
        stream = m.subject[self._prefix_len :]
        kind = m.headers.get("ce-type", "")
        if role == "auditor":
            return True
        if kind in WITHHELD_TYPES:
            return False
        if role == "provider" and kind in PROVIDER_TYPES:
            try:
                return bool(json.loads(m.data).get("provider_id") == name)
            except (ValueError, AttributeError):
                return False
        return readable(role, name, stream)

    async def _raw_at(self, position: int) -> RawMessage:
        async for m in self.store.read_raw(after=position - 1, end=position, batch=1, window=1):
            if m.sequence == position:
                return m
        raise _Refused(f"position {position} is not in the log", "position")

    def _entry(self, m: RawMessage, size: int) -> dict[str, Any]:
        data = stored_leaf_bytes(m.sequence, m.subject[self._prefix_len :], m.data, m.headers)
        stored = self._hashes.read([stored_hash_index(0, m.sequence - 1)])[0]
        if leaf_hash(data) != stored:
            self.failed = f"history rewritten: position {m.sequence} is not the entry the notary hashed"
            self._log.error("notary.stopped", reason=self.failed)
            raise _Refused(f"the notary stopped: {self.failed}")
        return {
            "position": m.sequence,
            "leaf": base64.b64encode(data).decode(),
            "proof": _b64s(inclusion_proof(m.sequence - 1, size, self._subtree)),
        }


def _int(req: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = req.get(key, lo)
    if type(value) is not int or not lo <= value <= hi:
        raise _Refused(f"must be an integer from {lo} to {hi} (the latest checkpoint's size)", key)
    return value


def _b64s(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


async def latest_checkpoint_note(store: JetStreamEventStore, topology: Topology | None = None) -> str | None:
    """The last checkpoint in the checkpoint stream (unverified), with a direct get; None if none."""
    t = topology or Topology()
    req = json.dumps({"last_by_subj": CHECKPOINT_SUBJECT}).encode()
    try:
        msg = await store.nc.request(f"$JS.API.DIRECT.GET.{t.checkpoints_stream}", req, timeout=5.0)
    except nats.errors.NoRespondersError:
        return None  # no checkpoint stream (yet)
    except (nats.errors.Error, OSError) as e:
        raise StoreUnavailable(f"cannot read {t.checkpoints_stream}: {e}") from e
    if msg.headers and msg.headers.get("Status") and not msg.data:
        return None
    return msg.data.decode("utf-8", "replace")


async def _readable(read: Callable[[], Awaitable[T]]) -> T:
    """``read()`` of the log, tried for up to 30 s (a server restarting): then a ``NotaryError``."""
    for attempt in range(60):
        try:
            return await read()
        except (GpufleetError, nats.errors.Error, OSError) as e:
            if attempt == 59:
                raise NotaryError(f"the log is not readable: {e}") from e
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")
