"""pytest plugin: fixtures for running the gateway and fake providers in tests.

Installed with the package (the ``trio_gateway`` ``pytest11`` entry point), so any
project that depends on trio-gateway gets the fixtures. They are Trio fixtures:
they need pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio`` tests).

``fake_provider`` starts fake providers in the test's nursery, on port 0::

    async def test_failover(fake_provider):
        primary = await fake_provider(faults=[Fault.error(503)])
        backup = await fake_provider(name="backup", api_key="sk-backup")
        ...  # point the gateway (or any client) at primary.url and backup.url
        assert backup.requests[0].header("authorization") == "Bearer sk-backup"

Everything the fixture starts is cancelled when the test ends.
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
