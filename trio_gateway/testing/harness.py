"""Run a whole gateway inside a test: real sockets on 127.0.0.1, port 0.

::

    async with open_gateway({"gateways": [...]}) as gw:
        async with httpx2.AsyncClient(base_url=gw.admin_url) as admin:
            ...

The gateway runs in a nursery owned by the context manager and is cancelled when
the block exits. ``config`` is what a configuration file would hold (a mapping,
or a path to a YAML file).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway.config.file import load_file, parse
from trio_gateway.serve import Running, serve
from trio_gateway.settings import Settings
from trio_gateway.store import Store
from trio_gateway.testing.fake import RecordedRequest


def is_health_check(request: RecordedRequest) -> bool:
    """A request a fake got from the gateway itself (a probe or a recovery check)."""
    return "(health check)" in (request.header("user-agent") or "")


TEST_SETTINGS = Settings(
    admin_listen="127.0.0.1:0",
    proxy_listen="127.0.0.1:0",
    data_dir=None,
    graceful_timeout=1.0,
)


@asynccontextmanager
async def open_gateway(
    config: Mapping[str, Any] | Path | None = None,
    *,
    settings: Settings = TEST_SETTINGS,
    environ: Mapping[str, str] | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    tracing: Any = None,
    store: Store | None = None,
    **overrides: Any,
) -> AsyncIterator[Running]:
    """Start a gateway (memory store unless ``data_dir=`` is given) and yield it running.

    ``transport`` replaces every target's HTTP transport (``httpx2.MockTransport``
    scripts a provider byte by byte, for what no fake provider does). ``store``
    replaces the store the settings name: gateways on handles of one
    :class:`~trio_gateway.store.MemoryStore` (``store.connect()``) behave like
    instances on one database, in virtual time. ``tracing``: a
    :class:`~trio_gateway.telemetry.Tracing` to send spans to (an in-memory exporter's
    provider, in tests); ``None``: the ``OTEL_*`` variables decide.
    """
    settings = attrs.evolve(settings, **overrides)
    declarations = None
    if isinstance(config, Path):
        declarations = load_file(config, environ)
    elif config is not None:
        declarations = parse(config, environ or {})
    async with trio.open_nursery() as nursery:
        running = await nursery.start(
            partial(
                serve, settings, declarations, transport=transport, store=store, tracing=tracing
            )
        )
        yield running
        nursery.cancel_scope.cancel()
