"""The proxy under hostile input: precise 4xx in the client's dialect, never a 5xx or a traceback.

Issue 9, items 5 (hostile JSON, re-encoded bodies included), 9 (what is forwarded
and answered) and 10 (``strip_path``), over real sockets to the fake providers.
"""

from __future__ import annotations

import json

import httpx2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import KEY, config, setup, target
from tests.web.hostile import deep, no_tracebacks, proxy_error  # noqa: F401 (autouse)
from trio_gateway.providers.formats import ApiFormat

OPENAI, ANTHROPIC = ApiFormat.OPENAI, ApiFormat.ANTHROPIC
CLAUDE = "claude-3-5-sonnet-20241022"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
JSON = {"Content-Type": "application/json"}


def both(fakes, **upstream):
    cfg = config(
        [
            target(fakes[0], default_model="gpt-4o-mini", models=["gpt-4o-mini"]),
            target(fakes[1], "anthropic", default_model=CLAUDE, models=[CLAUDE]),
        ],
        upstream=upstream or None,
    )
    cfg["gateways"][0]["rules"].append(
        {"name": "stripped", "path": "/openai", "service": "s", "strip_path": True}
    )
    cfg["gateways"][0]["rules"].append({"name": "kept", "path": "/kept", "service": "s"})
    return cfg


def with_fallback_to_openai(fakes):
    return config([target(fakes[0], default_model="gpt-4o-mini", models=["gpt-4o-mini"])])


def chat(content: str = "Hello", model: str = "gpt-4o-mini", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def messages(content: str = "Hello", model: str = CLAUDE, **extra) -> dict:
    return {
        "model": model,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def raw_json(body: dict) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as its escape


# --- hostile JSON (item 5) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        (deep(5000), "nested more than 1024 levels deep"),
        (b'{"model": "gpt-4o-mini", "max_tokens": ' + b"9" * 5000 + b"}", "integer of 5000 digits"),
        (b'{"model": "gpt-4o-mini", "temperature": NaN}', "NaN is not a JSON value"),
        (b'{"model": "gpt-4o-mini", "temperature": 1e999}', "number 1e999 is out of range"),
        ('{"model": "gpt-4o-mini"}'.encode("utf-16"), "not UTF-8 text"),
        ('{"model": "gpt-4o-mini"}'.encode("utf-32"), "not UTF-8 text"),
        (b"", "the request body is empty"),
        (b"[1, 2]", "must be a JSON object"),
    ],
    ids=["deep", "huge-int", "nan", "overflow", "utf-16", "utf-32", "empty", "array"],
)
async def test_json_the_proxy_cannot_take_is_a_400_in_the_clients_dialect(raw, msg):
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        for path, fmt in ((CHAT, OPENAI), (MESSAGES, ANTHROPIC)):
            response = await s.client.post(path, content=raw, headers=JSON)
            assert msg in proxy_error(response, fmt, 400)
        assert all(not f.requests for f in s.fakes)


async def test_a_lone_surrogate_passes_through_and_survives_every_re_encoding():
    text = "cut emoji \ud83d and \udc00"
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        openai_fake, anthropic_fake = s.fakes
        # Forwarded as it came: the exact bytes.
        raw = raw_json(chat(text))
        same = await s.client.post(CHAT, content=raw, headers=JSON)
        assert same.status_code == 200, same.text
        assert openai_fake.requests[-1].body == raw
        # Translated (OpenAI client, Anthropic target): re-encoded, the escapes kept.
        translated = await s.client.post(CHAT, content=raw_json(chat(text, CLAUDE)), headers=JSON)
        assert translated.status_code == 200, translated.text
        sent = anthropic_fake.requests[-1]
        assert b"\\ud83d" in sent.body and b"\\udc00" in sent.body
        assert sent.json["messages"][0]["content"][0]["text"] == text
        # The other way round.
        back = await s.client.post(
            MESSAGES, content=raw_json(messages(text, "gpt-4o-mini")), headers=JSON
        )
        assert back.status_code == 200, back.text
        assert openai_fake.requests[-1].json["messages"][-1]["content"] == text
        # What the fake recorded is readable through its control API.
        async with httpx2.AsyncClient() as client:
            recorded = await client.get(openai_fake.url + "/_fake/requests")
        assert recorded.status_code == 200
        assert recorded.json()["requests"][0]["json"]["messages"][0]["content"] == text


async def test_a_lone_surrogate_survives_a_model_fallback():
    async with setup([{}], with_fallback_to_openai) as s:
        response = await s.client.post(
            CHAT, content=raw_json(chat("\ud800", "no-such-model")), headers=JSON
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-gateway-model-fallback"] == "no-such-model -> gpt-4o-mini"
        sent = s.fakes[0].requests[-1]
        assert b'"\\ud800"' in sent.body and sent.json["model"] == "gpt-4o-mini"


async def test_deep_bodies_are_forwarded_or_re_encoded_never_a_500():
    nested = json.loads("[" * 300 + "]" * 300)  # beyond what orjson writes (255)
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        raw = json.dumps(chat(metadata={"deep": nested})).encode()
        passed = await s.client.post(CHAT, content=raw, headers=JSON)
        assert passed.status_code == 200 and s.fakes[0].requests[-1].body == raw
        translated = await s.client.post(
            CHAT, json=chat(model=CLAUDE, tools=[tool({"deep": nested})]), headers=JSON
        )
        assert translated.status_code == 200, translated.text
    # 1000 levels: more than Python's own JSON encoder writes; re-encoded all the same.
    very = ("[" * 1000 + "]" * 1000).encode()
    async with setup([{}], with_fallback_to_openai) as s:
        body = raw_json(chat(model="fallback-please")).replace(
            b'"messages"', b'"metadata": {"deep": ' + very + b'}, "messages"'
        )
        fallback = await s.client.post(CHAT, content=body, headers=JSON)
        assert fallback.status_code == 200, fallback.text
        assert fallback.headers["x-gateway-model-fallback"] == "fallback-please -> gpt-4o-mini"
        assert b'"deep":' + very in s.fakes[0].requests[-1].body


def tool(parameters: dict) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


# --- what the proxy answers (item 9) ---------------------------------------------------------


@pytest.mark.parametrize("stream", ["yes", 1, 0, "true", [], {}])
async def test_a_non_boolean_stream_is_a_400(stream):
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        for path, body, fmt in (
            (CHAT, chat(stream=stream), OPENAI),
            (CHAT, chat(model=CLAUDE, stream=stream), OPENAI),  # translated: was non-streaming
            (MESSAGES, messages(stream=stream), ANTHROPIC),
        ):
            response = await s.client.post(path, json=body)
            assert "'stream' must be true or false" in proxy_error(response, fmt, 400)
        null = await s.client.post(CHAT, json=chat(stream=None))
        assert null.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "allow", "fmt"),
    [
        ("GET", CHAT, "POST", OPENAI),
        ("PUT", CHAT, "POST", OPENAI),
        ("DELETE", MESSAGES, "POST", ANTHROPIC),
        ("GET", MESSAGES, "POST", ANTHROPIC),
        ("PATCH", "/openai/v1/chat/completions", "POST", OPENAI),
        ("POST", "/v1/models", "GET", OPENAI),
        ("OPTIONS", CHAT, "POST", OPENAI),
    ],
)
async def test_a_wrong_method_on_an_api_path_is_a_405_with_allow(method, path, allow, fmt):
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as anonymous:
            for client in (s.client, anonymous):  # with a key or without: same answer
                response = await client.request(method, path)
                proxy_error(response, fmt, 405, "method_not_allowed")
                assert response.headers["allow"] == allow


async def test_models_go_through_the_rules():
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        listed = await s.client.get("/v1/models")
        assert [m["id"] for m in listed.json()["data"]] == [CLAUDE, "gpt-4o-mini"]
        stripped = await s.client.get("/openai/v1/models")
        assert stripped.status_code == 200 and stripped.json() == listed.json()
        for path in ("/anything/models", "/kept/v1/models", "/v2/models", "/models"):
            response = await s.client.get(path)
            proxy_error(response, OPENAI, 404)


async def test_a_compressed_body_is_a_415():
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        response = await s.client.post(
            CHAT, content=raw_json(chat()), headers={**JSON, "Content-Encoding": "gzip"}
        )
        assert "Content-Encoding: gzip" in proxy_error(response, OPENAI, 415)
        assert not s.fakes[0].requests


async def test_only_the_documented_client_headers_are_forwarded():
    noise = {f"X-H{i}": "x" for i in range(60)}  # below the 100-field limit (docs/http.md)
    sent_headers = {
        **noise,
        "OpenAI-Organization": "org-1",
        "OpenAI-Project": "proj-1",
        "Anthropic-Beta": "tools-2024",
        "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "User-Agent": "hostile/1.0",
        "Cookie": "session=1",
        "X-Forwarded-For": "10.0.0.1",
        "Accept-Encoding": "br",
        "Idempotency-Key": "k",
    }
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        openai_fake, anthropic_fake = s.fakes
        assert (await s.client.post(CHAT, json=chat(), headers=sent_headers)).status_code == 200
        got = dict(openai_fake.requests[-1].headers)
        assert got["openai-organization"] == "org-1" and got["openai-project"] == "proj-1"
        assert got["traceparent"] == sent_headers["Traceparent"]
        for name in ("anthropic-beta", "cookie", "x-forwarded-for", "idempotency-key", "x-h0"):
            assert name not in got
        assert got["user-agent"] != "hostile/1.0"
        assert got["authorization"] == "Bearer sk-fake-0"  # the target's, never the client's key

        # OpenAI client, Anthropic target: the client's dialect headers stay behind.
        translated = await s.client.post(CHAT, json=chat(model=CLAUDE), headers=sent_headers)
        assert translated.status_code == 200
        got = dict(anthropic_fake.requests[-1].headers)
        assert "openai-organization" not in got and "anthropic-beta" not in got
        assert got["anthropic-version"] == "2023-06-01"  # the provider's default

        # Anthropic client, Anthropic target: its own dialect's headers go through.
        native = await s.client.post(
            MESSAGES,
            json=messages(),
            headers={**sent_headers, "anthropic-version": "2023-06-01"},
        )
        assert native.status_code == 200
        got = dict(anthropic_fake.requests[-1].headers)
        assert got["anthropic-beta"] == "tools-2024" and "openai-organization" not in got


# --- strip_path (item 10) ------------------------------------------------------------------


async def test_strip_path_removes_the_rules_prefix_before_the_endpoint_is_recognised():
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        stripped = await s.client.post("/openai/v1/chat/completions", json=chat())
        assert stripped.status_code == 200, stripped.text
        assert s.fakes[0].requests[-1].path == "/v1/chat/completions"
        native = await s.client.post("/openai/v1/messages", json=messages())
        assert native.status_code == 200 and native.json()["type"] == "message"
        kept = await s.client.post("/kept/v1/chat/completions", json=chat())
        message = proxy_error(kept, OPENAI, 404)
        assert "/kept/v1/chat/completions is not an API endpoint" in message
        wrong = await s.client.post("/openai/v2/chat/completions", json=chat())
        assert "once rule 'stripped' strips its path" in proxy_error(wrong, OPENAI, 404)


# --- Hypothesis: anything at all -------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)
CHAT_FIELDS = ["model", "messages", "stream", "max_tokens", "temperature", "tools", "n", "stop"]


@st.composite
def requests(draw):
    path = draw(
        st.sampled_from([CHAT, MESSAGES, "/openai/v1/chat/completions", "/openai/v1/messages"])
    )
    base = (
        chat(model=draw(st.sampled_from(["gpt-4o-mini", CLAUDE, "other"])))
        if path.endswith("completions")
        else messages(model=draw(st.sampled_from(["gpt-4o-mini", CLAUDE])))
    )
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            base[draw(st.sampled_from(CHAT_FIELDS))] = draw(JSON_VALUES)
        return path, json.dumps(base).encode()
    return path, json.dumps(draw(JSON_VALUES)).encode()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(requests(), min_size=20, max_size=20))
async def test_hypothesis_proxy_requests_never_fail_the_gateway(batch):
    with trio.fail_after(60):
        async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
            for path, raw in batch:
                response = await s.client.post(path, content=raw, headers=JSON)
                assert response.status_code < 500, (path, raw, response.text)
                if response.status_code >= 400:
                    fmt = ANTHROPIC if path.endswith("messages") else OPENAI
                    proxy_error(response, fmt, response.status_code)
                else:
                    response.read()


async def test_the_gateway_key_is_needed_before_anything_else_is_told():
    async with setup([{}, {"api_key": "sk-fake-1"}], both) as s:
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as anonymous:
            response = await anonymous.post(CHAT, content=deep(5000), headers=JSON)
        proxy_error(response, OPENAI, 401)
        assert KEY not in response.text
