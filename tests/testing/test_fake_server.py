"""The fake provider over real sockets: what it checks, records and answers, and its control API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest
import trio

from trio_gateway.testing.fake import FakeProvider, Fault, Outcome
from trio_gateway.testing.plugin import FakeProviderFactory

from .helpers import ANTHROPIC, CLAUDE, GPT, KEY, OPENAI, TIMEOUT, chat, messages


@pytest.fixture
async def fake(fake_provider: FakeProviderFactory) -> FakeProvider:
    return await fake_provider(api_key=KEY)


@pytest.fixture
async def client(fake: FakeProvider) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=fake.url, timeout=5) as client:
        yield client


# --- what it checks ----------------------------------------------------------------------


async def test_openai_side_requires_the_configured_key(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        missing = await client.post("/v1/chat/completions", json=chat())
        wrong = await client.post(
            "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer sk-other-key"}
        )
        x_api_key = await client.post("/v1/chat/completions", json=chat(), headers=ANTHROPIC)
        bearer = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        azure = await client.post("/v1/chat/completions", json=chat(), headers={"api-key": KEY})
    assert missing.status_code == wrong.status_code == x_api_key.status_code == 401
    assert missing.json()["error"]["message"].startswith("You didn't provide an API key")
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in wrong.text and "sk-other-key" not in wrong.text
    assert bearer.status_code == azure.status_code == 200


async def test_anthropic_side_requires_key_and_version(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        no_key = await client.post(
            "/v1/messages", json=messages(), headers={"anthropic-version": "2023-06-01"}
        )
        no_version = await client.post("/v1/messages", json=messages(), headers={"x-api-key": KEY})
        wrong = await client.post(
            "/v1/messages", json=messages(), headers={**ANTHROPIC, "x-api-key": "x"}
        )
        good = await client.post("/v1/messages", json=messages(), headers=ANTHROPIC)
    assert no_key.status_code == wrong.status_code == 401
    assert no_key.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
    }
    assert no_version.status_code == 400
    assert no_version.json()["error"]["message"] == "anthropic-version: header is required"
    assert good.status_code == 200


async def test_any_credential_when_none_is_configured(fake_provider: FakeProviderFactory) -> None:
    fake = await fake_provider()
    with trio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(base_url=fake.url) as client:
            anything = await client.post(
                "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer whatever"}
            )
            nothing = await client.post("/v1/chat/completions", json=chat())
    assert (anything.status_code, nothing.status_code) == (200, 401)


async def test_models_it_does_not_serve(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        unknown = await client.post(
            "/v1/chat/completions", json=chat(model="gpt-9"), headers=OPENAI
        )
        claude_on_openai = await client.post(
            "/v1/chat/completions", json=chat(model=CLAUDE), headers=OPENAI
        )
        gpt_on_anthropic = await client.post(
            "/v1/messages", json=messages(model=GPT), headers=ANTHROPIC
        )
    assert unknown.status_code == claude_on_openai.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert f"`{CLAUDE}`" in claude_on_openai.json()["error"]["message"]
    assert gpt_on_anthropic.status_code == 404
    assert gpt_on_anthropic.json()["error"] == {
        "type": "not_found_error",
        "message": f"model: {GPT}",
    }


async def test_bad_bodies(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        openai_json = await client.post(
            "/v1/chat/completions", content=b'{"model": ', headers=OPENAI
        )
        anthropic_json = await client.post("/v1/messages", content=b"{", headers=ANTHROPIC)
        no_max_tokens = await client.post(
            "/v1/messages",
            json={"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]},
            headers=ANTHROPIC,
        )
    assert openai_json.status_code == 400
    assert "could not parse the JSON body" in openai_json.json()["error"]["message"]
    assert anthropic_json.status_code == 400
    assert anthropic_json.json()["error"]["type"] == "invalid_request_error"
    assert no_max_tokens.status_code == 400
    assert no_max_tokens.json()["error"]["message"] == "max_tokens: Field required"


async def test_unknown_paths_get_the_dialects_404(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        openai_style = await client.post("/v1/completionz", json={}, headers=OPENAI)
        anthropic_style = await client.get("/v2/nothing", headers=ANTHROPIC)
    assert openai_style.status_code == anthropic_style.status_code == 404
    assert openai_style.json()["error"]["message"] == "Invalid URL (POST /v1/completionz)"
    assert anthropic_style.json()["type"] == "error"


# --- what it answers ---------------------------------------------------------------------


async def test_deterministic_answers_with_consistent_usage(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        first = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        again = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        claude = await client.post("/v1/messages", json=messages(), headers=ANTHROPIC)
    message = first.json()["choices"][0]["message"]
    assert message["content"] == "Hello from gpt-4o-mini! You said: one two three"
    assert again.json()["choices"] == first.json()["choices"]
    assert first.json()["usage"]["prompt_tokens"] == 3
    assert first.json()["usage"]["completion_tokens"] == 8
    assert claude.json()["content"] == [
        {"type": "text", "text": f"Hello from {CLAUDE}! You said: one two three"}
    ]
    assert claude.json()["usage"]["output_tokens"] == 8
    assert first.headers["x-fake-provider"] == "fake-1"
    assert first.headers["x-request-id"] != again.headers["x-request-id"]
    assert claude.headers["request-id"].startswith("req_")


async def test_model_lists_in_each_dialect(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    with trio.fail_after(TIMEOUT):
        openai_list = await client.get("/v1/models", headers=OPENAI)
        anthropic_list = await client.get("/v1/models", headers=ANTHROPIC)
        one = await client.get(f"/v1/models/{GPT}", headers=OPENAI)
        missing = await client.get("/v1/models/gpt-9", headers=OPENAI)
    openai_ids = [m["id"] for m in openai_list.json()["data"]]
    anthropic_ids = [m["id"] for m in anthropic_list.json()["data"]]
    assert GPT in openai_ids and CLAUDE not in openai_ids
    assert CLAUDE in anthropic_ids and GPT not in anthropic_ids
    assert anthropic_list.json()["has_more"] is False
    assert one.json()["id"] == GPT and missing.status_code == 404


async def test_custom_and_any_models(fake_provider: FakeProviderFactory) -> None:
    custom = await fake_provider(models=["local-llama"])
    anything = await fake_provider(models=[])
    with trio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient() as client:
            served = await client.post(
                custom.url + "/v1/chat/completions", json=chat(model="local-llama"), headers=OPENAI
            )
            not_served = await client.post(
                custom.url + "/v1/chat/completions", json=chat(), headers=OPENAI
            )
            any_model = await client.post(
                anything.url + "/v1/messages", json=messages(model="claude-next"), headers=ANTHROPIC
            )
    assert (served.status_code, not_served.status_code, any_model.status_code) == (200, 404, 200)


async def test_azure_deployment_paths(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        response = await client.post(
            "/openai/deployments/gpt-4/chat/completions?api-version=2024-10-21",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"api-key": KEY},
        )
    assert response.status_code == 200
    assert response.json()["model"] == "gpt-4"


async def test_count_tokens(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        response = await client.post(
            "/v1/messages/count_tokens",
            json={
                "model": CLAUDE,
                "system": "be brief",
                "messages": [{"role": "user", "content": "a b c"}],
            },
            headers=ANTHROPIC,
        )
    assert response.json() == {"input_tokens": 5}


# --- what it records -----------------------------------------------------------------------


async def test_every_request_is_recorded(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    with trio.fail_after(TIMEOUT):
        await client.post(
            "/v1/chat/completions?x=1",
            json=chat(),
            headers={**OPENAI, "x-api-key": "tgk_client_key", "x-custom": "a"},
        )
        await client.post("/v1/messages", content=b"not json", headers=ANTHROPIC)
        first = await fake.wait_requests(1)
        second = await fake.wait_requests(2)
    assert [r.index for r in fake.requests] == [1, 2]
    assert (first.method, first.path, first.query) == ("POST", "/v1/chat/completions", "x=1")
    assert first.header("Authorization") == f"Bearer {KEY}"
    assert first.header("x-api-key") == "tgk_client_key"  # a test can see what was forwarded
    assert ("x-custom", "a") in first.headers
    assert first.json == chat() and first.body.startswith(b"{")
    assert (first.status, first.outcome, first.faults) == (200, Outcome.COMPLETED, ())
    assert first.connection[0] == "127.0.0.1"
    assert (second.json, second.body, second.status) == (None, b"not json", 400)
    assert first.time <= second.time <= trio.current_time()


async def test_control_api_shows_requests(client: httpx2.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for said in ("a", "b", "c"):
            await client.post("/v1/chat/completions", json=chat(said), headers=OPENAI)
        everything = (await client.get("/_fake/requests")).json()
        since = (await client.get("/_fake/requests?since=2")).json()
        bad = await client.get("/_fake/requests?since=x")
        cleared = await client.delete("/_fake/requests")
        after = (await client.get("/_fake/requests")).json()
    assert everything["total"] == 3 and len(everything["requests"]) == 3
    [third] = since["requests"]
    assert third["index"] == 3 and third["json"]["messages"][0]["content"] == "c"
    assert third["headers"]["authorization"] == f"Bearer {KEY}"
    assert (third["method"], third["path"], third["status"], third["outcome"]) == (
        "POST",
        "/v1/chat/completions",
        200,
        "completed",
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == "since"
    assert cleared.status_code == 200 and after == {"requests": [], "total": 0}


async def test_the_log_keeps_the_latest_requests(fake_provider: FakeProviderFactory) -> None:
    fake = await fake_provider(keep_requests=2)
    with trio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(base_url=fake.url) as client:
            for said in ("a", "b", "c"):
                await client.post("/v1/chat/completions", json=chat(said), headers=OPENAI)
        assert (await fake.wait_requests(3)).index == 3
    assert [r.index for r in fake.requests] == [2, 3]
    assert fake.statistics().requests == 3


# --- the control API ---------------------------------------------------------------------------


async def test_control_api_changes_faults(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    with trio.fail_after(TIMEOUT):
        put = await client.put(
            "/_fake/faults", json=[{"kind": "error", "status": 503, "times": 1}, "close"]
        )
        assert fake.faults == (Fault.error(503, times=1), Fault.close())
        posted = await client.post("/_fake/faults", json={"kind": "latency", "seconds": 0.01})
        got = await client.get("/_fake/faults")
        wrapped = await client.put("/_fake/faults", json={"faults": [{"kind": "hang"}]})
        assert fake.faults == (Fault.hang(),)
        deleted = await client.delete("/_fake/faults")
    assert put.status_code == 200
    assert put.json() == {
        "faults": [{"kind": "error", "times": 1, "status": 503}, {"kind": "close"}]
    }
    assert posted.status_code == 201 and len(posted.json()["faults"]) == 3
    assert got.json() == posted.json()
    assert wrapped.json() == {"faults": [{"kind": "hang"}]}
    assert deleted.json() == {"faults": []} and fake.faults == ()


async def test_control_api_rejects_bad_faults_by_path(
    client: httpx2.AsyncClient, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.hang())
    with trio.fail_after(TIMEOUT):
        bad_list = await client.put(
            "/_fake/faults", json=[{"kind": "hang"}, {"kind": "error", "status": 99}]
        )
        bad_one = await client.post("/_fake/faults", json={"kind": "latency"})
        not_json = await client.put("/_fake/faults", content=b"{")
        not_a_list = await client.put("/_fake/faults", json={"kind": "hang"})
    assert bad_list.status_code == 422
    assert bad_list.json()["error"]["details"] == [
        {"loc": "faults[1].status", "msg": "must be between 200 and 599"}
    ]
    assert bad_one.json()["error"]["details"] == [
        {"loc": "$", "msg": "kind 'latency' needs 'seconds'"}
    ]
    assert not_json.status_code == 422 and not_a_list.status_code == 422
    assert fake.faults == (Fault.hang(),)  # unchanged


async def test_reset_restores_the_start(fake_provider: FakeProviderFactory) -> None:
    fake = await fake_provider(faults=[Fault.error(503, times=1)])
    with trio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(base_url=fake.url) as client:
            first = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
            second = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
            fake.add_fault(Fault.close())
            stats = (await client.post("/_fake/reset")).json()
            third = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
    assert [first.status_code, second.status_code, third.status_code] == [503, 200, 503]
    assert stats["requests"] == 0
    assert stats["faults"] == [
        {"fault": {"kind": "error", "times": 1, "status": 503}, "matched": 0, "fired": 0}
    ]
    assert [r.index for r in fake.requests] == [1]


async def test_statistics(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    fake.set_faults(Fault.close(times=1))
    with trio.fail_after(TIMEOUT):
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        stats = (await client.get("/_fake/stats")).json()
    snapshot = fake.statistics()
    assert (snapshot.requests, snapshot.completed, snapshot.aborted) == (2, 1, 1)
    assert snapshot.connections_total == 2 and snapshot.url == fake.url
    assert stats["aborted"] == 1 and stats["faults"][0]["fired"] == 1
