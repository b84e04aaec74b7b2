"""Configuration stores: SQLite (the embedded default) and memory (tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from trio_gateway.store.base import Change, Store, StoreCorrupt, StoreStatistics
from trio_gateway.store.memory import MemoryStore
from trio_gateway.store.sqlite import SqliteStore

__all__ = [
    "Change",
    "MemoryStore",
    "SqliteStore",
    "Store",
    "StoreCorrupt",
    "StoreStatistics",
    "open_store",
]


@asynccontextmanager
async def open_store(data_dir: Path | None) -> AsyncIterator[Store]:
    """The SQLite store in ``data_dir``, or a memory store when it is ``None``."""
    if data_dir is None:
        yield MemoryStore()
        return
    async with SqliteStore.open(data_dir) as store:
        yield store
