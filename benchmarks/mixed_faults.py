"""Mixed faults: the availability load of issue 10 (item 6), as a script anyone can run.

    .venv/bin/python benchmarks/mixed_faults.py [--duration S] [--concurrency N] [--seed N]
        [--stream-fraction F] [--guide-health] [--rate R] [--json FILE]

Two fake providers, A and B, are the two targets (same priority, round-robin) of one
upstream behind the gateway; 32 clients send requests through the proxy for 270 s, half
of them streaming, and every request is classified as a client would see it.

Faults (each percentage is a probability per request, see ``FAULTS``):

* A: a 503 flapping 4 s down / 11 s up; while up, 5 % ``cut_stream``, 3 % ``error_event``,
  3 % ``malformed_event``, 2 % ``reset``, 0.5 % ``hang``; 50 ± 50 ms latency.
* B: 3 % ``no_terminator``, 5 % 2 s ``stall_stream``, 2 % 429 (``rate_limit``,
  ``retry-after: 1``), 3 % 500, 1 % ``close``; 100 ± 100 ms latency.

Stream faults (``cut_stream``, ``error_event``, ``malformed_event``, ``no_terminator``,
``stall_stream``) apply to streamed answers only, so their percentage is per streaming
request. A fake evaluates its faults in order and fills one *slot* per request with the
first that fires (``testing/fake/faults.py``): ``reset`` and ``hang`` share the response
slot, ``cut_stream`` and ``error_event`` the end-of-stream slot, and so on. So that each
fault still fires on its stated share of requests, the faults of one slot get conditional
probabilities (``5 %, 3 %`` becomes ``0.05, 0.03 / 0.95``); the report shows the rates
the fakes actually fired at.

Gateway: service ``first_byte_timeout: 5``, ``idle_timeout: 8``; upstream health
``{passive: true, threshold: 3, interval: 5}``. ``--guide-health`` uses the guide's
``{passive: true, threshold: 3, interval: 60}`` and the default time budgets instead.

Processes: by default the gateway (``trio-gateway serve --memory``) and each fake
(``trio-gateway fake-provider``) run as processes of their own, and this one only sends
the load. In one Trio loop the clients' own work (two thirds of the gateway's CPU) delays
the gateway's timers and the fakes' latencies and takes the gateway's CPU: in-process the
fakes' 50-100 ms answers came back at a median of 0.16 s instead of 0.09 s, and a third
fewer requests were sent, so the result measures the load generator as much as the
gateway. ``--in-process`` runs everything in this process anyway (for debugging).

Load: by default a closed loop, as in the issue: each of the ``--concurrency`` clients
sends its next request as soon as the last one ended. A refusal without any attempt comes
back in a millisecond or two, so while every target is ejected each client fires hundreds
of them a second: the share of failed *requests* then depends on how fast refusals return
(the machine, the client) as much as on how long the gateway refuses. ``--rate R`` sends
an open loop instead, R requests a second on a fixed schedule whatever the answers (at
most ``--concurrency`` in flight: keep R times the latency well below it), whose success
rate is the share of a fixed stream of requests. The report also gives the share of time
in which no target was healthy (sampled from the health endpoint).

Seeded: ``--seed`` seeds both fakes' fault draws and latencies and each client's choice of
streaming or not. The interleaving of requests still depends on timing (and the machine's
load), so two runs with one seed are not identical; how far apart they land depends on
how stable the gateway's decisions are.

A request is a **success** when it gets a 200 and, for a stream, ``data: [DONE]`` with no
error event (a malformed event the gateway passes through is counted, not failed).
Failures are classified by kind: the HTTP status of an error and whether any target was
tried (``X-Gateway-Attempts`` empty or missing: none), a stream that ended with an error
event (after content, or before it), a stream truncated without terminator or error event
(a gateway bug: should be zero), a 200 whose body does not parse, and requests the client
gave up on after ``--client-timeout`` seconds (hung).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx2
import trio
import yaml

from trio_gateway.testing.fake import FakeProvider, faults_from_json, open_fake_provider
from trio_gateway.testing.fake.faults import SLOTS
from trio_gateway.testing.fake.spec import FaultKind
from trio_gateway.testing.harness import open_gateway

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "tgk_mixed_faults_key_0123456789"
PATH = "/v1/chat/completions"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-sonnet-20241022"
PROVIDER_KEYS = {"A": "sk-mixed-faults-a", "B": "sk-mixed-faults-b"}

#: The faults of item 6, per fake: (the fault, its probability per request). A fault
#: with ``flapping`` has no probability (it fires on every request while down).
FAULTS: dict[str, list[tuple[dict[str, Any], float | None]]] = {
    "A": [
        ({"kind": "error", "status": 503, "flapping": {"down": 4, "up": 11}}, None),
        ({"kind": "reset"}, 0.02),
        ({"kind": "hang"}, 0.005),
        ({"kind": "latency", "seconds": 0.05, "jitter": 0.05}, 1.0),
        ({"kind": "cut_stream"}, 0.05),
        ({"kind": "error_event"}, 0.03),
        ({"kind": "malformed_event"}, 0.03),
    ],
    "B": [
        ({"kind": "rate_limit", "retry_after": 1}, 0.02),
        ({"kind": "error", "status": 500}, 0.03),
        ({"kind": "close"}, 0.01),
        ({"kind": "latency", "seconds": 0.1, "jitter": 0.1}, 1.0),
        ({"kind": "no_terminator"}, 0.03),
        ({"kind": "stall_stream", "seconds": 2}, 0.05),
    ],
}

#: Health and budgets: the issue's measurement, and the guide's settings.
ISSUE_HEALTH = {"passive": True, "threshold": 3, "interval": 5}
ISSUE_BUDGETS = {"first_byte_timeout": 5, "idle_timeout": 8}
GUIDE_HEALTH = {"passive": True, "threshold": 3, "interval": 60}

HEALTH_SAMPLE_S = 0.5
LATE_S = 0.01
READY_S = 30.0


# --- faults ------------------------------------------------------------------------------


def fault_plan(entries: Iterable[tuple[dict[str, Any], float | None]]) -> list[dict[str, Any]]:
    """The faults in order, each slot's probabilities made conditional on the earlier ones.

    A fake fills each slot with the first of its faults that fires, and does not evaluate
    the later ones of that slot. For faults meant to fire on shares ``p1, p2, ...`` of the
    requests, exclusively, the k-th must fire with ``pk / (1 - p1 - ... - p(k-1))`` of the
    requests that reach it. Flapping faults are a phase, not a share: they are left alone
    (and while one is down no other fault of its slot is reached).
    """
    taken: dict[str, float] = defaultdict(float)
    plan = []
    for fault, share in entries:
        fault = dict(fault)
        if share is not None and share < 1:
            slot = SLOTS[FaultKind(fault["kind"])]
            fault["probability"] = share / (1 - taken[slot])
            taken[slot] += share
        plan.append(fault)
    return plan


def fault_rates(name: str, stats: dict[str, Any], requests: int) -> list[dict[str, Any]]:
    """What each fault of ``name`` did: fired, and the share of the requests it applied to.

    The share's denominator is what the first probabilistic fault of the same slot was
    evaluated on (every request that reached the slot); for the flap, every request.
    """
    rows = []
    reached: dict[str, int] = {}
    for (fault, share), entry in zip(FAULTS[name], stats["faults"], strict=True):
        slot = SLOTS[FaultKind(fault["kind"])]
        label = describe_fault(fault)
        if share is None:
            flap = fault["flapping"]
            rows.append(
                {
                    "fault": label,
                    "intended": f"down {flap['down']:g} s of {flap['down'] + flap['up']:g} s",
                    "fired": entry["fired"],
                    "of": requests,
                    "rate": entry["fired"] / requests if requests else 0.0,
                }
            )
            continue
        base = reached.setdefault(slot, entry["matched"])
        rows.append(
            {
                "fault": label,
                "intended": share,
                "fired": entry["fired"],
                "of": base,
                "rate": entry["fired"] / base if base else 0.0,
            }
        )
    return rows


def describe_fault(fault: dict[str, Any]) -> str:
    kind = fault["kind"]
    if "flapping" in fault:
        flap = fault["flapping"]
        return f"{fault['status']} flapping {flap['down']} s down / {flap['up']} s up"
    if kind == "error":
        return f"error {fault['status']}"
    if kind == "rate_limit":
        return f"429 (retry-after {fault['retry_after']} s)"
    if kind == "latency":
        return f"latency {fault['seconds'] * 1000:.0f} ± {fault['jitter'] * 1000:.0f} ms"
    if kind == "stall_stream":
        return f"stall_stream {fault['seconds']} s"
    return kind


# --- the gateway's configuration ---------------------------------------------------------


def gateway_config(urls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """One gateway: an upstream of A and B (same priority, round-robin), a service, a rule."""
    targets = [
        {
            "provider": "openai",
            "base_url": urls["A"],
            "path": "/v1/chat/completions",
            "default_model": OPENAI_MODEL,
            "credentials": {
                "header_name": "Authorization",
                "header_value": f"Bearer {PROVIDER_KEYS['A']}",
            },
        }
    ]
    if args.anthropic_b:
        targets.append(
            {
                "provider": "anthropic",
                "base_url": urls["B"],
                "path": "/v1/messages",
                "default_model": ANTHROPIC_MODEL,
                "headers": {"anthropic-version": "2023-06-01"},
                "credentials": {"header_name": "x-api-key", "header_value": PROVIDER_KEYS["B"]},
            }
        )
    else:
        targets.append({**targets[0], "base_url": urls["B"]})
        targets[1]["credentials"] = {
            "header_name": "Authorization",
            "header_value": f"Bearer {PROVIDER_KEYS['B']}",
        }
    service: dict[str, Any] = {"name": "mixed", "upstream": "mixed"}
    if not args.guide_health:
        service.update(ISSUE_BUDGETS)
    return {
        "gateways": [
            {
                "name": "mixed-faults",
                "upstreams": [
                    {
                        "name": "mixed",
                        "algorithm": "round-robin",
                        "targets": targets,
                        "health_checks": GUIDE_HEALTH if args.guide_health else ISSUE_HEALTH,
                    }
                ],
                "services": [service],
                "rules": [{"name": "v1", "path": "/v1", "methods": ["POST"], "service": "mixed"}],
                "api_keys": [{"name": "mixed-faults", "key": API_KEY}],
            }
        ]
    }


# --- the system under test ---------------------------------------------------------------


@attrs.define
class Fake:
    """A fake provider, in this process (``local``) or another one (its control API)."""

    name: str
    url: str
    local: FakeProvider | None = None
    pid: int | None = None

    async def set_faults(self, client: httpx2.AsyncClient, faults: list[dict[str, Any]]) -> None:
        """Put ``faults`` in effect now: the flap's clock starts here."""
        if self.local is not None:
            self.local.set_faults(faults_from_json(faults))
        else:
            response = await client.put(f"{self.url}/_fake/faults", json=faults)
            response.raise_for_status()

    async def stats(self, client: httpx2.AsyncClient) -> dict[str, Any]:
        if self.local is not None:
            return self.local.statistics().to_json()
        response = await client.get(f"{self.url}/_fake/stats")
        response.raise_for_status()
        return response.json()


@attrs.define
class System:
    proxy_url: str
    admin_url: str
    fakes: dict[str, Fake]
    gateway_pid: int | None = None


async def _start_process(
    nursery: trio.Nursery, argv: list[str], log: Path, pattern: re.Pattern[str]
) -> tuple[trio.Process, re.Match[str]]:
    """Start ``argv`` (output to ``log``) and wait until its output matches ``pattern``."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
                cwd=ROOT,
            )
        )
    with trio.move_on_after(READY_S):
        while True:
            text = await trio.Path(log).read_text(errors="replace")
            if (match := pattern.search(text)) is not None:
                return process, match
            if process.returncode is not None:
                break
            await trio.sleep(0.05)
    tail = "\n".join((await trio.Path(log).read_text(errors="replace")).splitlines()[-20:])
    raise SystemExit(f"{argv[3]} did not start (see {log}):\n{tail}")


@contextlib.asynccontextmanager
async def open_processes(args: argparse.Namespace, workdir: Path) -> AsyncIterator[System]:
    """The gateway and both fakes as processes of their own; stopped (SIGTERM) on exit."""
    cli = [sys.executable, "-m", "trio_gateway"]
    async with trio.open_nursery() as nursery:
        fakes = {}
        for offset, name in enumerate(FAULTS):
            argv = [*cli, "fake-provider", "--name", name, "--listen", "127.0.0.1:0"]
            argv += ["--api-key", PROVIDER_KEYS[name], "--seed", str(args.seed * 2 + offset)]
            process, match = await _start_process(
                nursery, argv, workdir / f"fake-{name}.log", re.compile(r"listening on (\S+?),?\s")
            )
            fakes[name] = Fake(name, match[1], pid=process.pid)
        config = workdir / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(gateway_config({n: f.url for n, f in fakes.items()}, args))
        )
        argv = [*cli, "serve", "--memory", "--config", str(config), "--log-level", "WARNING"]
        argv += ["--admin-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0"]
        argv += ["--graceful-timeout", "1"]
        process, match = await _start_process(
            nursery,
            argv,
            workdir / "gateway.log",
            re.compile(r"admin API: (http://\S+)/api/v1.*\n\s*proxy:\s+(http://\S+)"),
        )
        yield System(match[2], match[1], fakes, gateway_pid=process.pid)
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def open_in_process(args: argparse.Namespace) -> AsyncIterator[System]:
    """Everything in this Trio loop: the fakes and the gateway (memory store)."""
    async with contextlib.AsyncExitStack() as stack:
        fakes = {}
        for offset, name in enumerate(FAULTS):
            fake = await stack.enter_async_context(
                open_fake_provider(
                    name=name, api_key=PROVIDER_KEYS[name], seed=args.seed * 2 + offset
                )
            )
            fakes[name] = Fake(name, fake.url, local=fake)
        config = gateway_config({n: f.url for n, f in fakes.items()}, args)
        running = await stack.enter_async_context(open_gateway(config))
        yield System(running.proxy_url, running.admin_url, fakes)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of a process (``None``: this one) so far."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- one request, as a client sees it ----------------------------------------------------

OK = "ok"
KINDS = {
    "stream_error_after_content": "stream ended with an error event after content",
    "stream_error_before_content": "stream ended with an error event before any content",
    "stream_truncated": "stream ended without terminator or error event (must be 0)",
    "bad_body": "200 whose body is not a chat completion",
    "client_timeout": "hung: no complete answer within the client timeout",
    "client_error": "connection to the gateway failed",
}


def http_kind(status: int, attempts: int) -> str:
    return f"http_{status}_" + ("tried" if attempts else "no_attempt")


def describe_kind(kind: str) -> str:
    if kind.startswith("http_"):
        _, status, rest = kind.split("_", 2)
        return f"HTTP {status}, " + ("target(s) tried" if rest == "tried" else "no target tried")
    return KINDS.get(kind, kind)


def parse_trail(header: str | None) -> list[tuple[str, str]]:
    """``X-Gateway-Attempts`` as ``[(target id, outcome), ...]``; missing or empty: none."""
    trail = []
    for entry in (header or "").split(","):
        target, *params = entry.strip().split(";")
        if target:
            outcome = next((p[8:] for p in params if p.startswith("outcome=")), "?")
            trail.append((target, outcome))
    return trail


@attrs.define
class Result:
    start: float  # seconds after the load began
    seconds: float
    stream: bool
    kind: str
    status: int | None = None
    trail: list[tuple[str, str]] | None = None  # None: no response headers
    malformed: int = 0


@attrs.define
class StreamCheck:
    """Reads an OpenAI SSE stream line by line and judges how it ended."""

    event: str = ""
    data: list[str] = attrs.field(factory=list)
    content: bool = False
    error: bool = False
    error_after_content: bool = False
    done: bool = False
    malformed: int = 0

    def feed(self, line: str) -> None:
        if not line:
            self._dispatch()
        elif line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            self.event = line[6:].strip()

    def finish(self) -> None:
        self._dispatch()  # an event not followed by its blank line still counts

    def kind(self) -> str:
        if self.error:
            return (
                "stream_error_after_content"
                if self.error_after_content
                else "stream_error_before_content"
            )
        if self.done:
            return OK
        return "stream_truncated"

    def _dispatch(self) -> None:
        event, data = self.event, "\n".join(self.data)
        self.event, self.data = "", []
        if not data and not event:
            return
        if data == "[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if event == "error" or (isinstance(obj, dict) and "error" in obj):
            if not self.error:
                self.error, self.error_after_content = True, self.content
            return
        if not isinstance(obj, dict):
            self.malformed += 1
            return
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls"):
                self.content = True


def is_completion(data: bytes) -> bool:
    try:
        return bool(json.loads(data)["choices"][0]["message"])
    except (ValueError, LookupError, TypeError):
        return False


async def one_request(
    client: httpx2.AsyncClient, body: bytes, stream: bool, limit_s: float
) -> tuple[str, int | None, str | None, int]:
    """Send one request; ``(kind, status, X-Gateway-Attempts, malformed events seen)``."""
    headers = {"X-Api-Key": API_KEY, "Content-Type": "application/json"}
    status: int | None = None
    trail: str | None = None
    check = StreamCheck()
    with trio.move_on_after(limit_s):
        try:
            async with client.stream("POST", PATH, content=body, headers=headers) as response:
                status, trail = response.status_code, response.headers.get("x-gateway-attempts")
                kind = http_kind(status, len(parse_trail(trail))) if status != 200 else OK
                try:
                    if kind != OK:
                        await response.aread()
                    elif not stream:
                        kind = "bad_body" if not is_completion(await response.aread()) else OK
                    else:
                        async for line in response.aiter_lines():
                            check.feed(line)
                except httpx2.TimeoutException:
                    return "client_timeout", status, trail, check.malformed
                except httpx2.TransportError:
                    if kind == OK and not stream:
                        kind = "bad_body"  # the body broke off
                    # a broken stream is judged on what arrived before the break
                if kind == OK and stream:
                    check.finish()
                    kind = check.kind()
                return kind, status, trail, check.malformed
        except httpx2.TimeoutException:
            pass
        except httpx2.TransportError:
            return "client_error", status, trail, check.malformed
    return "client_timeout", status, trail, check.malformed


# --- the load ----------------------------------------------------------------------------


@attrs.define
class Run:
    results: list[Result] = attrs.field(factory=list)
    health: list[tuple[float, dict[str, str]]] = attrs.field(factory=list)  # (t, id -> state)
    health_last: dict[str, Any] | None = None
    health_errors: int = 0
    load: list[tuple[float, tuple[float, float, float]]] = attrs.field(factory=list)
    late: int = 0  # open loop: requests that waited for a free slot


async def send(
    client: httpx2.AsyncClient,
    run: Run,
    label: str,
    stream: bool,
    due: float,
    t0: float,
    args: argparse.Namespace,
) -> None:
    """One request, recorded. ``due``: when it should have started (open loop: its slot)."""
    body = {"messages": [{"role": "user", "content": f"request {label}"}], "stream": stream}
    kind, status, trail, malformed = await one_request(
        client, json.dumps(body).encode(), stream, args.client_timeout
    )
    run.results.append(
        Result(
            start=due - t0,
            seconds=trio.current_time() - due,
            stream=stream,
            kind=kind,
            status=status,
            trail=None if status is None else parse_trail(trail),
            malformed=malformed,
        )
    )


async def client_loop(
    client: httpx2.AsyncClient, run: Run, index: int, t0: float, args: argparse.Namespace
) -> None:
    """Closed loop: one client sends its next request as soon as the last one ended."""
    rng = random.Random(f"{args.seed}/client/{index}")
    n = 0
    while (now := trio.current_time()) < t0 + args.duration:
        n += 1
        stream = rng.random() < args.stream_fraction
        await send(client, run, f"{index}/{n}", stream, now, t0, args)


async def open_loop(
    client: httpx2.AsyncClient, run: Run, t0: float, args: argparse.Namespace
) -> None:
    """Open loop: ``--rate`` requests a second on a fixed schedule, whatever the answers.

    At most ``--concurrency`` are in flight; a request due while all are busy waits for
    one, and that wait counts in its time (``late`` in the report).
    """
    rng = random.Random(f"{args.seed}/open")
    slots = trio.CapacityLimiter(args.concurrency)

    async def scheduled(n: int, due: float, stream: bool) -> None:
        async with slots:
            if trio.current_time() - due > LATE_S:
                run.late += 1
            await send(client, run, str(n), stream, due, t0, args)

    async with trio.open_nursery() as nursery:
        n = 0
        while (due := t0 + n / args.rate) < t0 + args.duration:
            await trio.sleep_until(due)
            nursery.start_soon(scheduled, n, due, rng.random() < args.stream_fraction)
            n += 1


async def watch_health(
    admin: httpx2.AsyncClient, health_url: str, run: Run, t0: float, stop: trio.Event
) -> None:
    """Sample the health endpoint: who is ejected, and when."""
    while not stop.is_set():
        try:
            response = await admin.get(health_url)
            response.raise_for_status()
            data = response.json()
            run.health_last = data
            states = {t["id"]: str(t.get("state", "?")) for t in data["targets"]}
            run.health.append((trio.current_time() - t0, states))
        except (httpx2.HTTPError, ValueError, KeyError, TypeError):
            run.health_errors += 1
        with trio.move_on_after(HEALTH_SAMPLE_S):
            await stop.wait()


async def watch_load(run: Run, t0: float, every: float, stop: trio.Event) -> None:
    while not stop.is_set():
        run.load.append((trio.current_time() - t0, os.getloadavg()))
        with trio.move_on_after(every):
            await stop.wait()


async def find_targets(
    admin: httpx2.AsyncClient, urls: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """The health endpoint's URL, and each target's id -> A or B (by base URL)."""
    gateway = (await admin.get("/api/v1/gateways")).json()["items"][0]
    upstreams = (await admin.get(f"/api/v1/gateways/{gateway['id']}/upstreams")).json()
    upstream = upstreams["items"][0]
    by_url = {url.rstrip("/"): name for name, url in urls.items()}
    names = {t["id"]: by_url.get(t["base_url"].rstrip("/"), t["id"]) for t in upstream["targets"]}
    return f"/api/v1/gateways/{gateway['id']}/upstreams/{upstream['id']}/health", names


async def smoke(client: httpx2.AsyncClient) -> None:
    """One plain request before the faults: the configuration works."""
    body = {"messages": [{"role": "user", "content": "ready?"}]}
    response = await client.post(PATH, json=body, headers={"X-Api-Key": API_KEY})
    if response.status_code != 200:
        raise SystemExit(f"smoke request failed: {response.status_code} {response.text[:300]}")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mixed-faults-") as tmp:
        opener = open_in_process(args) if args.in_process else open_processes(args, Path(tmp))
        async with opener as system:
            limits = httpx2.Limits(
                max_connections=args.concurrency, max_keepalive_connections=args.concurrency
            )
            timeout = httpx2.Timeout(args.client_timeout)
            async with (
                httpx2.AsyncClient(
                    base_url=system.proxy_url, limits=limits, timeout=timeout
                ) as client,
                httpx2.AsyncClient(base_url=system.admin_url, timeout=10) as admin,
                httpx2.AsyncClient(timeout=10) as control,
            ):
                urls = {name: fake.url for name, fake in system.fakes.items()}
                health_url, names = await find_targets(admin, urls)
                await smoke(client)
                before = {n: await f.stats(control) for n, f in system.fakes.items()}
                pids = {"gateway": system.gateway_pid} | {
                    f"fake {n}": f.pid for n, f in system.fakes.items()
                }
                if args.in_process:
                    pids = {"everything (one process)": None}
                else:
                    pids["load generator"] = None
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                for name, fake in system.fakes.items():
                    await fake.set_faults(control, fault_plan(FAULTS[name]))
                run = Run()
                t0 = trio.current_time()
                wall0 = time.monotonic()
                stop = trio.Event()
                async with trio.open_nursery() as watchers:
                    watchers.start_soon(watch_health, admin, health_url, run, t0, stop)
                    watchers.start_soon(watch_load, run, t0, args.bin, stop)
                    if args.rate is not None:
                        await open_loop(client, run, t0, args)
                    else:
                        async with trio.open_nursery() as clients:
                            for index in range(args.concurrency):
                                clients.start_soon(client_loop, client, run, index, t0, args)
                    stop.set()
                wall = time.monotonic() - wall0
                cpu = {
                    name: (c1 - c0)
                    if (c0 := cpu0[name]) is not None and (c1 := cpu_seconds(pid)) is not None
                    else None
                    for name, pid in pids.items()
                }
                after = {n: await f.stats(control) for n, f in system.fakes.items()}
    run.load.append((wall, os.getloadavg()))
    return summarize(run, names, before, after, cpu, wall, args)


# --- the report --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def summarize(
    run: Run,
    names: dict[str, str],
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    cpu: dict[str, float | None],
    wall: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    results = run.results
    total = len(results)
    ok = [r for r in results if r.kind == OK]
    kinds = Counter(r.kind for r in results if r.kind != OK)
    answered = [(r, r.trail) for r in results if r.trail is not None]
    attempts = Counter(len(trail) for _, trail in answered)
    per_target: dict[str, Counter[str]] = defaultdict(Counter)
    served: Counter[str] = Counter()
    for r, trail in answered:
        for target, outcome in trail:
            per_target[names.get(target, target)][outcome] += 1
        if r.kind == OK and trail:
            served[names.get(trail[-1][0], trail[-1][0])] += 1
    no_attempt_503 = sum(1 for r, trail in answered if r.status == 503 and not trail)
    # Issue 10, item 6: a failed request either broke after its first content (its stream
    # ended with an error event) or tried every target.
    targets_total = len(FAULTS)
    not_every_target = sum(
        1
        for r, trail in answered
        if r.kind not in (OK, "stream_error_after_content")
        and len({target for target, _ in trail}) < targets_total
    )

    def rate(rs: list[Result]) -> float | None:
        return sum(r.kind == OK for r in rs) / len(rs) if rs else None

    timeline = []
    bins = max(1, math.ceil(args.duration / args.bin))
    for i in range(bins):
        lo, hi = i * args.bin, (i + 1) * args.bin
        rs = [r for r in results if lo <= r.start < hi]
        samples = [s for t, s in run.health if lo <= t < hi]
        load = [l1 for t, (l1, _, _) in run.load if lo <= t < hi]
        timeline.append(
            {
                "from_s": lo,
                "requests": len(rs),
                "success_rate": rate(rs),
                "http_503_no_attempt": sum(1 for r in rs if r.kind == "http_503_no_attempt"),
                "all_ejected_share": (
                    sum(all(v != "healthy" for v in s.values()) for s in samples) / len(samples)
                    if samples
                    else None
                ),
                "load_1m": load[0] if load else None,
            }
        )

    health: dict[str, Any] = {"samples": len(run.health), "errors": run.health_errors}
    if run.health:
        states: dict[str, Counter[str]] = defaultdict(Counter)
        for _, sample in run.health:
            for target, state in sample.items():
                states[names.get(target, target)][state] += 1
        health["state_share"] = {
            name: {state: n / len(run.health) for state, n in sorted(c.items())}
            for name, c in sorted(states.items())
        }
        health["all_ejected_share"] = sum(
            all(v != "healthy" for v in s.values()) for _, s in run.health
        ) / len(run.health)
    if run.health_last is not None:
        health["last"] = {
            names.get(t["id"], t["id"]): {k: v for k, v in t.items() if k != "id"}
            for t in run.health_last.get("targets", [])
        }

    faults = {}
    for name in FAULTS:
        requests = after[name]["requests"] - before[name]["requests"]
        faults[name] = {
            "requests": requests,
            "faults": fault_rates(name, after[name], requests),
        }

    seconds_ok = [r.seconds for r in ok]
    return {
        "settings": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "load": (
                "closed loop"
                if args.rate is None
                else f"open loop, {args.rate:g} requests/s ({run.late} waited for a slot)"
            ),
            "seed": args.seed,
            "stream_fraction": args.stream_fraction,
            "client_timeout_s": args.client_timeout,
            "health": GUIDE_HEALTH if args.guide_health else ISSUE_HEALTH,
            "budgets": "defaults" if args.guide_health else ISSUE_BUDGETS,
            "targets": "A openai, B "
            + ("anthropic (translated)" if args.anthropic_b else "openai"),
            "processes": "one (in-process)"
            if args.in_process
            else "gateway, fake A, fake B, load: one each",
            "faults": {name: fault_plan(entries) for name, entries in FAULTS.items()},
        },
        "commit": git_commit(),
        "wall_s": wall,
        "total": total,
        "requests_per_s": total / wall if wall else None,
        "successes": len(ok),
        "success_rate": len(ok) / total if total else None,
        "success_rate_stream": rate([r for r in results if r.stream]),
        "success_rate_whole": rate([r for r in results if not r.stream]),
        "failures": {k: kinds[k] for k in sorted(kinds, key=lambda k: -kinds[k])},
        "http_503_no_attempt": no_attempt_503,
        "failed_without_trying_every_target": not_every_target,
        "attempts": {
            "mean": (sum(len(t) for _, t in answered) / len(answered)) if answered else None,
            "distribution": {str(n): attempts[n] for n in sorted(attempts)},
            "without_headers": total - len(answered),
        },
        "targets": {
            name: {
                "attempts": sum(c.values()),
                "served": served[name],
                "outcomes": dict(c.most_common()),
            }
            for name, c in sorted(per_target.items())
        },
        "malformed_events_seen": sum(r.malformed for r in results),
        "latency_ok_s": {
            "p50": percentile(seconds_ok, 0.5),
            "p90": percentile(seconds_ok, 0.9),
            "p99": percentile(seconds_ok, 0.99),
            "max": max(seconds_ok, default=None),
            "mean": statistics.fmean(seconds_ok) if seconds_ok else None,
        },
        "timeline": timeline,
        "health": health,
        "fakes": faults,
        "cpu_share_of_one_core": {
            name: (c / wall if c is not None and wall else None) for name, c in cpu.items()
        },
        "load_average": [
            {"t_s": round(t, 1), "1m": a, "5m": b, "15m": c} for t, (a, b, c) in run.load
        ],
    }


def git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "trio_gateway"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f} %"


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    total = report["total"] or 1
    out = [
        f"## Mixed faults: {report['total']} requests in {report['wall_s']:.0f} s "
        f"({report['requests_per_s']:.0f}/s), commit {report['commit']}",
        "",
        f"{s['concurrency']} clients, {s['load']}, {s['stream_fraction']:.0%} streaming, "
        f"seed {s['seed']}; "
        f"health {s['health']}, budgets {s['budgets']}; targets {s['targets']}; "
        f"processes: {s['processes']}; client timeout {s['client_timeout_s']:g} s.",
        "",
        "| | |",
        "|---|---:|",
        f"| requests | {report['total']} |",
        f"| **success rate** | **{pct(report['success_rate'])}** |",
        f"| success rate, streaming / whole | {pct(report['success_rate_stream'])} / "
        f"{pct(report['success_rate_whole'])} |",
        f"| HTTP 503 with no target tried | {report['http_503_no_attempt']} "
        f"({pct(report['http_503_no_attempt'] / total)} of requests) |",
        f"| failed without trying every target (must be 0) | "
        f"{report['failed_without_trying_every_target']} |",
        f"| time with no target healthy (health endpoint) | "
        f"{pct(report['health'].get('all_ejected_share'))} |",
        f"| attempts per request (mean) | {fmt(report['attempts']['mean'], '.2f')} |",
        f"| malformed events passed to clients | {report['malformed_events_seen']} |",
        "| latency of successes p50 / p90 / p99 / max | "
        + " / ".join(
            fmt(report["latency_ok_s"][k], ".2f") + " s" for k in ("p50", "p90", "p99", "max")
        )
        + " |",
        "",
        "| failure | requests | of requests | of failures |",
        "|---|---:|---:|---:|",
    ]
    failed = sum(report["failures"].values()) or 1
    for kind, n in report["failures"].items():
        out.append(f"| {describe_kind(kind)} | {n} | {pct(n / total)} | {pct(n / failed)} |")
    for kind in ("stream_truncated", "client_timeout"):
        if kind not in report["failures"]:
            out.append(f"| {describe_kind(kind)} | 0 | 0.0 % | 0.0 % |")
    dist = report["attempts"]["distribution"]
    out += [
        "",
        "| attempts per request | "
        + " | ".join(dist)
        + (" | no response |" if report["attempts"]["without_headers"] else " |"),
        "|---|" + "---:|" * (len(dist) + bool(report["attempts"]["without_headers"])),
        "| requests | "
        + " | ".join(str(n) for n in dist.values())
        + (
            f" | {report['attempts']['without_headers']} |"
            if report["attempts"]["without_headers"]
            else " |"
        ),
        "",
        "| target | attempts | answered (successes) | outcomes of its attempts |",
        "|---|---:|---:|---|",
    ]
    for name, t in report["targets"].items():
        outcomes = ", ".join(f"{k}: {v}" for k, v in t["outcomes"].items())
        out.append(f"| {name} | {t['attempts']} | {t['served']} | {outcomes} |")
    health = report["health"]
    if "state_share" in health:
        out += [
            "",
            f"Health endpoint, {health['samples']} samples every {HEALTH_SAMPLE_S} s: "
            + "; ".join(
                f"{name} " + ", ".join(f"{st} {pct(v)}" for st, v in shares.items())
                for name, shares in health["state_share"].items()
            )
            + f"; no target healthy {pct(health['all_ejected_share'])} of the time.",
        ]
        if "last" in health:
            out.append(
                "Ejections: "
                + ", ".join(f"{n} {t.get('ejections', '?')}" for n, t in health["last"].items())
                + "."
            )
    out += ["", "| fake | fault | intended | fired | of | rate |", "|---|---|---:|---:|---:|---:|"]
    for name, fake in report["fakes"].items():
        for row in fake["faults"]:
            intended = row["intended"] if isinstance(row["intended"], str) else pct(row["intended"])
            out.append(
                f"| {name} ({fake['requests']} requests) | {row['fault']} | {intended} | "
                f"{row['fired']} | {row['of']} | {pct(row['rate'])} |"
            )
    out += [
        "",
        "| from s | requests | success | 503 no attempt | no target healthy | load 1 min |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["timeline"]:
        out.append(
            f"| {row['from_s']:g} | {row['requests']} | {pct(row['success_rate'])} | "
            f"{row['http_503_no_attempt']} | {pct(row['all_ejected_share'])} | "
            f"{fmt(row['load_1m'], '.2f')} |"
        )
    out += [
        "",
        "CPU (share of one core): "
        + ", ".join(f"{n} {pct(v)}" for n, v in report["cpu_share_of_one_core"].items())
        + ". Load average (1/5/15 min) at start "
        + "/".join(f"{report['load_average'][0][k]:.2f}" for k in ("1m", "5m", "15m"))
        + ", at end "
        + "/".join(f"{report['load_average'][-1][k]:.2f}" for k in ("1m", "5m", "15m"))
        + ".",
    ]
    return "\n".join(out)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The mixed-fault availability load of issue 10 (see the module docstring)."
    )
    parser.add_argument("--duration", type=float, default=270.0, metavar="S", help="default 270")
    parser.add_argument("--concurrency", type=int, default=32, metavar="N", help="default 32")
    parser.add_argument("--seed", type=int, default=1, metavar="N", help="default 1")
    parser.add_argument(
        "--stream-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="share of streaming requests (default 0.5)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="open loop: R requests a second on a fixed schedule, at most --concurrency in "
        "flight (default: closed loop, each client sends its next request at once)",
    )
    parser.add_argument(
        "--guide-health",
        action="store_true",
        help="health {threshold: 3, interval: 60} and the default time budgets",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a request not answered in full by then counts as hung (default 60)",
    )
    parser.add_argument(
        "--anthropic-b",
        action="store_true",
        help="make B an Anthropic target (the gateway translates); default: both OpenAI",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the gateway and the fakes in this process (default: processes of their own)",
    )
    parser.add_argument("--bin", type=float, default=15.0, metavar="S", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if not 0 <= args.stream_fraction <= 1:
        parser.error("--stream-fraction must be between 0 and 1")
    if min(args.duration, args.concurrency, args.client_timeout, args.rate or 1) <= 0:
        parser.error("--duration, --concurrency, --client-timeout and --rate must be positive")
    for entries in FAULTS.values():
        faults_from_json(fault_plan(entries))  # a clear error now rather than a 422 later
    report = trio.run(measure, args)
    print(render(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
