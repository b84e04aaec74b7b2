"""The store contract, on every backend: round trips, atomic batches, versions, notices."""

from __future__ import annotations

import functools

import pytest
import trio

from tests.store.conftest import Backend
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.models import Gateway, Kind
from trio_gateway.errors import Conflict
from trio_gateway.store import CONFIG, CONNECTED, Change, StaleVersion, StoreCorrupt

TIMEOUT = 30


def bounded(test):
    """The test, under an absolute deadline (these tests talk to a database)."""

    @functools.wraps(test)
    async def run(*args, **kwargs):
        with trio.fail_after(TIMEOUT):
            await test(*args, **kwargs)

    return run


@bounded
async def test_round_trip_keeps_secrets(backend: Backend, guide_upstream):
    async with backend.open() as store:
        catalog = await Catalog.load(store)
        gateway = await catalog.create(Kind.GATEWAY, {"name": "g"})
        upstream = await catalog.create(Kind.UPSTREAM, guide_upstream, gateway.id)
        key, _ = await catalog.create_api_key(gateway.id, {"name": "k"})
        assert store.statistics().entities == 3
    async with backend.open() as store:
        loaded = {e.id: e for e in await store.load()}
    assert loaded[upstream.id] == upstream
    assert upstream.targets[0].credentials.header_value.startswith("Bearer ")
    assert loaded[key.id] == key and loaded[key.id].key_hash
    assert loaded[gateway.id] == gateway


@bounded
async def test_a_batch_is_one_transaction(backend: Backend):
    async with backend.open() as store:
        assert await store.commit(Change(puts=[Gateway(id="a", name="a")])) == 1
    backend.fail_inserts_named("boom")
    async with backend.open() as store:
        with pytest.raises(Exception, match="boom"):
            # The second row fails inside the transaction: the first must not land either.
            await store.commit(
                Change(puts=[Gateway(id="b", name="b"), Gateway(id="c", name="boom")])
            )
        assert [e.id for e in await store.load()] == ["a"]
        assert await store.version() == 1
        assert await store.commit(Change(deletes=[(Kind.GATEWAY, "a")])) == 2
        assert await store.load() == []


@bounded
async def test_read_since_a_version_returns_exactly_what_changed(backend: Backend):
    async with backend.open() as store:
        assert (await store.read()).version == 0
        v1 = await store.commit(Change(puts=[Gateway(id="a", name="a"), Gateway(id="b", name="b")]))
        v2 = await store.commit(
            Change(puts=[Gateway(id="a", name="a2")], deletes=[(Kind.GATEWAY, "b")])
        )
        v3 = await store.commit(Change(puts=[Gateway(id="c", name="c")]))
        assert (v1, v2, v3) == (1, 2, 3)

        since1 = await store.read(since=1)
        assert not since1.complete and since1.version == 3
        assert sorted(e.name for e in since1.puts) == ["a2", "c"]
        assert since1.deletes == [(Kind.GATEWAY, "b")]

        since2 = await store.read(since=2)
        assert [e.name for e in since2.puts] == ["c"] and since2.deletes == []
        assert (await store.read(since=3)) == type(since2)(3, [], [], False)

        # Deleted, then made again: a put, not a delete.
        await store.commit(Change(puts=[Gateway(id="b", name="b-again")]))
        since3 = await store.read(since=3)
        assert [e.name for e in since3.puts] == ["b-again"] and since3.deletes == []

        full = await store.read()
        assert full.complete and sorted(e.name for e in full.puts) == ["a2", "b-again", "c"]


@bounded
async def test_a_reader_from_the_future_or_beyond_the_horizon_gets_everything(
    backend: Backend, monkeypatch
):
    module = __import__(
        f"trio_gateway.store.{'sqlite' if backend.name == 'sqlite' else 'postgres'}"
    )
    store_module = getattr(module.store, "sqlite" if backend.name == "sqlite" else "postgres")
    monkeypatch.setattr(store_module, "TOMBSTONES_KEPT", 2)
    async with backend.open() as store:
        for i in range(5):
            await store.commit(Change(puts=[Gateway(id=f"g{i}", name=f"g{i}")]))
        await store.commit(Change(deletes=[(Kind.GATEWAY, "g0")]))
        # Tombstones older than two versions are gone: version 1 is too far back.
        behind = await store.read(since=1)
        assert behind.complete and sorted(e.id for e in behind.puts) == ["g1", "g2", "g3", "g4"]
        recent = await store.read(since=5)
        assert not recent.complete and recent.deletes == [(Kind.GATEWAY, "g0")]
        # A reader ahead of the store (a database restored from a backup) reloads.
        ahead = await store.read(since=99)
        assert ahead.complete and ahead.version == 6


@bounded
async def test_a_commit_on_a_stale_version_is_refused(backend: Backend):
    async with backend.open() as store:
        await store.commit(Change(puts=[Gateway(id="a", name="a")]), base_version=0)
        with pytest.raises(StaleVersion) as info:
            await store.commit(Change(puts=[Gateway(id="b", name="b")]), base_version=0)
        assert (info.value.base, info.value.current) == (0, 1)
        assert [e.id for e in await store.load()] == ["a"]
        assert await store.commit(Change(puts=[Gateway(id="b", name="b")]), base_version=1) == 2


@bounded
async def test_two_catalogs_on_one_store_never_write_over_each_other(backend: Backend):
    """B writes on a snapshot older than the store: the write is checked again on the new one."""
    async with backend.open() as store_a, backend.open() as store_b:
        a = await Catalog.load(store_a)
        b = await Catalog.load(store_b)
        gateway = await a.create(Kind.GATEWAY, {"name": "shared"})
        # B has not seen it, yet may not create a second gateway with the same name...
        with pytest.raises(Conflict, match="already exists"):
            await b.create(Kind.GATEWAY, {"name": "shared"})
        # ...and has caught up on the way.
        assert b.version == a.version and gateway.id in b.snapshot.gateways
        # A deletes the gateway; B, unaware, adds a key to it: refused, not orphaned.
        await a.delete(Kind.GATEWAY, gateway.id)
        with pytest.raises(Exception, match="no gateway"):
            await b.create_api_key(gateway.id, {"name": "k"})
        assert await store_a.load() == []


@bounded
async def test_refresh_applies_what_another_catalog_wrote(backend: Backend, guide_upstream):
    async with backend.open() as store_a, backend.open() as store_b:
        a = await Catalog.load(store_a)
        b = await Catalog.load(store_b)
        assert not await b.refresh()
        gateway = await a.create(Kind.GATEWAY, {"name": "g"})
        upstream = await a.create(Kind.UPSTREAM, guide_upstream, gateway.id)
        doomed = await a.create(Kind.GATEWAY, {"name": "doomed"})
        await a.replace(Kind.UPSTREAM, upstream.id, {"algorithm": "round-robin"}, gateway.id)
        await a.delete(Kind.GATEWAY, doomed.id)
        generation = b.snapshot.generation
        assert await b.refresh()
        assert b.snapshot.generation == generation + 1  # one publication for four commits
        assert b.version == a.version
        assert b.snapshot.entities == a.snapshot.entities


@bounded
async def test_unreadable_row_is_named(backend: Backend):
    async with backend.open():
        pass
    backend.insert_raw(
        "upstream", "u1", {"id": "u1", "name": "n", "targets": [{"provider": "nope"}]}
    )
    async with backend.open() as store:
        with pytest.raises(StoreCorrupt, match="upstream u1"):
            await store.load()


@bounded
async def test_a_newer_schema_is_refused(backend: Backend):
    async with backend.open():
        pass
    backend.claim_newer_schema()
    with pytest.raises(StoreCorrupt, match="newer than this trio-gateway"):
        async with backend.open():
            pass


@bounded
async def test_stores_opened_at_once_migrate_once(backend: Backend):
    opened = []

    async def open_one() -> None:
        async with backend.open() as store:
            opened.append(await store.version())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(open_one)
    assert opened == [0, 0, 0]
    from trio_gateway.store import postgres, sqlite

    schema = sqlite.SCHEMA_VERSION if backend.name == "sqlite" else postgres.SCHEMA_VERSION
    assert backend.migrations_applied() == schema


@bounded
async def test_another_store_hears_of_a_commit_at_once(backend: Backend):
    async with backend.open() as writer, backend.open() as reader:
        async with reader.notices() as notices:
            first = await notices.receive()
            assert first.topic == CONNECTED
            started = trio.current_time()
            await writer.commit(Change(puts=[Gateway(id="a", name="a")]))
            with trio.fail_after(1):  # the bound; in practice a few ms
                notice = await notices.receive()
            assert notice.topic == CONFIG and notice.data["version"] == 1
            assert trio.current_time() - started < 1
            await writer.commit(Change(puts=[Gateway(id="b", name="b")]))
            with trio.fail_after(1):
                assert (await notices.receive()).data["version"] == 2


@bounded
async def test_a_published_notice_reaches_every_process_on_the_store(backend: Backend):
    async with backend.open() as publisher, backend.open() as listener:
        async with listener.notices() as notices:
            assert (await notices.receive()).topic == CONNECTED
            started = trio.current_time()
            await publisher.publish("ejection", {"target": "t1", "until": 12.5})
            with trio.fail_after(1):  # the bound shared health states
                notice = await notices.receive()
            assert notice.topic == "ejection"
            assert dict(notice.data) == {"target": "t1", "until": 12.5}
            print(
                f"{backend.name}: a published notice arrived in {trio.current_time() - started:.4f} s"
            )
