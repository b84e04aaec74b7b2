"""OpenAI Responses client, chat-completions provider. Sans-IO.

For an OpenAI-dialect target that does not serve ``/v1/responses`` (most
``openai-compatible`` servers): the request goes out as chat completions and the
answer comes back as a Responses answer. The mapping is in :mod:`.responses`; this
module is the :class:`~trio_gateway.providers.translate.Translator` around it.
"""

from __future__ import annotations

from trio_gateway.providers.formats import Api, ApiFormat
from trio_gateway.providers.translate._common import fail, new_id, translate_error
from trio_gateway.providers.translate.responses import (
    ChatToResponsesStream,
    ResponseShape,
    chat_request,
    check_stateless,
)

__all__ = ["ResponsesToOpenAI"]


class ResponsesToOpenAI:
    """One Responses request served by a chat-completions target."""

    #: The API the provider is called with (the target's chat-completions path).
    provider_api = Api.CHAT

    def __init__(self, *, kind: str, request_id: str | None, created: int) -> None:
        self.kind = kind
        self.request_id = request_id or new_id()
        self.created = created
        self.shape = ResponseShape(request_id=self.request_id, created=created)

    def request(self, body: dict) -> dict:
        try:
            check_stateless(body)
            chat = chat_request(body, kind=self.kind)
            self.shape = ResponseShape.of(body, request_id=self.request_id, created=self.created)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # A shape the checks did not foresee: still the client's to fix.
            raise fail("$", f"the request could not be translated ({exc!r})") from exc
        return chat.body

    def response(self, body: dict) -> dict:
        return self.shape.from_chat(body)

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        # The same error shape; bodies of compatible servers are normalised to it.
        return translate_error(ApiFormat.OPENAI, status, body, status_map={})

    def stream(self) -> ChatToResponsesStream:
        return ChatToResponsesStream(self.shape)
