"""One contract for every ``ReadModelStore``: SQLite and a real PostgreSQL server (``tests/pg.py``).

Every test here runs on both backends through ``open_store`` (the factory ``--db`` goes through):
upserts, deletes, clears, checkpoints, scans and selections; atomic transactions, seen from another
connection too; values that come back exactly as they went in; typed one-line errors. On
PostgreSQL, a real network's log (the recorded golden history) projected live, with a restart half
way, matches the same log rebuilt, table by table, and matches SQLite value for value.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from events import Envelope, MemoryEventStore
from projections import Projector, ReadModels
from projections.storage import (
    Checkpoint,
    MissingTable,
    ReadModelError,
    ReadModelStore,
    ReadModelUnavailable,
    SqliteStore,
    Table,
    Value,
    open_store,
)
from tests.conftest import unique
from tests.golden import history
from tests.integration.audited import eventually
from tests.pg import MISSING as PG_MISSING
from tests.pg import PgServer, pg_bin

OpenDb = Callable[..., ReadModelStore]


@dataclass(slots=True)
class Row:
    k: str
    n: int = 0
    x: float | None = None


@dataclass(slots=True)
class Pair:
    a: str
    b: int
    v: str | None = None


@dataclass(slots=True)
class Member:
    a: str
    b: int


@dataclass(slots=True)
class Values:
    k: int
    i: int | None
    f: float | None
    s: str | None


T = Table.of("t_rows", Row, key=("k",), indexes=(("n",),))
P = Table.of("t_pairs", Pair, key=("a", "b"), indexes=(("v",),))
M = Table.of("t_members", Member, key=("a", "b"))
V = Table.of("t_values", Values, key=("k",))
NEVER = Table.of("t_never_created", Row, key=("k",))


@pytest.fixture(params=["sqlite", "postgres"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenDb]:
    """``open_db(name, readonly=False)``: the store ``name`` on this backend (a file, or a schema)."""
    if request.param == "sqlite":

        def where(name: str) -> str:
            return str(tmp_path / f"{name}.db")

    else:
        server: PgServer = request.getfixturevalue("pg_server")
        prefix = unique("s")

        def where(name: str) -> str:
            return f"{server.url}?schema={prefix}_{name}"

    opened: list[ReadModelStore] = []

    def open_(name: str = "main", readonly: bool = False) -> ReadModelStore:
        db = open_store(where(name), readonly=readonly)
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()


def test_upsert_delete_clear_checkpoint_scan_and_select(open_db: OpenDb) -> None:
    db = open_db()
    assert db.checkpoint("v") == Checkpoint(0, 0)  # before any table exists
    db.ensure([T, P, M])
    db.ensure([T, P, M])  # again: nothing changes
    assert db.checkpoint("v") == Checkpoint(0, 0)
    with db.transaction() as tx:
        tx.upsert(T, [("a", 1, 0.5), ("b", 2, None), ("c", 3, 1.0), ("d", 4, None)])
        tx.set_checkpoint("v", Checkpoint(7, 1))
        tx.set_checkpoint("w", Checkpoint(3, 2))
    with db.transaction() as tx:
        tx.upsert(T, [("a", 10, 0.25), ("e", 5, 2.0), ("e", 6, 3.0)])  # the same key twice: the last wins
        tx.delete(T, ["b", "nothing-here"])
        tx.set_checkpoint("v", Checkpoint(9, 1))
    assert db.scan(T) == [("a", 10, 0.25), ("c", 3, 1.0), ("d", 4, None), ("e", 6, 3.0)]
    assert (db.checkpoint("v"), db.checkpoint("w"), db.checkpoint("x")) == (
        Checkpoint(9, 1),
        Checkpoint(3, 2),
        Checkpoint(),
    )
    assert db.select(T, {"n": 3}) == [("c", 3, 1.0)]
    assert db.select(T, {"x": None}) == []  # = NULL matches nothing, on both
    # NULLs sort first ascending and last descending, as SQLite sorts them.
    assert [r[0] for r in db.select(T, order_by=("x", "k"))] == ["d", "a", "c", "e"]
    assert [r[0] for r in db.select(T, order_by=("x DESC", "k"))] == ["e", "c", "a", "d"]
    assert db.select(T, order_by=("n DESC",), limit=1) == [("a", 10, 0.25)]
    with pytest.raises(ValueError, match="no column"):
        db.select(T, {"nope; DROP TABLE t_rows": 1})
    with pytest.raises(ValueError, match="no column"):
        db.select(T, order_by=("k; DROP TABLE t_rows",))

    # Compound keys, key-only tables, and text ordered byte by byte (as SQLite orders it).
    keys = ["b", "B", "a_b", "a-b", "a", "ä", "Z", "10", "9", ""]
    with db.transaction() as tx:
        tx.upsert(P, [(k, i, None) for i, k in enumerate(keys)] + [("a", 100, "x"), ("a", -1, "y")])
        tx.upsert(M, [("m", 1), ("m", 1), ("m", 2)])
        tx.upsert(M, [("m", 2)])
    assert [(a, b) for a, b, _ in db.scan(P)] == sorted([(k, i) for i, k in enumerate(keys)] + [("a", 100), ("a", -1)])
    assert db.scan(M) == [("m", 1), ("m", 2)]
    with db.transaction() as tx:
        tx.delete(P, [("a", 100), ("a", 4), ("a", 12345)])
        tx.delete(M, [("m", 1)])
    assert db.select(P, {"a": "a"}) == [("a", -1, "y")]
    assert db.scan(M) == [("m", 2)]
    with db.transaction() as tx:
        tx.clear(P)
        tx.set_checkpoint("v", Checkpoint(0, 2))
    assert db.scan(P) == []
    assert db.checkpoint("v") == Checkpoint(0, 2)
    assert len(db.scan(T)) == 4  # clearing one table leaves the others


def test_a_failed_transaction_leaves_neither_rows_nor_checkpoint(open_db: OpenDb) -> None:
    db = open_db()
    db.ensure([T])
    with db.transaction() as tx:
        tx.upsert(T, [("a", 1, None)])
        tx.set_checkpoint("v", Checkpoint(5, 1))
    # The caller fails between the rows and the commit.
    with pytest.raises(RuntimeError, match="crash"), db.transaction() as tx:
        tx.upsert(T, [("z", 0, None), ("a", 2, 1.5)])
        tx.delete(T, ["a"])
        tx.set_checkpoint("v", Checkpoint(99, 1))
        raise RuntimeError("crash between the rows and the commit")
    assert db.scan(T) == [("a", 1, None)]
    assert db.checkpoint("v") == Checkpoint(5, 1)
    # The database fails half way (a table that was never created): what came before goes too.
    with pytest.raises((sqlite3.Error, ReadModelError)), db.transaction() as tx:
        tx.upsert(T, [("y", 0, None)])
        tx.set_checkpoint("v", Checkpoint(100, 1))
        tx.upsert(NEVER, [("y", 0, None)])
    assert db.scan(T) == [("a", 1, None)]
    assert db.checkpoint("v") == Checkpoint(5, 1)
    # And the store works on afterwards.
    with db.transaction() as tx:
        tx.upsert(T, [("b", 2, None)])
        tx.set_checkpoint("v", Checkpoint(6, 1))
    assert [r[0] for r in db.scan(T)] == ["a", "b"]
    assert db.checkpoint("v") == Checkpoint(6, 1)


def test_another_reader_sees_the_whole_commit_or_nothing_of_it(open_db: OpenDb) -> None:
    db = open_db()
    db.ensure([T])
    with db.transaction() as tx:
        tx.set_checkpoint("v", Checkpoint(1, 1))
    reader = open_db(readonly=True)  # another connection, as `gpufleet jobs` reads during commits
    with db.transaction() as tx:
        tx.upsert(T, [("a", 1, None), ("b", 2, None)])
        tx.set_checkpoint("v", Checkpoint(2, 1))
        assert reader.scan(T) == []
        assert reader.checkpoint("v") == Checkpoint(1, 1)
    assert [r[0] for r in reader.scan(T)] == ["a", "b"]
    assert reader.checkpoint("v") == Checkpoint(2, 1)


def test_a_query_from_another_thread_never_reads_inside_an_open_transaction(open_db: OpenDb) -> None:
    """The projector commits in a worker thread while queries run in others, on the same store."""
    db = open_db()
    db.ensure([T])
    written, read = threading.Event(), threading.Event()
    seen: list[list[tuple[Value, ...]]] = []

    def query() -> None:
        written.wait()
        seen.append(db.scan(T))  # waits for the transaction: the store is one connection behind a lock
        read.set()

    reader = threading.Thread(target=query)
    reader.start()
    with pytest.raises(RuntimeError, match="abandoned"), db.transaction() as tx:
        tx.upsert(T, [("uncommitted", 1, None)])
        written.set()
        # A store without the lock answers the query now, from inside this transaction. Give it time to.
        read.wait(timeout=0.5)
        raise RuntimeError("abandoned: rolled back")
    reader.join()
    assert seen == [[]]


def test_values_come_back_exactly_as_they_went_in(open_db: OpenDb) -> None:
    db = open_db()
    db.ensure([V])
    rows: list[tuple[Value, ...]] = [
        (1, 2**63 - 1, 0.1, "plain"),
        (2, -(2**63), -1.5, ""),
        (3, 0, 1e308, "ünïcødé ✓ 🚀 עברית 中文"),
        (4, None, None, None),
        (5, 7, 5e-324, "NUL \x00 inside, and \ufffe, \ufffe0 and \ufffe1 as they are"),
        (6, -1, 3.0, "\x00"),
        (7, 1, 2.5e-7, 'it\'s "quoted"; -- and ; DROP TABLE t_values'),
    ]
    with db.transaction() as tx:
        tx.upsert(V, rows)
        tx.upsert(V, [(8, True, 1.0, "bool is stored as an int")])  # bool is an INTEGER column, as in SQLite
    got = db.scan(V)
    want = [*rows, (8, 1, 1.0, "bool is stored as an int")]
    assert got == want
    assert [[type(v) for v in r] for r in got] == [[type(v) for v in r] for r in want]  # 3.0 stays a float
    assert db.select(V, {"s": rows[4][3]}) == [rows[4]]  # text with NUL is found by equality too
    assert db.select(V, {"s": "\x00"}) == [rows[5]]


def test_a_readonly_store_cannot_write(open_db: OpenDb) -> None:
    db = open_db()
    db.ensure([T])
    ro = open_db(readonly=True)
    with pytest.raises((sqlite3.Error, ReadModelError)), ro.transaction() as tx:
        tx.upsert(T, [("a", 1, None)])
    assert db.scan(T) == []


async def test_a_missing_table_is_a_typed_error_and_queries_take_it(open_db: OpenDb) -> None:
    db = open_db()
    with pytest.raises(MissingTable):
        db.select(NEVER)
    db.ensure([T])
    models = ReadModels(db)
    assert await models.quarantined() == []  # read models written before the quarantine existed


def test_bad_or_unreachable_postgres_urls_are_one_line_errors() -> None:
    for url, says in [
        (
            "postgresql://gf:hunter2@127.0.0.1:1/readmodels",
            "cannot reach PostgreSQL at postgresql://gf:***@127.0.0.1:1",
        ),
        ("postgres://127.0.0.1:1/readmodels?connect_timeout=3", "cannot reach PostgreSQL"),
        ("postgresql://127.0.0.1/readmodels?colour=blue", 'invalid URI query parameter: "colour"'),
        ("postgresql://127.0.0.1/readmodels?schema=Net;DROP", "schema 'Net;DROP'"),
        ("postgresql://gf:hunter2@[::1/readmodels", "bad PostgreSQL URL"),
    ]:
        with pytest.raises(ReadModelUnavailable) as err:
            open_store(url)
        text = str(err.value)
        assert says in text and "\n" not in text and "hunter2" not in text, text


BAD = "postgresql://gf:hunter2@127.0.0.1:1/readmodels"


def test_the_standalone_projector_says_a_bad_db_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "projections", "rebuild", "--url", "nats://127.0.0.1:1", "--db", BAD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: cannot reach PostgreSQL at postgresql://gf:***@127.0.0.1:1/readmodels: connection failed: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused'
    ], done.stderr


# ---- PostgreSQL: live and rebuilt, table by table ---------------------------------------------------


def typed(tables: dict[str, list[tuple[Value, ...]]]) -> dict[str, list[list[tuple[str, Value]]]]:
    """Every value with its type: 1 == 1.0 in Python, but not in a read model that round-trips."""
    return {t: [[(type(v).__name__, v) for v in row] for row in rows] for t, rows in tables.items()}


async def test_live_and_rebuilt_tables_match_on_postgres(pg_server: PgServer, tmp_path: Path) -> None:
    log: list[Envelope] = history.read_log()
    schema = unique("net")
    store = MemoryEventStore()
    half = len(log) // 2

    async def follow(db: ReadModelStore, upto: int, start: int) -> Projector:
        """A live projector (small batches: commits fall mid-story) while the log grows to ``upto``."""
        live = Projector(store, db, batch_size=7, flush_interval=0.001)
        runner = asyncio.create_task(live.run())
        for i, env in enumerate(log[start:upto]):
            await store.append(env.subject, [env], expected=None)
            if i % 5 == 0:
                await asyncio.sleep(0.001)  # let it follow, sometimes mid-batch
        await eventually(lambda: live.position >= upto, lambda: f"live at {live.position}, want {upto}", poll=0.005)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        return live

    # Live for the first half; then the process "restarts": a new connection, views loaded from PostgreSQL.
    first = open_store(f"{pg_server.url}?schema={schema}_live")
    await follow(first, half, 0)
    first.close()
    live_db = open_store(f"{pg_server.url}?schema={schema}_live")
    live = await follow(live_db, len(log), half)

    rebuilt_db = open_store(f"{pg_server.url}?schema={schema}_rebuilt")
    rebuilt = Projector(store, rebuilt_db)
    assert await rebuilt.rebuild() == len(log)
    reference = Projector(store, SqliteStore(tmp_path / "reference.sqlite"))
    assert await reference.catch_up() == len(log)

    live_tables, rebuilt_tables, sqlite_tables = live.dump(), rebuilt.dump(), reference.dump()
    assert sorted(live_tables) == sorted(rebuilt_tables) == sorted(sqlite_tables)
    assert sum(len(rows) for rows in live_tables.values()) > 100  # a real network's worth
    for table in sqlite_tables:
        assert live_tables[table] == rebuilt_tables[table], table
        assert typed({table: rebuilt_tables[table]}) == typed({table: sqlite_tables[table]}), table
    for view in live.views:
        assert live_db.checkpoint(view.name).position == len(log)

    # The queries read PostgreSQL as they read SQLite (another connection, read-only).
    on_pg = ReadModels.open(f"{pg_server.url}?schema={schema}_live")
    on_sqlite = ReadModels(reference.db)
    try:
        assert await on_pg.list_jobs(limit=500) == await on_sqlite.list_jobs(limit=500)
        assert await on_pg.fleet() == await on_sqlite.fleet()
        assert await on_pg.balances() == await on_sqlite.balances()
        assert await on_pg.positions() == await on_sqlite.positions()
        assert await on_pg.eta_error() == await on_sqlite.eta_error()
    finally:
        on_pg.close()
        for db in (live_db, rebuilt_db, reference.db):
            db.close()


def test_rows_sort_as_in_sqlite_whatever_the_database_collation(pg_server: PgServer) -> None:
    """A database created with a linguistic (ICU) collation still orders keys byte by byte."""
    import psycopg

    name = unique("icu")
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        try:
            conn.execute(
                f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' "
                "LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'"
            )
        except psycopg.Error as e:
            pytest.skip(f"this PostgreSQL has no ICU collations: {e}")
    db = open_store(pg_server.url.rsplit("/", 1)[0] + f"/{name}")
    try:
        db.ensure([T])
        keys = ["b", "B", "a", "A", "_a", "a-b", "ab", "ä", "10", "9"]
        with db.transaction() as tx:
            tx.upsert(T, [(k, i, None) for i, k in enumerate(keys)])
        assert [r[0] for r in db.scan(T)] == sorted(keys)
        assert [r[0] for r in db.select(T, order_by=("k DESC",))] == sorted(keys, reverse=True)
    finally:
        db.close()


def test_a_restarted_postgres_costs_one_failed_call_then_the_store_reconnects(tmp_path: Path) -> None:
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip(PG_MISSING)
    server = PgServer(bin_dir).start()
    try:
        db = open_store(f"{server.url}?schema=restarts")
        db.ensure([T])
        with db.transaction() as tx:
            tx.upsert(T, [("a", 1, None)])
        server.restart()
        with pytest.raises(ReadModelUnavailable) as err:
            db.scan(T)
        assert "\n" not in str(err.value)
        assert db.scan(T) == [("a", 1, None)]  # the next call opened a new connection
        db.close()
    finally:
        server.stop()
