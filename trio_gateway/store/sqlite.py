"""The embedded default store: one SQLite file, kept off the event loop.

Theory of operation
-------------------
* One connection, used by one thread at a time: every call goes through
  ``trio.to_thread.run_sync`` under a ``trio.Lock``. The event loop never blocks
  on the disk.
* WAL journal with ``synchronous=FULL``: a commit returns only once it is on disk,
  so an acknowledged admin write survives ``kill -9`` and power loss alike. Each
  :class:`~trio_gateway.store.base.Change` is one transaction, so no entity is
  ever half-written.
* Entities are rows of ``(kind, id, gateway_id, name, body)``, ``body`` being the
  :data:`trio_gateway.serde.STORE` form as JSON. ``PRAGMA user_version`` is the
  schema version; :data:`MIGRATIONS` upgrades older files forward, one
  transaction per step, and a file from a newer version is refused, not guessed at.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from trio_gateway import serde
from trio_gateway.config.models import Entity, Kind
from trio_gateway.errors import ValidationFailed
from trio_gateway.store.base import Change, StoreCorrupt, StoreStatistics

DB_NAME = "trio-gateway.sqlite3"
CLOSE_TIMEOUT_S = 10.0


def _v1(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE entities (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            gateway_id TEXT,
            name TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (kind, id)
        )
        """
    )
    db.execute("CREATE INDEX entities_by_gateway ON entities (gateway_id, kind)")


#: Step ``n`` upgrades a version-``n`` file to version ``n + 1``.
MIGRATIONS: Sequence[Callable[[sqlite3.Connection], None]] = (_v1,)
SCHEMA_VERSION = len(MIGRATIONS)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreCorrupt(f"{path}: cannot use WAL journal mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        _migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreCorrupt(
            f"{path} has schema version {version}, newer than this trio-gateway "
            f"understands ({SCHEMA_VERSION}); upgrade trio-gateway or use another --data-dir"
        )
    for step in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {step + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


class SqliteStore:
    """See the module docstring. Open with :meth:`open`; do not construct directly."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path
        self._lock = trio.Lock()
        self._commits = 0
        self._entities = 0
        self._data_version: int | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, data_dir: Path) -> AsyncIterator[SqliteStore]:
        path = Path(data_dir) / DB_NAME
        db = await trio.to_thread.run_sync(_connect, path)
        try:
            yield cls(db, path)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await trio.to_thread.run_sync(db.close)

    async def load(self) -> list[Entity]:
        async with self._lock:
            rows = await trio.to_thread.run_sync(self._load_rows)
        entities = []
        for kind_name, entity_id, body in rows:
            try:
                kind = Kind(kind_name)
                entity = serde.structure(json.loads(body), kind.model, converter=serde.STORE)
            except (ValueError, ValidationFailed) as exc:
                raise StoreCorrupt(
                    f"{self._path}: cannot read {kind_name} {entity_id}: {exc}"
                ) from exc
            entities.append(entity)
        self._entities = len(entities)
        return entities

    def _load_rows(self) -> list[tuple[str, str, str]]:
        self._data_version = self._version()
        return self._db.execute("SELECT kind, id, body FROM entities ORDER BY rowid").fetchall()

    def _version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    async def changed(self) -> bool:
        """Has another process committed since our last :meth:`load` or :meth:`changed`?

        SQLite's ``data_version`` moves only for commits made by *other* connections,
        so a process's own writes never wake it.
        """
        async with self._lock:
            version = await trio.to_thread.run_sync(self._version)
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        return changed

    async def commit(self, change: Change) -> None:
        rows = [
            (
                Kind.of(entity).value,
                entity.id,
                getattr(entity, "gateway_id", None),
                entity.name,
                json.dumps(serde.STORE.unstructure(entity), separators=(",", ":")),
            )
            for entity in change.puts
        ]
        deletes = [(kind.value, entity_id) for kind, entity_id in change.deletes]
        async with self._lock:
            self._entities = await trio.to_thread.run_sync(self._commit_rows, rows, deletes)
            self._commits += 1

    def _commit_rows(self, rows: list[tuple], deletes: list[tuple[str, str]]) -> int:
        """Write one batch in one transaction; return how many entities the file now holds."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO entities (kind, id, gateway_id, name, body)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            self._db.executemany("DELETE FROM entities WHERE kind = ? AND id = ?", deletes)
            count = self._db.execute("SELECT count(*) FROM entities").fetchone()[0]
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return count

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            kind="sqlite",
            location=str(self._path),
            schema_version=SCHEMA_VERSION,
            commits=self._commits,
            entities=self._entities,
        )
