"""Conformance: the official openai and anthropic SDKs, pointed at a fake, parse its answers
(text and tool calls, whole and streamed) and raise their own errors for each injected fault.

The SDKs run under Trio as they are (httpx2 and sniffio detect it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import trio

from trio_gateway.testing.fake import FakeProvider, Fault
from trio_gateway.testing.plugin import FakeProviderFactory

from .helpers import CLAUDE, GPT, KEY, TIMEOUT

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
OPENAI_TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
]
ANTHROPIC_TOOLS: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
HELLO: Any = [{"role": "user", "content": "hello there"}]
CALL: Any = [{"role": "user", "content": "please call get_weather"}]


@pytest.fixture
async def fake(fake_provider: FakeProviderFactory) -> FakeProvider:
    return await fake_provider(api_key=KEY)


@pytest.fixture
async def oai(fake: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=fake.url + "/v1", api_key=KEY, max_retries=0, timeout=5
    ) as client:
        yield client


@pytest.fixture
async def claude(fake: FakeProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=fake.url, api_key=KEY, max_retries=0, timeout=5
    ) as client:
        yield client


async def openai_stream(client: openai.AsyncOpenAI, **kwargs: Any) -> int:
    stream = await client.chat.completions.create(model=GPT, messages=HELLO, stream=True, **kwargs)
    return len([chunk async for chunk in stream])


async def anthropic_stream(client: anthropic.AsyncAnthropic, **kwargs: Any) -> int:
    stream = await client.messages.create(
        model=CLAUDE, max_tokens=100, messages=HELLO, stream=True, **kwargs
    )
    return len([event async for event in stream])


# --- OpenAI: answers -----------------------------------------------------------------------


async def test_openai_text(oai: openai.AsyncOpenAI, fake: FakeProvider) -> None:
    with trio.fail_after(TIMEOUT):
        completion = await oai.chat.completions.create(model=GPT, messages=HELLO)
    choice = completion.choices[0]
    assert choice.message.content == "Hello from gpt-4o-mini! You said: hello there"
    assert choice.finish_reason == "stop" and completion.model == GPT
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 7)
    assert fake.requests[0].header("authorization") == f"Bearer {KEY}"


async def test_openai_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await oai.chat.completions.create(
            model=GPT, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from gpt-4o-mini! You said: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7


async def test_openai_tool_call(oai: openai.AsyncOpenAI) -> None:
    with trio.fail_after(TIMEOUT):
        completion = await oai.chat.completions.create(model=GPT, messages=CALL, tools=OPENAI_TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "test", "unit": "c"}


async def test_openai_streamed_tool_call(oai: openai.AsyncOpenAI) -> None:
    with trio.fail_after(TIMEOUT):
        async with oai.chat.completions.stream(
            model=GPT, messages=CALL, tools=OPENAI_TOOLS, tool_choice="required"
        ) as stream:
            final = await stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "test", "unit": "c"}


async def test_openai_embeddings_and_models(oai: openai.AsyncOpenAI) -> None:
    with trio.fail_after(TIMEOUT):
        as_base64 = await oai.embeddings.create(model="text-embedding-3-small", input="a b c")
        as_floats = await oai.embeddings.create(
            model="text-embedding-3-small", input=["a b c"], encoding_format="float"
        )
        models = [m.id async for m in oai.models.list()]
    assert len(as_base64.data[0].embedding) == 1536
    assert as_base64.data[0].embedding == pytest.approx(as_floats.data[0].embedding, abs=1e-6)
    assert as_base64.usage.prompt_tokens == 3
    assert GPT in models and CLAUDE not in models


# --- Anthropic: answers ------------------------------------------------------------------------


async def test_anthropic_text(claude: anthropic.AsyncAnthropic, fake: FakeProvider) -> None:
    with trio.fail_after(TIMEOUT):
        message = await claude.messages.create(
            model=CLAUDE, max_tokens=100, messages=HELLO, system="be brief"
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == f"Hello from {CLAUDE}! You said: hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 7)
    # What the SDK sends, for a gateway to forward or translate:
    assert fake.requests[0].header("authorization") == f"Bearer {KEY}"
    assert fake.requests[0].header("anthropic-version") is not None


async def test_anthropic_stream(claude: anthropic.AsyncAnthropic) -> None:
    with trio.fail_after(TIMEOUT):
        async with claude.messages.stream(model=CLAUDE, max_tokens=100, messages=HELLO) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text == f"Hello from {CLAUDE}! You said: hello there"
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 7


async def test_anthropic_tool_use(claude: anthropic.AsyncAnthropic) -> None:
    with trio.fail_after(TIMEOUT):
        whole = await claude.messages.create(
            model=CLAUDE, max_tokens=100, messages=CALL, tools=ANTHROPIC_TOOLS
        )
        async with claude.messages.stream(
            model=CLAUDE,
            max_tokens=100,
            messages=HELLO,
            tools=ANTHROPIC_TOOLS,
            tool_choice={"type": "tool", "name": "get_weather"},
        ) as stream:
            streamed = await stream.get_final_message()
    for message in (whole, streamed):
        assert message.stop_reason == "tool_use"
        text, tool = message.content
        assert text.type == "text" and tool.type == "tool_use"
        assert (tool.name, tool.input) == ("get_weather", {"city": "test", "unit": "c"})
        assert tool.id.startswith("toolu_")


async def test_anthropic_count_tokens_and_models(claude: anthropic.AsyncAnthropic) -> None:
    with trio.fail_after(TIMEOUT):
        count = await claude.messages.count_tokens(model=CLAUDE, messages=HELLO)
        models = [m.id async for m in claude.models.list()]
    assert count.input_tokens == 2
    assert CLAUDE in models and GPT not in models


# --- errors: the SDKs' own classes ----------------------------------------------------------------

OPENAI_ERRORS = [
    (Fault.rate_limit(retry_after=2), openai.RateLimitError, 429),
    (Fault.overloaded(), openai.InternalServerError, 529),
    (Fault.error(500), openai.InternalServerError, 500),
    (Fault.error(503), openai.InternalServerError, 503),
    (Fault.error(401), openai.AuthenticationError, 401),
    (Fault.error(404), openai.NotFoundError, 404),
]
ANTHROPIC_ERRORS = [
    (Fault.rate_limit(retry_after=2), anthropic.RateLimitError, 429),
    (Fault.overloaded(), anthropic.OverloadedError, 529),
    (Fault.error(500), anthropic.InternalServerError, 500),
    (Fault.error(503), anthropic.ServiceUnavailableError, 503),
    (Fault.error(401), anthropic.AuthenticationError, 401),
    (Fault.error(404), anthropic.NotFoundError, 404),
]


@pytest.mark.parametrize(("fault", "error", "status"), OPENAI_ERRORS, ids=lambda v: str(v))
async def test_openai_status_errors(
    oai: openai.AsyncOpenAI, fake: FakeProvider, fault: Fault, error: type, status: int
) -> None:
    fake.set_faults(fault)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(error) as whole:
            await oai.chat.completions.create(model=GPT, messages=HELLO)
        with pytest.raises(error):
            await openai_stream(oai)
    assert whole.value.status_code == status
    assert isinstance(whole.value.body, dict) and "message" in whole.value.body
    if status == 429:
        assert whole.value.response.headers["retry-after"] == "2"


@pytest.mark.parametrize(("fault", "error", "status"), ANTHROPIC_ERRORS, ids=lambda v: str(v))
async def test_anthropic_status_errors(
    claude: anthropic.AsyncAnthropic, fake: FakeProvider, fault: Fault, error: type, status: int
) -> None:
    fake.set_faults(fault)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(error) as whole:
            await claude.messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
        with pytest.raises(error):
            await anthropic_stream(claude)
    assert whole.value.status_code == status
    assert whole.value.body["type"] == "error"


async def test_what_the_sdks_check_for_real(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider
) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(openai.NotFoundError, match="`gpt-9` does not exist") as missing:
            await oai.chat.completions.create(model="gpt-9", messages=HELLO)
        with pytest.raises(anthropic.NotFoundError, match="not_found_error"):
            await claude.messages.create(model="claude-9", max_tokens=10, messages=HELLO)
        with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
            await claude.messages.create(model=CLAUDE, max_tokens=0, messages=HELLO)
        async with openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="wrong") as wrong:
            with pytest.raises(openai.AuthenticationError) as unauthorized:
                await wrong.chat.completions.create(model=GPT, messages=HELLO)
    assert missing.value.code == "model_not_found"
    assert unauthorized.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    "fault", [Fault.hang(), Fault.hang_after_headers()], ids=["hang", "headers"]
)
async def test_timeouts(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider, fault: Fault
) -> None:
    fake.set_faults(fault)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(openai.APITimeoutError):
            await oai.with_options(timeout=0.3).chat.completions.create(model=GPT, messages=HELLO)
        with pytest.raises(anthropic.APITimeoutError):
            await claude.with_options(timeout=0.3).messages.create(
                model=CLAUDE, max_tokens=10, messages=HELLO
            )


@pytest.mark.parametrize("fault", [Fault.close(), Fault.reset()], ids=["close", "reset"])
async def test_connection_errors(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider, fault: Fault
) -> None:
    fake.set_faults(fault)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(openai.APIConnectionError) as openai_error:
            await oai.chat.completions.create(model=GPT, messages=HELLO)
        with pytest.raises(anthropic.APIConnectionError):
            await claude.messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    assert not isinstance(openai_error.value, openai.APITimeoutError)
    assert isinstance(openai_error.value.__cause__, httpx2.TransportError)


async def test_broken_streams(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.cut_stream(after_chunks=3))
    with trio.fail_after(TIMEOUT):
        with pytest.raises(openai.APIConnectionError):
            await openai_stream(oai)
        # The Anthropic SDK lets a transport error in the middle of a stream through as is.
        with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
            await anthropic_stream(claude)


async def test_stream_stalls_time_out(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.stall_stream(5, after_chunks=3))
    with trio.fail_after(TIMEOUT):
        with pytest.raises(openai.APITimeoutError):
            await openai_stream(oai.with_options(timeout=0.3))
        with pytest.raises(httpx2.ReadTimeout):  # again, not wrapped by the Anthropic SDK
            await anthropic_stream(claude.with_options(timeout=0.3))


async def test_error_events_in_the_stream(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.error_event(after_chunks=3))
    with trio.fail_after(TIMEOUT):
        with pytest.raises(openai.APIError, match="overloaded"):
            await openai_stream(oai)
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            await anthropic_stream(claude)


async def test_malformed_events(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.malformed_event(after_chunks=3))
    with trio.fail_after(TIMEOUT):
        with pytest.raises(json.JSONDecodeError):
            await openai_stream(oai)
        with pytest.raises(json.JSONDecodeError):
            await anthropic_stream(claude)


async def test_streams_without_terminator_go_unnoticed(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake: FakeProvider
) -> None:
    """Neither SDK notices a missing ``[DONE]``/``message_stop``: a gateway must."""
    healthy = (await openai_stream(oai), await anthropic_stream(claude))
    fake.set_faults(Fault.no_terminator())
    with trio.fail_after(TIMEOUT):
        truncated = (await openai_stream(oai), await anthropic_stream(claude))
    assert truncated == (healthy[0], healthy[1] - 1)  # message_stop is an event; [DONE] is not


async def test_sdk_retries_see_the_fault_clear(fake: FakeProvider) -> None:
    fake.set_faults(
        Fault.rate_limit(retry_after=0.05, times=1), Fault.error(503, times=1, retry_after=0.05)
    )
    with trio.fail_after(TIMEOUT):
        async with openai.AsyncOpenAI(
            base_url=fake.url + "/v1", api_key=KEY, max_retries=2
        ) as client:
            completion = await client.chat.completions.create(model=GPT, messages=HELLO)
    assert completion.choices[0].finish_reason == "stop"
    assert [r.status for r in fake.requests] == [429, 503, 200]
    assert [r.header("x-stainless-retry-count") for r in fake.requests] == ["0", "1", "2"]
