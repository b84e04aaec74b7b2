"""The process: one top-level nursery owning the store, the catalog and both servers.

Theory of operation
-------------------
``serve`` opens the store, loads the catalog and applies the configuration file
before anything listens, so the first request already sees the whole
configuration. Then, in order: the fake providers the file declares, the admin and
proxy servers (hypercorn, trio worker). Once both servers report their bound URLs
it calls ``task_status.started(Running(...))``.

Both apps run behind :func:`trio_gateway.web.server.guard`, which keeps every
kept-alive connection usable or closes it (early answers, ``Connection: close``,
body and head limits; docs/http.md).

Shutdown: when ``shutdown`` is set (SIGINT/SIGTERM in the CLI), both servers stop
accepting and close their idle connections; every answer from then on says
``Connection: close``; in-flight requests get up to ``graceful_timeout`` seconds.
:data:`STREAM_END_MARGIN_S` before that runs out, the runtime ends the streams
still running with an error event in their client's dialect
(``runtime.end_streams``), so no client sees a stream cut mid-event; the
servers then return, everything else is cancelled and the store closed.
Cancelling ``serve`` from outside (as tests do) stops everything at once.

Following the store: every process keeps its catalog at the store's version
(:func:`follow_store`): it learns of other processes' commits at once from the
store's notices (PostgreSQL ``LISTEN/NOTIFY``; for SQLite a doorbell file watched
with inotify), catches up by version after a reconnect, and checks the version
every :data:`SAFETY_NET_S` in case a notice was lost. ``/readyz`` turns ready
once the process has loaded the current version; it reports the store's
reachability under ``store`` (writes are refused with 503 while it is
unreachable; the proxy keeps serving the last configuration).

Several workers (``settings.workers > 1``): this process keeps the admin API, the
configuration file and its own proxy, and starts ``workers - 1`` children with
``--worker-fd``. They serve the proxy on the same listening socket (the kernel
hands each connection to one of them), load the configuration from the same
store and follow it like any instance. A child that dies is restarted; on
shutdown each gets SIGTERM and the same grace period. Health state is per process.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx2
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from trio_gateway.config import file
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.file import ApplyReport, Declarations
from trio_gateway.errors import GatewayError, ValidationFailed
from trio_gateway.runtime.supervisor import EJECTION, Runtime, preflight
from trio_gateway.settings import STORE_ENV, Settings
from trio_gateway.store import (
    CONFIG,
    CONNECTED,
    DISCONNECTED,
    Notice,
    Store,
    StoreCorrupt,
    StoreUnavailable,
    open_store,
)
from trio_gateway.telemetry import Metrics, Telemetry, Tracing
from trio_gateway.telemetry.metrics import worker_exited
from trio_gateway.telemetry.tracing import TracingUnavailable
from trio_gateway.web import server
from trio_gateway.web.admin import Readiness, create_admin_app
from trio_gateway.web.explain import explain
from trio_gateway.web.proxy import create_proxy_app

log = logging.getLogger("trio_gateway")

#: How often a process checks the store's version, should a notice have been lost.
SAFETY_NET_S = 2.0
WORKER_RESTART_BACKOFF_S = 1.0
#: How long before the grace period runs out the streams still running are ended
#: (at most half the grace period), so their error event is written in time.
STREAM_END_MARGIN_S = 0.5
#: How often a worker process writes its target gauges for the main process's scrape.
GAUGE_REFRESH_S = 1.0
#: How long the traces still buffered at shutdown may take to go out.
TRACES_FLUSH_S = 5.0


@attrs.frozen
class Running:
    """What a started gateway reports: where it listens and its live catalog."""

    admin_url: str
    proxy_url: str
    catalog: Catalog
    runtime: Runtime
    readiness: Readiness
    report: ApplyReport | None = None
    fake_providers: Mapping[str, str] = attrs.field(factory=dict)
    telemetry: Telemetry | None = None


def hypercorn_config(listen: str, settings: Settings) -> HypercornConfig:
    return server.hypercorn_config(
        listen,
        graceful_timeout=settings.graceful_timeout,
        keep_alive_timeout=settings.keep_alive_timeout,
        # hypercorn logs "Running on ..." at INFO: under our name, not as an "error" log.
        errorlog=logging.getLogger("trio_gateway.server"),
    )


async def end_streams_before_grace_ends(
    shutdown: trio.Event, runtime: Runtime, graceful_timeout: float
) -> None:
    """Once ``shutdown`` is set, end the running streams shortly before the grace runs out."""
    await shutdown.wait()
    await trio.sleep(max(graceful_timeout - STREAM_END_MARGIN_S, graceful_timeout / 2))
    runtime.end_streams.set()


@asynccontextmanager
async def _store(settings: Settings, given: Store | None) -> AsyncIterator[Store]:
    if given is not None:
        yield given
        return
    async with open_store(settings.data_dir, settings.store) as store:
        yield store


async def serve(
    settings: Settings,
    declarations: Declarations | None = None,
    *,
    shutdown: trio.Event | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    store: Store | None = None,
    tracing: Tracing | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until cancelled or ``shutdown``; see the module docstring.

    ``transport`` and ``store`` replace the targets' HTTP transport and the store
    the settings name (tests: a scripted provider, instances on one memory store).
    ``tracing``: where spans go; ``None`` reads the ``OTEL_*`` variables
    (:meth:`Tracing.from_environment`).
    """
    shutdown = shutdown if shutdown is not None else trio.Event()
    readiness = Readiness()
    telemetry = make_telemetry(settings, tracing)
    try:
        await _serve(
            settings, declarations, shutdown, transport, store, telemetry, readiness, task_status
        )
    finally:
        telemetry.flush()  # what the servers' last requests left
        if telemetry.tracing is not None and telemetry.tracing.owned:
            with trio.move_on_after(TRACES_FLUSH_S, shield=True):
                await trio.to_thread.run_sync(telemetry.tracing.shutdown, abandon_on_cancel=True)


def make_telemetry(settings: Settings, tracing: Tracing | None = None) -> Telemetry:
    """Metrics, access log and tracing as the settings and the environment ask."""
    if tracing is None:
        try:
            tracing = Tracing.from_environment()
        except TracingUnavailable as exc:
            log.error(f"traces are off: {exc}")
    return Telemetry(
        metrics=Metrics() if settings.metrics else None,
        access=settings.access_log,
        tracing=tracing,
    )


async def _serve(
    settings: Settings,
    declarations: Declarations | None,
    shutdown: trio.Event,
    transport: httpx2.AsyncBaseTransport | None,
    store: Store | None,
    telemetry: Telemetry,
    readiness: Readiness,
    task_status: trio.TaskStatus[Running],
) -> None:
    async with _store(settings, store) as store:
        catalog = await Catalog.load(store, preflight=preflight)
        readiness.details["store"] = partial(store_report, catalog)
        report = None
        if declarations is not None:
            report = await catalog.write(lambda draft: file.apply(draft, declarations))
            log.info(
                "configuration file applied",
                extra={
                    "fields": {
                        "created": len(report.created),
                        "updated": len(report.updated),
                        "unchanged": report.unchanged,
                    }
                },
            )
        async with trio.open_nursery() as background:
            subscribers: dict[str, Callable[[Notice], None]] = {}
            await background.start(follow_store, catalog, subscribers)
            readiness.set("config")
            fakes = {}
            if declarations is not None and declarations.fake_providers:
                from trio_gateway.testing.fake import serve_fake_provider

                for spec in declarations.fake_providers:
                    fakes[spec.name] = await background.start(serve_fake_provider, spec)

            # Stand-ins may name a fake provider of the file: workers get its URL.
            settings = attrs.evolve(
                settings, base_urls=resolve_base_urls(settings.base_urls, fakes)
            )
            base_urls = settings.base_urls
            for public, stand_in in base_urls.items():
                log.warning(
                    "base_url override: requests for one endpoint go to another",
                    extra={"fields": {"base_url": public, "sent_to": stand_in}},
                )
            runtime = await background.start(
                Runtime(catalog, transport=transport, base_urls=base_urls, telemetry=telemetry).run
            )
            if telemetry.enabled:
                background.start_soon(telemetry.run)
            if telemetry.metrics is not None and telemetry.metrics.multiprocess and settings.worker:
                background.start_soon(refresh_gauges, telemetry, runtime)
            readiness.set("runtime")
            readiness.problems = runtime.problems
            subscribers[EJECTION] = runtime.on_notice
            background.start_soon(
                end_streams_before_grace_ends, shutdown, runtime, settings.graceful_timeout
            )
            admin_app = server.guard(
                create_admin_app(
                    catalog,
                    readiness=readiness,
                    admin_token=settings.admin_token,
                    max_body=settings.admin_max_body,
                    upstream_health=runtime.upstream_health,
                    applied=runtime.wait_applied,
                    build_failure=runtime.failure,
                    allowed_hosts=settings.admin_hosts,
                    metrics=partial(scrape, telemetry, runtime)
                    if telemetry.metrics is not None
                    else None,
                    explain=partial(explain, runtime, settings.proxy_max_body),
                    fault_injection=runtime.fault_injection,
                    limiter=runtime.limiter,
                ),
                server.ConnectionLimits(settings.admin_max_body, settings.body_timeout),
                closing=shutdown.is_set,
            )
            proxy_app = server.guard(
                create_proxy_app(
                    runtime,
                    readiness=readiness,
                    max_body=settings.proxy_max_body,
                    telemetry=telemetry,
                ),
                server.ConnectionLimits(settings.proxy_max_body, settings.body_timeout),
                error_body=server.proxy_error_body,
                closing=shutdown.is_set,
                refused=partial(refused, telemetry) if telemetry.enabled else None,
            )

            async with trio.open_nursery() as servers:
                admin_urls = [""]
                if not settings.worker:
                    admin_urls = await servers.start(
                        partial(
                            hypercorn.trio.serve,
                            admin_app,
                            hypercorn_config(settings.admin_listen, settings),
                            shutdown_trigger=shutdown.wait,
                        )
                    )
                proxy_bind = settings.proxy_listen
                if settings.proxy_fd is not None:
                    # hypercorn owns (and closes) what it binds: give it its own copy.
                    proxy_bind = f"fd://{os.dup(settings.proxy_fd)}"
                proxy_urls = await servers.start(
                    partial(
                        hypercorn.trio.serve,
                        proxy_app,
                        hypercorn_config(proxy_bind, settings),
                        shutdown_trigger=shutdown.wait,
                    )
                )
                if settings.workers > 1:
                    for n in range(1, settings.workers):
                        servers.start_soon(run_worker, settings, n, shutdown)
                readiness.set("servers")
                task_status.started(
                    Running(
                        admin_url=admin_urls[0],
                        proxy_url=proxy_urls[0],
                        catalog=catalog,
                        runtime=runtime,
                        readiness=readiness,
                        report=report,
                        fake_providers=fakes,
                        telemetry=telemetry,
                    )
                )
            background.cancel_scope.cancel()


def scrape(telemetry: Telemetry, runtime: Runtime) -> bytes:
    """``GET /metrics``: finished requests and gauges brought up to date, then every family."""
    assert telemetry.metrics is not None
    telemetry.flush()
    telemetry.refresh(runtime.table.dispatchers.values())
    return telemetry.metrics.render()


async def refresh_gauges(telemetry: Telemetry, runtime: Runtime) -> None:
    """A worker's target gauges, written every :data:`GAUGE_REFRESH_S` for the main
    process's scrape (multiprocess mode)."""
    while True:
        telemetry.refresh(runtime.table.dispatchers.values())
        await trio.sleep(GAUGE_REFRESH_S)


def refused(telemetry: Telemetry, scope: Mapping, error: GatewayError) -> None:
    """A request the connection guard answered without the proxy (a head too large)."""
    from trio_gateway.web.proxy import client_format

    record = telemetry.begin(
        "-",
        scope.get("method", "-"),
        scope.get("path", "-"),
        scope,
        client_format(scope.get("path", "")) or "openai",
    )
    if record is not None:
        record.error = error.type
        record.finish(error.status, 0)


#: How long a reload waits for the proxy to use what it applied before it says so.
RELOAD_APPLY_S = 10.0


async def reload_config(running: Running, path: Path, started: Declarations | None) -> bool:
    """SIGHUP: apply the configuration file again, as at start; log the result.

    The file is read and validated first: a file with problems changes nothing (each
    problem is logged). A valid one is applied by name, like at start, through the
    same catalog write as an admin API change: actors whose target did not change keep
    running, retired ones finish what they hold, so no connection or stream is
    dropped. ``server`` settings and ``fake_providers`` are read at start only; a
    change to them is logged as needing a restart. Returns whether it was applied.
    """
    metrics = running.telemetry.metrics if running.telemetry is not None else None

    def failed(message: str, **fields: Any) -> bool:
        log.error(message, extra={"fields": {"file": str(path), **fields}})
        if metrics is not None:
            metrics.reloads.labels("failed").inc()
        return False

    try:
        declarations = await trio.to_thread.run_sync(file.load_file, path)
    except ValidationFailed as exc:
        problems = [f"{p.loc}: {p.msg}" for p in exc.details] or [exc.message]
        return failed(
            f"configuration file not reloaded: {len(problems)} problem(s); nothing changed",
            problems=problems,
        )
    try:
        report = await running.catalog.write(lambda draft: file.apply(draft, declarations))
    except GatewayError as exc:
        problems = [f"{p.loc}: {p.msg}" for p in exc.details] or [exc.message]
        return failed(
            "configuration file not reloaded: the store refused it; nothing changed",
            problems=problems,
        )
    except (StoreUnavailable, StoreCorrupt) as exc:
        return failed(f"configuration file not reloaded: {exc}")
    with trio.move_on_after(RELOAD_APPLY_S):
        await running.runtime.wait_applied(running.catalog.snapshot.generation)
    log.info(
        "configuration file reloaded",
        extra={
            "fields": {
                "file": str(path),
                "created": len(report.created),
                "updated": len(report.updated),
                "unchanged": report.unchanged,
                "problems": running.runtime.problems() or None,
            }
        },
    )
    if metrics is not None:
        metrics.reloads.labels("applied").inc()
    if started is not None and (
        declarations.server != started.server
        or declarations.fake_providers != started.fake_providers
    ):
        log.warning(
            "the file's server settings or fake providers changed: they apply at the next start",
            extra={"fields": {"file": str(path)}},
        )
    return True


def resolve_base_urls(base_urls: Mapping[str, str], fakes: Mapping[str, str]) -> dict[str, str]:
    """``settings.base_urls`` with each stand-in that names a fake provider replaced by its URL."""
    return {public: fakes.get(stand_in, stand_in) for public, stand_in in base_urls.items()}


async def _terminate_on(event: trio.Event, process: trio.Process) -> None:
    await event.wait()
    process.terminate()


def store_report(catalog: Catalog) -> dict:
    """The ``store`` entry of ``/readyz``: where, the version served, whether writes work."""
    stats, status = catalog.store.statistics(), catalog.store.status()
    return {
        "kind": stats.kind,
        "location": stats.location,
        "version": catalog.version,
        "writable": status.available,
        "error": status.error,
        "since": status.since,
    }


async def follow_store(
    catalog: Catalog,
    subscribers: Mapping[str, Callable[[Notice], None]] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``catalog`` at the store's version until cancelled.

    Started with ``nursery.start``: it reports started once it listens to the
    store's notices and has caught up after subscribing, so no commit can fall
    between the initial load and the subscription. Then: a ``config`` notice for
    another version, or a (re)connection, makes it :meth:`Catalog.refresh`; every
    :data:`SAFETY_NET_S` it compares versions in case a notice was lost. Notices
    of other topics go to ``subscribers`` by topic (shared ejections: the runtime);
    those nobody subscribed to are for newer gateways and ignored.
    A store that is unreachable is not an error here: the catalog keeps its
    snapshot and the next notice or check catches up.
    """
    store = catalog.store
    async with trio.open_nursery() as nursery, store.notices() as notices:
        await notices.receive()  # connected (or not): from here on, no notice is missed
        await _catch_up(catalog, "start")
        nursery.start_soon(_check_version, catalog)
        task_status.started()
        async for notice in notices:
            if notice.topic == CONFIG and notice.data.get("version") != catalog.version:
                await _catch_up(catalog, "notice")
            elif notice.topic == CONNECTED:
                await _catch_up(catalog, "reconnected")
            elif notice.topic == DISCONNECTED:
                log.warning(
                    "lost the store's notices; serving the last configuration",
                    extra={"fields": {"version": catalog.version, **notice.data}},
                )
            elif subscribers and (subscriber := subscribers.get(notice.topic)) is not None:
                subscriber(notice)


async def _check_version(catalog: Catalog) -> None:
    while True:
        await trio.sleep(SAFETY_NET_S)
        try:
            version = await catalog.store.version()
        except StoreUnavailable:
            continue
        if version != catalog.version:
            await _catch_up(catalog, "version check")


async def _catch_up(catalog: Catalog, why: str) -> None:
    try:
        changed = await catalog.refresh()
    except StoreUnavailable:
        return  # the store's status says so; the next notice or check retries
    except StoreCorrupt:
        log.exception("cannot read the store; keeping the last configuration")
        return
    if changed:
        log.debug(
            "configuration caught up with the store",
            extra={"fields": {"version": catalog.version, "why": why}},
        )


async def run_worker(settings: Settings, n: int, shutdown: trio.Event) -> None:
    """Keep worker child ``n`` running until ``shutdown``; then SIGTERM it and wait."""
    assert settings.proxy_fd is not None
    env = dict(os.environ)
    if settings.store is not None:
        store = []
        env[STORE_ENV] = settings.store  # not on the command line: it may hold a password
    else:
        assert settings.data_dir is not None
        store = ["--data-dir", str(settings.data_dir)]
    command = [
        sys.executable,
        "-m",
        "trio_gateway",
        "serve",
        "--worker-fd",
        str(settings.proxy_fd),
        *store,
        "--log-format",
        settings.log_format,
        "--log-level",
        settings.log_level,
        "--graceful-timeout",
        str(settings.graceful_timeout),
        "--body-timeout",
        str(settings.body_timeout),
        "--keep-alive-timeout",
        str(settings.keep_alive_timeout),
        "--metrics",
        "on" if settings.metrics else "off",
        "--access-log",
        "on" if settings.access_log else "off",
    ]
    for public, stand_in in settings.base_urls.items():
        command += ["--base-url-override", f"{public}={stand_in}"]
    while not shutdown.is_set():
        process = await trio.lowlevel.open_process(command, pass_fds=[settings.proxy_fd], env=env)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_terminate_on, shutdown, process)
                code = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(settings.graceful_timeout + 1, shield=True):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
        worker_exited(process.pid)
        if shutdown.is_set():
            return
        log.error("worker exited; restarting", extra={"fields": {"worker": n, "code": code}})
        await trio.sleep(WORKER_RESTART_BACKOFF_S)
