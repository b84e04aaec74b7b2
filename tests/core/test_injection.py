"""Fault injection on live traffic, sans-IO: the header, the decisions, the stream bending."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_gateway.config.faults import (
    KIND_PARAMS,
    STREAM_KINDS,
    Fault,
    FaultInjection,
    FaultKind,
    InjectedFault,
)
from trio_gateway.core.faults import PLAIN, RequestInfo, selects
from trio_gateway.core.injection import (
    CUT,
    HEADER_PARAMS,
    STOP,
    AttemptFaults,
    HeaderFault,
    Injector,
    Pause,
    StreamBend,
    check_named,
    parse_header,
    shape_of,
)
from trio_gateway.errors import ClientError
from trio_gateway.providers.formats import Api

# --- the header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hang", HeaderFault(Fault.hang())),
        ("HANG", HeaderFault(Fault.hang())),
        ("503", HeaderFault(Fault.error(503))),
        ("error; status=529", HeaderFault(Fault.error(529))),
        ("latency; seconds=2.5", HeaderFault(Fault.latency(2.5))),
        ("rate_limit; retry_after=3", HeaderFault(Fault.rate_limit(retry_after=3))),
        ("cut_stream; after_chunks=1;", HeaderFault(Fault.cut_stream(after_chunks=1))),
        ("close; attempts=2", HeaderFault(Fault.close(), attempts=2)),
        ("reset; attempts=all", HeaderFault(Fault.reset(), attempts=None)),
        # A target: the attempt on it, whenever it comes.
        ("hang ; target=t-1", HeaderFault(Fault.hang(), target="t-1", attempts=None)),
        ("hang; target=t-1; attempts=1", HeaderFault(Fault.hang(), target="t-1", attempts=1)),
    ],
)
def test_header_values(value: str, expected: HeaderFault) -> None:
    assert parse_header(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "names no fault"),
        ("explode", "'explode': must be one of 'latency'"),
        ("99", "status: must be between 200 and 599"),
        ("latency", "kind 'latency' needs 'seconds'"),
        ("hang; seconds=1", "kind 'hang' does not take 'seconds'"),
        ("latency; seconds=soon", "seconds: must be a number, not a string"),
        ("latency; seconds=-1", "seconds: must be between 0 and 86400"),
        ("503; status=500", "status: is given twice"),
        ("hang; body=x", "body: is not a parameter of a named fault"),
        ("hang; attempts=0", "attempts: must be a number from 1 to 100, or 'all'"),
        ("hang; target", "parameters are written NAME=VALUE"),
        ("hang; " + "x" * 600, "is longer than 512 characters"),
    ],
)
def test_bad_header_values_say_why(value: str, says: str) -> None:
    with pytest.raises(ClientError) as caught:
        parse_header(value)
    assert caught.value.status == 400
    assert caught.value.message.startswith("invalid X-Gateway-Fault header: ")
    assert says in caught.value.message


_IDS = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=36)
_NUMBERS = {
    "status": st.integers(200, 599),
    "seconds": st.floats(0, 86_400, allow_nan=False),
    "jitter": st.floats(0, 86_400, allow_nan=False),
    "retry_after": st.floats(0, 86_400, allow_nan=False),
    "after_chunks": st.integers(0, 1_000_000),
}


@st.composite
def header_faults(draw: st.DrawFn) -> HeaderFault:
    kind = draw(st.sampled_from(list(FaultKind)))
    params = KIND_PARAMS[kind]
    fields = {}
    for name in HEADER_PARAMS:
        if name in params.required or (name in params.optional and draw(st.booleans())):
            fields[name] = draw(_NUMBERS[name])
    if "body" in params.required or "headers" in params.required:  # pragma: no cover
        raise AssertionError("a header cannot give these")
    target = draw(st.none() | _IDS)
    attempts = draw(st.none() | st.integers(1, 100))
    return HeaderFault(Fault(kind=kind, **fields), target, attempts)


@given(header_faults())
def test_a_rendered_header_reads_back_as_it_was(named: HeaderFault) -> None:
    assert parse_header(named.render()) == named


def test_a_named_fault_must_fit_its_request() -> None:
    with pytest.raises(ClientError, match="send it with a streaming request"):
        check_named(parse_header("cut_stream"), stream=False, targets=["a"])
    check_named(parse_header("cut_stream"), stream=True, targets=["a"])
    with pytest.raises(ClientError, match="no target of this request's upstream has this id"):
        check_named(parse_header("hang; target=b"), stream=False, targets=["a"])
    check_named(parse_header("hang; target=a"), stream=False, targets=["a"])


# --- selection and decisions --------------------------------------------------------------


def info(
    attempt: int = 1,
    target: str = "a",
    key: tuple[str | None, str | None] = ("k1", "app"),
    stream: bool = False,
    path: str | None = "/v1/chat/completions",
) -> RequestInfo:
    return RequestInfo(path, "gpt-4o-mini", stream, key[0], key[1], target, attempt)


def test_an_injected_fault_selects_by_key_target_and_attempt() -> None:
    by_name = InjectedFault.hang(keys=["app"])
    by_id = InjectedFault.hang(keys=["k1"])
    assert selects(by_name, info()) and selects(by_id, info())
    assert not selects(by_name, info(key=("k2", "other")))
    assert not selects(by_name, info(key=(None, None)))  # a public rule, or a health check
    on_b = InjectedFault.hang(targets=["b"])
    assert selects(on_b, info(target="b")) and not selects(on_b, info(target="a"))
    first = InjectedFault.hang(attempts=1)
    assert selects(first, info(attempt=1)) and not selects(first, info(attempt=2))
    # The fakes' selection still applies, and a plain Fault knows nothing of keys.
    assert not selects(InjectedFault.hang(path="/v1/messages"), info())
    assert not selects(InjectedFault.hang(path="/v1/chat/completions"), info(path=None))
    assert selects(Fault.hang(), info(key=(None, None)))


def injector(*faults: Fault, seed: int = 0, expires: float = float("inf")) -> Injector:
    setting = FaultInjection(enabled=True, faults=faults, seed=seed)
    return Injector.of(setting, origin=0.0, expires=expires)


def test_a_named_fault_applies_to_the_first_attempt_only() -> None:
    it = injector()
    named = parse_header("hang")
    first = it.decide(info(attempt=1), named, now=1.0)
    assert first is not None and first.response == Fault.hang()
    assert first.describe() == "hang"
    assert it.decide(info(attempt=2, target="b"), named, now=1.0) is None
    assert it.statistics().header_faults == 1


def test_a_named_fault_with_a_target_applies_to_that_target_only() -> None:
    it = injector()
    named = parse_header("503; target=b")
    assert it.decide(info(attempt=1, target="a"), named, now=1.0) is None
    second = it.decide(info(attempt=2, target="b"), named, now=1.0)
    assert second is not None and second.response == Fault.error(503)


def test_a_named_fault_replaces_the_configured_ones_on_its_attempt() -> None:
    it = injector(InjectedFault.error(500))
    named = parse_header("hang")
    assert it.decide(info(attempt=1), named, now=1.0).response == Fault.hang()
    assert it.statistics().faults[0].matched == 0  # not even evaluated
    assert it.decide(info(attempt=2), named, now=1.0).response == InjectedFault.error(500)


def test_configured_faults_count_attempts() -> None:
    it = injector(InjectedFault.error(503, times=2, targets=["a"]))
    decided = [it.decide(info(attempt=n, target=t), None, now=1.0) for n, t in enumerate("abab")]
    assert [d is not None for d in decided] == [True, False, True, False]
    assert it.decide(info(target="a"), None, now=1.0) is None  # times=2: spent
    (stats,) = it.statistics().faults
    assert (stats.matched, stats.fired) == (3, 2)


def test_a_percentage_is_drawn_from_the_seed() -> None:
    def draws(seed: int) -> list[bool]:
        it = injector(InjectedFault.error(503, probability=0.3), seed=seed)
        return [it.decide(info(), None, now=1.0) is not None for _ in range(200)]

    assert draws(7) == draws(7)
    assert 30 <= sum(draws(7)) <= 90


def test_windows_count_from_the_origin_and_nothing_applies_once_expired() -> None:
    it = injector(InjectedFault.hang(window=(10, 20)), expires=100.0)
    assert it.decide(info(), None, now=5.0) is None
    assert it.decide(info(), None, now=15.0) is not None
    assert it.decide(info(), None, now=25.0) is None
    it = injector(InjectedFault.hang(), expires=100.0)
    assert it.decide(info(), parse_header("reset"), now=100.0) is None
    assert it.decide(info(), None, now=100.0) is None


def test_stream_faults_are_decided_when_the_stream_starts() -> None:
    it = injector(InjectedFault.latency(1), InjectedFault.cut_stream(after_chunks=3))
    whole = it.decide(info(stream=False), None, now=1.0)
    assert whole is not None and whole.plan is None  # no stream: no stream fault to spend
    streamed = it.decide(info(stream=True), None, now=1.0)
    assert streamed is not None and streamed.delay == 1.0
    assert it.statistics().faults[1].matched == 0  # not yet: the provider may answer 503
    shape = streamed.shape(now=1.5)
    assert shape.end == InjectedFault.cut_stream(after_chunks=3)
    assert streamed.describe() == "latency+cut_stream"
    assert streamed.shape(now=2.0).end is None  # once per attempt
    assert it.statistics().faults[1].fired == 1


def test_a_named_latency_draws_its_jitter_and_a_named_stream_fault_waits_for_its_stream() -> None:
    it = injector(seed=3)
    delays = {it.decide(info(), parse_header("latency; seconds=1; jitter=0.5"), 1.0).delay}
    delays |= {it.decide(info(), parse_header("latency; seconds=1; jitter=0.5"), 1.0).delay}
    assert len(delays) == 2 and all(0.5 <= d <= 1.5 for d in delays)
    named = it.decide(info(stream=True), parse_header("no_terminator"), 1.0)
    assert named is not None and named.describe() is None  # nothing happened yet
    assert named.shape(1.0).end == Fault.no_terminator()
    assert named.describe() == "no_terminator"


# --- bending a stream ----------------------------------------------------------------------

OPENAI = [
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"choices":[{"delta":{"content":" there"}}]}\n\n',
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]
ANTHROPIC = [
    b'event: message_start\ndata: {"type":"message_start"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"Hi"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta"}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def bend(fault: Fault | None, events: list[bytes], api: Api = Api.CHAT) -> list:
    """The steps for ``events`` fed whole, bytes merged."""
    bender = StreamBend(shape_of(fault) if fault is not None else PLAIN, api)
    return _merge(bender.feed(b"".join(events)) + bender.finish())


def _merge(steps: list) -> list:
    merged: list = []
    for step in steps:
        if isinstance(step, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += step
        else:
            merged.append(step)
    return merged


def test_an_unbent_stream_passes_as_it_came() -> None:
    assert bend(None, OPENAI) == [b"".join(OPENAI)]


def test_cut_after_chunks() -> None:
    # Positions count data events: the keep-alive comment has none of its own (it
    # passes at once).
    assert bend(Fault.cut_stream(after_chunks=2), OPENAI) == [b"".join(OPENAI[:3]), CUT]
    assert bend(Fault.cut_stream(after_chunks=3), OPENAI) == [b"".join(OPENAI[:4]), CUT]
    # Past the end: at the terminator, as the fakes clamp it.
    assert bend(Fault.cut_stream(after_chunks=50), OPENAI) == [b"".join(OPENAI[:5]), CUT]


def test_error_event_in_each_dialect() -> None:
    body, stop = bend(Fault.error_event(after_chunks=1), OPENAI)
    assert body.startswith(OPENAI[0]) and stop is STOP
    error = json.loads(body.removeprefix(OPENAI[0]).removeprefix(b"data: "))
    assert error["error"]["message"].startswith("injected by the gateway's fault injection")
    fault = Fault.error_event(status=529, after_chunks=2)
    body, stop = bend(fault, ANTHROPIC, Api.MESSAGES)
    assert body.startswith(b"".join(ANTHROPIC[:2])) and stop is STOP
    name, data = body.removeprefix(b"".join(ANTHROPIC[:2])).split(b"\n", 1)
    assert name == b"event: error"
    assert json.loads(data.removeprefix(b"data: "))["error"]["type"] == "overloaded_error"
    custom = bend(Fault.error_event(after_chunks=0, body={"error": "x"}), OPENAI)
    assert custom == [b'data: {"error":"x"}\n\n', STOP]


def test_malformed_event_then_the_rest() -> None:
    steps = bend(Fault.malformed_event(after_chunks=1), OPENAI)
    (body,) = steps
    assert body.startswith(OPENAI[0]) and body.endswith(b"".join(OPENAI[1:]))
    bad = body[len(OPENAI[0]) : -len(b"".join(OPENAI[1:]))]
    with pytest.raises(ValueError):
        json.loads(bad.removeprefix(b"data: ").strip())


def test_no_terminator_and_pauses() -> None:
    assert bend(Fault.no_terminator(), OPENAI) == [b"".join(OPENAI[:5]), STOP]
    assert bend(Fault.no_terminator(), ANTHROPIC, Api.MESSAGES) == [
        b"".join(ANTHROPIC[:3]),
        STOP,
    ]
    assert bend(Fault.stall_stream(4, after_chunks=1), OPENAI) == [
        OPENAI[0],
        Pause(4.0),
        b"".join(OPENAI[1:]),
    ]
    assert bend(Fault.slow_first_token(9), OPENAI) == [Pause(9.0), b"".join(OPENAI)]


def test_release_hands_back_what_was_held() -> None:
    bender = StreamBend(shape_of(Fault.cut_stream(after_chunks=5)), Api.CHAT)
    assert bender.feed(OPENAI[0] + OPENAI[1][:10]) == [OPENAI[0]]
    assert bender.release() == OPENAI[1][:10]
    assert bender.done


_STREAM_FAULTS = st.sampled_from(
    [
        Fault.cut_stream(after_chunks=1),
        Fault.cut_stream(after_chunks=9),
        Fault.error_event(after_chunks=2),
        Fault.malformed_event(after_chunks=3),
        Fault.no_terminator(),
        Fault.stall_stream(2, after_chunks=2),
        Fault.slow_first_token(1),
    ]
)


@given(_STREAM_FAULTS, st.lists(st.integers(1, 400), max_size=12), st.booleans())
def test_however_the_bytes_arrive_the_stream_is_bent_the_same(
    fault: Fault, cuts: list[int], crlf: bool
) -> None:
    events = [e.replace(b"\n", b"\r\n") for e in OPENAI] if crlf else OPENAI
    body = b"".join(events)
    whole = bend(fault, events)
    bender = StreamBend(shape_of(fault), Api.CHAT)
    steps: list = []
    at = 0
    for cut in sorted(set(cuts)):
        if bender.done:
            break
        steps += bender.feed(body[at:cut])
        at = cut
    if not bender.done:
        steps += bender.feed(body[at:])
        steps += bender.finish()
    assert _merge(steps) == whole
    assert fault.kind in STREAM_KINDS


def test_attempt_faults_describe_what_fired_in_order() -> None:
    faults = AttemptFaults(delay=1.0, response=Fault.hang(), fired=[Fault.latency(1), Fault.hang()])
    assert faults.describe() == "latency+hang"
    assert AttemptFaults().describe() is None


@given(
    st.lists(_IDS, min_size=1, max_size=8, unique=True),
    st.none() | st.integers(1, 100),
    st.booleans(),
)
def test_a_named_fault_applies_to_the_attempts_it_names_and_no_other(
    targets: list[str], attempts: int | None, pick: bool
) -> None:
    target = targets[-1] if pick else None
    it = injector(InjectedFault.error(500))
    named = HeaderFault(Fault.hang(), target, attempts)
    decided = [
        it.decide(info(attempt=n, target=t), named, now=1.0) for n, t in enumerate(targets, start=1)
    ]
    hit = [d is not None and d.response == Fault.hang() for d in decided]
    expected = [
        (target is None or t == target) and (attempts is None or n <= attempts)
        for n, t in enumerate(targets, start=1)
    ]
    assert hit == expected
    # Every other attempt met the configured fault instead.
    assert all(
        d is not None and (h or d.response == InjectedFault.error(500))
        for d, h in zip(decided, hit, strict=True)
    )
