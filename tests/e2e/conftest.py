"""End-to-end helpers: fake providers and a gateway in front of them, on real sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway.serve import Running
from trio_gateway.testing.fake import FakeProvider, Fault, open_fake_provider
from trio_gateway.testing.harness import open_gateway

KEY = "tgk_e2e_test_key_0123456789"
#: For raw-HTTP tests: the chat path, and the headers of a JSON request with the key.
CHAT = "/v1/chat/completions"
WITH_KEY = [("X-Api-Key", KEY), ("Content-Type", "application/json")]
#: A target nothing listens for: for cases the gateway answers by itself.
UNREACHABLE = {"provider": "openai", "base_url": "http://127.0.0.1:9"}
TIMEOUT = 60


def target(fake: FakeProvider, provider: str = "openai", **fields: Any) -> dict[str, Any]:
    """A target pointing at ``fake``, with the credential it expects."""
    secret = fake.spec.api_key or "sk-any"
    header = (
        ("x-api-key", secret) if provider == "anthropic" else ("Authorization", f"Bearer {secret}")
    )
    return {
        "provider": provider,
        "base_url": fake.url,
        "credentials": {"header_name": header[0], "header_value": header[1]},
        **fields,
    }


def config(
    targets: Sequence[dict[str, Any]],
    *,
    algorithm: str = "round-robin",
    health: dict[str, Any] | None = None,
    service: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "gateways": [
            {
                "name": "e2e",
                "upstreams": [
                    {
                        "name": "u",
                        "algorithm": algorithm,
                        "targets": list(targets),
                        "health_checks": health
                        or {"passive": True, "threshold": 3, "interval": 60},
                        **(upstream or {}),
                    }
                ],
                "services": [{"name": "s", "upstream": "u", **(service or {})}],
                "rules": [{"name": "v1", "path": "/v1", "service": "s"}],
                "api_keys": [{"name": "k", "key": KEY}],
            }
        ]
    }


@attrs.define
class Setup:
    gateway: Running
    client: httpx2.AsyncClient
    admin: httpx2.AsyncClient
    fakes: list[FakeProvider]

    @property
    def gateway_id(self) -> str:
        return next(iter(self.gateway.catalog.snapshot.gateways))

    @property
    def upstream_id(self) -> str:
        return next(iter(self.gateway.catalog.snapshot.upstreams))

    def target_ids(self) -> list[str]:
        return [t.id for t in self.gateway.catalog.snapshot.upstreams[self.upstream_id].targets]

    async def chat(
        self, model: str | None = "gpt-4o-mini", stream: bool = False, **body: Any
    ) -> httpx2.Response:
        payload = {"messages": [{"role": "user", "content": "Hello"}], **body}
        if model is not None:
            payload["model"] = model
        if stream:
            payload["stream"] = True
        return await self.client.post("/v1/chat/completions", json=payload)

    async def messages(
        self, model: str = "claude-3-5-sonnet-20241022", stream: bool = False, **body: Any
    ) -> httpx2.Response:
        payload = {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hello"}],
            **body,
        }
        if stream:
            payload["stream"] = True
        return await self.client.post("/v1/messages", json=payload)

    async def health(self) -> dict[str, dict[str, Any]]:
        response = await self.admin.get(
            f"/gateways/{self.gateway_id}/upstreams/{self.upstream_id}/health"
        )
        assert response.status_code == 200, response.text
        return {t["id"]: t for t in response.json()["targets"]}


@asynccontextmanager
async def setup(
    fake_specs: Sequence[dict[str, Any]],
    make_config: Any,
    *,
    timeout: float = TIMEOUT,
    **gateway: Any,
) -> AsyncIterator[Setup]:
    """Start fakes (one per spec dict), then a gateway configured by ``make_config(fakes)``.

    ``timeout`` bounds the whole test and each client call; in virtual time
    (``autojump_clock``) make it longer than the budgets the test runs into.
    ``gateway``: more arguments of :func:`open_gateway` (settings, ``tracing``).
    """
    with trio.fail_after(timeout):
        async with AsyncExitStack() as stack:
            fakes = [
                await stack.enter_async_context(
                    open_fake_provider(**{"name": f"fake{i}", "api_key": f"sk-fake-{i}", **spec})
                )
                for i, spec in enumerate(fake_specs)
            ]
            running = await stack.enter_async_context(open_gateway(make_config(fakes), **gateway))
            client = await stack.enter_async_context(
                httpx2.AsyncClient(
                    base_url=running.proxy_url, headers={"X-Api-Key": KEY}, timeout=timeout
                )
            )
            admin = await stack.enter_async_context(
                httpx2.AsyncClient(base_url=running.admin_url + "/api/v1", timeout=30)
            )
            yield Setup(running, client, admin, fakes)


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """``(event, data)`` pairs of an SSE body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if event or data:
            events.append((event, "\n".join(data)))
    return events


def trail(response: httpx2.Response) -> list[tuple[str, str]]:
    """``(target id, outcome)`` of each attempt in ``X-Gateway-Attempts``."""
    value = response.headers.get("x-gateway-attempts", "")
    entries = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        target_id, outcome, *_ = item.split(";")  # then ms=, and fault= when injected
        entries.append((target_id, outcome.removeprefix("outcome=")))
    return entries


__all__ = ["KEY", "Fault", "config", "json", "setup", "sse_events", "target", "trail"]
