"""Fake AI providers with scripted faults (placeholder: being built for issue 3)."""

import attrs


@attrs.frozen(kw_only=True)
class FakeProviderSpec:
    name: str
    listen: str = "127.0.0.1:0"


async def serve_fake_provider(spec, *, task_status):
    raise RuntimeError("fake providers are not built yet")
