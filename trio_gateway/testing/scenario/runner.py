"""Run a scenario: fakes, a gateway, the load and the timeline, in one Trio loop.

Theory of operation
-------------------
:func:`run_scenario` owns one nursery for the length of the run. In it:

* the **fakes** the file declares (their faults restart at t = 0, so windows and
  flapping count from the run's start);
* the **gateway**: by default in the same loop (:func:`~trio_gateway.testing.stack.open_stack`,
  port 0, memory store); or a child process (``process=True``, for the soak: its
  memory and descriptors are then its own); or one already running
  (:class:`GatewayTarget`, ``--gateway URL``), whose upstream is whatever it is;
* the **timeline**: at each phase's start, the phase's faults are set on its fakes
  (their windows start then) and its ``targets`` written to the upstream;
* a **sampler** that reads every target's health every ``health_interval`` seconds
  (from the runtime in-process, from the admin API otherwise) and collects what
  each fake received;
* the **load** (:mod:`.load`) until the last phase ends. Every request ends in one
  result; then the run waits until nothing is in flight at the gateway and nothing
  pending at a fake (``settled``), and stops everything.

Everything runs on ``trio.current_time()``: with a ``MockClock(autojump_threshold=0)``
(``--virtual-time``, and the test suite) a minute of scenario runs in the time its
requests take to process, over real loopback sockets, since every task of the run
lives in this loop. Out-of-process gateways need real time.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import attrs
import httpx2
import trio
import yaml

from trio_gateway.testing.fake import FakeProvider
from trio_gateway.testing.scenario.load import Client, Result, drive
from trio_gateway.testing.scenario.model import Scenario
from trio_gateway.testing.stack import (
    OpenStack,
    gateway_config,
    open_stack,
    resolve_upstream,
    target_names,
)

#: How long the run waits, after the load, for the gateway and the fakes to settle.
DEFAULT_SETTLE_S = 10.0
SETTLE_POLL_S = 0.05
PROGRESS_S = 1.0
PROCESS_START_S = 30.0
ADMIN = "/api/v1"


@attrs.frozen
class GatewayTarget:
    """A gateway already running: its proxy, a client key, and (optional) its admin API."""

    proxy_url: str
    key: str
    admin_url: str | None = None
    admin_token: str | None = None
    #: The upstream to watch, by name (default: the gateway's only one).
    upstream: str | None = None


@attrs.frozen
class Sample:
    """One target's health at one moment (run time)."""

    t: float
    state: str
    ejections: int
    ejected_for: float | None
    in_flight: int


@attrs.frozen
class Span:
    name: str
    start: float
    end: float


@attrs.frozen
class Progress:
    t: float
    duration: float
    phase: str
    requests: int
    ok: int
    errors: int
    in_flight: int


@attrs.define
class Run:
    """Everything a run observed; :mod:`.report` turns it into tables and verdicts."""

    scenario: Scenario
    spans: list[Span]
    results: list[Result]
    #: Per target name: health samples, in time order (``None``: no health available).
    health: dict[str, list[Sample]] | None
    #: Per fake name: arrival times of the client requests it received.
    received: dict[str, list[float]]
    #: Per target name: the fake it points at (when it is one).
    fake_of: dict[str, str]
    #: Seconds after the load until nothing was in flight (``None``: not within the limit).
    settled: float | None
    settle_limit: float
    #: ``rss_warm``, ``rss_end`` (bytes), ``fds_warm``, ``fds_end`` of the gateway's process.
    resources: dict[str, float]
    gateway: str
    virtual: bool = False

    @property
    def duration(self) -> float:
        return self.spans[-1].end if self.spans else 0.0


class _Gateway(Protocol):
    proxy_url: str
    key: str

    def names(self) -> Callable[[str], str]: ...
    async def health(self) -> dict[str, Sample] | None: ...
    async def set_targets(self, targets: Sequence[Mapping[str, Any]]) -> None: ...
    def pid(self) -> int | None: ...


# --- the three kinds of gateway ------------------------------------------------------------


class _InProcess:
    """The gateway in this loop: health read straight from its runtime."""

    def __init__(self, stack: OpenStack) -> None:
        self.stack = stack
        self.proxy_url = stack.proxy_url
        self.key = stack.key
        self._names = stack.target_names()

    def names(self) -> Callable[[str], str]:
        return lambda target_id: self._names.get(target_id, target_id)

    async def health(self) -> dict[str, Sample]:
        return {
            name: Sample(0.0, h.state, h.ejections, h.ejected_for, h.in_flight)
            for name, h in self.stack.health().items()
        }

    async def set_targets(self, targets: Sequence[Mapping[str, Any]]) -> None:
        await self.stack.set_targets(targets)
        self._names.update(self.stack.target_names())

    def pid(self) -> int | None:
        return os.getpid()


class _Admin:
    """A gateway seen through its admin API: health endpoint, upstream writes."""

    def __init__(
        self,
        target: GatewayTarget,
        http: httpx2.AsyncClient,
        fakes: Mapping[str, FakeProvider],
        process: trio.Process | None = None,
    ) -> None:
        self.proxy_url = target.proxy_url
        self.key = target.key
        self._target = target
        self._http = http
        self._fakes = fakes
        self._process = process
        self._names: dict[str, str] = {}
        self._path: str | None = None
        self._upstream: dict[str, Any] = {}

    async def setup(self) -> None:
        """Find the upstream to watch, and name its targets after the fakes they point at."""
        if self._target.admin_url is None:
            return
        gateways = (await self._get(f"{ADMIN}/gateways"))["items"]
        found = []
        for gateway in gateways:
            for upstream in (await self._get(f"{ADMIN}/gateways/{gateway['id']}/upstreams"))[
                "items"
            ]:
                if self._target.upstream in (None, upstream["name"]):
                    found.append((gateway["id"], upstream))
        if len(found) != 1:
            which = f"named {self._target.upstream!r}" if self._target.upstream else "at all"
            raise RuntimeError(
                f"the admin API shows {len(found)} upstream(s) {which}; "
                "name the one to watch (--upstream NAME)"
            )
        gateway_id, upstream = found[0]
        self._path = f"{ADMIN}/gateways/{gateway_id}/upstreams/{upstream['id']}"
        self._upstream = upstream
        self._rename(upstream)

    def _rename(self, upstream: Mapping[str, Any]) -> None:
        by_url = {fake.url: name for name, fake in self._fakes.items()}
        names = [by_url.get(t.get("base_url") or "") or t["id"] for t in upstream["targets"]]
        self._names = dict(zip((t["id"] for t in upstream["targets"]), names, strict=True))

    async def _get(self, path: str) -> Any:
        response = await self._http.get(self._target.admin_url + path)  # type: ignore[operator]
        response.raise_for_status()
        return response.json()

    def names(self) -> Callable[[str], str]:
        return lambda target_id: self._names.get(target_id, target_id)

    async def health(self) -> dict[str, Sample] | None:
        if self._path is None:
            return None
        try:
            body = await self._get(self._path + "/health")
        except (httpx2.HTTPError, ValueError):
            return {}
        wall = trio.current_time()
        now = datetime.now().astimezone()
        samples = {}
        for t in body["targets"]:
            until = t.get("ejected_until")
            ejected_for = None
            if until:
                ejected_for = max(0.0, (datetime.fromisoformat(until) - now).total_seconds())
            samples[self._names.get(t["id"], t["id"])] = Sample(
                wall, t["state"], int(t.get("ejections", 0)), ejected_for, int(t["in_flight"])
            )
        return samples

    async def set_targets(self, targets: Sequence[Mapping[str, Any]]) -> None:
        if self._path is None:
            raise RuntimeError("changing the upstream's targets needs the admin API (--admin)")
        urls = {name: fake.url or "" for name, fake in self._fakes.items()}
        keys = {name: fake.spec.api_key or "" for name, fake in self._fakes.items()}
        models = {name: fake.spec.models for name, fake in self._fakes.items()}
        body = resolve_upstream({"targets": list(targets)}, urls, keys, models)
        fields = {
            k: v
            for k, v in self._upstream.items()
            if k not in ("id", "gateway_id", "created_at", "updated_at", "targets")
        }
        response = await self._http.put(
            self._target.admin_url + self._path,  # type: ignore[operator]
            json={**fields, "targets": body["targets"]},
        )
        response.raise_for_status()
        self._upstream = response.json()
        self._rename(self._upstream)
        # The names given in the file win over the fakes' names.
        ids = [t["id"] for t in self._upstream["targets"]]
        self._names.update(zip(ids, target_names(targets), strict=False))

    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None


class _Direct:
    """No gateway at all: the load goes straight to one fake (every protection off)."""

    def __init__(self, fake: FakeProvider) -> None:
        self.proxy_url = fake.url or ""
        self.key = fake.spec.api_key or ""

    def names(self) -> Callable[[str], str]:
        return lambda target_id: target_id

    async def health(self) -> None:
        return None

    async def set_targets(self, targets: Sequence[Mapping[str, Any]]) -> None:
        pass  # no upstream to change

    def pid(self) -> int | None:
        return None


# --- running ---------------------------------------------------------------------------------


async def run_scenario(
    scenario: Scenario,
    *,
    gateway: GatewayTarget | None = None,
    process: bool = False,
    progress: Callable[[Progress], None] | None = None,
    virtual: bool = False,
    direct: str | None = None,
) -> Run:
    """Run ``scenario`` to its end and return what was observed (see the module docstring).

    ``direct`` names a fake to send the load to straight, without any gateway: what
    an application would see with no protection at all (the tests use it to show
    that an expectation can fail).
    """
    async with AsyncExitStack() as exit_stack:
        nursery = await exit_stack.enter_async_context(trio.open_nursery())
        if gateway is None and not process and direct is None:
            opened = await exit_stack.enter_async_context(open_stack(scenario.stack_spec()))
            fakes = opened.fakes
            gw: _Gateway = _InProcess(opened)
            where = "in-process"
        else:
            fakes = {}
            for spec in scenario.fakes:
                if not spec.api_key:
                    spec = attrs.evolve(spec, api_key=f"sk-fake-{spec.name}")
                fake = FakeProvider.of(spec)
                await nursery.start(fake.serve)
                fakes[fake.name] = fake
            admin_http = await exit_stack.enter_async_context(httpx2.AsyncClient(timeout=10))
            child = None
        if direct is not None:
            gw = _Direct(fakes[direct])
            where = f"none (straight to {direct})"
        elif gateway is not None or process:
            if gateway is None:
                child, gateway = await exit_stack.enter_async_context(
                    _gateway_process(scenario, fakes)
                )
            if gateway.admin_token:
                admin_http.headers["Authorization"] = f"Bearer {gateway.admin_token}"
            admin = _Admin(gateway, admin_http, fakes, child)
            await admin.setup()
            gw = admin
            where = "process" if child is not None else gateway.proxy_url
        fake_of = _fake_of(scenario)
        run = Run(
            scenario=scenario,
            spans=_spans(scenario),
            results=[],
            health=None,
            received={name: [] for name in fakes},
            fake_of=fake_of,
            settled=None,
            settle_limit=_settle_limit(scenario),
            resources={},
            gateway=where,
            virtual=virtual,
        )
        t0 = trio.current_time()
        for fake in fakes.values():
            fake.set_faults(fake.spec.faults)
            fake.clear_requests()
        watcher = _Watcher(run, gw, fakes, t0)
        await watcher.sample()
        async with trio.open_nursery() as side:
            side.start_soon(_timeline, scenario, run, gw, fakes, t0, watcher)
            side.start_soon(watcher.watch, scenario.health_interval)
            if progress is not None:
                side.start_soon(_progress, run, t0, progress)
            async with httpx2.AsyncClient(
                base_url=gw.proxy_url,
                headers={"Authorization": f"Bearer {gw.key}"},
                timeout=httpx2.Timeout(scenario.load.timeout + 60),
                limits=httpx2.Limits(max_connections=None, max_keepalive_connections=1000),
            ) as http:
                client = Client(http, scenario.load, names=gw.names(), t0=t0)
                await drive(client, scenario.duration, run.results.append)
            load_end = trio.current_time()
            run.settled = await _settle(gw, fakes, load_end, run.settle_limit)
            await watcher.sample()
            _measure(run.resources, "end", gw.pid())
            side.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return run


def _fake_of(scenario: Scenario) -> dict[str, str]:
    found = {}
    lists = [scenario.upstream.get("targets") or []]
    lists += [list(p.targets) for p in scenario.phases if p.targets is not None]
    for targets in lists:
        for name, target in zip(target_names(targets), targets, strict=True):
            if target.get("fake"):
                found[name] = target["fake"]
    return found


def _spans(scenario: Scenario) -> list[Span]:
    spans, start = [], 0.0
    for phase in scenario.phases:
        spans.append(Span(phase.name, start, start + phase.duration))
        start += phase.duration
    return spans


def _settle_limit(scenario: Scenario) -> float:
    limits = [e.settled_within for e in _expectations(scenario) if e.settled_within is not None]
    return max(limits, default=DEFAULT_SETTLE_S)


def _expectations(scenario: Scenario) -> list[Any]:
    found = [scenario.expect] + [p.expect for p in scenario.phases]
    return [e for e in found if e is not None]


async def _timeline(
    scenario: Scenario,
    run: Run,
    gw: _Gateway,
    fakes: Mapping[str, FakeProvider],
    t0: float,
    watcher: _Watcher,
) -> None:
    for i, (phase, span) in enumerate(zip(scenario.phases, run.spans, strict=True)):
        await trio.sleep_until(t0 + span.start)
        if i == 1:
            _measure(run.resources, "warm", gw.pid())
        for name, faults in phase.faults.items():
            fakes[name].set_faults(faults)
        if phase.targets is not None:
            await gw.set_targets(phase.targets)
        await watcher.sample()


class _Watcher:
    """Samples health, and collects what each fake received, into the run."""

    def __init__(
        self, run: Run, gw: _Gateway, fakes: Mapping[str, FakeProvider], t0: float
    ) -> None:
        self.run, self.gw, self.fakes, self.t0 = run, gw, fakes, t0
        self.seen = dict.fromkeys(fakes, 0)

    async def watch(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await self.sample()

    async def sample(self) -> None:
        now = trio.current_time() - self.t0
        samples = await self.gw.health()
        if samples is not None:
            health = self.run.health if self.run.health is not None else {}
            self.run.health = health
            for name, sample in samples.items():
                health.setdefault(name, []).append(attrs.evolve(sample, t=now))
        for name, fake in self.fakes.items():
            fresh = fake.requests_since(self.seen[name])
            if fresh:
                self.seen[name] = fresh[-1].index
                self.run.received[name] += [r.time - self.t0 for r in fresh if r.method == "POST"]


async def _progress(run: Run, t0: float, report: Callable[[Progress], None]) -> None:
    while True:
        await trio.sleep(PROGRESS_S)
        t = trio.current_time() - t0
        phase = next((s.name for s in run.spans if s.start <= t < s.end), "settling")
        done = run.results
        ok = sum(1 for r in done if r.ok)
        errors = sum(1 for r in done if not r.ok and not r.abandoned)
        in_flight = 0
        if run.health:
            in_flight = sum(s[-1].in_flight for s in run.health.values() if s)
        report(Progress(t, run.duration, phase, len(done), ok, errors, in_flight))


async def _settle(
    gw: _Gateway, fakes: Mapping[str, FakeProvider], load_end: float, limit: float
) -> float | None:
    """Seconds until nothing is in flight at the gateway nor pending at a fake."""
    with trio.move_on_after(limit):
        while True:
            samples = await gw.health()
            busy = sum(s.in_flight for s in (samples or {}).values())
            pending = sum(f.statistics().pending for f in fakes.values())
            if busy == 0 and pending == 0:
                return trio.current_time() - load_end
            await trio.sleep(SETTLE_POLL_S)
    return None


def _measure(into: dict[str, float], when: str, pid: int | None) -> None:
    """Resident memory and open descriptors of the gateway's process (Linux ``/proc``)."""
    if pid is None:
        return
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            into[f"rss_{when}"] = int(match.group(1)) * 1024
        into[f"fds_{when}"] = len(os.listdir(f"/proc/{pid}/fd"))


@asynccontextmanager
async def _gateway_process(
    scenario: Scenario, fakes: Mapping[str, FakeProvider]
) -> AsyncIterator[tuple[trio.Process, GatewayTarget]]:
    """``trio-gateway serve`` in a child process with the scenario's upstream."""
    import secrets

    key = f"tgk_scenario_{secrets.token_hex(12)}"
    urls = {name: fake.url or "" for name, fake in fakes.items()}
    keys = {name: fake.spec.api_key or "" for name, fake in fakes.items()}
    config = gateway_config(scenario.stack_spec(), urls, keys, key)
    with tempfile.TemporaryDirectory(prefix="trio-gateway-scenario-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "trio_gateway",
            "serve",
            "--config",
            str(path),
            "--memory",
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--log-level",
            "WARNING",
            "--graceful-timeout",
            "1",
        ]
        process = await trio.lowlevel.open_process(command, stdout=-1)
        try:
            assert process.stdout is not None
            banner = b""
            with trio.fail_after(PROCESS_START_S):
                while b"proxy:" not in banner or b"\n" not in banner.split(b"proxy:")[-1]:
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        raise RuntimeError("the gateway process exited before it was ready")
                    banner += chunk
            admin = re.search(rb"admin API: (\S+)/api/v1", banner)
            proxy = re.search(rb"proxy:\s+(\S+)", banner)
            assert admin is not None and proxy is not None, banner
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drain, process.stdout)
                yield process, GatewayTarget(proxy.group(1).decode(), key, admin.group(1).decode())
                nursery.cancel_scope.cancel()
        finally:
            process.terminate()
            with trio.move_on_after(10, shield=True):
                await process.wait()
            if process.returncode is None:
                process.kill()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass
