"""Shared health: an ejection decided by one instance is taken by the others.

Two gateways on handles of one memory store behave like two instances on one
database, in virtual time (the memory store is thread-free); the same over
PostgreSQL with real processes is in test_instances.py.
"""

from __future__ import annotations

import httpx2
import pytest
import trio

from tests.e2e.conftest import KEY, config, target, trail
from trio_gateway.store import MemoryStore
from trio_gateway.testing.fake import Fault, open_fake_provider
from trio_gateway.testing.harness import open_gateway

MODEL = "gpt-4o-mini"
#: The bound docs/deployment.md states for a shared ejection to reach every instance.
SHARED_WITHIN_S = 1.0
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}


def states(gateway, target_id: str) -> str:
    upstream = next(iter(gateway.catalog.snapshot.upstreams))
    stats = {t.id: t for t in gateway.runtime.upstream_health(upstream)}
    return stats[target_id].health


@pytest.mark.parametrize("shared", [True, False])
async def test_an_ejection_on_one_instance_reaches_the_others(autojump_clock, shared):
    store = MemoryStore()
    with trio.fail_after(600):
        async with (
            open_fake_provider(name="bad", api_key="sk-fake-0", faults=[Fault.error(503)]) as bad,
            open_fake_provider(name="good", api_key="sk-fake-1") as good,
        ):
            cfg = config(
                [
                    target(bad, priority=1, default_model=MODEL),
                    target(good, priority=2, default_model=MODEL),
                ],
                health={"passive": True, "threshold": 3, "interval": 60, "shared": shared},
            )
            async with (
                open_gateway(cfg, store=store.connect()) as a,
                open_gateway(store=store.connect()) as b,
                httpx2.AsyncClient(base_url=a.proxy_url, headers={"X-Api-Key": KEY}) as to_a,
                httpx2.AsyncClient(base_url=b.proxy_url, headers={"X-Api-Key": KEY}) as to_b,
            ):
                bad_id = next(iter(a.catalog.snapshot.upstreams.values())).targets[0].id
                for _ in range(3):
                    assert (await to_a.post("/v1/chat/completions", json=CHAT)).status_code == 200
                assert states(a, bad_id).state.value == "ejected"
                ejected_at = trio.current_time()
                await trio.sleep(SHARED_WITHIN_S)
                on_b = states(b, bad_id)
                response = await to_b.post("/v1/chat/completions", json=CHAT)
                assert response.status_code == 200
                if shared:
                    assert on_b.state.value == "ejected"
                    assert on_b.reason.startswith("ejected by another instance: 3 failures")
                    assert on_b.since - ejected_at <= SHARED_WITHIN_S
                    assert on_b.until is not None and on_b.until > trio.current_time()
                    assert [o for _, o in trail(response)] == ["200"]  # straight to the backup
                    # A does not take its own announcement a second time.
                    assert states(a, bad_id).ejections == 1
                else:
                    assert on_b.state.value == "healthy"  # per instance, as by default
                    assert [o for _, o in trail(response)] == ["503", "200"]
