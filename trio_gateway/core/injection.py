"""Fault injection on live traffic: which fault each attempt gets, and how a stream is bent. Sans-IO.

Theory of operation
-------------------
A gateway whose ``fault_injection`` is enabled has one :class:`Injector` per process,
built when the setting changes (never per request). It holds the setting's faults
in a :class:`~trio_gateway.core.faults.FaultPlan`, the fakes' own plan: the same
kinds, the same selection, the same counters. Each *attempt* of a client request is
one request to the plan, described by a :class:`~trio_gateway.core.faults.RequestInfo`
that also names the client's key, the target and the attempt's number.

A request may name a fault for itself with the ``X-Gateway-Fault`` header
(:func:`parse_header`). That fault applies to one attempt, the first, unless it says
otherwise (``target=ID``: the attempt on that target; ``attempts=N``: the first N;
``attempts=all``): a failover then meets no fault, which is what a test of failover
needs. On the attempts it applies to, the named fault is the attempt's only fault
(the configured ones are neither evaluated nor counted there).

:meth:`Injector.decide` returns an :class:`AttemptFaults` (or ``None``: no fault):
a delay and an answer that replaces the provider's, decided before the provider
call; the stream faults are decided when a streamed answer actually starts
(:meth:`AttemptFaults.shape`), so, as with the fakes, a stream fault is never spent
on an attempt that got no stream. :class:`StreamBend` applies a
:class:`~trio_gateway.core.faults.StreamShape` to the provider's SSE bytes, event by
event: bytes in, :data:`Step`\\ s out (bytes to pass on, a pause, a cut, the end).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

from trio_gateway import jsonio
from trio_gateway.config.faults import (
    STREAM_KINDS,
    Fault,
    FaultInjection,
    FaultKind,
)
from trio_gateway.core.faults import (
    END,
    FIRST_TOKEN,
    LATENCY,
    MALFORMED,
    NOTHING,
    PLAIN,
    SLOTS,
    STALL,
    FaultPlan,
    FaultStatistics,
    RequestInfo,
    StreamShape,
)
from trio_gateway.errors import ClientError, Problem, ValidationFailed
from trio_gateway.providers.formats import Api, ApiFormat, responses_error_event, stream_error_event

#: The request header that names a fault (as ASGI gives it: lower-case).
HEADER = "x-gateway-fault"
HEADER_NAME = "X-Gateway-Fault"
MAX_HEADER = 512
#: Header parameters that are no action parameter of the fault.
SELECTION_PARAMS = ("target", "attempts")
#: Action parameters a header may give (a body or headers cannot be written in one).
HEADER_PARAMS = ("status", "seconds", "jitter", "retry_after", "after_chunks")
INJECTED_MESSAGE = "injected by the gateway's fault injection"


# --- the header ------------------------------------------------------------------------


@attrs.frozen
class HeaderFault:
    """A fault a request named for itself, and the attempts it applies to.

    ``attempts``: the first N attempts of the request (``None``: all of them).
    ``target``: only the attempt on this target.
    """

    fault: Fault
    target: str | None = None
    attempts: int | None = 1

    def applies(self, target: str | None, attempt: int) -> bool:
        if self.target is not None and target != self.target:
            return False
        return self.attempts is None or attempt <= self.attempts

    def render(self) -> str:
        """The header value that names this fault (what :func:`parse_header` reads)."""
        fault = self.fault
        parts = [fault.kind.value]
        for name in HEADER_PARAMS:
            value = getattr(fault, name)
            if value is not None:
                parts.append(f"{name}={_number(value)}")
        if self.target is not None:
            parts.append(f"target={self.target}")
        default = None if self.target is not None else 1
        if self.attempts != default:
            parts.append(f"attempts={'all' if self.attempts is None else self.attempts}")
        return "; ".join(parts)


def parse_header(value: str) -> HeaderFault:
    """``X-Gateway-Fault`` as a :class:`HeaderFault`, or :class:`ClientError` saying why not.

    ``KIND[; NAME=VALUE]...``: a fault kind (``hang``, ``cut_stream``...) or an HTTP
    status (``503``: an ``error`` with that status), then the kind's parameters
    (``seconds``, ``jitter``, ``status``, ``retry_after``, ``after_chunks``) and the
    selection (``target=ID``, ``attempts=N`` or ``attempts=all``). Checked by the same
    converter as a fault in the configuration (``status: must be between 200 and 599``).
    """
    if len(value) > MAX_HEADER:
        raise _bad(f"is longer than {MAX_HEADER} characters")
    head, *rest = (part.strip() for part in value.split(";"))
    kind = head.lower()
    if not kind:
        raise _bad("names no fault: give a fault kind (hang, error...) or an HTTP status")
    data: dict[str, Any] = {"kind": "error", "status": int(kind)} if kind.isdigit() else {}
    if not data:
        data["kind"] = kind
    problems: list[Problem] = []
    target: str | None = None
    attempts: int | None = 1
    attempts_given = False
    seen: set[str] = set()
    for part in rest:
        if not part:
            continue  # a trailing ';'
        name, sep, raw = (p.strip() for p in part.partition("="))
        name = name.lower()
        if not sep or not name or not raw:
            problems.append(Problem(name or "$", f"{part!r}: parameters are written NAME=VALUE"))
        elif name in seen or (name == "status" and "status" in data):
            problems.append(Problem(name, "is given twice"))
        elif name == "target":
            target = raw
        elif name == "attempts":
            attempts_given = True
            if raw.lower() == "all":
                attempts = None
            elif raw.isdigit() and 1 <= int(raw) <= 100:
                attempts = int(raw)
            else:
                problems.append(Problem(name, "must be a number from 1 to 100, or 'all'"))
        elif name in HEADER_PARAMS:
            data[name] = _value(raw)
        else:
            known = ", ".join((*HEADER_PARAMS, *SELECTION_PARAMS))
            problems.append(Problem(name, f"is not a parameter of a named fault ({known})"))
        seen.add(name)
    if problems:
        raise _bad_problems(problems)
    from trio_gateway import serde  # serde imports the configuration model, which imports this

    try:
        fault = serde.structure(data, Fault)
    except ValidationFailed as exc:
        named = [Problem(repr(head), p.msg) if p.loc == "kind" else p for p in exc.details]
        raise _bad_problems(named) from None
    if target is not None and not attempts_given:
        attempts = None  # the attempt on that target, whenever it comes
    return HeaderFault(fault, target, attempts)


def check_named(named: HeaderFault, *, stream: bool, targets: Iterable[str]) -> None:
    """Refuse a named fault that could never apply to this request (a client error)."""
    if named.fault.kind in STREAM_KINDS and not stream:
        raise _bad(
            f"{named.fault.kind.value!r} bends a streamed answer: send it with a streaming "
            "request ('stream': true)"
        )
    if named.target is not None and named.target not in set(targets):
        raise _bad(f"target={named.target!r}: no target of this request's upstream has this id")


def _value(raw: str) -> Any:
    """A parameter's value: a number when it reads as one (the converter says if it must)."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _bad(message: str) -> ClientError:
    return ClientError(f"invalid {HEADER_NAME} header: {message}")


def _bad_problems(problems: list[Problem]) -> ClientError:
    shown = "; ".join(f"{p.msg}" if p.loc in ("", "$") else f"{p.loc}: {p.msg}" for p in problems)
    return _bad(shown)


# --- decisions ----------------------------------------------------------------------------


@attrs.define(eq=False)
class AttemptFaults:
    """The faults of one attempt: a delay and an answer now, stream faults once a stream starts.

    ``fired`` lists what was decided for the attempt, in order (stream faults join
    it when :meth:`shape` is called). Owned by the attempt; not thread-safe.
    """

    delay: float = 0.0
    response: Fault | None = None
    fired: list[Fault] = attrs.field(factory=list)
    #: A named (header) fault of a stream kind.
    named_stream: Fault | None = None
    #: The plan to ask for the stream faults, and what to ask it.
    plan: FaultPlan | None = None
    info: RequestInfo | None = None
    _shaped: bool = False

    @classmethod
    def named(cls, fault: Fault, plan: FaultPlan) -> AttemptFaults:
        """The attempt gets the fault a request named (``plan`` draws its jitter)."""
        slot = SLOTS[fault.kind]
        if slot == LATENCY:
            return cls(delay=plan.delay(fault), fired=[fault])
        if fault.kind in STREAM_KINDS:
            return cls(named_stream=fault)
        return cls(response=fault, fired=[fault])

    def shape(self, now: float) -> StreamShape:
        """How to bend this attempt's streamed answer, decided once, as it starts."""
        if self._shaped:
            return PLAIN
        self._shaped = True
        if self.named_stream is not None:
            shape = shape_of(self.named_stream)
        elif self.plan is not None and self.info is not None:
            shape = self.plan.decide_stream(self.info, now=now)
        else:
            return PLAIN
        self.fired += shape.fired
        return shape

    def describe(self) -> str | None:
        """What the attempt trail says of it: ``hang``, ``latency+error``; ``None``: nothing fired."""
        if not self.fired:
            return None
        return "+".join(fault.kind.value for fault in self.fired)


def shape_of(fault: Fault) -> StreamShape:
    """The stream shape of one stream fault."""
    slot = SLOTS[fault.kind]
    return StreamShape(
        first_token_delay=(fault.seconds or 0.0) if slot == FIRST_TOKEN else 0.0,
        stall=fault if slot == STALL else None,
        malformed=fault if slot == MALFORMED else None,
        end=fault if slot == END else None,
        fired=(fault,),
    )


@attrs.frozen
class InjectorStatistics:
    """A snapshot: each configured fault with its counters, and the named faults applied."""

    faults: tuple[FaultStatistics, ...]
    #: Attempts a fault named by ``X-Gateway-Fault`` applied to.
    header_faults: int
    expires: float


@attrs.define(eq=False)
class Injector:
    """One gateway's fault injection: its plan and counters. See the module docstring.

    Times are in one clock, passed in as ``now`` (the runtime uses Trio's):
    ``origin`` is when the setting's faults were set (``window`` and ``flapping``
    count from it), ``expires`` when the setting stops applying.
    """

    setting: FaultInjection
    plan: FaultPlan
    expires: float = float("inf")
    header_faults: int = 0

    @classmethod
    def of(
        cls, setting: FaultInjection, *, origin: float, expires: float = float("inf")
    ) -> Injector:
        return cls(setting, FaultPlan.of(setting.faults, now=origin, seed=setting.seed), expires)

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def decide(
        self, info: RequestInfo, named: HeaderFault | None, now: float
    ) -> AttemptFaults | None:
        """The faults of one attempt; ``None`` when none applies (nothing to do)."""
        if now >= self.expires:
            return None
        if named is not None and named.applies(info.target, info.attempt):
            self.header_faults += 1
            return AttemptFaults.named(named.fault, self.plan)
        decision = self.plan.decide(info, now=now)
        streams = info.stream and decision.response is None and self.plan.shapes_streams
        if decision is NOTHING and not streams:
            return None
        return AttemptFaults(
            delay=decision.delay,
            response=decision.response,
            fired=list(decision.fired),
            plan=self.plan if streams else None,
            info=info if streams else None,
        )

    def statistics(self) -> InjectorStatistics:
        return InjectorStatistics(self.plan.statistics(), self.header_faults, self.expires)


# --- bending a stream ---------------------------------------------------------------------


@attrs.frozen
class Pause:
    seconds: float


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Break the connection here (``cut_stream``).
CUT = _Marker("CUT")
#: End the body cleanly here (after an ``error_event``, or instead of the terminator).
STOP = _Marker("STOP")

Step = bytes | Pause | _Marker

_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_TERMINATOR_TYPES = frozenset({"message_stop", "response.completed", "response.incomplete"})


class StreamBend:
    """Applies a :class:`StreamShape` to a provider's SSE body. Sans-IO, one per stream.

    :meth:`feed` takes the body's bytes as they come and returns the steps to take:
    ``bytes`` to pass on (whole events, as the provider wrote them), a
    :class:`Pause`, :data:`CUT` or :data:`STOP`. Positions count the events that
    carry data, before the terminator (the fakes count the same way); a fault whose
    position the stream never reaches applies at its terminator, or at its end.
    :meth:`release` gives back what is buffered, for a stream whose faults were
    switched off meanwhile (the rest then passes untouched).
    """

    def __init__(self, shape: StreamShape, api: Api) -> None:
        self._api = api
        self._buffer = bytearray()
        self._position = 0
        self._first_delay = shape.first_token_delay
        self._stall, self._stall_at = shape.stall, shape.stall_at
        self._malformed, self._malformed_at = shape.malformed, shape.malformed_at
        self._end = shape.end
        self._end_at = shape.end_at
        self.done = False

    def feed(self, chunk: bytes) -> list[Step]:
        steps: list[Step] = self._start()
        self._buffer += chunk
        while not self.done:
            match = _BLANK_LINE.search(self._buffer)
            if match is None:
                break
            block = bytes(self._buffer[: match.end()])
            del self._buffer[: match.end()]
            steps += self._event(block)
        return steps

    def finish(self) -> list[Step]:
        """The provider's body ended: what is left, and the faults it never reached."""
        steps: list[Step] = self._start()
        if self.done:
            return steps
        if self._buffer:
            steps.append(bytes(self._buffer))
            self._buffer.clear()
        steps += self._due(at_end=True, block=None)
        return steps

    def release(self) -> bytes:
        """Stop bending: the bytes held back so far (a partial event)."""
        self.done = True
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _start(self) -> list[Step]:
        if self._first_delay:
            delay, self._first_delay = self._first_delay, 0.0
            return [Pause(delay)]
        return []

    def _event(self, block: bytes) -> list[Step]:
        name, data = _fields(block)
        if data is None:
            return [block]  # a comment or keep-alive: no position of its own
        terminator = data.strip() == "[DONE]" or name in _TERMINATOR_TYPES
        steps = self._due(at_end=terminator, block=block)
        if self.done:
            return steps
        if terminator and self._end is not None and self._end.kind is FaultKind.NO_TERMINATOR:
            self.done = True
            return [*steps, STOP]
        steps.append(block)
        if not terminator:
            self._position += 1
        return steps

    def _due(self, *, at_end: bool, block: bytes | None) -> list[Step]:
        """The faults due before the event at the current position (all of them at the end)."""
        steps: list[Step] = []
        here = self._position

        def due(at: int | None) -> bool:
            return at is not None and (at == here or (at_end and at > here))

        if self._stall is not None and due(self._stall_at):
            steps.append(Pause(self._stall.seconds or 0.0))
            self._stall = None
        if self._malformed is not None and due(self._malformed_at):
            steps.append(_malformed(block))
            self._malformed = None
        end = self._end
        if end is not None and end.kind is not FaultKind.NO_TERMINATOR and due(self._end_at):
            self._end = None
            self.done = True
            if end.kind is FaultKind.CUT_STREAM:
                steps.append(CUT)
            else:
                steps += [_error_event(self._api, end, here), STOP]
        return steps


def _fields(block: bytes) -> tuple[str | None, str | None]:
    """An event block's type and data (``None``: no data line)."""
    name = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return name, "\n".join(data) if data else None


def _malformed(block: bytes | None) -> bytes:
    """``block`` with its data cut in half: not valid JSON any more (the fakes' way)."""
    name, data = _fields(block) if block is not None else (None, None)
    data = data or '{"type": "'
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {data[: max(1, len(data) // 2)]}\n\n".encode()


def _error_event(api: Api, fault: Fault, position: int) -> bytes:
    """The provider API's in-stream error for an ``error_event`` fault."""
    status = fault.status or 529
    message = f"{INJECTED_MESSAGE} (HTTP {status})"
    if fault.body is None:
        if api is Api.RESPONSES:
            return responses_error_event(None, message, sequence_number=position, status=status)
        return stream_error_event(api.format, None, message, status=status)
    data = fault.body if isinstance(fault.body, str) else jsonio.dumps(fault.body)
    named = api.format is ApiFormat.ANTHROPIC or api is Api.RESPONSES
    head = "event: error\n" if named else ""
    return f"{head}data: {data}\n\n".encode()


__all__ = [
    "CUT",
    "HEADER",
    "STOP",
    "AttemptFaults",
    "HeaderFault",
    "Injector",
    "InjectorStatistics",
    "Pause",
    "StreamBend",
    "check_named",
    "parse_header",
    "shape_of",
]
