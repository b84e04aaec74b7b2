"""The target actor: one supervised task per target, owning its health, its queue and its attempts.

Theory of operation
-------------------
A :class:`TargetActor` owns, for one target:

* its **health** (:class:`~trio_gateway.core.health.Health`) and latency estimate.
  Only the actor's own code changes them: admission when a job is submitted
  (:meth:`submit`, synchronous, called by the requester: decide, then do the I/O),
  the verdict when an attempt ends, the results of its probes;
* its **in-flight count**, raised by :meth:`submit` (so balancers see a request at
  once) and lowered when the job ends, and a bounded **request channel**:
  :meth:`submit` never waits, a full queue refuses the job;
* **every attempt, from its dequeue to its verdict**: the HTTP call, its time
  budgets (:class:`~trio_gateway.core.attempt.AttemptBudget`), reading and judging
  the answer (:func:`~trio_gateway.core.attempt.judge_status`, the stream watch),
  putting it in the client's dialect, and what it means for the target's health.

The requester learns how its job went from the job's own reply channel, in order:
:class:`Whole` (an answer for the client: a success, or the client's own error),
or :class:`Failed` (an :class:`~trio_gateway.errors.AttemptError`: fail over; it
may carry the provider's error answer), or :class:`Committed` (a stream with
content: status, headers, the first client bytes), then client bytes, then
:class:`Ended`. The one thing a requester does to a job is :meth:`Job.abandon` it
(the client left, the queue held it too long): that cancels the job's scope, which
aborts the provider call at once, connection included, and the attempt says
nothing about the target.

:meth:`run` serves jobs, each in a task of its own nursery, at most
``max_in_flight`` at once, and runs the probe loop: the recovery check of an
ejected target when its out-period is over, and active probes every ``interval``
when they are configured. A recovery check is two steps: a ``GET`` of the model list
(is a server there at all?) and then, when it answers and ``request_checks`` is on,
a minimal real request (one output token) shaped like the last one that failed:
same model, streamed or not. Only a target that passes both is restored: a provider
whose model list answers while its completions hang stays out without a client
paying for it. The check runs through the same attempt code as client requests,
with :data:`CHECK_BUDGETS`. It uses an HTTP client it does not own (shared per
origin, see :mod:`trio_gateway.runtime.clients`).

Retiring (:meth:`retire`) closes the request channel: queued jobs are still served,
then :meth:`run` returns. If :meth:`run` crashes, its nursery cancels the running
jobs (their requesters see their reply channels close and fail over); the
supervisor restarts it with the same channel and health, and the actor is not
eligible while it waits to restart (:attr:`restarting`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
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
from trio_gateway.providers.formats import Api, ApiFormat
from trio_gateway.providers.passthrough import PassthroughStream
from trio_gateway.providers.translate import ResponsesPassthroughStream, Translator
from trio_gateway.providers.usage import Usage, usage_of
from trio_gateway.providers.watch import MALFORMED, StreamWatch
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
#: How long a message may wait for the requester to take it before the job gives up:
#: the requester is gone or stuck, and the connection must not leak.
STALL_S = 300.0
#: Response headers of a provider that a client may care about and that stay true
#: through the gateway (others describe the provider's own connection).
PASSED_RESPONSE_HEADERS = frozenset(
    {"retry-after", "retry-after-ms", "openai-processing-ms", "openai-version"}
)
PASSED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
RECENT = 20


# --- messages ------------------------------------------------------------------------


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
    """A stream with content: what the client gets first. Client bytes follow."""

    status: int
    headers: Sequence[tuple[str, str]]
    first: bytes


@attrs.frozen
class Ended:
    """The committed stream is over; ``error``: how it failed (its error event was sent)."""

    error: AttemptError | None
    #: Provider events passed on unread (same dialect) or skipped (translated).
    malformed: int = 0
    #: The provider's token usage and model, as far as the stream reported them.
    usage: Usage | None = None


Reply = Whole | Failed | Committed | Ended | bytes


@attrs.define(eq=False)
class Job:
    """One attempt: what to send, how long it may take, and where to answer.

    Written by the requester before :meth:`TargetActor.submit`; afterwards only the
    actor writes it (``ticket``, ``dequeued``), except :meth:`abandon`.
    """

    body: bytes
    headers: Sequence[tuple[str, str]]
    model: str
    stream: bool
    deadline: float
    budgets: Budgets
    client_format: ApiFormat
    reply: trio.MemorySendChannel[Reply]
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
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    ticket: Ticket = Ticket.NORMAL
    dequeued: bool = False

    def abandon(self) -> None:
        """Stop this attempt (idempotent): the provider call is aborted at once."""
        self.scope.cancel()


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


class _Stalled(Exception):
    """The requester did not take a message for :data:`STALL_S` seconds."""


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
        #: At most this many requests at once; as many more may wait in the queue.
        self.max_in_flight = target.max_in_flight or MAX_IN_FLIGHT
        self._send, self._receive = trio.open_memory_channel[Job](
            min(self.max_in_flight, QUEUE_SIZE)
        )
        self._retired = False
        self._probes = trio.CancelScope()
        self._sleep = trio.CancelScope()

    # --- used by the dispatcher (synchronous, same thread) -------------------------------

    def latency(self, now: float) -> float | None:
        return self.latency_estimate.estimate(now)

    @property
    def usable(self) -> bool:
        """Neither retired nor waiting to restart: it may be sent a job."""
        return not self._retired and not self.restarting

    def admits(self, now: float) -> bool:
        return self.usable and self.health.admits(now)

    def has_room(self) -> bool:
        """Would :meth:`submit` find room in the queue now?"""
        stats = self._send.statistics()
        return stats.current_buffer_used < stats.max_buffer_size

    def submit(self, job: Job, now: float) -> bool:
        """Admit and queue ``job`` without waiting; ``False`` if it cannot be taken now."""
        if not self.usable:
            return False
        if self.health.admits(now):
            job.ticket = self.health.admit(now)
        elif job.last_resort:
            job.ticket = Ticket.PANIC
        else:
            return False
        try:
            self._send.send_nowait(job)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        self.in_flight += 1
        self._transitioned()  # admission may have ended a park
        return True

    def retire(self) -> None:
        """Take no new jobs; serve the queued ones, then let :meth:`run` return.

        Probing stops at once: a retired actor's old credentials must not eject the
        target its successor serves (they may share its health).
        """
        self._retired = True
        self._send.close()
        self._probes.cancel()

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

    async def run(
        self,
        client: httpx2.AsyncClient,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve jobs until retired and drained; probe meanwhile. Owns the job tasks."""
        slots = trio.Semaphore(self.max_in_flight)
        async with trio.open_nursery() as nursery:
            self._probes = trio.CancelScope()
            if self._retired:
                self._probes.cancel()
            nursery.start_soon(self._probe_loop, client, self._probes)
            task_status.started()
            while True:
                await slots.acquire()
                try:
                    job = await self._receive.receive()
                except trio.EndOfChannel:
                    slots.release()
                    break
                nursery.start_soon(self._serve, client, job, slots)
            self._probes.cancel()  # retired: the nursery waits for the running jobs

    # --- probes ------------------------------------------------------------------------------

    async def _probe_loop(self, client: httpx2.AsyncClient, scope: trio.CancelScope) -> None:
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
                    result, error, wait = await self._probe(client)
                    if result is Check.OK and self.checks.request_checks:
                        result, error, wait = await self._request_check(client)
                    health.checked(trio.current_time(), result, error, wait)
                    self._transitioned()
                elif self.checks.active and now >= next_active:
                    result, error, wait = await self._probe(client)
                    health.probed(trio.current_time(), result, error, wait)
                    self._transitioned()
                    next_active = trio.current_time() + self.checks.interval
                elif not self.checks.active:
                    next_active = now + self.checks.interval

    async def _probe(self, client: httpx2.AsyncClient) -> tuple[Check, str, float | None]:
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
        with trio.move_on_after(min(checks.interval, PROBE_TIMEOUT_S)):
            try:
                response = await client.get(
                    url, headers=headers, extensions={EXTENSION: fault} if fault else None
                )
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

    async def _request_check(self, client: httpx2.AsyncClient) -> tuple[Check, str, float | None]:
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
        send, receive = trio.open_memory_channel[Reply](64)
        now = trio.current_time()
        job = Job(
            body=jsonio.dumpb(_check_body(api, self.target.provider.value, model, stream)),
            headers=CHECK_HEADERS,
            model=model,
            stream=stream,
            deadline=now + 2 * CHECK_BUDGETS.first_byte_timeout,
            budgets=CHECK_BUDGETS,
            client_format=api.format,
            reply=send,
            api=api,
            provider_api=api,
            fault=check_fault(self.injection, self.target.id, model, stream, api),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_discard, receive)
            try:
                error = await self._attempt(client, job)
            except (trio.BrokenResourceError, trio.ClosedResourceError, _Stalled):
                error = None
            finally:
                send.close()
        if error is None or isinstance(error, ModelUnavailable):
            return Check.OK, "", None  # it answered (an error of the model is an answer)
        self.probe_failures += 1
        if isinstance(error, RateLimited):
            return Check.RATE_LIMITED, "HTTP 429", error.retry_after
        return Check.FAILED, f"request check: {error.word}", None

    # --- one attempt -------------------------------------------------------------------------

    async def _serve(self, client: httpx2.AsyncClient, job: Job, slots: trio.Semaphore) -> None:
        job.dequeued = True
        began = trio.current_time()
        error: AttemptError | None = AttemptAbandoned("the request was abandoned")
        try:
            with job.scope:
                try:
                    error = await self._attempt(client, job)
                except (trio.BrokenResourceError, trio.ClosedResourceError, _Stalled):
                    error = AttemptAbandoned("the requester stopped reading")
                except Exception:  # a bug of ours: the request fails over, the actor lives on
                    log.exception("job failed", extra={"fields": {"target_id": self.target.id}})
                    error = AttemptCrashed("internal error; see the gateway log")
                    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                        job.reply.send_nowait(Failed(error))
        finally:
            job.reply.close()
            if job.scope.cancelled_caught:
                error = AttemptAbandoned("the request was abandoned")
            self._settle(job, error, trio.current_time() - began)
            self.in_flight -= 1
            slots.release()

    async def _attempt(self, client: httpx2.AsyncClient, job: Job) -> AttemptError | None:
        """The HTTP call; returns how it ended (``None``: the client got its answer).

        Error texts are fixed phrases plus an exception's class name, never its
        message: an HTTP library's message can quote a header, a credential included.
        """
        now = trio.current_time()
        budget = AttemptBudget.start(job.budgets, job.deadline, now)
        url = self._url if job.provider_api is self.api else self._urls[job.provider_api]
        request = client.build_request(
            "POST",
            url if type(url) is not str else url.replace("{model}", job.model),
            headers=self.endpoint.request_headers(job.headers),
            content=job.body,
        )
        if job.fault is not None:
            request.extensions[EXTENSION] = job.fault
        response = None
        with trio.move_on_at(budget.timer):
            try:
                response = await client.send(request, stream=True)
            except httpx2.HTTPError as exc:
                return await self._failed(job, _transport_error(exc, answered=False))
        if response is None:
            return await self._failed(job, budget.expired())
        complete = False
        try:
            status = response.status_code
            if job.stream and 200 <= status < 300:
                budget.headers(trio.current_time(), stream=True)
                error, complete = await self._relay_stream(job, budget, response)
                return error
            budget.headers(trio.current_time(), stream=False)
            body = await self._read(response, budget)
            if isinstance(body, AttemptError):
                return await self._failed(job, body)
            complete = True
            return await self._judge(job, response, body, budget)
        finally:
            await _release(response, complete and not job.scope.cancel_called)

    async def _read(self, response: httpx2.Response, budget: AttemptBudget) -> bytes | AttemptError:
        """A whole answer's body, each piece within the body budget."""
        body = bytearray()
        with trio.move_on_at(budget.timer) as scope:
            try:
                async for chunk in response.aiter_bytes():
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

    async def _judge(
        self, job: Job, response: httpx2.Response, body: bytes, budget: AttemptBudget
    ) -> AttemptError | None:
        """What a whole answer means; the client's version of it goes to the requester."""
        status = response.status_code
        meaning = judge_status(status, body if status in (400, 404, 413) else b"")
        translator = job.translator
        if meaning is Meaning.SUCCESS:
            if translator is not None:
                client_body, usage = _translate_answer(translator, body)
                if client_body is None:
                    return await self._failed(
                        job, UpstreamProtocolError("the provider's answer is not valid")
                    )
                headers = passed_headers(response.headers, JSON_TYPE)
            else:
                client_body, usage = body, _usage_of_bytes(body) if job.usage else None
                headers = passed_headers(
                    response.headers, response.headers.get("content-type", JSON_TYPE)
                )
            self._observe_first_byte(budget)
            await self._last(job, Whole(Answer(status, headers, client_body), usage))
            return None
        if meaning is Meaning.CREDENTIAL:
            return await self._failed(job, CredentialRejected(status, self.target.id))
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
                await self._last(job, Whole(answer))
                return None
            case Meaning.RATE_LIMITED:
                error: AttemptError = RateLimited(
                    "HTTP 429", retry_after=retry_after(response.headers), answer=answer
                )
            case Meaning.MODEL:
                error = ModelUnavailable(
                    status, f"HTTP {status} (an error of the model)", answer=answer
                )
            case _:
                error = UpstreamStatusError(status, f"HTTP {status}", answer=answer)
        return await self._failed(job, error)

    async def _relay_stream(
        self, job: Job, budget: AttemptBudget, response: httpx2.Response
    ) -> tuple[AttemptError | None, bool]:
        """Judge the provider's events, translate them, commit on the first content.

        Returns how the attempt ended and whether the provider's body was read to its
        end (its connection can then be reused).
        """
        watch = StreamWatch(job.provider_api, hide_usage=job.hide_usage)
        stream = (
            job.translator.stream()
            if job.translator is not None
            else ResponsesPassthroughStream()
            if job.provider_api is Api.RESPONSES
            else PassthroughStream(job.client_format, watch)
        )
        headers = passed_headers(response.headers, SSE_TYPE)
        held: list[bytes] = []
        committed = False
        chunks = response.aiter_bytes()
        error: AttemptError | None = None
        closed = False  # the provider ended its body cleanly
        while True:
            chunk = None
            with trio.move_on_at(budget.timer) as wait:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    closed = True
                except httpx2.HTTPError as exc:
                    error = _transport_error(exc, answered=True)
            if wait.cancelled_caught:
                error = budget.expired()
            if error is not None:
                break
            if closed:
                out, content = watch.flush()
            else:
                assert chunk is not None
                out, content = watch.feed(chunk)
            if watch.error is not None and not watch.started:
                if watch.error == MALFORMED:
                    error = UpstreamProtocolError("the stream began with a malformed event")
                else:
                    error = StreamErrorEvent(f"the stream began with an error ({watch.error})")
                break
            client_bytes = stream.feed(out) if out else b""
            if not committed:
                if stream.skipped or stream.error is not None:
                    error = UpstreamProtocolError("the provider's stream is not valid")
                    break
                if client_bytes:
                    held.append(client_bytes)
                if content and held and not watch.complete:
                    committed = await self._commit(job, budget, response.status_code, headers, held)
            else:
                if client_bytes:
                    await self._deliver(job, client_bytes)
                if content:
                    budget.content(trio.current_time())
            if watch.complete or closed:
                break
            if watch.error is not None:
                # An error event after the first content: relayed already, the stream is over.
                error = StreamErrorEvent(f"the stream broke ({watch.error})")
                break

        malformed = watch.malformed + stream.skipped
        if error is None and (watch.complete or watch.finished):
            tail = stream.finish()
            if not committed:
                held.append(tail)
                await self._commit(job, budget, response.status_code, headers, held)
            elif tail:
                await self._deliver(job, tail)
            await self._last(job, Ended(None, malformed, watch.usage()))
            complete = closed or await _drain(chunks)
            return None, complete
        if error is None:
            error = StreamIncomplete("the provider's stream ended before it was complete")
        if not committed:
            return await self._failed(job, error, watch.usage()), False
        if not isinstance(error, StreamErrorEvent):
            tail = stream.fail(
                "upstream_timeout" if isinstance(error, UpstreamTimeout) else "upstream_error",
                error.message,
            )
            if tail:
                await self._deliver(job, tail)
        await self._last(job, Ended(error, malformed, watch.usage()))
        return error, False

    async def _commit(
        self,
        job: Job,
        budget: AttemptBudget,
        status: int,
        headers: Sequence[tuple[str, str]],
        held: list[bytes],
    ) -> bool:
        budget.content(trio.current_time())
        self._observe_first_byte(budget)
        await self._deliver(job, Committed(status, headers, b"".join(held)))
        held.clear()
        return True

    async def _deliver(self, job: Job, message: Reply) -> None:
        """Hand ``message`` to the requester; :class:`_Stalled` if it does not take it."""
        try:
            job.reply.send_nowait(message)
        except trio.WouldBlock:
            with trio.move_on_after(STALL_S) as stalled:
                await job.reply.send(message)
            if stalled.cancelled_caught:
                raise _Stalled from None

    async def _last(self, job: Job, message: Reply) -> None:
        """The job's final message: the verdict stands whatever the requester does now."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, _Stalled):
            await self._deliver(job, message)

    async def _failed(
        self, job: Job, error: AttemptError, usage: Usage | None = None
    ) -> AttemptError:
        await self._last(job, Failed(error, usage))
        return error

    # --- verdicts ---------------------------------------------------------------------------

    def _observe_first_byte(self, budget: AttemptBudget) -> None:
        now = trio.current_time()
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
            queued=self._send.statistics().current_buffer_used,
            latency_s=self.latency(now),
            requests=self.requests,
            failures=self.failures,
            probes=self.probes,
            probe_failures=self.probe_failures,
            restarting=self.restarting,
            recent=tuple(self.recent),
        )


# --- helpers ---------------------------------------------------------------------------------


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


async def _discard(channel: trio.MemoryReceiveChannel[Reply]) -> None:
    async with channel:
        async for _ in channel:
            pass


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


async def _drain(chunks: object) -> bool:
    """Read what is left after a stream's terminator, so its connection is reused."""
    with trio.move_on_after(DRAIN_S), contextlib.suppress(httpx2.HTTPError):
        async for _ in chunks:  # type: ignore[attr-defined]
            pass
        return True
    return False


async def _release(response: httpx2.Response | None, complete: bool) -> None:
    """Give the connection back to the pool (read to the end) or close it."""
    if response is None:
        return
    if complete and response.is_stream_consumed:
        await response.aclose()
    else:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await response.aclose()


def wall_time(trio_time: float) -> float:
    """A ``trio.current_time()`` value as seconds since the epoch."""
    return time.time() + (trio_time - trio.current_time())
