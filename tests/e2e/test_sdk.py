"""The official SDKs, unchanged, through the gateway, across dialects.

An ``openai`` client is served by fake Anthropic targets and an ``anthropic``
client by fake OpenAI targets: answers, streams, tool calls, usage, finish
reasons, and each SDK's own exception for each provider failure.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anthropic
import httpx2
import openai
import pytest

from tests.e2e.conftest import KEY, Setup, config, setup, target, trail
from trio_gateway.testing.fake import Fault

CLAUDE = "claude-3-5-sonnet-20241022"
GPT = "gpt-4o-mini"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": WEATHER["function"]["parameters"],
}
NO_EJECTION = {"passive": True, "threshold": 1000, "interval": 60}


def anthropic_behind(fakes, **kw):
    """OpenAI clients ask for gpt-4o-mini; the only target is Anthropic, serving Claude."""
    return config(
        [target(fakes[0], "anthropic", default_model=CLAUDE, models=[CLAUDE])],
        health=NO_EJECTION,
        **kw,
    )


def openai_behind(fakes, **kw):
    return config(
        [target(fakes[0], "openai", default_model=GPT, models=[GPT])], health=NO_EJECTION, **kw
    )


@asynccontextmanager
async def openai_client(s: Setup) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=s.gateway.proxy_url + "/v1", api_key=KEY, max_retries=0, timeout=30
    ) as client:
        yield client


@asynccontextmanager
async def anthropic_client(s: Setup) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=s.gateway.proxy_url, api_key=KEY, max_retries=0, timeout=30
    ) as client:
        yield client


# --- openai SDK -> Anthropic provider --------------------------------------------------


async def test_openai_sdk_text_from_an_anthropic_target():
    async with setup([{}], anthropic_behind) as s, openai_client(s) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=CLAUDE,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi there"},
            ],
        )
        completion = raw.parse()
        assert raw.headers["x-selected-provider"] == "anthropic"
        assert completion.choices[0].message.content == f"Hello from {CLAUDE}! You said: Hi there"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
        sent = s.fakes[0].requests[-1].json
        assert sent["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
        assert sent["max_tokens"] == 4096  # the upstream's default_max_tokens


async def test_openai_sdk_stream_with_usage_and_length_finish():
    async with setup([{}], anthropic_behind) as s, openai_client(s) as client:
        stream = await client.chat.completions.create(
            model=CLAUDE,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=3,
            messages=[{"role": "user", "content": "one two three four five"}],
        )
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert text == "Hello from claude-3-5-sonnet-20241022!"[: len(text)] and text
        assert finish == "length"
        assert usage is not None and usage.completion_tokens == 3


async def test_openai_sdk_tool_calls_whole_and_streamed():
    async with setup([{}], anthropic_behind) as s, openai_client(s) as client:
        messages = [{"role": "user", "content": "Please call get_weather for Paris"}]
        completion = await client.chat.completions.create(
            model=CLAUDE, messages=messages, tools=[WEATHER]
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"]

        stream = await client.chat.completions.create(
            model=CLAUDE, messages=messages, tools=[WEATHER], stream=True
        )
        arguments, name, finish = "", None, None
        async for chunk in stream:
            for c in chunk.choices:
                for delta in c.delta.tool_calls or []:
                    name = delta.function.name or name
                    arguments += delta.function.arguments or ""
                finish = c.finish_reason or finish
        assert (name, finish) == ("get_weather", "tool_calls")
        assert json.loads(arguments) == json.loads(call.function.arguments)

        # The tool result goes back and the conversation ends with text.
        follow_up = await client.chat.completions.create(
            model=CLAUDE,
            tools=[WEATHER],
            messages=[
                *messages,
                choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ],
        )
        assert "sunny" in follow_up.choices[0].message.content


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.rate_limit(retry_after=2), openai.RateLimitError),
        (Fault.overloaded(), openai.InternalServerError),
        (Fault.error(500), openai.InternalServerError),
        (Fault.error(400), openai.BadRequestError),
        (Fault.hang(), openai.InternalServerError),  # our 504 after the first-byte budget
    ],
)
async def test_openai_sdk_raises_its_own_errors(fault, error):
    async with setup(
        [{"faults": [fault]}], lambda f: anthropic_behind(f, service={"first_byte_timeout": 1.0})
    ) as s:
        async with openai_client(s) as client:
            with pytest.raises(error) as info:
                await client.chat.completions.create(
                    model=CLAUDE, messages=[{"role": "user", "content": "x"}]
                )
        assert info.value.response.headers["x-selected-provider"] == "anthropic"


async def test_openai_sdk_sees_a_broken_stream_as_an_error():
    async with (
        setup([{"faults": [Fault.cut_stream(after_chunks=4)]}], anthropic_behind) as s,
        openai_client(s) as client,
    ):
        stream = await client.chat.completions.create(
            model=CLAUDE,
            stream=True,
            messages=[{"role": "user", "content": "one two three four five six"}],
        )
        with pytest.raises(openai.APIError, match="broke"):
            async for _ in stream:
                pass


# --- anthropic SDK -> OpenAI provider -----------------------------------------------------


async def test_anthropic_sdk_text_from_an_openai_target():
    async with setup([{}], openai_behind) as s, anthropic_client(s) as client:
        raw = await client.messages.with_raw_response.create(
            model=GPT,
            max_tokens=100,
            system="Be brief.",
            messages=[{"role": "user", "content": "Hi there"}],
        )
        message = await raw.parse()
        assert raw.headers["x-selected-provider"] == "openai"
        assert message.content[0].text == f"Hello from {GPT}! You said: Hi there"
        assert message.stop_reason == "end_turn"
        assert message.usage.input_tokens > 0
        sent = s.fakes[0].requests[-1].json
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert s.fakes[0].requests[-1].header("anthropic-version") is None


async def test_anthropic_sdk_stream_helper_and_tool_use():
    async with setup([{}], openai_behind) as s, anthropic_client(s) as client:
        async with client.messages.stream(
            model=GPT, max_tokens=100, messages=[{"role": "user", "content": "Hi there"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == f"Hello from {GPT}! You said: Hi there"
        assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0

        async with client.messages.stream(
            model=GPT,
            max_tokens=100,
            tools=[ANTHROPIC_WEATHER],
            messages=[{"role": "user", "content": "call get_weather for Rome"}],
        ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        tool = next(b for b in final.content if b.type == "tool_use")
        assert tool.name == "get_weather" and tool.input["city"]

        answer = await client.messages.create(
            model=GPT,
            max_tokens=100,
            tools=[ANTHROPIC_WEATHER],
            messages=[
                {"role": "user", "content": "call get_weather for Rome"},
                {
                    "role": "assistant",
                    "content": [b.model_dump(exclude_none=True) for b in final.content],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": tool.id, "content": "rainy"}
                    ],
                },
            ],
        )
        assert "rainy" in answer.content[0].text
        sent = s.fakes[0].requests[-2].json  # the streamed tool request asked for usage
        assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.rate_limit(retry_after=2), anthropic.RateLimitError),
        (Fault.error(500), anthropic.InternalServerError),
        (Fault.error(503), anthropic.InternalServerError),
        # The provider refusing the gateway's own credential is not the client's fault:
        # a 502 from the gateway, never the provider's 401.
        (Fault.error(401), anthropic.InternalServerError),
        (Fault.hang(), anthropic.InternalServerError),
    ],
)
async def test_anthropic_sdk_raises_its_own_errors(fault, error):
    async with setup(
        [{"faults": [fault]}], lambda f: openai_behind(f, service={"first_byte_timeout": 1.0})
    ) as s:
        async with anthropic_client(s) as client:
            with pytest.raises(error):
                await client.messages.create(
                    model=GPT, max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )


async def test_anthropic_sdk_sees_overloaded_and_broken_streams():
    async with (
        setup(
            [{"faults": [Fault.overloaded(times=1)]}],
            lambda f: config(
                [target(f[0], "anthropic", default_model=CLAUDE, models=[CLAUDE])],
                health=NO_EJECTION,
            ),
        ) as s,
        anthropic_client(s) as client,
    ):
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(
                model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        s.fakes[0].set_faults(Fault.cut_stream(after_chunks=4))
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(
                model=CLAUDE,
                max_tokens=100,
                messages=[{"role": "user", "content": "one two three four five"}],
            ) as stream:
                async for _ in stream.text_stream:
                    pass


# --- the guide's upstream, both formats behind one OpenAI client ----------------------------


def guide(fakes):
    return config(
        [
            target(
                fakes[0],
                "openai",
                path="/v1/chat/completions",
                weight=50,
                priority=1,
                default_model=GPT,
                models=["gpt-3.5-turbo", "gpt-4", GPT],
            ),
            target(
                fakes[1],
                "anthropic",
                path="/v1/messages",
                weight=50,
                priority=1,
                default_model=CLAUDE,
                models=[CLAUDE],
                headers={"anthropic-version": "2023-06-01"},
            ),
        ],
        health={"passive": True, "threshold": 3, "interval": 60},
    )


async def test_the_guides_upstream_serves_an_openai_client_whichever_target_is_picked():
    async with setup([{}, {}], guide) as s, openai_client(s) as client:
        providers = Counter()
        for _ in range(20):
            raw = await client.chat.completions.with_raw_response.create(
                messages=[{"role": "user", "content": "Hello"}], model=""
            )
            completion = raw.parse()
            provider, model = raw.headers["x-selected-provider"], raw.headers["x-selected-model"]
            providers[provider] += 1
            assert completion.choices[0].message.content == f"Hello from {model}! You said: Hello"
            assert model == (GPT if provider == "openai" else CLAUDE)
        assert providers == {"openai": 10, "anthropic": 10}
        assert s.fakes[1].requests[-1].header("anthropic-version") == "2023-06-01"


async def test_the_guides_upstream_fails_over_across_formats():
    async with setup([{"faults": [Fault.error(503)]}, {}], guide) as s:
        async with httpx2.AsyncClient(
            base_url=s.gateway.proxy_url, headers={"X-Api-Key": KEY}
        ) as client:
            for _ in range(6):
                response = await client.post(
                    "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}
                )
                assert response.status_code == 200
                assert response.headers["x-selected-provider"] == "anthropic"
                assert response.json()["object"] == "chat.completion"
            outcomes = [o for _, o in trail(response)]
            assert outcomes[-1] == "200"


async def test_a_claude_request_from_an_openai_client_goes_to_the_anthropic_target():
    async with setup([{}, {}], guide) as s:
        response = await s.chat(model=CLAUDE)
        assert response.headers["x-selected-provider"] == "anthropic"
        assert response.headers["x-selected-model"] == CLAUDE
        assert len(s.fakes[0].requests) == 0


async def test_client_anthropic_version_is_kept_unless_the_target_sets_one():
    async with setup(
        [{}], lambda f: config([target(f[0], "anthropic", default_model=CLAUDE, models=[CLAUDE])])
    ) as s:
        response = await s.client.post(
            "/v1/messages",
            json={"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            headers={"anthropic-version": "2024-01-01", "anthropic-beta": "tools-2024"},
        )
        assert response.status_code == 200
        forwarded = s.fakes[0].requests[-1]
        assert forwarded.header("anthropic-version") == "2024-01-01"
        assert forwarded.header("anthropic-beta") == "tools-2024"
        await s.messages()
        assert s.fakes[0].requests[-1].header("anthropic-version") == "2023-06-01"


async def test_the_guides_upstream_splits_1000_requests_500_500():
    async with setup([{}, {}], guide) as s:
        providers: Counter[str] = Counter()
        async with httpx2.AsyncClient(
            base_url=s.gateway.proxy_url, headers={"X-Api-Key": KEY}
        ) as client:
            for _ in range(1000):
                response = await client.post(
                    "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}
                )
                assert response.status_code == 200
                providers[response.headers["x-selected-provider"]] += 1
        assert providers == {"openai": 500, "anthropic": 500}
        assert (len(s.fakes[0].requests), len(s.fakes[1].requests)) == (500, 500)
