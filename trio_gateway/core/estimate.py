"""How many tokens a request may take, before it is sent: the reservation of a token limit.

Sans-IO. A token limit (``tokens_per_minute``, a token or cost budget) is charged
*before* the call with this estimate and settled to what the provider reports
after (:mod:`trio_gateway.core.limits`), so a burst of requests cannot overshoot
the limit by what they have not reported yet.

* **Output**: the most the request may produce: ``max_completion_tokens`` or
  ``max_tokens`` (chat completions; times ``n`` choices), ``max_tokens``
  (Messages), ``max_output_tokens`` (Responses); without one, the upstream's
  ``default_max_tokens``. A provider does not produce more than it was allowed,
  so this part of the estimate errs only on the high side.
* **Input**: the prompt's text, counted as the count_tokens estimate counts it
  (:func:`~trio_gateway.providers.translate.count_tokens.text_tokens`: one token
  per 4 ASCII characters, per 2 other characters, one per CJK character), plus a
  few tokens per message. Images and files count a fixed amount each
  (:data:`IMAGE`), not their base64 text. Only the fields that carry the prompt are
  read (``messages``, ``system``, ``tools``, ``input``, ``instructions``...), the
  same for whole and streamed requests. It errs on the high side for prose and
  may be low for some code or languages: that error is the only overshoot a token
  limit allows (docs/keys.md).

The walk is linear in the prompt's size and skips what it cannot read: a body the
provider will refuse is still estimated, never refused here.
"""

from __future__ import annotations

from typing import Any

import attrs

from trio_gateway.providers.translate.count_tokens import IMAGE, text_tokens

#: Tokens each message adds (role and framing), and each request.
PER_MESSAGE = 4
PER_REQUEST = 3
#: The request fields that carry the prompt, in every dialect the proxy speaks.
PROMPT_FIELDS = (
    "messages",
    "system",
    "tools",
    "functions",
    "tool_choice",
    "input",
    "instructions",
    "prompt",
    "response_format",
    "text",
)
#: Keys whose string values are binary data or a link to it: counted as one image.
_BLOB_KEYS = frozenset({"data", "url", "image_url", "file_data", "image", "file_url"})
#: A string under one of those keys longer than this is data, not text.
BLOB_MIN_CHARS = 1024
#: Block types that are an image or a file, whatever they hold.
_BLOB_TYPES = frozenset(
    {"image", "image_url", "input_image", "document", "file", "input_file", "input_audio"}
)
#: Deeper than this, a body is not a prompt: stop walking (and count nothing more).
MAX_DEPTH = 64
#: ``n`` (choices) beyond this is the provider's to refuse; the estimate stops there.
MAX_CHOICES = 128


@attrs.frozen
class Estimate:
    """What a request may take: its prompt (estimated) and the most it may produce."""

    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


def estimate(body: Any, default_max_tokens: int) -> Estimate:
    """The :class:`Estimate` of a request body of any dialect (see the module docstring)."""
    if not isinstance(body, dict):
        return Estimate(PER_REQUEST, default_max_tokens)
    return Estimate(input_tokens(body), output_tokens(body, default_max_tokens))


def output_tokens(body: dict[str, Any], default_max_tokens: int) -> int:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if type(value) is int and value > 0:
            limit = value
            break
    else:
        limit = default_max_tokens
    choices = body.get("n")
    if type(choices) is int and choices > 1:
        limit *= min(choices, MAX_CHOICES)
    return limit


def input_tokens(body: dict[str, Any]) -> int:
    total = PER_REQUEST
    for name in PROMPT_FIELDS:
        value = body.get(name)
        if value is not None:
            total += _tokens(value, 0)
    messages = body.get("messages")
    if isinstance(messages, list):
        total += PER_MESSAGE * len(messages)
    items = body.get("input")
    if isinstance(items, list):
        total += PER_MESSAGE * len(items)
    return total


def _tokens(value: Any, depth: int) -> int:
    if isinstance(value, str):
        return text_tokens(value)
    if depth >= MAX_DEPTH:
        return 0
    if isinstance(value, list):
        return sum(_tokens(item, depth + 1) for item in value)
    if isinstance(value, dict):
        if value.get("type") in _BLOB_TYPES:
            # The block's own text (a caption, a file name) is noise next to the image.
            return IMAGE
        total = 0
        for key, item in value.items():
            if key in _BLOB_KEYS and isinstance(item, str) and len(item) > BLOB_MIN_CHARS:
                total += IMAGE  # base64 data, a data: URL: binary, not text
            elif key == "type" or key == "role" or key == "cache_control":
                continue
            else:
                total += _tokens(item, depth + 1)
        return total
    return 0
