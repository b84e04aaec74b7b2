"""Pieces both translation directions share: JSON helpers, errors, usage, ids."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from trio_gateway import jsonio
from trio_gateway.errors import (
    Problem,
    StreamErrorEvent,
    StreamRequestError,
    UpstreamError,
    ValidationFailed,
)
from trio_gateway.providers.formats import ApiFormat, dialect_type, error_body, status_for_type
from trio_gateway.providers.sse import SSEDecoder, SSEEvent

#: Compact JSON, non-ASCII kept as is (orjson: see :mod:`trio_gateway.jsonio`).
dumps = jsonio.dumps
dumpb = jsonio.dumpb
loads = jsonio.loads


class TranslationError(ValidationFailed):
    """The client's request is well-formed for its API but cannot be carried over.

    Raised, before anything is sent, for content the provider's API has no place for
    (an audio part for an Anthropic target, an image URL scheme, a ``file_id``) and
    for conversations the client's own API would also have refused (a tool result that
    answers no tool call). The status is 400, what the client's API would have said;
    ``details`` names the offending field.
    """

    status = 400
    type = "invalid_request_error"


def fail(loc: str, msg: str) -> TranslationError:
    return TranslationError(f"{loc}: {msg}", details=[Problem(loc, msg)])


def log_dropped(log: logging.Logger, body: dict, handled: frozenset[str], what: str) -> None:
    """One debug line naming the request fields the provider will not see."""
    if log.isEnabledFor(logging.DEBUG):
        dropped = sorted(k for k in body if k not in handled)
        if dropped:
            log.debug(what, extra={"fields": {"dropped": dropped}})


def debug(log: logging.Logger, msg: str, **fields: Any) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(msg, extra={"fields": fields})


def new_id() -> str:
    return uuid.uuid4().hex[:24]


def as_int(value: Any) -> int:
    return value if type(value) is int else 0


def loads_object(arguments: Any) -> dict:
    """OpenAI's ``arguments`` string as the JSON object Anthropic's ``input`` must be.

    Empty arguments (a tool without parameters) become ``{}``. Arguments that are not
    a JSON object (a model can emit broken JSON, and clients echo it back) become
    ``{}`` too: the call keeps its place in the conversation, and the model sees its
    own result for it.
    """
    if isinstance(arguments, dict):
        return arguments
    if not arguments or not isinstance(arguments, str):
        return {}
    try:
        value = loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --- usage -------------------------------------------------------------------------


def openai_usage(u: dict) -> dict:
    """Anthropic usage as OpenAI usage.

    Anthropic's ``input_tokens`` excludes cached tokens; OpenAI's ``prompt_tokens``
    is the whole prompt, with the cached part in ``prompt_tokens_details``.
    """
    inp = as_int(u.get("input_tokens"))
    read = as_int(u.get("cache_read_input_tokens"))
    write = as_int(u.get("cache_creation_input_tokens"))
    out = as_int(u.get("output_tokens"))
    prompt = inp + read + write
    details: dict[str, int] = {"cached_tokens": read}
    if write:
        details["cache_write_tokens"] = write
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
        "prompt_tokens_details": details,
    }
    otd = u.get("output_tokens_details")
    if isinstance(otd, dict) and as_int(otd.get("thinking_tokens")) > 0:
        usage["completion_tokens_details"] = {"reasoning_tokens": otd["thinking_tokens"]}
    return usage


def anthropic_usage(u: dict) -> dict:
    """OpenAI usage as Anthropic usage (the inverse of :func:`openai_usage`)."""
    prompt = as_int(u.get("prompt_tokens"))
    details = u.get("prompt_tokens_details")
    read = write = 0
    if isinstance(details, dict):
        read = as_int(details.get("cached_tokens"))
        write = as_int(details.get("cache_write_tokens"))
    usage: dict[str, Any] = {
        "input_tokens": max(prompt - read - write, 0),
        "output_tokens": as_int(u.get("completion_tokens")),
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
    }
    ctd = u.get("completion_tokens_details")
    if isinstance(ctd, dict) and as_int(ctd.get("reasoning_tokens")) > 0:
        usage["output_tokens_details"] = {"thinking_tokens": ctd["reasoning_tokens"]}
    return usage


# --- provider errors ---------------------------------------------------------------


def parse_error(body: bytes | str | dict | list) -> tuple[str | None, str | None, str | None]:
    """(type, message, code) from any provider error body, or Nones.

    Understands OpenAI's ``{"error": {...}}``, Anthropic's ``{"type": "error", "error":
    {...}}``, ``{"error": "text"}``, vLLM/FastAPI ``{"message"|"detail": ...}`` and a
    list of those (Gemini's OpenAI endpoint).
    """
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = loads(body)
        except ValueError:
            return None, None, None
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return None, None, None
    err = data.get("error", data)
    if isinstance(err, str):
        return None, err, None
    if not isinstance(err, dict):
        return None, None, None
    message = err.get("message")
    if message is None:
        message = err.get("detail")
    if message is not None and not isinstance(message, str):
        message = dumps(message)
    kind = err.get("type")
    code = err.get("code")
    return (
        kind if isinstance(kind, str) and kind != "error" else None,
        message,
        str(code) if code is not None else None,
    )


def error_message(status: int, body: bytes, message: str | None) -> str:
    if message:
        return message
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return f"upstream returned HTTP {status} with an empty body"
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:300] + "…"
    return f"upstream returned HTTP {status}: {text}"


def translate_error(
    client: ApiFormat, status: int, body: bytes, *, status_map: dict[int, int]
) -> tuple[int, bytes]:
    """A provider's error response, rendered for ``client`` with the nearest status.

    The client's error type follows from the (mapped) status, as the client's own API
    would have chosen it; an OpenAI client also gets the provider's type or code as
    ``code``. The message is the provider's, or a bounded excerpt of a body that was
    not a recognisable error (an HTML page from a proxy, say).
    """
    kind, message, code = parse_error(body)
    if status < 400:  # not an error status at all: the provider broke its protocol
        status = 502
    out = status_map.get(status, status)
    client_type = dialect_type(client, out)
    if client is ApiFormat.OPENAI and code is None and kind != client_type:
        code = kind  # the provider's own name for it, where OpenAI's differs
    return out, error_body(
        client,
        out,
        client_type,
        error_message(status, body, message),
        code=code if client is ApiFormat.OPENAI else None,
    )


def stream_failure(kind: str | None, message: str | None) -> UpstreamError:
    """The gateway error that a provider's mid-stream error event stands for."""
    status = status_for_type(kind, 502)
    error = StreamRequestError if status < 500 and status != 429 else StreamErrorEvent
    return error(message or "the provider reported an error mid-stream")


# --- streams ---------------------------------------------------------------------------


class ParsedEvents:
    """``feed_events`` for a stream translator that reads SSE with an :class:`SSEDecoder`.

    The target actor's :class:`~trio_gateway.providers.watch.StreamWatch`
    (``events=True``) has parsed each event it released already: ``(name, payload,
    block)``. An event with a payload (a JSON object) goes to ``_one`` as is; any
    other (a keep-alive, ``[DONE]``, data that cannot be read) is read from its block
    by ``_handle``, as ``feed`` would have read it. So a translator gives the same
    bytes whichever way it is fed, and parses each event once when fed this way.
    """

    _decoder: SSEDecoder
    _done: bool

    def feed_events(self, events: list[tuple[str | None, dict | None, bytes]]) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        for name, payload, block in events:
            if payload is None:
                out.append(self._handle(self._decoder.feed(block)))
            else:
                self._one(name, payload, out)
            if self._done:
                break
        return b"".join(out)

    def _handle(self, events: list[SSEEvent], final: bool = False) -> bytes:
        raise NotImplementedError

    def _one(self, name: str | None, payload: dict, out: list[bytes]) -> None:
        raise NotImplementedError
