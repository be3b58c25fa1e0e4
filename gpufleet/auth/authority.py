"""A network's authority: its operator, accounts and signing keys; issuing and revoking credentials.

Everything lives in one directory (``<data dir>/auth``), created on first use with 0700/0600 modes:

- ``operator.nk`` and the account and signing-key seeds: the keys that make a network;
- ``accounts/<pubkey>.jwt``: the latest signed account JWTs (what the server is given);
- ``issued.json``: every credential issued (role, name, public key, when, revoked when), never a seed;
- ``creds/<role>-<name>.creds``: the network's own identities (its orchestrator, admin, local
  provider...), which ``gpufleet up`` uses.

Users are signed by their role's scoped signing key: issuing a credential changes no account JWT, so
it needs no server. Revoking one re-signs the account with the user's key in ``revocations`` and, when
the network runs, pushes the new JWT to the server through the system account, which disconnects the
user at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from events.errors import GpufleetError
from events.identity import ROLE_TAG, ROLES, Identity, Role
from events.types import is_valid_id
from gpufleet.auth.jwt import claims_of, creds_text, encode, key_from_seed, new_key, public_key
from gpufleet.auth.roles import EDGE_ACCOUNT, HUB_ACCOUNT, ROLE_RULES, SYS_ACCOUNT, edge_imports, hub_exports

__all__ = ["AccountLimits", "AuthError", "Authority", "IssuedCredential"]

_GIB = 1 << 30
#: Roles that may hold bearer credentials (a JWT that authenticates alone, for clients that cannot sign
#: a nonce, such as a shell script over a raw socket).
BEARER_ROLES: tuple[Role, ...] = ("submitter",)
#: Signing keys of roles added after networks were made: an older data directory gets them on open.
_ADDED_ROLE_KEYS = frozenset({"signing-notary"})


class AuthError(GpufleetError):
    """Issuing, revoking or loading credentials failed; the message says why."""


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """What the hub account may hold, so that nobody can exhaust the server's disk or memory."""

    disk_bytes: int = 20 * _GIB
    memory_bytes: int = 1 * _GIB
    streams: int = 32
    consumers: int = 20_000
    #: Connections the edge account (every stranger together) may hold at once.
    edge_connections: int = 20_000


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """One credential as the registry remembers it (the seed is never kept for outsiders)."""

    role: Role
    name: str
    public_key: str
    issued_at: int
    revoked_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "public_key": self.public_key,
            "issued_at": self.issued_at,
            "revoked_at": self.revoked_at,
        }


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class Authority:
    """The keys of one network. Use :meth:`open` (it creates them on first use)."""

    def __init__(self, directory: Path, keys: dict[str, nkeys.KeyPair], limits: AccountLimits) -> None:
        self.directory = directory
        self._keys = keys
        self.limits = limits
        self._registry: list[IssuedCredential] = self._load_registry()
        self._last_iat: dict[str, int] = {}

    # ---- keys ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, limits: AccountLimits | None = None, create: bool = True) -> Authority:
        """Load the network's keys from ``directory``, creating them (0600 files) if there are none."""
        directory = Path(directory)
        names = ["operator", *(f"account-{a}" for a in (SYS_ACCOUNT, HUB_ACCOUNT, EDGE_ACCOUNT))]
        names += [f"signing-{r}" for r in ROLES] + [f"signing-{r}-bearer" for r in BEARER_ROLES]
        keys: dict[str, nkeys.KeyPair] = {}
        missing = [n for n in names if not (directory / f"{n}.nk").exists()]
        new_roles = all(n in _ADDED_ROLE_KEYS for n in missing)
        if missing and not create and not new_roles:
            raise AuthError(f"no network keys in {directory}: run `gpufleet up` there first")
        # A role added since the keys were made (the notary, say) gets its signing key now.
        if missing and len(missing) != len(names) and not new_roles:
            raise AuthError(f"the network keys in {directory} are incomplete (missing {missing[0]}.nk)")
        if missing:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)
        for n in names:
            path = directory / f"{n}.nk"
            if n in missing:
                kp = new_key("operator" if n == "operator" else "account")
                _write_private(path, kp.seed.decode() + "\n")
            try:
                keys[n] = key_from_seed(path.read_text().strip())
            except (OSError, nkeys.ErrInvalidSeed) as e:
                raise AuthError(f"cannot read the key {path}: {e}") from e
        return cls(directory, keys, limits or AccountLimits())

    def account_key(self, account: str) -> str:
        """The public key of one of the network's accounts."""
        return public_key(self._keys[f"account-{account}"])

    @property
    def operator_key(self) -> str:
        """The operator's public key: what every server of this network trusts."""
        return public_key(self._keys["operator"])

    def _iat(self, account: str) -> int:
        # Each re-signed account JWT must be newer than the last, or the server keeps the old one.
        now = max(int(time.time()), self._last_iat.get(account, 0) + 1)
        self._last_iat[account] = now
        return now

    # ---- JWTs ------------------------------------------------------------------------------------

    def operator_jwt(self) -> str:
        """The operator JWT, naming the system account."""
        op = self._keys["operator"]
        claims = {
            "name": "gpufleet",
            "sub": public_key(op),
            "nats": {"type": "operator", "version": 2, "system_account": self.account_key(SYS_ACCOUNT)},
        }
        return encode(claims, op, iat=0)

    def account_jwt(self, account: str) -> str:
        """The account's JWT as it is now: limits, signing keys, exports or imports, revocations."""
        acc = self._keys[f"account-{account}"]
        nats: dict[str, Any] = {"type": "account", "version": 2}
        base = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "leaf": 0}
        if account == HUB_ACCOUNT:
            lim = self.limits
            nats["limits"] = {
                **base,
                "conn": -1,
                "mem_storage": lim.memory_bytes,
                "disk_storage": lim.disk_bytes,
                "streams": lim.streams,
                "consumer": lim.consumers,
                "max_ack_pending": -1,
                "mem_max_stream_bytes": -1,
                "disk_max_stream_bytes": -1,
                "max_bytes_required": False,
            }
            nats["exports"] = hub_exports()
        elif account == EDGE_ACCOUNT:
            nats["limits"] = {**base, "conn": self.limits.edge_connections, "exports": 0}
            nats["imports"] = edge_imports(self.account_key(HUB_ACCOUNT))
        else:
            nats["limits"] = {**base, "conn": -1}
        keys = [
            {
                "kind": "user_scope",
                "key": public_key(self._keys[f"signing-{r.role}"]),
                "role": r.role,
                "template": r.template(),
                "description": r.description,
            }
            for r in ROLE_RULES.values()
            if r.account == account
        ]
        # The same rules for users that authenticate with the JWT alone (a scoped user may not carry
        # ``bearer_token`` itself: it comes from the key's template).
        keys += [
            {
                "kind": "user_scope",
                "key": public_key(self._keys[f"signing-{role}-bearer"]),
                "role": f"{role}-bearer",
                "template": {**ROLE_RULES[role].template(), "bearer_token": True},
                "description": ROLE_RULES[role].description + " (bearer JWT)",
            }
            for role in BEARER_ROLES
            if ROLE_RULES[role].account == account
        ]
        if keys:
            nats["signing_keys"] = keys
        revoked = {
            c.public_key: c.revoked_at
            for c in self.issued()
            if c.revoked_at is not None and ROLE_RULES[c.role].account == account
        }
        if revoked:
            nats["revocations"] = dict(sorted(revoked.items()))
        claims = {"name": account, "sub": public_key(acc), "nats": nats}
        return encode(claims, self._keys["operator"], iat=self._iat(account))

    def account_jwts(self) -> dict[str, str]:
        """Every account's current JWT, by public key."""
        return {self.account_key(a): self.account_jwt(a) for a in (SYS_ACCOUNT, HUB_ACCOUNT, EDGE_ACCOUNT)}

    def server_config(self, resolver_dir: Path) -> str:
        """The nats-server configuration that trusts this operator (decentralized JWT auth)."""
        jwts = self.account_jwts()
        preload = "\n".join(f"  {k}: {v}" for k, v in jwts.items())
        return (
            f"operator: {self.operator_jwt()}\n"
            f"system_account: {self.account_key(SYS_ACCOUNT)}\n"
            f'resolver: {{ type: full, dir: "{resolver_dir}", allow_delete: false, interval: "2m" }}\n'
            f"resolver_preload: {{\n{preload}\n}}\n"
        )

    # ---- users -----------------------------------------------------------------------------------

    def _user_jwt(self, role: Role, name: str, user: nkeys.KeyPair, *, bearer: bool, expires_s: float | None) -> str:
        rules = ROLE_RULES[role]
        nats: dict[str, Any] = {
            "type": "user",
            "version": 2,
            "issuer_account": self.account_key(rules.account),
            "tags": [f"{ROLE_TAG}:{role}"],
        }
        claims: dict[str, Any] = {"name": name, "sub": public_key(user), "nats": nats}
        if expires_s is not None:
            claims["exp"] = int(time.time() + expires_s)
        return encode(claims, self._keys[f"signing-{role}-bearer" if bearer else f"signing-{role}"])

    def issue(
        self, role: str, name: str, *, bearer: bool = False, expires_s: float | None = None, rotate: bool = False
    ) -> str:
        """A new credential for ``role``/``name``: the text of a standard ``.creds`` file.

        ``bearer``: the JWT alone authenticates (no nonce signing), for clients that cannot sign, such
        as a shell script; treat it like a password. ``rotate``: revoke earlier credentials of this
        identity (on the running server too once :meth:`push` runs).
        """
        if role not in ROLES:
            raise AuthError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not is_valid_id(name):
            raise AuthError(f"name: {name!r} must be one token of letters, digits, '-' or '_' (at most 64)")
        r: Role = role
        if bearer and r not in BEARER_ROLES:
            raise AuthError(f"bearer credentials are for {', '.join(BEARER_ROLES)} only, not {role}")
        if rotate:
            self.revoke(r, name)
        user = new_key("user")
        jwt = self._user_jwt(r, name, user, bearer=bearer, expires_s=expires_s)
        issued = IssuedCredential(r, name, public_key(user), int(claims_of(jwt)["iat"]))
        with self._registry_lock():
            self._registry.append(issued)
            self._save_registry()
        return creds_text(jwt, user.seed)

    def revoke(self, role: str, name: str) -> list[str]:
        """Revoke every live credential of ``role``/``name``; the public keys revoked."""
        now = int(time.time())
        done = []
        with self._registry_lock():
            for i, c in enumerate(self._registry):
                if c.role == role and c.name == name and c.revoked_at is None:
                    # Revokes JWTs issued at or before this instant: every credential issued so far.
                    revoked = IssuedCredential(c.role, c.name, c.public_key, c.issued_at, max(now, c.issued_at))
                    self._registry[i] = revoked
                    done.append(c.public_key)
            if done:
                self._save_registry()
        return done

    def issued(self) -> list[IssuedCredential]:
        """Every credential issued, oldest first."""
        self._registry = self._load_registry()
        return list(self._registry)

    def is_revoked(self, public_key_: str) -> bool:
        """True when the credential with this public key was revoked."""
        return any(c.public_key == public_key_ and c.revoked_at is not None for c in self.issued())

    def own_creds(self, role: str, name: str) -> Path:
        """The path of one of the network's own identities, issued on first use and kept (0600)."""
        path = self.directory / "creds" / f"{role}-{name}.creds"
        if path.exists():
            with contextlib.suppress(Exception):
                from events.identity import read_credentials

                ident: Identity = read_credentials(path)
                if ident.public_key and not self.is_revoked(ident.public_key):
                    return path
        _write_private(path, self.issue(role, name))
        return path

    def unrestricted_creds(self) -> Path:
        """Credentials of an unrestricted user of the hub account, for the operator's own tools.

        Signed with the hub account's key and no template: it may do anything in the hub (create its
        own streams next to the network's, publish anywhere in them). Benchmarks use it to measure the
        raw JetStream floor on the same server, and storage tests to exercise JetStream itself. Only
        whoever holds the account key can make one; the network never issues one to anybody.
        """
        path = self.directory / "creds" / "unrestricted.creds"
        if not path.exists():
            user = new_key("user")
            nats = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
            claims = {"name": "operator-tool", "sub": public_key(user), "nats": nats}
            _write_private(path, creds_text(encode(claims, self._keys[f"account-{HUB_ACCOUNT}"]), user.seed))
        return path

    def system_creds(self) -> Path:
        """Credentials of a system-account user: it pushes account updates to the server."""
        path = self.directory / "creds" / "system.creds"
        if not path.exists():
            user = new_key("user")
            acc = self._keys[f"account-{SYS_ACCOUNT}"]
            nats = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
            claims = {"name": "system", "sub": public_key(user), "nats": nats}
            _write_private(path, creds_text(encode(claims, acc), user.seed))
        return path

    # ---- registry --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _registry_lock(self) -> Iterator[None]:
        """Hold the registry exclusively (``gpufleet up`` and ``gpufleet creds`` may run at once), fresh."""
        fd = os.open(self.directory / ".issued.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._registry = self._load_registry()
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _load_registry(self) -> list[IssuedCredential]:
        path = self.directory / "issued.json"
        try:
            rows = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise AuthError(f"cannot read {path}: {e}") from e
        return [
            IssuedCredential(r["role"], r["name"], r["public_key"], int(r["issued_at"]), r.get("revoked_at"))
            for r in rows
        ]

    def _save_registry(self) -> None:
        rows = [c.to_json() for c in self._registry]
        _write_private(self.directory / "issued.json", json.dumps(rows, indent=1) + "\n")


async def push_accounts(url: str, authority: Authority, **connect: Any) -> int:
    """Send every account's current JWT to the running server (``$SYS.REQ.CLAIMS.UPDATE``).

    Revocations take effect at once: the server disconnects revoked users. Returns how many it took.
    """
    import nats
    import nats.errors

    try:
        servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: any node takes it
        nc = await nats.connect(
            servers,
            user_credentials=str(authority.system_creds()),
            connect_timeout=3,
            max_reconnect_attempts=0,
            **connect,
        )
    except (OSError, nats.errors.Error) as e:
        raise AuthError(f"cannot reach the network at {url} to push account updates: {e}") from e
    taken = 0
    try:
        for jwt in authority.account_jwts().values():
            reply = await nc.request("$SYS.REQ.CLAIMS.UPDATE", jwt.encode(), timeout=5.0)
            data = json.loads(reply.data or b"{}")
            if "error" in data:
                raise AuthError(f"the server refused an account update: {data['error'].get('description', data)}")
            taken += 1
    except nats.errors.Error as e:
        raise AuthError(f"the server did not take the account update: {e}") from e
    finally:
        await nc.close()
    return taken
