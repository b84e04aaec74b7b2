"""Configuration stores: SQLite (the embedded default), PostgreSQL (shared), memory (tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from trio_gateway.store.base import (
    CONFIG,
    CONNECTED,
    DISCONNECTED,
    Change,
    Changes,
    LimitRows,
    Notice,
    StaleVersion,
    Store,
    StoreCorrupt,
    StoreStatistics,
    StoreStatus,
    StoreUnavailable,
)
from trio_gateway.store.memory import MemoryStore
from trio_gateway.store.sqlite import SqliteStore

__all__ = [
    "CONFIG",
    "CONNECTED",
    "DISCONNECTED",
    "Change",
    "Changes",
    "LimitRows",
    "MemoryStore",
    "Notice",
    "SqliteStore",
    "StaleVersion",
    "Store",
    "StoreCorrupt",
    "StoreStatistics",
    "StoreStatus",
    "StoreUnavailable",
    "open_store",
]


@asynccontextmanager
async def open_store(data_dir: Path | None, url: str | None = None) -> AsyncIterator[Store]:
    """PostgreSQL at ``url`` if given, else SQLite in ``data_dir``, else a memory store.

    Opening a persistent store applies its migrations (forward only, locked).
    """
    if url is not None:
        from trio_gateway.store.postgres import PostgresStore

        async with PostgresStore.open(url) as store:
            yield store
        return
    if data_dir is None:
        yield MemoryStore()
        return
    async with SqliteStore.open(data_dir) as store:
        yield store
