"""pytest plugin: fixtures for running fake providers and the gateway in tests.

Installed with the package (the ``trio_gateway`` ``pytest11`` entry point), so any
project that depends on trio-gateway gets the fixtures.

``gateway_stack`` works in any test, sync or async, asyncio or Trio, without
pytest-trio: it runs fake providers and a gateway in a thread of their own
(:func:`trio_gateway.testing.stack.run_stack`)::

    def test_failover(gateway_stack):
        stack = gateway_stack()  # fakes 'primary' and 'backup' (priority 2)
        client = openai.OpenAI(base_url=stack.base_url, api_key=stack.key)
        stack.fakes["primary"].set_faults(Fault.error(503))
        ...

``fake_provider`` and ``gateway_server`` are Trio fixtures: they run in the test's
own Trio loop (so a test can use ``autojump_clock``) and need pytest-trio
(``trio_mode = true``, or ``@pytest.mark.trio`` tests).

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

from collections.abc import Awaitable, Iterator, Mapping
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    import trio

    from trio_gateway.testing.fake import FakeProvider, FakeProviderSpec
    from trio_gateway.testing.stack import Stack


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


#: What ``gateway_stack()`` runs without a spec: two fakes, the second a fallback tier.
DEFAULT_STACK: Mapping[str, Any] = {
    "fakes": [{"name": "primary"}, {"name": "backup"}],
    "upstream": {
        "targets": [{"fake": "primary"}, {"fake": "backup", "priority": 2}],
        "health_checks": {"passive": True, "threshold": 3, "interval": 60},
    },
}


class StackFactory(Protocol):
    """``gateway_stack(spec)``: a running :class:`~trio_gateway.testing.stack.Stack`."""

    def __call__(self, spec: Any = None, /, **settings: Any) -> Stack: ...


@pytest.fixture
def gateway_stack() -> Iterator[StackFactory]:
    """Run fake providers and a gateway in a background thread; works in any test.

    A plain ``def test_...``, an asyncio test (pytest-asyncio, anyio) or a Trio
    test: the stack has its own thread and Trio loop, so a blocking SDK call in the
    test cannot stall it. ``gateway_stack(spec)`` takes a stack spec (a mapping or
    a YAML file: ``fakes``, ``upstream`` whose targets say ``fake: NAME``,
    ``service``); without one, fakes ``primary`` and ``backup`` behind an upstream
    with ``backup`` as the fallback tier (``priority: 2``). Everything stops when
    the test ends, whether it passed or not.
    """
    from trio_gateway.testing.stack import run_stack

    with ExitStack() as stacks:

        def start(spec: Any = None, /, **settings: Any) -> Stack:
            return stacks.enter_context(
                run_stack(DEFAULT_STACK if spec is None else spec, **settings)
            )

        yield start


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``asyncio`` or ``anyio`` is not a Trio test, even under ``trio_mode``.

    pytest-trio's ``trio_mode`` marks every ``async def`` test as a Trio test; an
    asyncio test in the same suite would then run on Trio and fail. Its own
    marker says which loop it wants: leave it to pytest-asyncio or anyio.
    """
    for item in items:
        if item.get_closest_marker("asyncio") or item.get_closest_marker("anyio"):
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]
