"""What a fake provider is told: its spec, and the faults it injects.

Plain frozen attrs classes, structured from JSON/YAML by :mod:`trio_gateway.serde`
(so a bad fault in a configuration file or a ``PUT /_fake/faults`` body is reported
by path, ``faults[1].status``), and written in Python with the :class:`Fault`
constructors::

    Fault.error(503, times=2)
    Fault.rate_limit(retry_after=3, model="gpt-4o-mini")
    Fault.cut_stream(after_chunks=3, path="/v1/messages")
    Fault.flap(down=2, up=3)

A fault is one **action** (its ``kind`` and the parameters of that kind) plus a
**selection**: which requests it may apply to (``path``, ``model``, ``stream``) and
which of those it does apply to (``skip`` the first N, at most ``times``, with
``probability``, inside a time ``window``, during the down phases of
``flapping``). :mod:`.faults` decides, request by request, which faults fire.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import attrs

from trio_gateway.config.models import Between, Headers, ModelName, Name, Text, UrlPath

# --- constrained types ---------------------------------------------------------

Duration = Annotated[float, Between(0, 86_400)]
Period = Annotated[float, Between(0, 86_400, lo_open=True)]
Status = Annotated[int, Between(200, 599)]
Count = Annotated[int, Between(1, 1_000_000_000)]
Offset = Annotated[int, Between(0, 1_000_000_000)]
Probability = Annotated[float, Between(0, 1, lo_open=True)]
Listen = Annotated[str, Text(1, 300)]


class FaultKind(enum.Enum):
    """What a fault does. The value is the name used in JSON, YAML and on the CLI."""

    LATENCY = "latency"
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    HANG = "hang"
    CLOSE = "close"
    RESET = "reset"
    HANG_AFTER_HEADERS = "hang_after_headers"
    SLOW_FIRST_TOKEN = "slow_first_token"
    STALL_STREAM = "stall_stream"
    MALFORMED_EVENT = "malformed_event"
    ERROR_EVENT = "error_event"
    CUT_STREAM = "cut_stream"
    NO_TERMINATOR = "no_terminator"

    @classmethod
    def _missing_(cls, value: object) -> FaultKind:
        expected = ", ".join(repr(kind.value) for kind in cls)
        raise ValueError(f"must be one of {expected}")

    @property
    def stream_only(self) -> bool:
        """Faults in a stream apply to streaming requests only (and count only those)."""
        return self in STREAM_KINDS


#: Faults that shape a streamed answer; they never fire on a non-streaming request.
STREAM_KINDS = frozenset(
    {
        FaultKind.SLOW_FIRST_TOKEN,
        FaultKind.STALL_STREAM,
        FaultKind.MALFORMED_EVENT,
        FaultKind.ERROR_EVENT,
        FaultKind.CUT_STREAM,
        FaultKind.NO_TERMINATOR,
    }
)

#: Default ``after_chunks`` when a stream fault does not say.
DEFAULT_AFTER_CHUNKS = 2
#: Default ``retry_after`` of a ``rate_limit`` fault, in seconds.
DEFAULT_RETRY_AFTER = 1.0

_ACTION_FIELDS = ("seconds", "jitter", "status", "body", "headers", "retry_after", "after_chunks")


@attrs.frozen
class _Params:
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    summary: str = ""


def _params(required: str = "", optional: str = "", summary: str = "") -> _Params:
    return _Params(frozenset(required.split()), frozenset(optional.split()), summary)


#: Which action fields each kind takes, and what it does (``--help`` and the docs show this).
KIND_PARAMS: Mapping[FaultKind, _Params] = {
    FaultKind.LATENCY: _params(
        "seconds",
        "jitter",
        "wait SECONDS (+/- a uniform JITTER) before answering; combines with any other fault",
    ),
    FaultKind.ERROR: _params(
        "status",
        "body headers retry_after",
        "answer STATUS with BODY (default: the API's own error body for that status; "
        "a JSON value is sent as JSON, a string verbatim) and extra HEADERS",
    ),
    FaultKind.RATE_LIMIT: _params(
        "",
        "retry_after body headers",
        "answer 429 with the API's rate-limit error and 'retry-after: RETRY_AFTER' "
        f"(default {DEFAULT_RETRY_AFTER:g} s; also 'retry-after-ms')",
    ),
    FaultKind.HANG: _params("", "", "accept the request and never answer"),
    FaultKind.CLOSE: _params("", "", "close the connection (FIN) without answering"),
    FaultKind.RESET: _params("", "", "reset the connection (RST) without answering"),
    FaultKind.HANG_AFTER_HEADERS: _params("", "", "send 200 and the headers, then nothing more"),
    FaultKind.SLOW_FIRST_TOKEN: _params(
        "seconds", "", "stream: send the headers, wait SECONDS, then stream normally"
    ),
    FaultKind.STALL_STREAM: _params(
        "seconds",
        "after_chunks",
        "stream: after AFTER_CHUNKS events, pause SECONDS, then continue normally",
    ),
    FaultKind.MALFORMED_EVENT: _params(
        "",
        "after_chunks",
        "stream: after AFTER_CHUNKS events, send one event whose data is not valid JSON, "
        "then continue normally",
    ),
    FaultKind.ERROR_EVENT: _params(
        "",
        "after_chunks status body",
        "stream: after AFTER_CHUNKS events, send the API's in-stream error event for "
        "STATUS (default 529: overloaded) and end the stream there (Responses API: "
        "'response.failed' for a 5xx, an 'error' event otherwise)",
    ),
    FaultKind.CUT_STREAM: _params(
        "",
        "after_chunks",
        "stream: after AFTER_CHUNKS events, close the connection mid-body",
    ),
    FaultKind.NO_TERMINATOR: _params(
        "",
        "",
        "stream: end the body cleanly but without the terminator ('data: [DONE]' / "
        "'message_stop' / 'response.completed')",
    ),
}


def _opt_float(value: float | None) -> float | None:
    # Python callers write ``seconds=2``; the model (and its JSON) holds floats.
    return None if value is None else float(value)


@attrs.frozen(kw_only=True)
class Window:
    """Seconds after the fault was set: it applies from ``start`` until ``end`` (exclusive)."""

    start: Duration = attrs.field(default=0.0, converter=float)
    end: Period | None = attrs.field(default=None, converter=_opt_float)

    def __attrs_post_init__(self) -> None:
        if self.end is not None and self.end <= self.start:
            raise ValueError("'end' must be after 'start'")

    def contains(self, elapsed: float) -> bool:
        return self.start <= elapsed and (self.end is None or elapsed < self.end)


@attrs.frozen(kw_only=True)
class Flap:
    """Down for ``down`` seconds, up for ``up`` seconds, repeating, starting down."""

    down: Period = attrs.field(converter=float)
    up: Period = attrs.field(converter=float)

    def is_down(self, elapsed: float) -> bool:
        return elapsed % (self.down + self.up) < self.down


def _window(value: Window | tuple[float, float | None] | None) -> Window | None:
    if value is None or isinstance(value, Window):
        return value
    start, end = value
    return Window(start=start, end=end)


@attrs.frozen(kw_only=True, repr=False)
class Fault:
    """One scripted fault. Build it with the classmethods; see the module docstring.

    Selection (all optional):

    * ``path``: only requests to exactly this path (``/v1/chat/completions``);
    * ``model``: only requests for this model (the body's ``model``, or the Azure
      deployment);
    * ``stream``: only streaming (``True``) or only non-streaming (``False``) requests;
      faults of a stream kind always imply ``True``;
    * ``skip``: let the first N requests that match go through;
    * ``times``: fire at most N times (``times=1``: once);
    * ``probability``: fire on this fraction of the matching requests (seeded, so a
      run is reproducible);
    * ``window``: only from ``start`` to ``end`` seconds after the fault was set;
    * ``flapping``: only during the down phases of a down/up cycle.
    """

    kind: FaultKind
    path: UrlPath | None = None
    model: ModelName | None = None
    stream: bool | None = None
    skip: Offset = 0
    times: Count | None = None
    probability: Probability = attrs.field(default=1.0, converter=float)
    window: Window | None = attrs.field(default=None, converter=_window)
    flapping: Flap | None = None
    seconds: Duration | None = attrs.field(default=None, converter=_opt_float)
    jitter: Duration | None = attrs.field(default=None, converter=_opt_float)
    status: Status | None = None
    body: Any = None
    headers: Headers = attrs.field(factory=dict)
    retry_after: Duration | None = attrs.field(default=None, converter=_opt_float)
    after_chunks: Offset | None = None

    def __attrs_post_init__(self) -> None:
        params = KIND_PARAMS[self.kind]
        given = {name for name in _ACTION_FIELDS if getattr(self, name) not in (None, {})}
        extra = sorted(given - params.required - params.optional)
        if extra:
            raise ValueError(
                f"kind {self.kind.value!r} does not take {_names(extra)}"
                f" (it takes {_names(sorted(params.required | params.optional)) or 'nothing'})"
            )
        missing = sorted(params.required - given)
        if missing:
            raise ValueError(f"kind {self.kind.value!r} needs {_names(missing)}")
        if self.stream is False and self.kind.stream_only:
            raise ValueError(
                f"kind {self.kind.value!r} only applies to streams, not 'stream: false'"
            )

    def __repr__(self) -> str:
        """Only what differs from the defaults: ``Fault(kind='error', times=2, status=503)``."""
        shown = [f"kind={self.kind.value!r}"]
        for field in attrs.fields(Fault)[1:]:
            value = getattr(self, field.name)
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()  # type: ignore[call-arg]
            if value != default:
                shown.append(f"{field.name}={value!r}")
        return f"Fault({', '.join(shown)})"

    # --- constructors ---------------------------------------------------------

    @classmethod
    def latency(cls, seconds: float, *, jitter: float | None = None, **selection: Any) -> Fault:
        """Wait ``seconds`` (± a uniform ``jitter``) before the response headers."""
        return cls(kind=FaultKind.LATENCY, seconds=seconds, jitter=jitter, **selection)

    @classmethod
    def error(
        cls,
        status: int = 500,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        **selection: Any,
    ) -> Fault:
        """Answer ``status``. ``body=None`` sends the API's own error body for it."""
        return cls(
            kind=FaultKind.ERROR,
            status=status,
            body=body,
            headers=dict(headers or {}),
            retry_after=retry_after,
            **selection,
        )

    @classmethod
    def overloaded(cls, **selection: Any) -> Fault:
        """Anthropic's 529 ``overloaded_error`` (on the OpenAI side, a 529 server error)."""
        return cls.error(529, **selection)

    @classmethod
    def rate_limit(cls, retry_after: float = DEFAULT_RETRY_AFTER, **selection: Any) -> Fault:
        """429 with the API's rate-limit error body and ``retry-after``."""
        return cls(kind=FaultKind.RATE_LIMIT, retry_after=retry_after, **selection)

    @classmethod
    def hang(cls, **selection: Any) -> Fault:
        """Read the request, never answer (until the client or the fake goes away)."""
        return cls(kind=FaultKind.HANG, **selection)

    @classmethod
    def close(cls, **selection: Any) -> Fault:
        """Close the connection (a clean FIN) before any response byte."""
        return cls(kind=FaultKind.CLOSE, **selection)

    @classmethod
    def reset(cls, **selection: Any) -> Fault:
        """Reset the connection (RST) before any response byte."""
        return cls(kind=FaultKind.RESET, **selection)

    @classmethod
    def hang_after_headers(cls, **selection: Any) -> Fault:
        """Send ``200`` and the headers, then silence."""
        return cls(kind=FaultKind.HANG_AFTER_HEADERS, **selection)

    @classmethod
    def slow_first_token(cls, seconds: float, **selection: Any) -> Fault:
        """Stream: headers at once, the first event after ``seconds``, then the rest."""
        return cls(kind=FaultKind.SLOW_FIRST_TOKEN, seconds=seconds, **selection)

    @classmethod
    def stall_stream(
        cls, seconds: float, *, after_chunks: int = DEFAULT_AFTER_CHUNKS, **selection: Any
    ) -> Fault:
        """Stream: pause ``seconds`` after ``after_chunks`` events, then carry on."""
        return cls(
            kind=FaultKind.STALL_STREAM, seconds=seconds, after_chunks=after_chunks, **selection
        )

    @classmethod
    def malformed_event(
        cls, *, after_chunks: int = DEFAULT_AFTER_CHUNKS, **selection: Any
    ) -> Fault:
        """Stream: one event whose data is not JSON after ``after_chunks`` events."""
        return cls(kind=FaultKind.MALFORMED_EVENT, after_chunks=after_chunks, **selection)

    @classmethod
    def error_event(
        cls,
        status: int = 529,
        *,
        after_chunks: int = DEFAULT_AFTER_CHUNKS,
        body: Any = None,
        **selection: Any,
    ) -> Fault:
        """Stream: the API's error event after ``after_chunks`` events; the stream ends."""
        return cls(
            kind=FaultKind.ERROR_EVENT,
            status=status,
            after_chunks=after_chunks,
            body=body,
            **selection,
        )

    @classmethod
    def cut_stream(cls, *, after_chunks: int = DEFAULT_AFTER_CHUNKS, **selection: Any) -> Fault:
        """Stream: close the connection after ``after_chunks`` events (a broken body)."""
        return cls(kind=FaultKind.CUT_STREAM, after_chunks=after_chunks, **selection)

    @classmethod
    def no_terminator(cls, **selection: Any) -> Fault:
        """Stream: end cleanly without ``data: [DONE]`` / ``message_stop`` / ``response.completed``."""
        return cls(kind=FaultKind.NO_TERMINATOR, **selection)

    @classmethod
    def flap(
        cls,
        *,
        down: float,
        up: float,
        status: int = 503,
        fault: Fault | None = None,
        **selection: Any,
    ) -> Fault:
        """Down for ``down`` seconds (answering ``status``), up for ``up``, repeating.

        ``fault`` flaps another fault instead: ``Fault.flap(down=1, up=1, fault=Fault.hang())``.
        """
        flapping = Flap(down=down, up=up)
        if fault is not None:
            return attrs.evolve(fault, flapping=flapping, **selection)
        return cls.error(status, flapping=flapping, **selection)


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


# --- the provider -----------------------------------------------------------------

#: Models a fake serves unless told otherwise: what examples, docs and SDK tests use.
DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4",
    "gpt-4-turbo",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-3.5-turbo",
    "o3-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "claude-3-7-sonnet-20250219",
    "claude-3-haiku-20240307",
    "claude-3-opus-20240229",
    "claude-sonnet-4-20250514",
    "claude-opus-4-20250514",
)

_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``, or ``ValueError``."""
    m = _LISTEN.match(listen)
    if m is None or int(m["port"]) > 65_535:
        raise ValueError(f"listen: must be HOST:PORT such as 127.0.0.1:8001, not {listen!r}")
    return m["v6"] or m["host"], int(m["port"])


def _tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class FakeProviderSpec:
    """One fake provider: it serves the OpenAI and the Anthropic API on one address.

    * ``api_key``: the credential it requires (OpenAI side: ``Authorization: Bearer
      <key>`` or Azure's ``api-key: <key>``; Anthropic side: ``x-api-key: <key>``,
      or ``Authorization: Bearer <key>`` as the Anthropic SDK 2.x sends it);
      ``None`` accepts any non-empty credential, but one must be sent.
    * ``models``: the models it serves; empty means any name. Either way names
      starting with ``claude`` are served on the Anthropic side only, and names of
      OpenAI's families (``gpt-``, ``o1``/``o3``/``o4``, ``text-embedding-``,
      ``chatgpt``) on the OpenAI side only, so a gateway that sends a model to the
      wrong API gets the 404 the real provider would send.
    * ``faults``: in effect from the start; change them at run time with
      :meth:`FakeProvider.set_faults` or ``PUT /_fake/faults``.
    * ``seed``: seeds ``probability`` and ``jitter``, so a run is reproducible.
    * ``keep_requests``: how many of the latest requests the log keeps.
    """

    name: Name
    listen: Listen = "127.0.0.1:0"
    api_key: Annotated[str, Text(1, 1000)] | None = attrs.field(default=None, repr=False)
    models: tuple[ModelName, ...] = attrs.field(default=DEFAULT_MODELS, converter=_tuple)
    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_tuple)
    seed: int = 0
    keep_requests: Annotated[int, Between(1, 10_000_000)] = 10_000

    def __attrs_post_init__(self) -> None:
        parse_listen(self.listen)

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


# --- JSON ----------------------------------------------------------------------------


def fault_from_json(data: Any, *, loc: str = "fault") -> Fault:
    """A fault from JSON/YAML; a bare kind name (``"hang"``) is a fault without parameters.

    Raises :class:`~trio_gateway.errors.ValidationFailed` naming each problem by path.
    """
    from trio_gateway import serde

    if isinstance(data, str):
        data = {"kind": data}
    return serde.structure(data, Fault, loc=loc)


def faults_from_json(data: Any, *, loc: str = "faults") -> tuple[Fault, ...]:
    """A list of faults (each as in :func:`fault_from_json`)."""
    from trio_gateway import serde

    if isinstance(data, list):
        data = [{"kind": item} if isinstance(item, str) else item for item in data]
    return serde.structure(data, tuple[Fault, ...], loc=loc)


def fault_to_json(fault: Fault) -> dict[str, Any]:
    """``fault`` as JSON, leaving out what is at its default (round-trips)."""
    from trio_gateway import serde

    data: dict[str, Any] = serde.API.unstructure(fault)
    # The API converter masks header values; a fault's response headers are not secrets.
    data["headers"] = dict(fault.headers)
    data["body"] = fault.body
    for field in attrs.fields(Fault):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[call-arg]
        if field.name != "kind" and getattr(fault, field.name) == default:
            del data[field.name]
    return data
