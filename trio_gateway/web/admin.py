"""The admin REST API: gateways and, under each, upstreams, services, rules and keys.

Every handler is a thin shell over :class:`~trio_gateway.config.catalog.Catalog`:
parse the body, call the catalog, serialize the result with the API converter
(which masks secrets). Errors are :class:`~trio_gateway.errors.GatewayError`
rendered once, by :func:`render_error`, as
``{"error": {"type", "message", "details"}}``.

A write is answered once the proxy uses it (:func:`create_admin_app`'s
``applied``); an upstream the runtime could not build is refused before it is
stored (the catalog's preflight), so a ``2xx`` means "serving now".

Cross-site requests (see :class:`CrossSiteGuard`): without an admin token the API
needs no credential, so a web page the operator visits must not be able to use
it. Writes need ``Content-Type: application/json`` (a page can only send "simple"
``text/plain`` or form bodies without a CORS preflight, which this API never
grants), a foreign ``Origin`` or ``Sec-Fetch-Site`` is refused, and so is a
``Host`` that is not the listener's own address or on ``admin_hosts`` (DNS
rebinding). Paths are matched as sent: no redirect is ever built from ``Host``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trio_gateway import __version__, serde
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.models import Entity, Gateway, Kind
from trio_gateway.core.usage import UsageRow
from trio_gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InternalError,
    NotFound,
    PermissionDenied,
    Problem,
    ServiceUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from trio_gateway.runtime.injection import Injection
from trio_gateway.runtime.limits import BudgetStatus, Limiter
from trio_gateway.runtime.target import TargetStatistics, wall_time
from trio_gateway.store import StoreUnavailable
from trio_gateway.web.http import from_http_exception, json_response, read_json

log = logging.getLogger("trio_gateway.admin")

API = "/api/v1"
METRICS = "/metrics"
#: Prometheus' text exposition format.
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_MAX_BODY = 1 << 20
#: How long a write's answer may wait for the proxy to adopt the change.
APPLY_WAIT_S = 5.0

#: URL segment under a gateway -> entity kind.
COLLECTIONS: dict[str, Kind] = {
    "upstreams": Kind.UPSTREAM,
    "services": Kind.SERVICE,
    "rules": Kind.RULE,
    "keys": Kind.API_KEY,
    "api-keys": Kind.API_KEY,
}


@attrs.define
class Readiness:
    """What ``/readyz`` reports: each part of the process that must be up to serve, and
    the entities the runtime cannot serve (the rest serves: the process stays ready)."""

    parts: dict[str, bool] = attrs.field(factory=dict)
    #: More entries of the ``/readyz`` body, computed when asked; they do not decide
    #: readiness (``store``: an unreachable store refuses writes, the proxy still serves).
    details: dict[str, Callable[[], Any]] = attrs.field(factory=dict)
    problems: Callable[[], list[dict[str, Any]]] = list

    def set(self, part: str, ready: bool = True) -> None:
        self.parts[part] = ready

    @property
    def ready(self) -> bool:
        return bool(self.parts) and all(self.parts.values())


class _BuildFailure(Protocol):
    def describe(self) -> str: ...


@attrs.frozen
class CrossSiteGuard:
    """Refuses what a web page could make a browser send to the admin API.

    ``check_host``: the ``Host`` header must be the address the request came in on
    (a loopback listener also answers to ``localhost``, ``127.0.0.1`` and ``[::1]``
    on its port) or one of ``allowed_hosts`` (``name`` for any port, or
    ``name:port``). Always on without an admin token; with one, only when
    ``allowed_hosts`` is set (the token already proves the caller is no web page).
    """

    check_host: bool
    allowed_hosts: frozenset[str] = frozenset()

    def check(self, method: str, headers: Any, server: tuple[str, int] | None) -> None:
        host = headers.get("Host", "").strip().lower()
        if self.check_host and not self.host_allowed(host, server):
            shown = host[:100] or "(none)"
            raise PermissionDenied(
                f"Host {shown!r} is not this admin API's address; add it to "
                "server.admin_hosts to allow it"
            )
        origin = headers.get("Origin")
        if origin is not None and origin.strip().lower() not in (
            f"http://{host}",
            f"https://{host}",
        ):
            raise PermissionDenied(
                f"cross-origin requests are refused (Origin {origin[:100]!r}, Host {host[:100]!r})"
            )
        if headers.get("Sec-Fetch-Site", "same-origin").lower() not in ("same-origin", "none"):
            raise PermissionDenied("cross-site requests are refused (Sec-Fetch-Site)")
        if method in ("POST", "PUT", "PATCH"):
            mimetype = headers.get("Content-Type", "").partition(";")[0].strip().lower()
            if mimetype != "application/json":
                raise UnsupportedMediaType(
                    "send the body as JSON, with 'Content-Type: application/json'"
                    + (f" (not {mimetype!r})" if mimetype else "")
                )

    def host_allowed(self, host: str, server: tuple[str, int] | None) -> bool:
        name, port = _split_host(host)
        if name is None:
            return False
        if name in self.allowed_hosts or f"{name}:{port}" in self.allowed_hosts:
            return True
        if server is None:
            return False
        own, own_port = server[0].lower(), server[1]
        if port != own_port:
            return False
        names = {own.strip("[]")}
        if _is_loopback(own):
            names |= {"localhost", "127.0.0.1", "::1"}
        return name.strip("[]") in names


def _split_host(host: str) -> tuple[str | None, int]:
    """``name:port`` (``[v6]:port``) -> name and port (80 when absent); ``None`` if malformed."""
    if not host or any(c in host for c in "/@ \t,"):
        return None, 0
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        name, port = host, "80"
    if not name or not port.isdigit() or len(port) > 5:
        return None, 0
    return name, int(port)


def _is_loopback(host: str) -> bool:
    from trio_gateway.settings import is_loopback

    return is_loopback(host.strip("[]"))


def render_error(error: GatewayError) -> Response:
    body: dict[str, Any] = {"type": error.type, "message": error.message}
    if error.details:
        body["details"] = [{"loc": p.loc, "msg": p.msg} for p in error.details]
    return json_response({"error": body}, error.status, error.headers)


def add_health_routes(app: QuartTrio, readiness: Readiness) -> None:
    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        status = 200 if readiness.ready else 503
        details = {name: report() for name, report in readiness.details.items()}
        return json_response(
            {
                "ready": readiness.ready,
                "parts": readiness.parts,
                "problems": readiness.problems(),
                **details,
            },
            status,
        )


def create_admin_app(
    catalog: Catalog,
    *,
    readiness: Readiness,
    admin_token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    upstream_health: Callable[[str], list[TargetStatistics] | None] | None = None,
    applied: Callable[[int], Awaitable[None]] | None = None,
    build_failure: Callable[[str], _BuildFailure | None] | None = None,
    allowed_hosts: Iterable[str] = (),
    metrics: Callable[[], bytes] | None = None,
    explain: Callable[[str, Any], Awaitable[dict[str, Any]]] | None = None,
    fault_injection: Callable[[str], Injection | None] | None = None,
    limiter: Limiter | None = None,
) -> QuartTrio:
    """The admin app. ``admin_token`` set: every ``/api`` call needs ``Authorization: Bearer``.

    ``applied(generation)`` returns once the proxy uses that catalog generation;
    ``build_failure(upstream_id)`` says why the runtime could not build an upstream;
    ``fault_injection(gateway_id)`` is a gateway's fault injection in force, if any;
    ``limiter``: the API keys' limits and usage (the usage endpoint, docs/keys.md).
    ``allowed_hosts``: see :class:`CrossSiteGuard`. ``metrics()``: the Prometheus
    exposition served at ``/metrics`` (behind the token too); ``explain(gateway_id,
    data)``: the explanation of a request (:mod:`trio_gateway.web.explain`).
    """
    app = QuartTrio("trio_gateway.admin")
    app.config["MAX_CONTENT_LENGTH"] = max_body
    # "/api//v1/x" and "/x/" are not redirected: werkzeug would build the
    # redirect's URL from the Host header.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    add_health_routes(app, readiness)
    token = admin_token.encode() if admin_token else None
    allowed = frozenset(h.lower() for h in allowed_hosts)
    guard = CrossSiteGuard(check_host=token is None or bool(allowed), allowed_hosts=allowed)

    @app.before_request
    async def authenticate() -> None:
        if not (request.path.startswith(API) or request.path == METRICS):
            return
        if token is not None:  # who asks comes first: a stranger learns nothing else
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), token):
                raise AuthenticationFailed(
                    "this admin API needs 'Authorization: Bearer <admin token>'",
                    headers={"WWW-Authenticate": 'Bearer realm="trio-gateway admin"'},
                )
        server = request.scope.get("server")
        guard.check(request.method, request.headers, tuple(server) if server else None)

    async def settle(upstream_id: str | None = None) -> None:
        """Return once the proxy uses what was just stored; raise if it cannot.

        The catalog's preflight refused every upstream the runtime cannot build, so a
        failure here is a bug of ours: the client is told, and so is ``/readyz``.
        """
        if applied is None:
            return
        with trio.move_on_after(APPLY_WAIT_S) as timer:
            await applied(catalog.snapshot.generation)
        if timer.cancelled_caught:
            raise ServiceUnavailable(
                f"the change is stored, but the proxy has not applied it within "
                f"{APPLY_WAIT_S:g} s; see the gateway log"
            )
        failure = build_failure(upstream_id) if build_failure and upstream_id else None
        if failure is not None:
            raise InternalError(f"the change is stored, but {failure.describe()}")

    @app.errorhandler(GatewayError)
    async def gateway_error(error: GatewayError) -> Response:
        return render_error(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return render_error(from_http_exception(error))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error(
            "admin request failed",
            exc_info=error,
            extra={"fields": {"method": request.method, "path": request.path}},
        )
        return render_error(InternalError("internal error; see the gateway log"))

    def show(entity: Entity) -> dict[str, Any]:
        return serde.API.unstructure(entity)

    def page(items: list[Entity]) -> Response:
        offset = _query_int("offset", 0, 0, None)
        limit = _query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return json_response(
            {
                "items": [show(e) for e in items[offset : offset + limit]],
                "total": len(items),
                "offset": offset,
                "limit": limit,
            }
        )

    def created(entity: Entity, location: str, extra: dict[str, Any] | None = None) -> Response:
        _log_write("created", entity)
        return json_response({**show(entity), **(extra or {})}, 201, {"Location": location})

    # --- index and gateways ------------------------------------------------------------

    @app.get(API)
    async def index() -> Response:
        return json_response(
            {
                "name": "trio-gateway",
                "version": __version__,
                "gateways": f"{API}/gateways",
                "collections": sorted(f"{API}/gateways/{{gateway_id}}/{c}" for c in COLLECTIONS),
                "faults": f"{API}/faults",
            }
        )

    @app.get(f"{API}/gateways")
    async def list_gateways() -> Response:
        return page(catalog.list(Kind.GATEWAY))

    @app.post(f"{API}/gateways")
    async def create_gateway() -> Response:
        gateway = await catalog.create(Kind.GATEWAY, await read_json(max_body))
        await settle()
        return created(gateway, f"{API}/gateways/{gateway.id}")

    @app.get(f"{API}/gateways/<gateway_id>")
    async def get_gateway(gateway_id: str) -> Response:
        return json_response(show(catalog.get(Kind.GATEWAY, gateway_id)))

    @app.put(f"{API}/gateways/<gateway_id>")
    async def replace_gateway(gateway_id: str) -> Response:
        gateway = await catalog.replace(Kind.GATEWAY, gateway_id, await read_json(max_body))
        _log_write("updated", gateway)
        await settle()
        return json_response(show(gateway))

    @app.delete(f"{API}/gateways/<gateway_id>")
    async def delete_gateway(gateway_id: str) -> Response:
        gateway = catalog.get(Kind.GATEWAY, gateway_id)
        await catalog.delete(Kind.GATEWAY, gateway_id)
        _log_write("deleted", gateway)
        await settle()
        return Response(b"", 204)

    # --- entities under a gateway -----------------------------------------------

    def kind_of(collection: str) -> Kind:
        try:
            return COLLECTIONS[collection]
        except KeyError:
            raise NotFound(f"no route for {request.method} {request.path}") from None

    @app.get(f"{API}/gateways/<gateway_id>/<collection>")
    async def list_entities(gateway_id: str, collection: str) -> Response:
        return page(catalog.list(kind_of(collection), gateway_id))

    @app.post(f"{API}/gateways/<gateway_id>/<collection>")
    async def create_entity(gateway_id: str, collection: str) -> Response:
        kind = kind_of(collection)
        data = await read_json(max_body)
        base = f"{API}/gateways/{gateway_id}/{collection}"
        if kind is Kind.API_KEY:
            key, plain = await catalog.create_api_key(gateway_id, data)
            await settle()
            return created(key, f"{base}/{key.id}", {"key": plain})
        entity = await catalog.create(kind, data, gateway_id)
        await settle(entity.id if kind is Kind.UPSTREAM else None)
        return created(entity, f"{base}/{entity.id}")

    @app.get(f"{API}/gateways/<gateway_id>/<collection>/<entity_id>")
    async def get_entity(gateway_id: str, collection: str, entity_id: str) -> Response:
        return json_response(show(catalog.get(kind_of(collection), entity_id, gateway_id)))

    @app.put(f"{API}/gateways/<gateway_id>/<collection>/<entity_id>")
    async def replace_entity(gateway_id: str, collection: str, entity_id: str) -> Response:
        kind = kind_of(collection)
        entity = await catalog.replace(kind, entity_id, await read_json(max_body), gateway_id)
        _log_write("updated", entity)
        await settle(entity.id if kind is Kind.UPSTREAM else None)
        return json_response(show(entity))

    @app.delete(f"{API}/gateways/<gateway_id>/<collection>/<entity_id>")
    async def delete_entity(gateway_id: str, collection: str, entity_id: str) -> Response:
        kind = kind_of(collection)
        entity = catalog.get(kind, entity_id, gateway_id)
        await catalog.delete(kind, entity_id, gateway_id)
        _log_write("deleted", entity)
        await settle()
        return Response(b"", 204)

    @app.get(f"{API}/gateways/<gateway_id>/<collection>/<key_id>/usage")
    async def key_usage(gateway_id: str, collection: str, key_id: str) -> Response:
        """A key's usage per day and model, and its budget, from the shared counters."""
        if kind_of(collection) is not Kind.API_KEY:
            raise NotFound(f"no route for {request.method} {request.path}")
        key = catalog.get(Kind.API_KEY, key_id, gateway_id)
        since, until = _query_day("since"), _query_day("until")
        if since is not None and until is not None and until < since:
            raise ValidationFailed.single("until", f"must not be before since ({since})")
        if limiter is None:
            raise NotFound("usage is not available here")
        try:
            rows = await limiter.usage(key.id, since, until)
            budget = await limiter.budget(key.id)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(
                f"the store could not be read ({type(exc).__name__}); try again shortly"
            ) from exc
        return json_response(_usage_json(key.id, since, until, rows, budget))

    @app.get(METRICS)
    async def scrape() -> Response:
        if metrics is None:
            raise NotFound("metrics are off (--metrics off)")
        return Response(metrics(), 200, {"Content-Type": METRICS_TYPE})

    @app.post(f"{API}/gateways/<gateway_id>/explain")
    async def explain_request(gateway_id: str) -> Response:
        catalog.get(Kind.GATEWAY, gateway_id)
        if explain is None:
            raise NotFound("explain is not available here")
        return json_response(await explain(gateway_id, await read_json(max_body)))

    # --- fault injection on live traffic (docs/testing.md) ------------------------------

    def faults_view(gateway: Gateway) -> dict[str, Any]:
        injection = fault_injection(gateway.id) if fault_injection is not None else None
        return _faults_json(gateway, injection, catalog)

    @app.get(f"{API}/faults")
    async def list_faults() -> Response:
        """Every gateway whose fault injection is enabled."""
        return json_response(
            {
                "gateways": [
                    {"id": g.id, "name": g.name, **faults_view(g)}
                    for g in catalog.list(Kind.GATEWAY)
                    if g.fault_injection.enabled
                ]
            }
        )

    @app.delete(f"{API}/faults")
    async def delete_all_faults() -> Response:
        """The kill switch of every gateway at once."""
        gateways = await catalog.switch_off_all_faults()
        for gateway in gateways:
            _log_write("updated", gateway)
        await settle()
        return json_response({"switched_off": [{"id": g.id, "name": g.name} for g in gateways]})

    @app.get(f"{API}/gateways/<gateway_id>/faults")
    async def get_faults(gateway_id: str) -> Response:
        return json_response(faults_view(catalog.get(Kind.GATEWAY, gateway_id)))

    @app.put(f"{API}/gateways/<gateway_id>/faults")
    async def put_faults(gateway_id: str) -> Response:
        gateway = await catalog.set_fault_injection(gateway_id, await read_json(max_body))
        _log_write("updated", gateway)
        await settle()
        return json_response(faults_view(gateway))

    @app.delete(f"{API}/gateways/<gateway_id>/faults")
    async def delete_faults(gateway_id: str) -> Response:
        gateway = await catalog.switch_off_faults(gateway_id)
        _log_write("updated", gateway)
        await settle()
        return json_response(faults_view(gateway))

    @app.get(f"{API}/gateways/<gateway_id>/upstreams/<upstream_id>/health")
    async def health(gateway_id: str, upstream_id: str) -> Response:
        upstream = catalog.get(Kind.UPSTREAM, upstream_id, gateway_id)
        targets = upstream_health(upstream.id) if upstream_health is not None else None
        failure = build_failure(upstream.id) if build_failure is not None else None
        if targets is None and failure is None:
            raise NotFound("this upstream is not running yet; try again in a moment")
        return json_response(
            {
                "upstream_id": upstream.id,
                "name": upstream.name,
                "serving": targets is not None,
                "problem": failure.describe() if failure is not None else None,
                "targets": [_health(t) for t in targets or ()],
            }
        )

    return app


def _faults_json(gateway: Gateway, injection: Injection | None, catalog: Catalog) -> dict[str, Any]:
    """A gateway's fault injection as ``.../faults`` shows it: the setting, whether it is in
    force in this process, its counters here, and references that match nothing."""
    setting = gateway.fault_injection
    data: dict[str, Any] = serde.API.unstructure(setting)
    if injection is not None and injection.setting != setting:
        injection = None  # not applied yet (another instance's write, being followed)
    data["active"] = injection is not None and not injection.lifted()
    statistics = None
    if injection is not None:
        stats = injection.statistics()
        statistics = {
            "header_faults": stats.header_faults,
            "faults": [{"matched": f.matched, "fired": f.fired} for f in stats.faults],
        }
    data["statistics"] = statistics
    data["warnings"] = _fault_warnings(gateway, catalog)
    return data


def _fault_warnings(gateway: Gateway, catalog: Catalog) -> list[str]:
    """What a setting names that does not exist (a key's name mistyped selects nothing)."""
    snapshot = catalog.snapshot
    setting = gateway.fault_injection
    keys = {k.id for k in snapshot.in_gateway(Kind.API_KEY, gateway.id)} | {
        k.name for k in snapshot.in_gateway(Kind.API_KEY, gateway.id)
    }
    targets = {t.id for u in snapshot.in_gateway(Kind.UPSTREAM, gateway.id) for t in u.targets}
    warnings = []
    if setting.faults and not setting.enabled:
        warnings.append("'enabled' is false: nothing is injected")
    for i, fault in enumerate(setting.faults):
        warnings += [
            f"faults[{i}].keys[{j}]: no API key of this gateway has the name or id {key!r}"
            for j, key in enumerate(fault.keys)
            if key not in keys
        ]
        warnings += [
            f"faults[{i}].targets[{j}]: no target of this gateway has the id {target!r}"
            for j, target in enumerate(fault.targets)
            if target not in targets
        ]
    return warnings


def _health(stats: TargetStatistics) -> dict[str, Any]:
    """One target's health as the endpoint shows it: state, since and until when, why."""
    health = stats.health
    why = _why(health)
    return {
        "id": stats.id,
        "provider": stats.provider,
        "state": health.state.value,
        "since": _iso(wall_time(health.since)),
        "until": _iso(wall_time(health.until)) if health.until is not None else None,
        "reason": health.reason,
        **why,
        "probation": health.probation,
        "consecutive_failures": health.consecutive_failures,
        "ejections": health.ejections,
        "last_error": health.last_error,
        "in_flight": stats.in_flight,
        "queued": stats.queued,
        "restarting": stats.restarting,
        "latency_ms": round(stats.latency_s * 1000, 1) if stats.latency_s is not None else None,
        "requests": stats.requests,
        "failures": stats.failures,
        "probes": stats.probes,
        "probe_failures": stats.probe_failures,
        "recent": [{"at": _iso(wall_time(at)), "outcome": word} for at, word in stats.recent],
        "transitions": [
            {
                "at": _iso(wall_time(t.at)),
                "from": t.old.value,
                "to": t.new.value,
                "reason": t.reason,
            }
            for t in health.history
        ],
    }


def _why(health: Any) -> dict[str, Any]:
    """Why an out target is out, as data: the failures that ejected it, or the
    ``Retry-After`` that parked it (``cause``: the bounded word the metrics use)."""
    history = health.history
    last = history[-1] if history else None
    why: dict[str, Any] = {"cause": last.cause if last is not None else None}
    if health.state.value in ("ejected", "half_open"):
        ejection = next((t for t in reversed(history) if t.new.value == "ejected"), None)
        if ejection is not None:
            why["ejected_by"] = list(ejection.failures)
    elif health.state.value == "parked" and last is not None and last.cause == "rate_limited":
        why["retry_after_s"] = last.retry_after
    return why


_USAGE_FIELDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost",
    "refused",
)


def _usage_json(
    key_id: str,
    since: str | None,
    until: str | None,
    rows: list[UsageRow],
    budget: BudgetStatus | None,
) -> dict[str, Any]:
    """The usage endpoint's answer: totals, then each day's models (rows come by day)."""

    def amounts(sums: list[float]) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: int(value) for name, value in zip(_USAGE_FIELDS, sums, strict=True)
        }
        out["cost"] = round(sums[4], 9)
        return out

    totals = [0.0] * len(_USAGE_FIELDS)
    days: list[dict[str, Any]] = []
    day_sums: list[float] = []
    for row in rows:
        values = [getattr(row, name) for name in _USAGE_FIELDS]
        if not days or days[-1]["day"] != row.day:
            day_sums = [0.0] * len(_USAGE_FIELDS)
            days.append({"day": row.day, "models": [], "totals": day_sums})
        days[-1]["models"].append({"model": row.model or None, **amounts(values)})
        for i, value in enumerate(values):
            totals[i] += value
            day_sums[i] += value
    for day in days:
        day["totals"] = amounts(day["totals"])
    return {
        "key_id": key_id,
        "since": since,
        "until": until,
        "totals": amounts(totals),
        "days": days,
        "budget": _budget_json(budget) if budget is not None else None,
    }


def _budget_json(budget: BudgetStatus) -> dict[str, Any]:
    def part(limit: float | None, used: float | None, whole: bool) -> dict[str, Any] | None:
        if limit is None:
            return None
        used = max(0.0, used or 0.0)
        return {"limit": limit, "used": round(used) if whole else round(used, 9)}

    return {
        "period": budget.period,
        "label": budget.label,
        "ends": _iso_seconds(budget.ends) if budget.ends is not None else None,
        "tokens": part(budget.tokens_limit, budget.tokens_used, True),
        "cost": part(budget.cost_limit, budget.cost_used, False),
    }


def _iso_seconds(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _query_day(name: str) -> str | None:
    """A ``YYYY-MM-DD`` query parameter (a UTC day), or ``None`` when absent."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date().isoformat()
    except ValueError:
        raise ValidationFailed.single(name, "must be a day as YYYY-MM-DD") from None


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _query_int(name: str, default: int, lo: int, hi: int | None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed.of([Problem(name, "must be an integer")]) from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValidationFailed.of([Problem(name, f"must be {bound}")])
    return value


def _log_write(action: str, entity: Entity) -> None:
    kind = Kind.of(entity)
    fields = {"kind": kind.value, "id": entity.id, "name": entity.name}
    if kind is not Kind.GATEWAY:
        fields["gateway_id"] = entity.gateway_id
    log.info(f"{kind.label} {action}", extra={"fields": fields})
