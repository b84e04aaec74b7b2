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
  services with their dispatcher and limits) and swapped in with one assignment.

The request path only ever reads :attr:`Runtime.table`: no lock, no await, no store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from functools import partial

import attrs
import httpx2
import trio

from trio_gateway.config.catalog import Catalog, Snapshot
from trio_gateway.config.models import ApiKey, Gateway, GatewayStatus, Service, Upstream
from trio_gateway.core.attempt import Budgets
from trio_gateway.core.routing import CompiledRule, compile_rules
from trio_gateway.providers.endpoints import Endpoint
from trio_gateway.runtime.clients import ClientPool
from trio_gateway.runtime.dispatcher import Dispatcher, Limits, health_policy
from trio_gateway.runtime.ending import EndStreams
from trio_gateway.runtime.target import TargetActor, TargetStatistics

log = logging.getLogger("trio_gateway.runtime")

RESTART_BACKOFF_S = 0.1
RESTART_BACKOFF_MAX_S = 30.0
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

    @classmethod
    def of(cls, key: ApiKey) -> KeyRoute:
        expires = key.expires_at.timestamp() if key.expires_at else math.inf
        return cls(key.id, key.gateway_id, key.active, expires)


@attrs.frozen
class GatewayRoute:
    gateway: Gateway
    rules: tuple[CompiledRule, ...]
    #: ``(model, provider)`` reachable through the rules, sorted: ``GET /v1/models``.
    models: tuple[tuple[str, str], ...] = ()

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

    def key(self, key_hash: str, now: float) -> KeyRoute | None:
        """The key with this hash if it is usable at ``now`` (seconds since the epoch)."""
        key = self.keys.get(key_hash)
        return key if key is not None and key.active and now < key.expires else None


class Runtime:
    """See the module docstring. Start with ``await nursery.start(runtime.run)``."""

    def __init__(
        self, catalog: Catalog, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self.catalog = catalog
        self.table = RouteTable()
        self._transport = transport
        self._actors: dict[tuple[str, str], TargetActor] = {}
        self._nursery: trio.Nursery | None = None
        self._clients: ClientPool | None = None
        self._applied = 0
        self._applied_event = trio.Event()
        #: Set it to end every running stream now, with an error event (shutdown).
        self.end_streams = EndStreams()

    async def run(
        self, *, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with ClientPool.open(self._transport) as clients, trio.open_nursery() as nursery:
            self._clients = clients
            self._nursery = nursery
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

        If planning raises, nothing has changed: the previous actors and table go on
        serving (``run`` logs the error).
        """
        assert self._nursery is not None
        # Actors are keyed by upstream and target: a target id is only unique in its upstream.
        actors: dict[tuple[str, str], TargetActor] = {}
        updates: list[Callable[[], None]] = []
        fresh: list[TargetActor] = []
        dispatchers: dict[str, Dispatcher] = {}
        for upstream in snapshot.upstreams.values():
            policy = health_policy(upstream)
            members = []
            for target in upstream.targets:
                key = (upstream.id, target.id)
                actor = self._actors.get(key)
                endpoint = Endpoint.of(target)
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
                actors[key] = actor
                members.append(actor)
            previous = self.table.dispatchers.get(upstream.id)
            if (
                previous is not None
                and previous.upstream == upstream
                and previous.actors == tuple(members)
            ):
                dispatchers[upstream.id] = previous
            else:
                dispatchers[upstream.id] = Dispatcher.build(upstream, members, self.end_streams)
        table = _compile(snapshot, dispatchers)

        for update in updates:
            update()
        for dispatcher in dispatchers.values():
            for member in dispatcher.actors:
                member.health.may_eject = dispatcher.may_eject
        for actor in fresh:
            self._nursery.start_soon(self._supervise, actor)
        for key, actor in self._actors.items():
            if actors.get(key) is not actor:
                actor.retire()
        self._actors = actors
        self.table = table

    async def _supervise(self, actor: TargetActor) -> None:
        """Run ``actor`` until it is retired and drained; restart it when it crashes.

        While it waits to restart it is not eligible (``restarting``): nothing is
        queued to an actor that is not there. The backoff doubles with each crash in
        a row and starts over after a run of :data:`HEALTHY_RUN_S` seconds.
        """
        clients = self._clients
        assert clients is not None
        url = actor.endpoint.base_url
        client = await clients.acquire(url)
        backoff = RESTART_BACKOFF_S
        try:
            while True:
                started = trio.current_time()
                try:
                    await actor.run(client)
                    return  # retired and drained
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


def _compile(snapshot: Snapshot, dispatchers: Mapping[str, Dispatcher]) -> RouteTable:
    rules_by_gateway: dict[str, list] = {gid: [] for gid in snapshot.gateways}
    for rule in snapshot.rules.values():
        rules_by_gateway[rule.gateway_id].append(rule)
    services = {}
    for service in snapshot.services.values():
        upstream: Upstream = snapshot.upstreams[service.upstream_id]
        services[service.id] = ServiceRoute(
            service=service,
            dispatcher=dispatchers[upstream.id],
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
    return RouteTable(
        generation=snapshot.generation,
        keys={k.key_hash: KeyRoute.of(k) for k in snapshot.api_keys.values()},
        gateways={
            gid: _gateway_route(gateway, rules_by_gateway[gid], snapshot)
            for gid, gateway in snapshot.gateways.items()
        },
        subdomains={g.subdomain: g.id for g in snapshot.gateways.values() if g.subdomain},
        services=services,
        dispatchers=dispatchers,
    )


def _gateway_route(gateway: Gateway, rules: list, snapshot: Snapshot) -> GatewayRoute:
    compiled = compile_rules(rules)
    models: dict[str, str] = {}
    for rule in compiled:
        service = snapshot.services.get(rule.service_id)
        upstream = snapshot.upstreams.get(service.upstream_id) if service else None
        for target in upstream.targets if upstream else ():
            names = (*target.models, *((target.default_model,) if target.default_model else ()))
            for name in names:
                models.setdefault(name, target.provider.value)
    return GatewayRoute(gateway, compiled, tuple(sorted(models.items())))
