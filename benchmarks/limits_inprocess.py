"""What an API key's limits cost per proxied request, measured in one process (a quick check).

    .venv/bin/python benchmarks/limits_inprocess.py [--requests 1000] [--rounds 10]

One Trio loop runs a fake provider, one gateway on it and 32 concurrent clients. The
gateway has two keys: one without limits, and one with every limit docs/keys.md
describes (requests and tokens per minute, a monthly token and cost budget, a model
list), set far above what the run reaches. Round after round, alternating which goes
first, each key sends the same ``--requests``; ``time.process_time()`` per request is
taken over the whole process (client, fake and gateway alike), so the difference
between the two keys is what the limits cost; the pairs' median difference is reported
beside the medians.

It also times the limits' own code on the request path where it runs (the token
estimate, the admission, the charge and its settlement, the headers) with
``time.thread_time()``, as benchmarks/telemetry_share.py does for telemetry: on a busy
machine that is steadier than a difference of two totals.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import AsyncExitStack

import httpx2
import telemetry_inprocess as base
import trio
from telemetry_share import SPENT, timed

from trio_gateway import logs
from trio_gateway.core import limits as core_limits
from trio_gateway.runtime import limits as runtime_limits
from trio_gateway.testing.fake import open_fake_provider
from trio_gateway.testing.harness import open_gateway
from trio_gateway.web import proxy

PLAIN = "tgk_inprocess_plain_key_0123456789"
LIMITED = "tgk_inprocess_limited_key_0123456789"
LIMITS = {
    "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "budget": {"period": "month", "tokens": 1_000_000_000_000_000, "cost": 1_000_000_000},
}


def config(fake_url: str) -> dict:
    """telemetry_inprocess's gateway, with a price table and two keys: one without
    limits, one with every limit."""
    declared = base.config(fake_url)
    gateway = declared["gateways"][0]
    gateway["prices"] = {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}
    gateway["api_keys"] = [
        {"name": "plain", "key": PLAIN},
        {"name": "limited", "key": LIMITED, "limits": LIMITS, "models": ["gpt-4o-mini"]},
    ]
    return declared


def instrument() -> None:
    """Time every piece of the limits' request path (all synchronous: the admission
    awaits only when a lease is short, which a busy key's never is)."""
    proxy.estimate = timed(proxy.estimate)
    core_limits.KeyState.admit = timed(core_limits.KeyState.admit)
    runtime_limits.Limiter.charge = timed(runtime_limits.Limiter.charge)
    runtime_limits.Limiter.headers = timed(runtime_limits.Limiter.headers)
    runtime_limits.Charge.end = timed(runtime_limits.Charge.end)
    runtime_limits.Charge.sent = timed(runtime_limits.Charge.sent)
    runtime_limits.Charge.reported = timed(runtime_limits.Charge.reported)


async def main(args: argparse.Namespace) -> None:
    logs.configure("text", "WARNING")
    if args.timed:
        instrument()
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(open_fake_provider())
        gateway = await stack.enter_async_context(
            open_gateway(config(fake.url), metrics=not args.quiet, access_log=False)
        )
        clients = {}
        for name, key in (("limited", LIMITED), ("plain", PLAIN)):
            limits = httpx2.Limits(
                max_connections=args.concurrency, max_keepalive_connections=args.concurrency
            )
            clients[name] = await stack.enter_async_context(
                httpx2.AsyncClient(
                    base_url=gateway.proxy_url, headers={"X-Api-Key": key}, limits=limits
                )
            )
        for stream in (False, True):
            samples: dict[str, list[float]] = {"limited": [], "plain": []}
            spent: list[float] = []
            for name in ("limited", "plain"):
                await base.load(clients[name], args.requests // 4, args.concurrency, stream)
            for round_ in range(args.rounds):
                for name in ("limited", "plain") if round_ % 2 == 0 else ("plain", "limited"):
                    SPENT[0] = 0.0
                    started = time.process_time()
                    await base.load(clients[name], args.requests, args.concurrency, stream)
                    samples[name].append((time.process_time() - started) / args.requests * 1e6)
                    if name == "limited":
                        spent.append(SPENT[0] / args.requests * 1e6)
            limited, plain = (statistics.median(samples[k]) for k in ("limited", "plain"))
            pairs = statistics.median(
                a - b for a, b in zip(samples["limited"], samples["plain"], strict=True)
            )
            kind = "streams" if stream else "whole answers"
            print(f"{kind}, c={args.concurrency}, {args.rounds} rounds of {args.requests}:")
            for name in ("limited", "plain"):
                shown = ", ".join(f"{v:.0f}" for v in samples[name])
                print(
                    f"  {name:>7}: {shown} µs/req (median {statistics.median(samples[name]):.0f})"
                )
            print(
                f"  difference: medians {limited - plain:+.0f} µs/req "
                f"({(limited - plain) / plain:+.1%} of the whole process), "
                f"median of pairs {pairs:+.0f} µs/req"
            )
            if args.timed:
                print(
                    "  the limits' own code, limited key: "
                    + ", ".join(f"{v:.1f}" for v in spent)
                    + f" µs/req (median {statistics.median(spent):.1f})"
                )
        stats = gateway.runtime.limiter.statistics()
        print(
            f"(provider calls: {len(fake.requests)}; store exchanges: {stats.exchanges}, "
            f"failed: {stats.failed_exchanges})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--timed", action="store_true", help="also time the limits' own code (thread_time)"
    )
    parser.add_argument("--quiet", action="store_true", help="metrics off (access log is off)")
    trio.run(main, parser.parse_args())
    sys.exit(0)
