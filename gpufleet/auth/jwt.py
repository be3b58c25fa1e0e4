"""NATS JWTs the ADR-14 way: nkeys, claims, ``jti`` from the claims' digest, Ed25519 over header.claims.

Only what gpufleet needs to run its own operator: minting operator, account and user JWTs, writing
standard ``.creds`` files, and reading claims back. Keys come from the official ``nkeys`` package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any, Literal

import nkeys

__all__ = ["KeyKind", "claims_of", "creds_text", "encode", "key_from_seed", "new_key", "public_key"]

KeyKind = Literal["operator", "account", "user"]
_PREFIX: dict[KeyKind, int] = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def new_key(kind: KeyKind) -> nkeys.KeyPair:
    """A fresh nkey pair of ``kind`` from 32 bytes of OS randomness."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), _PREFIX[kind]))


def key_from_seed(seed: str | bytes) -> nkeys.KeyPair:
    """The key pair of an encoded seed (``S...``)."""
    return nkeys.from_seed(seed if isinstance(seed, bytes) else seed.encode())


def public_key(kp: nkeys.KeyPair) -> str:
    """The encoded public key (``O...``, ``A...``, ``U...``)."""
    key: bytes = kp.public_key
    return key.decode()


def encode(claims: dict[str, Any], signer: nkeys.KeyPair, *, iat: int | None = None) -> str:
    """Sign ``claims`` (``sub``, ``name``, ``nats``...) with ``signer``: a JWT as nats-server reads it.

    ``iss`` is the signer, ``iat`` now (or the given time), and ``jti`` the base32 sha256 of the claims
    with an empty ``jti``.
    """
    body = dict(claims)
    body["iat"] = int(time.time()) if iat is None else iat
    body["iss"] = public_key(signer)
    body["jti"] = ""
    body["jti"] = base64.b32encode(hashlib.sha256(_compact(body)).digest()).decode().rstrip("=")
    signing_input = f"{_b64(_compact(_HEADER))}.{_b64(_compact(body))}"
    signature: bytes = signer.sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


def claims_of(jwt: str) -> dict[str, Any]:
    """The claims of a JWT, not verified (the server verifies; this is for reading our own)."""
    body = jwt.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return data


def creds_text(jwt: str, seed: bytes | str) -> str:
    """A standard NATS ``.creds`` file: the user JWT and the user's nkey seed."""
    s = seed.decode() if isinstance(seed, bytes) else seed
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{s}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
