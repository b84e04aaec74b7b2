"""Same API on both sides: the provider's SSE events go to the client untouched.

The target actor already hands over whole events only (see
:mod:`trio_gateway.providers.watch`), so there is nothing to re-frame: this is the
:class:`~trio_gateway.providers.translate.StreamTranslator` of the same-dialect
case, whose only job is to end a broken stream with an error event the client's
SDK understands.
"""

from __future__ import annotations

from trio_gateway.providers.formats import ApiFormat, stream_error_event


class PassthroughStream:
    #: As a translator's: the actor's stream watch already judges the provider's events.
    error: None = None
    complete: bool = False

    def __init__(self, fmt: ApiFormat) -> None:
        self._format = fmt

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""

    def fail(self, type: str, message: str) -> bytes:
        return stream_error_event(self._format, type, message)
