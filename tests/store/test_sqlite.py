"""The SQLite store: round trips, schema versions, and nothing acknowledged lost on kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest
import trio

from trio_gateway.config.catalog import Catalog
from trio_gateway.config.models import Gateway, Kind
from trio_gateway.store import Change, SqliteStore, StoreCorrupt
from trio_gateway.store.sqlite import DB_NAME, SCHEMA_VERSION


async def test_round_trip_keeps_secrets(tmp_path, guide_upstream):
    async with SqliteStore.open(tmp_path) as store:
        catalog = await Catalog.load(store)
        gateway = await catalog.create(Kind.GATEWAY, {"name": "g"})
        upstream = await catalog.create(Kind.UPSTREAM, guide_upstream, gateway.id)
        key, _ = await catalog.create_api_key(gateway.id, {"name": "k"})
        assert store.statistics().entities == 3
    async with SqliteStore.open(tmp_path) as store:
        loaded = {e.id: e for e in await store.load()}
    assert loaded[upstream.id] == upstream
    assert loaded[key.id] == key and loaded[key.id].key_hash
    assert loaded[gateway.id] == gateway


async def test_a_batch_is_one_transaction(tmp_path):
    async with SqliteStore.open(tmp_path) as store:
        await store.commit(Change(puts=[Gateway(id="a", name="a")]))
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON entities WHEN NEW.name = 'boom'"
        " BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    db.commit()
    db.close()
    async with SqliteStore.open(tmp_path) as store:
        with pytest.raises(sqlite3.IntegrityError, match="boom"):
            # The second row fails inside the transaction: the first must not land either.
            await store.commit(
                Change(puts=[Gateway(id="b", name="b"), Gateway(id="c", name="boom")])
            )
        assert [e.id for e in await store.load()] == ["a"]
        await store.commit(Change(deletes=[(Kind.GATEWAY, "a")]))
        assert await store.load() == []


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


async def test_unreadable_row_is_named(tmp_path):
    async with SqliteStore.open(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(
        "INSERT INTO entities VALUES ('upstream', 'u1', 'g', 'n', ?)",
        (json.dumps({"id": "u1", "name": "n", "targets": [{"provider": "nope"}]}),),
    )
    db.commit()
    db.close()
    async with SqliteStore.open(tmp_path) as store:
        with pytest.raises(StoreCorrupt, match="upstream u1"):
            await store.load()


def test_kill_9_during_admin_writes_loses_nothing_acknowledged(tmp_path: Path):
    """Writers hammer the admin API; the process is killed mid-stream; every 201 survives."""
    data_dir = tmp_path / "data"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_gateway",
            "serve",
            "--data-dir",
            str(data_dir),
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
        async with SqliteStore.open(data_dir) as store:
            return await store.load()

    stored = trio.run(reopen)
    ids = {e.id for e in stored}
    assert set(acknowledged) <= ids
    assert all(isinstance(e, Gateway) and e.name.startswith("w") for e in stored)
    assert os.path.exists(data_dir / DB_NAME)


def _wait_for_admin_url(server: subprocess.Popen) -> str:
    assert server.stdout is not None
    deadline = time.monotonic() + 30
    for line in server.stdout:
        if match := re.search(r"admin API: (http://\S+)/api/v1", line):
            return match.group(1)
        if time.monotonic() > deadline:
            break
    raise AssertionError("the gateway did not report its admin URL")
