"""Deterministic ids: the same cause always yields the same command id, so retries are recognised."""

from __future__ import annotations

import base64
import hashlib
import secrets

__all__ = ["derive_id", "event_id", "new_id", "split_event_id"]


def derive_id(prefix: str, *parts: object) -> str:
    """A short id determined by ``parts``: 20 base32 characters of a BLAKE2b digest, after ``prefix``."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).digest()
    return prefix + base64.b32encode(h).decode().rstrip("=").lower()


def new_id(prefix: str) -> str:
    """A fresh random id (for decisions that are never replayed, such as a lease)."""
    return prefix + secrets.token_hex(8)


def event_id(command_id: str, index: int) -> str:
    """The id of the ``index``-th event that command ``command_id`` caused."""
    return f"{command_id}.{index}"


def split_event_id(eid: str) -> str:
    """The command id inside an event id made by :func:`event_id`."""
    return eid.rsplit(".", 1)[0]
