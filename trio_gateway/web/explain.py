"""``POST /api/v1/gateways/{gateway_id}/explain``: what the proxy would do with a request.

The body describes a client request as it would reach the proxy::

    {"method": "POST", "path": "/v1/chat/completions",
     "headers": {"X-Api-Key": "...", "anthropic-version": "..."},
     "body": {"model": "gpt-4o-mini", "messages": [...]}}

(``method`` defaults to ``POST``; ``body`` is a JSON value sent as its JSON text, or a
string sent as it is, to explain a body that is not JSON). The answer says, without
calling any provider: the key, rule, service and upstream the proxy would resolve,
the model it would send, every target with ``eligible`` and the reason (retired,
health, model, tier, capacity, translation), and ``next_target``: the target the
next real request would get when nothing changes in between (balancers are peeked at,
not moved). A request the proxy would refuse is explained with the error it would
get (``refused``: status, type, message and the body in the client's dialect),
a refusal by the key's own limits included (a model it may not use, a rate limit or
budget with no room now: checked without reserving or counting anything); a key
with limits also gets ``rate_limits``: the headers its responses would carry now.

It runs the proxy's own checks (:func:`trio_gateway.web.proxy.prepare`) and the
dispatcher's own choice (:meth:`~trio_gateway.runtime.dispatcher.Dispatcher.explain`),
so that the explanation is what the proxy does. Health and balancer positions are
this process's: with ``--workers N`` each worker has its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from trio_gateway import jsonio
from trio_gateway.errors import GatewayError, PayloadTooLarge, Problem, ValidationFailed
from trio_gateway.providers.formats import ApiFormat, error_body
from trio_gateway.runtime.dispatcher import Dispatcher
from trio_gateway.runtime.supervisor import Runtime
from trio_gateway.runtime.target import wall_time
from trio_gateway.web import proxy

MAX_HEADERS = 100


def _parse(data: Any) -> tuple[str, str, dict[str, str], list[tuple[str, str]], bytes]:
    """The request described by ``data``: method, path, wanted and forwardable headers, body."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ValidationFailed.single(
            "$", "must be an object with 'path' (and 'method', 'headers', 'body')"
        )
    for key in sorted(set(data) - {"method", "path", "headers", "body"}):
        problems.append(Problem(key, "unknown field"))
    method = data.get("method", "POST")
    if not isinstance(method, str) or not method.isalpha() or len(method) > 16:
        problems.append(Problem("method", "must be an HTTP method such as POST"))
    path = data.get("path")
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 2048:
        problems.append(Problem("path", "is required: the request's path, such as /v1/messages"))
    headers = data.get("headers")
    headers = {} if headers is None else headers
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        problems.append(Problem("headers", f"must be an object of at most {MAX_HEADERS} headers"))
        headers = {}
    for name, value in headers.items():
        if not isinstance(value, str):
            problems.append(Problem(f"headers[{name!r}]", "must be a string"))
    if problems:
        raise ValidationFailed.of(problems)
    wanted: dict[str, str] = {}
    candidates: list[tuple[str, str]] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in proxy.WANTED:
            wanted[lower] = value
        if lower in proxy._FORWARDABLE:
            candidates.append((lower, value))
    body = data.get("body")
    if body is None:
        raw = b""
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = jsonio.dumpb(body)
    return method.upper(), path, wanted, candidates, raw


async def explain(runtime: Runtime, max_body: int, gateway_id: str, data: Any) -> dict[str, Any]:
    """The explanation of the request ``data`` describes, in gateway ``gateway_id``."""
    method, path, wanted, candidates, raw = _parse(data)
    request_id = proxy._request_id(wanted)
    fmt = proxy.client_format(path) or (
        ApiFormat.ANTHROPIC if "anthropic-version" in wanted else ApiFormat.OPENAI
    )
    found = proxy.Resolution()

    async def read_body() -> bytes:
        if len(raw) > max_body:
            raise PayloadTooLarge(f"request body is larger than {max_body} bytes")
        return raw

    answer: dict[str, Any] = {
        "request": {
            "method": method,
            "path": path,
            "client_format": fmt.value,
            "request_id": request_id,
        }
    }
    try:
        client_request = await proxy.prepare(
            runtime,
            method,
            path,
            wanted,
            candidates,
            request_id,
            read_body,
            found,
            inject=False,
            admit=False,
        )
        _same_gateway(found, gateway_id)
        if client_request is not None:
            route = found.route
            dispatcher = route.dispatcher
            explanation = dispatcher.explain(client_request, route.limits, trio.current_time())
    except GatewayError as error:
        _same_gateway(found, gateway_id)
        answer.update(_resolved(found))
        limited = _rate_limits(runtime, found, fmt)
        answer["refused"] = _refusal(
            fmt, error.status, error.type, error.message, {**error.headers, **limited}
        )
        if limited:
            answer["rate_limits"] = limited
        return answer
    answer.update(_resolved(found))
    if limited := _rate_limits(runtime, found, fmt):
        answer["rate_limits"] = limited
    answer["request"].update(model=found.model, stream=found.stream)
    if client_request is None:
        answer["answered_by"] = "the gateway (the service's model list)"
        return answer
    answer.update(_explained(dispatcher, explanation, fmt))
    return answer


def _rate_limits(runtime: Runtime, found: proxy.Resolution, fmt: ApiFormat) -> dict[str, str]:
    """The rate-limit headers the proxy would add to the answer (a limited key's)."""
    key = found.key
    if key is None:
        return {}
    return dict(runtime.limiter.headers(key.id, fmt is ApiFormat.OPENAI))


def _same_gateway(found: proxy.Resolution, gateway_id: str) -> None:
    gateway = found.gateway
    if gateway is not None and gateway.gateway.id != gateway_id:
        raise ValidationFailed.single(
            "headers",
            f"this request belongs to gateway {gateway.gateway.name!r} ({gateway.gateway.id}), "
            "not this one: explain it there",
        )


def _resolved(found: proxy.Resolution) -> dict[str, Any]:
    gateway, key, rule, route = found.gateway, found.key, found.rule, found.route
    upstream = route.dispatcher.upstream if route is not None else None
    return {
        "gateway": {"id": gateway.gateway.id, "name": gateway.gateway.name} if gateway else None,
        "key": {"id": key.id, "name": key.name} if key else None,
        "rule": {"id": rule.id, "name": rule.name, "path": rule.prefix} if rule else None,
        "service": {"id": route.service.id, "name": route.service.name} if route else None,
        "upstream": {
            "id": upstream.id,
            "name": upstream.name,
            "algorithm": upstream.algorithm.value,
        }
        if upstream
        else None,
    }


def _refusal(
    fmt: ApiFormat, status: int, type: str, message: str, headers: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "status": status,
        "type": type,
        "message": message,
        "headers": dict(headers),
        "body": jsonio.loads(error_body(fmt, status, type, message)),
    }


def _explained(dispatcher: Dispatcher, explanation: Any, fmt: ApiFormat) -> dict[str, Any]:
    choice = explanation.choice
    targets = []
    for actor, eligible, reason in explanation.verdicts:
        target = actor.target
        stats = actor.statistics()
        health = stats.health
        targets.append(
            {
                "id": target.id,
                "provider": target.provider.value,
                "priority": target.priority,
                "weight": target.weight,
                "models": list(target.models),
                "default_model": target.default_model,
                "eligible": eligible,
                "reason": reason,
                "state": health.state.value,
                "until": _iso(health.until) if health.until is not None else None,
                "in_flight": stats.in_flight,
                "queued": stats.queued,
                "max_in_flight": actor.max_in_flight,
                "latency_ms": round(stats.latency_s * 1000, 1)
                if stats.latency_s is not None
                else None,
            }
        )
    result: dict[str, Any] = {
        "next_target": None,
        "model_sent": None,
        "model_fallback": False,
        "last_resort": False,
        "skipped": [
            {"target": actor.target.id, "outcome": error.word, "reason": error.message}
            for actor, error in explanation.skipped
        ],
        "targets": targets,
    }
    if choice is not None:
        result.update(
            next_target=dispatcher.actors[choice.index].target.id,
            model_sent=choice.model,
            model_fallback=choice.fallback,
            last_resort=choice.last_resort,
        )
    else:
        conclusion = explanation.conclusion
        error = conclusion.error
        if conclusion.answer is not None:
            result["refused"] = {"status": conclusion.answer.status, "type": error.type}
        else:
            result["refused"] = _refusal(
                fmt,
                error.status,
                error.type,
                conclusion.message or error.message,
                error.headers,
            )
    return result


def _iso(trio_time: float) -> str:
    from trio_gateway.web.admin import _iso as iso

    return iso(wall_time(trio_time))
