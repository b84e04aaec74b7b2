"""Per-request translators between the client's API and the provider's. Sans-IO.

One :class:`Translator` serves one client request sent to one target whose API
differs from the client's. It turns the client's request body into the provider's,
remembers what the answer must look like (model, whether usage was asked for, ids),
and turns the provider's answer back: a JSON body, an error, or a stream fed in
arbitrary byte chunks. Nothing here does I/O or reads the clock unless told to.

Modules, one per direction, named client-to-provider:

- :mod:`.openai_to_anthropic`: OpenAI chat-completions client, Anthropic provider;
- :mod:`.anthropic_to_openai`: Anthropic Messages client, OpenAI-dialect provider
  (``openai``, ``openai-compatible``, ``azure-openai``);
- :mod:`.responses_to_openai`: OpenAI Responses API client, chat-completions provider
  (an OpenAI-dialect target without ``/v1/responses``);
- :mod:`.responses_to_anthropic`: OpenAI Responses API client, Anthropic provider
  (Responses ⇄ chat, then the chat ⇄ Messages translator);
- :mod:`.responses`: the Responses side of both, and
  :class:`~.responses.ResponsesPassthroughStream` for a target that serves the
  Responses API itself;
- :mod:`.count_tokens`: an estimate of ``/v1/messages/count_tokens`` for targets
  that cannot count.

Errors: a request that cannot be carried over raises :class:`TranslationError`
(a :class:`~trio_gateway.errors.ValidationFailed` with status 400) before anything
is sent; a provider answer that breaks its own protocol raises (non-streaming) or
ends the client's stream with an error event and sets ``StreamTranslator.error``
(streaming) to an :class:`~trio_gateway.errors.UpstreamError`.
"""

from __future__ import annotations

import time
from typing import Protocol

from trio_gateway.errors import UpstreamError
from trio_gateway.providers.formats import Api, ApiFormat
from trio_gateway.providers.translate._common import TranslationError
from trio_gateway.providers.translate.anthropic_to_openai import AnthropicToOpenAI
from trio_gateway.providers.translate.openai_to_anthropic import OpenAIToAnthropic
from trio_gateway.providers.translate.responses import ResponsesPassthroughStream
from trio_gateway.providers.translate.responses_to_anthropic import ResponsesToAnthropic
from trio_gateway.providers.translate.responses_to_openai import ResponsesToOpenAI

__all__ = [
    "AnthropicToOpenAI",
    "OpenAIToAnthropic",
    "ResponsesPassthroughStream",
    "ResponsesToAnthropic",
    "ResponsesToOpenAI",
    "StreamTranslator",
    "TranslationError",
    "Translator",
    "translator",
]


class StreamTranslator(Protocol):
    """Provider SSE bytes in, client SSE bytes out; one per streamed response.

    Only whole client events come out of ``feed``, whatever the input chunking.
    The client's terminal events (``data: [DONE]``; ``message_delta`` and
    ``message_stop``) are emitted as soon as the provider's terminator is seen, so
    ``finish`` usually returns ``b""``; it matters when the provider's last event
    lacked its trailing blank line.

    ``complete`` turns true once the provider's terminator was seen. ``error`` is set
    when the provider reported an error mid-stream or broke its protocol; the client
    has then already been sent an error event. After either, ``feed``, ``finish`` and
    ``fail`` return ``b""``. A caller ends a broken stream (provider cut, timeout)
    with ``finish()`` and then, if not ``complete``, ``fail(type, message)``.

    A translator may also take its input as the events a
    :class:`~trio_gateway.providers.watch.StreamWatch` already parsed
    (``feed_events``, instead of ``feed``; the chat and Messages ones): the target
    actor then parses each provider event once.
    """

    complete: bool
    error: UpstreamError | None

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, type: str, message: str) -> bytes: ...


class Translator(Protocol):
    """Everything the gateway needs to serve one request across dialects."""

    def request(self, body: dict) -> dict:
        """The client's request body (model already chosen) as the provider's.

        May raise :class:`TranslationError`. Call once, before the others.
        """
        ...

    def response(self, body: dict) -> dict:
        """The provider's non-streaming success body as the client's.

        Raises :class:`~trio_gateway.errors.UpstreamProtocolError` for a body that is
        not a valid answer.
        """
        ...

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        """A provider error response as the client's status and body."""
        ...

    def stream(self) -> StreamTranslator:
        """A fresh stream translator for one streamed response."""
        ...


def translator(
    client: ApiFormat | Api | str,
    provider: ApiFormat | str,
    *,
    default_max_tokens: int = 4096,
    request_id: str | None = None,
    now: float | None = None,
) -> Translator | None:
    """The translator for one request, or ``None`` when no translation is needed.

    ``provider`` is a dialect or a configured provider kind (``"openai-compatible"``,
    ``"azure-openai"``, a :class:`~trio_gateway.config.models.Provider`); the kind
    refines details of the OpenAI dialect (``max_completion_tokens`` for OpenAI and
    Azure, ``max_tokens`` elsewhere). ``default_max_tokens`` is what an Anthropic
    provider gets when an OpenAI client sent no limit. ``request_id`` seeds ids the
    provider did not supply; ``now`` (seconds since the epoch) is the ``created``
    time of OpenAI responses, read from the clock when not given.

    ``client`` may also be an :class:`~trio_gateway.providers.formats.Api`:
    ``Api.CHAT`` and ``Api.MESSAGES`` are the two dialects above, and
    ``Api.RESPONSES`` (``"responses"``) always gets a translator, to chat
    completions for an OpenAI-dialect kind and to Messages for ``anthropic``: whether
    a target serves ``/v1/responses`` itself (and is then sent the request as it
    came, with :class:`ResponsesPassthroughStream`) is the caller's knowledge, not
    the dialect's. Its ``provider_api`` says which of the target's APIs to call.
    """
    kind = str(provider)
    provider_fmt = ApiFormat.of_provider(kind)
    if client == Api.RESPONSES:
        created = int(time.time() if now is None else now)
        if provider_fmt is ApiFormat.ANTHROPIC:
            return ResponsesToAnthropic(
                default_max_tokens=default_max_tokens, request_id=request_id, created=created
            )
        return ResponsesToOpenAI(kind=kind, request_id=request_id, created=created)
    client_fmt = client.format if isinstance(client, Api) else ApiFormat(client)
    if client_fmt is provider_fmt:
        return None
    created = int(time.time() if now is None else now)
    if client_fmt is ApiFormat.OPENAI:
        return OpenAIToAnthropic(
            default_max_tokens=default_max_tokens, request_id=request_id, created=created
        )
    return AnthropicToOpenAI(kind=kind, request_id=request_id)
