"""Metrics + access log, per proxied request, measured in one process (a quick check).

    .venv/bin/python benchmarks/telemetry_inprocess.py [--requests 1000] [--rounds 10]

One Trio loop runs a fake provider, two gateways on it (one as shipped: metrics on and
the access log written to a file; one with both off) and 32 concurrent clients.
Round after round, alternating which goes first, each gateway gets the same
``--requests``; ``time.process_time()`` per request is taken over the whole process
(client, fake and gateway alike), so the difference between the two is what the
telemetry costs, and the pairs' median difference is reported beside the medians.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx2
import trio

from trio_gateway import logs
from trio_gateway.testing.fake import open_fake_provider
from trio_gateway.testing.harness import open_gateway

KEY = "tgk_inprocess_cost_key_0123456789"
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 8},
        {"role": "user", "content": "Write a haiku about load balancers. " * 4},
    ],
    "max_tokens": 64,
}


def config(fake_url: str) -> dict:
    target = {
        "provider": "openai",
        "base_url": fake_url,
        "default_model": "gpt-4o-mini",
        "credentials": {"header_name": "Authorization", "header_value": "Bearer sk-fake"},
    }
    return {
        "gateways": [
            {
                "name": "cost",
                "upstreams": [
                    {
                        "name": "u",
                        "targets": [target, {**target, "weight": 2}],
                        "health_checks": {"passive": True, "threshold": 3, "interval": 60},
                    }
                ],
                "services": [{"name": "s", "upstream": "u"}],
                "rules": [{"name": "v1", "path": "/v1", "service": "s"}],
                "api_keys": [{"name": "bench", "key": KEY}],
            }
        ]
    }


async def load(client: httpx2.AsyncClient, n: int, concurrency: int, stream: bool) -> None:
    body = {**BODY, "stream": stream}
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_raw():
                    pass
                assert response.status_code == 200

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log_file = open(Path(tmp) / "gateway.log", "w")  # noqa: SIM115, ASYNC230
        logs.configure("text", "WARNING", stream=log_file)
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(open_fake_provider())
            clients = {}
            for name, overrides in (("on", {}), ("off", {"metrics": False, "access_log": False})):
                gateway = await stack.enter_async_context(
                    open_gateway(config(fake.url), **overrides)
                )
                limits = httpx2.Limits(
                    max_connections=args.concurrency, max_keepalive_connections=args.concurrency
                )
                clients[name] = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        base_url=gateway.proxy_url, headers={"X-Api-Key": KEY}, limits=limits
                    )
                )
            for stream in (False, True):
                samples: dict[str, list[float]] = {"on": [], "off": []}
                for name in ("on", "off"):
                    await load(clients[name], args.requests // 4, args.concurrency, stream)
                for round_ in range(args.rounds):
                    for name in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                        started = time.process_time()
                        await load(clients[name], args.requests, args.concurrency, stream)
                        samples[name].append((time.process_time() - started) / args.requests * 1e6)
                on, off = (statistics.median(samples[k]) for k in ("on", "off"))
                pairs = statistics.median(
                    a - b for a, b in zip(samples["on"], samples["off"], strict=True)
                )
                kind = "streams" if stream else "whole answers"
                print(f"{kind}, c={args.concurrency}, {args.rounds} rounds of {args.requests}:")
                for name in ("on", "off"):
                    shown = ", ".join(f"{v:.0f}" for v in samples[name])
                    print(
                        f"  {name:>3}: {shown} µs/req (median {statistics.median(samples[name]):.0f})"
                    )
                print(
                    f"  difference: medians {on - off:+.0f} µs/req, median of pairs {pairs:+.0f} µs/req"
                )
            fake_count = len(fake.requests)
        log_file.close()
        lines = sum(1 for line in open(Path(tmp) / "gateway.log") if "trio_gateway.access" in line)  # noqa: SIM115, ASYNC230
        print(f"(provider calls: {fake_count}; access log lines: {lines})")
    logging.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    trio.run(main, parser.parse_args())
    sys.exit(0)
