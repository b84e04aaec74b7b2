"""The dispatcher: one per upstream. Picks targets, sends them jobs, fails over.

Theory of operation
-------------------
:meth:`Dispatcher.exchange` serves one client request. It computes the request's
deadline once (``request_timeout`` from now); every attempt runs under
``min(deadline, attempt start + first_byte_timeout)`` until its first byte. An
attempt is: ask the plan (:mod:`trio_gateway.core.routing`) for a target and
model, take a breaker ticket, submit a :class:`~trio_gateway.runtime.target.Job`
to that target's actor, and read the job's reply channel.

* **First byte.** For a whole answer, the provider's response headers: once they
  are in, the body may take until the deadline. For a stream, its first *content*
  event (the actor tells content from metadata and keep-alives): until then the
  client has been sent nothing and another target can still be tried.
* A failure before that (connect error, timeout, 5xx, 408, 429, a stream that
  breaks or reports an error before its first token, an answer that does not
  translate) fails over to the next eligible target: same tier first, then the
  next, each target at most once, at most ``max_attempts`` attempts.
* A 4xx other than 408/429 is the client's own error: relayed, no failover.
* When the deadline rather than the target's own budget ends an attempt, the
  attempt is charged to nobody (``deadline`` in the trail).
* A committed stream cannot fail over: a failure ends it with an error event in
  the client's dialect, never silently. Only content resets its idle timer.
  So does the runtime's ``end_streams`` signal (shutdown's last moment).
* When the client leaves, the request's task is cancelled; ``finally`` blocks
  cancel the running job, which aborts the upstream call.

Every response, success or error, streamed or not, carries ``X-Selected-*`` for
the last target tried, ``X-Request-Id`` and the attempt trail.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway import jsonio
from trio_gateway.config.models import ModelFallback, Upstream
from trio_gateway.core.failover import Attempt, Outcome, Verdict, render_trail, status_verdict
from trio_gateway.core.health import BreakerPolicy
from trio_gateway.core.routing import Choice, ModelNotServed, TargetRoute, UpstreamPlan
from trio_gateway.errors import ClientError, GatewayError
from trio_gateway.providers import translate
from trio_gateway.providers.formats import ApiFormat, error_body
from trio_gateway.providers.passthrough import PassthroughStream
from trio_gateway.runtime.ending import EndStreams
from trio_gateway.runtime.target import (
    Answer,
    AttemptFailed,
    Job,
    Meta,
    Reply,
    StreamEnd,
    StreamStart,
    TargetActor,
)

log = logging.getLogger("trio_gateway.dispatch")

REPLY_BUFFER = 32
#: Outcomes of targets skipped without being asked: they do not use up an attempt.
SKIPS = frozenset({Outcome.OVERLOADED.value, Outcome.UNTRANSLATABLE.value})
#: An attempt that would start with less time than this before the deadline is not made.
MIN_ATTEMPT_S = 0.01
#: Response headers of a provider that a client may care about and that stay true
#: through the gateway (others describe the provider's own connection).
PASSED_RESPONSE_HEADERS = ("retry-after", "openai-processing-ms", "openai-version")
PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
JSON_TYPE = "application/json"
SHUTTING_DOWN = "the gateway is shutting down; the stream was ended before it finished"
SSE_TYPE = "text/event-stream"
#: Client headers that belong to the client's own dialect (``anthropic-version``):
#: meaningless, or worse, to a provider of the other dialect.
DIALECT_PREFIXES = {ApiFormat.OPENAI: "openai-", ApiFormat.ANTHROPIC: "anthropic-"}


@attrs.frozen
class ClientRequest:
    """What the proxy front end parsed of a client request."""

    format: ApiFormat
    body: dict[str, Any]
    raw: bytes
    model: str | None
    stream: bool
    headers: Sequence[tuple[str, str]]
    request_id: str


@attrs.frozen
class Limits:
    """A service's time budgets and attempt limit."""

    request_timeout: float = 120.0
    first_byte_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_attempts: int | None = None


@attrs.define
class ProxyResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes]


@attrs.define
class _Failure:
    """A failed attempt, kept to answer with when no attempt succeeds."""

    outcome: str
    message: str
    actor: TargetActor
    model: str
    #: The provider's own answer (an error status), relayed if nothing better comes.
    answer: Answer | None = None
    #: The request is the client's error for this target (it does not translate).
    client_error: ClientError | None = None


def breaker_policy(upstream: Upstream) -> BreakerPolicy:
    checks = upstream.health_checks
    return BreakerPolicy(
        passive=checks.passive, threshold=checks.threshold, interval=checks.interval
    )


class Dispatcher:
    """Applies one upstream's tiers and algorithm to its target actors.

    Built by the supervisor whenever the upstream's configuration changes; holds
    no task. ``actors[i]`` serves ``plan.targets[i]``.
    """

    def __init__(
        self,
        upstream: Upstream,
        actors: Sequence[TargetActor],
        plan: UpstreamPlan,
        end_streams: EndStreams | None = None,
    ) -> None:
        self.upstream = upstream
        self.actors = tuple(actors)
        self.plan = plan
        self.end_streams = end_streams if end_streams is not None else EndStreams()

    @classmethod
    def build(
        cls,
        upstream: Upstream,
        actors: Sequence[TargetActor],
        end_streams: EndStreams | None = None,
    ) -> Dispatcher:
        routes = [
            TargetRoute(
                index=i,
                id=t.id,
                weight=t.weight,
                priority=t.priority,
                models=frozenset(t.models),
                default_model=t.default_model,
            )
            for i, t in enumerate(upstream.targets)
        ]
        plan = UpstreamPlan.compile(
            routes,
            upstream.algorithm,
            reject_unknown_models=upstream.model_fallback is ModelFallback.REJECT,
        )
        return cls(upstream, actors, plan, end_streams)

    # --- choosing -------------------------------------------------------------------

    def choose(self, model: str | None, tried: set[str], now: float) -> Choice | None:
        actors = self.actors
        return self.plan.choose(
            model,
            admits=lambda i: actors[i].breaker.admits(now) and not actors[i].retired,
            excluded=lambda i: actors[i].target.id in tried,
            loads=actors,
            now=now,
        )

    def retry_after(self, model: str | None, now: float) -> int:
        """Seconds until a target that could serve ``model`` is re-admitted (at least 1)."""
        times = [
            t
            for i in self.plan.serving(model)
            if (t := self.actors[i].breaker.readmission_at()) is not None
        ]
        return max(1, math.ceil(min(times) - now)) if times else 1

    # --- one client request ------------------------------------------------------------

    async def exchange(
        self,
        request: ClientRequest,
        limits: Limits,
        current: Callable[[], Dispatcher | None] | None = None,
    ) -> ProxyResponse:
        """Serve ``request``: attempts, failover, and the response (maybe a stream).

        ``current`` returns the upstream's dispatcher now: the configuration may
        change between two attempts, and the next attempt follows it (targets
        already tried, by id, are not tried again). Targets skipped without being
        asked (queue full, request not translatable) do not count as attempts.
        """
        deadline = trio.current_time() + limits.request_timeout
        dispatcher: Dispatcher = self
        max_attempts = limits.max_attempts or len(self.actors)
        tried: set[str] = set()
        attempts: list[Attempt] = []
        failures: list[_Failure] = []
        made = 0
        timed_out = False

        while made < max_attempts:
            now = trio.current_time()
            if now >= deadline - MIN_ATTEMPT_S:
                timed_out = True
                break
            if attempts and current is not None:
                dispatcher = current() or dispatcher
            try:
                choice = dispatcher.choose(request.model, tried, now)
            except ModelNotServed:
                if not attempts:
                    raise
                break  # the configuration changed under a failover: answer with what we have
            if choice is None:
                break
            actor = dispatcher.actors[choice.index]
            tried.add(actor.target.id)
            result = await dispatcher._attempt(request, limits, actor, choice, deadline, attempts)
            if isinstance(result, ProxyResponse):
                return dispatcher._decorate(result, request, actor, choice, attempts)
            failures.append(result)
            made += result.outcome not in SKIPS
            timed_out = result.outcome == Outcome.DEADLINE.value

        return dispatcher._give_up(request, attempts, failures, timed_out, limits)

    async def _attempt(
        self,
        request: ClientRequest,
        limits: Limits,
        actor: TargetActor,
        choice: Choice,
        deadline: float,
        attempts: list[Attempt],
    ) -> ProxyResponse | _Failure:
        started = trio.current_time()
        model = choice.model

        def record(outcome: str) -> None:
            attempts.append(
                Attempt(actor.target.id, outcome, (trio.current_time() - started) * 1000)
            )

        def failed(outcome: str, message: str, answer: Answer | None = None) -> _Failure:
            return _Failure(outcome, message, actor, model, answer=answer)

        translator = (
            None
            if request.format is actor.format
            else translate.translator(
                request.format,
                actor.target.provider.value,
                default_max_tokens=self.upstream.default_max_tokens,
                request_id=request.request_id,
            )
        )
        try:
            body = _provider_body(request, model, translator)
        except ClientError as exc:
            record(Outcome.UNTRANSLATABLE.value)
            failure = failed(Outcome.UNTRANSLATABLE.value, exc.message)
            failure.client_error = exc
            return failure

        reply_send, reply_receive = trio.open_memory_channel[Reply](REPLY_BUFFER)
        job = Job(
            body=body,
            headers=request.headers if translator is None else _foreign(request),
            model=model,
            stream=request.stream,
            reply=reply_send,
            ticket=actor.breaker.admit(started),
            translate=None if translator is None or request.stream else _whole(translator),
        )
        if not actor.submit(job):
            reply_send.close()
            reply_receive.close()
            record(Outcome.OVERLOADED.value)
            return failed(Outcome.OVERLOADED.value, "the target's queue is full")

        budget_end = started + limits.first_byte_timeout
        first_byte_by = min(deadline, budget_end)
        committed = False
        try:
            message: Any = _NOTHING
            stream: Any = None
            opening: bytes | AttemptFailed | None = None
            with trio.move_on_at(first_byte_by) as budget:
                message = await _receive(reply_receive)
                if isinstance(message, StreamStart):
                    stream = (
                        translator.stream() if translator else PassthroughStream(request.format)
                    )
                    opening = await _first_events(reply_receive, stream)
            if budget.cancelled_caught:
                if stream is None:
                    late = _late(reply_receive)
                    message = late if late is not _NOTHING else message
                if stream is None and not isinstance(message, Answer | AttemptFailed):
                    if job.first_byte and not request.stream:
                        # Headers in time, the body still coming: it may take until the deadline.
                        message = _NOTHING
                        with trio.move_on_at(deadline):
                            message = await _receive(reply_receive)
                        if message is _NOTHING:
                            job.cancel(Outcome.DEADLINE, blame=False)
                            record(Outcome.DEADLINE.value)
                            return failed(
                                Outcome.DEADLINE.value, "the answer did not finish in time"
                            )
                    else:
                        return self._timed_out(job, limits, budget_end, deadline, record, failed)
                elif stream is not None:
                    return self._timed_out(job, limits, budget_end, deadline, record, failed)
            if stream is not None:
                if isinstance(opening, bytes):
                    record(str(message.status))
                    committed = True
                    body_stream = _stream_body(
                        opening, stream, reply_receive, job, limits.idle_timeout, self.end_streams
                    )
                    return ProxyResponse(
                        status=message.status,
                        headers=_passed_headers(message.headers, SSE_TYPE),
                        body=_StreamBody(body_stream, job, reply_receive),
                    )
                message = (
                    opening
                    if opening is not None
                    else AttemptFailed(
                        Outcome.INTERNAL_ERROR, "the attempt ended without an answer"
                    )
                )
            if isinstance(message, AttemptFailed):
                record(message.outcome.value)
                return failed(message.outcome.value, message.message)
            if isinstance(message, Answer):
                record(str(message.status))
                if status_verdict(message.status) is Verdict.FAILURE:
                    return failed(str(message.status), f"HTTP {message.status}", answer=message)
                return _answer(message, translator)
            record(Outcome.INTERNAL_ERROR.value)
            return failed(Outcome.INTERNAL_ERROR.value, "the attempt ended without an answer")
        finally:
            if not committed:
                job.cancel(Outcome.CANCELLED)
                reply_receive.close()

    def _timed_out(
        self,
        job: Job,
        limits: Limits,
        budget_end: float,
        deadline: float,
        record: Callable[[str], None],
        failed: Callable[..., _Failure],
    ) -> _Failure:
        """No first byte in time: whose time ran out, and is the target to blame?

        The target's own budget: ``first_byte_timeout``, blamed, unless the job spent
        that time in the gateway's queue (the target had it for less than its budget).
        What was left of the request's deadline: ``deadline``, nobody blamed.
        """
        now = trio.current_time()
        if budget_end <= deadline:
            held = now - job.dequeued_at if job.dequeued_at is not None else 0.0
            outcome, blame = Outcome.FIRST_BYTE_TIMEOUT, held >= limits.first_byte_timeout * 0.95
        else:
            outcome, blame = Outcome.DEADLINE, False
        job.cancel(outcome, blame=blame)
        record(outcome.value)
        return failed(outcome.value, "no first byte within the time allowed")

    # --- the response's headers and the final error ---------------------------------------

    def _decorate(
        self,
        response: ProxyResponse,
        request: ClientRequest,
        actor: TargetActor,
        choice: Choice,
        attempts: list[Attempt],
    ) -> ProxyResponse:
        response.headers += _selection_headers(request, actor, choice.model, attempts)
        if choice.fallback:
            response.headers.append(
                ("X-Gateway-Model-Fallback", f"{request.model} -> {choice.model}")
            )
        return response

    def _give_up(
        self,
        request: ClientRequest,
        attempts: list[Attempt],
        failures: list[_Failure],
        timed_out: bool,
        limits: Limits,
    ) -> ProxyResponse:
        """The answer when no attempt succeeded.

        In order: the last error a provider answered with (translated to the
        client's dialect); a request that translates for no target; all targets
        full (429); nothing eligible (503 with Retry-After); else a 502/504 of ours.
        ``X-Selected-*`` name the target whose answer (or failure) is returned.
        """
        fmt = request.format

        def headers_of(failure: _Failure | None) -> list[tuple[str, str]]:
            if failure is None:
                return [
                    ("X-Request-Id", request.request_id),
                    ("X-Gateway-Attempts", render_trail(attempts)),
                ]
            return _selection_headers(request, failure.actor, failure.model, attempts)

        headers = headers_of(failures[-1] if failures else None)
        answered = [f for f in failures if f.answer is not None]
        if answered:
            failure = answered[-1]
            headers = headers_of(failure)
            answer = failure.answer
            assert answer is not None
            translator = translate.translator(
                fmt,
                failure.actor.target.provider.value,
                default_max_tokens=self.upstream.default_max_tokens,
                request_id=request.request_id,
            )
            status, body = (
                (answer.status, answer.body)
                if translator is None
                else translator.error(answer.status, answer.body)
            )
            content_type = (
                answer.headers.get("content-type", JSON_TYPE) if translator is None else JSON_TYPE
            )
            return ProxyResponse(
                status, _passed_headers(answer.headers, content_type) + headers, body
            )
        client_errors = [f.client_error for f in failures if f.client_error is not None]
        if client_errors and len(client_errors) == len(failures):
            error = client_errors[-1]
            return _error(fmt, error.status, error.type, error.message, headers)
        real = [
            f
            for f in failures
            if f.outcome not in (Outcome.OVERLOADED.value, Outcome.UNTRANSLATABLE.value)
        ]
        if not real and not timed_out:
            if failures:
                return _error(
                    fmt,
                    429,
                    "overloaded",
                    "every eligible target is at capacity; retry shortly",
                    [*headers, ("Retry-After", "1")],
                )
            wait = self.retry_after(request.model, trio.current_time())
            what = f"model {request.model!r}" if request.model else "this request"
            return _error(
                fmt,
                503,
                "service_unavailable",
                f"no healthy target can serve {what} now; retry after {wait} s",
                [*headers, ("Retry-After", str(wait))],
            )
        if timed_out and not real:
            return _error(
                fmt,
                504,
                "upstream_timeout",
                f"the request's deadline of {limits.request_timeout:g} s ran out",
                headers,
            )
        failure = real[-1]
        headers = headers_of(failure)
        timeout = failure.outcome in (
            Outcome.TIMEOUT.value,
            Outcome.FIRST_BYTE_TIMEOUT.value,
            Outcome.DEADLINE.value,
        )
        status = 504 if timeout or timed_out else 502
        kind = "upstream_timeout" if status == 504 else "upstream_error"
        message = f"{len(attempts)} attempt(s) failed; last: {failure.outcome}: {failure.message}"
        return _error(fmt, status, kind, message, headers)


# --- helpers (pure) --------------------------------------------------------------------


_NOTHING: Any = object()


def _late(channel: trio.MemoryReceiveChannel[Reply]) -> Any:
    """A whole answer (or failure) already waiting when a budget ran out: not thrown away."""
    try:
        message = channel.receive_nowait()
    except (trio.WouldBlock, trio.EndOfChannel):
        return _NOTHING
    return message if isinstance(message, Answer | AttemptFailed) else _NOTHING


def _foreign(request: ClientRequest) -> list[tuple[str, str]]:
    """The client's headers for a provider of the other dialect."""
    own = DIALECT_PREFIXES[request.format]
    return [(name, value) for name, value in request.headers if not name.startswith(own)]


def _selection_headers(
    request: ClientRequest, actor: TargetActor, model: str, attempts: list[Attempt]
) -> list[tuple[str, str]]:
    return [
        ("X-Selected-Provider", actor.target.provider.value),
        ("X-Selected-Model", model),
        ("X-Selected-Target", actor.target.id),
        ("X-Request-Id", request.request_id),
        ("X-Gateway-Attempts", render_trail(attempts)),
    ]


def _error(
    fmt: ApiFormat, status: int, kind: str, message: str, headers: list[tuple[str, str]]
) -> ProxyResponse:
    return ProxyResponse(
        status, [("content-type", JSON_TYPE), *headers], error_body(fmt, status, kind, message)
    )


def _passed_headers(headers: httpx2.Headers, content_type: str) -> list[tuple[str, str]]:
    passed = [("content-type", content_type)]
    for name, value in headers.items():
        if name in PASSED_RESPONSE_HEADERS or name.startswith(PASSED_PREFIXES):
            passed.append((name, value))
    return passed


def _provider_body(
    request: ClientRequest, model: str, translator: translate.Translator | None
) -> bytes:
    """The bytes to send: the client's own when nothing changes, else re-encoded once."""
    if translator is not None:
        body = dict(request.body)
        body["model"] = model
        return jsonio.dumpb(translator.request(body))
    if request.model == model:
        return request.raw
    body = dict(request.body)
    body["model"] = model
    return jsonio.dumpb(body)


def _answer(message: Answer, translator: translate.Translator | None) -> ProxyResponse:
    """A whole provider answer (success, or a client error) in the client's dialect.

    A success in another dialect was already translated by the actor (``Job.translate``).
    """
    status, body = message.status, message.body
    content_type = message.headers.get("content-type", JSON_TYPE)
    if translator is not None:
        if not 200 <= status < 300:
            status, body = translator.error(status, body)
        content_type = JSON_TYPE
    return ProxyResponse(status, _passed_headers(message.headers, content_type), body)


def _whole(translator: translate.Translator) -> Callable[[bytes], bytes | None]:
    """The actor's check and translation of a whole success: client bytes, or ``None``."""

    def translate_answer(body: bytes) -> bytes | None:
        try:
            parsed = jsonio.loads(body)
            if not isinstance(parsed, dict):
                return None
            return jsonio.dumpb(translator.response(parsed))
        except (ValueError, TypeError, KeyError, AttributeError, GatewayError):
            return None

    return translate_answer


async def _receive(channel: trio.MemoryReceiveChannel[Reply]) -> Reply | None:
    try:
        return await channel.receive()
    except trio.EndOfChannel:
        return None


async def _first_events(
    channel: trio.MemoryReceiveChannel[Reply], stream: Any
) -> bytes | AttemptFailed | None:
    """Read until the client can be sent a stream with content (``bytes``), or it failed.

    Metadata and keep-alives are translated and held back; the first content event
    that produces client bytes (or a complete stream with none) releases them. A
    translator that finds the provider breaking its protocol fails the attempt.
    ``None``: the job vanished.
    """
    held: list[bytes] = []
    while True:
        message = await _receive(channel)
        if isinstance(message, bytes):
            out = stream.feed(message)
            if stream.error is not None:
                return AttemptFailed(Outcome.PROTOCOL_ERROR, "the provider's stream is not valid")
            held.append(out)
            if out:
                return b"".join(held)
        elif isinstance(message, Meta):
            held.append(stream.feed(message.data))
            if stream.error is not None:
                return AttemptFailed(Outcome.PROTOCOL_ERROR, "the provider's stream is not valid")
        elif isinstance(message, StreamEnd):
            if message.complete:
                held.append(stream.finish())
                return b"".join(held)
            return AttemptFailed(
                Outcome.STREAM_INCOMPLETE, "the stream ended before its first token"
            )
        elif isinstance(message, AttemptFailed):
            return message
        else:
            return None


class _StreamBody:
    """The committed stream's body as Quart iterates it, with a safety net.

    Quart closes the body when it is done with it; but if the client leaves after
    the response was made and before Quart starts sending it, nothing ever iterates
    (or closes) the generator, and its ``finally`` never runs. Dropping this object
    (CPython frees it at once) cancels the job and closes the reply channel instead.
    """

    __slots__ = ("_body", "_channel", "_job")

    def __init__(
        self, body: AsyncIterator[bytes], job: Job, channel: trio.MemoryReceiveChannel[Reply]
    ) -> None:
        self._body, self._job, self._channel = body, job, channel

    def __aiter__(self) -> _StreamBody:
        return self

    def __anext__(self) -> Any:
        return self._body.__anext__()

    async def aclose(self) -> None:
        await self._body.aclose()  # type: ignore[attr-defined]

    def __del__(self) -> None:
        self._job.cancel(Outcome.CANCELLED)
        self._channel.close()


async def _stream_body(
    opening: bytes,
    stream: Any,
    channel: trio.MemoryReceiveChannel[Reply],
    job: Job,
    idle_timeout: float,
    end: EndStreams,
) -> AsyncIterator[bytes]:
    """The committed stream: events as they come; a failure ends it with an error event.

    No cancel scope is held across a ``yield``: each wait for a message has its own.
    Only content moves the idle deadline; pings and keep-alives pass but do not.
    ``end`` set (shutdown) ends it with an error event too, waiting or not.
    Leaving (client gone, generator closed) cancels the job in ``finally``.
    """
    try:
        yield opening
        idle_deadline = trio.current_time() + idle_timeout
        while True:
            try:
                message = channel.receive_nowait()  # usually already there: no cancel scope
            except trio.WouldBlock:
                message = _NOTHING
                with end.move_on_at(idle_deadline):
                    message = await _receive(channel)
            except trio.EndOfChannel:
                message = None
            if end.is_set():
                out = stream.fail("service_unavailable", SHUTTING_DOWN)
                if out:
                    yield out
                return
            if message is _NOTHING:
                job.cancel(Outcome.IDLE_TIMEOUT)
                out = stream.fail(
                    "upstream_timeout", f"no data from the provider for {idle_timeout:g} s"
                )
                if out:
                    yield out
                return
            if isinstance(message, bytes):
                idle_deadline = trio.current_time() + idle_timeout
            out, done = _stream_step(stream, message)
            if stream.error is not None and not done:
                job.cancel(Outcome.PROTOCOL_ERROR)  # the translator already told the client
                done = True
            if out:
                yield out
            if done:
                return
    finally:
        job.cancel(Outcome.CANCELLED)
        channel.close()


def _stream_step(stream: Any, message: Reply | None) -> tuple[bytes, bool]:
    """Client bytes for one reply message, and whether the stream is over."""
    if isinstance(message, bytes):
        return stream.feed(message), False
    if isinstance(message, Meta):
        return stream.feed(message.data), False
    if isinstance(message, StreamEnd):
        if message.complete or message.relayed_error:
            return stream.finish(), True
        return stream.fail(
            "upstream_error", "the provider's stream ended before it was complete"
        ), True
    if isinstance(message, AttemptFailed):
        return stream.fail(
            "upstream_error", f"the provider's stream broke ({message.outcome.value})"
        ), True
    return stream.fail("upstream_error", "the provider's stream ended unexpectedly"), True
