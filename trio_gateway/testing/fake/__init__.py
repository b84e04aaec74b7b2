"""Fake AI providers with scripted faults, for tests and demos (like ``trio.testing``).

One fake serves the OpenAI API (``/v1/chat/completions``, ``/v1/responses``,
``/v1/embeddings``, ``/v1/models``, Azure deployment paths) and the Anthropic API (``/v1/messages``,
``/v1/messages/count_tokens``, ``/v1/models``) on one address, checks requests the
way the real providers do, answers deterministically, records every request and
injects :class:`Fault`\\ s on command::

    async with open_fake_provider(api_key="sk-test", faults=[Fault.error(503, times=2)]) as fake:
        ...  # point a client or the gateway at fake.url
        fake.set_faults(Fault.cut_stream(after_chunks=3))
        assert fake.requests[-1].header("authorization") == "Bearer sk-test"

From pytest, the ``fake_provider`` fixture of :mod:`trio_gateway.testing.plugin`;
from the shell, ``trio-gateway fake-provider --help``; from any language, the
control API under ``/_fake/`` (see ``docs/testing.md``).
"""

from trio_gateway.testing.fake.faults import (
    Decision,
    FaultPlan,
    FaultStatistics,
    RequestInfo,
    StreamShape,
)
from trio_gateway.testing.fake.server import (
    FakeProvider,
    FakeProviderStatistics,
    Outcome,
    RecordedRequest,
    open_fake_provider,
    serve_fake_provider,
)
from trio_gateway.testing.fake.spec import (
    DEFAULT_MODELS,
    FakeProviderSpec,
    Fault,
    FaultKind,
    Flap,
    Window,
    fault_from_json,
    fault_to_json,
    faults_from_json,
)

__all__ = [
    "DEFAULT_MODELS",
    "Decision",
    "FakeProvider",
    "FakeProviderSpec",
    "FakeProviderStatistics",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultStatistics",
    "Flap",
    "Outcome",
    "RecordedRequest",
    "RequestInfo",
    "StreamShape",
    "Window",
    "fault_from_json",
    "fault_to_json",
    "faults_from_json",
    "open_fake_provider",
    "serve_fake_provider",
]
