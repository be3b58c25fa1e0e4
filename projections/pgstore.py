"""``ReadModelStore`` on PostgreSQL (psycopg 3): read models that several readers share over the network.

Chosen with ``--db postgresql://user@host/db``; ``?schema=NAME`` keeps one network's tables in their
own schema, so networks can share a database. It behaves as ``SqliteStore`` does:

- a view's rows and its checkpoint are committed in one transaction;
- the same tables, keys and indexes (INTEGER is BIGINT, REAL is DOUBLE PRECISION, TEXT is TEXT
  compared byte by byte, ``COLLATE "C"``, so rows sort as in SQLite whatever the database's locale);
- values come back as they went in: ints as ints, floats as floats, None as None, any text. PostgreSQL
  text cannot hold U+0000, which JSON can carry into a name: it is stored escaped and read back as it was.

One connection, in autocommit mode outside ``transaction()``, behind a lock: safe to call from the
projector's and the queries' worker threads. A lost connection is opened again on the next call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.types.numeric import IntDumper
from psycopg.types.string import StrDumperUnknown, TextLoader

from projections.storage import (
    CHECKPOINTS,
    Checkpoint,
    MissingTable,
    ReadModelError,
    ReadModelUnavailable,
    Table,
    Transaction,
    Value,
    describe_db,
)

__all__ = ["PostgresStore"]

_log = structlog.get_logger("gpufleet.projections.pgstore")

_PG_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": 'TEXT COLLATE "C"'}
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# PostgreSQL text cannot hold NUL. ESC (a Unicode noncharacter, never in real text) escapes itself
# and NUL, so every str round-trips; text without either is stored as is.
_ESC = "\ufffe"
_UNESCAPE = re.compile("\ufffe([01])")


def _escape(text: str) -> str:
    if "\x00" in text or _ESC in text:
        return text.replace(_ESC, _ESC + "1").replace("\x00", _ESC + "0")
    return text


def _unescape(text: str) -> str:
    if _ESC in text:
        return _UNESCAPE.sub(lambda m: "\x00" if m[1] == "0" else _ESC, text)
    return text


class _Str(StrDumperUnknown):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(_escape(obj))


class _Text(TextLoader):
    def load(self, data: Buffer) -> str | bytes:
        text = super().load(data)
        return _unescape(text) if isinstance(text, str) else text


class _Bool(IntDumper):
    """bool columns are INTEGER, as in SQLite: True is stored (and read back) as 1."""

    def dump(self, obj: Any) -> Buffer | None:
        return b"1" if obj else b"0"


def _split_schema(url: str, schema: str | None) -> tuple[str, str | None]:
    """The URL without our own ``schema`` query parameter (libpq does not know it), and the schema."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as e:
        raise ReadModelUnavailable(f"bad PostgreSQL URL {describe_db(url)}: {_first_line(e, _secrets(url))}") from e
    rest = [(k, v) for k, v in query if k != "schema"]
    given = [v for k, v in query if k == "schema"]
    if given:
        if schema is not None and given[-1] != schema:
            raise ReadModelUnavailable(f"two schemas for the read models: {given[-1]!r} in the URL, {schema!r}")
        schema = given[-1]
    if schema is not None and not _SCHEMA.fullmatch(schema):
        raise ReadModelUnavailable(
            f"schema {schema!r} in {describe_db(url)}: use lower-case letters, digits and _ (at most 63)"
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def _first_line(e: BaseException, secrets: Sequence[str] = ()) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(e).__name__
    for secret in sorted(secrets, key=len, reverse=True):
        line = line.replace(secret, "***")  # libpq quotes a bad token of the URL, password or not
    return line


def _secrets(url: str) -> tuple[str, ...]:
    """The URL's passwords as written and decoded (user info as libpq splits it, and query values)."""
    found = []
    rest = url.partition("://")[2]
    info = re.match(r"[^@/]*@", rest)
    if info is not None and ":" in info[0]:
        found.append(info[0][:-1].partition(":")[2])
    for item in rest.partition("?")[2].split("&"):
        key, _, value = item.partition("=")
        if unquote(key).strip().lower() in ("password", "sslpassword"):
            found.append(value)
    return tuple({v for s in found for v in (s, unquote(s)) if v})


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _cols(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(map(_ident, names))


class _PgTransaction:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def upsert(self, table: Table[Any], rows: Sequence[Sequence[Value]]) -> None:
        if rows:
            self._cur.executemany(_upsert_sql(table), rows)

    def delete(self, table: Table[Any], keys: Sequence[Any]) -> None:
        if keys:
            params = [k if isinstance(k, tuple) else (k,) for k in keys]
            self._cur.executemany(_delete_sql(table), params)

    def clear(self, table: Table[Any]) -> None:
        self._cur.execute(sql.SQL("DELETE FROM {}").format(_ident(table.name)))

    def set_checkpoint(self, view: str, checkpoint: Checkpoint) -> None:
        self._cur.execute(
            sql.SQL(
                "INSERT INTO {} (view, position, version) VALUES (%s, %s, %s) "
                "ON CONFLICT (view) DO UPDATE SET position = EXCLUDED.position, version = EXCLUDED.version"
            ).format(_ident(CHECKPOINTS)),
            (view, checkpoint.position, checkpoint.version),
        )


_SQL_CACHE: dict[tuple[str, Table[Any]], sql.Composed] = {}


def _upsert_sql(table: Table[Any]) -> sql.Composed:
    q = _SQL_CACHE.get(("upsert", table))
    if q is None:
        others = [c for c in table.columns if c not in table.key]
        on_conflict = (
            sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(_ident(c)) for c in others)
            )
            if others
            else sql.SQL("DO NOTHING")
        )
        q = _SQL_CACHE[("upsert", table)] = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
            _ident(table.name),
            _cols(table.columns),
            sql.SQL(", ").join(sql.Placeholder() * len(table.columns)),
            _cols(table.key),
            on_conflict,
        )
    return q


def _delete_sql(table: Table[Any]) -> sql.Composed:
    q = _SQL_CACHE.get(("delete", table))
    if q is None:
        cond = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(_ident(k)) for k in table.key)
        q = _SQL_CACHE[("delete", table)] = sql.SQL("DELETE FROM {} WHERE {}").format(_ident(table.name), cond)
    return q


def _ddl(table: Table[Any]) -> list[sql.Composed]:
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(_ident(c), sql.SQL(_PG_TYPES[t]))
        for c, t in zip(table.columns, table.types, strict=True)
    )
    out = [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
            _ident(table.name), cols, _cols(table.key)
        )
    ]
    for idx in table.indexes:
        out.append(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                _ident(f"{table.name}_{'_'.join(idx)}"), _ident(table.name), _cols(idx)
            )
        )
    return out


class PostgresStore:
    """``ReadModelStore`` on PostgreSQL. ``url``: a libpq URL, optionally with ``?schema=NAME``.

    ``schema`` (or the URL's) keeps the tables in that schema, created on first use; without one they
    go where the server's ``search_path`` puts them (``public``). ``readonly`` opens a session whose
    transactions cannot write. Raises ``ReadModelUnavailable`` (one line, password hidden) for a
    malformed URL or a server that cannot be reached; later database failures raise ``ReadModelError``.
    """

    def __init__(
        self, url: str, *, schema: str | None = None, readonly: bool = False, connect_timeout: int = 10
    ) -> None:
        self.url = describe_db(url)
        self._secrets = _secrets(url)
        self._conninfo, self.schema = _split_schema(url, schema)
        self.readonly = readonly
        self._connect_timeout = connect_timeout
        try:
            params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        except psycopg.Error as e:
            raise ReadModelUnavailable(f"bad PostgreSQL URL {self.url}: {_first_line(e, self._secrets)}") from e
        self._timeout_given = "connect_timeout" in params
        self._lock = threading.Lock()
        self._closed = False
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        kw: dict[str, Any] = {} if self._timeout_given else {"connect_timeout": self._connect_timeout}
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, application_name="gpufleet-readmodels", **kw)
        except psycopg.Error as e:
            raise ReadModelUnavailable(f"cannot reach PostgreSQL at {self.url}: {_first_line(e, self._secrets)}") from e
        conn.adapters.register_dumper(str, _Str)
        conn.adapters.register_dumper(bool, _Bool)
        conn.adapters.register_loader("text", _Text)
        try:
            if self.schema is not None:
                if not self.readonly:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(self.schema)))
                conn.execute(sql.SQL("SET search_path TO {}").format(_ident(self.schema)))
            if self.readonly:
                conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as e:
            conn.close()
            raise ReadModelUnavailable(f"PostgreSQL at {self.url}: {_first_line(e, self._secrets)}") from e
        return conn

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, for this thread alone; psycopg errors become ``ReadModelError``s."""
        with self._lock:
            if self._closed:
                raise ReadModelError(f"the read models at {self.url} were closed")
            if self._conn.closed:
                _log.warning("readmodels.reconnect", url=self.url)
                self._conn = self._connect()
            try:
                yield self._conn
            except psycopg.errors.UndefinedTable as e:
                raise MissingTable(f"read models: {_first_line(e, self._secrets)}") from e
            except psycopg.OperationalError as e:
                raise ReadModelUnavailable(f"PostgreSQL at {self.url}: {_first_line(e, self._secrets)}") from e
            except psycopg.Error as e:
                raise ReadModelError(f"PostgreSQL at {self.url}: {_first_line(e, self._secrets)}") from e

    def ensure(self, tables: Sequence[Table[Any]]) -> None:
        """See ``ReadModelStore.ensure``."""
        with self._session() as conn, conn.transaction():
            # Two processes creating the same tables at once would collide in the catalogue.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('gpufleet.readmodels.' || current_schema()))")
            conn.execute(
                sql.SQL(
                    'CREATE TABLE IF NOT EXISTS {} (view TEXT COLLATE "C" PRIMARY KEY, '
                    "position BIGINT NOT NULL, version BIGINT NOT NULL)"
                ).format(_ident(CHECKPOINTS))
            )
            for t in tables:
                for stmt in _ddl(t):
                    conn.execute(stmt)

    def checkpoint(self, view: str) -> Checkpoint:
        """See ``ReadModelStore.checkpoint``."""
        try:
            with self._session() as conn:
                row = conn.execute(
                    sql.SQL("SELECT position, version FROM {} WHERE view = %s").format(_ident(CHECKPOINTS)), (view,)
                ).fetchone()
        except MissingTable:  # no checkpoints table yet
            return Checkpoint()
        return Checkpoint(int(row[0]), int(row[1])) if row else Checkpoint()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """See ``ReadModelStore.transaction``: every write in it commits together, or none does."""
        with self._session() as conn, conn.transaction(), conn.cursor() as cur:
            yield _PgTransaction(cur)

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
        order: list[sql.Composable] = []
        for o in order_by:
            # NULLs sort as in SQLite: before every value, last when descending.
            name = o.removesuffix(" DESC")
            how = "DESC NULLS LAST" if name != o else "NULLS FIRST"
            order.append(sql.SQL("{} " + how).format(_ident(name)))
        q = sql.SQL("SELECT {} FROM {}").format(_cols(table.columns), _ident(table.name))
        if where:
            q += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(sql.SQL("{} = %s").format(_ident(k)) for k in where)
        if order:
            q += sql.SQL(" ORDER BY ") + sql.SQL(", ").join(order)
        if limit is not None:
            q += sql.SQL(" LIMIT {}").format(sql.Literal(int(limit)))
        with self._session() as conn:
            return conn.execute(q, tuple(where.values())).fetchall()

    def close(self) -> None:
        """See ``ReadModelStore.close``."""
        with self._lock:
            self._closed = True
            self._conn.close()
