"""The openai SDK's ``client.responses.create``/``stream``, over real sockets, against a fake
provider's own Responses API and against its chat-completions and Messages APIs through the
Responses translators: the same text, tool calls and usage every way.

The gateway is not involved yet: :class:`Translating` is an httpx2 transport that does, per
request, what the gateway's dispatcher does with a translator (request, response or stream,
errors, ``fail`` when the provider's stream breaks), calling the fake over a real socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
import trio

from trio_gateway.providers.formats import Api, ApiFormat, error_body
from trio_gateway.providers.translate import TranslationError, translator
from trio_gateway.testing.fake import FakeProvider, Fault
from trio_gateway.testing.plugin import FakeProviderFactory

KEY = "sk-test-responses-0123456789"
MODEL = "test-model"  # served on both sides of a fake that serves any model
TIMEOUT = 10
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
TARGETS = ["native", "openai-compatible", "anthropic"]


class _Body(httpx2.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes], upstream: httpx2.Response) -> None:
        self._chunks = chunks
        self._upstream = upstream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        await self._upstream.aclose()


class Translating(httpx2.AsyncBaseTransport):
    """``POST /v1/responses`` served by a provider of ``kind`` through the translator."""

    def __init__(self, base_url: str, kind: str) -> None:
        self.kind = kind
        self.client = httpx2.AsyncClient(base_url=base_url, timeout=5)
        self.sent: list[dict] = []

    async def aclose(self) -> None:
        await self.client.aclose()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(await request.aread())
        t = translator(Api.RESPONSES, self.kind, request_id="sdk0test")
        assert t is not None
        try:
            provider_body = t.request(body)
        except TranslationError as exc:
            return httpx2.Response(
                400, content=error_body(ApiFormat.OPENAI, 400, exc.type, exc.message)
            )
        self.sent.append(provider_body)
        if t.provider_api is Api.CHAT:  # type: ignore[attr-defined]
            path, headers = "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}
        else:
            path, headers = "/v1/messages", {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        upstream = await self.client.send(
            self.client.build_request("POST", path, json=provider_body, headers=headers),
            stream=True,
        )
        if upstream.status_code != 200:
            status, out = t.error(upstream.status_code, await upstream.aread())
            await upstream.aclose()
            return httpx2.Response(
                status, content=out, headers={"content-type": "application/json"}
            )
        if not body.get("stream"):
            answer = t.response(json.loads(await upstream.aread()))
            await upstream.aclose()
            return httpx2.Response(200, json=answer)
        stream = t.stream()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for raw in upstream.aiter_raw():
                    out = stream.feed(raw)
                    if out:
                        yield out
            except httpx2.HTTPError:
                pass  # the provider broke off: end the client's stream below
            out = stream.finish()
            if not stream.complete and stream.error is None:
                out += stream.fail("upstream_error", "the provider's stream broke off")
            if out:
                yield out

        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Body(chunks(), upstream)
        )


@pytest.fixture
async def fake(fake_provider: FakeProviderFactory) -> FakeProvider:
    return await fake_provider(api_key=KEY, models=())


@pytest.fixture(params=TARGETS)
async def target(
    request: pytest.FixtureRequest, fake: FakeProvider
) -> AsyncIterator[tuple[openai.AsyncOpenAI, Translating | None]]:
    """An SDK client for the fake's Responses API itself, or for a translated target."""
    kind = request.param
    transport = None if kind == "native" else Translating(fake.url or "", kind)
    http = httpx2.AsyncClient(transport=transport) if transport else None
    async with openai.AsyncOpenAI(
        base_url=(fake.url or "") + "/v1",
        api_key=KEY,
        max_retries=0,
        timeout=5,
        http_client=http,
    ) as client:
        yield client, transport
    if transport is not None:
        await transport.aclose()


def _summary(response: Any) -> dict:
    calls = [
        (item.name, json.loads(item.arguments))
        for item in response.output
        if item.type == "function_call"
    ]
    usage = response.usage
    return {
        "text": response.output_text,
        "calls": calls,
        "status": response.status,
        "usage": (usage.input_tokens, usage.output_tokens, usage.total_tokens),
    }


CONVERSATION: Any = [
    {"role": "user", "content": "what is the weather, call get_weather"},
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "cold and dark"},
    {"role": "assistant", "content": "It is cold."},
    {"role": "user", "content": [{"type": "input_text", "text": "and call get_weather again"}]},
]

EXPECTED = {
    "text": {
        "text": "Hello from test-model! You said: hello there",
        "calls": [],
        "status": "completed",
        "usage": (6, 7, 13),  # "Be brief and kind." + "hello there"
    },
    "tools": {
        "text": "Calling get_weather.",
        "calls": [("get_weather", {"city": "test", "unit": "c"})],
        "status": "completed",
        "usage": (16, 6, 22),  # every text of the conversation; 2 words and 4 argument pieces
    },
}


async def test_create_gives_the_same_answer_every_way(target) -> None:
    client, _ = target
    with trio.fail_after(TIMEOUT):
        text = await client.responses.create(
            model=MODEL, instructions="Be brief and kind.", input="hello there"
        )
        tools = await client.responses.create(model=MODEL, input=CONVERSATION, tools=TOOLS)
    assert _summary(text) == EXPECTED["text"]
    assert _summary(tools) == EXPECTED["tools"]


async def test_stream_gives_the_same_answer_every_way(target) -> None:
    client, _ = target
    with trio.fail_after(TIMEOUT):
        async with client.responses.stream(
            model=MODEL, instructions="Be brief and kind.", input="hello there"
        ) as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            text = await stream.get_final_response()
        async with client.responses.stream(model=MODEL, input=CONVERSATION, tools=TOOLS) as stream:
            arguments = [
                e.delta async for e in stream if e.type == "response.function_call_arguments.delta"
            ]
            tools = await stream.get_final_response()
    assert _summary(text) == EXPECTED["text"]
    assert "".join(deltas) == EXPECTED["text"]["text"] and len(deltas) == 7
    assert _summary(tools) == EXPECTED["tools"]
    assert json.loads("".join(arguments)) == {"city": "test", "unit": "c"}


async def test_a_tool_result_turn_every_way(target) -> None:
    client, _ = target
    conversation = [*CONVERSATION[:3]]
    with trio.fail_after(TIMEOUT):
        answer = await client.responses.create(model=MODEL, input=conversation, tools=TOOLS)
    assert answer.output_text == "Hello from test-model! The tool said: cold and dark"


async def test_max_output_tokens_is_incomplete_every_way(target) -> None:
    client, _ = target
    with trio.fail_after(TIMEOUT):
        whole = await client.responses.create(model=MODEL, input="hello there", max_output_tokens=3)
        stream = await client.responses.create(
            model=MODEL, input="hello there", max_output_tokens=3, stream=True
        )
        last = [event async for event in stream][-1]
    assert whole.status == "incomplete" and whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output_text == "Hello from test-model!"
    assert last.type == "response.incomplete"


@pytest.mark.parametrize("kind", ["openai-compatible", "anthropic"])
async def test_stateful_features_are_refused_on_translated_targets(
    fake: FakeProvider, kind: str
) -> None:
    transport = Translating(fake.url or "", kind)
    client = openai.AsyncOpenAI(
        base_url="http://translated/v1",
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )
    with trio.fail_after(TIMEOUT):
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
        with pytest.raises(openai.BadRequestError, match="web_search"):
            await client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    await client.close()
    assert info.value.body["message"].startswith("previous_response_id: not supported")  # type: ignore[index]
    assert transport.sent == [] and fake.requests == []  # nothing reached the provider


@pytest.mark.parametrize("kind", ["openai-compatible", "anthropic"])
async def test_a_provider_error_after_content_ends_with_response_failed(
    fake: FakeProvider, kind: str
) -> None:
    fake.set_faults(Fault.error_event(after_chunks=5))  # after the first text delta
    transport = Translating(fake.url or "", kind)
    async with openai.AsyncOpenAI(
        base_url="http://translated/v1",
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    ) as client:
        with trio.fail_after(TIMEOUT):
            async with client.responses.stream(model=MODEL, input="hello there") as stream:
                seen = [event async for event in stream]
    await transport.aclose()
    assert seen[-1].type == "response.failed"
    failed = seen[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error"
    # What the client had is in the failed response, marked incomplete.
    [message] = failed.output
    assert message.status == "incomplete" and message.content[0].text  # type: ignore[union-attr]
    texts = [e.delta for e in seen if e.type == "response.output_text.delta"]
    assert texts and message.content[0].text == "".join(texts)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["openai-compatible", "anthropic"])
async def test_a_cut_stream_ends_with_response_failed(fake: FakeProvider, kind: str) -> None:
    fake.set_faults(Fault.cut_stream(after_chunks=4))
    transport = Translating(fake.url or "", kind)
    async with openai.AsyncOpenAI(
        base_url="http://translated/v1",
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    ) as client:
        with trio.fail_after(TIMEOUT):
            async with client.responses.stream(model=MODEL, input="hello there") as stream:
                seen = [event async for event in stream]
                with pytest.raises(RuntimeError):
                    await stream.get_final_response()
    await transport.aclose()
    assert seen[0].type == "response.created" and seen[-1].type == "response.failed"
    assert seen[-1].response.error.message == "the provider's stream broke off"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["openai-compatible", "anthropic"])
async def test_provider_errors_reach_the_sdk_as_its_own(fake: FakeProvider, kind: str) -> None:
    fake.set_faults(Fault.overloaded(times=1), Fault.rate_limit(times=1))
    transport = Translating(fake.url or "", kind)
    async with openai.AsyncOpenAI(
        base_url="http://translated/v1",
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    ) as client:
        with trio.fail_after(TIMEOUT):
            with pytest.raises(openai.InternalServerError) as overloaded:
                await client.responses.create(model=MODEL, input="hi")
            with pytest.raises(openai.RateLimitError):
                await client.responses.create(model=MODEL, input="hi")
    await transport.aclose()
    # Anthropic's 529 becomes the 503 every OpenAI client knows; OpenAI's stays as it is.
    assert overloaded.value.status_code == (503 if kind == "anthropic" else 529)
