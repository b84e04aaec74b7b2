"""The shared store: PostgreSQL, for several gateway instances with one configuration.

Theory of operation
-------------------
* **Off the event loop.** psycopg 3's synchronous API, every call in
  ``trio.to_thread.run_sync`` behind one ``trio.CapacityLimiter``
  (:data:`MAX_CONNECTIONS` threads, each with its own connection from a small
  idle list). The request path never touches the store: it reads the catalog's
  in-memory snapshot.
* **Same model as SQLite.** Tables ``tg_entities`` (a row per entity, its body as
  ``jsonb`` and the configuration ``version`` that last wrote it),
  ``tg_tombstones`` (deleted ids and the version that deleted them) and
  ``tg_state`` (the current version and the tombstone horizon). A commit locks
  the state row first (``SELECT ... FOR UPDATE``), so writers are serialized and
  versions follow commit order; a ``REPEATABLE READ`` read then sees exactly the
  versions up to the one in its snapshot, which is what makes reading by version
  correct while other instances write.
* **Durability.** A commit returns once PostgreSQL has committed it
  (``synchronous_commit`` is raised to ``on`` on our connections if the server
  default is ``off``); the catalog publishes only after that.
* **Migrations.** Forward only, numbered, recorded in ``tg_migrations``, all in
  one transaction under a transaction-scoped advisory lock: instances starting
  at once on an empty database migrate it once; the others wait, then find
  nothing to do. A schema newer than this code is refused.
* **Notices.** Each commit sends ``pg_notify`` in its own transaction (so a
  notice is delivered only if the commit is), on the channel
  ``trio_gateway.<schema>``, with a JSON payload ``{"topic": "config",
  "version": n}``. :meth:`PostgresStore.notices` keeps one dedicated connection
  listening: it waits for the socket in Trio (``wait_readable``: cancellable at
  once, no thread blocked in ``conn.notifies()`` to unstick on shutdown) and
  drains with a non-blocking ``notifies(timeout=0)`` in a thread. When that
  connection breaks it yields ``disconnected``, reconnects with backoff, and
  yields ``connected`` (the follower then catches up by version).
* **Limits and usage** (:meth:`PostgresStore.exchange_limits`): tables
  ``tg_limits`` (a row per shared bucket or budget counter) and ``tg_usage`` (per
  key, model and day). One transaction per exchange: missing rows are inserted
  first, then every row of the batch is locked in scope order (``FOR UPDATE``: two
  instances' exchanges on one key serialize, and cannot deadlock), the clock is
  read (the server's: instances' clocks need not agree), the arithmetic of
  :func:`~trio_gateway.core.limits.apply_op` applied, and the rows written back
  with the usage added. ``synchronous_commit`` is off for these transactions
  only: a server crash may lose their last moments, never the configuration.
* **Availability.** A connection-level failure of any call marks the store
  unavailable (:meth:`status`); any call that succeeds marks it available.
  While it is unavailable :meth:`commit` refuses at once with
  :class:`~trio_gateway.store.base.StoreUnavailable` (503); reads still try, so
  the follower's periodic version check and the listener find the database
  again when it returns.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from trio_gateway import serde
from trio_gateway.config.models import Entity, Kind
from trio_gateway.core.limits import BUCKET, LimitGrant, LimitOp, LimitRow, apply_op
from trio_gateway.core.usage import UsageRow
from trio_gateway.errors import ValidationFailed
from trio_gateway.store.base import (
    CONFIG,
    CONNECTED,
    DISCONNECTED,
    Change,
    Changes,
    LimitRows,
    Notice,
    StaleVersion,
    StoreCorrupt,
    StoreStatistics,
    StoreStatus,
    StoreUnavailable,
)

log = logging.getLogger("trio_gateway.store")

T = TypeVar("T")

#: Connections (and threads) used for queries at once; the listener has its own.
MAX_CONNECTIONS = 4
CONNECT_TIMEOUT_S = 3
CLOSE_TIMEOUT_S = 5.0
LISTEN_BACKOFF_S = (0.05, 0.5)
#: Tombstones are kept for this many versions; a reader further behind reloads fully.
TOMBSTONES_KEPT = 10_000
#: Libpq settings for every connection: bounded connects, dead peers found by keepalives.
CONNECTION_SETTINGS: Mapping[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "application_name": "trio-gateway",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
DISCONNECTS = (psycopg.OperationalError, psycopg.InterfaceError)


def _v1(cur: psycopg.Cursor) -> None:
    cur.execute(
        """
        CREATE TABLE tg_entities (
            kind text NOT NULL,
            id text NOT NULL,
            gateway_id text,
            name text NOT NULL,
            body jsonb NOT NULL,
            version bigint NOT NULL,
            PRIMARY KEY (kind, id)
        )
        """
    )
    cur.execute("CREATE INDEX tg_entities_by_version ON tg_entities (version)")
    cur.execute(
        """
        CREATE TABLE tg_tombstones (
            kind text NOT NULL,
            id text NOT NULL,
            version bigint NOT NULL,
            PRIMARY KEY (kind, id)
        )
        """
    )
    cur.execute("CREATE INDEX tg_tombstones_by_version ON tg_tombstones (version)")
    cur.execute(
        """
        CREATE TABLE tg_state (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            version bigint NOT NULL,
            horizon bigint NOT NULL
        )
        """
    )
    cur.execute("INSERT INTO tg_state (version, horizon) VALUES (0, 0)")


def _v2(cur: psycopg.Cursor) -> None:
    """Per-key limits (shared buckets and budget counters) and usage per key, model and day."""
    cur.execute(
        """
        CREATE TABLE tg_limits (
            scope text PRIMARY KEY,
            kind text NOT NULL,
            value double precision NOT NULL,
            at double precision NOT NULL
        )
        """
    )
    cur.execute(
        """
        CREATE TABLE tg_usage (
            key_id text NOT NULL,
            gateway_id text NOT NULL,
            model text NOT NULL,
            day text NOT NULL,
            requests bigint NOT NULL DEFAULT 0,
            input_tokens bigint NOT NULL DEFAULT 0,
            output_tokens bigint NOT NULL DEFAULT 0,
            cached_tokens bigint NOT NULL DEFAULT 0,
            cost double precision NOT NULL DEFAULT 0,
            refused bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, day, model)
        )
        """
    )


#: Step ``n`` upgrades a schema at version ``n`` to ``n + 1``.
MIGRATIONS: Sequence[Callable[[psycopg.Cursor], None]] = (_v1, _v2)
SCHEMA_VERSION = len(MIGRATIONS)


def display_location(conninfo: str) -> str:
    """``postgresql://user@host:port/db?options=...``: never the password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql://(invalid connection string)"
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    options = f"?options={params['options']}" if params.get("options") else ""
    return f"postgresql://{user}{params.get('host', '')}{port}/{params.get('dbname', '')}{options}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresStore:
    """See the module docstring. Open with :meth:`open`; do not construct directly."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = make_conninfo(conninfo, **CONNECTION_SETTINGS)
        self.location = display_location(conninfo)
        self._idle: list[psycopg.Connection] = []
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
        self._closed = False
        self._status = StoreStatus(True, None, time.time())
        self._commits = 0
        self._entities = 0
        self._version = 0
        self.schema = ""
        self.channel = ""
        #: The schema version found when opened (0: the schema was created).
        self.migrated_from = 0

    @classmethod
    @asynccontextmanager
    async def open(cls, conninfo: str) -> AsyncIterator[PostgresStore]:
        """Connect, migrate, and yield the store; :class:`StoreUnavailable` if unreachable."""
        store = cls(conninfo)
        try:
            store.schema, store.migrated_from = await store._run(store._migrate)
            store.channel = f"trio_gateway.{store.schema}"[:63]
            yield store
        finally:
            store._closed = True
            idle, store._idle = store._idle, []
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                for conn in idle:
                    await trio.to_thread.run_sync(conn.close, abandon_on_cancel=True)

    # --- connections ------------------------------------------------------------------

    def _connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(self._conninfo, autocommit=autocommit)
        try:
            if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
                conn.execute("SET synchronous_commit = on")
        except BaseException:
            conn.close()
            raise
        return conn

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """In a worker thread: run ``fn(conn, *args)`` on an idle or new connection.

        An idle connection is checked first: one the server closed meanwhile (it
        restarted) is dropped here, instead of failing ``fn`` and reporting the store
        unreachable when it is not.
        """
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            try:
                candidate.execute("SELECT 1")
            except DISCONNECTS:
                candidate.close()
                continue
            conn = candidate
            break
        if conn is None:
            conn = self._connect()
        try:
            result = fn(conn, *args)
        except DISCONNECTS:
            conn.close()
            raise
        except BaseException:
            if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()
            else:
                self._keep(conn)
            raise
        self._keep(conn)
        return result

    def _keep(self, conn: psycopg.Connection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.append(conn)

    async def _run(self, fn: Callable[..., T], *args: Any, abandon: bool = True) -> T:
        """``fn(conn, *args)`` in a thread; connection failures become :class:`StoreUnavailable`.

        ``abandon``: on cancellation, stop waiting for the thread (it finishes on
        its own and then closes or returns its connection). Commits pass False:
        the catalog shields them and must know how they ended.
        """
        if self._closed:
            raise StoreUnavailable("the configuration store is closed")
        try:
            result = await trio.to_thread.run_sync(
                self._call, fn, *args, limiter=self._limiter, abandon_on_cancel=abandon
            )
        except DISCONNECTS as exc:
            self._lost(exc)
            raise StoreUnavailable(
                f"the configuration database is unreachable: {_describe(exc)}"
            ) from exc
        self._found()
        return result

    def _lost(self, exc: BaseException) -> bool:
        """Mark the store unavailable; True if it was available until now."""
        was = self._status.available
        if was:
            log.warning(
                "configuration database unreachable",
                extra={"fields": {"store": self.location, "error": _describe(exc)}},
            )
        self._status = StoreStatus(
            False, _describe(exc), time.time() if was else self._status.since
        )
        return was

    def _found(self) -> None:
        if not self._status.available:
            log.warning(
                "configuration database reachable again", extra={"fields": {"store": self.location}}
            )
            self._status = StoreStatus(True, None, time.time())

    # --- migrations -------------------------------------------------------------------

    def _migrate(self, conn: psycopg.Connection) -> tuple[str, int]:
        with conn.transaction(), conn.cursor() as cur:
            schema = cur.execute("SELECT current_schema()").fetchone()[0]
            if schema is None:
                raise StoreCorrupt(
                    f"{self.location}: no schema of the search_path exists; create one "
                    "(CREATE SCHEMA ...) or fix the search_path"
                )
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                [f"trio_gateway.migrate.{schema}"],
            )
            cur.execute(
                """
                CREATE TABLE IF NOT EXISTS tg_migrations (
                    step integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    applied_by text NOT NULL
                )
                """
            )
            found = cur.execute("SELECT coalesce(max(step), 0) FROM tg_migrations").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise StoreCorrupt(
                    f"{self.location} (schema {schema}) has schema version {found}, newer than "
                    f"this trio-gateway understands ({SCHEMA_VERSION}); upgrade trio-gateway"
                )
            by = f"trio-gateway on {socket.gethostname()} pid {os.getpid()}"
            for step in range(found, SCHEMA_VERSION):
                MIGRATIONS[step](cur)
                cur.execute(
                    "INSERT INTO tg_migrations (step, applied_by) VALUES (%s, %s)", [step + 1, by]
                )
                log.info(
                    "store schema migrated",
                    extra={"fields": {"store": self.location, "schema_version": step + 1}},
                )
        return schema, found

    # --- reads ------------------------------------------------------------------------

    async def read(self, since: int | None = None) -> Changes:
        version, complete, rows, deletes = await self._run(self._read_rows, since)
        puts = [self._structure(kind, entity_id, body) for kind, entity_id, body in rows]
        if complete:
            self._entities = len(puts)
        self._version = version
        return Changes(
            version, puts, [(Kind(kind), entity_id) for kind, entity_id in deletes], complete
        )

    def _read_rows(self, conn: psycopg.Connection, since: int | None) -> tuple:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            version, horizon = conn.execute("SELECT version, horizon FROM tg_state").fetchone()
            if since is None or since < horizon or since > version:
                rows = conn.execute(
                    "SELECT kind, id, body FROM tg_entities ORDER BY version, kind, id"
                ).fetchall()
                return version, True, rows, []
            rows = conn.execute(
                "SELECT kind, id, body FROM tg_entities WHERE version > %s"
                " ORDER BY version, kind, id",
                [since],
            ).fetchall()
            deletes = conn.execute(
                "SELECT kind, id FROM tg_tombstones WHERE version > %s", [since]
            ).fetchall()
            return version, False, rows, deletes
        finally:
            if not (conn.closed or conn.broken):
                conn.execute("COMMIT")

    def _structure(self, kind_name: str, entity_id: str, body: Any) -> Entity:
        try:
            kind = Kind(kind_name)
            return serde.structure(body, kind.model, converter=serde.STORE)
        except (ValueError, ValidationFailed) as exc:
            raise StoreCorrupt(
                f"{self.location}: cannot read {kind_name} {entity_id}: {exc}"
            ) from exc

    async def load(self) -> list[Entity]:
        return list((await self.read()).puts)

    async def version(self) -> int:
        self._version = await self._run(self._read_version)
        return self._version

    @staticmethod
    def _read_version(conn: psycopg.Connection) -> int:
        return conn.execute("SELECT version FROM tg_state").fetchone()[0]

    # --- writes -----------------------------------------------------------------------

    async def commit(self, change: Change, *, base_version: int | None = None) -> int:
        if not self._status.available:
            raise StoreUnavailable(
                f"the configuration database is unreachable ({self._status.error}); "
                "writes are refused until it is back, the last configuration keeps serving"
            )
        rows = [
            (
                Kind.of(entity).value,
                entity.id,
                getattr(entity, "gateway_id", None),
                entity.name,
                Jsonb(serde.STORE.unstructure(entity)),
            )
            for entity in change.puts
        ]
        deletes = [(kind.value, entity_id) for kind, entity_id in change.deletes]
        try:
            version, self._entities = await self._run(
                self._commit_rows, rows, deletes, base_version, abandon=False
            )
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{exc.message}; the change was not acknowledged (if the connection broke "
                "while committing it may still have been applied: this gateway shows it once "
                "it reaches the database again)"
            ) from exc.__cause__
        self._version = version
        self._commits += 1
        return version

    def _commit_rows(
        self,
        conn: psycopg.Connection,
        rows: list[tuple],
        deletes: list[tuple[str, str]],
        base: int | None,
    ) -> tuple[int, int]:
        with conn.transaction(), conn.cursor() as cur:
            current, horizon = cur.execute(
                "SELECT version, horizon FROM tg_state FOR UPDATE"
            ).fetchone()
            if base is not None and base != current:
                raise StaleVersion(base, current)
            version = current + 1
            if rows:
                cur.executemany(
                    """
                    INSERT INTO tg_entities (kind, id, gateway_id, name, body, version)
                    VALUES (%s, %s, %s, %s, %s, %s)
                    ON CONFLICT (kind, id) DO UPDATE SET gateway_id = excluded.gateway_id,
                        name = excluded.name, body = excluded.body, version = excluded.version
                    """,
                    [(*row, version) for row in rows],
                )
                cur.execute(
                    "DELETE FROM tg_tombstones WHERE (kind, id) IN"
                    " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                    [[r[0] for r in rows], [r[1] for r in rows]],
                )
            if deletes:
                cur.execute(
                    """
                    WITH gone AS (
                        DELETE FROM tg_entities WHERE (kind, id) IN
                            (SELECT * FROM unnest(%s::text[], %s::text[]))
                        RETURNING kind, id
                    )
                    INSERT INTO tg_tombstones (kind, id, version) SELECT kind, id, %s FROM gone
                    ON CONFLICT (kind, id) DO UPDATE SET version = excluded.version
                    """,
                    [[d[0] for d in deletes], [d[1] for d in deletes], version],
                )
            if version - TOMBSTONES_KEPT > horizon:
                horizon = version - TOMBSTONES_KEPT
                cur.execute("DELETE FROM tg_tombstones WHERE version <= %s", [horizon])
            cur.execute("UPDATE tg_state SET version = %s, horizon = %s", [version, horizon])
            count = cur.execute("SELECT count(*) FROM tg_entities").fetchone()[0]
            self._notify(cur, CONFIG, {"version": version})
        return version, count

    def _notify(self, cur: psycopg.Cursor, topic: str, data: Mapping[str, Any]) -> None:
        payload = json.dumps({"topic": topic, **data}, separators=(",", ":"))
        cur.execute("SELECT pg_notify(%s, %s)", [self.channel, payload])

    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        """Send a notice on this store's channel to every instance (this one too).

        The payload is ``{"topic": topic, **data}`` as JSON; PostgreSQL limits it to
        8000 bytes. Instances that do not know ``topic`` ignore it.
        """

        def send(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                self._notify(cur, topic, data)

        await self._run(send)

    # --- limits and usage ---------------------------------------------------------------

    async def exchange_limits(
        self, ops: Sequence[LimitOp], usage: Sequence[UsageRow] = ()
    ) -> list[LimitGrant]:
        if not ops and not usage:
            return []
        return await self._run(self._exchange, list(ops), list(usage))

    @staticmethod
    def _exchange(
        conn: psycopg.Connection, ops: list[LimitOp], usage: list[UsageRow]
    ) -> list[LimitGrant]:
        grants = []
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit TO off")
            if ops:
                first = {}
                for op in ops:
                    first.setdefault(op.scope, op)
                scopes = sorted(first)
                # A missing row is created as it would be read (nothing used), so that every
                # row of the batch can be locked before it is read.
                cur.execute(
                    """
                    INSERT INTO tg_limits (scope, kind, value, at)
                    SELECT s, k, 0, extract(epoch FROM clock_timestamp())
                    FROM unnest(%s::text[], %s::text[]) AS t (s, k)
                    ORDER BY s
                    ON CONFLICT (scope) DO NOTHING
                    """,
                    [scopes, [first[s].kind for s in scopes]],
                )
                locked = cur.execute(
                    "SELECT scope, kind, value, at FROM tg_limits WHERE scope = ANY(%s)"
                    " ORDER BY scope FOR UPDATE",
                    [scopes],
                ).fetchall()
                rows = {
                    scope: LimitRow(scope, kind, value, at) for scope, kind, value, at in locked
                }
                now = cur.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0]
                now = float(now)
                for op in ops:
                    rows[op.scope], grant = apply_op(op, rows.get(op.scope), now)
                    grants.append(grant)
                cur.execute(
                    """
                    UPDATE tg_limits SET kind = t.k, value = t.v, at = t.a
                    FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[]) AS t (s, k, v, a)
                    WHERE scope = t.s
                    """,
                    [
                        scopes,
                        [rows[s].kind for s in scopes],
                        [float(rows[s].value) for s in scopes],
                        [float(rows[s].at) for s in scopes],
                    ],
                )
            if usage:
                columns = list(zip(*(row.values() for row in usage), strict=True))
                cur.execute(
                    """
                    INSERT INTO tg_usage (key_id, gateway_id, model, day, requests, input_tokens,
                        output_tokens, cached_tokens, cost, refused)
                    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],
                        %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::float8[],
                        %s::bigint[])
                    ON CONFLICT (key_id, day, model) DO UPDATE SET
                        requests = tg_usage.requests + excluded.requests,
                        input_tokens = tg_usage.input_tokens + excluded.input_tokens,
                        output_tokens = tg_usage.output_tokens + excluded.output_tokens,
                        cached_tokens = tg_usage.cached_tokens + excluded.cached_tokens,
                        cost = tg_usage.cost + excluded.cost,
                        refused = tg_usage.refused + excluded.refused
                    """,
                    [list(column) for column in columns],
                )
        return grants

    async def read_limits(self, scopes: Sequence[str]) -> LimitRows:
        def read(conn: psycopg.Connection) -> LimitRows:
            rows = conn.execute(
                "SELECT scope, kind, value, at FROM tg_limits WHERE scope = ANY(%s)",
                [list(scopes)],
            ).fetchall()
            now = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0]
            return LimitRows({r[0]: LimitRow(r[0], r[1], r[2], r[3]) for r in rows}, float(now))

        return await self._run(read)

    async def read_usage(
        self, key_id: str, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        def read(conn: psycopg.Connection) -> list[UsageRow]:
            rows = conn.execute(
                "SELECT key_id, gateway_id, model, day, requests, input_tokens, output_tokens,"
                " cached_tokens, cost, refused FROM tg_usage"
                " WHERE key_id = %s AND day >= %s AND day <= %s ORDER BY day, model",
                [key_id, since or "", until or "~"],
            ).fetchall()
            return [UsageRow(*row) for row in rows]

        return await self._run(read)

    async def prune_limits(self, idle_s: float) -> int:
        def prune(conn: psycopg.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM tg_limits WHERE kind = %s"
                " AND at < extract(epoch FROM clock_timestamp()) - %s",
                [BUCKET, idle_s],
            )
            return cur.rowcount

        return await self._run(prune)

    # --- notices ----------------------------------------------------------------------

    def _listen(self) -> psycopg.Connection:
        conn = self._connect()
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _drain(conn: psycopg.Connection) -> list[Notice]:
        """What arrived on the listening connection; never blocks (``timeout=0``)."""
        found = []
        for notify in conn.notifies(timeout=0):
            try:
                data = json.loads(notify.payload)
                topic = data.pop("topic")
            except (ValueError, KeyError, TypeError, AttributeError):
                log.debug(
                    "ignoring a notice that is not ours",
                    extra={"fields": {"payload": notify.payload[:200]}},
                )
                continue
            if isinstance(topic, str):
                found.append(Notice(topic, data))
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("the listening connection was closed")
        return found

    @trio.as_safe_channel
    async def notices(self) -> AsyncIterator[Notice]:
        """See the module docstring: one listening connection, kept open."""
        backoff = LISTEN_BACKOFF_S[0]
        connected: bool | None = None  # what the consumer was last told
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._listen, abandon_on_cancel=True)
            except DISCONNECTS as exc:
                self._lost(exc)
                if connected is not False:
                    connected = False
                    yield Notice(DISCONNECTED, {"error": _describe(exc)})
                await trio.sleep(backoff)
                backoff = min(backoff * 2, LISTEN_BACKOFF_S[1])
                continue
            backoff = LISTEN_BACKOFF_S[0]
            try:
                self._found()
                connected = True
                yield Notice(CONNECTED)
                while True:
                    await trio.lowlevel.wait_readable(conn.fileno())
                    for notice in await trio.to_thread.run_sync(self._drain, conn):
                        yield notice
            except DISCONNECTS as exc:
                self._lost(exc)
                connected = False
                yield Notice(DISCONNECTED, {"error": _describe(exc)})
            finally:
                with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                    await trio.to_thread.run_sync(conn.close, abandon_on_cancel=True)

    # --- introspection ----------------------------------------------------------------

    def status(self) -> StoreStatus:
        return self._status

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            kind="postgresql",
            location=self.location,
            schema_version=SCHEMA_VERSION,
            commits=self._commits,
            entities=self._entities,
            version=self._version,
        )
