"""pytest plugin: fixtures for running fake providers and the gateway in tests.

Installed with the package (the ``trio_gateway`` ``pytest11`` entry point), so any
project that depends on trio-gateway gets the fixtures. They are Trio fixtures:
they need pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` tests).

``fake_provider`` starts fake providers in the test's nursery, on port 0::

    async def test_failover(fake_provider):
        primary = await fake_provider(faults=[Fault.error(503)])
        backup = await fake_provider(name="backup", api_key="sk-backup")
        ...  # point the gateway (or any client) at primary.url and backup.url
        assert backup.requests[0].header("authorization") == "Bearer sk-backup"

``gateway_server`` starts a whole gateway (port 0, memory store) from a
configuration mapping, typically pointing at those fakes. Everything the fixtures
start is cancelled when the test ends.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    import trio

    from trio_gateway.testing.fake import FakeProvider, FakeProviderSpec


class FakeProviderFactory(Protocol):
    """``await fake_provider(spec)`` or ``await fake_provider(**spec_fields)``."""

    def __call__(
        self, spec: FakeProviderSpec | None = None, /, **fields: Any
    ) -> Awaitable[FakeProvider]: ...


@pytest.fixture
async def fake_provider(nursery: trio.Nursery) -> FakeProviderFactory:
    """Start fake providers in the test's nursery; each call returns a running one.

    Without a spec, fields build one (``name`` defaults to ``fake-1``, ``fake-2``...,
    ``listen`` to port 0 on 127.0.0.1). With a spec, fields override it.
    """
    import attrs

    from trio_gateway.testing.fake import FakeProvider, FakeProviderSpec

    started = 0

    async def start(spec: FakeProviderSpec | None = None, /, **fields: Any) -> FakeProvider:
        nonlocal started
        started += 1
        if spec is None:
            spec = FakeProviderSpec(**{"name": f"fake-{started}", **fields})
        elif fields:
            spec = attrs.evolve(spec, **fields)
        fake = FakeProvider.of(spec)
        await nursery.start(fake.serve)
        return fake

    return start


class GatewayFactory(Protocol):
    """``await gateway_server(config)``: a whole gateway, ``config`` as a config file holds."""

    def __call__(self, config: Any = None, /, **settings: Any) -> Awaitable[Any]: ...


@pytest.fixture
async def gateway_server(nursery: trio.Nursery) -> GatewayFactory:
    """Start gateways in the test's nursery; each call returns a running one.

    ``config`` is what a configuration file would hold (a mapping, or a path to a
    YAML file), e.g. a gateway whose targets' ``base_url`` are ``fake_provider``
    URLs. The gateway listens on port 0 (admin and proxy) with a memory store;
    keyword arguments override :class:`~trio_gateway.settings.Settings` fields.
    The result is a :class:`~trio_gateway.serve.Running`: ``proxy_url``,
    ``admin_url``, ``catalog``, ``runtime``::

        async def test_failover(fake_provider, gateway_server):
            down = await fake_provider(api_key="k", faults=[Fault.error(503)])
            up = await fake_provider(api_key="k")
            gw = await gateway_server({"gateways": [...targets at down.url, up.url...]})
    """
    from functools import partial
    from pathlib import Path

    import attrs

    from trio_gateway.config.file import load_file, parse
    from trio_gateway.serve import serve
    from trio_gateway.testing.harness import TEST_SETTINGS

    async def start(config: Any = None, /, **settings: Any) -> Any:
        if isinstance(config, Path | str):
            declarations = load_file(Path(config), {})
        elif config is not None:
            declarations = parse(config, {})
        else:
            declarations = None
        return await nursery.start(
            partial(serve, attrs.evolve(TEST_SETTINGS, **settings), declarations)
        )

    return start
