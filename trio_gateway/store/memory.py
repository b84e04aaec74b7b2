"""A store that forgets on exit: for tests and throw-away runs.

It keeps serialized copies, exactly as the SQLite store does, so that a test
against it catches an entity that cannot round-trip. It versions, conditions
and notifies like the shared stores, without threads: several catalogs on one
``MemoryStore`` behave like several instances on one database, in virtual
time: :meth:`MemoryStore.connect` gives another handle on the same data (an
instance of its own), and :meth:`MemoryStore.set_outage` makes one handle lose
the store, as an instance whose database went away.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import trio

from trio_gateway import serde
from trio_gateway.config.models import Entity, Kind
from trio_gateway.core.limits import BUCKET, LimitGrant, LimitOp, LimitRow, apply_op
from trio_gateway.core.usage import UsageRow
from trio_gateway.store.base import (
    CONFIG,
    CONNECTED,
    DISCONNECTED,
    Change,
    Changes,
    LimitRows,
    Notice,
    StaleVersion,
    StoreStatistics,
    StoreStatus,
    StoreUnavailable,
)


class _Data:
    """What the handles of one memory store share: the rows, the version, the wake-up."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        #: The store's clock for limit rows: Trio's (virtual in tests) unless given.
        self.clock = clock or trio.current_time
        self.limits: dict[str, LimitRow] = {}
        self.usage: dict[tuple[str, str, str], UsageRow] = {}
        self.rows: dict[tuple[Kind, str], tuple[int, str]] = {}
        self.tombstones: dict[tuple[Kind, str], int] = {}
        self.version = 0
        #: Published notices, in order (a test-sized store: never pruned).
        self.published: list[Notice] = []
        self.changed = trio.Event()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class MemoryStore:
    def __init__(
        self, data: _Data | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self._data = data or _Data(clock)
        self._commits = 0
        self._status = StoreStatus()

    def connect(self) -> MemoryStore:
        """Another handle on the same data, with its own reachability."""
        return MemoryStore(self._data)

    def set_outage(self, error: str | None) -> None:
        """Make every call of this handle fail with ``error`` (``None``: reachable again)."""
        self._status = StoreStatus(error is None, error, time.time())
        self._data.wake()

    def _check(self) -> None:
        if not self._status.available:
            raise StoreUnavailable(f"the configuration store is unreachable: {self._status.error}")

    async def read(self, since: int | None = None) -> Changes:
        await trio.lowlevel.checkpoint()
        self._check()
        data = self._data
        if since is None or since > data.version:
            return Changes(
                data.version, [self._entity(k, body) for k, (_, body) in data.rows.items()]
            )
        return Changes(
            data.version,
            puts=[self._entity(k, body) for k, (v, body) in data.rows.items() if v > since],
            deletes=[key for key, v in data.tombstones.items() if v > since],
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
        return self._data.version

    async def commit(self, change: Change, *, base_version: int | None = None) -> int:
        await trio.lowlevel.checkpoint()
        self._check()
        data = self._data
        if base_version is not None and base_version != data.version:
            raise StaleVersion(base_version, data.version)
        version = data.version + 1
        rows = dict(data.rows)
        tombstones = dict(data.tombstones)
        for entity in change.puts:
            key = (Kind.of(entity), entity.id)
            rows[key] = (version, json.dumps(serde.STORE.unstructure(entity)))
            tombstones.pop(key, None)
        for key in change.deletes:
            if rows.pop(key, None) is not None:
                tombstones[key] = version
        data.rows, data.tombstones, data.version = rows, tombstones, version
        self._commits += 1
        data.wake()
        return version

    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        """Send a notice to every handle (this one too), as the shared stores do."""
        await trio.lowlevel.checkpoint()
        self._check()
        self._data.published.append(Notice(topic, dict(data)))
        self._data.wake()

    @trio.as_safe_channel
    async def notices(self) -> AsyncIterator[Notice]:
        """``connected``, then a ``config`` notice per commit (coalesced), outages as they come.

        Commits made while this handle is cut off are not announced when it comes
        back: only ``connected`` is, as a database listener would.
        """
        available = None
        seen = self._data.version
        heard = len(self._data.published)
        while True:
            changed = self._data.changed
            if self._status.available != available:
                available = self._status.available
                if available:
                    # As with a real listener: what was committed meanwhile was not heard.
                    seen = self._data.version
                    yield Notice(CONNECTED)
                else:
                    yield Notice(DISCONNECTED, {"error": self._status.error})
            if available and self._data.version != seen:
                seen = self._data.version
                yield Notice(CONFIG, {"version": seen})
            published = self._data.published
            if available:
                for notice in published[heard:]:
                    yield notice
            heard = len(published)
            await changed.wait()

    # --- limits and usage -------------------------------------------------------------

    async def exchange_limits(
        self, ops: Sequence[LimitOp], usage: Sequence[UsageRow] = ()
    ) -> list[LimitGrant]:
        await trio.lowlevel.checkpoint()
        self._check()
        data = self._data
        now = data.clock()
        grants = []
        for op in ops:
            data.limits[op.scope], grant = apply_op(op, data.limits.get(op.scope), now)
            grants.append(grant)
        for row in usage:
            index = (row.key_id, row.model, row.day)
            found = data.usage.get(index)
            data.usage[index] = row if found is None else found + row
        return grants

    async def read_limits(self, scopes: Sequence[str]) -> LimitRows:
        await trio.lowlevel.checkpoint()
        self._check()
        rows = self._data.limits
        return LimitRows({s: rows[s] for s in scopes if s in rows}, self._data.clock())

    async def read_usage(
        self, key_id: str, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        await trio.lowlevel.checkpoint()
        self._check()
        return sorted(
            (
                row
                for (key, _, day), row in self._data.usage.items()
                if key == key_id
                and (since is None or day >= since)
                and (until is None or day <= until)
            ),
            key=lambda r: (r.day, r.model),
        )

    async def prune_limits(self, idle_s: float) -> int:
        await trio.lowlevel.checkpoint()
        self._check()
        now = self._data.clock()
        old = [
            scope
            for scope, row in self._data.limits.items()
            if row.kind == BUCKET and row.at < now - idle_s
        ]
        for scope in old:
            del self._data.limits[scope]
        return len(old)

    def status(self) -> StoreStatus:
        return self._status

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            kind="memory",
            location=":memory:",
            schema_version=0,
            commits=self._commits,
            entities=len(self._data.rows),
            version=self._data.version,
        )
