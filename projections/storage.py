"""Read-model storage: tables described once, a small ``ReadModelStore`` protocol, and SQLite.

A view's rows and its checkpoint (the last applied global position) are written in one transaction,
so a crash can never separate them. The views only ever upsert rows, delete rows, set checkpoints,
and read whole tables or simple selections: ``projections.pgstore`` implements the same protocol on
PostgreSQL, and :func:`open_store` picks the backend from the ``--db`` a person gives.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import sqlite3
import threading
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import unquote

from events.errors import GpufleetError

__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "MissingTable",
    "ReadModelError",
    "ReadModelStore",
    "ReadModelUnavailable",
    "SqliteStore",
    "Table",
    "Transaction",
    "Value",
    "describe_db",
    "is_postgres_url",
    "open_store",
    "without_password",
]

#: What a column holds: SQL's portable scalars. JSON documents are stored as canonical text.
Value = int | float | str | None

R = TypeVar("R")

_SQL_TYPES: dict[object, str] = {int: "INTEGER", float: "REAL", str: "TEXT", bool: "INTEGER"}

#: The name of the table that holds every view's checkpoint.
CHECKPOINTS = "checkpoints"


class ReadModelError(GpufleetError):
    """The read models' database refused or failed an operation."""


class ReadModelUnavailable(ReadModelError):
    """The read models' database could not be reached, or its address is not one we can use."""


class MissingTable(ReadModelError):
    """A table the query needs does not exist (read models written by an older version, or none yet)."""


def is_postgres_url(db: str | Path) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL; anything else names a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


#: libpq's query parameters that hold a secret (``?password=...`` is as valid as ``user:pw@``).
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def _query_without_secrets(query: str, password: str | None) -> str:
    kept = []
    for item in query.split("&") if query else []:
        if unquote(item.partition("=")[0]).strip().lower() in _SECRET_PARAMS:
            if password is not None:
                kept.append(f"{item.partition('=')[0]}={password}")
            continue
        kept.append(item)
    return "&".join(kept)


def _userinfo(db: str, password: str | None) -> str:
    """``db`` with its password (in the user info, or a query parameter) as ``password``, or without.

    The user info is split as libpq splits it (up to the first ``@`` before any ``/``), so a password
    with ``#`` or ``?`` in it, which ``urlsplit`` reads as a fragment or a query, is hidden too.
    """
    scheme, sep, rest = db.partition("://")
    info = re.match(r"[^@/]*@", rest)
    if info is not None:
        user, colon, _ = info[0][:-1].partition(":")
        if colon:
            who = f"{user}:{password}" if password is not None else user
            rest = (f"{who}@" if who else "") + rest[info.end() :]
    head, mark, query = rest.partition("?")
    return scheme + sep + head + (mark + _query_without_secrets(query, password) if mark else "")


def describe_db(db: str | Path) -> str:
    """``db`` as it may be printed or logged: a URL's password shows as ``***``."""
    return _userinfo(db, "***") if isinstance(db, str) and is_postgres_url(db) else str(db)


def without_password(db: str) -> str:
    """A URL without its password, to write down (libpq finds it in ``PGPASSWORD`` or ``~/.pgpass``)."""
    return _userinfo(db, None) if is_postgres_url(db) else db


def open_store(db: str | Path, *, readonly: bool = False) -> ReadModelStore:
    """The read models at ``db``: PostgreSQL for a ``postgresql://`` URL, else the SQLite file at that path.

    A URL may name a schema (``?schema=net1``) so that several networks share one database.
    Raises ``ReadModelUnavailable`` (one line) when a URL is malformed or its server unreachable.
    """
    if is_postgres_url(db):
        from projections.pgstore import PostgresStore

        return PostgresStore(str(db), readonly=readonly)
    return SqliteStore(db, readonly=readonly)


def _sql_type(hint: object) -> str:
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not NoneType]
        if len(members) == 1:
            return _sql_type(members[0])
    if hint in _SQL_TYPES:
        return _SQL_TYPES[hint]
    raise TypeError(f"unsupported column type {hint!r}: use int, float, str (JSON as text) or None")


@dataclass(frozen=True, slots=True)
class Table(Generic[R]):
    """One read-model table, described by a slotted dataclass whose fields are its columns."""

    name: str
    row: type[R]
    key: tuple[str, ...]
    columns: tuple[str, ...]
    types: tuple[str, ...]
    #: The row's column values in column order, and its in-memory key (fast attribute getters).
    values: Callable[[R], tuple[Value, ...]] = dataclasses.field(repr=False, compare=False)
    key_of: Callable[[R], Any] = dataclasses.field(repr=False, compare=False)
    indexes: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(cls, name: str, row: type[R], key: Sequence[str], indexes: Sequence[Sequence[str]] = ()) -> Table[R]:
        """The table whose columns are ``row``'s dataclass fields, in order."""
        hints = typing.get_type_hints(row)
        columns = tuple(f.name for f in dataclasses.fields(row))  # type: ignore[arg-type]
        for k in key:
            if k not in columns:
                raise ValueError(f"{name}: key column {k!r} is not a field of {row.__name__}")
        return cls(
            name=name,
            row=row,
            key=tuple(key),
            columns=columns,
            types=tuple(_sql_type(hints[c]) for c in columns),
            indexes=tuple(tuple(i) for i in indexes),
            values=operator.attrgetter(*columns),
            key_of=operator.attrgetter(*key),
        )

    def make(self, values: Sequence[Value]) -> R:
        """A row object from its column values, in column order."""
        return self.row(*values)

    def check_selection(self, where: Mapping[str, Value], order_by: Sequence[str]) -> None:
        """Raise ``ValueError`` unless every column a selection names (``where``'s, and ``order_by``'s
        with or without `` DESC``) is one of this table's: no other name reaches SQL."""
        for name in (*where, *(o.removesuffix(" DESC") for o in order_by)):
            if name not in self.columns:
                raise ValueError(f"{self.name} has no column {name!r}")

    def key_from_values(self, values: Sequence[Value]) -> Any:
        """The in-memory key of a row given as column values: a scalar, or a tuple for compound keys."""
        idx = [self.columns.index(k) for k in self.key]
        return values[idx[0]] if len(idx) == 1 else tuple(values[i] for i in idx)

    def ddl(self) -> list[str]:
        """Portable CREATE statements for the table and its indexes."""
        cols = ", ".join(f"{c} {t}" for c, t in zip(self.columns, self.types, strict=True))
        out = [f"CREATE TABLE IF NOT EXISTS {self.name} ({cols}, PRIMARY KEY ({', '.join(self.key)}))"]
        for idx in self.indexes:
            out.append(f"CREATE INDEX IF NOT EXISTS {self.name}_{'_'.join(idx)} ON {self.name} ({', '.join(idx)})")
        return out


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last global position a view applied, and the schema version of its tables."""

    position: int = 0
    version: int = 0


class Transaction(Protocol):
    """Writes that become visible together, or not at all."""

    def upsert(self, table: Table[Any], rows: Sequence[Sequence[Value]]) -> None:
        """Insert or replace whole rows (column values in the table's column order)."""
        ...

    def delete(self, table: Table[Any], keys: Sequence[Any]) -> None:
        """Delete rows by key (a scalar, or a tuple for compound keys)."""
        ...

    def clear(self, table: Table[Any]) -> None:
        """Delete every row of ``table``."""
        ...

    def set_checkpoint(self, view: str, checkpoint: Checkpoint) -> None:
        """Record that ``view`` has applied everything up to ``checkpoint.position``."""
        ...


class ReadModelStore(Protocol):
    """Where views keep their read models and checkpoints."""

    def ensure(self, tables: Sequence[Table[Any]]) -> None:
        """Create the tables (and the checkpoints table) if they do not exist."""
        ...

    def checkpoint(self, view: str) -> Checkpoint:
        """The view's checkpoint; position 0 if it never applied anything."""
        ...

    def transaction(self) -> typing.ContextManager[Transaction]:
        """One atomic transaction; it rolls back if the block raises."""
        ...

    def scan(self, table: Table[Any]) -> list[tuple[Value, ...]]:
        """Every row of ``table``, ordered by its key."""
        ...

    def select(
        self,
        table: Table[Any],
        where: Mapping[str, Value] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[tuple[Value, ...]]:
        """Rows whose columns equal ``where``'s values, ordered and limited."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def upsert(self, table: Table[Any], rows: Sequence[Sequence[Value]]) -> None:
        if rows:
            marks = ", ".join("?" * len(table.columns))
            sql = f"INSERT OR REPLACE INTO {table.name} ({', '.join(table.columns)}) VALUES ({marks})"
            self._conn.executemany(sql, rows)

    def delete(self, table: Table[Any], keys: Sequence[Any]) -> None:
        if keys:
            cond = " AND ".join(f"{k} = ?" for k in table.key)
            params = [k if isinstance(k, tuple) else (k,) for k in keys]
            self._conn.executemany(f"DELETE FROM {table.name} WHERE {cond}", params)

    def clear(self, table: Table[Any]) -> None:
        self._conn.execute(f"DELETE FROM {table.name}")

    def set_checkpoint(self, view: str, checkpoint: Checkpoint) -> None:
        self._conn.execute(
            f"INSERT OR REPLACE INTO {CHECKPOINTS} (view, position, version) VALUES (?, ?, ?)",
            (view, checkpoint.position, checkpoint.version),
        )


class SqliteStore:
    """``ReadModelStore`` on SQLite: WAL, ``synchronous=NORMAL``, one connection behind a lock.

    Safe to call from worker threads (the projector commits off the event loop).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = str(path)
        if readonly:
            uri = f"file:{Path(self.path).resolve()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._lock = threading.Lock()

    def ensure(self, tables: Sequence[Table[Any]]) -> None:
        """See ``ReadModelStore.ensure``."""
        with self._lock:
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} "
                "(view TEXT PRIMARY KEY, position INTEGER NOT NULL, version INTEGER NOT NULL)"
            )
            for t in tables:
                for stmt in t.ddl():
                    self._conn.execute(stmt)

    def checkpoint(self, view: str) -> Checkpoint:
        """See ``ReadModelStore.checkpoint``."""
        with self._lock:
            try:
                row = self._conn.execute(
                    f"SELECT position, version FROM {CHECKPOINTS} WHERE view = ?", (view,)
                ).fetchone()
            except sqlite3.OperationalError:  # no checkpoints table yet
                return Checkpoint()
        return Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """See ``ReadModelStore.transaction``."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTransaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def scan(self, table: Table[Any]) -> list[tuple[Value, ...]]:
        """See ``ReadModelStore.scan``."""
        return self.select(table, order_by=table.key)

    def select(
        self,
        table: Table[Any],
        where: Mapping[str, Value] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[tuple[Value, ...]]:
        """See ``ReadModelStore.select``; column names are checked against the table."""
        where = where or {}
        table.check_selection(where, order_by)
        sql = f"SELECT {', '.join(table.columns)} FROM {table.name}"
        if where:
            sql += " WHERE " + " AND ".join(f"{k} = ?" for k in where)
        if order_by:
            sql += " ORDER BY " + ", ".join(order_by)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(where.values())).fetchall()
            except sqlite3.OperationalError as e:
                if str(e).startswith("no such table"):
                    raise MissingTable(f"read models: {e}") from e
                raise

    def close(self) -> None:
        """See ``ReadModelStore.close``."""
        with self._lock:
            self._conn.close()
