"""The fault model: what a fake provider injects, and what a gateway injects into live traffic.

Plain frozen attrs classes, structured from JSON/YAML by :mod:`trio_gateway.serde`
(so a bad fault in a configuration file, a ``PUT /_fake/faults`` body or an admin
``PUT .../faults`` body is reported by path, ``faults[1].status``), and written in
Python with the :class:`Fault` constructors::

    Fault.error(503, times=2)
    Fault.rate_limit(retry_after=3, model="gpt-4o-mini")
    Fault.cut_stream(after_chunks=3, path="/v1/messages")
    Fault.flap(down=2, up=3)

A fault is one **action** (its ``kind`` and the parameters of that kind) plus a
**selection**: which requests it may apply to (``path``, ``model``, ``stream``) and
which of those it does apply to (``skip`` the first N, at most ``times``, with
``probability``, inside a time ``window``, during the down phases of
``flapping``). :mod:`trio_gateway.core.faults` decides, request by request, which
faults fire.

The same language describes faults on live traffic (:class:`FaultInjection`, a
gateway's opt-in setting): an :class:`InjectedFault` is a :class:`Fault` that may also
select by API key, by target and by attempt; the gateway applies it in front of the
real provider call (:mod:`trio_gateway.runtime.injection`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any

import attrs

from trio_gateway.config.types import Between, Headers, ModelName, Name, Text, UrlPath

# --- constrained types ---------------------------------------------------------

Duration = Annotated[float, Between(0, 86_400)]
Period = Annotated[float, Between(0, 86_400, lo_open=True)]
Status = Annotated[int, Between(200, 599)]
Count = Annotated[int, Between(1, 1_000_000_000)]
Offset = Annotated[int, Between(0, 1_000_000_000)]
Probability = Annotated[float, Between(0, 1, lo_open=True)]


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
        for field in attrs.fields(type(self))[1:]:
            value = getattr(self, field.name)
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()  # type: ignore[call-arg]
            if value != default:
                shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

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


# --- faults on live traffic ----------------------------------------------------------

#: Faults one gateway's setting may hold.
MAX_INJECTED_FAULTS = 100
TargetId = Annotated[str, Text(1, 64)]


@attrs.frozen(kw_only=True, repr=False)
class InjectedFault(Fault):
    """A fault a gateway injects into its own traffic, in front of the provider call.

    The selection of a :class:`Fault` (``path`` and ``model`` of the client's request,
    ``stream``, ``skip``, ``times``, ``probability``, ``window``, ``flapping``), plus:

    * ``keys``: only requests made with one of these API keys (by id or by name);
    * ``targets``: only attempts on one of these targets (by id);
    * ``attempts``: only the first N attempts of a request (``1``: failover then
      meets no fault).

    Each *attempt* is one request to the fault: ``skip``, ``times`` and
    ``probability`` count attempts (the gateway's own health checks of a target
    included, unless the fault selects by key or path).
    """

    keys: tuple[Name, ...] = attrs.field(default=(), converter=tuple)
    targets: tuple[TargetId, ...] = attrs.field(default=(), converter=tuple)
    attempts: Count | None = None


@attrs.frozen(kw_only=True)
class FaultInjection:
    """A gateway's fault injection on live traffic: off unless an admin enables it.

    * ``enabled``: nothing is injected, and no request may name a fault, unless set;
    * ``header_faults``: a request may name a fault for itself with the
      ``X-Gateway-Fault`` header (``enabled`` must be set too);
    * ``faults``: injected into the gateway's traffic as they select;
    * ``expires_at``: the whole setting stops applying at this time (a forgotten game
      day ends by itself);
    * ``seed``: seeds ``probability`` and ``jitter`` (``None``: a fresh seed);
    * ``since``: when ``faults`` (or ``seed``) were last set, or injection enabled,
      assigned by the gateway: ``window`` and ``flapping`` count from then.
    """

    enabled: bool = False
    header_faults: bool = True
    faults: tuple[InjectedFault, ...] = attrs.field(default=(), converter=tuple)
    expires_at: datetime | None = None
    seed: Annotated[int, Between(0, 2**63 - 1)] | None = None
    since: datetime | None = None

    def __attrs_post_init__(self) -> None:
        if len(self.faults) > MAX_INJECTED_FAULTS:
            raise ValueError(
                f"has {len(self.faults)} faults: at most {MAX_INJECTED_FAULTS} "
                "(the 'faults' of one gateway)"
            )

    def same_as(self, other: FaultInjection) -> bool:
        """Equal but for ``since``."""
        return attrs.evolve(self, since=other.since) == other

    def same_clock(self, other: FaultInjection) -> bool:
        """Do this setting's faults count on from ``other``'s ``since``?

        Yes unless the faults or the seed changed, or injection was enabled now:
        ``header_faults`` and ``expires_at`` are switches, not a new game.
        """
        return (
            self.faults == other.faults
            and self.seed == other.seed
            and (other.enabled or not self.enabled)
        )


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

    return serde.API.unstructure(fault)


def compact(fault: Fault, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (``fault`` unstructured) without the fields at their default."""
    data["headers"] = dict(fault.headers)  # response headers of a fault are no secrets
    data["body"] = fault.body
    for field in attrs.fields(type(fault)):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()  # type: ignore[call-arg]
        if field.name != "kind" and getattr(fault, field.name) == default:
            del data[field.name]
    return data
