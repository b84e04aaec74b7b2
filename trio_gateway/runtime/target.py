"""The target actor: one supervised object per target, owning its health, its queue and its attempts.

Theory of operation
-------------------
A :class:`TargetActor` owns, for one target:

* its **health** (:class:`~trio_gateway.core.health.Health`) and latency estimate.
  Only the actor's own code changes them: admission when a job is submitted
  (:meth:`submit`, synchronous: decide, then do the I/O), the verdict when an
  attempt ends, the results of its probes;
* its **queue**: at most ``max_in_flight`` attempts run at once, and at most
  :data:`QUEUE_SIZE` more wait for a slot; :meth:`submit` never waits and refuses a
  job when the queue is full. ``in_flight`` counts both (balancers see a request
  at once);
* **every attempt's code**, from its slot to its verdict: the HTTP call, its time
  budgets (:class:`~trio_gateway.core.attempt.AttemptBudget`), reading and judging
  the answer (:func:`~trio_gateway.core.attempt.judge_status`, the stream watch),
  putting it in the client's dialect, and what it means for the target's health.

An attempt runs in the requester's own task (:meth:`attempt`): no task is spawned
and no message hops between tasks per request, which is most of what a request
would otherwise cost to go through an actor. It answers, once: :class:`Whole` (an
answer for the client: a success, or the client's own error), :class:`Failed` (an
:class:`~trio_gateway.errors.AttemptError`: fail over; it may carry the provider's
error answer), or :class:`Committed` (a stream with content: status, headers and
the body, which reads the provider and sends each event on as it is pumped into
the client, and settles the attempt when it ends; its idle timer and the
shutdown's end are kept by :class:`~trio_gateway.runtime.ending.EndStreams`).
When the requester is cancelled (the client left), the provider call is aborted
at once, connection included, and the attempt says nothing about the target. A
bug of ours in an attempt fails it over (``internal_error``) without touching the
actor.

:meth:`run` is the actor's own task: the probe loop (the recovery check of an
ejected target when its out-period is over, and active probes every ``interval``
when they are configured). A recovery check is two steps: a ``GET`` of the model list
(is a server there at all?) and then, when it answers and ``request_checks`` is on,
a minimal real request (one output token) shaped like the last one that failed:
same model, streamed or not. Only a target that passes both is restored: a provider
whose model list answers while its completions hang stays out without a client
paying for it. The check runs through the same attempt code as client requests,
with :data:`CHECK_BUDGETS`. Requests go out through a transport the actor does not
own (shared per origin, see :mod:`trio_gateway.runtime.clients`), used directly:
none of an HTTP client's per-request layers (auth, redirects, cookies) apply here.

Retiring (:meth:`retire`) takes no new jobs; :meth:`run` returns once the attempts
in flight are over (they still use the transport). If :meth:`run` crashes, the
supervisor restarts it with the same health; the actor is not eligible while it
waits to restart (:attr:`restarting`), and attempts in flight go on.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway import __version__, jsonio
from trio_gateway.config.models import HealthChecks, Target
from trio_gateway.core.attempt import (
    AttemptBudget,
    Budgets,
    Meaning,
    judge_status,
    retry_after,
)
from trio_gateway.core.balancing import PeakEwma
from trio_gateway.core.health import (
    Check,
    Health,
    HealthPolicy,
    HealthStatistics,
    State,
    Ticket,
    Transition,
)
from trio_gateway.errors import (
    Answer,
    AttemptAbandoned,
    AttemptCrashed,
    AttemptError,
    CredentialRejected,
    GatewayError,
    ModelUnavailable,
    QueueTimeout,
    RateLimited,
    StreamErrorEvent,
    StreamIncomplete,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamReadError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from trio_gateway.providers.endpoints import Endpoint
from trio_gateway.providers.formats import (
    Api,
    ApiFormat,
    responses_error_event,
    stream_error_event,
)
from trio_gateway.providers.passthrough import PassthroughStream
from trio_gateway.providers.translate import ResponsesPassthroughStream, Translator
from trio_gateway.providers.translate.responses import next_sequence_number
from trio_gateway.providers.usage import Usage, usage_of
from trio_gateway.providers.watch import MALFORMED, StreamWatch
from trio_gateway.runtime.clients import CONNECT_TIMEOUT_S, SAFETY_TIMEOUT_S
from trio_gateway.runtime.ending import EndStreams, StreamWait
from trio_gateway.runtime.injection import EXTENSION, ArmedFault, Injection, check_fault

log = logging.getLogger("trio_gateway.target")

QUEUE_SIZE = 256
MAX_IN_FLIGHT = 1024
MAX_BODY = 64 << 20
#: After a stream's terminator: how long to read what is left, to keep the connection.
DRAIN_S = 1.0
PROBE_TIMEOUT_S = 10.0
#: The budgets of a recovery check's real request: generous, no client waits on it.
CHECK_BUDGETS = Budgets(first_byte_timeout=30.0, body_timeout=10.0, idle_timeout=30.0)
CHECK_PROMPT = "ping"
#: How the gateway's own requests (probes, recovery checks) introduce themselves.
CHECK_USER_AGENT = f"trio-gateway/{__version__} (health check)"
CHECK_HEADERS = (("user-agent", CHECK_USER_AGENT),)
#: httpx2's own timeouts, a safety net only: the attempt's budgets cancel first.
TIMEOUTS = {
    "connect": CONNECT_TIMEOUT_S,
    "read": SAFETY_TIMEOUT_S,
    "write": SAFETY_TIMEOUT_S,
    "pool": SAFETY_TIMEOUT_S,
}
#: Response headers of a provider that a client may care about and that stay true
#: through the gateway (others describe the provider's own connection).
PASSED_RESPONSE_HEADERS = frozenset(
    {"retry-after", "retry-after-ms", "openai-processing-ms", "openai-version"}
)
PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
RECENT = 20


# --- results ------------------------------------------------------------------------


@attrs.frozen
class Whole:
    """A whole answer for the client: a success, or the client's own error."""

    answer: Answer
    #: The provider's token usage and model, for a success that reported them.
    usage: Usage | None = None


@attrs.frozen
class Failed:
    error: AttemptError
    #: What the provider reported before the attempt failed (a stream that broke
    #: before its first content), charged to the key with the rest of the request.
    usage: Usage | None = None


@attrs.frozen
class Committed:
    """A stream with content. Pumping ``body`` sends the client's bytes, the first ones
    (held until the first content) included, and settles the attempt at its end."""

    status: int
    headers: Sequence[tuple[str, str]]
    body: StreamBody


Result = Whole | Failed | Committed


@attrs.frozen
class StreamEnd:
    """How a committed stream ended, for whoever watches the request (telemetry).

    ``how``: ``complete``, an outcome word, ``shutdown`` or ``client_left``.
    """

    how: str
    sent: int
    #: Provider events passed on unread (same dialect) or skipped (translated).
    malformed: int = 0
    #: The provider's token usage and model, as far as the stream reported them.
    usage: Usage | None = None


@attrs.define(eq=False)
class Job:
    """One attempt: what to send, how long it may take, and how it was admitted.

    Written by the requester before :meth:`TargetActor.submit`; then only the actor
    writes it (``ticket``).
    """

    body: bytes
    headers: Sequence[tuple[str, str]]
    model: str
    stream: bool
    deadline: float
    budgets: Budgets
    client_format: ApiFormat
    #: The client's API, and the target's API it is sent to (the same, or the one a
    #: translator writes for): which URL, which stream grammar.
    api: Api
    provider_api: Api
    #: ``None``: the provider speaks the client's dialect.
    translator: Translator | None = None
    #: Tried although out of rotation (nothing in rotation could serve).
    last_resort: bool = False
    #: The gateway asked the provider for the stream's usage, not the client: keep it
    #: from the client (:class:`~trio_gateway.providers.watch.StreamWatch`).
    hide_usage: bool = False
    #: Read the provider's usage of a whole answer (parsing it only for that).
    usage: bool = True
    #: Faults injected into this attempt's provider call (a gateway's fault injection).
    fault: ArmedFault | None = None
    #: The runtime's stream ends: a committed stream's idle timer, and the "end every
    #: running stream now" of a shutdown's last moment (``None``: the actor's own).
    end: EndStreams | None = None
    #: Told once when a committed stream is over (telemetry).
    on_end: Callable[[StreamEnd], None] | None = None
    ticket: Ticket = Ticket.NORMAL


@attrs.frozen
class TargetStatistics:
    id: str
    provider: str
    health: HealthStatistics
    in_flight: int
    queued: int
    latency_s: float | None
    requests: int
    failures: int
    probes: int
    probe_failures: int
    restarting: bool
    #: ``(trio time, outcome word)`` of the latest attempts, oldest first.
    recent: tuple[tuple[float, str], ...]


# --- the actor ---------------------------------------------------------------------------


class TargetActor:
    """See the module docstring. Construct, then run under a supervisor."""

    def __init__(
        self, target: Target, policy: HealthPolicy, checks: HealthChecks | None = None
    ) -> None:
        self.target = target
        self.checks = checks or HealthChecks()
        self.endpoint = Endpoint.of(target)
        #: Each API's URL, parsed once (httpx would parse a string on every request);
        #: a template with ``{model}`` stays a string.
        self._urls: dict[Api, httpx2.URL | str] = {
            api: url if "{model}" in url else httpx2.URL(url) for api, url in self.endpoint.urls
        }
        self.format = self.endpoint.format
        #: The generation API (chat completions or Messages), and its URL: most jobs'.
        self.api = self.endpoint.api
        self._url = self._urls[self.api]
        self.health = Health(policy)
        self.latency_estimate = PeakEwma()
        #: Admitted and not over: running, or waiting for a slot.
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.probes = 0
        self.probe_failures = 0
        #: ``(model, streamed, API)`` of the last client request that failed here: the
        #: shape of a recovery check's real request.
        self._failed_shape: tuple[str, bool, Api] | None = None
        self.recent: collections.deque[tuple[float, str]] = collections.deque(maxlen=RECENT)
        #: Set by the supervisor while a crashed :meth:`run` waits to restart.
        self.restarting = False
        #: Told of each health transition (:class:`~trio_gateway.telemetry.metrics.TargetMetrics`),
        #: bound by the runtime when metrics are on.
        self.observer: Any = None
        #: Told of each ejection decided here, when the upstream shares its health.
        self.announce: Callable[[TargetActor, Transition], None] | None = None
        #: Its gateway's fault injection, set by the runtime: the checks get its faults too.
        self.injection: Injection | None = None
        #: Where requests go out (shared per origin); set by the supervisor before the
        #: first attempt can need it (``None`` only while an ``https`` origin's TLS
        #: context is being loaded: attempts wait for :attr:`_ready`).
        self.transport: httpx2.AsyncBaseTransport | None = None
        self._ready = trio.Event()
        #: At most this many requests at once; as many more may wait in the queue.
        self.max_in_flight = target.max_in_flight or MAX_IN_FLIGHT
        self._slots = trio.Semaphore(self.max_in_flight)
        self._queue_size = min(self.max_in_flight, QUEUE_SIZE)
        self._retired = False
        self._idle = trio.Event()  # set once retired and nothing is in flight
        self._probes = trio.CancelScope()
        self._sleep = trio.CancelScope()
        #: The idle timers of committed streams whose job brings none (recovery checks;
        #: a client's job brings the runtime's).
        self.end_streams = EndStreams()

    # --- used by the dispatcher (synchronous, same thread) -------------------------------

    def latency(self, now: float) -> float | None:
        return self.latency_estimate.estimate(now)

    @property
    def usable(self) -> bool:
        """Neither retired nor waiting to restart: it may be sent a job."""
        return not self._retired and not self.restarting

    def admits(self, now: float) -> bool:
        return self.usable and self.health.admits(now)

    @property
    def queued(self) -> int:
        """Admitted jobs waiting for a slot."""
        return max(0, self.in_flight - self.max_in_flight)

    def has_room(self) -> bool:
        """Would :meth:`submit` find room in the queue now?"""
        return self.in_flight < self.max_in_flight + self._queue_size

    def set_transport(self, transport: httpx2.AsyncBaseTransport) -> None:
        self.transport = transport
        self._ready.set()

    def submit(self, job: Job, now: float) -> bool:
        """Admit ``job`` and take its place in the queue, without waiting.

        ``False`` if it cannot be taken now (out of rotation and not a last resort,
        retired, the queue full). Then run it with :meth:`attempt`, once.
        """
        if not self.usable or not self.has_room():
            return False
        if self.health.admits(now):
            job.ticket = self.health.admit(now)
        elif job.last_resort:
            job.ticket = Ticket.PANIC
        else:
            return False
        self.in_flight += 1
        self._transitioned()  # admission may have ended a park
        return True

    def retire(self) -> None:
        """Take no new jobs; :meth:`run` returns once the attempts in flight are over.

        Probing stops at once: a retired actor's old credentials must not eject the
        target its successor serves (they may share its health).
        """
        self._retired = True
        self._probes.cancel()
        if not self.in_flight:
            self._idle.set()

    @property
    def retired(self) -> bool:
        return self._retired

    def ejected_elsewhere(self, until_epoch: float, reason: str) -> None:
        """Another instance ejected this target until ``until_epoch`` (seconds since the epoch)."""
        now = trio.current_time()
        self.health.ejected_elsewhere(now, now + (until_epoch - time.time()), reason)
        self._transitioned()

    def update(self, target: Target, policy: HealthPolicy, checks: HealthChecks) -> None:
        """Adopt edits that do not change the connection (weight, models, health policy)."""
        self.target = target
        self.health.policy = policy
        self.checks = checks
        self._sleep.deadline = -float("inf")  # the probe loop reconsiders its schedule

    # --- the task ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe until retired; return once nothing is in flight any more."""
        self._probes = scope = trio.CancelScope()
        if self._retired:
            scope.cancel()
        task_status.started()
        await self._probe_loop(scope)
        await self._idle.wait()

    # --- probes ------------------------------------------------------------------------------

    async def _probe_loop(self, scope: trio.CancelScope) -> None:
        """Recovery checks when due; active probes every ``interval`` when configured."""
        with scope:
            next_active = trio.current_time() + self.checks.interval
            while True:
                health = self.health
                wake = health.until if health.state is State.EJECTED else float("inf")
                if self.checks.active:
                    wake = min(wake, next_active)
                with trio.move_on_at(wake) as self._sleep:
                    await trio.sleep_forever()
                now = trio.current_time()
                if health.check_due(now):
                    health.start_check(now)
                    self._transitioned()
                    result, error, wait = await self._probe()
                    if result is Check.OK and self.checks.request_checks:
                        result, error, wait = await self._request_check()
                    health.checked(trio.current_time(), result, error, wait)
                    self._transitioned()
                elif self.checks.active and now >= next_active:
                    result, error, wait = await self._probe()
                    health.probed(trio.current_time(), result, error, wait)
                    self._transitioned()
                    next_active = trio.current_time() + self.checks.interval
                elif not self.checks.active:
                    next_active = now + self.checks.interval

    async def _probe(self) -> tuple[Check, str, float | None]:
        """``GET`` the probe path with the target's credentials: is the provider answering?

        Any answer but a failure (5xx, 408, 401, 403) counts as alive: a 404 still
        means a server is there. A 429 parks the target.
        """
        checks = self.checks
        url = self.endpoint.probe_url(checks.path)
        headers = self.endpoint.request_headers(
            [*CHECK_HEADERS, *((n.lower(), v) for n, v in checks.headers.items())]
        )
        self.probes += 1
        result, error, wait = Check.FAILED, "timed out", None
        fault = check_fault(self.injection, self.target.id, None, False, self.api)
        extensions: dict[str, Any] = {"timeout": TIMEOUTS}
        if fault is not None:
            extensions[EXTENSION] = fault
        with trio.move_on_after(min(checks.interval, PROBE_TIMEOUT_S)):
            try:
                transport = await self._transport()
                request = httpx2.Request("GET", url, headers=headers, extensions=extensions)
                response = await transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            except Exception as exc:  # an unusable probe is a failed probe, never a crash
                error = type(exc).__name__
            else:
                meaning = judge_status(response.status_code)
                if meaning is Meaning.RATE_LIMITED:
                    result, error = Check.RATE_LIMITED, "HTTP 429"
                    wait = retry_after(response.headers)
                elif meaning in (Meaning.FAILURE, Meaning.CREDENTIAL):
                    error = f"HTTP {response.status_code}"
                else:
                    result, error = Check.OK, ""
        if result is Check.FAILED:
            self.probe_failures += 1
        return result, error, wait

    async def _request_check(self) -> tuple[Check, str, float | None]:
        """A minimal real request, as the last failed one was: does the provider serve now?

        Same API too: a target whose embeddings failed is checked with an embedding.
        Without a model to ask for (no failure seen, no default model, no model list)
        there is nothing to send and the ``GET`` stands alone.
        """
        shape = self._failed_shape
        model = shape[0] if shape else self.target.default_model
        if model is None and self.target.models:
            model = self.target.models[0]
        if model is None:
            return Check.OK, "", None
        stream = shape[1] if shape else False
        api = shape[2] if shape and shape[2] in self._urls else self.api
        self.probes += 1
        ended: list[AttemptError | None] = []  # how a committed stream ended
        job = Job(
            body=jsonio.dumpb(_check_body(api, self.target.provider.value, model, stream)),
            headers=CHECK_HEADERS,
            model=model,
            stream=stream,
            deadline=trio.current_time() + 2 * CHECK_BUDGETS.first_byte_timeout,
            budgets=CHECK_BUDGETS,
            client_format=api.format,
            api=api,
            provider_api=api,
            fault=check_fault(self.injection, self.target.id, model, stream, api),
        )
        error: AttemptError | None = None
        try:
            result = await self._exchange(job, ended.append)
            if isinstance(result, Committed):
                await result.body.pump(_ignore)  # read it to its end: it judges itself
                error = ended[0]  # the pump settles the attempt however it ends
            elif isinstance(result, Failed):
                error = result.error
        except Exception as exc:  # an unusable check is a failed check, never a crash
            error = AttemptCrashed(type(exc).__name__)
        if error is None or isinstance(error, ModelUnavailable):
            return Check.OK, "", None  # it answered (an error of the model is an answer)
        self.probe_failures += 1
        if isinstance(error, RateLimited):
            return Check.RATE_LIMITED, "HTTP 429", error.retry_after
        return Check.FAILED, f"request check: {error.word}", None

    # --- one attempt, in the requester's task -------------------------------------------------

    async def attempt(self, job: Job) -> Result:
        """Run ``job`` (taken by :meth:`submit`) in the calling task; see the module docstring.

        The wait for a slot is bounded by the first-byte budget (``queue_timeout``,
        nobody blamed); everything after it by the attempt's own budgets. A
        :class:`Committed` result's body settles the attempt when it ends; any other
        result has been settled when this returns.
        """
        began = trio.current_time()
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_at(
                min(job.deadline, began + job.budgets.first_byte_timeout)
            ) as waited:
                try:
                    await self._slots.acquire()
                except BaseException:  # cancelled while queued (the client left): re-raised
                    self._finish(job, AttemptAbandoned("the request was abandoned"), began, False)
                    raise
            if waited.cancelled_caught:
                error: AttemptError = QueueTimeout(
                    "the target's queue held the request past its first-byte budget"
                )
                self._finish(job, error, began, False)
                return Failed(error)
        settled = False

        def settle(error: AttemptError | None) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self._finish(job, error, began, True)

        result: Result | None = None
        try:
            result = await self._exchange(job, settle)
        except Exception:  # a bug of ours: the request fails over, the actor lives on
            log.exception("attempt failed", extra={"fields": {"target_id": self.target.id}})
            result = Failed(AttemptCrashed("internal error; see the gateway log"))
        finally:
            if result is None:  # cancelled (the client left): nothing learnt
                settle(AttemptAbandoned("the request was abandoned"))
            elif not isinstance(result, Committed):
                settle(result.error if isinstance(result, Failed) else None)
        return result

    async def _transport(self) -> httpx2.AsyncBaseTransport:
        transport = self.transport
        if transport is None:  # an https origin's TLS context is still loading
            await self._ready.wait()
            transport = self.transport
            assert transport is not None
        return transport

    async def _exchange(self, job: Job, settle: Callable[[AttemptError | None], None]) -> Result:
        """The HTTP call and what its answer means for the client.

        A :class:`Committed` stream's body calls ``settle`` when it is over; for any
        other result the caller settles. Error texts are fixed phrases plus an
        exception's class name, never its message: an HTTP library's message can
        quote a header, a credential included.
        """
        transport = self.transport or await self._transport()
        budget = AttemptBudget.start(job.budgets, job.deadline, trio.current_time())
        url = self._url if job.provider_api is self.api else self._urls[job.provider_api]
        extensions: dict[str, Any] = {"timeout": TIMEOUTS}
        if job.fault is not None:
            extensions[EXTENSION] = job.fault
        request = httpx2.Request(
            "POST",
            url if type(url) is not str else url.replace("{model}", job.model),
            headers=self.endpoint.request_headers(job.headers),
            content=job.body,
            extensions=extensions,
        )
        response = None
        with trio.move_on_at(budget.timer):
            try:
                response = await transport.handle_async_request(request)
            except httpx2.HTTPError as exc:
                return Failed(_transport_error(exc, answered=False))
        if response is None:
            return Failed(budget.expired())
        handed_off = complete = False
        try:
            status = response.status_code
            if job.stream and 200 <= status < 300:
                budget.headers(trio.current_time(), stream=True)
                result = await _Relay(self, job, budget, response, settle).open()
                handed_off = isinstance(result, Committed)
                return result
            budget.headers(trio.current_time(), stream=False)
            body = await self._read(response, budget)
            if isinstance(body, AttemptError):
                return Failed(body)
            complete = True
            return self._judge(job, response, body, budget)
        finally:
            if not handed_off:
                await _release(response, complete)

    async def _read(self, response: httpx2.Response, budget: AttemptBudget) -> bytes | AttemptError:
        """A whole answer's body, each piece within the body budget."""
        body = bytearray()
        with trio.move_on_at(budget.timer) as scope:
            try:
                async for chunk in _chunks(response):
                    body += chunk
                    if len(body) > MAX_BODY:
                        return UpstreamProtocolError("the answer's body is too large")
                    budget.progress(trio.current_time())
                    scope.deadline = budget.timer
            except httpx2.HTTPError as exc:
                return _transport_error(exc, answered=True)
        if scope.cancelled_caught:
            return budget.expired()
        return bytes(body)

    def _judge(
        self, job: Job, response: httpx2.Response, body: bytes, budget: AttemptBudget
    ) -> Whole | Failed:
        """What a whole answer means, and the client's version of it."""
        status = response.status_code
        meaning = judge_status(status, body if status in (400, 404, 413) else b"")
        translator = job.translator
        if meaning is Meaning.SUCCESS:
            if translator is not None:
                client_body, usage = _translate_answer(translator, body)
                if client_body is None:
                    return Failed(UpstreamProtocolError("the provider's answer is not valid"))
                headers = passed_headers(response.headers, JSON_TYPE)
            else:
                client_body, usage = body, _usage_of_bytes(body) if job.usage else None
                headers = passed_headers(
                    response.headers, response.headers.get("content-type", JSON_TYPE)
                )
            self._observe_first_byte(budget, trio.current_time())
            return Whole(Answer(status, headers, client_body), usage)
        if meaning is Meaning.CREDENTIAL:
            return Failed(CredentialRejected(status, self.target.id))
        if translator is not None:
            status_out, body_out = translator.error(status, body)
            answer = Answer(status_out, passed_headers(response.headers, JSON_TYPE), body_out)
        else:
            answer = Answer(
                status,
                passed_headers(response.headers, response.headers.get("content-type", JSON_TYPE)),
                body,
            )
        match meaning:
            case Meaning.CLIENT_ERROR:
                return Whole(answer)
            case Meaning.RATE_LIMITED:
                return Failed(
                    RateLimited(
                        "HTTP 429", retry_after=retry_after(response.headers), answer=answer
                    )
                )
            case Meaning.MODEL:
                return Failed(
                    ModelUnavailable(
                        status, f"HTTP {status} (an error of the model)", answer=answer
                    )
                )
        return Failed(UpstreamStatusError(status, f"HTTP {status}", answer=answer))

    # --- verdicts ---------------------------------------------------------------------------

    def _finish(self, job: Job, error: AttemptError | None, began: float, slot: bool) -> None:
        """An attempt is over: its slot and place back, its verdict to the health."""
        if slot:
            self._slots.release()
        self.in_flight -= 1
        if self._retired and not self.in_flight:
            self._idle.set()
        self._settle(job, error, trio.current_time() - began)

    def _observe_first_byte(self, budget: AttemptBudget, now: float) -> None:
        self.latency_estimate.observe(now - budget.started, now)

    def _settle(self, job: Job, error: AttemptError | None, elapsed: float) -> None:
        now = trio.current_time()
        health = self.health
        self.requests += 1
        if error is None:
            self.recent.append((now, "ok"))
            health.succeeded(now, job.ticket)
        else:
            self.recent.append((now, error.word))
            if isinstance(error, RateLimited):
                health.rate_limited(now, job.ticket, error.retry_after)
            elif error.blames_target:
                self.failures += 1
                self._failed_shape = (job.model, job.stream, job.provider_api)
                # A failure is slow as far as latency-aware balancing is concerned.
                self.latency_estimate.observe(elapsed, now)
                health.failed(now, job.ticket, error.word)
            elif isinstance(error, ModelUnavailable):
                health.succeeded(now, job.ticket)  # it answered: proof of life
            else:
                health.released(job.ticket)  # nothing learnt about the target
        self._transitioned()

    def _transitioned(self) -> None:
        """Log a health transition once, and wake the probe loop for an ejection."""
        transition = self.health.take_transition()
        if transition is None:
            return
        if self.observer is not None:
            self.observer.transitioned(transition)
        if transition.new is State.EJECTED:
            self._sleep.deadline = min(self._sleep.deadline, self.health.until)
            if transition.local and self.announce is not None:
                self.announce(self, transition)
        level = logging.WARNING if transition.new is State.EJECTED else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                f"target {transition.new.value}",
                extra={
                    "fields": {
                        "target_id": self.target.id,
                        "provider": self.target.provider.value,
                        "from": transition.old.value,
                        "reason": transition.reason,
                        "cause": transition.cause,
                    }
                },
            )

    def statistics(self) -> TargetStatistics:
        now = trio.current_time()
        return TargetStatistics(
            id=self.target.id,
            provider=self.target.provider.value,
            health=self.health.statistics(now),
            in_flight=self.in_flight,
            queued=self.queued,
            latency_s=self.latency(now),
            requests=self.requests,
            failures=self.failures,
            probes=self.probes,
            probe_failures=self.probe_failures,
            restarting=self.restarting,
            recent=tuple(self.recent),
        )


# --- a stream -------------------------------------------------------------------------------


class _Relay:
    """One streamed attempt: the provider's events judged, translated, and relayed.

    :meth:`open` reads until the first content (the commit) or a failure, in the
    requester's task, each wait for the provider under its own cancel scope; then
    :meth:`pump` sends the stream to the client, in the same task, its waits kept by
    the job's :class:`~trio_gateway.runtime.ending.EndStreams` (the runtime's; a
    recovery check's: the actor's own) (idle timer, shutdown) under one cancel scope that never interrupts a send. The pump settles
    the attempt, closes the provider's response and tells ``job.on_end`` when the
    stream is over, however it ends; :meth:`discard` and :meth:`dropped` do it for a
    stream that is never pumped.
    """

    def __init__(
        self,
        actor: TargetActor,
        job: Job,
        budget: AttemptBudget,
        response: httpx2.Response,
        settle: Callable[[AttemptError | None], None],
    ) -> None:
        self.actor, self.job, self.budget, self.response = actor, job, budget, response
        self.settle = settle
        translated = job.translator.stream() if job.translator is not None else None
        #: A translator that takes the watch's parsed events (each event parsed once).
        self._events = getattr(translated, "feed_events", None)
        self.watch = watch = StreamWatch(
            job.provider_api, hide_usage=job.hide_usage, events=self._events is not None
        )
        self.stream = (
            translated
            if translated is not None
            else ResponsesPassthroughStream()
            if job.provider_api is Api.RESPONSES
            else PassthroughStream(job.client_format, watch)
        )
        self.chunks = _chunks(response).__aiter__()
        self.closed = False  # the provider ended its body cleanly
        self.sent = 0

    async def _next(self) -> bytes | AttemptError | None:
        """The provider's next chunk, an error, or ``None`` once its body ended cleanly
        (before the commit: a wait under its own cancel scope)."""
        chunk = None
        with trio.CancelScope(deadline=self.budget.timer) as wait:
            try:
                chunk = await anext(self.chunks)
            except StopAsyncIteration:
                self.closed = True
            except httpx2.HTTPError as exc:
                return _transport_error(exc, answered=True)
        if wait.cancelled_caught:
            return self.budget.expired()
        return chunk

    def _feed(self, chunk: bytes | None) -> tuple[bytes, bool]:
        """The client's bytes for the provider's ``chunk`` (``None``: its end), and
        whether content came."""
        watch = self.watch
        out, content = watch.flush() if chunk is None else watch.feed(chunk)
        if not out:
            return b"", content
        if self._events is None:
            return self.stream.feed(out), content
        events = watch.events
        client_bytes = self._events(events)
        events.clear()  # type: ignore[union-attr]
        return client_bytes, content

    def _broken(self) -> AttemptError | None:
        """The provider's stream went wrong at the event just fed."""
        error = self.watch.error
        if error is None:
            return None
        if not self.watch.started and error != MALFORMED:
            return StreamErrorEvent(f"the stream began with an error ({error})")
        if error == MALFORMED:
            return UpstreamProtocolError("the provider's stream carries a malformed event")
        return StreamErrorEvent(f"the stream broke ({error})")  # relayed already

    async def open(self) -> Result:
        """Read until the first content: then :class:`Committed`; or how it failed."""
        held: list[bytes] = []
        watch, stream = self.watch, self.stream
        while True:
            chunk = await self._next()  # nothing was sent: a shutdown is not ours here
            if isinstance(chunk, AttemptError):
                return self._failed(chunk)
            client_bytes, content = self._feed(chunk)
            if watch.error is not None and not watch.started:
                return self._failed(self._broken() or UpstreamProtocolError("broken stream"))
            if stream.skipped or stream.error is not None:
                return self._failed(UpstreamProtocolError("the provider's stream is not valid"))
            if client_bytes:
                held.append(client_bytes)
            if watch.complete or (self.closed and watch.finished):
                held.append(stream.finish())  # a whole stream before any content: it is all
                break
            if content and held:
                break
            if self.closed:
                return self._failed(StreamIncomplete("the stream ended before its first content"))
        now = trio.current_time()
        self.budget.content(now)
        self.actor._observe_first_byte(self.budget, now)
        headers = passed_headers(self.response.headers, SSE_TYPE)
        return Committed(self.response.status_code, headers, StreamBody(self, b"".join(held)))

    def _failed(self, error: AttemptError) -> Failed:
        """The stream failed before its first content, with what its provider reported."""
        return Failed(error, self.watch.usage())

    async def pump(self, first: bytes, send: Callable[[bytes], Awaitable[None]]) -> None:
        """The committed stream, from its first bytes to its end, each chunk given to
        ``send`` as it comes. See the class docstring."""
        watch, stream, job = self.watch, self.stream, self.job
        budget, chunks = self.budget, self.chunks
        end = job.end if job.end is not None else self.actor.end_streams
        #: What settles the attempt: until decided, the client left (nothing learnt).
        outcome: AttemptError | None = AttemptAbandoned("the client left")
        how = "client_left"
        complete = False
        wait: StreamWait | None = None
        try:
            wait = end.follow(budget)
            last = first
            failure: AttemptError | None = None
            with wait.scope:  # cancelled (by ``end``) only while waiting: never mid-send
                now = trio.current_time()
                await send(first)
                self.sent += len(first)
                budget.paused(trio.current_time() - now)
                failure = self._broken()
                done = failure is not None or watch.complete or (self.closed and watch.finished)
                while not done and not wait.over():
                    wait.waiting = True
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        chunk = None
                        self.closed = True
                    except httpx2.HTTPError as exc:
                        failure = _transport_error(exc, answered=True)
                        break
                    wait.waiting = False
                    if wait.scope.cancel_called:
                        # Ended as the chunk came (the cancel is pending): it would
                        # interrupt the send, so the chunk is not sent.
                        break
                    client_bytes, content = self._feed(chunk)
                    now = trio.current_time()
                    if content:
                        budget.content(now)
                    if client_bytes:
                        last = client_bytes
                        await send(client_bytes)
                        self.sent += len(client_bytes)
                        budget.paused(trio.current_time() - now)
                    failure = self._broken()
                    done = failure is not None or watch.complete or self.closed
            if failure is None and not done:  # the wait was ended, or was not begun
                if end.is_set():
                    how, outcome = "shutdown", AttemptAbandoned("the gateway is shutting down")
                    await send(
                        _stream_end_event(job.api, "service_unavailable", SHUTTING_DOWN, last)
                    )
                    return
                failure = budget.expired()
            if failure is None and (watch.complete or watch.finished):
                how, outcome = "complete", None
                tail = stream.finish()
                if tail:
                    await send(tail)
                    self.sent += len(tail)
                complete = self.closed or await _drain(chunks)
                return
            if failure is None:
                failure = StreamIncomplete("the provider's stream ended before it was complete")
            how, outcome = failure.word, failure
            if not isinstance(failure, StreamErrorEvent):  # an error event went out already
                tail = stream.fail(
                    "upstream_timeout"
                    if isinstance(failure, UpstreamTimeout)
                    else "upstream_error",
                    failure.message,
                )
                if tail:
                    await send(tail)
                    self.sent += len(tail)
        finally:
            if wait is not None:
                end.forget(wait)
            self.settle(outcome)
            await _release(self.response, complete)
            if job.on_end is not None:
                usage = watch.usage()
                job.on_end(StreamEnd(how, self.sent, watch.malformed + stream.skipped, usage))

    async def discard(self) -> None:
        """The stream will not be sent (the client left before it began): clean up."""
        self._abandoned()
        await _release(self.response, False)

    def dropped(self) -> None:
        """Like :meth:`discard`, where nothing can be awaited (a finalizer)."""
        self._abandoned()
        with contextlib.suppress(RuntimeError):  # no Trio run any more: nothing to close with
            trio.lowlevel.spawn_system_task(_release, self.response, False)

    def _abandoned(self) -> None:
        self.settle(AttemptAbandoned("the client left"))
        if self.job.on_end is not None:
            self.job.on_end(StreamEnd("client_left", 0))


SHUTTING_DOWN = "the gateway is shutting down; the stream was ended before it finished"


class StreamBody:
    """A committed stream's body: :meth:`pump` sends it, once.

    Whoever receives a :class:`Committed` must pump its body or :meth:`discard` it
    (a no-op once pumped). If it does neither (the client left after the response
    was made and before it was sent, and nobody awaited anything more), dropping the
    object (CPython frees it at once) settles the attempt and closes the provider's
    response instead.
    """

    __slots__ = ("_first", "_relay", "_started")

    def __init__(self, relay: _Relay, first: bytes) -> None:
        self._relay = relay
        self._first = first
        self._started = False

    async def pump(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send the stream with ``send``, chunk by chunk, until it ends."""
        if self._started:
            raise RuntimeError("a stream's body is sent once")
        self._started = True
        await self._relay.pump(self._first, send)

    async def discard(self) -> None:
        """The body will not be sent: settle and close now (nothing once it was pumped)."""
        if not self._started:
            self._started = True
            await self._relay.discard()

    def __del__(self) -> None:
        if not self._started:
            self._relay.dropped()


# --- helpers ---------------------------------------------------------------------------------


def _stream_end_event(api: Api, type: str, message: str, last: bytes) -> bytes:
    """An error event ending a committed stream of ``api``; ``last``: the bytes sent last
    (a Responses event carries the next sequence number)."""
    if api is Api.RESPONSES:
        return responses_error_event(type, message, sequence_number=next_sequence_number(last))
    return stream_error_event(api.format, type, message)


def passed_headers(headers: httpx2.Headers, content_type: str) -> list[tuple[str, str]]:
    """The provider's response headers a client may see, after a content type of ours."""
    passed = [("content-type", content_type)]
    for name, value in headers.items():
        if name in PASSED_RESPONSE_HEADERS or name.startswith(PASSED_PREFIXES):
            passed.append((name, value))
    return passed


def _check_body(api: Api, provider: str, model: str, stream: bool) -> dict[str, object]:
    """The smallest real request of ``api`` a provider serves: one word in, one token out."""
    if api is Api.EMBEDDINGS:
        return {"model": model, "input": CHECK_PROMPT}
    if api is Api.RESPONSES:
        # 16 is the Responses API's smallest limit; nothing is stored at the provider.
        return {
            "model": model,
            "input": CHECK_PROMPT,
            "max_output_tokens": 16,
            "store": False,
            "stream": stream,
        }
    messages = [{"role": "user", "content": CHECK_PROMPT}]
    if api is Api.COUNT_TOKENS:
        return {"model": model, "messages": messages}
    body: dict[str, object] = {"model": model, "messages": messages, "stream": stream}
    if api is Api.MESSAGES or provider == "openai-compatible":
        body["max_tokens"] = 1
    else:
        body["max_completion_tokens"] = 1
    return body


def _translate_answer(translator: Translator, body: bytes) -> tuple[bytes | None, Usage | None]:
    """A whole success in the client's dialect (``None`` when it is not a valid answer),
    and the provider's usage."""
    try:
        parsed = jsonio.loads(body)
        if not isinstance(parsed, dict):
            return None, None
        usage = usage_of(parsed)  # before the translator, which may reuse the dict
        return jsonio.dumpb(translator.response(parsed)), usage
    except (ValueError, TypeError, KeyError, AttributeError, GatewayError):
        return None, None


def _usage_of_bytes(body: bytes) -> Usage | None:
    """The usage of a whole answer passed on as it came (parsed here for that alone)."""
    try:
        return usage_of(jsonio.loads(body))
    except ValueError:
        return None


def _transport_error(exc: httpx2.HTTPError, *, answered: bool) -> AttemptError:
    """An HTTP library error as the attempt's outcome (its class name, never its message)."""
    name = type(exc).__name__
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamTimeout(f"timed out ({name})")
    if answered:
        return UpstreamReadError(f"the answer broke off ({name})")
    if isinstance(exc, httpx2.ConnectError | httpx2.UnsupportedProtocol):
        return UpstreamConnectError(f"cannot connect to the provider ({name})")
    if isinstance(exc, httpx2.LocalProtocolError):
        # Our request could not be written: a configuration problem, not the provider's.
        return AttemptCrashed("the request could not be sent (check the target's headers)")
    if isinstance(exc, httpx2.RemoteProtocolError):
        return UpstreamProtocolError(f"the provider broke the connection or HTTP ({name})")
    return UpstreamReadError(f"the connection broke before the answer ({name})")


async def _ignore(chunk: bytes) -> None:
    """Where a recovery check's stream goes: nowhere."""


async def _drain(chunks: object) -> bool:
    """Read what is left after a stream's terminator, so its connection is reused."""
    with trio.move_on_after(DRAIN_S), contextlib.suppress(httpx2.HTTPError):
        async for _ in chunks:  # type: ignore[attr-defined]
            pass
        return True
    return False


def _chunks(response: httpx2.Response) -> AsyncIterable[bytes]:
    """The answer's body as it comes: the connection's own stream when nothing is to be
    decoded (the gateway asks for no compression), else httpx's decoding iterator."""
    encoding = response.headers.get("content-encoding")
    if encoding is None or encoding == "identity":
        return response.stream  # type: ignore[return-value]
    return response.aiter_bytes()


async def _release(response: httpx2.Response | None, complete: bool) -> None:
    """Give the connection back to the pool (read to the end) or close it."""
    if response is None:
        return
    if complete:
        await response.aclose()
    else:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await response.aclose()


def wall_time(trio_time: float) -> float:
    """A ``trio.current_time()`` value as seconds since the epoch."""
    return time.time() + (trio_time - trio.current_time())
