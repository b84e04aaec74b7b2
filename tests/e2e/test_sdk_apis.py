"""The rest of the API clients call, through the official SDKs, unchanged (issue 15).

``client.models.list()`` / ``retrieve`` (openai and anthropic SDKs), ``client.embeddings``,
``client.responses.create`` / ``stream`` against a native (OpenAI) target and a
translated (Anthropic, chat-only) one, and ``client.messages.count_tokens``: all
through the same rules, keys, balancing, failover and headers as chat, over real
sockets to the shipped fake providers.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import trio

from tests.e2e.conftest import KEY, Setup, config, setup, sse_events, target, trail
from trio_gateway.testing.fake import Fault
from trio_gateway.testing.harness import is_health_check

HOUSE = "house-model"  # a name both sides of a fake serve: answers then read the same
ANY = {"models": []}  # a fake that serves any model name
EMBED = "text-embedding-3-small"
CLAUDE = "claude-3-5-sonnet-20241022"
GPT = "gpt-4o-mini"
NO_EJECTION = {"passive": True, "threshold": 1000, "interval": 60}
TOOLS: Any = [
    {
        "type": "function",
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
    }
]


@asynccontextmanager
async def openai_client(
    s: Setup, key: str = KEY, base: str = "/v1"
) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=s.gateway.proxy_url + base, api_key=key, max_retries=0, timeout=30
    ) as client:
        yield client


@asynccontextmanager
async def anthropic_client(s: Setup, key: str = KEY) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=s.gateway.proxy_url, api_key=key, max_retries=0, timeout=30
    ) as client:
        yield client


def one(provider: str = "openai", **fields: Any):
    return lambda fakes: config([target(fakes[0], provider, **fields)], health=NO_EJECTION)


# --- GET /v1/models ----------------------------------------------------------------------------

OTHER_KEY = "tgk_e2e_other_key_0123456789"


def two_gateways(fakes):
    """Gateway ``e2e``: chat and messages under /v1 to upstream ``u`` (an OpenAI and an
    Anthropic target), embeddings routed by their own rule to upstream ``emb``, and a
    rule on another prefix to upstream ``elsewhere`` (not reachable from /v1).
    Gateway ``other``: its own key and models."""
    cfg = config(
        [
            target(fakes[0], default_model=GPT, models=[GPT, "gpt-4"]),
            target(fakes[1], "anthropic", priority=2, default_model=CLAUDE, models=[CLAUDE]),
            target(fakes[0], "openai-compatible", models=[GPT, "llama-3-8b"]),
        ]
    )
    gateway = cfg["gateways"][0]
    gateway["upstreams"] += [
        {"name": "emb", "targets": [target(fakes[0], default_model=EMBED, models=[EMBED])]},
        {"name": "elsewhere", "targets": [target(fakes[0], models=["hidden-model"])]},
    ]
    gateway["services"] += [
        {"name": "emb", "upstream": "emb"},
        {"name": "elsewhere", "upstream": "elsewhere"},
    ]
    gateway["rules"] += [
        {"name": "embeddings", "path": "/v1/embeddings", "service": "emb"},
        {"name": "elsewhere", "path": "/elsewhere", "service": "elsewhere"},
    ]
    other = {
        "name": "other",
        "upstreams": [
            {"name": "o", "targets": [target(fakes[1], "anthropic", models=["claude-other"])]}
        ],
        "services": [{"name": "o", "upstream": "o"}],
        "rules": [{"name": "v1", "path": "/v1", "service": "o"}],
        "api_keys": [{"name": "k", "key": OTHER_KEY}],
    }
    cfg["gateways"].append(other)
    return cfg


async def test_models_list_shows_exactly_what_each_key_reaches():
    async with setup([{}, {}], two_gateways) as s:
        expected = sorted([GPT, "gpt-4", CLAUDE, "llama-3-8b", EMBED])
        async with openai_client(s) as client:
            page = await client.models.list()
            assert [m.id for m in page.data] == expected
            by_id = {m.id: m for m in page.data}
            assert by_id[GPT].owned_by == "openai"
            assert by_id[GPT].model_extra["providers"] == ["openai", "openai-compatible"]
            assert by_id[CLAUDE].model_extra["providers"] == ["anthropic"]
            model = await client.models.retrieve("llama-3-8b")
            assert model.id == "llama-3-8b" and model.owned_by == "openai-compatible"
            with pytest.raises(openai.NotFoundError, match="not served here"):
                await client.models.retrieve("hidden-model")
        async with anthropic_client(s) as client:
            first = await client.models.list(limit=2)
            assert first.has_more and [m.id for m in first.data] == expected[:2]
            listed = [m async for m in first]  # the SDK follows the pages: three of them
            assert [m.id for m in listed] == expected
            assert {(m.type, m.display_name == m.id) for m in listed} == {("model", True)}
            info = await client.models.retrieve(CLAUDE)
            assert info.type == "model" and info.display_name == CLAUDE
            with pytest.raises(anthropic.NotFoundError):
                await client.models.retrieve("gpt-5")
        async with openai_client(s, OTHER_KEY) as client:
            assert [m.id for m in (await client.models.list()).data] == ["claude-other"]
        async with anthropic_client(s, OTHER_KEY) as client:
            assert [m.id async for m in client.models.list()] == ["claude-other"]
        # Nothing was asked of a provider.
        assert not any(r.path.endswith("/models") for f in s.fakes for r in f.requests)


async def test_anthropic_pages_follow_its_cursors():
    async with setup([{}, {}], two_gateways) as s:
        headers = {"anthropic-version": "2023-06-01"}
        first = (await s.client.get("/v1/models?limit=2", headers=headers)).json()
        assert [m["id"] for m in first["data"]] == [CLAUDE, "gpt-4"]
        assert first["has_more"] is True and first["last_id"] == "gpt-4"
        after = (await s.client.get("/v1/models?limit=2&after_id=gpt-4", headers=headers)).json()
        assert [m["id"] for m in after["data"]] == [GPT, "llama-3-8b"]
        before = (await s.client.get(f"/v1/models?limit=1&before_id={GPT}", headers=headers)).json()
        assert [m["id"] for m in before["data"]] == ["gpt-4"] and before["has_more"] is True
        bad = await s.client.get("/v1/models?limit=0", headers=headers)
        assert bad.status_code == 400 and bad.json()["type"] == "error"


async def test_a_stripped_base_lists_what_its_own_paths_reach():
    def stripped(fakes):
        cfg = config([target(fakes[0], default_model=GPT, models=[GPT])])
        gateway = cfg["gateways"][0]
        gateway["upstreams"].append(
            {"name": "c", "targets": [target(fakes[1], "anthropic", models=[CLAUDE])]}
        )
        gateway["services"].append({"name": "c", "upstream": "c"})
        gateway["rules"].append(
            {"name": "claude", "path": "/claude", "service": "c", "strip_path": True}
        )
        return cfg

    async with setup([{}, {}], stripped) as s:
        async with openai_client(s, base="/claude/v1") as client:
            assert [m.id for m in (await client.models.list()).data] == [CLAUDE]
            answer = await client.chat.completions.create(
                model=CLAUDE, messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content
        async with openai_client(s) as client:
            assert [m.id for m in (await client.models.list()).data] == [GPT]


async def test_public_rules_list_only_what_needs_no_key():
    def public(fakes):
        cfg = config([target(fakes[0], default_model=GPT, models=[GPT])])
        gateway = cfg["gateways"][0]
        gateway["subdomain"] = "acme"
        gateway["upstreams"].append(
            {"name": "p", "targets": [target(fakes[0], models=["free-model"])]}
        )
        gateway["services"].append({"name": "p", "upstream": "p"})
        gateway["rules"] += [
            {"name": "models", "path": "/v1/models", "service": "p", "public": True},
            {"name": "free", "path": "/v1/chat", "service": "p", "public": True},
        ]
        return cfg

    async with setup([{}], public) as s:
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as anonymous:
            listed = await anonymous.get("/v1/models", headers={"X-Gateway-Id": s.gateway_id})
            assert [m["id"] for m in listed.json()["data"]] == ["free-model"]
        keyed = await s.client.get("/v1/models")
        # With the key: chat goes to "p" (the longer /v1/chat rule), the rest to "s".
        assert [m["id"] for m in keyed.json()["data"]] == ["free-model", GPT]


async def test_ejected_models_are_hidden_when_the_upstream_says_so(autojump_clock):
    def upstream(fakes, hide: bool):
        return config(
            [
                target(fakes[0], default_model="flaky-model", models=["flaky-model"]),
                target(fakes[1], default_model=GPT, models=[GPT]),
            ],
            health={"threshold": 1, "interval": 600, "ejection_time": 300},
            upstream={"hide_ejected_models": hide},
        )

    for hide in (True, False):
        async with setup(
            [{"faults": [Fault.error(503)]}, {}],
            lambda f, hide=hide: upstream(f, hide),
            timeout=1000,
        ) as s:
            assert (await s.chat(model="flaky-model")).status_code == 200  # failed over
            health = await s.health()
            assert health[s.target_ids()[0]]["state"] == "ejected"
            listed = [m["id"] for m in (await s.client.get("/v1/models")).json()["data"]]
            one = await s.client.get("/v1/models/flaky-model")
            if hide:
                assert listed == [GPT] and one.status_code == 404
            else:
                assert listed == ["flaky-model", GPT] and one.status_code == 200
            s.fakes[0].clear_faults()
            await trio.sleep(301)  # the recovery check restores it
            assert (await s.health())[s.target_ids()[0]]["state"] == "healthy"
            listed = [m["id"] for m in (await s.client.get("/v1/models")).json()["data"]]
            assert listed == ["flaky-model", GPT]


# --- POST /v1/embeddings -----------------------------------------------------------------------


def two_embedders(fakes):
    return config(
        [
            target(fakes[0], default_model=EMBED, models=[EMBED], priority=1),
            target(fakes[1], default_model=EMBED, models=[EMBED], priority=2),
        ],
        health=NO_EJECTION,
    )


async def test_embeddings_fail_over_on_a_503():
    async with setup([{"faults": [Fault.error(503)]}, {}], two_embedders) as s:
        primary, backup = s.target_ids()
        async with openai_client(s) as client:
            raw = await client.embeddings.with_raw_response.create(
                model=EMBED, input=["one", "two"], encoding_format="float"
            )
            result = raw.parse()
        assert [len(d.embedding) for d in result.data] == [len(result.data[0].embedding)] * 2
        assert result.usage.prompt_tokens > 0
        assert trail(raw) == [(primary, "503"), (backup, "200")]
        assert raw.headers["x-selected-target"] == backup
        assert raw.headers["x-selected-model"] == EMBED
        assert raw.headers["x-selected-provider"] == "openai"
        sent = s.fakes[1].requests[-1]
        assert sent.path == "/v1/embeddings" and sent.json["input"] == ["one", "two"]


async def test_embeddings_pass_float_and_base64_through_unchanged():
    async with setup([{}, {}], two_embedders) as s:
        direct = httpx2.AsyncClient(
            base_url=s.fakes[0].url, headers={"Authorization": "Bearer sk-fake-0"}
        )
        async with direct:
            for encoding in ("float", "base64"):
                raw = json.dumps(
                    {"model": EMBED, "input": "hello world", "encoding_format": encoding}
                ).encode()
                json_type = {"Content-Type": "application/json"}
                via = await s.client.post("/v1/embeddings", content=raw, headers=json_type)
                assert s.fakes[0].requests[-1].body == raw  # the client's bytes, unchanged
                own = await direct.post("/v1/embeddings", content=raw, headers=json_type)
                assert via.status_code == own.status_code == 200
                assert via.content == own.content  # the provider's answer, unchanged
                vector = via.json()["data"][0]["embedding"]
                if encoding == "base64":
                    packed = base64.b64decode(vector)
                    assert struct.unpack(f"<{len(packed) // 4}f", packed)
                else:
                    assert isinstance(vector[0], float)
        # The SDK's default (base64, decoded by the SDK) works too.
        async with openai_client(s) as client:
            result = await client.embeddings.create(model=EMBED, input="hello world")
            assert isinstance(result.data[0].embedding[0], float)


async def test_embeddings_skip_anthropic_targets_and_route_by_model():
    def mixed(fakes):
        return config(
            [
                target(fakes[1], "anthropic", default_model=CLAUDE, models=[CLAUDE], priority=1),
                target(fakes[0], default_model=GPT, models=[GPT, EMBED], priority=2),
            ],
            health=NO_EJECTION,
        )

    async with setup([{}, {}], mixed) as s:
        claude_id, openai_id = s.target_ids()
        # Without a model, the first tier's default model is Claude's: its target cannot embed.
        response = await s.client.post("/v1/embeddings", json={"input": "x"})
        assert response.status_code == 200, response.text
        assert trail(response) == [(claude_id, "untranslatable"), (openai_id, "200")]
        assert response.headers["x-selected-model"] == GPT
        routed = await s.client.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
        assert trail(routed) == [(openai_id, "200")]
        assert not s.fakes[1].requests  # nothing went to the Anthropic side

    async with setup([{}], one("anthropic", default_model=CLAUDE, models=[CLAUDE])) as s:
        async with openai_client(s) as client:
            with pytest.raises(openai.BadRequestError, match="embeddings") as info:
                await client.embeddings.create(model=CLAUDE, input="x")
        assert info.value.response.headers["x-selected-provider"] == "anthropic"


async def test_embeddings_reach_azure_and_compatible_targets_at_their_paths():
    def paths(fakes):
        return config(
            [
                target(fakes[0], "azure-openai", default_model=EMBED, models=[EMBED], priority=1),
                # A path of its own: the embeddings path is found beside it.
                target(
                    fakes[0],
                    "openai-compatible",
                    path="/v1/chat/completions",
                    default_model=EMBED,
                    priority=2,
                ),
            ],
            health=NO_EJECTION,
        )

    async with setup([{"faults": [Fault.error(503, times=1)]}], paths) as s:
        first = await s.client.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
        assert first.status_code == 200
        assert [(r.path, r.status) for r in s.fakes[0].requests] == [
            (f"/openai/deployments/{EMBED}/embeddings", 503),
            ("/v1/embeddings", 200),
        ]
        assert [p for _, p in trail(first)] == ["503", "200"]


@pytest.mark.parametrize(
    ("path", "body", "checked"),
    [
        ("/v1/embeddings", {"model": EMBED, "input": "x"}, {"model": EMBED, "input": "ping"}),
        (
            "/v1/responses",
            {"model": EMBED, "input": "x", "stream": True},
            {
                "model": EMBED,
                "input": "ping",
                "max_output_tokens": 16,
                "store": False,
                "stream": True,
            },
        ),
    ],
)
async def test_a_recovery_check_is_shaped_like_the_api_that_failed(
    autojump_clock, path, body, checked
):
    """A target whose embeddings (or Responses) fail is checked with an embedding (a
    Responses request, streamed as the failure was), not a chat completion."""
    async with setup(
        [{"faults": [Fault.error(503, path=path, times=1)]}, {}],
        lambda f: config(
            [
                target(f[0], default_model=EMBED, models=[EMBED]),
                target(f[1], default_model=EMBED, models=[EMBED], priority=2),
            ],
            health={"threshold": 1, "interval": 60, "ejection_time": 5},
        ),
        timeout=100,
    ) as s:
        assert (await s.client.post(path, json=body)).status_code == 200
        await trio.sleep(6)
        checks = [r for r in s.fakes[0].requests if is_health_check(r)]
        assert [(r.method, r.path) for r in checks] == [("GET", "/v1/models"), ("POST", path)]
        assert checks[1].json == checked
        assert (await s.health())[s.target_ids()[0]]["state"] == "healthy"


# --- POST /v1/responses ------------------------------------------------------------------------


def native_and_translated(fakes, kind: str):
    """One target serving ``house-model``: OpenAI (native), Anthropic or openai-compatible."""
    return config([target(fakes[0], kind, default_model=HOUSE, models=[HOUSE])], health=NO_EJECTION)


async def _conversation(client: openai.AsyncOpenAI) -> dict[str, Any]:
    """Text, a tool call and its result, whole and streamed: what a client sees."""
    seen: dict[str, Any] = {}
    raw = await client.responses.with_raw_response.create(
        model=HOUSE, instructions="Be brief.", input="Hi there"
    )
    whole = raw.parse()
    seen["provider"] = raw.headers["x-selected-provider"]
    seen["text"] = whole.output_text
    seen["usage"] = (whole.usage.input_tokens, whole.usage.output_tokens)
    seen["status"] = whole.status
    async with client.responses.stream(
        model=HOUSE, instructions="Be brief.", input="Hi there"
    ) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    seen["streamed"] = ("".join(deltas), final.output_text, final.usage.output_tokens)
    call = await client.responses.create(
        model=HOUSE, input="Please call get_weather for Paris", tools=TOOLS
    )
    fc = next(item for item in call.output if item.type == "function_call")
    seen["call"] = (fc.name, json.loads(fc.arguments))
    async with client.responses.stream(
        model=HOUSE, input="Please call get_weather for Paris", tools=TOOLS
    ) as stream:
        final = await stream.get_final_response()
    streamed_fc = next(item for item in final.output if item.type == "function_call")
    seen["streamed_call"] = (streamed_fc.name, json.loads(streamed_fc.arguments))
    result = await client.responses.create(
        model=HOUSE,
        tools=TOOLS,
        input=[
            {"role": "user", "content": "Please call get_weather for Paris"},
            {
                "type": "function_call",
                "call_id": fc.call_id,
                "name": fc.name,
                "arguments": fc.arguments,
            },
            {"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"},
        ],
    )
    seen["after_tool"] = result.output_text
    return seen


async def test_responses_read_the_same_from_a_native_and_a_translated_target():
    seen = {}
    for kind in ("openai", "anthropic", "openai-compatible"):
        async with (
            setup([ANY], lambda f, kind=kind: native_and_translated(f, kind)) as s,
            openai_client(s) as client,
        ):
            seen[kind] = await _conversation(client)
            paths = {r.path for r in s.fakes[0].requests}
        assert (
            paths
            == {
                "openai": {"/v1/responses"},
                "anthropic": {"/v1/messages"},
                "openai-compatible": {"/v1/chat/completions"},
            }[kind]
        )
    native = seen.pop("openai")
    assert native.pop("provider") == "openai"
    assert native["text"] == f"Hello from {HOUSE}! You said: Hi there"
    assert native["streamed"] == (native["text"], native["text"], native["usage"][1])
    assert native["usage"][0] > 0 and native["usage"][1] > 0
    assert native["call"][0] == "get_weather" and native["call"][1]["city"]
    assert native["streamed_call"] == native["call"]
    assert native["after_tool"].endswith("The tool said: sunny")
    for kind, translated in seen.items():
        assert translated.pop("provider") == kind
        assert translated == native, kind


async def test_a_native_responses_request_goes_as_it_came():
    async with setup([ANY], lambda f: native_and_translated(f, "openai")) as s:
        raw = b'{"model":"house-model","input":"Hi","store":true,"metadata":{"a":"b"}}'
        response = await s.client.post(
            "/v1/responses",
            content=raw,
            headers={"Content-Type": "application/json", "OpenAI-Beta": "responses=v1"},
        )
        assert response.status_code == 200
        sent = s.fakes[0].requests[-1]
        assert sent.body == raw and sent.header("openai-beta") == "responses=v1"
        assert response.headers["x-selected-provider"] == "openai"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_response_id", "resp_123"),
        ("store", True),
        ("background", True),
        ("conversation", "conv_1"),
        ("tools", [{"type": "web_search"}]),
    ],
)
async def test_stateful_features_are_a_400_naming_them_on_a_translated_target(field, value):
    async with (
        setup([ANY], lambda f: native_and_translated(f, "anthropic")) as s,
        openai_client(s) as client,
    ):
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model=HOUSE, input="Hi", **{field: value})
        assert field in info.value.message or "web_search" in info.value.message
        assert not s.fakes[0].requests


async def test_a_stateful_request_fails_over_to_a_native_target_only():
    def mixed(fakes):
        return config(
            [
                target(fakes[0], "anthropic", default_model=HOUSE, models=[HOUSE], priority=1),
                target(fakes[1], "openai", default_model=HOUSE, models=[HOUSE], priority=2),
            ],
            health=NO_EJECTION,
        )

    async with setup([ANY, ANY], mixed) as s:
        anthropic_id, openai_id = s.target_ids()
        response = await s.client.post(
            "/v1/responses", json={"model": HOUSE, "input": "Hi", "previous_response_id": "resp_1"}
        )
        assert response.status_code == 200
        assert trail(response) == [(anthropic_id, "untranslatable"), (openai_id, "200")]


def two_responders(fakes, kind: str = "openai"):
    return config(
        [
            target(fakes[0], kind, default_model=HOUSE, models=[HOUSE], priority=1),
            target(fakes[1], kind, default_model=HOUSE, models=[HOUSE], priority=2),
        ],
        health=NO_EJECTION,
    )


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_responses_stream_that_fails_after_created_fails_over(kind):
    # The default error_event comes after two events: response.created and
    # response.in_progress (Anthropic: message_start, then the first block's start).
    async with setup(
        [{**ANY, "faults": [Fault.error_event(500)]}, ANY], lambda f: two_responders(f, kind)
    ) as s:
        primary, backup = s.target_ids()
        async with openai_client(s) as client:
            async with client.responses.stream(model=HOUSE, input="Hi there") as stream:
                events = [e async for e in stream]
                final = await stream.get_final_response()
        assert final.output_text == f"Hello from {HOUSE}! You said: Hi there"
        assert [e.type for e in events].count("response.created") == 1
        assert events[-1].type == "response.completed"
        assert s.fakes[0].requests and s.fakes[1].requests
        raw = await s.client.post(
            "/v1/responses", json={"model": HOUSE, "input": "Hi there", "stream": True}
        )
        assert trail(raw) == [(primary, "stream_error"), (backup, "200")]
        assert raw.headers["x-selected-target"] == backup


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_responses_stream_that_fails_after_content_ends_with_response_failed(kind):
    async with setup(
        [{**ANY, "faults": [Fault.cut_stream(after_chunks=5)]}, ANY],
        lambda f: two_responders(f, kind),
    ) as s:
        async with openai_client(s) as client:
            async with client.responses.stream(model=HOUSE, input="one two three four") as stream:
                events = [e async for e in stream]
                with pytest.raises(RuntimeError, match=r"response\.completed"):
                    await stream.get_final_response()
        types = [e.type for e in events]
        assert "response.output_text.delta" in types
        assert types[-1] == "response.failed"
        failed = events[-1]
        assert failed.response.status == "failed" and failed.response.error.message
        assert failed.response.id == events[0].response.id
        assert failed.sequence_number == events[-2].sequence_number + 1
        assert not s.fakes[1].requests  # committed: no failover


async def test_responses_fail_over_a_whole_answer_on_a_503():
    async with setup([{**ANY, "faults": [Fault.error(503)]}, ANY], two_responders) as s:
        primary, backup = s.target_ids()
        async with openai_client(s) as client:
            raw = await client.responses.with_raw_response.create(model=HOUSE, input="Hi")
        assert raw.parse().output_text == f"Hello from {HOUSE}! You said: Hi"
        assert trail(raw) == [(primary, "503"), (backup, "200")]


async def test_native_responses_is_configurable_per_target():
    def targets(fakes):
        return config(
            [
                target(fakes[0], "openai-compatible", default_model=HOUSE, native_responses=True),
                target(fakes[0], "openai", default_model=HOUSE, native_responses=False, priority=2),
                target(
                    fakes[0], "azure-openai", default_model=HOUSE, native_responses=True, priority=3
                ),
            ],
            health=NO_EJECTION,
        )

    async with setup([{**ANY, "faults": [Fault.error(503, times=1)]}], targets) as s:
        response = await s.client.post("/v1/responses", json={"model": HOUSE, "input": "Hi"})
        assert response.status_code == 200
        paths = [r.path for r in s.fakes[0].requests]
        assert paths == ["/v1/responses", "/v1/chat/completions"]
        s.fakes[0].set_faults(Fault.error(503, times=2))
        response = await s.client.post("/v1/responses", json={"model": HOUSE, "input": "Hi"})
        assert [r.path for r in s.fakes[0].requests][2:] == [
            "/v1/responses",
            "/v1/chat/completions",
            "/openai/v1/responses",
        ]
        assert response.status_code == 200


# --- POST /v1/messages/count_tokens -------------------------------------------------------------


async def test_count_tokens_passes_through_to_anthropic_and_is_estimated_elsewhere():
    messages = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog."}]
    async with setup([{}], one("anthropic", default_model=CLAUDE, models=[CLAUDE])) as s:
        async with anthropic_client(s) as client:
            raw = await client.messages.with_raw_response.count_tokens(
                model=CLAUDE, messages=messages
            )
            counted = await raw.parse()
        assert counted.input_tokens > 0 and "estimated" not in (counted.model_extra or {})
        assert raw.headers.get("x-gateway-token-count") is None
        assert raw.headers["x-selected-provider"] == "anthropic"
        assert s.fakes[0].requests[-1].path == "/v1/messages/count_tokens"

    async with setup([{}], one("openai", default_model=GPT, models=[GPT])) as s:
        async with anthropic_client(s) as client:
            raw = await client.messages.with_raw_response.count_tokens(model=GPT, messages=messages)
            counted = await raw.parse()
            assert counted.input_tokens == 3 + 4 + 11
            assert counted.model_extra["estimated"] is True
            assert raw.headers["x-gateway-token-count"] == "estimate"
            assert raw.headers["x-selected-provider"] == "openai"
            assert trail(raw) == [(s.target_ids()[0], "estimate")]
            with pytest.raises(anthropic.BadRequestError, match="messages"):
                await client.messages.count_tokens(model=GPT, messages=[])
        assert not s.fakes[0].requests  # nothing to ask an OpenAI target


async def test_count_tokens_fails_over_and_then_estimates():
    def mixed(fakes):
        return config(
            [
                target(fakes[0], "anthropic", default_model=CLAUDE, priority=1),
                target(fakes[1], "openai", default_model=GPT, priority=2),
            ],
            health=NO_EJECTION,
        )

    async with setup([{"faults": [Fault.error(503)]}, {}], mixed) as s:
        response = await s.client.post(
            "/v1/messages/count_tokens",
            json={"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]},
            headers={"anthropic-version": "2023-06-01"},
        )
        assert response.status_code == 200
        assert response.json()["estimated"] is True
        assert [outcome for _, outcome in trail(response)] == ["503", "estimate"]


# --- every new endpoint: the proxy's own rules --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/v1/responses", "openai"),
        ("/v1/embeddings", "openai"),
        ("/v1/messages/count_tokens", "anthropic"),
    ],
)
async def test_new_endpoints_check_method_key_and_body_in_their_dialect(path, dialect):
    async with setup([{}], one(default_model=GPT)) as s:
        wrong = await s.client.get(path)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as anonymous:
            keyless = await anonymous.post(path, json={"model": GPT})
        assert keyless.status_code == 401
        broken = await s.client.post(
            path, content=b"{", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 400
        for response in (wrong, keyless, broken):
            body = response.json()
            if dialect == "anthropic":
                assert body["type"] == "error" and body["error"]["message"]
            else:
                assert body["error"]["message"] and "type" in body["error"]
        model = await s.client.post("/v1/models/x")
        assert model.status_code == 405 and model.headers["allow"] == "GET"


async def test_a_responses_stream_ended_by_shutdown_gets_an_error_event():
    async with setup(
        [{**ANY, "faults": [Fault.stall_stream(60, after_chunks=6)]}],
        lambda f: native_and_translated(f, "openai"),
    ) as s:
        async with s.client.stream(
            "POST", "/v1/responses", json={"model": HOUSE, "input": "a b c d e", "stream": True}
        ) as response:
            received = b""
            async for chunk in response.aiter_bytes():
                received += chunk
                if b"output_text.delta" in received:
                    s.gateway.runtime.end_streams.set()
        events = sse_events(received.decode())
        assert events[-1][0] == "error"
        last = json.loads(events[-1][1])
        assert last["error"]["message"].startswith("the gateway is shutting down")
        assert last["sequence_number"] == json.loads(events[-2][1])["sequence_number"] + 1
