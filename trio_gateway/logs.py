"""Logging: one line per event, as text or JSON.

Call sites log a short event name and structured fields::

    log.info("upstream created", extra={"fields": {"id": u.id, "name": u.name}})

Fields never include secrets: the configuration is logged only through the API
converter, which masks them. Formatting happens in the handler, so a disabled
level costs nothing on the request path. An enabled one costs a few microseconds:
the access log writes a line per request, so the formatters are written for speed
(orjson, a timestamp formatted once per second) and :func:`configure` switches off
what :mod:`logging` gathers for every record that no line here shows (the caller's
file and line, thread and process names), as the logging HOWTO's "Optimization"
section suggests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import weakref
from typing import Any, Literal, TextIO

import orjson

LogFormat = Literal["text", "json"]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, "fields", None) or {}


_second: list[Any] = [None, ""]


def _timestamp(record: logging.LogRecord) -> str:
    """``2026-01-02T03:04:05.678Z`` (UTC), the seconds formatted once per second."""
    created = record.created
    second = int(created)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        plain = _PLAIN
        for k, v in _fields(record).items():
            kind = type(v)
            if kind is str:
                if v and " " not in v and '"' not in v and "=" not in v and "\n" not in v:
                    parts.append(f"{k}={v}")
                else:
                    parts.append(f"{k}={_quoted(v)}")
            elif kind in plain:
                parts.append(f"{k}={v}")
            else:
                parts.append(f"{k}={_text(v)}")
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


def _quoted(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except TypeError:  # a lone surrogate
        return json.dumps(text)


#: Values whose ``str`` never needs quoting.
_PLAIN = frozenset({int, float, bool, type(None)})


def _text(value: Any) -> str:
    """A field's value in a text line: as it is, or quoted when it has a space, a quote,
    an ``=`` or a line break (or is empty); lists and mappings as compact JSON."""
    if type(value) is str:
        text = value
    elif isinstance(value, list | dict | tuple):
        text = orjson.dumps(value, default=str).decode()  # one token: no space in it
        return text if " " not in text else _quoted(text)
    else:
        text = str(value)
    if not text or " " in text or '"' in text or "=" in text or "\n" in text:
        return _quoted(text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update(_fields(record))
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(event, default=str).decode()
        except TypeError:  # a key that is not a string, an integer beyond 64 bits
            return json.dumps(event, default=str)


_batching = [False]


class _Handler(logging.StreamHandler):
    """A stream handler that, inside :func:`batch`, writes its lines with one flush."""

    def flush(self) -> None:
        if not _batching[0]:
            super().flush()


_handlers: weakref.WeakSet[_Handler] = weakref.WeakSet()


class batch:
    """Within it, the lines of :func:`configure`'s handler are flushed once, at the end."""

    def __enter__(self) -> None:
        _batching[0] = True

    def __exit__(self, *exc: object) -> None:
        _batching[0] = False
        for handler in list(_handlers):
            # A closed stream: as logging itself would, go on.
            with contextlib.suppress(OSError, ValueError):
                handler.flush()


def configure(
    fmt: LogFormat = "text", level: str | int = "INFO", stream: TextIO | None = None
) -> None:
    # Nothing here shows them: not gathering them makes each record cheaper.
    logging._srcfile = None  # type: ignore[attr-defined]  # the caller's file and line
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _Handler(stream or sys.stderr)
    _handlers.add(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # hypercorn's own error log goes through the same handler, in the same format.
    logging.getLogger("hypercorn.error").propagate = True
    # The HTTP client logs every request at INFO: that is our hot path, and the
    # attempt trail already says it. Its debug output stays available at DEBUG.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in ("httpx2", "httpcore2", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
