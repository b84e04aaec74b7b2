"""Shared limits and usage, on every store: one suite, three backends (memory, SQLite, PostgreSQL).

Two handles opened on one location stand for two processes (two workers, two
instances): each has its own connection, and their exchanges are concurrent.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.pg import Schema
from trio_gateway.core.limits import BUCKET, COUNTER, LimitOp, row_level
from trio_gateway.core.usage import UsageRow
from trio_gateway.store import MemoryStore, SqliteStore, Store, StoreUnavailable, sqlite

TIMEOUT = 30


def bounded(test):
    @functools.wraps(test)
    async def run(*args, **kwargs):
        with trio.fail_after(TIMEOUT):
            await test(*args, **kwargs)

    return run


class Location:
    name: str

    def open(self) -> AsyncIterator[Store]:
        raise NotImplementedError


class Memory(Location):
    name = "memory"

    def __init__(self) -> None:
        self.store = MemoryStore()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        yield self.store.connect()


class Sqlite(Location):
    name = "sqlite"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        async with SqliteStore.open(self.data_dir) as store:
            yield store


class Postgres(Location):
    name = "postgresql"

    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        from trio_gateway.store.postgres import PostgresStore

        async with PostgresStore.open(self.schema.url) as store:
            yield store


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "memory":
        return Memory()
    if request.param == "sqlite":
        return Sqlite(tmp_path / "data")
    return Postgres(request.getfixturevalue("postgres"))


def bucket(take: float = 0, put: float = 0, capacity: float = 10) -> LimitOp:
    return LimitOp("rpm:k", BUCKET, capacity, capacity / 60, put, take)


@bounded
async def test_a_bucket_is_granted_once_and_given_back(location: Location):
    async with location.open() as store:
        # (A bucket of 10 a minute drains a little between two exchanges: levels are
        # compared to the hundredth.)
        [grant] = await store.exchange_limits([bucket(take=4)])
        assert (grant.granted, grant.level) == (4, 6)
        [grant] = await store.exchange_limits([bucket(take=20)])
        assert grant.granted == 6 and grant.level == pytest.approx(0, abs=0.01)
        [grant] = await store.exchange_limits([bucket(take=1)])
        assert grant.granted == 0
        [grant] = await store.exchange_limits([bucket(put=3, take=1)])
        assert grant.granted == 1 and grant.level == pytest.approx(2, abs=0.01)
        [grant] = await store.exchange_limits([bucket(put=-5)])
        assert grant.level == pytest.approx(-3, abs=0.01)  # charged beyond: in debt
    async with location.open() as store:  # another process sees the same row
        [grant] = await store.exchange_limits([bucket(put=100)])
        assert grant.level == 10


@bounded
async def test_a_bucket_refills_on_the_stores_clock(location: Location):
    """A million units a second: the time between two exchanges refills some, never more
    than the capacity."""
    async with location.open() as store:
        op = LimitOp("tpm:k", BUCKET, 1e9, 1e6, take=1e9)
        [first] = await store.exchange_limits([op])
        assert first.granted == 1e9
        if location.name == "memory":
            await trio.sleep(0.001)  # its clock is Trio's
        [second] = await store.exchange_limits([op])
        assert 0 < second.granted < 1e9


@bounded
async def test_a_counter_counts_what_is_used(location: Location):
    async with location.open() as store:
        op = LimitOp("bt:k:2026-05", COUNTER, 1000, take=700)
        grants = await store.exchange_limits([op, op])
        assert [(g.granted, g.level) for g in grants] == [(700, 300), (300, 0)]
        cost = LimitOp("bc:k:2026-05", COUNTER, 2.5, take=1.25, whole=False)
        [grant] = await store.exchange_limits([cost])
        assert grant.granted == pytest.approx(1.25)
        [grant] = await store.exchange_limits([LimitOp("bt:k:2026-05", COUNTER, 1000, put=-40)])
        assert grant.level == -40  # settled beyond the budget
        found = await store.read_limits(["bt:k:2026-05", "bc:k:2026-05", "nothing"])
        assert set(found.rows) == {"bt:k:2026-05", "bc:k:2026-05"}
        row = found.rows["bt:k:2026-05"]
        assert row.kind == COUNTER and row.value == 1040
        assert row_level(row, COUNTER, 1000, 0, found.now) == -40


@bounded
async def test_processes_exchanging_at_once_never_get_more_than_there_is(location: Location):
    """Two processes, sixty concurrent exchanges of one unit each on a budget of 25 (with
    a bucket in the same batch): exactly 25 are granted, whatever the interleaving (row
    locks in scope order, BEGIN IMMEDIATE)."""
    granted = []
    async with location.open() as a, location.open() as b:

        async def take_one(store: Store) -> None:
            [grant, _] = await store.exchange_limits(
                [LimitOp("bt:shared", COUNTER, 25, take=1), LimitOp("rpm:x", BUCKET, 5, 1 / 12)]
            )
            granted.append(grant.granted)

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(take_one, a if i % 2 else b)
    assert sum(granted) == 25 and len(granted) == 60


@bounded
async def test_usage_rows_add_up_across_processes(location: Location):
    def row(day: str, model: str = "gpt-4o", **amounts) -> UsageRow:
        return UsageRow("k1", "g", model, day, **amounts)

    async with location.open() as a, location.open() as b:
        await a.exchange_limits([], [row("2026-05-30", requests=2, input_tokens=10, cost=0.5)])
        await b.exchange_limits(
            [],
            [
                row("2026-05-30", requests=1, output_tokens=7, cached_tokens=3, cost=0.25),
                row("2026-05-31", "claude", requests=4, refused=2),
                UsageRow("k2", "g", "gpt-4o", "2026-05-31", requests=9),
            ],
        )
        assert await a.read_usage("k1") == [
            row(
                "2026-05-30",
                requests=3,
                input_tokens=10,
                output_tokens=7,
                cached_tokens=3,
                cost=0.75,
            ),
            row("2026-05-31", "claude", requests=4, refused=2),
        ]
        assert [r.day for r in await b.read_usage("k1", since="2026-05-31")] == ["2026-05-31"]
        assert [r.day for r in await b.read_usage("k1", until="2026-05-30")] == ["2026-05-30"]
        assert await b.read_usage("nobody") == []


@bounded
async def test_idle_buckets_are_pruned_and_budgets_kept(location: Location):
    async with location.open() as store:
        await store.exchange_limits(
            [bucket(take=1), LimitOp("bt:k:lifetime", COUNTER, 100, take=5)]
        )
        assert await store.prune_limits(3600) == 0
        if location.name == "memory":
            await trio.sleep(0.001)
        else:
            await trio.sleep(0.01)  # the stores' clocks are the wall clock
        assert await store.prune_limits(0) == 1
        found = await store.read_limits(["rpm:k", "bt:k:lifetime"])
        assert list(found.rows) == ["bt:k:lifetime"]


async def test_limits_follow_a_memory_stores_outage():
    store = MemoryStore()
    handle = store.connect()
    handle.set_outage("gone")
    with pytest.raises(StoreUnavailable):
        await handle.exchange_limits([bucket(take=1)])
    [grant] = await store.exchange_limits([bucket(take=1)])  # the other instance is fine
    assert grant.granted == 1


async def test_an_older_sqlite_file_gains_the_limit_tables(tmp_path: Path):
    path = tmp_path / sqlite.DB_NAME
    db = sqlite3.connect(path)
    for step in sqlite.MIGRATIONS[:3]:
        step(db)
    db.execute("PRAGMA user_version = 3")
    db.execute(
        "INSERT INTO entities VALUES ('gateway', 'g1', NULL, 'g', '{\"id\": \"g1\", \"name\": \"g\"}', 1)"
    )
    db.execute("UPDATE state SET version = 1")
    db.commit()
    db.close()
    async with SqliteStore.open(tmp_path) as store:
        assert store.migrated_from == 3
        assert [e.id for e in await store.load()] == ["g1"]
        [grant] = await store.exchange_limits([bucket(take=2)])
        assert grant.granted == 2


async def test_an_older_postgres_schema_gains_the_limit_tables(postgres: Schema):
    import psycopg

    from trio_gateway.store import postgres as pg

    with psycopg.connect(postgres.url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE tg_migrations (step integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL)"
        )
        pg.MIGRATIONS[0](cur)
        cur.execute("INSERT INTO tg_migrations (step, applied_by) VALUES (1, 'an older gateway')")
    async with pg.PostgresStore.open(postgres.url) as store:
        assert store.migrated_from == 1
        [grant] = await store.exchange_limits([bucket(take=2)])
        assert grant.granted == 2
    rows = postgres.query("SELECT step FROM tg_migrations ORDER BY step")
    assert [step for (step,) in rows] == [1, 2]
