"""Logs: one line per event, text or JSON, and the HTTP client kept quiet."""

from __future__ import annotations

import io
import json
import logging

import pytest

from trio_gateway import logs


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {
        name: logging.getLogger(name).level for name in ("httpx2", "httpcore2", "httpx", "httpcore")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


def test_json_lines_with_fields_and_exceptions():
    out = io.StringIO()
    logs.configure("json", "INFO", stream=out)
    log = logging.getLogger("trio_gateway.test")
    log.info("upstream created", extra={"fields": {"id": "u1", "name": "n"}})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "upstream created" and first["id"] == "u1" and first["level"] == "info"
    assert "ValueError: boom" in second["exc"]


def test_text_lines_stay_on_one_line():
    out = io.StringIO()
    logs.configure("text", "INFO", stream=out)
    log = logging.getLogger("trio_gateway.test")
    try:
        raise ValueError("multi\nline")
    except ValueError:
        log.exception("failed", extra={"fields": {"path": "/a b"}})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert 'path="/a b"' in lines[0] and "exc=" in lines[0]


def test_http_client_request_logs_are_off_at_info():
    logs.configure("text", "INFO", stream=io.StringIO())
    assert not logging.getLogger("httpx2").isEnabledFor(logging.INFO)
    logs.configure("text", "DEBUG", stream=io.StringIO())
    assert logging.getLogger("httpx2").isEnabledFor(logging.DEBUG)
