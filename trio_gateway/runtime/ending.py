"""One "end every running stream now" signal per runtime, for the end of a shutdown.

A committed stream's body (``dispatcher._stream_body``) waits for each provider
message inside :meth:`EndStreams.move_on_at`. :meth:`EndStreams.set` cancels
every such wait and stays set; the stream then ends at once with an error event
in its client's dialect, rather than being cut mid-body when the server's grace
period runs out. ``serve.py`` sets it shortly before that happens.

Set once, never cleared; holds no task. Cheap on the hot path: a set add and
discard per wait that has to block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class EndStreams:
    def __init__(self) -> None:
        self._set = False
        self._waiting: set[trio.CancelScope] = set()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for scope in self._waiting:
            scope.cancel()

    @contextmanager
    def move_on_at(self, deadline: float) -> Iterator[trio.CancelScope]:
        """``trio.move_on_at(deadline)`` that :meth:`set` also cancels."""
        with trio.move_on_at(deadline) as scope:
            if self._set:
                scope.cancel()
            self._waiting.add(scope)
            try:
                yield scope
            finally:
                self._waiting.discard(scope)
