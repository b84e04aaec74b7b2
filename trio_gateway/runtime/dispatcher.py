"""The dispatcher: one per upstream. Picks targets, sends them jobs, fails over.

Theory of operation
-------------------
:meth:`Dispatcher.exchange` serves one client request. It computes the request's
deadline once (``request_timeout`` from now); every attempt runs under
``min(deadline, attempt start + first_byte_timeout)`` until its first byte. An
attempt is: ask the plan (:mod:`trio_gateway.core.routing`) for a target and
model, take a breaker ticket, submit a :class:`~trio_gateway.runtime.target.Job`
to that target's actor, and read the job's reply channel.

* A failure before anything reached the client (connect error, timeout, 5xx, 408,
  429, a stream that broke before its first event) fails over to the next
  eligible target: same tier first, then the next tier, each target at most once,
  at most ``max_attempts`` attempts.
* A 4xx other than 408/429 is the client's own error: relayed, no failover.
* A stream is committed when its first whole event is ready for the client.
  After that nothing can fail over: a failure ends the stream with an error event
  in the client's dialect (:meth:`StreamTranslator.fail`), never silently.
* When the client leaves, the request's task is cancelled; the ``finally`` blocks
  cancel the running job, which aborts the upstream call.

Every response, success or error, streamed or not, carries ``X-Selected-*`` for
the last target tried, ``X-Request-Id`` and the attempt trail.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway.config.models import ModelFallback, Upstream
from trio_gateway.core.failover import Attempt, Outcome, Verdict, render_trail, status_verdict
from trio_gateway.core.health import BreakerPolicy
from trio_gateway.core.routing import Choice, TargetRoute, UpstreamPlan
from trio_gateway.providers import translate
from trio_gateway.providers.formats import ApiFormat, error_body
from trio_gateway.providers.passthrough import PassthroughStream
from trio_gateway.runtime.target import (
    Answer,
    AttemptFailed,
    Job,
    Reply,
    StreamEnd,
    StreamStart,
    TargetActor,
)

log = logging.getLogger("trio_gateway.dispatch")

REPLY_BUFFER = 32
#: Response headers of a provider that a client may care about and that stay true
#: through the gateway (others describe the provider's own connection).
PASSED_RESPONSE_HEADERS = ("retry-after", "openai-processing-ms", "openai-version")
PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"


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
    """The last failed attempt, kept to answer with when no attempt succeeds."""

    outcome: str
    message: str
    answer: Answer | None = None
    actor: TargetActor | None = None


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
        self, upstream: Upstream, actors: Sequence[TargetActor], plan: UpstreamPlan
    ) -> None:
        self.upstream = upstream
        self.actors = tuple(actors)
        self.plan = plan
        self._formats = frozenset(a.format for a in actors)

    @classmethod
    def build(
        cls,
        upstream: Upstream,
        actors: Sequence[TargetActor],
        balancer_factory: Callable[..., Any] | None = None,
    ) -> Dispatcher:
        routes = [
            TargetRoute(
                index=i,
                id=t.id,
                format=actor.format,
                weight=t.weight,
                priority=t.priority,
                models=frozenset(t.models),
                default_model=t.default_model,
            )
            for i, (t, actor) in enumerate(zip(upstream.targets, actors, strict=True))
        ]
        extra = {"balancer_factory": balancer_factory} if balancer_factory else {}
        plan = UpstreamPlan.compile(
            routes,
            upstream.algorithm,
            reject_unknown_models=upstream.model_fallback is ModelFallback.REJECT,
            **extra,
        )
        return cls(upstream, actors, plan)

    # --- choosing -------------------------------------------------------------------

    def choose(self, model: str | None, tried: set[str], now: float) -> Choice | None:
        actors = self.actors
        return self.plan.choose(
            model,
            admits=lambda i: actors[i].breaker.admits(now) and not actors[i].retired,
            excluded=lambda i: actors[i].target.id in tried,
            formats=self._formats,
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
        already tried, by id, are not tried again).
        """
        now = trio.current_time()
        deadline = now + limits.request_timeout
        dispatcher: Dispatcher = self
        max_attempts = limits.max_attempts or len(self.actors)
        tried: set[str] = set()
        attempts: list[Attempt] = []
        failure: _Failure | None = None
        last: tuple[TargetActor, str] | None = None

        while len(attempts) < max_attempts:
            now = trio.current_time()
            if now >= deadline:
                failure = _Failure(
                    Outcome.TIMEOUT.value, f"deadline of {limits.request_timeout:g} s exceeded"
                )
                break
            if attempts and current is not None:
                dispatcher = current() or dispatcher
            choice = dispatcher.choose(request.model, tried, now)
            if choice is None:
                break
            actor = dispatcher.actors[choice.index]
            tried.add(actor.target.id)
            last = (actor, choice.model)
            result = await dispatcher._attempt(request, limits, actor, choice, deadline, attempts)
            if isinstance(result, ProxyResponse):
                return dispatcher._decorate(result, request, actor, choice, attempts)
            failure = result

        return dispatcher._give_up(request, attempts, failure, last)

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
        translator = translate.translator(
            request.format,
            actor.target.provider.value,
            default_max_tokens=self.upstream.default_max_tokens,
            request_id=request.request_id,
        )
        body = _provider_body(request, choice.model, translator)
        reply_send, reply_receive = trio.open_memory_channel[Reply](REPLY_BUFFER)
        job = Job(
            body=body,
            headers=request.headers if translator is None else _foreign(request),
            model=choice.model,
            stream=request.stream,
            reply=reply_send,
            ticket=actor.breaker.admit(started),
            stall_timeout=limits.idle_timeout,
        )

        def record(outcome: str) -> None:
            attempts.append(
                Attempt(actor.target.id, outcome, (trio.current_time() - started) * 1000)
            )

        if not actor.submit(job):
            reply_send.close()
            reply_receive.close()
            record(Outcome.OVERLOADED.value)
            return _Failure(Outcome.OVERLOADED.value, "the target's queue is full", actor=actor)

        committed = False
        try:
            first_byte_by = min(deadline, started + limits.first_byte_timeout)
            with trio.move_on_at(first_byte_by) as budget:
                message = await _receive(reply_receive)
                if isinstance(message, StreamStart):
                    stream = (
                        translator.stream()
                        if translator is not None
                        else PassthroughStream(request.format)
                    )
                    opening = await _first_events(reply_receive, stream)
                    if isinstance(opening, bytes):
                        record(str(message.status))
                        committed = True
                        return ProxyResponse(
                            status=message.status,
                            headers=_passed_headers(message.headers, SSE_TYPE),
                            body=_stream_body(
                                opening, stream, reply_receive, job, limits.idle_timeout
                            ),
                        )
                    message = opening
            if budget.cancelled_caught:
                outcome = (
                    Outcome.TIMEOUT
                    if trio.current_time() >= deadline
                    else Outcome.FIRST_BYTE_TIMEOUT
                )
                job.cancel(outcome)
                record(outcome.value)
                return _Failure(
                    outcome.value,
                    f"no first byte from target within its budget ({outcome.value})",
                    actor=actor,
                )
            if isinstance(message, AttemptFailed):
                record(message.outcome.value)
                return _Failure(message.outcome.value, message.message, actor=actor)
            if isinstance(message, Answer):
                record(str(message.status))
                verdict = status_verdict(message.status)
                if verdict is Verdict.FAILURE:
                    return _Failure(str(message.status), f"HTTP {message.status}", message, actor)
                return _answer(message, request, translator)
            record(Outcome.INTERNAL_ERROR.value)
            return _Failure(
                Outcome.INTERNAL_ERROR.value,
                "the target ended the attempt without an answer",
                actor=actor,
            )
        finally:
            if not committed:
                job.cancel(Outcome.CANCELLED)
                reply_receive.close()

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
        failure: _Failure | None,
        last: tuple[TargetActor, str] | None,
    ) -> ProxyResponse:
        """The answer when no attempt succeeded: the last upstream error, or ours."""
        fmt = request.format
        if last is not None:
            headers = _selection_headers(request, last[0], last[1], attempts)
        else:
            headers = [("X-Request-Id", request.request_id), ("X-Gateway-Attempts", "")]
        if failure is None:
            wait = self.retry_after(request.model, trio.current_time())
            what = f"model {request.model!r}" if request.model else "this request"
            return _error(
                fmt,
                503,
                "service_unavailable",
                f"no healthy target can serve {what} now; retry after {wait} s",
                [*headers, ("Retry-After", str(wait))],
            )
        if failure.answer is not None and failure.actor is not None:
            answer = failure.answer
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
                JSON_TYPE if translator else answer.headers.get("content-type", JSON_TYPE)
            )
            return ProxyResponse(
                status, _passed_headers(answer.headers, content_type) + headers, body
            )
        if not any(a.outcome != Outcome.OVERLOADED.value for a in attempts):
            return _error(
                fmt,
                429,
                "overloaded",
                "every eligible target is at capacity; retry shortly",
                [*headers, ("Retry-After", "1")],
            )
        status = 504 if "timeout" in failure.outcome else 502
        kind = "upstream_timeout" if status == 504 else "upstream_error"
        return _error(
            fmt,
            status,
            kind,
            f"{len(attempts)} attempt(s) failed; last: {failure.message}",
            headers,
        )


# --- helpers (pure) --------------------------------------------------------------------


#: Client headers that belong to the client's own dialect (``anthropic-version``):
#: meaningless, or worse, to a provider of the other dialect.
DIALECT_PREFIXES = {ApiFormat.OPENAI: "openai-", ApiFormat.ANTHROPIC: "anthropic-"}


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
        return json.dumps(translator.request(body), separators=(",", ":")).encode()
    if request.model == model:
        return request.raw
    body = dict(request.body)
    body["model"] = model
    return json.dumps(body, separators=(",", ":")).encode()


def _answer(
    message: Answer, request: ClientRequest, translator: translate.Translator | None
) -> ProxyResponse:
    """A whole provider answer (success or a client error) in the client's dialect."""
    status, body = message.status, message.body
    content_type = message.headers.get("content-type", JSON_TYPE)
    if translator is not None:
        if 200 <= status < 300:
            try:
                body = json.dumps(
                    translator.response(json.loads(body)), separators=(",", ":")
                ).encode()
            except ValueError:
                status, body = (
                    502,
                    error_body(
                        request.format,
                        502,
                        "upstream_protocol_error",
                        "the provider's answer is not valid JSON",
                    ),
                )
        else:
            status, body = translator.error(status, body)
        content_type = JSON_TYPE
    return ProxyResponse(status, _passed_headers(message.headers, content_type), body)


async def _receive(channel: trio.MemoryReceiveChannel[Reply]) -> Reply | None:
    try:
        return await channel.receive()
    except trio.EndOfChannel:
        return None


async def _first_events(
    channel: trio.MemoryReceiveChannel[Reply], stream: Any
) -> bytes | AttemptFailed | None:
    """Read until the stream has a whole event for the client (``bytes``), or failed."""
    while True:
        message = await _receive(channel)
        if isinstance(message, bytes):
            out = stream.feed(message)
            if out:
                return out
        elif isinstance(message, StreamEnd):
            out = stream.finish() if message.complete else b""
            if out:
                return out
            return AttemptFailed(
                Outcome.STREAM_INCOMPLETE, "the stream ended before its first event"
            )
        elif isinstance(message, AttemptFailed):
            return message
        else:
            return None


async def _stream_body(
    opening: bytes,
    stream: Any,
    channel: trio.MemoryReceiveChannel[Reply],
    job: Job,
    idle_timeout: float,
) -> AsyncIterator[bytes]:
    """The committed stream: whole events as they come; a failure ends it with an error event.

    No cancel scope is held across a ``yield``: each wait for a chunk has its own.
    Leaving (client gone, generator closed) cancels the job in ``finally``.
    """
    try:
        yield opening
        while True:
            with trio.move_on_after(idle_timeout) as idle:
                message = await _receive(channel)
            if idle.cancelled_caught:
                job.cancel(Outcome.IDLE_TIMEOUT)
                out = stream.fail(
                    "upstream_timeout", f"no data from the provider for {idle_timeout:g} s"
                )
                if out:
                    yield out
                return
            out, done = _stream_step(stream, message)
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
    if isinstance(message, StreamEnd):
        if message.complete:
            return stream.finish(), True
        return stream.fail(
            "upstream_error", "the provider's stream ended before it was complete"
        ), True
    if isinstance(message, AttemptFailed):
        return stream.fail(
            "upstream_error", f"the provider's stream broke: {message.message}"
        ), True
    return stream.fail("upstream_error", "the provider's stream ended unexpectedly"), True
