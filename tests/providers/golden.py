"""Golden transcripts for the translators: loading, running, (re)writing.

Each case is one YAML file under ``golden/<direction>/``, where the direction is
``openai_to_anthropic`` (OpenAI client, Anthropic provider), ``anthropic_to_openai``,
``responses_to_openai`` (OpenAI Responses API client, chat-completions provider) or
``responses_to_anthropic``. A case holds one exchange, with any of these keys:

``description``
    What the case shows.
``provider`` / ``options``
    The provider kind (default: the direction's) and extra ``translator`` options.
``client_request`` → ``provider_request``
    The client's body and what the provider must receive.
``request_error``
    Instead of ``provider_request``: the request must raise ``TranslationError``
    whose message contains this text.
``provider_response`` → ``client_response``
    A non-streaming success body and what the client must receive.
``provider_stream`` → ``client_stream`` (and ``complete``, default true)
    Provider SSE text and the client SSE text (compared event by event, as JSON).
``provider_error`` → ``client_error``
    ``{status, body}`` (a body may be JSON or raw text) in, ``{status, body}`` out.

To add a case, write its inputs and run
``GOLDEN_UPDATE=1 .venv/bin/python -m pytest tests/providers/test_golden.py``: missing
outputs are filled in from the current translators (existing ones are never
touched). Read what was written before committing it; that review is the test.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from trio_gateway.providers.translate import TranslationError, Translator, translator

ROOT = Path(__file__).parent / "golden"
NOW = 1_700_000_000
REQUEST_ID = "gw0test"
DIRECTIONS = {
    "openai_to_anthropic": ("openai", "anthropic"),
    "anthropic_to_openai": ("anthropic", "openai"),
    # The Responses API's native target (OpenAI) passes it through; a translated
    # OpenAI-dialect target is typically an openai-compatible server.
    "responses_to_openai": ("responses", "openai-compatible"),
    "responses_to_anthropic": ("responses", "anthropic"),
}
ORDER = (
    "description",
    "provider",
    "options",
    "client_request",
    "provider_request",
    "request_error",
    "provider_response",
    "client_response",
    "provider_stream",
    "client_stream",
    "complete",
    "provider_error",
    "client_error",
)


def paths() -> list[Path]:
    return sorted(ROOT.glob("*/*.yaml"))


def case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def client_format(path: Path) -> str:
    return DIRECTIONS[path.parent.name][0]


def make_translator(path: Path, case: dict[str, Any]) -> Translator:
    client, provider = DIRECTIONS[path.parent.name]
    t = translator(
        client,
        case.get("provider", provider),
        now=NOW,
        request_id=REQUEST_ID,
        **case.get("options", {}),
    )
    assert t is not None
    return t


def stream_bytes(text: str) -> bytes:
    """A YAML block's SSE text as the wire bytes (ending in one blank line)."""
    return (text.rstrip("\n") + "\n\n").encode()


def run(path: Path, case: dict[str, Any]) -> dict[str, Any]:
    """Every output the case's inputs produce, keyed like the case."""
    t = make_translator(path, case)
    out: dict[str, Any] = {}
    request = copy.deepcopy(case["client_request"])
    try:
        out["provider_request"] = t.request(request)
    except TranslationError as exc:
        out["request_error"] = exc.message
    assert request == case["client_request"], "the client's body was modified"
    json.dumps(out.get("provider_request"))  # what goes on the wire must be JSON
    if "provider_response" in case:
        response = copy.deepcopy(case["provider_response"])
        out["client_response"] = t.response(response)
        assert response == case["provider_response"], "the provider's body was modified"
        json.dumps(out["client_response"])
    if "provider_stream" in case:
        stream = t.stream()
        body = stream.feed(stream_bytes(case["provider_stream"])) + stream.finish()
        out["client_stream"] = body.decode()
        out["complete"] = stream.complete
    if "provider_error" in case:
        err = case["provider_error"]
        raw = err["body"]
        data = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
        status, body = t.error(err["status"], data)
        out["client_error"] = {"status": status, "body": json.loads(body)}
    return out


# --- writing -------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &anchors: each case reads top to bottom


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if value.strip() and value.count("\n") >= 2:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def write(path: Path, case: dict[str, Any]) -> None:
    ordered = {k: case[k] for k in ORDER if k in case}
    ordered.update({k: v for k, v in case.items() if k not in ordered})
    path.write_text(
        yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    )
