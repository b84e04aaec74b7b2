"""A store that forgets on exit: for tests and throw-away runs.

It keeps serialized copies, exactly as the SQLite store does, so that a test
against it catches an entity that cannot round-trip.
"""

from __future__ import annotations

import json

import trio

from trio_gateway import serde
from trio_gateway.config.models import Entity, Kind
from trio_gateway.store.base import Change, StoreStatistics


class MemoryStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[Kind, str], str] = {}
        self._commits = 0

    async def load(self) -> list[Entity]:
        await trio.lowlevel.checkpoint()
        return [
            serde.structure(json.loads(body), kind.model, converter=serde.STORE)
            for (kind, _), body in self._rows.items()
        ]

    async def commit(self, change: Change) -> None:
        await trio.lowlevel.checkpoint()
        rows = dict(self._rows)
        for entity in change.puts:
            rows[Kind.of(entity), entity.id] = json.dumps(serde.STORE.unstructure(entity))
        for key in change.deletes:
            rows.pop(key, None)
        self._rows = rows
        self._commits += 1

    async def changed(self) -> bool:
        """Nobody else writes to a memory store."""
        await trio.lowlevel.checkpoint()
        return False

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            kind="memory",
            location=":memory:",
            schema_version=0,
            commits=self._commits,
            entities=len(self._rows),
        )
