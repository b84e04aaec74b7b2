"""Following the store, in virtual time: notices, the safety net, outages and catch-up.

Several catalogs on one :class:`MemoryStore` (each on its own handle) stand for
several instances on one database; the memory store is thread-free, so
``autojump_clock`` runs all of it in virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trio_gateway.config.catalog import Catalog
from trio_gateway.config.models import Kind
from trio_gateway.serve import SAFETY_NET_S, follow_store
from trio_gateway.store import CONNECTED, MemoryStore, Notice, StoreUnavailable


@asynccontextmanager
async def instances(store: MemoryStore, n: int) -> AsyncIterator[list[Catalog]]:
    """``n`` catalogs, each on its own handle of ``store``, each followed."""
    async with trio.open_nursery() as nursery:
        catalogs = [await Catalog.load(store.connect()) for _ in range(n)]
        for catalog in catalogs:
            await nursery.start(follow_store, catalog)
        yield catalogs
        nursery.cancel_scope.cancel()


async def test_a_write_reaches_the_other_instance_through_its_notice(autojump_clock):
    async with instances(MemoryStore(), 2) as (a, b):
        start, generation = trio.current_time(), b.snapshot.generation
        gateway = await a.create(Kind.GATEWAY, {"name": "g"})
        with trio.fail_after(SAFETY_NET_S / 4):  # far sooner than the safety net
            await b.wait_changed(generation)
        assert gateway.id in b.snapshot.gateways and b.version == a.version == 1
        assert trio.current_time() - start < SAFETY_NET_S / 4
        await a.delete(Kind.GATEWAY, gateway.id)
        await b.wait_changed(b.snapshot.generation)
        assert b.snapshot.gateways == {}


class Deaf(MemoryStore):
    """A store whose notices say ``connected`` and then nothing: every notice is lost."""

    @trio.as_safe_channel
    async def notices(self) -> AsyncIterator[Notice]:
        yield Notice(CONNECTED)
        await trio.sleep_forever()


async def test_the_version_check_catches_up_when_notices_are_lost(autojump_clock):
    shared = MemoryStore()
    a = await Catalog.load(shared.connect())
    deaf = Deaf(shared._data)
    b = await Catalog.load(deaf)
    async with trio.open_nursery() as nursery:
        await nursery.start(follow_store, b)
        await trio.sleep(0.5)
        generation = b.snapshot.generation
        await a.create(Kind.GATEWAY, {"name": "g"})
        written = trio.current_time()
        await trio.sleep(0.1)
        assert b.version == 0  # no notice came
        with trio.fail_after(2 * SAFETY_NET_S):
            await b.wait_changed(generation)
        waited = trio.current_time() - written
        assert b.version == 1 and 0 < waited <= SAFETY_NET_S
        nursery.cancel_scope.cancel()


async def test_an_instance_that_lost_the_store_serves_on_refuses_writes_and_catches_up(
    autojump_clock,
):
    shared = MemoryStore()
    async with instances(shared, 2) as (a, b):
        generation = b.snapshot.generation
        gateway = await a.create(Kind.GATEWAY, {"name": "g"})
        await b.wait_changed(generation)
        b.store.set_outage("connection refused")
        with pytest.raises(StoreUnavailable, match="connection refused") as info:
            await b.create(Kind.GATEWAY, {"name": "from-b"})
        assert info.value.status == 503
        # Meanwhile A writes twice; B keeps serving what it had.
        await a.replace(Kind.GATEWAY, gateway.id, {"status": "inactive"})
        await a.create(Kind.GATEWAY, {"name": "second"})
        await trio.sleep(2.5 * SAFETY_NET_S)  # out of step with the version checks
        assert b.snapshot.gateways[gateway.id].status.value == "active" and b.version == 1
        # The store comes back: B catches up by version, without any notice of those writes.
        b.store.set_outage(None)
        generation = b.snapshot.generation
        with trio.fail_after(SAFETY_NET_S / 4):
            await b.wait_changed(generation)
        assert b.version == a.version == 3
        assert b.snapshot.entities == a.snapshot.entities
        generation = a.snapshot.generation
        await b.create(Kind.GATEWAY, {"name": "from-b"})
        await a.wait_changed(generation)
        assert {g.name for g in a.snapshot.gateways.values()} == {"g", "second", "from-b"}


async def test_writes_racing_on_two_instances_all_land_once(autojump_clock):
    """Each write is retried on the newer snapshot when the other instance got there first."""
    async with instances(MemoryStore(), 2) as (a, b):
        generation = b.snapshot.generation
        gateway = await a.create(Kind.GATEWAY, {"name": "g"})
        await b.wait_changed(generation)

        async def add(catalog: Catalog, prefix: str) -> None:
            for i in range(10):
                await catalog.create_api_key(gateway.id, {"name": f"{prefix}{i}"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, a, "a")
            nursery.start_soon(add, b, "b")
        await trio.sleep(0.1)
        assert a.version == b.version == 21
        assert len(a.snapshot.api_keys) == len(b.snapshot.api_keys) == 20
