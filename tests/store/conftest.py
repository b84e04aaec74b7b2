"""One store suite, two backends: every test taking ``backend`` runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.pg import Schema
from trio_gateway.store import SqliteStore, Store
from trio_gateway.store.sqlite import DB_NAME


class Backend:
    """A store location, ways to open it, and raw access to what is underneath."""

    name: str

    def open(self) -> AsyncIterator[Store]:
        raise NotImplementedError

    @property
    def cli(self) -> list[str]:
        """The ``trio-gateway`` arguments that name this store."""
        raise NotImplementedError

    def fail_inserts_named(self, name: str) -> None:
        """Make the database refuse any entity row named ``name``."""
        raise NotImplementedError

    def insert_raw(self, kind: str, entity_id: str, body: dict) -> None:
        raise NotImplementedError

    def claim_newer_schema(self) -> None:
        raise NotImplementedError

    def migrations_applied(self) -> int:
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        async with SqliteStore.open(self.data_dir) as store:
            yield store

    @property
    def cli(self) -> list[str]:
        return ["--data-dir", str(self.data_dir)]

    def _run(self, *statements: tuple[str, tuple]) -> None:
        db = sqlite3.connect(self.data_dir / DB_NAME)
        try:
            for sql, params in statements:
                db.execute(sql, params)
            db.commit()
        finally:
            db.close()

    def fail_inserts_named(self, name: str) -> None:
        self._run(
            (
                f"CREATE TRIGGER boom BEFORE INSERT ON entities WHEN NEW.name = '{name}'"
                " BEGIN SELECT RAISE(ABORT, 'boom'); END",
                (),
            )
        )

    def insert_raw(self, kind: str, entity_id: str, body: dict) -> None:
        self._run(
            (
                "INSERT INTO entities VALUES (?, ?, 'g', 'n', ?, 1)",
                (kind, entity_id, json.dumps(body)),
            ),
            ("UPDATE state SET version = 1", ()),
        )

    def claim_newer_schema(self) -> None:
        from trio_gateway.store.sqlite import SCHEMA_VERSION

        self._run((f"PRAGMA user_version = {SCHEMA_VERSION + 1}", ()))

    def migrations_applied(self) -> int:
        db = sqlite3.connect(self.data_dir / DB_NAME)
        try:
            return db.execute("PRAGMA user_version").fetchone()[0]
        finally:
            db.close()


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        from trio_gateway.store.postgres import PostgresStore

        async with PostgresStore.open(self.schema.url) as store:
            yield store

    @property
    def cli(self) -> list[str]:
        return ["--store", self.schema.url]

    def fail_inserts_named(self, name: str) -> None:
        self.schema.query(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF NEW.name = '{name}' THEN RAISE EXCEPTION 'boom'; END IF; "
            "RETURN NEW; END $$"
        )
        self.schema.query(
            "CREATE TRIGGER boom BEFORE INSERT ON tg_entities FOR EACH ROW EXECUTE FUNCTION boom()"
        )

    def insert_raw(self, kind: str, entity_id: str, body: dict) -> None:
        self.schema.query(
            "INSERT INTO tg_entities VALUES (%s, %s, 'g', 'n', %s, 1)",
            (kind, entity_id, json.dumps(body)),
        )
        self.schema.query("UPDATE tg_state SET version = 1")

    def claim_newer_schema(self) -> None:
        from trio_gateway.store.postgres import SCHEMA_VERSION

        self.schema.query(
            "INSERT INTO tg_migrations (step, applied_by) VALUES (%s, 'a newer gateway')",
            (SCHEMA_VERSION + 1,),
        )

    def migrations_applied(self) -> int:
        rows = self.schema.query("SELECT step FROM tg_migrations ORDER BY step")
        steps = [step for (step,) in rows]
        assert steps == list(range(1, len(steps) + 1)), f"migrations applied twice: {steps}"
        return len(steps)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "data")
    return PostgresBackend(request.getfixturevalue("postgres"))
