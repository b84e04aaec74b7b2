"""What a configuration store must do: versioned reads, conditional commits, notices.

The running process keeps the whole configuration in memory (see
:mod:`trio_gateway.config.catalog`); the store makes it durable and shares it
between processes. Every commit bumps one integer, the **configuration
version**, and the store can say what changed since any version:

* :meth:`Store.read` with ``since=None`` is a full load; with ``since=v`` it
  returns only the entities written and the ids deleted after version ``v``
  (or a full load when the store no longer remembers that far back, or went
  back in time, as after a restore from backup);
* :meth:`Store.commit` writes a batch all-or-nothing and returns only once it
  is durable. With ``base_version`` it is conditional: it refuses with
  :class:`StaleVersion` when another process committed since, so a write
  validated against an old configuration never lands on a newer one;
* :meth:`Store.notices` yields :class:`Notice` messages as other processes
  commit (``topic="config"``), plus ``connected``/``disconnected`` when the
  link to a shared store comes and goes. A notice is only a wake-up: the
  version tells what to read, so a lost notice costs latency, never
  correctness. Unknown topics are for newer versions of the gateway and must be
  ignored, which is what lets new kinds of message ride on the same channel;
* :meth:`Store.status` says whether the store is reachable now. A store that
  knows it cannot write refuses at once with :class:`StoreUnavailable` (503).

Beside the configuration, the store keeps what API keys spend (docs/keys.md):

* :meth:`Store.exchange_limits` applies a batch of
  :class:`~trio_gateway.core.limits.LimitOp` to the shared limit rows (token
  buckets and budget counters) and adds a batch of usage rows, in one
  transaction, with the arithmetic of :func:`~trio_gateway.core.limits.apply_op`
  at the store's own clock (PostgreSQL's: instances' clocks need not agree);
* :meth:`Store.read_usage` and :meth:`Store.read_limits` read them back (the usage
  endpoint).

These are not configuration: they do not bump the version, send no notice, and
are committed without waiting for the disk (a crash may lose the last moments of
them, never the configuration).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import attrs

from trio_gateway.config.models import Entity, Kind
from trio_gateway.core.limits import LimitGrant, LimitOp, LimitRow
from trio_gateway.core.usage import UsageRow
from trio_gateway.errors import ServiceUnavailable

#: A notice that another process committed; ``data["version"]`` is the new version.
CONFIG = "config"
#: The link to the store (re)opened: notices may have been missed, read by version.
CONNECTED = "connected"
#: The link to the store broke; ``data["error"]`` says why.
DISCONNECTED = "disconnected"


@attrs.frozen
class Change:
    """A batch: entities to insert or overwrite, and (kind, id) pairs to remove."""

    puts: Sequence[Entity] = ()
    deletes: Sequence[tuple[Kind, str]] = ()

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


@attrs.frozen
class Changes:
    """What :meth:`Store.read` returns: the store at ``version``, whole or as a delta.

    ``complete``: ``puts`` is the whole configuration and ``deletes`` is empty
    (a full load). Otherwise ``puts`` are the entities written and ``deletes``
    the ids removed after the version asked for; the two never overlap.
    """

    version: int
    puts: Sequence[Entity] = ()
    deletes: Sequence[tuple[Kind, str]] = ()
    complete: bool = True


@attrs.frozen
class Notice:
    """One message from the store's notification channel. See the module docstring."""

    topic: str
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class StoreStatus:
    """Whether the store is reachable, as last seen; ``since`` is a wall-clock epoch."""

    available: bool = True
    error: str | None = None
    since: float | None = None


@attrs.frozen
class LimitRows:
    """Shared limit rows by scope (missing: never used), and the store's clock when read."""

    rows: Mapping[str, LimitRow]
    now: float


@attrs.frozen
class StoreStatistics:
    kind: str
    location: str
    schema_version: int
    commits: int
    entities: int
    version: int = 0


class StoreCorrupt(Exception):
    """The store holds something this version cannot read; the message names it."""


class StaleVersion(Exception):
    """A conditional commit found the store at a newer version than its base."""

    def __init__(self, base: int, current: int) -> None:
        super().__init__(f"the store is at version {current}, not {base}")
        self.base = base
        self.current = current


def is_postgres_url(location: str) -> bool:
    """Whether ``location`` names the PostgreSQL store (else it is a SQLite directory)."""
    return location.startswith(("postgresql://", "postgres://"))


class StoreUnavailable(ServiceUnavailable):
    """The store cannot be reached: writes are refused, reads serve the last configuration."""

    type = "store_unavailable"


class Store(Protocol):
    async def read(self, since: int | None = None) -> Changes: ...

    async def load(self) -> list[Entity]:
        """Every entity (a full :meth:`read`)."""
        ...

    async def commit(self, change: Change, *, base_version: int | None = None) -> int:
        """Write ``change`` durably; return the new version. See the module docstring."""
        ...

    async def version(self) -> int:
        """The store's current version: one cheap query."""
        ...

    def notices(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Notice]]:
        """``async with store.notices() as notices: async for notice in notices: ...``"""
        ...

    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        """Send a notice of ``topic`` to every process on this store, this one included."""
        ...

    async def exchange_limits(
        self, ops: Sequence[LimitOp], usage: Sequence[UsageRow] = ()
    ) -> list[LimitGrant]:
        """Apply ``ops`` (in order) and add ``usage``, in one transaction; a grant per op."""
        ...

    async def read_limits(self, scopes: Sequence[str]) -> LimitRows: ...

    async def read_usage(
        self, key_id: str, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        """The usage rows of ``key_id`` with ``since <= day <= until`` (``YYYY-MM-DD``)."""
        ...

    async def prune_limits(self, idle_s: float) -> int:
        """Forget buckets untouched for ``idle_s`` seconds (they are full); return how many."""
        ...

    def status(self) -> StoreStatus: ...

    def statistics(self) -> StoreStatistics: ...
