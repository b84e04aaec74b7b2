"""An asyncio application on AsyncOpenAI, tested through the gateway with anyio's pytest plugin."""

import asyncio

import openai
import pytest

from trio_gateway.testing.fake import Fault

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def stack(gateway_stack):
    return gateway_stack(
        {
            "fakes": [{"name": "primary"}, {"name": "backup"}],
            "upstream": {
                "targets": [{"fake": "primary"}, {"fake": "backup", "priority": 2}],
                "health_checks": {"passive": True, "threshold": 3, "interval": 60},
            },
            "service": {"first_byte_timeout": 0.5},
        }
    )


async def summarize(client: openai.AsyncOpenAI, texts: list[str]) -> list[str]:
    """The application's code: several streamed calls at once."""

    async def one(text: str) -> str:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], stream=True
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    return await asyncio.gather(*(one(text) for text in texts))


async def test_a_hung_provider_costs_one_first_byte_budget(stack):
    client = openai.AsyncOpenAI(
        base_url=stack.base_url, api_key=stack.key, max_retries=0, timeout=10
    )
    stack.fakes["primary"].set_faults(Fault.hang())

    answers = await summarize(client, ["a", "b", "c"])

    assert answers == [f"Hello from gpt-4o-mini! You said: {t}" for t in "abc"]
    assert len(stack.fakes["backup"].requests) == 3
    # The gateway hung up on the primary after its first-byte budget: nothing left pending.
    assert {r.outcome.value for r in stack.fakes["primary"].requests} == {"disconnected"}
