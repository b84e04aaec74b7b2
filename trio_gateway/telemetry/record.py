"""One client request as telemetry sees it: filled along the way, finished once.

The proxy front end starts a :class:`RequestRecord` when a request arrives and
fills in what it resolves (gateway, key, rule, service); the dispatcher adds the
attempt trail, the answering attempt and the provider's usage; whoever sees the
request end calls :meth:`RequestRecord.finish` (the proxy for a whole answer or an
error, the stream's body when the last byte of a stream is out). A second
``finish`` does nothing.

Finishing only notes the end and hands the record to the :class:`~trio_gateway.telemetry.Telemetry`,
which publishes finished records in batches (:meth:`RequestRecord.publish`: the
metrics, the access log line with the request's own end time, the trace): at most
:data:`~trio_gateway.telemetry.BATCH` records or :data:`~trio_gateway.telemetry.FLUSH_S`
seconds after a request ends, and before every scrape of ``/metrics``. Done one by
one, each request would run the metrics' and the logging's code cold; in a batch it
runs warm, at about a third of the CPU (docs/benchmarks.md).

Nothing here is formatted before :meth:`publish`, and the access log's fields are
built only when its logger is enabled.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from trio_gateway.telemetry.metrics import NONE

if TYPE_CHECKING:
    from trio_gateway.core.failover import AttemptRecord
    from trio_gateway.providers.usage import Usage
    from trio_gateway.telemetry import Telemetry

#: The access log: one line per proxied request, at INFO (``--access-log off``: off).
access_log = logging.getLogger("trio_gateway.access")

_EMPTY: tuple[Any, ...] = ()


class RequestRecord:
    """See the module docstring. Attributes are plain: the request path writes them."""

    __slots__ = (
        "_telemetry",
        "answered",
        "bytes",
        "client",
        "client_format",
        "cost",
        "done",
        "ended",
        "ended_ns",
        "endpoint",
        "error",
        "first_byte",
        "gateway",
        "key",
        "malformed",
        "method",
        "model",
        "path",
        "refused_by",
        "request_id",
        "route",
        "rule",
        "started",
        "started_ns",
        "status",
        "stream",
        "stream_end",
        "traceparent",
        "trail",
        "usage",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        request_id: str,
        method: str,
        path: str,
        client: str | None,
        client_format: str,
    ) -> None:
        self._telemetry = telemetry
        self.started = trio.current_time()
        self.started_ns = time.time_ns()
        self.request_id = request_id
        self.method = method
        self.path = path
        self.client = client
        self.client_format = client_format
        #: Resolved by the proxy as it goes (``None``: not reached).
        self.gateway: Any = None
        self.key: Any = None
        self.rule: Any = None
        self.endpoint: str | None = None
        self.route: Any = None
        #: From the body: the model asked for, and whether it streams (``None``: not read).
        self.model: str | None = None
        self.stream: bool | None = None
        #: Set by the dispatcher: every attempt, the one that answered, its usage.
        self.trail: list[AttemptRecord] | tuple[()] = _EMPTY
        self.answered: AttemptRecord | None = None
        self.usage: Usage | None = None
        self.malformed = 0
        #: ``trio.current_time()`` when the answer was ready to go out.
        self.first_byte: float | None = None
        self.status = 0
        self.bytes = 0
        #: A stream's end: ``complete``, an outcome word, ``client_left`` or ``shutdown``.
        self.stream_end: str | None = None
        #: The error type of a request that was refused or failed (never a message).
        self.error: str | None = None
        #: What the request cost its key (its gateway's prices), once settled; ``None``:
        #: no key, or not settled (docs/keys.md).
        self.cost: float | None = None
        #: The key's limit that refused the request (``requests``, ``tokens``,
        #: ``budget``, ``model``), if one did.
        self.refused_by: str | None = None
        self.traceparent: str | None = None
        self.done = False
        self.ended = 0.0
        self.ended_ns = 0

    # --- the dispatcher's side ---------------------------------------------------------------

    def answer(self, attempt: AttemptRecord, usage: Usage | None, status: int) -> None:
        """The answer (a whole one, or a stream's start) is ready, from ``attempt``."""
        self.answered = attempt
        self.usage = usage
        self.status = status
        self.first_byte = trio.current_time()

    # --- the end -------------------------------------------------------------------------------

    def finish(self, status: int | None = None, sent: int | None = None) -> None:
        """The request is over: count it, log it, trace it (once)."""
        if self.done:
            return
        self.done = True
        if status is not None:
            self.status = status
        if sent is not None:
            self.bytes = sent
        self.ended = trio.current_time()
        self.ended_ns = time.time_ns()
        self._telemetry.finished(self)

    def publish(self) -> None:
        """Count it, log it, trace it (the telemetry's batch, after :meth:`finish`)."""
        ended = self.ended
        duration = ended - self.started
        telemetry = self._telemetry
        metrics = telemetry.metrics
        if metrics is not None:
            route = self.route
            upstream = route.dispatcher.metrics if route is not None else None
            if upstream is None:
                gateway = self.gateway.gateway.name if self.gateway is not None else NONE
                upstream = metrics.unrouted(gateway)
            metrics.observe(self, upstream, duration)
        if telemetry.access and access_log.isEnabledFor(logging.INFO):
            line = access_log.makeRecord(
                access_log.name,
                logging.INFO,
                "(access)",
                0,
                "request",
                (),
                None,
                extra={"fields": self.fields(duration)},
            )
            line.created = self.ended_ns / 1e9  # when the request ended, not the batch
            line.msecs = (self.ended_ns // 1_000_000) % 1000
            access_log.handle(line)
        if telemetry.tracing is not None:
            telemetry.tracing.export(self, ended)

    def fields(self, duration: float) -> dict[str, Any]:
        """The access log line's fields (never a secret, never a body)."""
        gateway, key, rule, route = self.gateway, self.key, self.rule, self.route
        answered = self.answered
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "gateway": gateway.gateway.name if gateway is not None else None,
            "key": key.name if key is not None else None,
            "rule": rule.name if rule is not None else None,
            "upstream": route.dispatcher.upstream.name if route is not None else None,
            "client_format": self.client_format,
            "stream": self.stream,
            "model": self.model,
            "model_sent": answered.model
            if answered is not None
            else (self.trail[-1].model if self.trail else None),
            "target": answered.target_id if answered is not None else None,
            "provider": answered.provider if answered is not None else None,
            "status": self.status,
            "bytes": self.bytes,
            "duration_ms": round(duration * 1000, 1),
            "ttfb_ms": round((self.first_byte - self.started) * 1000, 1)
            if self.first_byte is not None
            else None,
            "input_tokens": self.usage.input_tokens if self.usage is not None else None,
            "output_tokens": self.usage.output_tokens if self.usage is not None else None,
            "cost": round(self.cost, 9) if self.cost is not None else None,
            "attempts": [
                {
                    "target": a.target_id,
                    "provider": a.provider,
                    "model": a.model,
                    "outcome": a.outcome,
                    "ms": round(a.ms),
                }
                if a.fault is None
                else {
                    "target": a.target_id,
                    "provider": a.provider,
                    "model": a.model,
                    "outcome": a.outcome,
                    "ms": round(a.ms),
                    "fault": a.fault,  # injected by the gateway's fault injection
                }
                for a in self.trail
            ],
        }
        if self.stream_end is not None:
            fields["stream_end"] = self.stream_end
        if self.malformed:
            fields["malformed_events"] = self.malformed
        if self.error is not None:
            fields["error"] = self.error
        if self.refused_by is not None:
            fields["refused_by"] = self.refused_by
        if self.usage is not None and self.usage.cached_tokens:
            fields["cached_tokens"] = self.usage.cached_tokens
        return fields
