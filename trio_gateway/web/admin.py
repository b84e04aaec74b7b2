"""The admin REST API: gateways and, under each, upstreams, services, rules and keys.

Every handler is a thin shell over :class:`~trio_gateway.config.catalog.Catalog`:
parse the body, call the catalog, serialize the result with the API converter
(which masks secrets). Errors are :class:`~trio_gateway.errors.GatewayError`
rendered once, by :func:`render_error`, as
``{"error": {"type", "message", "details"}}``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trio_gateway import serde
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.models import Entity, Kind
from trio_gateway.errors import (
    AuthenticationFailed,
    GatewayError,
    InternalError,
    NotFound,
    Problem,
    ValidationFailed,
)
from trio_gateway.runtime.target import TargetStatistics, wall_time
from trio_gateway.web.http import from_http_exception, json_response, read_json

log = logging.getLogger("trio_gateway.admin")

API = "/api/v1"
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
    """What ``/readyz`` reports: each part of the process that must be up to serve."""

    parts: dict[str, bool] = attrs.field(factory=dict)

    def set(self, part: str, ready: bool = True) -> None:
        self.parts[part] = ready

    @property
    def ready(self) -> bool:
        return bool(self.parts) and all(self.parts.values())


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
        return json_response({"ready": readiness.ready, "parts": readiness.parts}, status)


def create_admin_app(
    catalog: Catalog,
    *,
    readiness: Readiness,
    admin_token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    upstream_health: Callable[[str], list[TargetStatistics] | None] | None = None,
    applied: Callable[[int], Awaitable[None]] | None = None,
) -> QuartTrio:
    """The admin app. ``admin_token`` set: every ``/api`` call needs ``Authorization: Bearer``."""
    app = QuartTrio("trio_gateway.admin")
    app.config["MAX_CONTENT_LENGTH"] = max_body
    add_health_routes(app, readiness)
    token = admin_token.encode() if admin_token else None

    @app.before_request
    async def authenticate() -> None:
        if token is None or not request.path.startswith(API):
            return
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), token):
            raise AuthenticationFailed(
                "this admin API needs 'Authorization: Bearer <admin token>'",
                headers={"WWW-Authenticate": 'Bearer realm="trio-gateway admin"'},
            )

    @app.after_request
    async def settle(response: Response) -> Response:
        """After a write, answer once the proxy uses the new configuration (bounded)."""
        if (
            applied is not None
            and request.method in ("POST", "PUT", "DELETE")
            and response.status_code < 300
        ):
            with trio.move_on_after(APPLY_WAIT_S):
                await applied(catalog.snapshot.generation)
        return response

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

    # --- gateways -----------------------------------------------------------------

    @app.get(f"{API}/gateways")
    async def list_gateways() -> Response:
        return page(catalog.list(Kind.GATEWAY))

    @app.post(f"{API}/gateways")
    async def create_gateway() -> Response:
        gateway = await catalog.create(Kind.GATEWAY, await read_json(max_body))
        return created(gateway, f"{API}/gateways/{gateway.id}")

    @app.get(f"{API}/gateways/<gateway_id>")
    async def get_gateway(gateway_id: str) -> Response:
        return json_response(show(catalog.get(Kind.GATEWAY, gateway_id)))

    @app.put(f"{API}/gateways/<gateway_id>")
    async def replace_gateway(gateway_id: str) -> Response:
        gateway = await catalog.replace(Kind.GATEWAY, gateway_id, await read_json(max_body))
        _log_write("updated", gateway)
        return json_response(show(gateway))

    @app.delete(f"{API}/gateways/<gateway_id>")
    async def delete_gateway(gateway_id: str) -> Response:
        gateway = catalog.get(Kind.GATEWAY, gateway_id)
        await catalog.delete(Kind.GATEWAY, gateway_id)
        _log_write("deleted", gateway)
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
            return created(key, f"{base}/{key.id}", {"key": plain})
        entity = await catalog.create(kind, data, gateway_id)
        return created(entity, f"{base}/{entity.id}")

    @app.get(f"{API}/gateways/<gateway_id>/<collection>/<entity_id>")
    async def get_entity(gateway_id: str, collection: str, entity_id: str) -> Response:
        return json_response(show(catalog.get(kind_of(collection), entity_id, gateway_id)))

    @app.put(f"{API}/gateways/<gateway_id>/<collection>/<entity_id>")
    async def replace_entity(gateway_id: str, collection: str, entity_id: str) -> Response:
        kind = kind_of(collection)
        entity = await catalog.replace(kind, entity_id, await read_json(max_body), gateway_id)
        _log_write("updated", entity)
        return json_response(show(entity))

    @app.delete(f"{API}/gateways/<gateway_id>/<collection>/<entity_id>")
    async def delete_entity(gateway_id: str, collection: str, entity_id: str) -> Response:
        kind = kind_of(collection)
        entity = catalog.get(kind, entity_id, gateway_id)
        await catalog.delete(kind, entity_id, gateway_id)
        _log_write("deleted", entity)
        return Response(b"", 204)

    @app.get(f"{API}/gateways/<gateway_id>/upstreams/<upstream_id>/health")
    async def health(gateway_id: str, upstream_id: str) -> Response:
        upstream = catalog.get(Kind.UPSTREAM, upstream_id, gateway_id)
        targets = upstream_health(upstream.id) if upstream_health is not None else None
        if targets is None:
            raise NotFound("this upstream is not running yet; try again in a moment")
        return json_response(
            {
                "upstream_id": upstream.id,
                "name": upstream.name,
                "targets": [_health(t) for t in targets],
            }
        )

    return app


def _health(stats: TargetStatistics) -> dict[str, Any]:
    """One target's health as the endpoint shows it: state, since and until when, why."""
    health = stats.health
    return {
        "id": stats.id,
        "provider": stats.provider,
        "state": health.state.value,
        "since": _iso(wall_time(health.since)),
        "until": _iso(wall_time(health.until)) if health.until is not None else None,
        "reason": health.reason,
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
