"""The runtime: target actors kept in step with the catalog, and the compiled route table.

Theory of operation
-------------------
:meth:`Runtime.run` owns one nursery holding every target actor (each under
:meth:`Runtime._supervise`, which restarts a crashed actor with backoff). On start
and after every catalog change it *reconciles*:

* a target whose endpoint (URL, credentials, headers) and ``max_in_flight`` are
  unchanged keeps its actor, which adopts the new weight, models and health policy;
* otherwise the target gets a new actor; the old one is retired: it
  takes no new jobs, finishes the queued and running ones, then exits. Health
  state carries over when the URL is the same;
* a removed target's actor is retired the same way, so nothing in flight is lost;
* then a new :class:`RouteTable` is compiled (keys by hash, rules longest-first,
  services with their dispatcher and limits) and swapped in with one assignment,
  together with the keys' limits (:class:`~trio_gateway.runtime.limits.Limiter`,
  whose exchanger runs in the same nursery).

Each upstream is built on its own (:func:`plan_upstream`, then its actors): one
that cannot be built keeps its previous runtime if it had one, or is left out, and
is reported (:attr:`Runtime.failures`: a log line, ``/readyz``, its health
endpoint; its services answer 503 saying why), while every other upstream and
every gateway, key, service and rule change is applied. The admin API runs the same
:func:`plan_upstream` (:func:`preflight`) before it stores a write, so an upstream
the runtime cannot build is refused with the reason rather than stored.

The request path only ever reads :attr:`Runtime.table`: no lock, no await, no store.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway.config.catalog import Catalog, Snapshot
from trio_gateway.config.models import (
    ApiKey,
    Gateway,
    GatewayStatus,
    Service,
    Target,
    Upstream,
)
from trio_gateway.core.attempt import Budgets
from trio_gateway.core.health import Transition
from trio_gateway.core.listing import ModelLists, compile_model_lists
from trio_gateway.core.routing import CompiledRule, compile_rules
from trio_gateway.errors import Problem
from trio_gateway.providers.endpoints import PROVIDERS, Endpoint
from trio_gateway.runtime.clients import ClientPool
from trio_gateway.runtime.dispatcher import Dispatcher, Limits, health_policy
from trio_gateway.runtime.ending import EndStreams
from trio_gateway.runtime.injection import Injection
from trio_gateway.runtime.limits import Limiter
from trio_gateway.runtime.target import TargetActor, TargetStatistics
from trio_gateway.store import Notice
from trio_gateway.telemetry import Telemetry

log = logging.getLogger("trio_gateway.runtime")

RESTART_BACKOFF_S = 0.1
RESTART_BACKOFF_MAX_S = 30.0
#: The notice topic of shared ejections, and how many may wait to be announced.
EJECTION = "ejection"
EJECTIONS_QUEUED = 64
#: An actor that ran this long before crashing starts over from the shortest backoff.
HEALTHY_RUN_S = 10.0


@attrs.frozen
class ServiceRoute:
    service: Service
    dispatcher: Dispatcher
    limits: Limits


@attrs.frozen
class KeyRoute:
    """An API key as the request path checks it: a hash lookup and two comparisons."""

    id: str
    gateway_id: str
    active: bool
    #: Seconds since the epoch; infinity when the key never expires.
    expires: float
    #: The key's name: what the access log and the metrics call it, and what a fault of
    #: the gateway's fault injection may select it by, with ``id``.
    name: str = ""

    @classmethod
    def of(cls, key: ApiKey) -> KeyRoute:
        expires = key.expires_at.timestamp() if key.expires_at else math.inf
        return cls(key.id, key.gateway_id, key.active, expires, key.name)


@attrs.frozen
class GatewayRoute:
    gateway: Gateway
    rules: tuple[CompiledRule, ...]
    #: What ``GET <base>/models`` lists, by base (see :mod:`trio_gateway.core.listing`).
    models: Mapping[str, ModelLists] = attrs.field(factory=dict)
    #: Its fault injection, when enabled (``None``: off, the usual case).
    injection: Injection | None = None

    @property
    def active(self) -> bool:
        return self.gateway.status is GatewayStatus.ACTIVE


@attrs.frozen
class RouteTable:
    """Everything the proxy needs per request, compiled for one catalog generation."""

    generation: int = 0
    keys: Mapping[str, KeyRoute] = attrs.field(factory=dict)
    gateways: Mapping[str, GatewayRoute] = attrs.field(factory=dict)
    subdomains: Mapping[str, str] = attrs.field(factory=dict)
    services: Mapping[str, ServiceRoute] = attrs.field(factory=dict)
    dispatchers: Mapping[str, Dispatcher] = attrs.field(factory=dict)
    #: Services that cannot serve (their upstream could not be built): why, for a 503.
    unservable: Mapping[str, str] = attrs.field(factory=dict)

    def key(self, key_hash: str, now: float) -> KeyRoute | None:
        """The key with this hash if it is usable at ``now`` (seconds since the epoch)."""
        key = self.keys.get(key_hash)
        return key if key is not None and key.active and now < key.expires else None


@attrs.frozen
class BuildFailure:
    """An upstream the runtime could not build, as ``/readyz`` and its health endpoint say."""

    upstream_id: str
    gateway_id: str
    name: str
    error: str
    #: Its previous configuration still serves (``False``: nothing does).
    serving_previous: bool
    #: The configuration that failed (to log a failure once, not at every change).
    upstream: Upstream = attrs.field(eq=False, repr=False)

    def describe(self) -> str:
        still = (
            "; its previous configuration still serves"
            if self.serving_previous
            else "; its services answer 503"
        )
        return f"upstream {self.name!r} cannot be served: {self.error}{still}"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": "upstream",
            "id": self.upstream_id,
            "gateway_id": self.gateway_id,
            "name": self.name,
            "error": self.error,
            "serving_previous": self.serving_previous,
        }


def effective_target(target: Target, base_urls: Mapping[str, str]) -> Target:
    """``target`` as the runtime sends to it: ``base_urls`` maps a public endpoint to a stand-in.

    A target without a ``base_url`` uses its provider's public one; either is looked
    up in ``base_urls`` (``make run`` maps ``https://api.openai.com`` to a fake
    provider). Empty ``base_urls``: the target as configured.
    """
    if not base_urls:
        return target
    base = target.base_url or PROVIDERS[target.provider].base_url
    stand_in = base_urls.get(base) if base is not None else None
    return target if stand_in is None else attrs.evolve(target, base_url=stand_in)


@attrs.frozen
class UpstreamBuild:
    """What building an upstream needs, computed without side effects."""

    targets: tuple[Target, ...]
    endpoints: tuple[Endpoint, ...]


def plan_upstream(upstream: Upstream, base_urls: Mapping[str, str] | None = None) -> UpstreamBuild:
    """Resolve every target of ``upstream`` as the runtime will use it; raise if one cannot be.

    Pure. :func:`preflight` turns what it raises into problems by field.
    """
    targets = []
    endpoints = []
    for i, configured in enumerate(upstream.targets):
        target = effective_target(configured, base_urls or {})
        try:
            endpoint = Endpoint.of(target)
            # The HTTP client parses these URLs for every request and probe.
            for _, url in endpoint.urls:
                httpx2.URL(url.replace("{model}", "model"))
            httpx2.URL(endpoint.probe_url(upstream.health_checks.path))
            httpx2.Headers(endpoint.request_headers(()))
        except Exception as exc:
            raise _TargetUnbuildable(i, exc) from exc
        targets.append(target)
        endpoints.append(endpoint)
    health_policy(upstream)
    Dispatcher.build(upstream, ())  # compiles the tiers and balancers
    return UpstreamBuild(tuple(targets), tuple(endpoints))


class _TargetUnbuildable(Exception):
    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"targets[{index}]: {_reason(cause)}")
        self.index = index
        self.cause = cause


def _reason(exc: BaseException) -> str:
    """What went wrong, without echoing configuration values (they may be secrets)."""
    if isinstance(exc, _TargetUnbuildable):
        return str(exc)
    if isinstance(exc, httpx2.InvalidURL):
        return f"the HTTP client refuses its URL ({exc})"
    if type(exc) is ValueError and str(exc):  # our own messages (Endpoint.of)
        return str(exc)
    return type(exc).__name__


def preflight(upstream: Upstream) -> list[Problem]:
    """What would stop the runtime from building ``upstream``, by field (the admin API's 422)."""
    try:
        plan_upstream(upstream)
    except _TargetUnbuildable as exc:
        return [Problem(f"targets[{exc.index}]", f"cannot be served: {_reason(exc.cause)}")]
    except Exception as exc:
        return [Problem("$", f"cannot be served: {_reason(exc)}")]
    return []


class Runtime:
    """See the module docstring. Start with ``await nursery.start(runtime.run)``.

    ``base_urls`` maps providers' public base URLs (or any ``base_url``) to stand-ins:
    an explicit setting, for offline demos such as ``make run``.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        base_urls: Mapping[str, str] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.catalog = catalog
        #: Told of every new configuration (to bind metric children to its entities).
        self.telemetry = telemetry
        self.table = RouteTable()
        self._transport = transport
        self._base_urls = dict(base_urls or {})
        #: Upstreams that could not be built, by id (see :class:`BuildFailure`).
        self.failures: dict[str, BuildFailure] = {}
        self._orphans: dict[str, Service] = {}
        self._actors: dict[tuple[str, str], TargetActor] = {}
        #: Each enabled gateway's fault injection, by gateway id.
        self._injections: dict[str, Injection] = {}
        self._nursery: trio.Nursery | None = None
        self._clients: ClientPool | None = None
        self._applied = 0
        self._applied_event = trio.Event()
        #: This process among the instances sharing a store (to skip its own notices).
        self.instance = uuid.uuid4().hex[:12]
        self._ejections_out, self._ejections_in = trio.open_memory_channel[dict](EJECTIONS_QUEUED)
        #: Set it to end every running stream now, with an error event (shutdown).
        self.end_streams = EndStreams()
        #: The API keys' limits and usage (docs/keys.md); runs in this runtime's nursery.
        self.limiter = Limiter(catalog.store)

    async def run(
        self, *, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with ClientPool.open(self._transport) as clients, trio.open_nursery() as nursery:
            self._clients = clients
            self._nursery = nursery
            nursery.start_soon(self._publish_ejections)
            await nursery.start(self.limiter.run)
            snapshot = self.catalog.snapshot
            self._reconcile(snapshot)
            self._mark_applied(snapshot.generation)
            task_status.started(self)
            while True:
                snapshot = await self.catalog.wait_changed(snapshot.generation)
                try:
                    self._reconcile(snapshot)
                except Exception:
                    # A bug must not take the proxy down: keep serving the last good table.
                    log.exception(
                        "reconciling the configuration failed; keeping the previous one",
                        extra={"fields": {"generation": snapshot.generation}},
                    )
                self._mark_applied(snapshot.generation)

    # --- shared health ----------------------------------------------------------------------

    def _announce(self, upstream_id: str, actor: TargetActor, transition: Transition) -> None:
        """Queue an ejection decided here for the other instances (best effort, never waits)."""
        message = {
            "upstream": upstream_id,
            "target": actor.target.id,
            "until": time.time() + (actor.health.until - trio.current_time()),
            "reason": transition.reason,
            "by": self.instance,
        }
        try:
            self._ejections_out.send_nowait(message)
        except trio.WouldBlock:
            log.debug("too many ejections to announce; one dropped", extra={"fields": message})

    async def _publish_ejections(self) -> None:
        store = self.catalog.store
        async for message in self._ejections_in:
            try:
                await store.publish(EJECTION, message)
            except Exception as exc:  # the store is away: the other instances see for themselves
                log.warning(
                    "could not announce an ejection",
                    extra={"fields": {"target_id": message["target"], "error": type(exc).__name__}},
                )

    def on_notice(self, notice: Notice) -> None:
        """An ejection another instance announced: taken by upstreams that share health."""
        data: Any = notice.data
        if notice.topic != EJECTION or data.get("by") == self.instance:
            return
        dispatcher = self.table.dispatchers.get(data.get("upstream"))
        until = data.get("until")
        if dispatcher is None or not dispatcher.upstream.health_checks.shared:
            return
        if not isinstance(until, int | float):
            return
        for actor in dispatcher.actors:
            if actor.target.id == data.get("target"):
                actor.ejected_elsewhere(until, str(data.get("reason", ""))[:300])

    def _mark_applied(self, generation: int) -> None:
        self._applied = generation
        self._applied_event.set()
        self._applied_event = trio.Event()

    async def wait_applied(self, generation: int) -> None:
        """Return once the route table reflects catalog ``generation`` (or a later one).

        The admin API waits on this before answering a write, so that "takes effect
        on the next request" holds for the client that made the change.
        """
        while self._applied < generation:
            await self._applied_event.wait()

    # --- reconciliation -----------------------------------------------------------------

    def _reconcile(self, snapshot: Snapshot) -> None:
        """Plan everything first, without side effects; then start, retire and swap.

        Each upstream is planned on its own: one that raises keeps its previous
        actors and dispatcher (or has none) and is recorded in :attr:`failures`;
        the rest, and the route table, go ahead. If compiling the table itself
        raises, nothing has changed (``run`` logs the error).
        """
        assert self._nursery is not None
        # Actors are keyed by upstream and target: a target id is only unique in its upstream.
        actors: dict[tuple[str, str], TargetActor] = {}
        updates: list[Callable[[], None]] = []
        fresh: list[TargetActor] = []
        dispatchers: dict[str, Dispatcher] = {}
        failures: dict[str, BuildFailure] = {}
        for upstream in snapshot.upstreams.values():
            try:
                planned = self._plan_actors(upstream)
            except Exception as exc:
                failures[upstream.id] = self._keep_previous(upstream, exc, actors, dispatchers)
                continue
            members, upstream_updates, upstream_fresh = planned
            updates += upstream_updates
            fresh += upstream_fresh
            for actor in members:
                actors[upstream.id, actor.target.id] = actor
            previous = self.table.dispatchers.get(upstream.id)
            if (
                previous is not None
                and previous.upstream == upstream
                and previous.actors == tuple(members)
            ):
                dispatchers[upstream.id] = previous
            else:
                dispatchers[upstream.id] = Dispatcher.build(upstream, members, self.end_streams)
        injections = self._plan_injections(snapshot, updates)
        table = _compile(snapshot, dispatchers, failures, injections)

        for update in updates:
            update()
        for dispatcher in dispatchers.values():
            shared = dispatcher.upstream.health_checks.shared
            announce = partial(self._announce, dispatcher.upstream.id) if shared else None
            injection = injections.get(dispatcher.upstream.gateway_id)
            for member in dispatcher.actors:
                member.health.may_eject = dispatcher.may_eject
                member.announce = announce
                member.injection = injection
        clients = self._clients
        assert clients is not None
        for actor in fresh:
            # A plain-HTTP origin's transport is made at once: the actor can serve the
            # moment the new table is in (an https one may wait for its TLS context).
            if (transport := clients.acquire_nowait(actor.endpoint.base_url)) is not None:
                actor.set_transport(transport)
            self._nursery.start_soon(self._supervise, actor)
        for key, actor in self._actors.items():
            if actors.get(key) is not actor:
                actor.retire()
        self._actors = actors
        self.limiter.update(snapshot)
        self.table = table
        for gateway_id, injection in self._injections.items():
            if injections.get(gateway_id) is not injection:
                injection.switch_off()
        _log_injections(snapshot, self._injections, injections)
        self._injections = injections
        if self.telemetry is not None:
            self.telemetry.configured(
                {g.id: g.name for g in snapshot.gateways.values()}, dispatchers.values()
            )
        self._report(failures)
        self._report_orphans(snapshot)

    def _plan_injections(
        self, snapshot: Snapshot, updates: list[Callable[[], None]]
    ) -> dict[str, Injection]:
        """Each enabled gateway's fault injection: the running one while its faults are the
        same (its counters go on; it adopts new switches in ``updates``), else a new one."""
        injections = {}
        for gateway in snapshot.gateways.values():
            setting = gateway.fault_injection
            if not setting.enabled:
                continue
            running = self._injections.get(gateway.id)
            if running is not None and running.continues(setting):
                if running.setting != setting:
                    updates.append(partial(running.adopt, setting))
                injections[gateway.id] = running
            else:
                injections[gateway.id] = Injection.start(setting)
        return injections

    def _plan_actors(
        self, upstream: Upstream
    ) -> tuple[list[TargetActor], list[Callable[[], None]], list[TargetActor]]:
        """The actors of ``upstream`` (kept, updated or new), with no side effect yet."""
        plan = plan_upstream(upstream, self._base_urls)
        policy = health_policy(upstream)
        members: list[TargetActor] = []
        updates: list[Callable[[], None]] = []
        fresh: list[TargetActor] = []
        for target, endpoint in zip(plan.targets, plan.endpoints, strict=True):
            actor = self._actors.get((upstream.id, target.id))
            if (
                actor is not None
                and actor.endpoint == endpoint
                and actor.target.max_in_flight == target.max_in_flight
            ):
                updates.append(partial(actor.update, target, policy, upstream.health_checks))
            else:
                new = TargetActor(target, policy, upstream.health_checks)
                if actor is not None and actor.endpoint.url == endpoint.url:
                    # Same place, new credentials or headers: its health carries over.
                    new.health, new.latency_estimate = actor.health, actor.latency_estimate
                    updates.append(partial(setattr, new.health, "policy", policy))
                fresh.append(new)
                actor = new
            members.append(actor)
        return members, updates, fresh

    def _keep_previous(
        self,
        upstream: Upstream,
        exc: Exception,
        actors: dict[tuple[str, str], TargetActor],
        dispatchers: dict[str, Dispatcher],
    ) -> BuildFailure:
        """``upstream`` could not be built: its previous runtime, if any, goes on serving."""
        previous = self.table.dispatchers.get(upstream.id)
        if previous is not None:
            dispatchers[upstream.id] = previous
            for actor in previous.actors:
                actors[upstream.id, actor.target.id] = actor
        return BuildFailure(
            upstream_id=upstream.id,
            gateway_id=upstream.gateway_id,
            name=upstream.name,
            error=_reason(exc),
            serving_previous=previous is not None,
            upstream=upstream,
        )

    def _report(self, failures: dict[str, BuildFailure]) -> None:
        """Log each new failure once, and each recovery."""
        for upstream_id, failure in failures.items():
            known = self.failures.get(upstream_id)
            if known is None or known.upstream is not failure.upstream or known != failure:
                log.error(
                    failure.describe(),
                    extra={
                        "fields": {
                            "upstream_id": upstream_id,
                            "gateway_id": failure.gateway_id,
                        }
                    },
                )
        for upstream_id, known in self.failures.items():
            if upstream_id not in failures:
                log.info(
                    "upstream can be served again"
                    if upstream_id in self.table.dispatchers
                    else "unservable upstream removed",
                    extra={"fields": {"upstream_id": upstream_id, "name": known.name}},
                )
        self.failures = failures

    async def _supervise(self, actor: TargetActor) -> None:
        """Run ``actor`` until it is retired and drained; restart it when it crashes.

        While it waits to restart it is not eligible (``restarting``): nothing is
        queued to an actor that is not there. The backoff doubles with each crash in
        a row and starts over after a run of :data:`HEALTHY_RUN_S` seconds.
        """
        clients = self._clients
        assert clients is not None
        url = actor.endpoint.base_url
        if actor.transport is None:
            actor.set_transport(await clients.acquire(url))
        backoff = RESTART_BACKOFF_S
        try:
            while True:
                started = trio.current_time()
                try:
                    await actor.run()
                    return  # retired, and nothing in flight any more
                except Exception:
                    if trio.current_time() - started >= HEALTHY_RUN_S:
                        backoff = RESTART_BACKOFF_S
                    log.exception(
                        "target actor crashed; restarting",
                        extra={"fields": {"target_id": actor.target.id, "backoff_s": backoff}},
                    )
                actor.restarting = True
                try:
                    await trio.sleep(backoff)
                finally:
                    actor.restarting = False
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
        finally:
            clients.release(url)

    # --- introspection ---------------------------------------------------------------------

    def upstream_health(self, upstream_id: str) -> list[TargetStatistics] | None:
        dispatcher = self.table.dispatchers.get(upstream_id)
        if dispatcher is None:
            return None
        return [actor.statistics() for actor in dispatcher.actors]

    def fault_injection(self, gateway_id: str) -> Injection | None:
        """The gateway's fault injection in force in this process, if enabled."""
        return self._injections.get(gateway_id)

    def failure(self, upstream_id: str) -> BuildFailure | None:
        """Why ``upstream_id`` could not be built at the last change, if it could not."""
        return self.failures.get(upstream_id)

    def _report_orphans(self, snapshot: Snapshot) -> None:
        """Services naming no existing upstream (only a store edited by hand has them)."""
        orphans = {
            s.id: s for s in snapshot.services.values() if s.upstream_id not in snapshot.upstreams
        }
        for service_id, service in orphans.items():
            if service_id not in self._orphans:
                log.error(
                    f"service {service.name!r} cannot be served: it names no existing upstream",
                    extra={"fields": {"service_id": service_id, "gateway_id": service.gateway_id}},
                )
        self._orphans = orphans

    def problems(self) -> list[dict[str, object]]:
        """What ``/readyz`` lists: every entity the runtime cannot serve as configured."""
        return [failure.to_json() for failure in self.failures.values()] + [
            {
                "kind": "service",
                "id": service.id,
                "gateway_id": service.gateway_id,
                "name": service.name,
                "error": f"names no existing upstream ({service.upstream_id!r})",
                "serving_previous": False,
            }
            for service in self._orphans.values()
        ]


def _log_injections(
    snapshot: Snapshot, before: Mapping[str, Injection], after: Mapping[str, Injection]
) -> None:
    """Fault injection breaks traffic on purpose: say loudly when it starts, and when it ends."""
    for gateway_id, injection in after.items():
        if before.get(gateway_id) is not injection:
            setting = injection.setting
            log.warning(
                "fault injection in force",
                extra={
                    "fields": {
                        "gateway_id": gateway_id,
                        "name": snapshot.gateways[gateway_id].name,
                        "faults": len(setting.faults),
                        "header_faults": setting.header_faults,
                        "expires_at": setting.expires_at.isoformat()
                        if setting.expires_at
                        else None,
                    }
                },
            )
    for gateway_id in before.keys() - after.keys():
        log.info("fault injection switched off", extra={"fields": {"gateway_id": gateway_id}})


def _compile(
    snapshot: Snapshot,
    dispatchers: Mapping[str, Dispatcher],
    failures: Mapping[str, BuildFailure] | None = None,
    injections: Mapping[str, Injection] | None = None,
) -> RouteTable:
    """The route table; references that lead nowhere (a store edited by hand) are skipped."""
    failures = failures or {}
    injections = injections or {}
    rules_by_gateway: dict[str, list] = {gid: [] for gid in snapshot.gateways}
    for rule in snapshot.rules.values():
        if rule.gateway_id in rules_by_gateway:
            rules_by_gateway[rule.gateway_id].append(rule)
    services = {}
    unservable = {}
    for service in snapshot.services.values():
        dispatcher = dispatchers.get(service.upstream_id)
        if dispatcher is None:
            failure = failures.get(service.upstream_id)
            unservable[service.id] = (
                failure.describe()
                if failure is not None
                else f"service {service.name!r} names no existing upstream"
            )
            continue
        services[service.id] = ServiceRoute(
            service=service,
            dispatcher=dispatcher,
            limits=Limits(
                request_timeout=service.request_timeout,
                budgets=Budgets(
                    first_byte_timeout=service.first_byte_timeout,
                    body_timeout=service.body_timeout,
                    idle_timeout=service.idle_timeout,
                ),
                max_attempts=service.max_attempts,
            ),
        )
    upstreams = {sid: route.dispatcher.upstream for sid, route in services.items()}
    gateways = {}
    for gid, gateway in snapshot.gateways.items():
        rules = compile_rules(rules_by_gateway[gid])
        gateways[gid] = GatewayRoute(
            gateway, rules, compile_model_lists(rules, upstreams), injections.get(gid)
        )
    return RouteTable(
        generation=snapshot.generation,
        keys={k.key_hash: KeyRoute.of(k) for k in snapshot.api_keys.values()},
        gateways=gateways,
        subdomains={g.subdomain: g.id for g in snapshot.gateways.values() if g.subdomain},
        services=services,
        dispatchers=dispatchers,
        unservable=unservable,
    )
