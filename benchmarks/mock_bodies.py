"""What the mock provider answers, and the nginx configuration that answers it.

Realistic shapes and sizes: an OpenAI ``chat.completion`` (~1 KB), an OpenAI SSE
stream of 20 ``data:`` chunks plus ``[DONE]``, an Anthropic ``message`` and an
Anthropic SSE stream (message_start, ping, content_block_start, 18
content_block_delta, content_block_stop, message_delta, message_stop). Each SSE
event is written and flushed on its own (``echo_flush``), as a provider does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CREATED = 1700000000
OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"
#: 18 deltas: with the role chunk and the finish chunk, 20 OpenAI ``data:`` events.
WORDS = [
    "Trio",
    " is",
    " a",
    " friendly",
    " Python",
    " library",
    " for",
    " async",
    " concurrency",
    " and",
    " I/O.",
    " Structured",
    " concurrency",
    " keeps",
    " every",
    " task",
    " owned",
    ".",
]
TEXT = "".join(WORDS)
USAGE = {"prompt_tokens": 42, "completion_tokens": len(WORDS), "total_tokens": 42 + len(WORDS)}


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def openai_json() -> str:
    return _dumps(
        {
            "id": "chatcmpl-bench0000000000000000000001",
            "object": "chat.completion",
            "created": CREATED,
            "model": OPENAI_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": " ".join([TEXT] * 4),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                **USAGE,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_bench00001",
        }
    )


def openai_events() -> list[str]:
    def chunk(delta: dict, finish: str | None) -> str:
        return "data: " + _dumps(
            {
                "id": "chatcmpl-bench0000000000000000000002",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": OPENAI_MODEL,
                "system_fingerprint": "fp_bench00001",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [chunk({"content": word}, None) for word in WORDS]
    events.append(chunk({}, "stop"))
    events.append("data: [DONE]")
    return [event + "\n\n" for event in events]


def anthropic_json() -> str:
    return _dumps(
        {
            "id": "msg_bench000000000000000001",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [{"type": "text", "text": " ".join([TEXT] * 4)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 42,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": len(WORDS) * 4,
            },
        }
    )


def anthropic_events() -> list[str]:
    def event(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {_dumps(data)}\n\n"

    events = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_bench000000000000000002",
                    "type": "message",
                    "role": "assistant",
                    "model": ANTHROPIC_MODEL,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 42,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        event("ping", {"type": "ping"}),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events += [
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
        )
        for w in WORDS
    ]
    events += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(WORDS)},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return events


def _nginx_string(text: str) -> str:
    """``text`` as the inside of a single-quoted nginx string (no variables allowed)."""
    if "$" in text:
        raise ValueError("nginx would expand '$' in a mock body")
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def _echo_events(events: list[str], sleep: float | None = None) -> str:
    lines = []
    for i, ev in enumerate(events):
        if sleep is not None and i:
            lines.append(f"echo_sleep {sleep};")
        lines.append(f"echo -n '{_nginx_string(ev)}';")
        lines.append("echo_flush;")
    return "\n".join("            " + line for line in lines)


def render_nginx_conf(
    template: Path,
    *,
    directory: Path,
    port_a: int,
    port_b: int,
    echo_module: Path,
    slow_sleep: float,
) -> str:
    values = {
        "DIR": str(directory),
        "PORT_A": str(port_a),
        "PORT_B": str(port_b),
        "ECHO_MODULE": str(echo_module),
        "SLOW_SLEEP": str(slow_sleep),
        "OPENAI_JSON": _nginx_string(openai_json()),
        "OPENAI_STREAM": _echo_events(openai_events()),
        "OPENAI_SLOW_STREAM": _echo_events(openai_events(), slow_sleep),
        "ANTHROPIC_JSON": _nginx_string(anthropic_json()),
        "ANTHROPIC_STREAM": _echo_events(anthropic_events()),
    }
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    if left := re.findall(r"@[A-Z_]+@", text):
        raise ValueError(f"unfilled placeholders in {template}: {sorted(set(left))}")
    return text


#: A client request of realistic size (OpenAI format); ``stream`` is added per case.
def client_request(model: str, *, stream: bool) -> bytes:
    body: dict = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "In one sentence: what is Trio, the Python library?"},
        ],
        "max_tokens": 128,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return _dumps(body).encode()


#: What the gateway sends an Anthropic target for :func:`client_request` (the direct
#: call and the floor send this to the mock's Anthropic endpoints).
def anthropic_request(model: str, *, stream: bool) -> bytes:
    body: dict = {
        "model": model,
        "system": "You are a concise assistant. Answer in one sentence.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "In one sentence: what is Trio, the Python library?"}
                ],
            }
        ],
        "max_tokens": 128,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return _dumps(body).encode()
