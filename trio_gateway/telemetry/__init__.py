"""What the gateway tells operators: metrics, the access log, traces (docs/operations.md).

A :class:`Telemetry` belongs to one running gateway (:func:`~trio_gateway.serve.serve`)
and holds what is on: the Prometheus :class:`~.metrics.Metrics` (``--metrics``), the
access log (``--access-log``) and OpenTelemetry tracing (the ``OTEL_*`` variables,
:mod:`.tracing`). Each proxied request gets a :class:`~.record.RequestRecord` from
:meth:`Telemetry.begin`, or ``None`` when all three are off: then the request path
does no telemetry work at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from trio_gateway import logs
from trio_gateway.telemetry.metrics import NONE, Metrics
from trio_gateway.telemetry.record import RequestRecord, access_log
from trio_gateway.telemetry.tracing import Tracing

__all__ = ["NONE", "Metrics", "RequestRecord", "Telemetry", "Tracing", "access_log"]

#: Finished requests published at once (see :mod:`.record`).
BATCH = 64
#: The longest a finished request waits to be published.
FLUSH_S = 0.2


class Telemetry:
    """See the module docstring."""

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        access: bool = True,
        tracing: Tracing | None = None,
    ) -> None:
        self.metrics = metrics
        self.access = access
        self.tracing = tracing
        #: Finished requests not yet published.
        self.pending: list[RequestRecord] = []
        self._wake = trio.Event()
        if access and access_log.level == logging.NOTSET:
            # The access log is on or off by its own setting, not by --log-level.
            access_log.setLevel(logging.INFO)

    @property
    def enabled(self) -> bool:
        return self.metrics is not None or self.access or self.tracing is not None

    def begin(
        self, request_id: str, method: str, path: str, scope: Mapping[str, Any], client_format: str
    ) -> RequestRecord | None:
        """A record for one proxied request, or ``None`` when nothing is observed."""
        if not self.enabled:
            return None
        client = scope.get("client")
        return RequestRecord(
            self, request_id, method, path, client[0] if client else None, client_format
        )

    def finished(self, record: RequestRecord) -> None:
        """``record`` is over: publish it with the next batch."""
        pending = self.pending
        pending.append(record)
        if len(pending) >= BATCH:
            self.flush()
        elif len(pending) == 1:
            self._wake.set()

    def flush(self) -> None:
        """Publish every finished request now (before a scrape, at the end, per batch)."""
        while self.pending:
            records, self.pending = self.pending, []
            with logs.batch():
                for record in records:
                    try:
                        record.publish()
                    except Exception:  # a bug of ours must not lose the rest, nor a request
                        logging.getLogger("trio_gateway.telemetry").exception(
                            "publishing a request's telemetry failed"
                        )

    async def run(self) -> None:
        """Publish finished requests at most :data:`FLUSH_S` after they end; until cancelled
        (then the rest)."""
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep(FLUSH_S)
                self.flush()
        finally:
            self.flush()

    def configured(self, gateways: Mapping[str, str], dispatchers: Iterable[Any]) -> None:
        """The runtime applied a new configuration: bind its entities' metric children."""
        if self.metrics is not None:
            self.metrics.configured(gateways, dispatchers)

    def refresh(self, dispatchers: Iterable[Any]) -> None:
        if self.metrics is not None:
            self.metrics.refresh(dispatchers)
