"""Small HTTP helpers shared by the admin and proxy front ends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from quart import Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from trio_gateway import jsonio
from trio_gateway.errors import (
    ClientError,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ValidationFailed,
)

JSON = "application/json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as JSON. Never fails on what :func:`read_json` accepted (lone surrogates...)."""
    return Response(jsonio.dumpb(body), status=status, content_type=JSON, headers=headers)


async def read_json(limit: int) -> Any:
    """The request body as JSON, or :class:`PayloadTooLarge` / :class:`ValidationFailed`."""
    try:
        raw = await request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes") from exc
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    if not raw.strip():
        raise ValidationFailed.single("$", "request body is empty; send a JSON object")
    try:
        return jsonio.loads(raw)
    except jsonio.JSONError as exc:
        raise ValidationFailed.single("$", f"invalid JSON: {exc}") from exc


def from_http_exception(exc: HTTPException) -> GatewayError:
    """Werkzeug's routing errors as our own, so they render like every other error."""
    match exc.code:
        case 404:
            return NotFound(f"no route for {request.method} {request.path}")
        case 405:
            return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        case 413:
            return PayloadTooLarge("request body is too large")
    error = ClientError(exc.description or exc.name)
    error.status = exc.code or 400  # type: ignore[misc]
    return error
