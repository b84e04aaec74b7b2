"""CPU cost of each translator, per request, in microseconds (docs/translation.md, "Cost").

Not part of ``make bench`` (no sockets, no servers): the translators alone, on the
benchmark's own bodies (``mock_bodies.py``: a one-sentence request, a ~1 KB answer, a
stream of 18 text deltas), the stream fed one provider event at a time as the target
actor hands it over. Run: ``.venv/bin/python benchmarks/translation_cost.py``.
"""

from __future__ import annotations

import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import mock_bodies as mb

from trio_gateway.providers.translate import ResponsesPassthroughStream, translator
from trio_gateway.testing.fake.content import Prompt, answer, encode_event
from trio_gateway.testing.fake.responses import Responder

CHAT_REQUEST = json.loads(mb.client_request("m", stream=True))
MESSAGES_REQUEST = json.loads(mb.anthropic_request("m", stream=True))
RESPONSES_REQUEST = {
    "model": "m",
    "instructions": CHAT_REQUEST["messages"][0]["content"],
    "input": CHAT_REQUEST["messages"][1]["content"],
    "max_output_tokens": 128,
    "temperature": 0.2,
    "stream": True,
}
OPENAI_JSON = json.loads(mb.openai_json())
ANTHROPIC_JSON = json.loads(mb.anthropic_json())
OPENAI_EVENTS = [e.encode() for e in mb.openai_events()]
ANTHROPIC_EVENTS = [e.encode() for e in mb.anthropic_events()]

CASES = {
    "chat → Messages (OpenAIToAnthropic)": ("openai", "anthropic", CHAT_REQUEST),
    "Messages → chat (AnthropicToOpenAI)": ("anthropic", "openai", MESSAGES_REQUEST),
    "Responses → chat (ResponsesToOpenAI)": ("responses", "openai-compatible", RESPONSES_REQUEST),
    "Responses → Messages (ResponsesToAnthropic)": ("responses", "anthropic", RESPONSES_REQUEST),
}


def best(fn: Callable[[], object], number: int) -> float:
    """The best of 5 runs, in µs per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def measure(client: str, provider: str, body: dict) -> tuple[float, float, float]:
    def make():
        t = translator(client, provider, request_id="bench", now=1)
        assert t is not None
        return t

    provider_events = ANTHROPIC_EVENTS if provider == "anthropic" else OPENAI_EVENTS
    provider_json = ANTHROPIC_JSON if provider == "anthropic" else OPENAI_JSON

    def request() -> None:
        make().request(body)

    def whole() -> None:
        t = make()
        t.request(body)
        t.response(provider_json)

    def stream() -> None:
        t = make()
        t.request(body)
        s = t.stream()
        for event in provider_events:
            s.feed(event)
        s.finish()
        assert s.complete

    return best(request, 2000), best(whole, 2000), best(stream, 500)


def main() -> None:
    print("| translation | request | request + whole answer | request + stream (18 deltas) |")
    print("|---|---|---|---|")
    for name, (client, provider, body) in CASES.items():
        request, whole, stream = measure(client, provider, body)
        print(f"| {name} | {request:.1f} µs | {whole:.1f} µs | {stream:.1f} µs |")
    # A native Responses stream (the fake provider's), relayed one event at a time.
    prompt = Prompt(model="m", said=mb.TEXT, input_tokens=42)
    events, terminator = Responder(
        RESPONSES_REQUEST, prompt, answer(prompt), id="bench", created=1
    ).events()
    native = [encode_event(e) for e in [*events, terminator]]

    def passthrough() -> None:
        s = ResponsesPassthroughStream()
        for event in native:
            s.feed(event)

    print(
        f"\nResponsesPassthroughStream, a native stream of {len(native)} events: "
        f"{best(passthrough, 2000):.1f} µs"
    )


if __name__ == "__main__":
    main()
