"""The PostgreSQL server the suite runs against (``make test`` starts a private one).

``TRIO_GATEWAY_TEST_POSTGRES`` names it (``.ci/with-postgres`` sets it); each test
gets a schema of its own, dropped afterwards. ``TRIO_GATEWAY_TEST_POSTGRES_CTL``,
when set, is a command that stops or starts that server (append ``stop`` or
``start``), for the tests that take the database away. A test that needs either
fails, saying how to provide it, when it is missing: it never skips.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from urllib.parse import quote

import psycopg
import pytest

URL_ENV = "TRIO_GATEWAY_TEST_POSTGRES"
CTL_ENV = "TRIO_GATEWAY_TEST_POSTGRES_CTL"
HOW = (
    "run the suite with `make test` (it installs and starts a private PostgreSQL through "
    ".ci/with-postgres), wrap the command in `.ci/with-postgres`, or set {env} yourself"
)


def server_url() -> str:
    url = os.environ.get(URL_ENV)
    if not url:
        pytest.fail(
            f"this test needs PostgreSQL and {URL_ENV} is not set: " + HOW.format(env=URL_ENV)
        )
    return url


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=...``)."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"


class Schema:
    """A fresh schema on the test server, and a URL that uses it."""

    def __init__(self) -> None:
        self.server = server_url()
        self.name = f"t_{uuid.uuid4().hex[:12]}"
        self.url = with_schema(self.server, self.name)

    def create(self) -> None:
        with psycopg.connect(self.server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')

    def drop(self) -> None:
        try:
            with psycopg.connect(self.server, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        except psycopg.OperationalError:
            pass  # the server is down (a failed outage test): nothing left to clean

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


def control(action: str) -> None:
    """Stop or start the test server (``action``: ``stop`` or ``start``)."""
    command = os.environ.get(CTL_ENV)
    if not command:
        pytest.fail(
            f"this test stops and starts PostgreSQL and {CTL_ENV} is not set: "
            + HOW.format(env=f"{CTL_ENV} to a command taking stop|start")
        )
    subprocess.run([*shlex.split(command), action], check=True, timeout=60)
