"""What an operator sees: /metrics, the access log, traces, health reasons (issue 11).

Real sockets end to end: the gateway and the shipped fakes on 127.0.0.1, the metrics
scraped through ``GET /metrics`` and parsed with ``prometheus_client.parser``.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx2
import pytest
import trio
import trio.lowlevel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import KEY, config, setup, sse_events, target, trail
from trio_gateway import logs
from trio_gateway.telemetry import Tracing
from trio_gateway.testing.fake import Fault
from trio_gateway.testing.harness import is_health_check

MODEL = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-20241022"


def tiers(fakes, **kw):
    """A primary (priority 1) and a fallback (priority 2), both OpenAI."""
    return config(
        [
            target(fakes[0], priority=1, default_model=MODEL),
            target(fakes[1], priority=2, default_model=MODEL),
        ],
        **kw,
    )


async def scrape(s) -> list[Any]:
    async with httpx2.AsyncClient(base_url=s.gateway.admin_url) as admin:
        response = await admin.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def value(samples: list[Any], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def series(samples: list[Any], name: str) -> list[dict[str, str]]:
    return [s.labels for s in samples if s.name == name]


# --- metrics ---------------------------------------------------------------------------------


async def test_a_failover_moves_requests_attempts_durations_and_first_byte():
    async with setup([{"faults": [Fault.error(503)]}, {}], tiers) as s:
        primary, fallback = s.target_ids()
        before = await scrape(s)
        assert value(before, "trio_gateway_attempts_total", target=primary, outcome="503") == 0
        response = await s.chat()
        assert trail(response) == [(primary, "503"), (fallback, "200")]
        after = await scrape(s)
        common = {"gateway": "e2e", "upstream": "u"}
        assert (
            value(
                after,
                "trio_gateway_attempts_total",
                **common,
                target=primary,
                provider="openai",
                outcome="503",
            )
            == 1
        )
        assert value(after, "trio_gateway_attempts_total", target=fallback, outcome="200") == 1
        assert (
            value(
                after,
                "trio_gateway_requests_total",
                **common,
                client_format="openai",
                stream="false",
                status="200",
            )
            == 1
        )
        assert (
            value(after, "trio_gateway_request_duration_seconds_count", **common, stream="false")
            == 1
        )
        assert value(after, "trio_gateway_time_to_first_byte_seconds_count", target=fallback) == 1
        assert value(after, "trio_gateway_time_to_first_byte_seconds_count", target=primary) == 0

        # A failed request counts with the status the client got.
        s.fakes[1].set_faults([Fault.error(500)])
        failed = await s.chat()
        assert failed.status_code == 500
        again = await scrape(s)
        assert value(again, "trio_gateway_requests_total", status="500", upstream="u") == 1
        assert value(again, "trio_gateway_attempts_total", target=fallback, outcome="500") == 1


async def test_an_ejection_moves_target_state_and_ejections():
    health = {"passive": True, "threshold": 3, "interval": 60}
    async with setup([{"faults": [Fault.error(503)]}, {}], lambda f: tiers(f, health=health)) as s:
        primary, _ = s.target_ids()
        before = await scrape(s)
        assert value(before, "trio_gateway_target_state", target=primary, state="healthy") == 1
        assert value(before, "trio_gateway_target_state", target=primary, state="ejected") == 0
        for _ in range(3):
            assert (await s.chat()).status_code == 200
        after = await scrape(s)
        assert value(after, "trio_gateway_target_state", target=primary, state="ejected") == 1
        assert value(after, "trio_gateway_target_state", target=primary, state="healthy") == 0
        assert (
            value(
                after,
                "trio_gateway_ejections_total",
                gateway="e2e",
                upstream="u",
                target=primary,
                reason="consecutive_failures",
            )
            == 1
        )
        assert (
            value(after, "trio_gateway_target_transitions_total", target=primary, to="ejected") == 1
        )
        # The health endpoint says why, as data too.
        why = (await s.health())[primary]
        assert why["cause"] == "consecutive_failures"
        assert why["ejected_by"] == ["503", "503", "503"]
        assert why["until"] is not None and "3 failures in a row" in why["reason"]


async def test_a_parked_target_says_its_retry_after():
    async with setup([{"faults": [Fault.rate_limit(retry_after=30)]}, {}], tiers) as s:
        primary, _ = s.target_ids()
        assert (await s.chat()).status_code == 200
        why = (await s.health())[primary]
        assert why["state"] == "parked" and why["cause"] == "rate_limited"
        assert why["retry_after_s"] == 30
        samples = await scrape(s)
        assert value(samples, "trio_gateway_target_state", target=primary, state="parked") == 1
        assert value(samples, "trio_gateway_ejections_total", target=primary) == 0


async def test_in_flight_counts_a_request_while_it_runs(autojump_clock):
    async with setup([{"faults": [Fault.latency(1.0)]}], lambda f: config([target(f[0])])) as s:
        (only,) = s.target_ids()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.chat)
            await trio.sleep(0.3)
            during = await scrape(s)
        after = await scrape(s)
        assert value(during, "trio_gateway_target_in_flight", target=only) == 1
        assert value(after, "trio_gateway_target_in_flight", target=only) == 0


async def test_early_errors_count_with_none_for_what_is_not_known():
    async with setup([{}], lambda f: config([target(f[0])])) as s:
        no_key = await s.client.post("/v1/chat/completions", json={}, headers={"X-Api-Key": ""})
        assert no_key.status_code == 401
        no_route = await s.client.post("/v2/other", json={})
        assert no_route.status_code == 404
        too_big = await s.client.post(
            "/v1/chat/completions", content=b"x" * (33 << 20), headers={"X-Api-Key": KEY}
        )
        assert too_big.status_code == 413
        samples = await scrape(s)
        assert (
            value(
                samples,
                "trio_gateway_requests_total",
                gateway="none",
                upstream="none",
                status="401",
                stream="none",
                client_format="openai",
            )
            == 1
        )
        # With a key the gateway is known, the upstream is not (no route).
        assert (
            value(
                samples, "trio_gateway_requests_total", gateway="e2e", upstream="none", status="404"
            )
            == 1
        )
        assert value(samples, "trio_gateway_requests_total", gateway="e2e", status="413") == 1
        for labels in series(samples, "trio_gateway_requests_total"):
            assert set(labels) == {"gateway", "upstream", "client_format", "stream", "status"}
            assert all(labels.values())  # never missing, never empty


async def test_metrics_need_the_admin_token_when_one_is_set():
    async with setup([{}], lambda f: config([target(f[0])]), admin_token="t0ken") as s:
        async with httpx2.AsyncClient(base_url=s.gateway.admin_url) as admin:
            assert (await admin.get("/metrics")).status_code == 401
            ok = await admin.get("/metrics", headers={"Authorization": "Bearer t0ken"})
            assert ok.status_code == 200 and "trio_gateway_build_info" in ok.text


async def test_metrics_off_answers_404_and_counts_nothing():
    async with setup([{}], lambda f: config([target(f[0])]), metrics=False) as s:
        assert (await s.chat()).status_code == 200
        async with httpx2.AsyncClient(base_url=s.gateway.admin_url) as admin:
            response = await admin.get("/metrics")
        assert response.status_code == 404 and "--metrics off" in response.text


# --- tokens ------------------------------------------------------------------------------------


def two_dialects(fakes):
    return config(
        [
            target(fakes[0], default_model=MODEL, models=[MODEL]),
            target(fakes[1], provider="anthropic", default_model=CLAUDE, models=[CLAUDE]),
        ]
    )


async def tokens(s, model: str) -> tuple[float, float]:
    samples = await scrape(s)
    return (
        value(samples, "trio_gateway_tokens_total", key="k", model=model, direction="input"),
        value(samples, "trio_gateway_tokens_total", key="k", model=model, direction="output"),
    )


def openai_usage(body: dict) -> tuple[int, int]:
    return body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]


def anthropic_usage(body: dict) -> tuple[int, int]:
    usage = body["usage"]
    return usage["input_tokens"], usage["output_tokens"]


@pytest.mark.parametrize(
    ("client", "model", "usage"),
    [
        ("openai", MODEL, openai_usage),  # same dialect
        ("anthropic", CLAUDE, anthropic_usage),  # same dialect
        ("openai", CLAUDE, openai_usage),  # an OpenAI client on the Anthropic target
        ("anthropic", MODEL, anthropic_usage),  # an Anthropic client on the OpenAI target
    ],
)
async def test_tokens_move_for_whole_and_streamed_answers(client, model, usage):
    async with setup([{}, {}], two_dialects) as s:
        call = s.chat if client == "openai" else s.messages
        whole = await call(model=model)
        assert whole.status_code == 200
        given, taken = usage(whole.json())
        assert given > 0 and taken > 0
        assert await tokens(s, model) == (given, taken)
        streamed = await call(model=model, stream=True)
        assert streamed.status_code == 200
        # The fakes answer the same conversation with the same text and usage.
        assert await tokens(s, model) == (2 * given, 2 * taken)


async def test_the_usage_the_gateway_asked_for_stays_out_of_the_clients_stream():
    async with setup([{}], lambda f: config([target(f[0], default_model=MODEL)])) as s:
        plain = await s.chat(stream=True)
        fake_request = [r for r in s.fakes[0].requests if not is_health_check(r)][-1]
        assert fake_request.json["stream_options"] == {"include_usage": True}
        assert '"usage"' not in plain.text  # neither the nulls nor the usage chunk
        chunks = [json.loads(d) for _, d in sse_events(plain.text) if d != "[DONE]"]
        assert all(c["choices"] for c in chunks)
        assert plain.text.rstrip().endswith("data: [DONE]")
        input_tokens, output_tokens = await tokens(s, MODEL)
        assert input_tokens > 0 and output_tokens > 0

        # A client that asks gets exactly what the provider sent.
        asked = await s.chat(stream=True, stream_options={"include_usage": True})
        chunks = [json.loads(d) for _, d in sse_events(asked.text) if d != "[DONE]"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
        assert all("usage" in c for c in chunks)
        assert await tokens(s, MODEL) == (2 * input_tokens, 2 * output_tokens)


# --- the access log -----------------------------------------------------------------------------


@pytest.fixture
def access_lines():
    """The access log as the gateway writes it, text and JSON."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    text, structured = io.StringIO(), io.StringIO()
    logs.configure("text", "WARNING", stream=text)
    handler = logging.StreamHandler(structured)
    handler.setFormatter(logs.JsonFormatter())
    root.addHandler(handler)
    yield text, structured
    root.handlers[:] = handlers
    root.setLevel(level)


def access_records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in stream.getvalue().splitlines()
        if '"trio_gateway.access"' in line
    ]


async def test_the_access_log_line_of_a_failover_holds_the_trail_and_no_secret(access_lines):
    text, structured = access_lines
    async with setup([{"faults": [Fault.error(503)]}, {}], tiers) as s:
        primary, fallback = s.target_ids()
        response = await s.chat()
        request_id = response.headers["x-request-id"]
        await trio.lowlevel.checkpoint()
    (line,) = [r for r in access_records(structured) if r["request_id"] == request_id]
    assert line["level"] == "info" and line["msg"] == "request"
    assert line["status"] == 200 and line["gateway"] == "e2e" and line["key"] == "k"
    assert line["rule"] == "v1" and line["upstream"] == "u"
    assert line["model"] == MODEL and line["model_sent"] == MODEL
    assert line["target"] == fallback and line["provider"] == "openai"
    assert line["client"] == "127.0.0.1" and line["path"] == "/v1/chat/completions"
    assert line["bytes"] == len(response.content)
    assert line["duration_ms"] >= line["ttfb_ms"] > 0
    assert line["input_tokens"] > 0 and line["output_tokens"] > 0
    assert [(a["target"], a["provider"], a["outcome"]) for a in line["attempts"]] == [
        (primary, "openai", "503"),
        (fallback, "openai", "200"),
    ]
    assert all(isinstance(a["ms"], int) for a in line["attempts"])
    written = text.getvalue() + structured.getvalue()
    for secret in (KEY, "sk-fake-0", "sk-fake-1", "Hello"):  # the key, credentials, a body
        assert secret not in written
    (plain,) = [ln for ln in text.getvalue().splitlines() if request_id in ln]
    assert "trio_gateway.access request " in plain and f"target={fallback}" in plain
    assert f'"target":"{primary}"' in plain and '"outcome":"503"' in plain


async def test_a_streams_line_is_written_when_the_stream_is_over(access_lines, autojump_clock):
    _, structured = access_lines
    slow = [Fault.stall_stream(0.5, after_chunks=2)]
    async with setup([{"faults": slow}], lambda f: config([target(f[0])])) as s:
        async with s.client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
        ) as response:
            request_id = response.headers["x-request-id"]
            chunks = response.aiter_bytes()
            first = await anext(chunks)
            # Headers and the first events are out: the line is not written yet.
            assert not [r for r in access_records(structured) if r["request_id"] == request_id]
            body = first + b"".join([chunk async for chunk in chunks])
        await trio.sleep(0.1)
    (line,) = [r for r in access_records(structured) if r["request_id"] == request_id]
    assert line["stream"] is True and line["stream_end"] == "complete"
    assert line["duration_ms"] >= 500 > line["ttfb_ms"]
    assert line["bytes"] == len(body) > 0
    assert line["output_tokens"] > 0


async def test_an_early_error_is_logged_with_its_type(access_lines):
    _, structured = access_lines
    async with setup([{}], lambda f: config([target(f[0])])) as s:
        response = await s.client.post("/v1/chat/completions", headers={"X-Api-Key": "nope"})
        await trio.lowlevel.checkpoint()
    (line,) = access_records(structured)
    assert line["status"] == 401 == response.status_code
    assert line["error"] == "authentication_failed"
    assert line["gateway"] is None and line["attempts"] == []
    assert "nope" not in structured.getvalue()


async def test_access_log_off_writes_no_line(access_lines):
    _, structured = access_lines
    async with setup([{}], lambda f: config([target(f[0])]), access_log=False) as s:
        assert (await s.chat()).status_code == 200
        await trio.lowlevel.checkpoint()
    assert access_records(structured) == []


# --- traces ----------------------------------------------------------------------------------------


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


async def test_a_request_span_with_one_child_per_attempt(spans):
    tracing, exporter = spans
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with setup([{"faults": [Fault.error(503)]}, {}], tiers, tracing=tracing) as s:
        primary, fallback = s.target_ids()
        response = await s.client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
            headers={"traceparent": parent},
        )
        assert response.status_code == 200
        await trio.sleep(0.05)
    finished = exporter.get_finished_spans()
    (request,) = [span for span in finished if span.kind is SpanKind.SERVER]
    attempts = sorted(
        (span for span in finished if span.kind is SpanKind.CLIENT), key=lambda x: x.start_time
    )
    assert len(attempts) == 2
    assert request.context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert request.parent is not None and request.parent.span_id == int("b7ad6b7169203331", 16)
    for attempt in attempts:
        assert attempt.parent.span_id == request.context.span_id
        assert attempt.attributes["gen_ai.operation.name"] == "chat"
        assert attempt.attributes["gen_ai.provider.name"] == "openai"
        assert attempt.attributes["gen_ai.request.model"] == MODEL
    first, second = attempts
    assert first.attributes["trio_gateway.target"] == primary
    assert first.attributes["trio_gateway.attempt.outcome"] == "503"
    assert first.attributes["error.type"] == "503"
    assert second.attributes["trio_gateway.attempt.outcome"] == "200"
    assert second.attributes["gen_ai.response.model"] == MODEL
    assert second.attributes["gen_ai.usage.input_tokens"] > 0
    assert second.attributes["gen_ai.usage.output_tokens"] > 0
    assert request.attributes["gen_ai.usage.output_tokens"] > 0
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["trio_gateway.target"] == fallback
    assert request.start_time <= first.start_time < first.end_time <= second.start_time
    assert second.end_time == request.end_time  # the answering attempt lasts to the end


async def test_the_request_span_lasts_as_long_as_the_stream(spans, autojump_clock):
    tracing, exporter = spans
    slow = [Fault.stall_stream(0.4, after_chunks=2)]
    async with setup([{"faults": slow}], lambda f: config([target(f[0])]), tracing=tracing) as s:
        response = await s.chat(stream=True)
        assert response.status_code == 200
        await trio.sleep(0.05)
    (request,) = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    (attempt,) = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]
    assert (request.end_time - request.start_time) / 1e9 >= 0.4
    assert attempt.attributes["trio_gateway.attempt.ms"] < 400  # its first byte came at once
    assert request.attributes["trio_gateway.stream_end"] == "complete"


async def test_no_tracing_without_otel_variables(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    async with setup([{}], lambda f: config([target(f[0])])) as s:
        assert s.gateway.telemetry.tracing is None


async def test_with_telemetry_off_the_provider_gets_the_clients_own_bytes():
    """Usage is asked for telemetry and for an API key's usage (docs/keys.md): without
    either (telemetry off, a public rule), the provider gets the client's bytes."""
    quiet = {"metrics": False, "access_log": False}

    def public(fakes):
        made = config([target(fakes[0], default_model=MODEL)])
        made["gateways"][0]["rules"][0]["public"] = True
        return made

    async with setup([{}], public, **quiet) as s:
        assert s.gateway.telemetry is not None and not s.gateway.telemetry.enabled
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        sent = json.dumps(body).encode()
        headers = {"content-type": "application/json", "x-gateway-id": s.gateway_id}
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as anonymous:
            response = await anonymous.post("/v1/chat/completions", content=sent, headers=headers)
        assert response.status_code == 200
        (received,) = [r for r in s.fakes[0].requests if not is_health_check(r)]
        assert received.body == sent  # nothing asked on the client's behalf
        # With a key, the gateway asks for the stream's usage: it counts the key's tokens.
        response = await s.client.post("/v1/chat/completions", content=sent, headers=headers)
        assert response.status_code == 200
        assert b"data: [DONE]" in response.content and b'"usage"' not in response.content
        received = [r for r in s.fakes[0].requests if not is_health_check(r)][-1]
        assert json.loads(received.body)["stream_options"] == {"include_usage": True}


async def test_an_injected_fault_is_named_in_the_access_log_and_counted(access_lines):
    _, structured = access_lines

    def injecting(fakes):
        made = tiers(fakes)
        made["gateways"][0]["fault_injection"] = {"enabled": True}
        return made

    async with setup([{}, {}], injecting) as s:
        primary, backup = s.target_ids()
        response = await s.client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Gateway-Fault": f"503; target={primary}"},
        )
        assert response.status_code == 200
        samples = await scrape(s)
        assert value(samples, "trio_gateway_attempts_total", target=primary, outcome="503") == 1
    (line,) = access_records(structured)
    assert [(a["target"], a["outcome"], a.get("fault")) for a in line["attempts"]] == [
        (primary, "503", "error"),
        (backup, "200", None),
    ]
