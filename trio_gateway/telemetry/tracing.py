"""OpenTelemetry traces: one span per client request, one child span per attempt.

Optional: ``pip install 'trio-gateway[otel]'``, configured by the standard
variables. Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (not
``none``), or when it is unset and ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (OTLP, ``http/protobuf`` unless
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` says ``grpc``, which needs
``opentelemetry-exporter-otlp-proto-grpc``); ``OTEL_SDK_DISABLED=true`` turns it off.
The SDK reads the rest itself: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_BSP_*``, the
exporter's endpoint, headers and timeout. Unconfigured, nothing of OpenTelemetry is
imported and no request does any tracing work.

Spans are written when the request ends (:meth:`Tracing.export`), with the times the
request and each attempt actually had: the request's span covers the whole answer
(a stream to its last byte), each attempt's span its own time, the answering one's
to the end of the answer. A client's ``traceparent`` (W3C Trace Context) makes the
request's span its child. Attributes follow OpenTelemetry's GenAI semantic
conventions (``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``), with ``error.type`` and the gateway's own
``trio_gateway.*`` (the attempt's outcome, the target, the request id).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_gateway.telemetry.record import RequestRecord

log = logging.getLogger("trio_gateway.tracing")

INSTALL_HINT = "pip install 'trio-gateway[otel]'"
#: ``gen_ai.provider.name`` of each provider kind (the conventions' well-known values).
GEN_AI_PROVIDERS = {
    "openai": "openai",
    "openai-compatible": "openai",
    "azure-openai": "azure.ai.openai",
    "anthropic": "anthropic",
}
_OTLP = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


class TracingUnavailable(Exception):
    """Tracing is configured but cannot start (the extra is missing, an unknown exporter)."""


def configured(environ: Mapping[str, str]) -> list[str]:
    """The exporter names the environment asks for (empty: tracing is off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is not None:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        return [n for n in wanted if n != "none"]
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        return ["otlp"]
    return []


class Tracing:
    """Writes the spans of finished requests to a tracer provider's exporters."""

    def __init__(self, provider: Any, *, owned: bool = False) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from trio_gateway import __version__

        self.provider = provider
        #: Made from the environment by this object (``shutdown`` flushes and stops it).
        self.owned = owned
        self._tracer = provider.get_tracer("trio_gateway", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tracing | None:
        """Tracing as the ``OTEL_*`` variables configure it, or ``None`` when they do not.

        Raises :class:`TracingUnavailable` when they ask for it and it cannot be had.
        """
        environ = os.environ if environ is None else environ
        names = configured(environ)
        if not names:
            return None
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise TracingUnavailable(
                f"OTEL_* variables ask for traces, but OpenTelemetry is not installed: "
                f"{INSTALL_HINT}"
            ) from exc
        named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        provider = TracerProvider(
            resource=Resource.create()
            if named
            else Resource.create({"service.name": "trio-gateway"})
        )
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
        return cls(provider, owned=True)

    def shutdown(self) -> None:
        """Flush and stop the exporters this object made (blocking: run in a thread)."""
        if self.owned:
            self.provider.shutdown()

    # --- one request ---------------------------------------------------------------------------

    def export(self, record: RequestRecord, ended: float) -> None:
        """Write the spans of a finished request (its times are trio times; see the record)."""
        trace = self._trace
        started, base = record.started, record.started_ns

        def wall(at: float) -> int:
            return base + int((at - started) * 1e9)

        end = wall(ended)
        context = None
        if record.traceparent:
            context = self._propagator.extract({"traceparent": record.traceparent})
        answered = record.answered
        usage = record.usage
        attributes: dict[str, Any] = {
            "http.request.method": record.method,
            "url.path": record.path,
            "http.response.status_code": record.status,
            "gen_ai.operation.name": "chat",
            "trio_gateway.request_id": record.request_id,
            "trio_gateway.client_format": record.client_format,
        }
        if record.model:
            attributes["gen_ai.request.model"] = record.model
        if record.stream is not None:
            attributes["trio_gateway.stream"] = record.stream
        if record.gateway is not None:
            attributes["trio_gateway.gateway"] = record.gateway.gateway.name
        if record.route is not None:
            attributes["trio_gateway.upstream"] = record.route.dispatcher.upstream.name
        if answered is not None:
            attributes["gen_ai.provider.name"] = GEN_AI_PROVIDERS.get(
                answered.provider, answered.provider
            )
            attributes["trio_gateway.target"] = answered.target_id
        _usage(attributes, usage)
        if record.error is not None:
            attributes["error.type"] = record.error
        elif record.status >= 500:
            attributes["error.type"] = str(record.status)
        if record.stream_end is not None:
            attributes["trio_gateway.stream_end"] = record.stream_end
        span = self._tracer.start_span(
            f"{record.method} {record.path}",
            context=context,
            kind=self._server,
            attributes=attributes,
            start_time=base,
        )
        if "error.type" in attributes:
            span.set_status(self._error)
        parent = trace.set_span_in_context(span)
        for attempt in record.trail:
            ok = attempt is answered
            child: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": GEN_AI_PROVIDERS.get(attempt.provider, attempt.provider),
                "gen_ai.request.model": attempt.model,
                "trio_gateway.provider": attempt.provider,
                "trio_gateway.target": attempt.target_id,
                "trio_gateway.attempt.outcome": attempt.outcome,
                "trio_gateway.attempt.ms": round(attempt.ms, 1),
                "trio_gateway.attempt.last_resort": attempt.last_resort,
            }
            if ok:
                _usage(child, usage)
            else:
                child["error.type"] = attempt.outcome
            attempt_span = self._tracer.start_span(
                f"chat {attempt.model}",
                context=parent,
                kind=self._client,
                attributes=child,
                start_time=wall(attempt.started),
            )
            if not ok:
                attempt_span.set_status(self._error)
            attempt_span.end(end if ok else wall(attempt.started + attempt.ms / 1000))
        span.end(end)


def _usage(attributes: dict[str, Any], usage: Any) -> None:
    if usage is None:
        return
    if usage.model is not None:
        attributes["gen_ai.response.model"] = usage.model
    if usage.input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
    if usage.output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    from importlib.metadata import entry_points

    if name == "otlp":
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        if protocol not in _OTLP:
            raise TracingUnavailable(
                f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: use http/protobuf or grpc"
            )
        name = _OTLP[protocol]
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        hint = (
            "pip install opentelemetry-exporter-otlp-proto-grpc"
            if name == "otlp_proto_grpc"
            else INSTALL_HINT
        )
        raise TracingUnavailable(f"no OpenTelemetry trace exporter named {name!r} ({hint})")
    return next(iter(found)).load()()
