"""What a configuration store must do: load everything, commit a batch atomically.

The running process keeps the whole configuration in memory (see
:mod:`trio_gateway.config.catalog`); the store only makes it durable. So the
protocol is two calls: :meth:`Store.load` at start, :meth:`Store.commit` on each
admin write. ``commit`` returns only once the batch is durable, and a batch is
all-or-nothing: a crash mid-commit leaves the previous state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from trio_gateway.config.models import Entity, Kind


@attrs.frozen
class Change:
    """A batch: entities to insert or overwrite, and (kind, id) pairs to remove."""

    puts: Sequence[Entity] = ()
    deletes: Sequence[tuple[Kind, str]] = ()

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


@attrs.frozen
class StoreStatistics:
    kind: str
    location: str
    schema_version: int
    commits: int
    entities: int


class StoreCorrupt(Exception):
    """The store holds something this version cannot read; the message names it."""


class Store(Protocol):
    async def load(self) -> list[Entity]: ...

    async def commit(self, change: Change) -> None: ...

    async def changed(self) -> bool:
        """Whether another process wrote to the store since this one last looked."""
        ...

    def statistics(self) -> StoreStatistics: ...
