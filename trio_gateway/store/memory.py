"""A store that forgets on exit: for tests and throw-away runs.

It keeps serialized copies, exactly as the SQLite store does, so that a test
against it catches an entity that cannot round-trip. It versions, conditions
and notifies like the shared stores, without threads: several catalogs on one
``MemoryStore`` behave like several instances on one database, in virtual
time. :meth:`MemoryStore.set_outage` makes it unreachable, as a database that
went away.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import trio

from trio_gateway import serde
from trio_gateway.config.models import Entity, Kind
from trio_gateway.store.base import (
    CONFIG,
    CONNECTED,
    DISCONNECTED,
    Change,
    Changes,
    Notice,
    StaleVersion,
    StoreStatistics,
    StoreStatus,
    StoreUnavailable,
)


class MemoryStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[Kind, str], tuple[int, str]] = {}
        self._tombstones: dict[tuple[Kind, str], int] = {}
        self._version = 0
        self._commits = 0
        self._status = StoreStatus()
        self._changed = trio.Event()

    def set_outage(self, error: str | None) -> None:
        """Make every call fail with ``error`` (``None``: reachable again)."""
        self._status = StoreStatus(error is None, error, time.time())
        self._wake()

    def _check(self) -> None:
        if not self._status.available:
            raise StoreUnavailable(f"the configuration store is unreachable: {self._status.error}")

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def read(self, since: int | None = None) -> Changes:
        await trio.lowlevel.checkpoint()
        self._check()
        if since is None or since > self._version:
            return Changes(
                self._version, [self._entity(k, body) for k, (_, body) in self._rows.items()]
            )
        return Changes(
            self._version,
            puts=[self._entity(k, body) for k, (v, body) in self._rows.items() if v > since],
            deletes=[key for key, v in self._tombstones.items() if v > since],
            complete=False,
        )

    @staticmethod
    def _entity(key: tuple[Kind, str], body: str) -> Entity:
        return serde.structure(json.loads(body), key[0].model, converter=serde.STORE)

    async def load(self) -> list[Entity]:
        return list((await self.read()).puts)

    async def version(self) -> int:
        await trio.lowlevel.checkpoint()
        self._check()
        return self._version

    async def commit(self, change: Change, *, base_version: int | None = None) -> int:
        await trio.lowlevel.checkpoint()
        self._check()
        if base_version is not None and base_version != self._version:
            raise StaleVersion(base_version, self._version)
        version = self._version + 1
        rows = dict(self._rows)
        tombstones = dict(self._tombstones)
        for entity in change.puts:
            key = (Kind.of(entity), entity.id)
            rows[key] = (version, json.dumps(serde.STORE.unstructure(entity)))
            tombstones.pop(key, None)
        for key in change.deletes:
            if rows.pop(key, None) is not None:
                tombstones[key] = version
        self._rows, self._tombstones, self._version = rows, tombstones, version
        self._commits += 1
        self._wake()
        return version

    @trio.as_safe_channel
    async def notices(self) -> AsyncIterator[Notice]:
        """``connected``, then a ``config`` notice per commit (coalesced), outages as they come."""
        available = None
        seen = self._version
        while True:
            changed = self._changed
            if self._status.available != available:
                available = self._status.available
                if available:
                    yield Notice(CONNECTED)
                else:
                    yield Notice(DISCONNECTED, {"error": self._status.error})
            if available and self._version != seen:
                seen = self._version
                yield Notice(CONFIG, {"version": seen})
            await changed.wait()

    def status(self) -> StoreStatus:
        return self._status

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            kind="memory",
            location=":memory:",
            schema_version=0,
            commits=self._commits,
            entities=len(self._rows),
            version=self._version,
        )
