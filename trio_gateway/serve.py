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
"""

from __future__ import annotations

import logging
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
from trio_gateway.runtime.supervisor import Runtime
from trio_gateway.settings import Settings
from trio_gateway.store import open_store
from trio_gateway.web.admin import Readiness, create_admin_app
from trio_gateway.web.proxy import create_proxy_app

log = logging.getLogger("trio_gateway")


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
    config.errorlog = logging.getLogger("hypercorn.error")
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
        catalog = await Catalog.load(store)
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

            runtime = await background.start(Runtime(catalog, transport=transport).run)
            readiness.set("runtime")
            admin_app = create_admin_app(
                catalog,
                readiness=readiness,
                admin_token=settings.admin_token,
                max_body=settings.admin_max_body,
                upstream_health=runtime.upstream_health,
            )
            proxy_app = create_proxy_app(
                runtime, readiness=readiness, max_body=settings.proxy_max_body
            )

            async with trio.open_nursery() as servers:
                admin_urls = await servers.start(
                    partial(
                        hypercorn.trio.serve,
                        admin_app,
                        hypercorn_config(settings.admin_listen, settings),
                        shutdown_trigger=shutdown.wait,
                    )
                )
                proxy_urls = await servers.start(
                    partial(
                        hypercorn.trio.serve,
                        proxy_app,
                        hypercorn_config(settings.proxy_listen, settings),
                        shutdown_trigger=shutdown.wait,
                    )
                )
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
