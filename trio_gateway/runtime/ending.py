"""One "end every running stream now" signal per runtime, for the end of a shutdown.

A committed stream's body (``target._Relay``) waits for each provider message
inside a cancel scope of :meth:`EndStreams.scope`. :meth:`EndStreams.set` cancels
every such wait and stays set; the stream then ends at once with an error event
in its client's dialect, rather than being cut mid-body when the server's grace
period runs out. ``serve.py`` sets it shortly before that happens.

Set once, never cleared; holds no task. Cheap on the hot path: a cancel scope, a set add and
a discard per wait (no context manager of its own: a stream waits twenty times).
"""

from __future__ import annotations

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

    def scope(self, deadline: float) -> trio.CancelScope:
        """A cancel scope with ``deadline`` that :meth:`set` also cancels (at once when
        already set), until :meth:`release`."""
        scope = trio.CancelScope(deadline=deadline)
        if self._set:
            scope.cancel()
        self._waiting.add(scope)
        return scope

    def release(self, scope: trio.CancelScope) -> None:
        self._waiting.discard(scope)
