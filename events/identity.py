"""Who a connection is: the roles of a network, and the identity a NATS credentials file carries.

An identity is its credential, never a field in a body. The server enforces it: each user JWT is
signed by a role's scoped signing key, whose permission template binds the user's subjects to its
name (``gf.in.provider.{{name()}}.>``). This module holds what both sides of that need: the role
names, how a role is written into a JWT (a tag), and how a client reads its own identity back from
a ``.creds`` file to know its subjects and its inbox. Minting lives in ``gpufleet.auth``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from events.errors import GpufleetError
from events.types import is_valid_id

__all__ = [
    "EDGE_ROLES",
    "HUB_ROLES",
    "ROLES",
    "ROLE_TAG",
    "CredentialsError",
    "Identity",
    "Role",
    "inbox_prefix",
    "read_credentials",
]

Role = Literal["admin", "orchestrator", "provider", "submitter", "auditor", "notary"]
ROLES: tuple[Role, ...] = get_args(Role)
#: Trusted roles: they live in the account that holds the streams.
HUB_ROLES: frozenset[str] = frozenset({"admin", "orchestrator", "notary"})
#: Strangers: they live in an account with no JetStream of its own and reach the streams only
#: through the imports the operator signed, so nothing the server does on their behalf lands there.
EDGE_ROLES: frozenset[str] = frozenset({"provider", "submitter", "auditor"})
#: The JWT tag that names a user's role: ``gf-role:provider``.
ROLE_TAG = "gf-role"

_JWT_RE = re.compile(r"-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------")


class CredentialsError(GpufleetError):
    """A credentials file is missing, unreadable, or not a gpufleet identity."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A user as its JWT names it: ``role`` and ``name`` (its provider id or submitter name)."""

    role: Role
    name: str
    public_key: str = ""

    def __str__(self) -> str:
        return f"{self.role} {self.name}"


def inbox_prefix(role: str, name: str) -> str:
    """The reply subjects a user may subscribe to: nobody else's replies reach it, nor its theirs."""
    return f"_INBOX.{role}.{name}"


def _claims(jwt: str) -> dict[str, object]:
    try:
        body = jwt.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (IndexError, ValueError) as e:
        raise CredentialsError("the credentials hold no readable user JWT") from e
    if not isinstance(data, dict):
        raise CredentialsError("the credentials hold no readable user JWT")
    return data


def identity_of_jwt(jwt: str) -> Identity:
    """The identity a user JWT claims (what the server will enforce; it is not verified here)."""
    claims = _claims(jwt)
    nats_claims = claims.get("nats")
    tags = nats_claims.get("tags", []) if isinstance(nats_claims, dict) else []
    role = next(
        (t.split(":", 1)[1] for t in tags if isinstance(t, str) and t.startswith(f"{ROLE_TAG}:")),
        None,
    )
    name = claims.get("name")
    if role not in ROLES or not isinstance(name, str) or not is_valid_id(name):
        raise CredentialsError("the credentials are not a gpufleet identity (no role tag, or a bad name)")
    return Identity(role=role, name=name, public_key=str(claims.get("sub", "")))


def read_credentials(path: str | Path) -> Identity:
    """Read a standard NATS ``.creds`` file and return the identity it carries."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as e:
        raise CredentialsError(f"no credentials file at {p}") from e
    except OSError as e:
        raise CredentialsError(f"cannot read credentials {p}: {e.strerror}") from e
    m = _JWT_RE.search(text)
    if m is None:
        raise CredentialsError(f"{p} is not a NATS credentials file (no user JWT block)")
    return identity_of_jwt(m.group(1))
