"""The fake's Responses API (``POST /v1/responses``): checks, answers consistent with chat
completions and Messages, the official SDK's ``responses.create``/``responses.stream``
over real sockets, and what the SDK makes of each stream fault.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pydantic
import pytest
import trio
from openai.types.responses import Response, ResponseFailedEvent, ResponseStreamEvent

from trio_gateway.testing.fake import FakeProvider, Fault
from trio_gateway.testing.plugin import FakeProviderFactory

from .helpers import ANTHROPIC, CLAUDE, GPT, KEY, OPENAI, TIMEOUT, parse_sse, responses

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
}
TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
_events: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


@pytest.fixture
async def fake(fake_provider: FakeProviderFactory) -> FakeProvider:
    return await fake_provider(api_key=KEY)


@pytest.fixture
async def client(fake: FakeProvider) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=fake.url, timeout=5) as client:
        yield client


@pytest.fixture
async def oai(fake: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=fake.url + "/v1", api_key=KEY, max_retries=0, timeout=5
    ) as client:
        yield client


# --- what it checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "hi"}, 400, "model"),
        ({"model": GPT}, 400, "input"),
        ({"model": GPT, "input": 5}, 400, "input"),
        ({"model": GPT, "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role"),
        ({"model": GPT, "input": [{"role": "user"}]}, 400, "input[0].content"),
        (
            {"model": GPT, "input": [{"type": "function_call_output", "output": "x"}]},
            400,
            "input[0].call_id",
        ),
        ({"model": GPT, "input": "x", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
        ({"model": GPT, "input": "x", "stream": "yes"}, 400, "stream"),
        ({"model": CLAUDE, "input": "x"}, 404, None),
    ],
)
async def test_requests_are_checked_like_openai(
    client: httpx2.AsyncClient, body: dict, status: int, param: str | None
) -> None:
    with trio.fail_after(TIMEOUT):
        response = await client.post("/v1/responses", json=body, headers=OPENAI)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    if status == 404:
        assert error["code"] == "model_not_found"


async def test_it_needs_the_key_and_serves_azures_v1_path(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        missing = await client.post("/v1/responses", json=responses())
        azure = await client.post(
            "/openai/v1/responses", json=responses(), headers={"api-key": KEY}
        )
    assert missing.status_code == 401
    assert azure.status_code == 200 and azure.json()["model"] == GPT


async def test_built_in_tools_are_accepted_and_never_called(client: httpx2.AsyncClient) -> None:
    body = responses("search the web", tools=[{"type": "web_search"}], tool_choice="required")
    with trio.fail_after(TIMEOUT):
        response = await client.post("/v1/responses", json=body, headers=OPENAI)
    assert response.status_code == 200
    assert [item["type"] for item in response.json()["output"]] == ["message"]


# --- what it answers -----------------------------------------------------------------------


async def test_the_same_answer_as_chat_completions_and_messages(client: httpx2.AsyncClient) -> None:
    """Text, tool call and usage agree across the three APIs for one conversation."""
    instructions = "Be brief and kind."
    turns = [
        ("user", "what is the weather, please call get_weather"),
    ]
    chat_body = {
        "model": GPT,
        "messages": [{"role": "system", "content": instructions}]
        + [{"role": r, "content": c} for r, c in turns],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}],
    }
    responses_body = {
        "model": GPT,
        "instructions": instructions,
        "input": turns[0][1],
        "tools": TOOLS,
    }
    messages_body = {
        "model": CLAUDE,
        "max_tokens": 100,
        "system": instructions,
        "messages": [{"role": r, "content": c} for r, c in turns],
        "tools": [{"name": "get_weather", "input_schema": WEATHER}],
    }
    with trio.fail_after(TIMEOUT):
        chat = (await client.post("/v1/chat/completions", json=chat_body, headers=OPENAI)).json()
        resp = (await client.post("/v1/responses", json=responses_body, headers=OPENAI)).json()
        msg = (await client.post("/v1/messages", json=messages_body, headers=ANTHROPIC)).json()
    message = chat["choices"][0]["message"]
    [text_item, call_item] = resp["output"]
    assert text_item["content"][0]["text"] == message["content"] == "Calling get_weather."
    assert call_item["arguments"] == message["tool_calls"][0]["function"]["arguments"]
    assert json.loads(call_item["arguments"]) == msg["content"][1]["input"]
    usage = resp["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        chat["usage"]["prompt_tokens"],
        chat["usage"]["completion_tokens"],
    )
    assert usage["input_tokens"] == msg["usage"]["input_tokens"]
    assert resp["status"] == "completed" and resp["store"] is True
    Response.model_validate(resp)


async def test_a_tool_result_is_answered_with_text(client: httpx2.AsyncClient) -> None:
    body = responses(
        input=[
            {"role": "user", "content": "call get_weather"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny, 20C"},
        ],
        tools=TOOLS,
    )
    with trio.fail_after(TIMEOUT):
        answer = (await client.post("/v1/responses", json=body, headers=OPENAI)).json()
    assert [i["type"] for i in answer["output"]] == ["message"]
    assert answer["output"][0]["content"][0]["text"].endswith("The tool said: sunny, 20C")
    assert answer["usage"]["input_tokens"] == 2 + 2  # "call get_weather", "sunny, 20C"


async def test_every_stream_event_is_the_sdks_type_in_order(client: httpx2.AsyncClient) -> None:
    body = responses("please call get_weather", tools=TOOLS, stream=True)
    with trio.fail_after(TIMEOUT):
        response = await client.post("/v1/responses", json=body, headers=OPENAI)
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = [json.loads(data) for _, data in parse_sse(response.content)]
    for event in raw:
        _events.validate_python(event)
    assert [e["sequence_number"] for e in raw] == list(range(len(raw)))
    names = [e["type"] for e in raw]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-1] == "response.completed"
    assert "response.function_call_arguments.done" in names


async def test_sdk_create_and_stream_agree(oai: openai.AsyncOpenAI) -> None:
    with trio.fail_after(TIMEOUT):
        whole = await oai.responses.create(model=GPT, input="hello there")
        async with oai.responses.stream(model=GPT, input="hello there") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert whole.output_text == final.output_text == "".join(deltas)
    assert whole.output_text == "Hello from gpt-4o-mini! You said: hello there"
    assert whole.usage is not None and final.usage is not None
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (2, 7)
    assert final.usage.output_tokens == len(deltas) == 7


async def test_sdk_streamed_tool_call(oai: openai.AsyncOpenAI) -> None:
    with trio.fail_after(TIMEOUT):
        async with oai.responses.stream(
            model=GPT, input="what now?", tools=TOOLS, tool_choice="required"
        ) as stream:
            final = await stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "test", "unit": "c"}


async def test_max_output_tokens_makes_an_incomplete_response(oai: openai.AsyncOpenAI) -> None:
    with trio.fail_after(TIMEOUT):
        whole = await oai.responses.create(model=GPT, input="hello there", max_output_tokens=3)
        stream = await oai.responses.create(
            model=GPT, input="hello there", max_output_tokens=3, stream=True
        )
        last = [event async for event in stream][-1]
    assert whole.status == "incomplete" and whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output_text == "Hello from gpt-4o-mini!"
    assert last.type == "response.incomplete" and last.response.usage is not None
    assert last.response.usage.output_tokens == 3


# --- faults, as the SDK sees them -----------------------------------------------------------


async def test_sdk_sees_a_failed_response_after_created(
    oai: openai.AsyncOpenAI, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.error_event(after_chunks=2))
    with trio.fail_after(TIMEOUT):
        async with oai.responses.stream(model=GPT, input="hello there") as stream:
            seen = [event async for event in stream]
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                await stream.get_final_response()
    assert [e.type for e in seen] == ["response.created", "response.in_progress", "response.failed"]
    failed = seen[-1]
    assert isinstance(failed, ResponseFailedEvent) and failed.response.error is not None
    assert failed.response.error.code == "server_error"


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.error_event(429, after_chunks=2), openai.APIError),
        (Fault.cut_stream(after_chunks=4), openai.APIConnectionError),
        (Fault.malformed_event(after_chunks=4), json.JSONDecodeError),
    ],
    ids=["error_event_429", "cut_stream", "malformed_event"],
)
async def test_what_the_sdk_raises(
    oai: openai.AsyncOpenAI, fake: FakeProvider, fault: Fault, error: type[Exception]
) -> None:
    fake.set_faults(fault)
    with trio.fail_after(TIMEOUT):
        stream = await oai.responses.create(model=GPT, input="hello there", stream=True)
        with pytest.raises(error):
            async for _ in stream:
                pass


async def test_no_terminator_just_ends_the_stream(
    oai: openai.AsyncOpenAI, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.no_terminator())
    with trio.fail_after(TIMEOUT):
        async with oai.responses.stream(model=GPT, input="hello there") as stream:
            seen = [event.type async for event in stream]
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                await stream.get_final_response()
    assert seen[-1] == "response.output_item.done"
