"""Error bodies and mid-stream error events, as each dialect's SDK reads them."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.providers import sdk
from trio_gateway.providers.formats import (
    ApiFormat,
    dialect_type,
    error_body,
    status_for_type,
    stream_error_event,
)

OPENAI = ApiFormat.OPENAI
ANTHROPIC = ApiFormat.ANTHROPIC


def test_api_format_of_provider() -> None:
    assert ApiFormat.of_provider("anthropic") is ANTHROPIC
    for kind in ("openai", "openai-compatible", "azure-openai"):
        assert ApiFormat.of_provider(kind) is OPENAI
    with pytest.raises(ValueError):
        ApiFormat.of_provider("bedrock")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
        (418, "invalid_request_error"),
        (502, "api_error"),
    ],
)
def test_anthropic_types_per_status(status: int, kind: str) -> None:
    assert dialect_type(ANTHROPIC, status) == kind
    body = json.loads(error_body(ANTHROPIC, status, None, "boom"))
    assert body == {"type": "error", "error": {"type": kind, "message": "boom"}}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
        (422, "invalid_request_error"),
    ],
)
def test_openai_types_per_status(status: int, kind: str) -> None:
    body = json.loads(error_body(OPENAI, status, None, "boom"))
    assert body == {"error": {"message": "boom", "type": kind, "param": None, "code": None}}


def test_gateway_types_become_dialect_types() -> None:
    body = json.loads(error_body(OPENAI, 422, "validation_failed", "messages: bad"))
    assert body["error"] == {
        "message": "messages: bad",
        "type": "invalid_request_error",
        "param": None,
        "code": "validation_failed",
    }
    body = json.loads(error_body(ANTHROPIC, 503, "service_unavailable", "no target"))
    assert body["error"] == {"type": "overloaded_error", "message": "no target"}
    # A type the dialect knows is kept as given.
    body = json.loads(error_body(OPENAI, 429, "insufficient_quota", "pay up"))
    assert body["error"]["type"] == "insufficient_quota"


def test_status_for_type() -> None:
    assert status_for_type("upstream_timeout") == 504
    assert status_for_type("overloaded_error") == 529
    assert status_for_type("rate_limit_exceeded") == 429
    assert status_for_type("no_such_type") == 500
    assert status_for_type(None, 502) == 502


def test_openai_stream_error_raises_in_the_sdk() -> None:
    event = stream_error_event(OPENAI, "upstream_timeout", "no data for 30 s")
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["type"] == "server_error"
    prefix = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    )
    _, error = sdk.replay_openai_stream(prefix + event)
    assert isinstance(error, openai.APIError)
    assert error.message == "no data for 30 s"
    assert error.code == "upstream_timeout"


def test_anthropic_stream_error_raises_in_the_sdk() -> None:
    event = stream_error_event(ANTHROPIC, "upstream_error", "the provider's stream broke")
    assert event.startswith(b"event: error\ndata: ")
    _, error = sdk.replay_anthropic_stream(event)
    assert isinstance(error, anthropic.APIStatusError)
    assert error.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "the provider's stream broke"},
    }


def test_anthropic_stream_error_keeps_overloaded() -> None:
    event = stream_error_event(ANTHROPIC, "overloaded_error", "Overloaded")
    _, error = sdk.replay_anthropic_stream(event)
    assert isinstance(error, anthropic.APIStatusError)
    assert error.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
