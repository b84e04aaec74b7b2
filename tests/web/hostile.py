"""Shared by the hostile-input suites: exact error shapes, and "no traceback in the log"."""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import pytest

from trio_gateway.providers.formats import ApiFormat


@pytest.fixture(autouse=True)
def no_tracebacks(caplog):
    """Whatever a test sends, the gateway logs no error and no traceback."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()
    ]
    assert not bad, bad


def admin_error(response: httpx2.Response, status: int, type: str) -> dict[str, Any]:
    """The admin API's one error shape: ``{"error": {"type", "message", "details"?}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["type"] == type
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) <= {"type", "message", "details"}
    for detail in error.get("details", ()):
        assert set(detail) == {"loc", "msg"}
    return error


def proxy_error(
    response: httpx2.Response, fmt: ApiFormat, status: int, code: str | None = None
) -> str:
    """An error in the client's own dialect, as its SDK parses it; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    body = response.json()
    if fmt is ApiFormat.ANTHROPIC:
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
        return body["error"]["message"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"].endswith("_error") or error["type"] == "insufficient_quota"
    if code is not None:
        assert error["code"] == code
    return error["message"]


def deep(levels: int, inner: str = "1") -> bytes:
    return ("[" * levels + inner + "]" * levels).encode()
