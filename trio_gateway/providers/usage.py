"""Token usage as providers report it, in every dialect: the gateway's one usage type. Sans-IO.

A provider says how many tokens a request took in its answer's ``usage``:

* OpenAI chat completions: ``{"prompt_tokens", "completion_tokens"}``, the prompt
  tokens served from its prompt cache in ``prompt_tokens_details.cached_tokens``
  (part of ``prompt_tokens``); a stream carries it in its last chunk only when the
  request asked for it (``stream_options.include_usage``): the gateway asks on the
  client's behalf and keeps that chunk from a client that did not
  (:class:`~trio_gateway.providers.watch.StreamWatch`, ``hide_usage``);
* Anthropic Messages: ``{"input_tokens", "output_tokens"}`` plus
  ``cache_creation_input_tokens`` and ``cache_read_input_tokens``, which are input
  too and are added to it (as OpenTelemetry's ``gen_ai.usage.input_tokens`` asks);
  the cache reads are the cached tokens; a stream reports the input in
  ``message_start`` and the output, cumulative, in ``message_delta``;
* the Responses API: ``{"input_tokens", "output_tokens"}`` in the response object,
  the cached ones in ``input_tokens_details.cached_tokens``;
* embeddings: ``{"prompt_tokens", "total_tokens"}`` (no output).

The gateway reports what the *provider* counted: for a translated request, the
provider's tokens, whatever the client's dialect. The same :class:`Usage` is what
telemetry shows and what the keys' limits charge (:mod:`trio_gateway.core.limits`).
"""

from __future__ import annotations

from typing import Any

import attrs

_CACHE_INPUT = ("cache_creation_input_tokens", "cache_read_input_tokens")
_DETAILS = ("prompt_tokens_details", "input_tokens_details")


@attrs.frozen
class Usage:
    """Tokens in and out of one answer (``None``: the provider did not say).

    ``cached_tokens`` are the input tokens read from the provider's prompt cache
    (part of ``input_tokens``), priced at a model's ``cached`` price.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    #: The model the provider says answered (``gen_ai.response.model``).
    model: str | None = None
    cached_tokens: int | None = None

    @property
    def reported(self) -> bool:
        """Did the provider say how many tokens it took (a model name alone is not usage)?"""
        return self.input_tokens is not None or self.output_tokens is not None

    @property
    def total(self) -> int:
        """Input and output tokens (what a token limit counts)."""
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def __add__(self, other: Usage) -> Usage:
        """The usage of two attempts of one request, charged once; the model is the later's."""
        return Usage(
            _plus(self.input_tokens, other.input_tokens),
            _plus(self.output_tokens, other.output_tokens),
            other.model if other.model is not None else self.model,
            _plus(self.cached_tokens, other.cached_tokens),
        )


#: Nothing used (a request that reached no provider).
NOTHING = Usage(0, 0, None, 0)


def _plus(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def tokens(usage: Any) -> tuple[int | None, int | None, int | None]:
    """``(input, output, cached input)`` of a provider's ``usage`` object, any dialect."""
    if not isinstance(usage, dict):
        return None, None, None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is not None or completion is not None:
        return prompt, completion, _cached(usage)
    given = _count(usage.get("input_tokens"))
    cached = _count(usage.get("cache_read_input_tokens"))
    if given is not None:
        for name in _CACHE_INPUT:
            given += _count(usage.get(name)) or 0
    if cached is None:
        cached = _cached(usage)
    return given, _count(usage.get("output_tokens")), cached


def _cached(usage: dict[str, Any]) -> int | None:
    for name in _DETAILS:
        details = usage.get(name)
        if isinstance(details, dict):
            found = _count(details.get("cached_tokens"))
            if found is not None:
                return found
    return None


def usage_of(body: Any) -> Usage | None:
    """The usage of a whole answer (a parsed JSON body), or ``None`` when it has none."""
    if not isinstance(body, dict):
        return None
    if body.get("object") == "response" and isinstance(body.get("response"), dict):
        body = body["response"]
    model = body.get("model")
    model = model if isinstance(model, str) else None
    given, taken, cached = tokens(body.get("usage"))
    if given is None and taken is None and model is None:
        return None
    return Usage(given, taken, model, cached)


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None
