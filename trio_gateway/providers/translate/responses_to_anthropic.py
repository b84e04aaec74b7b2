"""OpenAI Responses client, Anthropic Messages provider. Sans-IO.

Two translations in a row, each written once: Responses ⇄ chat completions
(:mod:`.responses`) and chat completions ⇄ Messages (:mod:`.openai_to_anthropic`).
The request goes Responses → chat → Messages; the answer, the errors and the stream
come back Messages → chat → Responses. What each step maps and drops is in
``docs/translation.md``; the price of the middle step is measured there too.
"""

from __future__ import annotations

from trio_gateway.errors import UpstreamError
from trio_gateway.providers.formats import Api
from trio_gateway.providers.translate._common import TranslationError, fail, new_id
from trio_gateway.providers.translate.openai_to_anthropic import (
    OpenAIToAnthropic,
    OpenAIToAnthropicStream,
)
from trio_gateway.providers.translate.responses import (
    ChatToResponsesStream,
    ResponseShape,
    chat_request,
    check_stateless,
)

__all__ = ["ResponsesToAnthropic", "ResponsesToAnthropicStream"]


class ResponsesToAnthropic:
    """One Responses request served by an Anthropic target."""

    #: The API the provider is called with (the target's Messages path).
    provider_api = Api.MESSAGES

    def __init__(self, *, default_max_tokens: int, request_id: str | None, created: int) -> None:
        self.request_id = request_id or new_id()
        self.created = created
        self.chat = OpenAIToAnthropic(
            default_max_tokens=default_max_tokens, request_id=self.request_id, created=created
        )
        self.shape = ResponseShape(request_id=self.request_id, created=created)

    def request(self, body: dict) -> dict:
        try:
            check_stateless(body)
            chat = chat_request(body, kind="openai")
            self.shape = ResponseShape.of(body, request_id=self.request_id, created=self.created)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise fail("$", f"the request could not be translated ({exc!r})") from exc
        try:
            return self.chat.request(chat.body)
        except TranslationError as exc:
            raise chat.locate(exc) from exc

    def response(self, body: dict) -> dict:
        return self.shape.from_chat(self.chat.response(body))

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        # Responses errors have chat's (OpenAI's) shape: 529 becomes 503, and so on.
        return self.chat.error(status, body)

    def stream(self) -> ResponsesToAnthropicStream:
        return ResponsesToAnthropicStream(self.chat.stream(), ChatToResponsesStream(self.shape))


class ResponsesToAnthropicStream:
    """Messages events → chat chunks → Responses events, one ``feed`` through both.

    The first stage ends an Anthropic ``error`` event with a chat error chunk, which
    the second turns into ``response.failed``; ``error`` is the first stage's, which
    knows what the provider said. ``finish`` ends a stream that closed cleanly after
    its stop reason: the first stage then writes the chat ending, the second
    ``response.completed``. ``skipped`` counts what either stage could not read.
    """

    __slots__ = ("_chat", "_responses")

    def __init__(self, chat: OpenAIToAnthropicStream, responses: ChatToResponsesStream) -> None:
        self._chat = chat
        self._responses = responses

    @property
    def complete(self) -> bool:
        return self._responses.complete

    @property
    def error(self) -> UpstreamError | None:
        return self._chat.error or self._responses.error

    @property
    def skipped(self) -> int:
        return self._chat.skipped + self._responses.skipped

    def feed(self, data: bytes) -> bytes:
        chunks = self._chat.feed(data)
        return self._responses.feed(chunks) if chunks else b""

    def finish(self) -> bytes:
        chunks = self._chat.finish()
        out = self._responses.feed(chunks) if chunks else b""
        return out + self._responses.finish()

    def fail(self, type: str, message: str) -> bytes:
        return self._responses.fail(type, message)
