"""The dispatcher: one per upstream. Picks targets, sends them jobs, fails over.

Theory of operation
-------------------
:meth:`Dispatcher.exchange` serves one client request. The decisions are sans-IO:
which target and model (:class:`~trio_gateway.core.routing.UpstreamPlan`), whether
to try again and what to answer when nothing worked
(:class:`~trio_gateway.core.failover.Exchange`). The attempts themselves, budgets
and verdicts included, are the target actors' (:mod:`trio_gateway.runtime.target`).
This loop only carries one to the other. Per attempt:

1. ask the plan for a target: the eligible ones by tier and algorithm, and when
   none is left, the target most likely to have recovered (a last resort: no 503
   while something could serve);
2. put the request in that target's dialect and API (:meth:`Dispatcher.plan_attempt`;
   a request that cannot be is skipped: ``untranslatable``). A token count for a
   target that cannot count is answered here, with an estimate (``estimate``);
3. submit a :class:`~trio_gateway.runtime.target.Job` to the target's actor
   (a full queue skips it: ``overloaded``) and run it, in this task
   (:meth:`TargetActor.attempt`):

   * ``Whole``: the client's answer (a success, or the client's own error): done;
   * ``Committed``: a stream with content: the response streams its body, and
     nothing can fail over any more; the runtime's ``end_streams`` signal (the last
     moment of a shutdown) ends it with an error event;
   * ``Failed``: recorded; the exchange says whether another target may be tried.

The actor bounds the wait for a slot of a busy target by the first-byte budget
(``queue_timeout``, nobody blamed), and the attempt by its own budgets. When the
client leaves, the request's task is cancelled, which aborts the attempt.

Every response, success or error, streamed or not, carries ``X-Selected-*`` for the
target that answered (or was tried last), ``X-Request-Id`` and the attempt trail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trio_gateway import jsonio
from trio_gateway.config.models import ModelFallback, Upstream
from trio_gateway.core.attempt import Budgets
from trio_gateway.core.failover import (
    AttemptRecord,
    Conclusion,
    Exchange,
    render_faults,
    render_trail,
)
from trio_gateway.core.health import HealthPolicy, State
from trio_gateway.core.routing import Choice, ModelNotServed, TargetRoute, UpstreamPlan
from trio_gateway.errors import (
    AttemptError,
    ClientError,
    ModelNotAllowed,
    TargetBusy,
    Untranslatable,
)
from trio_gateway.providers import translate
from trio_gateway.providers.formats import Api, ApiFormat, error_body
from trio_gateway.providers.translate.count_tokens import ESTIMATE_HEADER, count_tokens_estimate
from trio_gateway.providers.usage import Usage
from trio_gateway.runtime.ending import EndStreams
from trio_gateway.runtime.injection import RequestFaults
from trio_gateway.runtime.target import Committed, Job, StreamBody, StreamEnd, TargetActor, Whole

if TYPE_CHECKING:
    from trio_gateway.runtime.limits import Charge
    from trio_gateway.telemetry import RequestRecord

log = logging.getLogger("trio_gateway.dispatch")

JSON_TYPE = "application/json"
#: Health states that count against the upstream's cap on ejections (not a park).
EJECTED = frozenset({State.EJECTED, State.CHECKING})
#: Client headers that belong to the client's own dialect (``anthropic-version``):
#: meaningless, or worse, to a provider of the other dialect.
DIALECT_PREFIXES = {ApiFormat.OPENAI: "openai-", ApiFormat.ANTHROPIC: "anthropic-"}
#: How an API is named when a target does not have it.
API_NAMES = {Api.EMBEDDINGS: "embeddings", Api.COUNT_TOKENS: "token counting"}
#: Module constants: an enum member looked up on its class costs a descriptor call.
_CHAT, _MESSAGES = Api.CHAT, Api.MESSAGES


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
    #: The endpoint's API, whose dialect ``format`` is; by default the dialect's chat API.
    api: Api = attrs.field(
        default=attrs.Factory(
            lambda self: Api.CHAT if self.format is ApiFormat.OPENAI else Api.MESSAGES,
            takes_self=True,
        )
    )
    #: Its gateway's fault injection, when enabled (``None``: nothing is injected).
    faults: RequestFaults | None = None
    #: The models the client's API key may use (``None``: any): the gateway sends no
    #: other as a default or a fallback (docs/keys.md).
    models: frozenset[str] | None = None
    #: The request's account with its key's limits and usage (``None``: no key).
    charge: Charge | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Limits:
    """A service's time budgets and attempt limit."""

    request_timeout: float = 120.0
    budgets: Budgets = attrs.field(factory=Budgets)
    max_attempts: int | None = None


@attrs.frozen
class Explanation:
    """What the next request would meet, without calling any provider (:meth:`Dispatcher.explain`)."""

    #: The target and model it would be sent to (``None``: none).
    choice: Choice | None
    #: Targets it would skip before ``choice``, and why (``untranslatable``, ``overloaded``).
    skipped: tuple[tuple[TargetActor, AttemptError], ...]
    #: For each target (in configuration order): whether it is eligible, and why not.
    verdicts: tuple[tuple[TargetActor, bool, str], ...]
    #: The answer when no target would be tried.
    conclusion: Conclusion | None


@attrs.define
class ProxyResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes | StreamBody
    #: The provider's usage of a whole answer (a stream's comes with its end).
    usage: Usage | None = None


def health_policy(upstream: Upstream) -> HealthPolicy:
    checks = upstream.health_checks
    return HealthPolicy(
        passive=checks.passive,
        threshold=checks.threshold,
        interval=checks.interval,
        ejection_time=checks.ejection_time,
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
        #: The runtime's "end every running stream now" signal (shutdown).
        self.end_streams = end_streams if end_streams is not None else EndStreams()
        percent = upstream.health_checks.max_ejected_percent
        n = len(self.actors)
        #: Targets that may be ejected at once: the share allowed, at least one, and
        #: never all of them (when there are several).
        self.max_ejected = max(1, min(n * percent // 100, n - 1))
        #: This upstream's metric children (:mod:`trio_gateway.telemetry`), when on.
        self.metrics: Any = None

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

    def may_eject(self) -> bool:
        """Is there room under the upstream's cap for one more ejected target?"""
        out = sum(1 for actor in self.actors if actor.health.state in EJECTED)
        return out < self.max_ejected

    # --- choosing -------------------------------------------------------------------

    def choose(
        self,
        model: str | None,
        tried: set[str],
        now: float,
        *,
        peek: bool = False,
        allowed: frozenset[str] | None = None,
    ) -> Choice | None:
        """The next attempt's target; ``peek``: what it would be, moving no balancer.

        ``allowed``: the models the client's key may use (``None``: any).
        """
        actors = self.actors
        return self.plan.choose(
            model,
            admits=lambda i: actors[i].health.admits(now),
            excluded=lambda i: not actors[i].usable or actors[i].target.id in tried,
            loads=actors,
            now=now,
            rank=lambda i: actors[i].health.out_until(now),
            peek=peek,
            allowed=allowed,
        )

    def refuse_default(self, request: ClientRequest, tried: set[str], now: float) -> None:
        """Nothing the key may use was chosen: if that is because of the key's ``models``
        (a default model, or a fallback, it may not use), refuse naming that model."""
        if request.models is None:
            return
        other = self.choose(request.model, tried, now, peek=True)
        if other is None:
            return
        why = (
            "sent for a request that names no model"
            if request.model is None
            else f"sent for {request.model!r}, which no target serves"
        )
        raise ModelNotAllowed(
            f"this API key may not use the model {other.model!r}, which this route would "
            f"have {why}; name a model the key may use"
        )

    # --- explain: the next request, without calling anyone ---------------------------------

    def explain(self, request: ClientRequest, limits: Limits, now: float) -> Explanation:
        """What :meth:`exchange` would do first with ``request`` if it came now.

        The same loop as :meth:`exchange`, with the balancers peeked at rather than
        moved and nothing submitted: targets it would skip before sending (the
        request does not translate for them, their queue is full) are skipped here
        too. Raises what :meth:`exchange` raises (:class:`ModelNotServed`).
        """
        exchange = Exchange(
            deadline=now + limits.request_timeout,
            max_attempts=limits.max_attempts or len(self.actors),
        )
        skipped: list[tuple[TargetActor, AttemptError]] = []
        choice = None
        while exchange.may_try(now):
            choice = self.choose(
                request.model, exchange.tried, now, peek=True, allowed=request.models
            )
            if choice is None:
                if not exchange.trail:
                    self.refuse_default(request, exchange.tried, now)
                break
            actor = self.actors[choice.index]
            problem = self._blocked(request, actor, choice)
            if problem is None:
                break
            skipped.append((actor, problem))
            exchange.record(
                AttemptRecord(actor.target.id, actor.target.provider.value, choice.model, "", 0),
                problem,
            )
            choice = None
        verdicts = tuple(self._verdict(i, request, choice, now) for i in range(len(self.actors)))
        conclusion = exchange.conclude(request.model) if choice is None else None
        return Explanation(choice, tuple(skipped), verdicts, conclusion)

    def _blocked(
        self, request: ClientRequest, actor: TargetActor, choice: Choice
    ) -> AttemptError | None:
        """What would stop an attempt before it is sent (as :meth:`_attempt` finds it)."""
        try:
            translator, provider_api = self.plan_attempt(request, actor)
            if provider_api is not None and translator is not None:
                _provider_body(request, choice.model, translator)
        except ClientError as exc:
            return Untranslatable(exc)
        if not actor.has_room():
            return TargetBusy("the target's queue is full")
        return None

    def _verdict(
        self, index: int, request: ClientRequest, choice: Choice | None, now: float
    ) -> tuple[TargetActor, bool, str]:
        """Is target ``index`` eligible for the next request, and if not, why not."""
        actor = self.actors[index]
        route = self.plan.targets[index]
        model = request.model
        if actor.retired:
            return actor, False, "retired: a newer configuration replaced it"
        if actor.restarting:
            return actor, False, "restarting after a crash"
        health = actor.health
        if not health.admits(now):
            return actor, False, _health_reason(health, now)
        if model is None or (choice is not None and choice.fallback and not choice.last_resort):
            if route.default_model is None:
                why = (
                    "the request names no model, and it has no default_model"
                    if model is None
                    else f"no eligible target serves {model!r}, and it has no default_model"
                )
                return actor, False, f"model: {why}"
            if request.models is not None and route.default_model not in request.models:
                return (
                    actor,
                    False,
                    f"model: this API key may not use its default_model {route.default_model!r}",
                )
        elif not route.serves(model):
            return actor, False, f"model: it does not serve {model!r}"
        if choice is not None and not choice.last_resort:
            serving = self.plan.targets[choice.index].priority
            if route.priority > serving:
                return actor, False, f"tier: priority {route.priority}; tier {serving} serves first"
        if not actor.has_room():
            return actor, False, "capacity: its queue is full"
        if choice is not None:
            problem = self._blocked(request, actor, attrs.evolve(choice, index=index))
            if isinstance(problem, Untranslatable):
                return actor, False, f"translation: {problem.message}"
        return actor, True, "eligible"

    # --- one client request ------------------------------------------------------------

    async def exchange(
        self,
        request: ClientRequest,
        limits: Limits,
        current: Callable[[], Dispatcher | None] | None = None,
        record: RequestRecord | None = None,
    ) -> ProxyResponse:
        """Serve ``request``: attempts, failover, and the response (maybe a stream).

        ``current`` returns the upstream's dispatcher now: the configuration may
        change between two attempts, and the next attempt follows it (targets
        already tried, by id, are not tried again). ``record`` (telemetry) gets the
        trail, the answering attempt and its usage; a stream's body finishes it.

        The request's ``charge`` (its key's limits and usage) ends here for a whole
        answer or an error, however the exchange ends (the client leaving included),
        and with its body for a stream.
        """
        charge = request.charge
        if charge is None:
            return await self._exchange(request, limits, current, record)
        streaming = False
        try:
            response = await self._exchange(request, limits, current, record)
            streaming = not isinstance(response.body, bytes)
            return response
        finally:
            if not streaming:
                cost = charge.end()
                if record is not None:
                    record.cost = cost

    async def _exchange(
        self,
        request: ClientRequest,
        limits: Limits,
        current: Callable[[], Dispatcher | None] | None,
        record: RequestRecord | None,
    ) -> ProxyResponse:
        now = trio.current_time()
        exchange = Exchange(
            deadline=now + limits.request_timeout,
            max_attempts=limits.max_attempts or len(self.actors),
        )
        if record is not None:
            record.trail = exchange.trail
        dispatcher: Dispatcher = self
        while exchange.may_try(now):
            if exchange.trail and current is not None:
                dispatcher = current() or dispatcher
            try:
                choice = dispatcher.choose(
                    request.model, exchange.tried, now, allowed=request.models
                )
            except ModelNotServed:
                if not exchange.trail:
                    raise
                break  # the configuration changed under a failover: answer with what we have
            if choice is None:
                if not exchange.trail:
                    dispatcher.refuse_default(request, exchange.tried, now)
                break
            actor = dispatcher.actors[choice.index]
            response = await dispatcher._attempt(request, limits, actor, choice, exchange, record)
            if response is not None:
                if record is not None:
                    record.answer(exchange.trail[-1], response.usage, response.status)
                return dispatcher._decorate(response, request, actor, choice, exchange.trail)
            now = trio.current_time()
        return self._give_up(request, exchange)

    async def _attempt(
        self,
        request: ClientRequest,
        limits: Limits,
        actor: TargetActor,
        choice: Choice,
        exchange: Exchange,
        observe: RequestRecord | None = None,
    ) -> ProxyResponse | None:
        """One attempt; its outcome goes to ``exchange``. A response means it answered."""
        started = trio.current_time()
        fault = None

        def record(outcome: str, error: AttemptError | None = None) -> None:
            exchange.record(
                AttemptRecord(
                    actor.target.id,
                    actor.target.provider.value,
                    choice.model,
                    outcome,
                    (trio.current_time() - started) * 1000,
                    choice.last_resort,
                    fault.describe() if fault is not None else None,
                    started,
                ),
                error,
            )

        try:
            api = request.api
            if (api is _CHAT or api is _MESSAGES) and request.format is actor.format:
                translator, provider_api = None, actor.api  # the common case, inline
            else:
                translator, provider_api = self.plan_attempt(request, actor)
            # Usage is read for telemetry and for the key's usage: without either (a public
            # rule, telemetry off), nothing is asked or parsed.
            charge = request.charge
            wants_usage = observe is not None or charge is not None
            hide_usage = (
                wants_usage
                and translator is None
                and api is _CHAT
                and provider_api is _CHAT
                and _usage_unasked(request, actor.format)
            )
            if provider_api is not None:
                body = _provider_body(request, choice.model, translator, hide_usage)
        except ClientError as exc:
            error: AttemptError = Untranslatable(exc)
            record(error.word, error)
            return None
        if provider_api is None:
            # A token count for a target that cannot count. A body that is no valid
            # request is the client's 400 (the exception leaves the exchange).
            answer = jsonio.dumpb(count_tokens_estimate(request.body))
            record("estimate")
            if charge is not None:
                charge.sent(choice.model)  # answered by the gateway: no tokens
                charge.reported(None, answered=False)
            return ProxyResponse(
                200, [("content-type", JSON_TYPE), (ESTIMATE_HEADER, "estimate")], answer
            )

        job = Job(
            body=body,
            headers=request.headers if translator is None else _foreign(request),
            model=choice.model,
            stream=request.stream,
            deadline=exchange.deadline,
            budgets=limits.budgets,
            client_format=request.format,
            api=request.api,
            provider_api=provider_api,
            translator=translator,
            last_resort=choice.last_resort,
            hide_usage=hide_usage,
            usage=wants_usage,
            end=self.end_streams,
            on_end=(
                partial(_stream_ended, observe, charge)
                if wants_usage and request.stream
                else None  # only a committed stream ends after the attempt
            ),
        )
        if not actor.submit(job, started):
            error = TargetBusy("the target's queue is full")
            record(error.word, error)
            return None
        if charge is not None:
            charge.sent(choice.model)
        if request.faults is not None:
            # Decided once the job is taken (a refused one spends no fault).
            fault = job.fault = request.faults.attempt(
                actor.target.id, choice.model, request.stream, exchange.made + 1, provider_api
            )
        result = await actor.attempt(job)
        if isinstance(result, Whole):
            answer = result.answer
            record(str(answer.status))
            if charge is not None:
                charge.reported(result.usage, answered=answer.status < 400)
            return ProxyResponse(answer.status, list(answer.headers), answer.body, result.usage)
        if isinstance(result, Committed):
            record(str(result.status))
            return ProxyResponse(result.status, list(result.headers), result.body)
        error = result.error
        if charge is not None:
            charge.reported(result.usage, answered=False)
        record(error.word, error)
        return None

    def plan_attempt(
        self, request: ClientRequest, actor: TargetActor
    ) -> tuple[translate.Translator | None, Api | None]:
        """How ``actor`` serves ``request``: its translator (``None``: sent as it came)
        and the target's API to call (``None``: a token count the gateway estimates).

        Raises :class:`ClientError` when the target cannot serve the request (the
        attempt is skipped as ``untranslatable``).
        """
        api = request.api
        if api is _CHAT or api is _MESSAGES:
            if request.format is actor.format:
                return None, actor.api
            return self._translator(request.format, request, actor), actor.api
        endpoint = actor.endpoint
        if api is Api.RESPONSES:
            if endpoint.native_responses:
                return None, Api.RESPONSES
            translator = self._translator(Api.RESPONSES, request, actor)
            return translator, translator.provider_api  # type: ignore[union-attr]
        if endpoint.serves(api):
            return None, api
        if api is Api.COUNT_TOKENS:
            return None, None
        target = actor.target
        raise ClientError(
            f"target {target.id!r} cannot serve {API_NAMES.get(api, api.value)}: "
            + (
                f"provider {target.provider.value!r} has no such API"
                if api.format is not actor.format
                else f"its path {target.path!r} does not end with "
                f"{'/chat/completions' if actor.format is ApiFormat.OPENAI else '/messages'}, "
                "so the API's path beside it is unknown"
            )
        )

    def _translator(
        self, client: ApiFormat | Api, request: ClientRequest, actor: TargetActor
    ) -> translate.Translator:
        translator = translate.translator(
            client,
            actor.target.provider.value,
            default_max_tokens=self.upstream.default_max_tokens,
            request_id=request.request_id,
        )
        assert translator is not None
        return translator

    # --- the response's headers and the final error ---------------------------------------

    def _decorate(
        self,
        response: ProxyResponse,
        request: ClientRequest,
        actor: TargetActor,
        choice: Choice,
        trail: list[AttemptRecord],
    ) -> ProxyResponse:
        response.headers += _selection_headers(
            request, actor.target.provider.value, choice.model, actor.target.id, trail
        )
        if choice.fallback:
            response.headers.append(
                ("X-Gateway-Model-Fallback", f"{request.model} -> {choice.model}")
            )
        return response

    def _give_up(self, request: ClientRequest, exchange: Exchange) -> ProxyResponse:
        """The answer when no attempt succeeded: see :meth:`Exchange.conclude`."""
        conclusion = exchange.conclude(request.model)
        record = conclusion.record
        if record is None:
            headers = [("X-Request-Id", request.request_id)]
            if exchange.trail:
                headers.append(("X-Gateway-Attempts", render_trail(exchange.trail)))
                if (faults := render_faults(exchange.trail)) is not None:
                    headers.append(("X-Gateway-Fault", faults))
        else:
            headers = _selection_headers(
                request, record.provider, record.model, record.target_id, exchange.trail
            )
        if conclusion.answer is not None:
            answer = conclusion.answer
            return ProxyResponse(answer.status, [*answer.headers, *headers], answer.body)
        error = conclusion.error
        message = conclusion.message or error.message
        headers += list(error.headers.items())
        return ProxyResponse(
            error.status,
            [("content-type", JSON_TYPE), *headers],
            error_body(request.format, error.status, error.type, message),
        )


# --- helpers ---------------------------------------------------------------------------------


def _health_reason(health: Any, now: float) -> str:
    stats = health.statistics(now)
    if stats.state is State.HEALTHY and health.trial_in_flight:
        return "health: on probation, and its one trial request is in flight"
    return f"health: {stats.state.value} ({stats.reason})"


def _foreign(request: ClientRequest) -> list[tuple[str, str]]:
    """The client's headers for a provider of the other dialect."""
    own = DIALECT_PREFIXES[request.format]
    return [(name, value) for name, value in request.headers if not name.startswith(own)]


def _selection_headers(
    request: ClientRequest, provider: str, model: str, target_id: str, trail: list[AttemptRecord]
) -> list[tuple[str, str]]:
    headers = [
        ("X-Selected-Provider", provider),
        ("X-Selected-Model", model),
        ("X-Selected-Target", target_id),
        ("X-Request-Id", request.request_id),
        ("X-Gateway-Attempts", render_trail(trail)),
    ]
    if request.faults is not None and (faults := render_faults(trail)) is not None:
        headers.append(("X-Gateway-Fault", faults))
    return headers


def _usage_unasked(request: ClientRequest, provider: ApiFormat) -> bool:
    """An OpenAI-dialect stream whose client did not ask for usage: the gateway asks."""
    if not request.stream or request.format is not ApiFormat.OPENAI:
        return False
    if provider is not ApiFormat.OPENAI:
        return False
    options = request.body.get("stream_options")
    if options is None:
        return True
    return isinstance(options, dict) and options.get("include_usage") is not True


#: What asks an OpenAI-dialect provider for a stream's usage, as a body's first member.
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def _provider_body(
    request: ClientRequest,
    model: str,
    translator: translate.Translator | None,
    ask_usage: bool = False,
) -> bytes:
    """The bytes to send: the client's own when nothing changes, else re-encoded once.

    ``ask_usage``: add ``stream_options.include_usage`` (:func:`_usage_unasked`); to
    the client's own bytes it is spliced in as the object's first member, which
    cannot collide with another (the body has no ``stream_options`` then).
    """
    if translator is not None:
        body = dict(request.body)
        body["model"] = model
        return jsonio.dumpb(translator.request(body))
    if request.model == model:
        if not ask_usage:
            return request.raw
        if "stream_options" not in request.body:
            raw = request.raw
            at = raw.index(b"{") + 1
            return raw[:at] + _INCLUDE_USAGE + raw[at:]
    body = dict(request.body)
    body["model"] = model
    if ask_usage:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return jsonio.dumpb(body)


def _stream_ended(record: RequestRecord | None, charge: Charge | None, end: StreamEnd) -> None:
    """A committed stream is over: the key's ``charge`` ends (with the stream's usage, or
    with the estimate when the stream did not end with one: cut, client gone, shutdown),
    then what telemetry keeps of it, and the record finished."""
    cost = None
    if charge is not None:
        if end.how not in _UNSETTLED:
            usage = end.usage
            if end.how != "complete" and (usage is None or usage.output_tokens is None):
                usage = None  # cut before its usage: the estimate is charged
            charge.reported(usage, answered=True)
        cost = charge.end()
    if record is not None:
        record.usage = end.usage or record.usage
        record.malformed = end.malformed
        record.stream_end = end.how
        record.cost = cost
        record.finish(sent=end.sent)


#: How a stream ends without its provider's word on it: its charge keeps the estimate.
_UNSETTLED = frozenset(("client_left", "shutdown"))
