"""The target actor: one supervised task per target, owning its pool, health and queue.

Theory of operation
-------------------
A :class:`TargetActor` owns, for one target:

* its **breaker** (:class:`~trio_gateway.core.health.Breaker`) and latency
  estimate; only the actor's own tasks change them, when a job ends;
* its **in-flight count**, raised by :meth:`submit` (so balancers see a request at
  once) and lowered when the job ends;
* a bounded **request channel**: :meth:`submit` never waits; a full queue refuses
  the job, which the dispatcher reports as overload;
* its own pooled **httpx2 client**, opened and closed by :meth:`run`.

:meth:`run` takes one job at a time from the channel while fewer than
``max_in_flight`` are running, and serves each in a task of its own nursery.
A job carries a cancel scope made by the requester: the requester cancels it
(after recording why in :attr:`Job.abort`) when a time budget runs out or the
client leaves, which aborts the upstream call at once, connection included.

Each job answers through its own reply channel, in order: either one
:class:`Answer` (a whole response: non-streaming, or any error status), or
:class:`StreamStart`, body chunks (``bytes``) and :class:`StreamEnd`; or
:class:`AttemptFailed` at any point. The reply channel's send end is closed
when the job ends, so a requester never waits for a job that is gone.

Retiring (:meth:`retire`) closes the request channel: queued jobs are still
served, then :meth:`run` returns. If :meth:`run` crashes, its nursery cancels
the running jobs (their requesters see the reply channel close and fail over);
the supervisor restarts it with the same channel, breaker and queue.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import attrs
import httpx2
import trio

from trio_gateway.config.models import HealthChecks, Target
from trio_gateway.core.balancing import PeakEwma
from trio_gateway.core.failover import (
    Outcome,
    Verdict,
    outcome_verdict,
    parse_retry_after,
    status_verdict,
)
from trio_gateway.core.health import Breaker, BreakerPolicy, BreakerStatistics, Ticket
from trio_gateway.providers.endpoints import Endpoint
from trio_gateway.providers.watch import MALFORMED, StreamWatch

log = logging.getLogger("trio_gateway.target")

QUEUE_SIZE = 256
MAX_IN_FLIGHT = 1024
MAX_BODY = 64 << 20
CONNECT_TIMEOUT_S = 10.0
#: After a stream's terminator: how long to read what is left, to keep the connection.
DRAIN_S = 1.0
PROBE_TIMEOUT_S = 10.0
#: httpx2's own timeouts are a safety net only: the requester's budgets cancel first.
SAFETY_TIMEOUT_S = 3600.0


# --- messages ------------------------------------------------------------------------


@attrs.frozen
class Answer:
    """A whole response: non-streaming success, or any error status."""

    status: int
    headers: httpx2.Headers
    body: bytes


@attrs.frozen
class StreamStart:
    status: int
    headers: httpx2.Headers


@attrs.frozen
class Meta:
    """Whole stream events that carry no content yet (metadata, pings, keep-alives).

    Forwarded like content, but they neither commit a stream (failover stays
    possible) nor reset its idle timer. Content comes as plain ``bytes``.
    """

    data: bytes


@attrs.frozen
class StreamEnd:
    """The provider closed the stream.

    ``complete``: its terminator was seen. ``relayed_error``: it sent an error event,
    already passed on, so the client needs no second one.
    """

    complete: bool
    relayed_error: bool = False


@attrs.frozen
class AttemptFailed:
    outcome: Outcome
    message: str


Reply = Answer | StreamStart | Meta | StreamEnd | AttemptFailed | bytes


@attrs.define(eq=False)
class Job:
    """One attempt: what to send, where to answer, and how to be stopped."""

    body: bytes
    headers: Sequence[tuple[str, str]]
    model: str
    stream: bool
    reply: trio.MemorySendChannel[Reply]
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    ticket: Ticket = Ticket.NORMAL
    #: How long a message may wait for the requester to take it before the job
    #: gives up: the requester is gone or stuck, and the connection must not leak.
    stall_timeout: float = 300.0
    #: For a whole answer in another dialect: the client's body, or ``None`` when the
    #: provider's answer is not valid (then the attempt failed). Run by the actor, so
    #: that the verdict it records is the final one.
    translate: Callable[[bytes], bytes | None] | None = None
    #: Why the requester cancelled ``scope``; decides what the breaker records.
    abort: Outcome | None = None
    #: The job's last message is on its way: its verdict is known, nothing to cancel.
    answered: bool = False
    #: When the actor took it off its queue (``None`` while queued).
    dequeued_at: float | None = None
    #: The provider's response headers arrived.
    first_byte: bool = False
    #: A stream's first content event arrived.
    first_content: bool = False
    #: Whether the abort reason counts against the target (see :meth:`cancel`).
    blame: bool = True
    done: bool = False

    def cancel(self, why: Outcome, *, blame: bool = True) -> None:
        """Stop this attempt unless it has answered (idempotent; the first reason wins).

        ``blame=False``: the reason says nothing about the target (the time ran out
        while the job waited in the gateway's own queue).
        """
        if not self.answered and not self.done and self.abort is None:
            self.abort = why
            self.blame = blame
            self.scope.cancel()


@attrs.frozen
class TargetStatistics:
    id: str
    provider: str
    health: BreakerStatistics
    in_flight: int
    queued: int
    latency_s: float | None
    requests: int
    failures: int


# --- the actor ---------------------------------------------------------------------------


class TargetActor:
    """See the module docstring. Construct, then run under a supervisor."""

    def __init__(
        self,
        target: Target,
        policy: BreakerPolicy,
        checks: HealthChecks | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = target
        self.checks = checks or HealthChecks()
        self.endpoint = Endpoint.of(target)
        #: Parsed once: httpx would parse the URL string on every request.
        self._url = None if "{model}" in self.endpoint.url else httpx2.URL(self.endpoint.url)
        self.format = self.endpoint.format
        self.breaker = Breaker(policy)
        self.latency_estimate = PeakEwma()
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self._transport = transport
        #: At most this many requests at once; as many more may wait in the queue.
        self.max_in_flight = target.max_in_flight or MAX_IN_FLIGHT
        self._send, self._receive = trio.open_memory_channel[Job](
            min(self.max_in_flight, QUEUE_SIZE)
        )
        self._retired = False
        self._probes: trio.CancelScope | None = None

    # --- used by the dispatcher (synchronous, same thread) -------------------------------

    def latency(self, now: float) -> float | None:
        return self.latency_estimate.estimate(now)

    def submit(self, job: Job) -> bool:
        """Queue ``job`` without waiting; ``False`` (and the ticket released) if the queue is full."""
        try:
            self._send.send_nowait(job)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.breaker.abandoned(job.ticket)
            return False
        self.in_flight += 1
        return True

    def retire(self) -> None:
        """Take no new jobs; serve the queued ones, then let :meth:`run` return.

        Probing stops at once: a retired actor's old credentials must not eject the
        target its successor serves (they may share a breaker).
        """
        self._retired = True
        self._send.close()
        if self._probes is not None:
            self._probes.cancel()

    @property
    def retired(self) -> bool:
        return self._retired

    def update(self, target: Target, policy: BreakerPolicy, checks: HealthChecks) -> None:
        """Adopt edits that do not change the connection (weight, models, health policy)."""
        self.target = target
        self.breaker.policy = policy
        self.checks = checks

    # --- the task ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve jobs until retired and drained. Owns the HTTP client and the job tasks."""
        slots = trio.Semaphore(self.max_in_flight)
        async with (
            httpx2.AsyncClient(
                transport=self._transport,
                timeout=httpx2.Timeout(SAFETY_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                limits=httpx2.Limits(
                    max_connections=self.max_in_flight, max_keepalive_connections=64
                ),
                follow_redirects=False,
                trust_env=False,
            ) as client,
            trio.open_nursery() as nursery,
        ):
            self._probes = probes = trio.CancelScope()
            if self._retired:
                probes.cancel()
            nursery.start_soon(self._probe_loop, client, probes)
            task_status.started()
            while True:
                await slots.acquire()
                try:
                    job = await self._receive.receive()
                except trio.EndOfChannel:
                    slots.release()
                    break
                nursery.start_soon(self._serve, client, job, slots)
            probes.cancel()  # retired: stop probing; the nursery waits for the running jobs

    async def _probe_loop(self, client: httpx2.AsyncClient, scope: trio.CancelScope) -> None:
        """Every ``interval`` seconds, if ``active``: ``GET`` the probe path, tell the breaker."""
        with scope:
            while True:
                await trio.sleep(self.checks.interval)
                if self.checks.active:
                    await self._probe(client)

    async def _probe(self, client: httpx2.AsyncClient) -> None:
        checks = self.checks
        url = self.endpoint.probe_url(checks.path)
        headers = self.endpoint.request_headers([(n.lower(), v) for n, v in checks.headers.items()])
        error = ""
        with trio.move_on_after(min(checks.interval, PROBE_TIMEOUT_S)) as timer:
            try:
                response = await client.get(url, headers=headers)
                if not 200 <= response.status_code < 300:
                    error = f"HTTP {response.status_code}"
            except Exception as exc:  # an unusable probe is a failed probe, never a crash
                error = type(exc).__name__
        if timer.cancelled_caught:
            error = "timed out"
        self.breaker.probed(trio.current_time(), ok=not error, error=error)

    async def _serve(self, client: httpx2.AsyncClient, job: Job, slots: trio.Semaphore) -> None:
        begun = job.dequeued_at = trio.current_time()
        verdict, error, retry_after = Verdict.NEUTRAL, "", None
        given_up = job.abort is not None  # while it waited in the queue: nothing to learn
        try:
            async with job.reply:
                with job.scope:
                    if not given_up:
                        verdict, error, retry_after = await self._exchange(client, job)
        except trio.BrokenResourceError:
            verdict, error = Verdict.NEUTRAL, "requester left"
        except Exception:  # a bug of ours: the attempt fails over, the actor lives on
            log.exception("job failed", extra={"fields": {"target_id": self.target.id}})
            verdict, error = Verdict.NEUTRAL, "internal error"
            with contextlib.suppress(
                trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
            ):
                job.reply.send_nowait(AttemptFailed(Outcome.INTERNAL_ERROR, "internal error"))
        finally:
            job.done = True
            if job.abort is not None and not given_up:
                verdict = outcome_verdict(job.abort) if job.blame else Verdict.NEUTRAL
                error = job.abort.value
            self._settle(job.ticket, verdict, error, retry_after, trio.current_time() - begun)
            self.in_flight -= 1
            slots.release()

    async def _exchange(
        self, client: httpx2.AsyncClient, job: Job
    ) -> tuple[Verdict, str, float | None]:
        """The HTTP call. Returns the verdict for the breaker and an error text.

        Error texts are fixed phrases plus an exception's class name, never its
        message: an HTTP library's message can quote a header, a credential included.
        """
        request = client.build_request(
            "POST",
            self._url or self.endpoint.url_for(job.model),
            headers=self.endpoint.request_headers(job.headers),
            content=job.body,
        )
        started = trio.current_time()
        try:
            response = await client.send(request, stream=True)
        except httpx2.TimeoutException as exc:
            return await self._failed(job, Outcome.TIMEOUT, f"timed out ({type(exc).__name__})")
        except (httpx2.ConnectError, httpx2.UnsupportedProtocol) as exc:
            return await self._failed(
                job, Outcome.CONNECT_ERROR, f"cannot connect to the provider ({type(exc).__name__})"
            )
        except httpx2.LocalProtocolError:
            # Our request could not be written: a configuration problem, not the provider's.
            return await self._failed(
                job,
                Outcome.INTERNAL_ERROR,
                "the request could not be sent (check the target's headers)",
            )
        except httpx2.HTTPError as exc:
            return await self._failed(
                job,
                Outcome.PROTOCOL_ERROR,
                f"bad response from the provider ({type(exc).__name__})",
            )
        job.first_byte = True
        try:
            status = response.status_code
            verdict = status_verdict(status)
            if job.stream and verdict is Verdict.SUCCESS:
                return await self._relay_stream(job, response, started)
            if verdict is Verdict.SUCCESS:
                now = trio.current_time()
                self.latency_estimate.observe(now - started, now)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    return await self._failed(
                        job, Outcome.PROTOCOL_ERROR, "response body too large"
                    )
            if verdict is Verdict.SUCCESS and job.translate is not None:
                translated = job.translate(bytes(body))
                if translated is None:
                    return await self._failed(
                        job, Outcome.PROTOCOL_ERROR, "the provider's answer is not valid"
                    )
                body = bytearray(translated)
            await self._last(job, Answer(status, response.headers, bytes(body)))
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return verdict, "" if verdict is Verdict.SUCCESS else f"HTTP {status}", retry_after
        except httpx2.TimeoutException as exc:
            return await self._failed(
                job, Outcome.TIMEOUT, f"timed out reading ({type(exc).__name__})"
            )
        except httpx2.HTTPError as exc:
            return await self._failed(
                job, Outcome.READ_ERROR, f"reading failed ({type(exc).__name__})"
            )
        finally:
            if response.is_stream_consumed and not job.scope.cancel_called:
                await response.aclose()  # read to the end: the connection goes back to the pool
            else:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await response.aclose()

    async def _relay_stream(
        self, job: Job, response: httpx2.Response, started: float
    ) -> tuple[Verdict, str, None]:
        """Whole events to the requester, content marked; the watch decides the verdict.

        The terminator ends the job at once: what the provider does after it (closing
        badly, lingering) is neither the client's business nor a failure.
        """
        watch = StreamWatch(self.format)
        if not await self._deliver(job, StreamStart(response.status_code, response.headers)):
            return Verdict.NEUTRAL, "the requester stopped reading", None
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            out, content = watch.feed(chunk)
            if watch.error is not None and not watch.started:
                kind = Outcome.PROTOCOL_ERROR if watch.error == MALFORMED else Outcome.STREAM_ERROR
                return await self._failed(
                    job, kind, f"the stream began with an error ({watch.error})"
                )
            if content and not job.first_content:
                job.first_content = True
                now = trio.current_time()
                self.latency_estimate.observe(now - started, now)  # time to first token
            if out and not await self._deliver(job, out if content else Meta(out)):
                return Verdict.NEUTRAL, "the requester stopped reading", None
            if watch.complete:
                await self._last(job, StreamEnd(True))
                # Read what is left from the same iterator (the chunked terminator, usually)
                # so the connection goes back to the pool; whatever happens there is ignored.
                with trio.move_on_after(DRAIN_S), contextlib.suppress(httpx2.HTTPError):
                    async for _ in chunks:
                        pass
                return Verdict.SUCCESS, "", None
            if watch.error is not None:
                break
        out, content = watch.flush()
        if out and not await self._deliver(job, out if content else Meta(out)):
            return Verdict.NEUTRAL, "the requester stopped reading", None
        relayed = watch.error is not None and watch.error != MALFORMED
        await self._last(job, StreamEnd(watch.complete, relayed_error=relayed))
        if watch.complete:
            return Verdict.SUCCESS, "", None
        if watch.error is not None:
            return Verdict.FAILURE, f"the stream broke ({watch.error})", None
        return Verdict.FAILURE, Outcome.STREAM_INCOMPLETE.value, None

    async def _deliver(self, job: Job, message: Reply) -> bool:
        """Hand ``message`` to the requester; ``False`` if it stopped reading for too long."""
        try:
            job.reply.send_nowait(message)
            return True
        except trio.WouldBlock:
            with trio.move_on_after(job.stall_timeout) as stalled:
                await job.reply.send(message)
            return not stalled.cancelled_caught

    async def _last(self, job: Job, message: Reply) -> None:
        """The job's final message: its verdict stands whatever the requester does now."""
        job.answered = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._deliver(job, message)

    async def _failed(self, job: Job, outcome: Outcome, message: str) -> tuple[Verdict, str, None]:
        await self._last(job, AttemptFailed(outcome, message))
        return outcome_verdict(outcome), message, None

    def _settle(
        self,
        ticket: Ticket,
        verdict: Verdict,
        error: str,
        retry_after: float | None,
        elapsed: float,
    ) -> None:
        now = trio.current_time()
        self.requests += 1
        if verdict is Verdict.SUCCESS or verdict is Verdict.CLIENT_ERROR:
            self.breaker.succeeded(now, ticket)
        elif verdict is Verdict.FAILURE:
            self.failures += 1
            # A failure is slow as far as latency-aware balancing is concerned.
            self.latency_estimate.observe(elapsed, now)
            self.breaker.failed(now, ticket, error, retry_after)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "target failure",
                    extra={
                        "fields": {
                            "target_id": self.target.id,
                            "error": error,
                            "state": self.breaker.state.value,
                        }
                    },
                )
        else:
            self.breaker.abandoned(ticket)

    def statistics(self) -> TargetStatistics:
        now = trio.current_time()
        return TargetStatistics(
            id=self.target.id,
            provider=self.target.provider.value,
            health=self.breaker.statistics(now),
            in_flight=self.in_flight,
            queued=self._send.statistics().current_buffer_used,
            latency_s=self.latency(now),
            requests=self.requests,
            failures=self.failures,
        )


def wall_time(trio_time: float) -> float:
    """A ``trio.current_time()`` value as seconds since the epoch."""
    return time.time() + (trio_time - trio.current_time())
