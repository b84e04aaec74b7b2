"""Golden transcripts, both directions (see ``golden.py`` for the format).

Besides matching the recorded outputs, every client-facing output must be accepted
by the client's official SDK: responses validate as its models, streams go through
its real stream parser and accumulator, error events raise its exceptions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.providers import golden, sdk

UPDATE = os.environ.get("GOLDEN_UPDATE") == "1"


@pytest.mark.parametrize("path", golden.paths(), ids=golden.case_id)
def test_golden(path: Path) -> None:
    case = golden.load(path)
    got = golden.run(path, case)
    if UPDATE:
        _fill_in(path, case, got)

    if "request_error" in case:
        assert "request_error" in got, f"request was translated: {got.get('provider_request')}"
        assert case["request_error"] in got["request_error"]
    else:
        assert got.get("provider_request") == case["provider_request"], got.get("request_error")
    if "provider_response" in case:
        assert got["client_response"] == case["client_response"]
    if "provider_stream" in case:
        assert sdk.events(got["client_stream"]) == sdk.events(case["client_stream"])
        assert got["complete"] == case.get("complete", True)
    if "provider_error" in case:
        assert got["client_error"] == case["client_error"]

    _check_with_sdk(golden.client_format(path), got)


def _check_with_sdk(client: str, got: dict[str, Any]) -> None:
    if client == "responses":
        _check_responses(got)
        return
    openai = client == "openai"
    if "client_response" in got:
        if openai:
            sdk.check_openai_response(got["client_response"])
        else:
            sdk.check_anthropic_response(got["client_response"])
    if "client_stream" in got:
        body = got["client_stream"].encode()
        final, error = (sdk.replay_openai_stream if openai else sdk.replay_anthropic_stream)(body)
        names = [e for e, _ in sdk.events(body)]
        has_error = "error" in names or any(
            isinstance(d, dict) and "error" in d for _, d in sdk.events(body)
        )
        assert (error is not None) == has_error, error
        if got["complete"]:
            assert final is not None, "the SDK did not see a finished message"
            _check_final(final)


def _check_responses(got: dict[str, Any]) -> None:
    if "client_response" in got:
        sdk.check_responses_response(got["client_response"])
    if "client_stream" in got:
        final, ended = sdk.replay_responses_stream(got["client_stream"].encode())
        names = [e for e, _ in sdk.events(got["client_stream"])]
        if got["complete"]:
            assert "response.failed" not in names and "error" not in names
            if "response.incomplete" in names:
                assert final is None and ended.type == "response.incomplete"
            else:
                assert final is not None, "the SDK did not see response.completed"
                for item in final.output:
                    if item.type == "function_call":
                        assert isinstance(json.loads(item.arguments), dict)
        else:
            assert final is None
            if "response.failed" in names:
                assert ended is not None and ended.type == "response.failed"


def _check_final(final: Any) -> None:
    """Tool arguments survive the stream as valid JSON objects."""
    if hasattr(final, "choices"):
        for call in final.choices[0].message.tool_calls or ():
            assert isinstance(json.loads(call.function.arguments), dict)
    else:
        for block in final.content:
            if block.type == "tool_use":
                assert isinstance(block.input, dict)


def _fill_in(path: Path, case: dict[str, Any], got: dict[str, Any]) -> None:
    changed = False
    for key, value in got.items():
        if key == "complete":
            if not value and "complete" not in case:
                case[key] = value
                changed = True
            continue
        if key == "request_error" and "provider_request" in case:
            continue
        if key not in case:
            if key == "client_stream":
                value = value.rstrip("\n") + "\n"
            case[key] = value
            changed = True
    if changed:
        golden.write(path, case)


def test_there_are_cases_for_both_directions() -> None:
    dirs = {p.parent.name for p in golden.paths()}
    assert dirs == set(golden.DIRECTIONS)
