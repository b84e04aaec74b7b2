"""Token usage as providers report it, in every dialect. Sans-IO.

A provider says how many tokens a request took in its answer's ``usage``:

* OpenAI chat completions: ``{"prompt_tokens", "completion_tokens"}`` (cached prompt
  tokens are part of ``prompt_tokens``); a stream carries it in its last chunk only
  when the request asked for it (``stream_options.include_usage``): the gateway asks
  on the client's behalf and keeps that chunk from a client that did not
  (:class:`~trio_gateway.providers.watch.StreamWatch`, ``hide_usage``);
* Anthropic Messages: ``{"input_tokens", "output_tokens"}`` plus
  ``cache_creation_input_tokens`` and ``cache_read_input_tokens``, which are input
  too and are added to it (as OpenTelemetry's ``gen_ai.usage.input_tokens`` asks); a
  stream reports the input in ``message_start`` and the output, cumulative, in
  ``message_delta``;
* the Responses API: ``{"input_tokens", "output_tokens"}`` in the response object.

The gateway reports what the *provider* counted: for a translated request, the
provider's tokens, whatever the client's dialect.
"""

from __future__ import annotations

from typing import Any

import attrs

_CACHE_INPUT = ("cache_creation_input_tokens", "cache_read_input_tokens")


@attrs.frozen
class Usage:
    """Tokens in and out of one answer (``None``: the provider did not say)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    #: The model the provider says answered (``gen_ai.response.model``).
    model: str | None = None


def tokens(usage: Any) -> tuple[int | None, int | None]:
    """``(input, output)`` of a provider's ``usage`` object, any dialect."""
    if not isinstance(usage, dict):
        return None, None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is not None or completion is not None:
        return prompt, completion
    given = _count(usage.get("input_tokens"))
    if given is not None:
        for name in _CACHE_INPUT:
            given += _count(usage.get(name)) or 0
    return given, _count(usage.get("output_tokens"))


def usage_of(body: Any) -> Usage | None:
    """The usage of a whole answer (a parsed JSON body), or ``None`` when it has none."""
    if not isinstance(body, dict):
        return None
    if body.get("object") == "response" and isinstance(body.get("response"), dict):
        body = body["response"]
    model = body.get("model")
    model = model if isinstance(model, str) else None
    given, taken = tokens(body.get("usage"))
    if given is None and taken is None and model is None:
        return None
    return Usage(given, taken, model)


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None
