"""Same API on both sides: the provider's SSE events go to the client untouched.

The target actor already hands over whole events only (see
:mod:`trio_gateway.providers.watch`), so there is nothing to re-frame: this is the
:class:`~trio_gateway.providers.translate.StreamTranslator` of the same-dialect
case. Its jobs: end a broken stream with an error event the client's SDK
understands, and end properly a stream whose provider gave its finish reason and
then closed cleanly without the terminator.
"""

from __future__ import annotations

from trio_gateway.providers.formats import ApiFormat, stream_error_event
from trio_gateway.providers.watch import StreamWatch

TERMINATORS = {
    ApiFormat.OPENAI: b"data: [DONE]\n\n",
    ApiFormat.ANTHROPIC: b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
}


class PassthroughStream:
    #: As a translator's: the actor's stream watch already judges the provider's events.
    error: None = None
    complete: bool = False
    skipped: int = 0

    def __init__(self, fmt: ApiFormat, watch: StreamWatch | None = None) -> None:
        self._format = fmt
        self._watch = watch

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        """The terminator, once, for a stream that gave its finish reason without it."""
        watch = self._watch
        if not self.complete and watch is not None and watch.finished and not watch.complete:
            self.complete = True
            return TERMINATORS[self._format]
        return b""

    def fail(self, type: str, message: str) -> bytes:
        return stream_error_event(self._format, type, message)
