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
* Entities are rows of ``(kind, id, gateway_id, name, body, version)``, ``body``
  being the :data:`trio_gateway.serde.STORE` form as JSON and ``version`` the
  configuration version that last wrote it. A delete leaves a tombstone
  ``(kind, id, version)``; the ``state`` row holds the current version and the
  *horizon*, below which tombstones have been pruned (a reader that old gets a
  full load). ``BEGIN IMMEDIATE`` serializes writers, so versions follow commit
  order and a read transaction sees exactly the versions up to ``state.version``.
* ``PRAGMA user_version`` is the schema version; :data:`MIGRATIONS` upgrade older
  files forward in one ``BEGIN IMMEDIATE`` transaction (the lock: two processes
  opening a file at once migrate it once), and a file from a newer version is
  refused, not guessed at.
* Published notices (:meth:`SqliteStore.publish`: shared ejections) go in a small
  ``notices`` table, kept :data:`NOTICES_KEPT_S` seconds, and ring the same bell;
  each process tails it by sequence number.
* Limits and usage (:meth:`SqliteStore.exchange_limits`): tables ``limits`` (a
  row per shared bucket or budget counter) and ``usage`` (per key, model and
  day), written in one ``BEGIN IMMEDIATE`` transaction per exchange, so the
  ``--workers`` processes on one file share every key's limits exactly. These
  transactions run with ``synchronous=NORMAL`` (committed to the WAL, synced at
  the next checkpoint): a power loss may forget the last moments of usage, never
  the configuration.
* Notices: after each commit the writer rewrites a small *doorbell* file beside
  the database (``trio-gateway.notify``, holding the version). Every process
  using the directory watches it with inotify (:mod:`.filewatch`) and learns of
  the commit at once: ``--workers`` children, another ``serve`` on the same
  directory, a ``trio-gateway import`` into a running installation. The bell is
  rung after the commit returns, so the commit is visible by then. Where inotify
  is missing, :meth:`SqliteStore.notices` polls the version every
  :data:`POLL_INTERVAL_S` instead.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio

from trio_gateway import serde
from trio_gateway.config.models import Entity, Kind
from trio_gateway.core.limits import BUCKET, LimitGrant, LimitOp, LimitRow, apply_op
from trio_gateway.core.usage import UsageRow
from trio_gateway.errors import ValidationFailed
from trio_gateway.store.base import (
    CONFIG,
    CONNECTED,
    Change,
    Changes,
    LimitRows,
    Notice,
    StaleVersion,
    StoreCorrupt,
    StoreStatistics,
    StoreStatus,
)
from trio_gateway.store.filewatch import watch_directory

DB_NAME = "trio-gateway.sqlite3"
BELL_NAME = "trio-gateway.notify"
CLOSE_TIMEOUT_S = 10.0
#: How often :meth:`SqliteStore.notices` reads the version where inotify is missing.
POLL_INTERVAL_S = 0.5
#: Tombstones are kept for this many versions; a reader further behind reloads fully.
TOMBSTONES_KEPT = 10_000
#: Published notices are kept this long (seconds): enough for every process to read them.
NOTICES_KEPT_S = 60.0


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


def _v2(db: sqlite3.Connection) -> None:
    """Configuration versions: a version per row, tombstones, the state row."""
    db.execute("ALTER TABLE entities ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX entities_by_version ON entities (version)")
    db.execute(
        """
        CREATE TABLE tombstones (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (kind, id)
        )
        """
    )
    db.execute("CREATE INDEX tombstones_by_version ON tombstones (version)")
    db.execute(
        """
        CREATE TABLE state (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            version INTEGER NOT NULL,
            horizon INTEGER NOT NULL
        )
        """
    )
    db.execute("INSERT INTO state VALUES (1, 0, 0)")


def _v3(db: sqlite3.Connection) -> None:
    """Notices other than commits (shared ejections): a short log, tailed by sequence."""
    db.execute(
        """
        CREATE TABLE notices (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            body TEXT NOT NULL
        )
        """
    )


def _v4(db: sqlite3.Connection) -> None:
    """Per-key limits (shared buckets and budget counters) and usage per key, model and day."""
    db.execute(
        """
        CREATE TABLE limits (
            scope TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            value REAL NOT NULL,
            at REAL NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE usage (
            key_id TEXT NOT NULL,
            gateway_id TEXT NOT NULL,
            model TEXT NOT NULL,
            day TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            cost REAL NOT NULL DEFAULT 0,
            refused INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, day, model)
        )
        """
    )


#: Step ``n`` upgrades a version-``n`` file to version ``n + 1``.
MIGRATIONS: Sequence[Callable[[sqlite3.Connection], None]] = (_v1, _v2, _v3, _v4)
SCHEMA_VERSION = len(MIGRATIONS)


def _connect(path: Path) -> tuple[sqlite3.Connection, int]:
    """Open, configure and migrate; return the connection and the version migrated from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreCorrupt(f"{path}: cannot use WAL journal mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        found = _migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db, found


def _migrate(db: sqlite3.Connection, path: Path) -> int:
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(
                f"{path} has schema version {version}, newer than this trio-gateway "
                f"understands ({SCHEMA_VERSION}); upgrade trio-gateway or use another --data-dir"
            )
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return version


class SqliteStore:
    """See the module docstring. Open with :meth:`open`; do not construct directly."""

    def __init__(self, db: sqlite3.Connection, path: Path, migrated_from: int) -> None:
        self._db = db
        self._path = path
        self._lock = trio.Lock()
        self._commits = 0
        self._entities = 0
        self._version = 0
        #: The schema version the file had when opened (0: it was created).
        self.migrated_from = migrated_from

    @classmethod
    @asynccontextmanager
    async def open(cls, data_dir: Path) -> AsyncIterator[SqliteStore]:
        path = Path(data_dir) / DB_NAME
        db, found = await trio.to_thread.run_sync(_connect, path)
        try:
            yield cls(db, path, found)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await trio.to_thread.run_sync(db.close)

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    # --- reads ----------------------------------------------------------------------

    async def read(self, since: int | None = None) -> Changes:
        version, complete, rows, deletes = await self._run(self._read_rows, since)
        puts = [self._structure(kind, entity_id, body) for kind, entity_id, body in rows]
        if complete:
            self._entities = len(puts)
        self._version = version
        return Changes(
            version,
            puts,
            [(Kind(kind), entity_id) for kind, entity_id in deletes],
            complete,
        )

    def _read_rows(self, since: int | None) -> tuple[int, bool, list, list]:
        self._db.execute("BEGIN")
        try:
            version, horizon = self._db.execute("SELECT version, horizon FROM state").fetchone()
            if since is None or since < horizon or since > version:
                rows = self._db.execute(
                    "SELECT kind, id, body FROM entities ORDER BY rowid"
                ).fetchall()
                return version, True, rows, []
            rows = self._db.execute(
                "SELECT kind, id, body FROM entities WHERE version > ? ORDER BY rowid", (since,)
            ).fetchall()
            deletes = self._db.execute(
                "SELECT kind, id FROM tombstones WHERE version > ?", (since,)
            ).fetchall()
            return version, False, rows, deletes
        finally:
            self._db.execute("COMMIT")

    def _structure(self, kind_name: str, entity_id: str, body: str) -> Entity:
        try:
            kind = Kind(kind_name)
            return serde.structure(json.loads(body), kind.model, converter=serde.STORE)
        except (ValueError, ValidationFailed) as exc:
            raise StoreCorrupt(f"{self._path}: cannot read {kind_name} {entity_id}: {exc}") from exc

    async def load(self) -> list[Entity]:
        return list((await self.read()).puts)

    async def version(self) -> int:
        self._version = await self._run(self._read_version)
        return self._version

    def _read_version(self) -> int:
        return self._db.execute("SELECT version FROM state").fetchone()[0]

    # --- writes ---------------------------------------------------------------------

    async def commit(self, change: Change, *, base_version: int | None = None) -> int:
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
        version, self._entities = await self._run(self._commit_rows, rows, deletes, base_version)
        self._version = version
        self._commits += 1
        return version

    def _commit_rows(
        self, rows: list[tuple], deletes: list[tuple[str, str]], base: int | None
    ) -> tuple[int, int]:
        """Write one batch in one transaction; return the new version and the entity count."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            current, horizon = db.execute("SELECT version, horizon FROM state").fetchone()
            if base is not None and base != current:
                raise StaleVersion(base, current)
            version = current + 1
            db.executemany(
                "INSERT OR REPLACE INTO entities (kind, id, gateway_id, name, body, version)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(*row, version) for row in rows],
            )
            db.executemany(
                "DELETE FROM tombstones WHERE kind = ? AND id = ?", [row[:2] for row in rows]
            )
            for key in deletes:
                if db.execute("DELETE FROM entities WHERE kind = ? AND id = ?", key).rowcount:
                    db.execute(
                        "INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", (*key, version)
                    )
            if version - TOMBSTONES_KEPT > horizon:
                horizon = version - TOMBSTONES_KEPT
                db.execute("DELETE FROM tombstones WHERE version <= ?", (horizon,))
            db.execute("UPDATE state SET version = ?, horizon = ?", (version, horizon))
            count = db.execute("SELECT count(*) FROM entities").fetchone()[0]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._ring(version)
        return version, count

    def _ring(self, version: int) -> None:
        """Tell the other processes on this directory (best effort: they also poll)."""
        with suppress(OSError):
            (self._path.parent / BELL_NAME).write_text(f"{version}\n")

    # --- notices --------------------------------------------------------------------

    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        """Send ``{"topic": topic, **data}`` to every process on this directory (this one too)."""
        body = json.dumps({"topic": topic, **data}, separators=(",", ":"))
        await self._run(self._publish_row, body)
        self._ring(self._version)

    def _publish_row(self, body: str) -> None:
        db = self._db
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO notices (at, body) VALUES (?, ?)", (now, body))
            db.execute("DELETE FROM notices WHERE at < ?", (now - NOTICES_KEPT_S,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _read_notices(self, after: int | None) -> tuple[int, list[str]]:
        """The notices published after sequence ``after`` (``None``: none, just the last seq)."""
        last = self._db.execute("SELECT coalesce(max(seq), 0) FROM notices").fetchone()[0]
        if after is None or last <= after:
            return last, []
        rows = self._db.execute(
            "SELECT body FROM notices WHERE seq > ? ORDER BY seq", (after,)
        ).fetchall()
        return last, [body for (body,) in rows]

    @trio.as_safe_channel
    async def notices(self) -> AsyncIterator[Notice]:
        """``connected``, then a ``config`` notice whenever the version moves, and what
        is published, as it comes."""
        async with watch_directory(self._path.parent) as watch:
            seen = await self.version()
            tail, _ = await self._run(self._read_notices, None)
            yield Notice(CONNECTED, {"version": seen})
            while True:
                if watch is None:
                    await trio.sleep(POLL_INTERVAL_S)
                elif BELL_NAME not in await watch.wait():
                    continue
                version = await self.version()
                if version != seen:
                    seen = version
                    yield Notice(CONFIG, {"version": version})
                tail, bodies = await self._run(self._read_notices, tail)
                for body in bodies:
                    try:
                        data = json.loads(body)
                        topic = data.pop("topic")
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue
                    if isinstance(topic, str):
                        yield Notice(topic, data)

    # --- limits and usage -------------------------------------------------------------

    async def exchange_limits(
        self, ops: Sequence[LimitOp], usage: Sequence[UsageRow] = ()
    ) -> list[LimitGrant]:
        if not ops and not usage:
            return []
        return await self._run(self._exchange, list(ops), list(usage))

    def _exchange(self, ops: list[LimitOp], usage: list[UsageRow]) -> list[LimitGrant]:
        db = self._db
        db.execute("PRAGMA synchronous = NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                rows = self._limit_rows(sorted({op.scope for op in ops}))
                grants = []
                for op in ops:
                    rows[op.scope], grant = apply_op(op, rows.get(op.scope), now)
                    grants.append(grant)
                db.executemany(
                    "INSERT OR REPLACE INTO limits (scope, kind, value, at) VALUES (?, ?, ?, ?)",
                    [(r.scope, r.kind, r.value, r.at) for r in rows.values()],
                )
                db.executemany(
                    """
                    INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (key_id, day, model) DO UPDATE SET
                        requests = requests + excluded.requests,
                        input_tokens = input_tokens + excluded.input_tokens,
                        output_tokens = output_tokens + excluded.output_tokens,
                        cached_tokens = cached_tokens + excluded.cached_tokens,
                        cost = cost + excluded.cost,
                        refused = refused + excluded.refused
                    """,
                    [row.values() for row in usage],
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA synchronous = FULL")
        return grants

    def _limit_rows(self, scopes: list[str]) -> dict[str, LimitRow]:
        found: dict[str, LimitRow] = {}
        for i in range(0, len(scopes), 500):  # SQLite's limit on bound parameters
            chunk = scopes[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for scope, kind, value, at in self._db.execute(
                f"SELECT scope, kind, value, at FROM limits WHERE scope IN ({marks})", chunk
            ):
                found[scope] = LimitRow(scope, kind, value, at)
        return found

    async def read_limits(self, scopes: Sequence[str]) -> LimitRows:
        def read() -> LimitRows:
            return LimitRows(self._limit_rows(sorted(set(scopes))), time.time())

        return await self._run(read)

    async def read_usage(
        self, key_id: str, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        def read() -> list[UsageRow]:
            rows = self._db.execute(
                "SELECT * FROM usage WHERE key_id = ? AND day >= ? AND day <= ?"
                " ORDER BY day, model",
                (key_id, since or "", until or "~"),
            ).fetchall()
            return [UsageRow(*row) for row in rows]

        return await self._run(read)

    async def prune_limits(self, idle_s: float) -> int:
        def prune() -> int:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                gone = db.execute(
                    "DELETE FROM limits WHERE kind = ? AND at < ?", (BUCKET, time.time() - idle_s)
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return gone

        return await self._run(prune)

    def status(self) -> StoreStatus:
        return StoreStatus()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            kind="sqlite",
            location=str(self._path),
            schema_version=SCHEMA_VERSION,
            commits=self._commits,
            entities=self._entities,
            version=self._version,
        )
