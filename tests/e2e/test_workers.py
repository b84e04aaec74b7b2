"""Several worker processes: one port, one store, admin writes reach every worker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx2
import pytest
import trio
import yaml

from tests.e2e.conftest import KEY, config, target
from tests.e2e.instances import open_instance
from trio_gateway.serve import SAFETY_NET_S
from trio_gateway.testing.fake import open_fake_provider


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    if request.param == "sqlite":
        return ["--data-dir", str(tmp_path / "data")]
    return ["--store", request.getfixturevalue("postgres").url]


async def test_two_workers_serve_one_port_and_follow_admin_writes(tmp_path, store_args):
    """Each worker hears of the parent's write at once (SQLite: the doorbell; PostgreSQL:
    NOTIFY), well before the periodic version check would have caught it."""
    with trio.fail_after(60):
        async with open_fake_provider(name="f", api_key="sk-fake-0") as fake:
            path = tmp_path / "gateway.yaml"
            path.write_text(yaml.safe_dump(config([target(fake, default_model="gpt-4o-mini")])))
            async with open_instance(
                ["--workers", "2", *store_args, "--config", str(path)], tmp_path / "gateway.log"
            ) as instance:
                process, admin, proxy = instance.process, instance.admin_url, instance.proxy_url
                while not children_of(process.pid):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await trio.sleep(1.5)  # the child loads the store and starts serving

                limits = httpx2.Limits(max_keepalive_connections=0)
                async with httpx2.AsyncClient(
                    base_url=proxy, headers={"X-Api-Key": KEY}, limits=limits
                ) as client:
                    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
                    statuses: list[int] = []

                    async def call() -> None:
                        statuses.append(
                            (await client.post("/v1/chat/completions", json=body)).status_code
                        )

                    async with trio.open_nursery() as nursery:
                        for _ in range(40):
                            nursery.start_soon(call)
                    assert statuses == [200] * 40

                    async with httpx2.AsyncClient(base_url=admin + "/api/v1") as api:
                        gateway = (await api.get("/gateways")).json()["items"][0]["id"]
                        key = (await api.get(f"/gateways/{gateway}/keys")).json()["items"][0]["id"]
                        # Six writes, each seen by every worker well before a version check
                        # (every 2 s) could have caught it by chance.
                        for active in (False, True) * 3:
                            await api.put(
                                f"/gateways/{gateway}/keys/{key}", json={"active": active}
                            )
                            written = time.monotonic()
                            expected = 200 if active else 401
                            streak = 0
                            while streak < 20:  # every worker has followed the write
                                response = await client.post("/v1/chat/completions", json=body)
                                streak = streak + 1 if response.status_code == expected else 0
                            assert time.monotonic() - written < SAFETY_NET_S / 2
            assert process.returncode == 0
            assert children_of(process.pid) == []


async def test_one_scrape_shows_the_metrics_of_every_worker(tmp_path):
    """``--workers 2``: the main process's ``/metrics`` adds up both processes' counters
    (prometheus-client's multiprocess mode), and shows each one's target gauges."""
    from prometheus_client.parser import text_string_to_metric_families

    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"left over by an earlier run")
    with trio.fail_after(60):
        async with open_fake_provider(name="f", api_key="sk-fake-0") as fake:
            path = tmp_path / "gateway.yaml"
            path.write_text(yaml.safe_dump(config([target(fake, default_model="gpt-4o-mini")])))
            async with open_instance(
                ["--workers", "2", "--data-dir", str(tmp_path / "data"), "--config", str(path)],
                tmp_path / "gateway.log",
                env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)},
            ) as instance:
                process, admin, proxy = instance.process, instance.admin_url, instance.proxy_url
                while not children_of(process.pid):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await trio.sleep(1.5)  # the child loads the store and starts serving
                (child,) = children_of(process.pid)

                limits = httpx2.Limits(max_keepalive_connections=0)
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
                async with httpx2.AsyncClient(
                    base_url=proxy, headers={"X-Api-Key": KEY}, limits=limits
                ) as client:

                    async def call() -> None:
                        assert (
                            await client.post("/v1/chat/completions", json=body)
                        ).status_code == 200

                    async with trio.open_nursery() as nursery:
                        for _ in range(60):
                            nursery.start_soon(call)
                await trio.sleep(1.5)  # the child writes its gauges every second
                async with httpx2.AsyncClient(base_url=admin) as scraper:
                    scraped = (await scraper.get("/metrics")).text
                samples = [s for f in text_string_to_metric_families(scraped) for s in f.samples]
                served = sum(
                    s.value
                    for s in samples
                    if s.name == "trio_gateway_requests_total" and s.labels["status"] == "200"
                )
                assert served == 60  # both processes' requests, once each
                pids = {s.labels["pid"] for s in samples if s.name == "trio_gateway_target_state"}
                assert pids == {str(process.pid), str(child)}
                from prometheus_client.mmap_dict import MmapedDict

                for pid in (process.pid, child):  # each counted its own share
                    own = sum(
                        value
                        for key, value, _, _ in MmapedDict.read_all_values_from_file(
                            str(shared / f"counter_{pid}.db")
                        )
                        if key.startswith('["trio_gateway_requests"')
                    )
                    assert 0 < own < 60
                assert not (shared / "counter_1.db").exists()  # an earlier run's: wiped
            assert process.returncode == 0


#: A second key of the gateway, without limits: to see both processes serving first.
FREE_KEY = "tgk_e2e_free_key_0123456789"


def limited_config(fake, requests_per_minute: int) -> dict:
    made = config([target(fake, default_model="gpt-4o-mini")])
    keys = made["gateways"][0]["api_keys"]
    keys[0]["limits"] = {"requests_per_minute": requests_per_minute}
    keys.append({"name": "free", "key": FREE_KEY})
    return made


def served_by(response: httpx2.Response) -> str:
    """The process that answered: request ids start with a prefix of its own."""
    return response.headers["x-request-id"][:12]


async def test_a_keys_rate_limit_holds_across_two_workers(tmp_path, store_args):
    """``requests_per_minute: 10`` and 30 requests at once over both processes: at most
    10 pass, and at least 10 less one lease per process (docs/keys.md)."""
    with trio.fail_after(60):
        async with open_fake_provider(name="f", api_key="sk-fake-0") as fake:
            path = tmp_path / "gateway.yaml"
            path.write_text(yaml.safe_dump(limited_config(fake, 10)))
            async with open_instance(
                ["--workers", "2", *store_args, "--config", str(path)], tmp_path / "gateway.log"
            ) as instance:
                process, proxy = instance.process, instance.proxy_url
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
                no_reuse = httpx2.Limits(max_keepalive_connections=0)
                async with httpx2.AsyncClient(
                    base_url=proxy, headers={"X-Api-Key": FREE_KEY}, limits=no_reuse
                ) as free:
                    seen: set[str] = set()
                    while len(seen) < 2:  # both processes serve
                        response = await free.post("/v1/chat/completions", json=body)
                        if response.status_code == 200:
                            seen.add(served_by(response))
                        else:
                            await trio.sleep(0.1)
                async with httpx2.AsyncClient(
                    base_url=proxy, headers={"X-Api-Key": KEY}, limits=no_reuse, timeout=10
                ) as client:
                    responses: list[httpx2.Response] = []

                    async def call() -> None:
                        responses.append(await client.post("/v1/chat/completions", json=body))

                    async with trio.open_nursery() as nursery:
                        for _ in range(30):
                            nursery.start_soon(call)
                passed = [r for r in responses if r.status_code == 200]
                assert {r.status_code for r in responses} <= {200, 429}
                assert 10 - 2 <= len(passed) <= 10
                print(
                    f"\n{len(passed)} of 30 passed; answered by process:",
                    {p: sum(served_by(r) == p for r in responses) for p in seen},
                )
            assert process.returncode == 0
