"""The CPU time a proxied request spends in telemetry, measured where it is spent.

    .venv/bin/python benchmarks/telemetry_share.py [--requests 3000] [--log-format text]

On a shared or busy machine, the difference between two gateways' CPU per request is
noisier than what metrics and the access log cost. This script measures that cost
directly instead: a gateway (metrics on, access log written to a file) and a fake
provider run in this process under 32 concurrent clients, and every telemetry entry
point (``Telemetry.begin``, ``RequestRecord.answer``, ``RequestRecord.finish`` and
``Telemetry.flush``, which publishes finished requests in batches: metrics, the access
log lines, traces) is timed with ``time.thread_time()``. It reports the telemetry's CPU per request (median of
rounds), to compare with the gateway's CPU per request (``make bench``'s ``gateway``
rows, or benchmarks/telemetry_cost.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx2
import telemetry_inprocess as base
import trio

from trio_gateway import logs
from trio_gateway.telemetry import RequestRecord, Telemetry
from trio_gateway.testing.fake import open_fake_provider
from trio_gateway.testing.harness import open_gateway

SPENT = [0.0]
DEPTH = [0]


def timed(function):
    """``function``, its CPU time added to ``SPENT`` (once, when calls nest)."""

    def wrapper(*args, **kwargs):
        DEPTH[0] += 1
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            DEPTH[0] -= 1
            if DEPTH[0] == 0:
                SPENT[0] += time.thread_time() - started

    return wrapper


async def main(args: argparse.Namespace) -> None:
    Telemetry.begin = timed(Telemetry.begin)
    RequestRecord.answer = timed(RequestRecord.answer)
    RequestRecord.finish = timed(RequestRecord.finish)
    Telemetry.flush = timed(Telemetry.flush)  # the batches: metrics, log lines, traces
    with tempfile.TemporaryDirectory() as tmp:
        log_file = open(Path(tmp) / "gateway.log", "w")  # noqa: SIM115, ASYNC230
        logs.configure(args.log_format, "WARNING", stream=log_file)
        async with AsyncExitStack() as stack:
            fake = await stack.enter_async_context(open_fake_provider())
            gateway = await stack.enter_async_context(open_gateway(base.config(fake.url)))
            limits = httpx2.Limits(max_connections=32, max_keepalive_connections=32)
            client = await stack.enter_async_context(
                httpx2.AsyncClient(
                    base_url=gateway.proxy_url, headers={"X-Api-Key": base.KEY}, limits=limits
                )
            )
            for stream in (False, True):
                await base.load(client, 200, 32, stream)
                rounds = []
                for _ in range(args.rounds):
                    SPENT[0] = 0.0
                    await base.load(client, args.requests, 32, stream)
                    rounds.append(SPENT[0] / args.requests * 1e6)
                kind = "streams" if stream else "whole answers"
                shown = ", ".join(f"{r:.1f}" for r in rounds)
                print(
                    f"{kind} ({args.log_format} log): telemetry {shown} µs/req "
                    f"(median {statistics.median(rounds):.1f})",
                    flush=True,
                )
        log_file.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    trio.run(main, parser.parse_args())
