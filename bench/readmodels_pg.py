"""Benchmark: rebuilding the read models into SQLite and into PostgreSQL, beside the raw floors.

In one run, on the same synthetic log (``tests/golden/loggen.py``) held in memory:

- fold only: the projector with a store that writes nothing (the CPU floor of folding);
- the rebuild into SQLite, and into PostgreSQL (``projections.pgstore``), in events per second;
- the raw floors: the same row writes (every upsert the rebuild made, batch by batch) inserted by the
  bare driver into tables without keys (``sqlite3`` and psycopg ``executemany``), one transaction
  per batch, with nothing else.

PostgreSQL is the server at ``--db`` or, without one, a fresh one that ``tests/pg.py`` starts here.

    .venv/bin/python bench/readmodels_pg.py                  # 50,000 events
    .venv/bin/python bench/readmodels_pg.py --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from events import MemoryEventStore  # noqa: E402
from projections import Projector  # noqa: E402
from projections.storage import Checkpoint, ReadModelStore, Table, Transaction, Value, open_store  # noqa: E402
from tests.golden.loggen import random_log  # noqa: E402

Batch = list[tuple[Table[Any], list[tuple[Value, ...]]]]


class _Recording:
    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def upsert(self, table: Table[Any], rows: Sequence[Sequence[Value]]) -> None:
        if rows:
            self.batch.append((table, [tuple(r) for r in rows]))

    def delete(self, table: Table[Any], keys: Sequence[Any]) -> None:
        pass

    def clear(self, table: Table[Any]) -> None:
        pass

    def set_checkpoint(self, view: str, checkpoint: Checkpoint) -> None:
        pass


class NullStore:
    """A ``ReadModelStore`` that keeps nothing, and records the row writes it was given."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def ensure(self, tables: Sequence[Table[Any]]) -> None:
        pass

    def checkpoint(self, view: str) -> Checkpoint:
        return Checkpoint()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        batch: Batch = []
        yield _Recording(batch)
        self.batches.append(batch)

    def scan(self, table: Table[Any]) -> list[tuple[Value, ...]]:
        return []

    def select(
        self,
        table: Table[Any],
        where: Mapping[str, Value] | None = None,
        order_by: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[tuple[Value, ...]]:
        return []

    def close(self) -> None:
        pass


async def rebuild(store: MemoryEventStore, db: ReadModelStore) -> float:
    p = Projector(store, db)
    started = time.perf_counter()
    await p.rebuild()
    return time.perf_counter() - started


def raw_sqlite(path: Path, batches: list[Batch]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    tables = {t.name: t for b in batches for t, _ in b}
    for t in tables.values():
        cols = ", ".join(f"{c} {ty}" for c, ty in zip(t.columns, t.types, strict=True))
        conn.execute(f"CREATE TABLE raw_{t.name} ({cols})")
    started = time.perf_counter()
    for batch in batches:
        conn.execute("BEGIN")
        for t, rows in batch:
            marks = ", ".join("?" * len(t.columns))
            conn.executemany(f"INSERT INTO raw_{t.name} VALUES ({marks})", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def raw_postgres(url: str, schema: str, batches: list[Batch]) -> float:
    import psycopg

    types = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT"}
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"SET search_path TO {schema}")
    tables = {t.name: t for b in batches for t, _ in b}
    for t in tables.values():
        cols = ", ".join(f'"{c}" {types[ty]}' for c, ty in zip(t.columns, t.types, strict=True))
        conn.execute(f"CREATE TABLE raw_{t.name} ({cols})")
    started = time.perf_counter()
    for batch in batches:
        with conn.transaction(), conn.cursor() as cur:
            for t, rows in batch:
                marks = ", ".join(["%s"] * len(t.columns))
                cur.executemany(f"INSERT INTO raw_{t.name} VALUES ({marks})", rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--db", help="a PostgreSQL URL to use (default: start a server here)")
    args = ap.parse_args()

    sim = random_log(7, max_events=args.events, checkpoint_every=1000)
    store = MemoryEventStore()
    for stream, group in sim.appends:
        await store.append(stream, group, expected=None)
    n = len(sim.events)

    server = None
    url = args.db
    if url is None:
        from tests.pg import MISSING, PgServer, pg_bin

        bin_dir = pg_bin()
        if bin_dir is None:
            raise SystemExit(MISSING)
        server = PgServer(bin_dir).start()
        url = server.url
    try:
        await rebuild(store, NullStore())  # a warm-up: the first pass fills caches every later one finds
        null = NullStore()
        fold_s = await rebuild(store, null)
        writes = sum(len(rows) for b in null.batches for _, rows in b)
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_db = open_store(Path(tmp) / "rm.sqlite")
            sqlite_s = await rebuild(store, sqlite_db)
            sqlite_db.close()
            raw_sqlite_s = raw_sqlite(Path(tmp) / "raw.sqlite", null.batches)
        stamp = str(time.time_ns())[-8:]
        pg_db = open_store(f"{url}{'&' if '?' in url else '?'}schema=bench_{stamp}")
        pg_s = await rebuild(store, pg_db)
        pg_db.close()
        raw_pg_s = raw_postgres(url, f"bench_raw_{stamp}", null.batches)
    finally:
        if server is not None:
            server.stop()

    print(f"{n} events, {writes} row writes in {len(null.batches)} commits\n")
    print(f"{'run':<46} {'seconds':>8} {'events/s':>10} {'rows/s':>10}")
    for name, s in [
        ("fold only (a store that keeps nothing)", fold_s),
        ("rebuild into SQLite", sqlite_s),
        ("rebuild into PostgreSQL", pg_s),
        ("raw floor: sqlite3 executemany, same rows", raw_sqlite_s),
        ("raw floor: psycopg executemany, same rows", raw_pg_s),
    ]:
        print(f"{name:<46} {s:>8.2f} {n / s:>10.0f} {writes / s:>10.0f}")
    # Commits overlap the next batch's fold, so a rebuild is not fold + writes: compare whole runs.
    print(
        f"\nrebuild time over fold only: SQLite {sqlite_s / fold_s:.2f}x, PostgreSQL {pg_s / fold_s:.2f}x; "
        f"the bare driver's floor: psycopg {raw_pg_s / raw_sqlite_s:.1f}x sqlite3"
    )


if __name__ == "__main__":
    asyncio.run(main())
