"""The official SDKs' connection pools through early answers (issue: "sometimes takes 10 s").

One client each, one pool: valid calls alternate with 404s and 401s that the
gateway answers before it has read their (large) bodies. With ``max_retries=0``
and a short timeout, a pooled connection left broken by an early answer shows up
as a timeout on the next call instead of being hidden by a retry.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.e2e.conftest import KEY, config, setup, target

GPT = "gpt-4o-mini"
#: Big enough to span many TCP segments: the gateway answers before the body is in.
BIG = "lorem ipsum " * 40_000
ROUNDS = 5
TIMEOUT = 10


def openai_behind(fakes):
    return config([target(fakes[0], default_model=GPT, models=[GPT])])


async def test_the_openai_sdk_pool_survives_early_answers():
    async with (
        setup([{}], openai_behind) as s,
        openai.AsyncOpenAI(
            base_url=s.gateway.proxy_url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT
        ) as client,
    ):
        wrong_key = client.with_options(api_key="tgk_revoked_or_mistyped_key")  # the same pool
        for _ in range(ROUNDS):
            answer = await client.chat.completions.create(
                model=GPT, messages=[{"role": "user", "content": "Hello"}]
            )
            assert answer.choices[0].message.content.startswith("Hello from")
            with pytest.raises(openai.NotFoundError):  # an endpoint the gateway does not serve
                await client.completions.create(model=GPT, prompt=BIG)
            with pytest.raises(openai.AuthenticationError):
                await wrong_key.chat.completions.create(
                    model=GPT, messages=[{"role": "user", "content": BIG}]
                )
    # Each valid call reached the provider once: no call was retried or lost.
    assert len(s.fakes[0].requests) == ROUNDS


async def test_the_anthropic_sdk_pool_survives_early_answers():
    async with (
        setup([{}], openai_behind) as s,
        anthropic.AsyncAnthropic(
            base_url=s.gateway.proxy_url, api_key=KEY, max_retries=0, timeout=TIMEOUT
        ) as client,
    ):
        wrong_key = client.with_options(api_key="tgk_revoked_or_mistyped_key")
        for _ in range(ROUNDS):
            answer = await client.messages.create(
                model=GPT, max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
            )
            assert answer.content[0].text.startswith("Hello from")
            with pytest.raises(anthropic.NotFoundError):  # not served either
                await client.messages.batches.create(
                    requests=[
                        {
                            "custom_id": "one",
                            "params": {
                                "model": GPT,
                                "max_tokens": 64,
                                "messages": [{"role": "user", "content": BIG}],
                            },
                        }
                    ]
                )
            with pytest.raises(anthropic.AuthenticationError):
                await wrong_key.messages.create(
                    model=GPT, max_tokens=64, messages=[{"role": "user", "content": BIG}]
                )
    assert len(s.fakes[0].requests) == ROUNDS
