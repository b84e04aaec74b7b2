"""Wake-ups when a file in a directory is written: Linux inotify, without a thread.

:func:`watch_directory` returns ``None`` where inotify is not available (other
systems); the caller then polls. The inotify descriptor is non-blocking and
waited on with ``trio.lowlevel.wait_readable``, so cancelling the watcher is
immediate and nothing is left behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class DirectoryWatch:
    """Names of files in one directory as they are closed after writing."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def wait(self) -> set[str]:
        """Wait for the next batch of events; return the file names they concern."""
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            names = set()
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                names.add(data[offset : offset + length].rstrip(b"\0").decode(errors="replace"))
                offset += length
            return names


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@asynccontextmanager
async def watch_directory(directory: Path) -> AsyncIterator[DirectoryWatch | None]:
    """Watch ``directory`` for files written and closed, or renamed into it."""
    libc = _libc()
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC) if libc is not None else -1
    if fd < 0:
        yield None
        return
    try:
        mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            yield None
            return
        yield DirectoryWatch(fd)
    finally:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)
