"""What metrics and the access log cost per proxied request, without nginx or wrk.

    .venv/bin/python benchmarks/telemetry_cost.py [--requests 2000] [--rounds 5]

Starts two fake providers (``trio-gateway fake-provider``, each its own process) and
two gateways on the same configuration (benchmarks/telemetry.yaml is written to a
temporary directory): one as shipped (metrics on, access log on, written to a file)
and one with ``--metrics off --access-log off``. Then, round after round, alternating
which goes first, it sends the same load to each (``--concurrency`` clients, 32 by
default, whole answers and then streams) and reads each gateway's CPU time from
``/proc`` (``utime + stime``) before and after: CPU per request. It reports the
median of the rounds for each, and the difference as a share of the quiet gateway's
CPU per request, which issue 11 wants at most 5 %.

``make bench`` measures the same on nginx and wrk (the ``gateway-quiet`` rows); this
script is for a quick check while developing (the fakes are slower than nginx, which
does not change the gateway's own CPU per request). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import trio

CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY = "tgk_telemetry_cost_key_0123456789"
CONFIG = """
gateways:
  - name: cost
    upstreams:
      - name: u
        algorithm: round-robin
        targets:
          - {{provider: openai, base_url: "http://127.0.0.1:{a}", default_model: gpt-4o-mini,
             credentials: {{header_name: Authorization, header_value: Bearer sk-fake}}}}
          - {{provider: openai, base_url: "http://127.0.0.1:{b}", default_model: gpt-4o-mini,
             credentials: {{header_name: Authorization, header_value: Bearer sk-fake}}}}
        health_checks: {{passive: true, threshold: 3, interval: 60}}
    services: [{{name: s, upstream: u}}]
    rules: [{{name: v1, path: /v1, service: s}}]
    api_keys: [{{name: bench, key: {key}}}]
"""
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 8},
        {"role": "user", "content": "Write a haiku about load balancers. " * 4},
    ],
    "max_tokens": 64,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=1).status_code < 500:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout} s")


async def load(port: int, n: int, concurrency: int, stream: bool) -> None:
    body = {**BODY, "stream": stream}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"X-Api-Key": KEY}, limits=limits, timeout=60
    ) as client:
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    async for _ in response.aiter_raw():
                        pass
                    if response.status_code != 200:
                        raise SystemExit(f"status {response.status_code}")

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)


def measure(pid: int, port: int, n: int, concurrency: int, stream: bool) -> float:
    trio.run(load, port, max(50, n // 10), concurrency, stream)  # warm-up
    before = cpu_seconds(pid)
    trio.run(load, port, n, concurrency, stream)
    return (cpu_seconds(pid) - before) / n * 1e6  # µs per request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    binary = str(Path(sys.executable).with_name("trio-gateway"))
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="trio-gateway-cost-") as tmp:
        try:
            fakes = [free_port(), free_port()]
            for port in fakes:
                procs.append(
                    subprocess.Popen(
                        [binary, "fake-provider", "--listen", f"127.0.0.1:{port}", "--any-model"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            config = Path(tmp) / "telemetry.yaml"
            config.write_text(CONFIG.format(a=fakes[0], b=fakes[1], key=KEY))
            gateways = {}
            for name, extra in (("on", []), ("off", ["--metrics", "off", "--access-log", "off"])):
                port, admin = free_port(), free_port()
                log = open(Path(tmp) / f"gateway-{name}.log", "wb")  # noqa: SIM115
                argv = [binary, "serve", "--memory", "--config", str(config)]
                argv += ["--proxy-listen", f"127.0.0.1:{port}"]
                argv += ["--admin-listen", f"127.0.0.1:{admin}", "--log-level", "WARNING", *extra]
                proc = subprocess.Popen(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
                procs.append(proc)
                gateways[name] = (proc.pid, port)
            for port in fakes:
                wait_ready(f"http://127.0.0.1:{port}/v1/models")
            for _, port in gateways.values():
                wait_ready(f"http://127.0.0.1:{port}/readyz")
            for stream in (False, True):
                samples: dict[str, list[float]] = {"on": [], "off": []}
                for round_ in range(args.rounds):
                    order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
                    for name in order:
                        pid, port = gateways[name]
                        samples[name].append(
                            measure(pid, port, args.requests, args.concurrency, stream)
                        )
                on, off = (statistics.median(samples[k]) for k in ("on", "off"))
                kind = "streams (OpenAI pass-through)" if stream else "whole answers"
                print(f"{kind}, c={args.concurrency}, {args.rounds} rounds of {args.requests}:")
                for name in ("on", "off"):
                    rounds = ", ".join(f"{v:.0f}" for v in samples[name])
                    median = statistics.median(samples[name])
                    print(f"  metrics+access log {name:>3}: {rounds} µs/req (median {median:.0f})")
                print(
                    f"  cost: {on - off:+.0f} µs/req = {(on - off) / off:+.1%} of the gateway's CPU"
                )
            lines = (Path(tmp) / "gateway-on.log").read_text().count("trio_gateway.access")
            print(f"(access log lines written by the 'on' gateway: {lines})")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
