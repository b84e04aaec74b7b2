"""The process: one top-level nursery owning the store, the catalog and both servers.

Theory of operation
-------------------
``serve`` opens the store, loads the catalog and applies the configuration file
before anything listens, so the first request already sees the whole
configuration. Then, in order: the fake providers the file declares, the admin and
proxy servers (hypercorn, trio worker). Once both servers report their bound URLs
it calls ``task_status.started(Running(...))``.

Shutdown: when ``shutdown`` is set (SIGINT/SIGTERM in the CLI), both servers stop
accepting, let in-flight requests finish for up to ``graceful_timeout`` seconds
and return; then everything else is cancelled and the store closed.
Cancelling ``serve`` from outside (as tests do) stops everything at once.

Several workers (``settings.workers > 1``): this process keeps the admin API, the
configuration file and its own proxy, and starts ``workers - 1`` children with
``--worker-fd``. They serve the proxy on the same listening socket (the kernel
hands each connection to one of them), load the configuration from the store and
follow it (:func:`follow_store`), so an admin write reaches every worker within
:data:`FOLLOW_INTERVAL_S`. A child that dies is restarted; on shutdown each gets
SIGTERM and the same grace period. Health state is per process.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from functools import partial

import attrs
import httpx2
import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from trio_gateway.config import file
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.file import ApplyReport, Declarations
from trio_gateway.runtime.supervisor import Runtime, preflight
from trio_gateway.settings import Settings
from trio_gateway.store import open_store
from trio_gateway.web.admin import Readiness, create_admin_app
from trio_gateway.web.proxy import create_proxy_app

log = logging.getLogger("trio_gateway")

#: How often a worker child checks the store for another process's writes.
FOLLOW_INTERVAL_S = 0.5
WORKER_RESTART_BACKOFF_S = 1.0


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


def hypercorn_config(listen: str, settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [listen]
    config.graceful_timeout = settings.graceful_timeout
    config.accesslog = None
    # hypercorn logs "Running on ..." at INFO: under our name, not as an "error" log.
    config.errorlog = logging.getLogger("trio_gateway.server")
    config.include_server_header = False
    return config


async def serve(
    settings: Settings,
    declarations: Declarations | None = None,
    *,
    shutdown: trio.Event | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    shutdown = shutdown if shutdown is not None else trio.Event()
    readiness = Readiness()
    async with open_store(settings.data_dir) as store:
        catalog = await Catalog.load(store, preflight=preflight)
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
        readiness.set("config")

        async with trio.open_nursery() as background:
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
                Runtime(catalog, transport=transport, base_urls=base_urls).run
            )
            readiness.set("runtime")
            readiness.problems = runtime.problems
            if settings.worker:
                background.start_soon(follow_store, catalog)
            admin_app = create_admin_app(
                catalog,
                readiness=readiness,
                admin_token=settings.admin_token,
                max_body=settings.admin_max_body,
                upstream_health=runtime.upstream_health,
                applied=runtime.wait_applied,
                build_failure=runtime.failure,
                allowed_hosts=settings.admin_hosts,
            )
            proxy_app = create_proxy_app(
                runtime, readiness=readiness, max_body=settings.proxy_max_body
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
                    )
                )
            background.cancel_scope.cancel()


def resolve_base_urls(base_urls: Mapping[str, str], fakes: Mapping[str, str]) -> dict[str, str]:
    """``settings.base_urls`` with each stand-in that names a fake provider replaced by its URL."""
    return {public: fakes.get(stand_in, stand_in) for public, stand_in in base_urls.items()}


async def _terminate_on(event: trio.Event, process: trio.Process) -> None:
    await event.wait()
    process.terminate()


async def follow_store(catalog: Catalog) -> None:
    """Reload the configuration whenever another process has written to the store."""
    while True:
        await trio.sleep(FOLLOW_INTERVAL_S)
        if await catalog.store.changed():
            await catalog.reload()
            log.debug("configuration reloaded from the store")


async def run_worker(settings: Settings, n: int, shutdown: trio.Event) -> None:
    """Keep worker child ``n`` running until ``shutdown``; then SIGTERM it and wait."""
    assert settings.proxy_fd is not None and settings.data_dir is not None
    command = [
        sys.executable,
        "-m",
        "trio_gateway",
        "serve",
        "--worker-fd",
        str(settings.proxy_fd),
        "--data-dir",
        str(settings.data_dir),
        "--log-format",
        settings.log_format,
        "--log-level",
        settings.log_level,
        "--graceful-timeout",
        str(settings.graceful_timeout),
    ]
    for public, stand_in in settings.base_urls.items():
        command += ["--base-url-override", f"{public}={stand_in}"]
    while not shutdown.is_set():
        process = await trio.lowlevel.open_process(command, pass_fds=[settings.proxy_fd])
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
        if shutdown.is_set():
            return
        log.error("worker exited; restarting", extra={"fields": {"worker": n, "code": code}})
        await trio.sleep(WORKER_RESTART_BACKOFF_S)
