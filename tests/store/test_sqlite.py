"""The SQLite store's own matters (WAL, old files); and kill -9 on every backend."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import trio

from tests.store.conftest import Backend
from trio_gateway.config.models import Gateway
from trio_gateway.store import Change, SqliteStore, StoreCorrupt
from trio_gateway.store.sqlite import DB_NAME, SCHEMA_VERSION, _v1


async def test_schema_version_and_wal(tmp_path):
    async with SqliteStore.open(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreCorrupt, match="newer than this trio-gateway"):
        async with SqliteStore.open(tmp_path):
            pass


async def test_a_version_1_file_is_migrated_and_keeps_its_entities(tmp_path):
    """A file from before configuration versions: its rows load, then versions work."""
    (tmp_path / "data").mkdir()
    db = sqlite3.connect(tmp_path / "data" / DB_NAME)
    _v1(db)
    db.execute(
        "INSERT INTO entities VALUES ('gateway', 'old', NULL, 'old', ?)",
        (json.dumps({"id": "old", "name": "old"}),),
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    async with SqliteStore.open(tmp_path / "data") as store:
        assert store.migrated_from == 1
        loaded = await store.read()
        assert [e.id for e in loaded.puts] == ["old"] and loaded.version == 0
        await store.commit(Change(puts=[Gateway(id="new", name="new")]), base_version=0)
        assert [e.id for e in (await store.read(since=0)).puts] == ["new"]


def test_kill_9_during_admin_writes_loses_nothing_acknowledged(backend: Backend):
    """Writers hammer the admin API; the process is killed mid-stream; every 201 survives."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_gateway",
            "serve",
            *backend.cli,
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        admin_url = _wait_for_admin_url(server)
        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(n: int) -> None:
            with httpx2.Client(base_url=admin_url, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    try:
                        response = client.post("/api/v1/gateways", json={"name": f"w{n}-{i}"})
                    except httpx2.HTTPError:
                        return
                    if response.status_code == 201:
                        with lock:
                            acknowledged.append(response.json()["id"])
                    i += 1

        with ThreadPoolExecutor(4) as pool:
            for n in range(4):
                pool.submit(writer, n)
            deadline = time.monotonic() + 30
            while len(acknowledged) < 60 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            stop.set()
        assert len(acknowledged) >= 60
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)

    async def reopen() -> list:
        async with backend.open() as store:
            return await store.load()

    stored = trio.run(reopen)
    ids = {e.id for e in stored}
    assert set(acknowledged) <= ids
    assert all(isinstance(e, Gateway) and e.name.startswith("w") for e in stored)


def _wait_for_admin_url(server: subprocess.Popen) -> str:
    assert server.stdout is not None
    deadline = time.monotonic() + 30
    for line in server.stdout:
        if match := re.search(r"admin API: (http://\S+)/api/v1", line):
            return match.group(1)
        if time.monotonic() > deadline:
            break
    raise AssertionError("the gateway did not report its admin URL")
