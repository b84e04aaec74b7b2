"""The OpenAI wire format, as the fake provider speaks it: sans-IO.

Requests are checked the way ``api.openai.com`` checks them (the same status,
``{"error": {"message", "type", "param", "code"}}`` body and wording where it
matters) and answered from :mod:`.content`. Chat completions, streamed or not,
with tool calls; the model list; embeddings (``float`` and ``base64``).
Azure OpenAI's deployment paths take the model from the path.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from trio_gateway.testing.fake.content import (
    ANY,
    AUTO,
    NONE,
    Answer,
    Event,
    Prompt,
    Rejected,
    Stop,
    Tool,
    count_tokens,
    dumps,
    embedding,
    message_text,
    pack_floats,
)

TERMINATOR: Event = (None, "[DONE]")
CREATED = 1_700_000_000

_DEFAULT_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", None, "You are not allowed to sample from this model."),
    404: ("invalid_request_error", "not_found", "Not found."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", "timeout", "Request timed out."),
    529: ("server_error", "overloaded", "The server is overloaded, please try again later."),
}

INVALID_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)


def error_body(
    status: int,
    message: str | None = None,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    default_type, default_code, default_message = _DEFAULT_ERRORS.get(
        status,
        ("server_error", None, "Internal error.")
        if status >= 500
        else ("invalid_request_error", None, "Invalid request."),
    )
    return {
        "error": {
            "message": message or default_message,
            "type": type or default_type,
            "param": param,
            "code": (code or None) if code is not None else default_code,
        }
    }


def rejected_body(exc: Rejected) -> dict[str, Any]:
    return error_body(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param)


def check_auth(headers: Mapping[str, str], api_key: str | None) -> None:
    """``Authorization: Bearer <key>`` (or Azure's ``api-key``), else 401."""
    presented = headers.get("api-key")
    if presented is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else ""
    if not presented:
        raise Rejected(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="",  # null, as OpenAI sends it
        )
    if api_key is not None and presented != api_key:
        raise Rejected(
            401,
            f"Incorrect API key provided: {_redact(presented)}. You can find your API key "
            "at https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _redact(key: str) -> str:
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "***"


def model_not_found(model: str) -> Rejected:
    return Rejected(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def _require(body: Any, name: str) -> Any:
    if name not in body:
        raise Rejected(
            400,
            f"Missing required parameter: '{name}'.",
            param=name,
            code="missing_required_parameter",
        )
    return body[name]


def _invalid_type(name: str, expected: str) -> Rejected:
    return Rejected(
        400,
        f"Invalid type for '{name}': expected {expected}.",
        param=name,
        code="invalid_type",
    )


def _model(body: dict[str, Any], deployment: str | None, served: Callable[[str], bool]) -> str:
    if deployment is not None:
        model = deployment
    else:
        if "model" not in body:
            raise Rejected(400, "you must provide a model parameter")
        model = body["model"]
        if not isinstance(model, str):
            raise _invalid_type("model", "a string")
    if not served(model):
        raise model_not_found(model)
    return model


# --- chat completions --------------------------------------------------------------


def parse_chat(
    body: Any, *, served: Callable[[str], bool], deployment: str | None = None
) -> tuple[Prompt, bool, bool]:
    """``(prompt, stream, include_usage)`` of a chat completion request, or :class:`Rejected`."""
    if not isinstance(body, dict):
        raise Rejected(400, INVALID_JSON)
    model = _model(body, deployment, served)
    messages = _require(body, "messages")
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array")
    if not messages:
        raise Rejected(400, "[] is too short - 'messages'", param="messages")
    said, tool_result, tokens = "", None, 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise Rejected(
                400,
                f"Missing required parameter: 'messages[{i}].role'.",
                param=f"messages[{i}].role",
                code="missing_required_parameter",
            )
        text = message_text(message.get("content"))
        tokens += count_tokens(text)
        if message["role"] == "user":
            said, tool_result = text, None
        elif message["role"] == "tool":
            tool_result = text
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _invalid_type("stream", "a boolean")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    tools = _tools(body.get("tools"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    prompt = Prompt(
        model=model,
        said=said,
        tool_result=tool_result if messages[-1].get("role") == "tool" else None,
        input_tokens=tokens,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice")),
        max_tokens=max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None,
    )
    return prompt, bool(stream), include_usage


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid_type("tools", "an array")
    tools = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Rejected(
                400,
                f"Missing required parameter: 'tools[{i}].function.name'.",
                param=f"tools[{i}].function.name",
                code="missing_required_parameter",
            )
        parameters = function.get("parameters")
        tools.append(Tool(function["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(tools)


def _tool_choice(value: Any) -> str:
    match value:
        case "none":
            return NONE
        case "required":
            return ANY
        case {"function": {"name": str(name)}}:
            return name
    return AUTO


_FINISH = {Stop.END: "stop", Stop.LENGTH: "length", Stop.TOOL: "tool_calls"}


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion(prompt: Prompt, answer: Answer, *, id: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text or None,
        "refusal": None,
        "annotations": [],
    }
    if answer.tool is not None:
        message["tool_calls"] = [
            {
                "id": _call_id(id),
                "type": "function",
                "function": {"name": answer.tool.name, "arguments": answer.tool.arguments},
            }
        ]
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": prompt.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _FINISH[answer.stop],
            }
        ],
        "usage": _usage(answer),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _call_id(id: str) -> str:
    return "call_" + id.removeprefix("chatcmpl-")


def stream_events(
    prompt: Prompt, answer: Answer, *, id: str, created: int, include_usage: bool
) -> list[Event]:
    """The chunks of a streamed completion, without the ``[DONE]`` terminator."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": prompt.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return data

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": piece}) for piece in answer.text_pieces]
    if answer.tool is not None:
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": _call_id(id),
                            "type": "function",
                            "function": {"name": answer.tool.name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        chunks += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in answer.tool.pieces
        ]
    chunks.append(chunk({}, _FINISH[answer.stop]))
    if include_usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = _usage(answer)
        chunks.append(last)
    return [(None, dumps(c)) for c in chunks]


def error_event(status: int, body: Any) -> Event:
    """An error in the middle of a stream, as OpenAI sends it (the SDK raises ``APIError``)."""
    return (None, dumps(body if body is not None else error_body(status)))


# --- models and embeddings ---------------------------------------------------------


def model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": CREATED, "owned_by": "system"}


def models_list(models: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(m) for m in models]}


def embeddings(
    body: Any, *, served: Callable[[str], bool], deployment: str | None = None
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Rejected(400, INVALID_JSON)
    model = _model(body, deployment, served)
    raw = _require(body, "input")
    if isinstance(raw, str) or (
        isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)
    ):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise Rejected(400, "'input' must be a string or an array of strings", param="input")
    texts = []
    for item in raw:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and all(isinstance(t, int) for t in item):
            texts.append(" ".join(map(str, item)))
        else:
            raise Rejected(400, "'input' must be a string or an array of strings", param="input")
    dimensions = body.get("dimensions")
    if not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
        dimensions = 3072 if model.endswith("-large") else 1536
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vector = embedding(text, dimensions)
        value: Any = base64.b64encode(pack_floats(vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(count_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
