"""Objects (inputs, results, checkpoints): content-addressed, stored under their owner's name.

An object is named ``<role>.<owner>.<sha256>`` (a result: ``result.<submitter>.<provider>.<sha256>``,
see ``events.subjects.object_name``) and stored in the objects stream as chunks on
``gf.obj.<name>.<i>`` and a manifest on ``gf.obj.<name>.m``, each subject holding one message for ever
(the stream refuses a second). Why not the JetStream Object Store: its subjects are random chunk ids
and base64 names, which NATS permissions cannot give to an owner, and reading it needs a consumer,
which would let a reader's deliveries go to any subject. Here:

- only the owner can write under its name (the server's permission template says so);
- reading is a direct get of one named subject, so a reader needs the digest, which it learns only
  from events it may read; and every read is checked against that digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from events.errors import AccessDenied, InvalidPayload, StoreError, StoreUnavailable
from events.store.connection import denied_subjects, raise_if_denied
from events.store.topology import OBJECT_CHUNK_BYTES, Topology
from events.subjects import object_name, object_owner
from events.types import ObjectRef

__all__ = ["MAX_OBJECT_BYTES", "BlobStore", "ObjectIntegrityError", "ObjectNotFound"]

#: The largest single object; bigger data is split by the application.
MAX_OBJECT_BYTES = 1 << 30
_TOO_MANY_PER_SUBJECT = (10077, 10027)


class ObjectNotFound(StoreError):
    """No object by that name (never stored, or stored by someone else under another name)."""


class ObjectIntegrityError(StoreError):
    """An object's bytes do not match the digest it is named by."""


@dataclass
class BlobStore:
    """Put and get objects as the identity ``role``/``owner`` on connection ``nc``."""

    nc: NATS
    role: str
    owner: str
    topology: Topology | None = None
    concurrency: int = 8

    def __post_init__(self) -> None:
        self._t = self.topology or Topology()
        self._js: Any = self.nc.jetstream()

    def _subject(self, name: str, part: str) -> str:
        return f"{self._t.object_prefix}.{name}.{part}"

    async def put(self, data: bytes, *, for_submitter: str | None = None) -> ObjectRef:
        """Store ``data`` (once: the same bytes again change nothing) and return its reference.

        ``for_submitter``: a result, readable by that submitter (and by nobody else who is not given
        its digest by the log).
        """
        if len(data) > MAX_OBJECT_BYTES:
            raise InvalidPayload(f"object is {len(data)} bytes, over {MAX_OBJECT_BYTES}", field="object")
        digest = hashlib.sha256(data).hexdigest()
        name = object_name(self.role, self.owner, digest, for_submitter=for_submitter)
        ref = ObjectRef(bucket=self._t.objects_stream, name=name, sha256=digest, size=len(data))
        if await self._manifest(name) is not None:
            return ref
        chunks = [data[i : i + OBJECT_CHUNK_BYTES] for i in range(0, len(data), OBJECT_CHUNK_BYTES)] or [b""]
        sem = asyncio.Semaphore(self.concurrency)

        async def one(i: int, chunk: bytes) -> None:
            async with sem:
                await self._publish(self._subject(name, str(i)), chunk)

        await asyncio.gather(*(one(i, c) for i, c in enumerate(chunks)))
        manifest = {"size": len(data), "chunks": len(chunks), "sha256": digest}
        await self._publish(self._subject(name, "m"), json.dumps(manifest, sort_keys=True).encode())
        return ref

    async def _publish(self, subject: str, data: bytes) -> None:
        for attempt in range(3):
            try:
                await self._js.publish(subject, data, timeout=10.0)
                return
            except nats.js.errors.APIError as e:
                if e.err_code in _TOO_MANY_PER_SUBJECT:
                    return  # already stored: an object's subjects are written once
                raise StoreError(f"the object store refused {subject}: {e.description or e}") from e
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                raise_if_denied(self.nc, subject, f"{self.role} {self.owner}")
                if attempt == 2:
                    raise StoreUnavailable(f"the object store did not confirm {subject}") from e
            except (nats.errors.Error, OSError) as e:
                raise StoreUnavailable(f"cannot store {subject}: {e!s}") from e

    async def _direct(self, subject: str) -> bytes | None:
        """The one message on ``subject``, or None if there is none."""
        api = f"$JS.API.DIRECT.GET.{self._t.objects_stream}.{subject}"
        try:
            msg = await self.nc.request(api, b"", timeout=10.0)
        except nats.errors.NoRespondersError as e:
            raise StoreUnavailable(f"the objects stream {self._t.objects_stream} does not answer") from e
        except nats.errors.TimeoutError as e:
            if api.lower() in denied_subjects(self.nc):
                raise AccessDenied(f"{self.role} {self.owner} may not read {subject}") from e
            raise StoreUnavailable(f"no answer reading {subject}") from e
        except (nats.errors.Error, OSError) as e:
            raise StoreUnavailable(f"cannot read {subject}: {e!s}") from e
        status = (msg.headers or {}).get("Status")
        if status is not None:
            if status == "404":
                return None
            raise StoreError(f"reading {subject}: {status} {(msg.headers or {}).get('Description', '')}".strip())
        return bytes(msg.data)

    async def _manifest(self, name: str) -> dict[str, Any] | None:
        raw = await self._direct(self._subject(name, "m"))
        if raw is None:
            return None
        try:
            m = json.loads(raw)
            return {"size": int(m["size"]), "chunks": int(m["chunks"]), "sha256": str(m["sha256"])}
        except (ValueError, KeyError, TypeError) as e:
            raise ObjectIntegrityError(f"object {name} has an unreadable manifest") from e

    async def get(self, ref: ObjectRef) -> bytes:
        """The object's bytes, checked against ``ref.sha256`` (``ObjectIntegrityError`` if not)."""
        if ref.bucket != self._t.objects_stream or object_owner(ref.name) is None:
            raise ObjectNotFound(f"{ref.bucket}/{ref.name} is not an object of this network's objects stream")
        m = await self._manifest(ref.name)
        if m is None:
            raise ObjectNotFound(f"object {ref.name} not found")
        if m["size"] > MAX_OBJECT_BYTES or m["chunks"] > MAX_OBJECT_BYTES // OBJECT_CHUNK_BYTES + 1:
            raise ObjectIntegrityError(f"object {ref.name} claims an impossible size")
        if m["size"] != ref.size or m["chunks"] != max(1, -(-ref.size // OBJECT_CHUNK_BYTES)):
            # Checked before any chunk is read: the reference (from the log) says how big it is.
            raise ObjectIntegrityError(f"object {ref.name} is not the size its reference says ({ref.size} bytes)")
        sem = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> bytes:
            async with sem:
                chunk = await self._direct(self._subject(ref.name, str(i)))
            if chunk is None:
                raise ObjectIntegrityError(f"object {ref.name} is missing chunk {i}")
            return chunk

        data = b"".join(await asyncio.gather(*(one(i) for i in range(m["chunks"]))))
        if hashlib.sha256(data).hexdigest() != ref.sha256 or len(data) != ref.size:
            raise ObjectIntegrityError(f"object {ref.name} does not match its sha256")
        return data
