"""The proxy front end: the API endpoints of OpenAI and Anthropic clients.

``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings`` (OpenAI),
``POST /v1/messages``, ``/v1/messages/count_tokens`` (Anthropic), and
``GET /v1/models``, ``/v1/models/{id}`` (either, answered from configuration).

Per request, in order: the method (``405`` with ``Allow`` for a wrong one on an API
path), the caller's key (``X-Api-Key`` or ``Authorization: Bearer``) naming its
gateway, the gateway's longest matching rule, the endpoint (the path with the
rule's prefix removed when the rule says ``strip_path``), its service, and the
service's dispatcher, which does the rest. Every error is answered in the
caller's dialect with an ``X-Request-Id``.

The proxy is a plain ASGI app (:class:`ProxyApp`), not a Quart one: a request goes
from its ASGI messages to the dispatcher and back with no framework in between (only
``/healthz`` and ``/readyz`` are Quart's).

Only lookups happen here: the route table was compiled when the configuration
changed, the body is parsed once and forwarded as the bytes it came as unless
the model or the dialect changes. Of the client's headers only an explicit set
per dialect is forwarded (:data:`FORWARDED`).

A request may name a fault for itself (``X-Gateway-Fault``, never forwarded): it is
refused (``403``) unless its gateway's fault injection is enabled and takes such
faults (:mod:`trio_gateway.runtime.injection`).

The caller's key may carry limits (docs/keys.md): a model it may not use is refused
(``404`` for OpenAI clients, ``403`` for Anthropic's), a request its limits refuse
gets ``429`` with ``Retry-After``; an admitted request carries its
:class:`~trio_gateway.runtime.limits.Charge` to the dispatcher, which settles it
when the request is over; every response of a limited key carries its rate-limit
headers, in the naming of the client's dialect. A key without limits costs a
dictionary lookup and its usage count.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from trio_gateway import jsonio
from trio_gateway.config.secrets import hash_api_key
from trio_gateway.core.estimate import estimate
from trio_gateway.core.injection import HEADER as FAULT_HEADER
from trio_gateway.core.limits import model_not_allowed
from trio_gateway.core.listing import API_ENDPOINTS, MODELS_ENDPOINT, ListedModel, ModelList, page
from trio_gateway.core.routing import match_rule
from trio_gateway.errors import (
    AuthenticationFailed,
    ClientError,
    GatewayError,
    InternalError,
    KeyLimitExceeded,
    MethodNotAllowed,
    ModelNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from trio_gateway.providers.formats import Api, ApiFormat, error_body
from trio_gateway.runtime.dispatcher import EJECTED, ClientRequest
from trio_gateway.runtime.injection import named_fault, request_faults
from trio_gateway.runtime.supervisor import (
    GatewayRoute,
    KeyRoute,
    RouteTable,
    Runtime,
    ServiceRoute,
)
from trio_gateway.runtime.target import StreamBody
from trio_gateway.telemetry import RequestRecord, Telemetry
from trio_gateway.web.admin import Readiness, add_health_routes
from trio_gateway.web.http import JSON, Receive, Scope, Send, from_http_exception

log = logging.getLogger("trio_gateway.proxy")

DEFAULT_MAX_BODY = 32 << 20
MAX_MODEL_NAME = 256
NO_KEY = "invalid or missing API key: send it as 'X-Api-Key' or 'Authorization: Bearer'"

#: The method each kind of API path takes, by its last segments (before the rules).
_METHODS = (
    ("/chat/completions", "POST"),
    ("/messages", "POST"),
    ("/messages/count_tokens", "POST"),
    ("/responses", "POST"),
    ("/embeddings", "POST"),
    ("/models", "GET"),
)
#: Anthropic's model list pages: its default and largest ``limit``.
PAGE_DEFAULT = 20
PAGE_MAX = 1000
#: The client headers sent on to providers, by the client's dialect; nothing else is
#: (the gateway sets its own framing, credentials and content type). A header of
#: the client's dialect is not sent to a provider of the other one.
FORWARDED: dict[ApiFormat, frozenset[str]] = {
    ApiFormat.OPENAI: frozenset(
        {"openai-organization", "openai-project", "openai-beta", "traceparent", "tracestate"}
    ),
    ApiFormat.ANTHROPIC: frozenset(
        {"anthropic-version", "anthropic-beta", "traceparent", "tracestate"}
    ),
}
_FORWARDABLE = frozenset().union(*FORWARDED.values())
#: APIs whose answers are never streams: ``stream`` in their bodies is not read.
WHOLE_ONLY = frozenset({Api.EMBEDDINGS, Api.COUNT_TOKENS})


@attrs.frozen
class EndpointInfo:
    """What the proxy needs of an endpoint, looked up once per request."""

    #: ``None``: the model list, answered by the gateway.
    api: Api | None
    method: str
    format: ApiFormat | None = None
    #: The client headers sent on to a provider of the client's dialect.
    forwarded: frozenset[str] = frozenset()
    #: Its answers may be streams (the body's ``stream`` is read).
    streams: bool = False


#: The endpoints, as the path reads once a ``strip_path`` rule's prefix is removed.
#: ``/v1/models/{id}`` (any id, slashes included) is the one endpoint with a parameter.
ENDPOINTS: dict[str, EndpointInfo] = {
    **{
        path: EndpointInfo(
            api, "POST", api.format, FORWARDED[api.format], streams=api not in WHOLE_ONLY
        )
        for path, api in API_ENDPOINTS.items()
    },
    MODELS_ENDPOINT: EndpointInfo(None, "GET"),
}
MODEL_PREFIX = MODELS_ENDPOINT + "/"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def client_format(path: str) -> ApiFormat | None:
    """The dialect a path's last segments suggest (for errors before the endpoint is known)."""
    if path.endswith(("/chat/completions", "/responses", "/embeddings")):
        return ApiFormat.OPENAI
    if path.endswith(("/messages", "/messages/count_tokens")):
        return ApiFormat.ANTHROPIC
    return None


def allowed_method(path: str) -> str | None:
    """The one method an API path takes, or ``None`` if the path is no API path."""
    for suffix, method in _METHODS:
        if path.endswith(suffix):
            return method
    if "/models/" in path:
        return "GET"  # a model's page: /v1/models/{id}
    return None


def create_proxy_app(
    runtime: Runtime,
    *,
    readiness: Readiness,
    max_body: int = DEFAULT_MAX_BODY,
    telemetry: Telemetry | None = None,
) -> ProxyApp:
    """The proxy app; ``telemetry`` (metrics, access log, traces) sees every request."""
    return ProxyApp(runtime, readiness, max_body, telemetry)


class ProxyApp:
    """The proxy as an ASGI app: every proxied request served from the ASGI messages.

    The API paths are the hot path, and a request through them needs none of what a
    web framework is for (routing tables, request and response objects, contexts,
    signals): :class:`_Call` reads the scope's headers once, reads the body only once
    the key and the route are known, and writes the answer as ASGI messages. Only
    ``/healthz`` and ``/readyz`` (and the lifespan) go to a Quart app.

    A request is handled in the connection's own task, with one more task once its
    body is read: the watch for the client's leaving (``http.disconnect``), which
    cancels the request (hypercorn does not), as quart-trio would.
    """

    def __init__(
        self,
        runtime: Runtime,
        readiness: Readiness,
        max_body: int,
        telemetry: Telemetry | None,
    ) -> None:
        self.runtime = runtime
        self.max_body = max_body
        self.telemetry = telemetry if telemetry is not None else Telemetry(access=False)
        self.tracing = self.telemetry.tracing is not None
        self.observed = self.telemetry.enabled
        self.quart = _health_app(readiness, max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            await self.quart(scope, receive, send)
            return
        await _Call(self, scope, receive, send).run()


#: The paths the Quart app serves (everything else is the proxy's).
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})


def _health_app(readiness: Readiness, max_body: int) -> QuartTrio:
    app = QuartTrio("trio_gateway.proxy")
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.config["BODY_TIMEOUT"] = None  # the connection guard's (web/server.py)
    add_health_routes(app, readiness)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        wanted, _ = _headers(request.scope["headers"])
        status, headers, body = render(
            _dialect(wanted), from_http_exception(error), _request_id(wanted)
        )  # the health paths are no API's: the dialect is the headers'.
        return Response(body, status=status, headers=headers)

    return app


class _ClientLeft(Exception):
    """The client left before its request's body was read."""


class _Call:
    """One proxied request, from its ASGI scope to its last ASGI message."""

    __slots__ = ("_nursery", "app", "body_done", "declared", "receive", "scope", "send")

    def __init__(self, app: ProxyApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app, self.scope, self.receive, self.send = app, scope, receive, send
        self.body_done = False
        #: The body's ``Content-Length`` (h11 checked it), when the client declared one.
        self.declared: str | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        app, scope = self.app, self.scope
        path = scope["path"]
        method = scope["method"]
        wanted, candidates = _headers(scope["headers"])
        self.declared = wanted.get("content-length")
        #: The client's dialect: its path's, else its headers' (a model list's path).
        dialect = client_format(path) or _dialect(wanted)
        request_id = _request_id(wanted)
        record = (
            app.telemetry.begin(request_id, method, path, scope, dialect) if app.observed else None
        )
        if record is not None and app.tracing:
            record.traceparent = next((v for n, v in candidates if n == "traceparent"), None)
        found: Any = record if record is not None else Resolution()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            answer = await self._answer(wanted, candidates, request_id, dialect, found, record)
            status, headers, body = answer
            key = found.key
            runtime = app.runtime
            if key is not None and key.id in runtime.limiter.keys:
                # Every response of a limited key: its limits as they stand, in the
                # client's naming.
                headers.extend(runtime.limiter.headers(key.id, dialect is ApiFormat.OPENAI))
            if isinstance(body, bytes):
                if record is not None:
                    record.finish(status, len(body))
                await self._send_whole(status, headers, body)
            else:
                await self._send_stream(status, headers, body)
            nursery.cancel_scope.cancel()

    async def _answer(
        self,
        wanted: dict[str, str],
        candidates: list[tuple[str, str]],
        request_id: str,
        dialect: ApiFormat,
        found: Any,
        record: RequestRecord | None,
    ) -> Answer:
        app, scope = self.app, self.scope
        runtime = app.runtime
        try:
            client_request = await prepare(
                runtime,
                scope["method"],
                scope["path"],
                wanted,
                candidates,
                request_id,
                self.read_body,
                found,
            )
            if client_request is None:
                return _models(
                    runtime.table,
                    found.gateway,
                    found.key is not None,
                    found.endpoint,
                    dialect,
                    request_id,
                    scope,
                )
            route = found.route
            upstream_id = route.service.upstream_id
            result = await route.dispatcher.exchange(
                client_request,
                route.limits,
                lambda: runtime.table.dispatchers.get(upstream_id),
                record,
            )
        except GatewayError as error:
            if record is not None:
                record.error = error.type
                if isinstance(error, KeyLimitExceeded):
                    record.refused_by = error.limit
                elif isinstance(error, ModelNotAllowed):
                    record.refused_by = "model"
            return render(dialect, error, request_id)
        except _ClientLeft:
            # Nobody to answer: the request ends here, as when the watch cancels it.
            self._nursery.cancel_scope.cancel()  # type: ignore[union-attr]
            await trio.lowlevel.checkpoint()  # raises Cancelled
            raise
        except Exception as error:
            log.error(
                "proxy request failed",
                exc_info=error,
                extra={"fields": {"request_id": request_id, "path": scope["path"]}},
            )
            if record is not None:
                record.error = InternalError.type
            return render(
                dialect,
                InternalError("internal error; see the gateway log"),
                request_id,
            )
        headers = result.headers
        if not isinstance(result.body, bytes):
            headers.append(("cache-control", "no-cache"))
            headers.append(("x-accel-buffering", "no"))
        return result.status, headers, result.body

    # --- the request's body -------------------------------------------------------------------

    async def read_body(self) -> bytes:
        """The whole body (at most ``max_body`` bytes); then the watch for the client's
        leaving starts. :class:`PayloadTooLarge` beyond the limit."""
        limit = self.app.max_body
        if self.declared is not None and int(self.declared) > limit:
            # Refused before it is read: the connection guard then closes.
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        receive = self.receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientLeft
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.body_done = True
        self._nursery.start_soon(self._watch)  # type: ignore[union-attr]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _watch(self) -> None:
        """Cancel the request when the client leaves (its body was read whole)."""
        receive = self.receive
        while (await receive())["type"] != "http.disconnect":
            pass
        self._nursery.cancel_scope.cancel()  # type: ignore[union-attr]

    async def _discard(self) -> None:
        """Read the rest of a body the answer did not need (the connection guard holds
        an early answer's end until it is read); the client's leaving ends the request."""
        receive = self.receive
        while True:
            message = await receive()
            if message["type"] != "http.request":
                self._nursery.cancel_scope.cancel()  # type: ignore[union-attr]
                return
            if not message.get("more_body", False):
                self.body_done = True
                return

    # --- the answer ---------------------------------------------------------------------------

    async def _send_whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """A whole answer (h11 sends no body for a ``HEAD``)."""
        raw = _raw_headers(headers)
        raw.append((b"content-length", str(len(body)).encode()))
        if not self.body_done:
            self._nursery.start_soon(self._discard)  # type: ignore[union-attr]
        send = self.send
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_stream(
        self, status: int, headers: list[tuple[str, str]], body: StreamBody
    ) -> None:
        """A committed stream: each chunk as it comes; the body discarded if never sent."""
        send = self.send

        async def send_chunk(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        try:
            await send(
                {"type": "http.response.start", "status": status, "headers": _raw_headers(headers)}
            )
            await body.pump(send_chunk)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await body.discard()


#: An answer: status, headers (names as written), and the body, whole or a stream.
Answer = tuple[int, list[tuple[str, str]], "bytes | StreamBody"]


def _raw_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1", "replace"))
        for name, value in headers
    ]


class Resolution:
    """What :func:`prepare` found, as it found it (a :class:`RequestRecord` is one too)."""

    __slots__ = ("endpoint", "gateway", "key", "model", "route", "rule", "stream")

    def __init__(self) -> None:
        self.gateway: GatewayRoute | None = None
        self.key: KeyRoute | None = None
        self.rule: Any = None
        self.endpoint: str | None = None
        self.route: ServiceRoute | None = None
        self.model: str | None = None
        self.stream: bool | None = None


async def prepare(
    runtime: Runtime,
    method: str,
    path: str,
    wanted: dict[str, str],
    candidates: list[tuple[str, str]],
    request_id: str,
    read_body: Callable[[], Awaitable[bytes]],
    found: Any,
    *,
    inject: bool = True,
    admit: bool = True,
) -> ClientRequest | None:
    """Every check the proxy makes before the dispatcher, in the order it makes them.

    Raises the :class:`GatewayError` the client gets; fills ``found`` (gateway, key,
    rule, endpoint, service route, model, stream) as it resolves them. Returns the
    request for the dispatcher, or ``None`` for a model list (the gateway answers it).
    The proxy and ``explain`` (the admin API) both use it, so that what ``explain``
    says is what the proxy does; ``inject=False`` (explain) draws no fault of the
    gateway's fault injection; ``admit=False`` (explain) reserves nothing of the
    key's limits, only says whether they would refuse the request now.
    """
    allowed = allowed_method(path)
    if allowed is not None and method != allowed:
        raise MethodNotAllowed(
            f"{method} is not allowed on {path}; use {allowed}",
            headers={"Allow": allowed},
        )
    table = runtime.table
    presented = _presented_key(wanted)
    key = _key(table, presented)
    if presented and key is None:
        raise AuthenticationFailed(NO_KEY)  # a wrong key is refused, public rule or not
    gateway = (
        table.gateways.get(key.gateway_id) if key is not None else _named_gateway(table, wanted)
    )
    rule = match_rule(gateway.rules, method, path) if gateway else None
    if gateway is None or (key is None and (rule is None or not rule.public)):
        # Without a key, nothing is told apart: no gateway, no route, not public.
        raise AuthenticationFailed(NO_KEY)
    found.gateway, found.key = gateway, key
    if not gateway.active:
        raise PermissionDenied(f"gateway {gateway.gateway.name!r} is inactive")
    if rule is None:
        raise NotFound(f"no route for {method} {path} in gateway {gateway.gateway.name!r}")
    found.rule = rule
    endpoint = found.endpoint = rule.endpoint_path(path)
    known = ENDPOINTS.get(endpoint)
    if known is None and not endpoint.startswith(MODEL_PREFIX):
        stripped = (
            f" ({endpoint} once rule {rule.name!r} strips its path)" if rule.strip_path else ""
        )
        raise NotFound(
            f"{path}{stripped} is not an API endpoint: use /v1/chat/completions, "
            "/v1/responses, /v1/embeddings, /v1/messages, /v1/messages/count_tokens or "
            "/v1/models"
        )
    found.route = _service_route(table, rule.service_id)  # before reading a body for nothing
    header = wanted.get(FAULT_HEADER)
    named = (
        named_fault(gateway.injection, header, gateway.gateway.name) if header is not None else None
    )
    if known is None or known.api is None:
        return None
    encoding = wanted.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"compressed request bodies are not accepted (Content-Encoding: {encoding[:40]})"
        )

    raw = await read_body()
    body = _parse(raw)
    model = body.get("model")
    if model is not None and (
        not isinstance(model, str)
        or len(model) > MAX_MODEL_NAME
        or not (model.isascii() and model.isprintable())
    ):
        raise ClientError(
            f"'model' must be a string of at most {MAX_MODEL_NAME} printable ASCII characters"
        )
    found.model = model or None
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise ClientError("'stream' must be true or false")
    streams = stream is True and known.streams
    found.stream = streams
    # Reading the body took time: follow the configuration as it is now.
    route = found.route = _service_route(runtime.table, rule.service_id)
    faults = None
    if inject and (named is not None or gateway.injection is not None):
        faults = request_faults(
            gateway.injection,
            named,
            path=endpoint,
            key_id=key.id if key is not None else None,
            key_name=key.name if key is not None else None,
            stream=streams,
            targets=[t.id for t in route.dispatcher.upstream.targets],
        )
    # The key's limits, last: nothing after the admission may fail (the ticket would
    # stay open), and a request refused for another reason takes nothing of them.
    models = charge = None
    if key is not None:
        limiter = runtime.limiter
        policy = limiter.policies.get(key.id)
        if policy is not None:
            models = policy.models
            if models is not None and model and model not in models:
                raise model_not_allowed(model, openai=known.format is ApiFormat.OPENAI)
            guess = None
            if policy.counts_tokens and key.id in limiter.keys:
                api = known.api
                guess = (
                    None
                    if api is Api.COUNT_TOKENS  # counting tokens costs none
                    else estimate(
                        body,
                        0
                        if api is Api.EMBEDDINGS  # no output
                        else route.dispatcher.upstream.default_max_tokens,
                    )
                )
            if admit:
                charge = limiter.charge(
                    await limiter.admit(key.id, key.gateway_id, model or None, guess)
                )
            elif (refusal := limiter.check(key.id, model or None, guess)) is not None:
                raise refusal
    return ClientRequest(
        known.format,  # type: ignore[arg-type]
        body,
        raw,
        model or None,
        streams,
        [(n, v) for n, v in candidates if n in known.forwarded],
        request_id,
        known.api,
        faults,
        models,
        charge,
    )


def _service_route(table: RouteTable, service_id: str) -> ServiceRoute:
    route = table.services.get(service_id)
    if route is not None:
        return route
    why = table.unservable.get(service_id)
    if why is not None:
        raise ServiceUnavailable(why, headers={"Retry-After": "30"})
    raise NotFound("the rule's service no longer exists")


#: The request headers the proxy reads itself (as ASGI gives them: lower-case).
WANTED = frozenset(
    {
        "x-api-key",
        "authorization",
        "x-request-id",
        "x-gateway-id",
        "host",
        "anthropic-version",
        "content-encoding",
        "content-length",
        FAULT_HEADER,
    }
)


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """One pass over the raw request headers: those the proxy reads, those it may forward.

    Straight from the ASGI scope, once: the proxy reads half a dozen of them.
    """
    wanted: dict[str, str] = {}
    candidates: list[tuple[str, str]] = []
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        if name in WANTED:
            wanted[name] = raw_value.decode("latin-1")
        if name in _FORWARDABLE:
            candidates.append((name, raw_value.decode("latin-1")))
    return wanted, candidates


def _presented_key(wanted: dict[str, str]) -> str | None:
    key = wanted.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = wanted.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _named_gateway(table: RouteTable, wanted: dict[str, str]) -> GatewayRoute | None:
    """For public rules: the gateway named by ``X-Gateway-Id`` or the Host's subdomain."""
    named = wanted.get("x-gateway-id")
    if named:
        return table.gateways.get(named)
    host = wanted.get("host", "").split(":", 1)[0]
    subdomain = host.split(".", 1)[0] if host.count(".") >= 1 else None
    gateway_id = table.subdomains.get(subdomain) if subdomain else None
    return table.gateways.get(gateway_id) if gateway_id else None


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ClientError("the request body is empty: send a JSON object")
    try:
        body = jsonio.loads(raw)
    except ValueError as exc:
        raise ClientError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ClientError("the request body must be a JSON object")
    return body


def _request_id(wanted: dict[str, str]) -> str:
    given = wanted.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


#: Request ids: a random prefix per process and a counter, unique without a syscall.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)
#: Hashes of keys that were valid when first seen: each key is hashed once, not per
#: request. Only known keys are kept (never a guess), and at most KEY_CACHE of them.
_key_hashes: dict[str, str] = {}
KEY_CACHE = 4096


def _key(table: RouteTable, presented: str | None) -> KeyRoute | None:
    """The usable key the client presented, if any (revocation and expiry apply at once)."""
    if not presented:
        return None
    digest = _key_hashes.get(presented)
    if digest is None:
        digest = hash_api_key(presented)
        if digest in table.keys:
            if len(_key_hashes) >= KEY_CACHE:
                _key_hashes.clear()
            _key_hashes[presented] = digest
    return table.key(digest, time.time())


def _dialect(wanted: dict[str, str]) -> ApiFormat:
    """The caller's dialect when the path does not say: Anthropic SDKs send ``anthropic-version``."""
    return ApiFormat.ANTHROPIC if "anthropic-version" in wanted else ApiFormat.OPENAI


def render(fmt: ApiFormat, error: GatewayError, request_id: str) -> Answer:
    """``error`` as the client's dialect answers it, with the request's id."""
    headers = [("content-type", JSON), ("x-request-id", request_id), *error.headers.items()]
    return error.status, headers, error_body(fmt, error.status, error.type, error.message)


def _json(body: Any, request_id: str) -> Answer:
    return 200, [("content-type", JSON), ("x-request-id", request_id)], jsonio.dumpb(body)


def _models(
    table: RouteTable,
    gateway: GatewayRoute,
    keyed: bool,
    endpoint: str,
    dialect: ApiFormat,
    request_id: str,
    scope: Scope,
) -> Answer:
    """``GET <base>/models`` and ``<base>/models/{id}``: the models the caller reaches
    from that base through its gateway's rules (:mod:`trio_gateway.core.listing`),
    in the caller's dialect. Nothing is asked of a provider."""
    path = scope["path"]
    base = path[: len(path) - len(endpoint)] + "/v1"
    lists = gateway.models.get(base)
    listed = ModelList() if lists is None else lists.keyed if keyed else lists.public

    def ejected(upstream_id: str, index: int) -> bool:
        dispatcher = table.dispatchers.get(upstream_id)
        if dispatcher is None or index >= len(dispatcher.actors):
            return False
        return dispatcher.actors[index].health.state in EJECTED

    if endpoint != MODELS_ENDPOINT:
        model_id = endpoint[len(MODEL_PREFIX) :]
        found = listed.get(model_id, ejected)
        if found is None:
            raise NotFound(
                f"model {model_id!r} is not served here (GET {base}/models lists what is)"
            )
        return _json(
            found.anthropic() if dialect is ApiFormat.ANTHROPIC else found.openai(), request_id
        )
    models = listed.visible(ejected)
    if dialect is ApiFormat.ANTHROPIC:
        return _json(_anthropic_page(models, scope), request_id)
    return _json({"object": "list", "data": [m.openai() for m in models]}, request_id)


def _anthropic_page(models: Sequence[ListedModel], scope: Scope) -> dict[str, Any]:
    """One page of Anthropic's model list, as its ``limit``, ``after_id`` and
    ``before_id`` query parameters ask (the anthropic SDK's pager follows ``last_id``)."""
    args = {
        name: values[0]
        for name, values in parse_qs(
            scope["query_string"].decode("latin-1"), keep_blank_values=True
        ).items()
    }
    raw_limit = args.get("limit")
    limit = PAGE_DEFAULT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= PAGE_MAX:
            raise ClientError(f"limit: must be an integer from 1 to {PAGE_MAX}")
    found, has_more = page(models, limit, args.get("after_id"), args.get("before_id"))
    data = [m.anthropic() for m in found]
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
