"""Prometheus metrics: the families, their label children bound ahead, the scrape.

Theory of operation
-------------------
One :class:`Metrics` per process (per :func:`~trio_gateway.serve.serve` in tests),
with its own registry. Label values are bounded: names of configured gateways and
upstreams, target ids, key names, outcome words, HTTP statuses, health states and
causes, and :data:`NONE` where a value is not known on a failure path (a 401 has
no gateway, a 404 no upstream). A model name is a label value when a target of the
gateway lists it (or has it as ``default_model``), or, for targets that take any
model, among the first :data:`MAX_MODELS` other names seen per gateway; the rest
count as :data:`OTHER_MODEL`.

The request path does no label lookup by name: when the configuration changes
(:meth:`Metrics.configured`) each dispatcher gets its :class:`UpstreamMetrics` and
each target actor its :class:`TargetMetrics`, which hold the children they use
(created on first use for label values only known then: a status, an outcome).
A request's counters move once, when it ends (:meth:`Metrics.observe`): a handful of
increments and two histogram observations.

Gauges (``target_state``, ``target_in_flight``, ``target_queued``) are not kept per
request: :meth:`Metrics.refresh` sets them from the actors' statistics, at each
scrape in the process that serves ``/metrics``, and every second in worker
processes.

Several workers (``--workers N``) use prometheus-client's multiprocess mode: each
process writes its values to files in one directory (``PROMETHEUS_MULTIPROC_DIR``,
set by the main process), and the main process's ``/metrics`` adds them up.
Gauges there carry a ``pid`` label (each worker has its own health state);
``target_in_flight`` and ``target_queued`` are summed over the live workers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from trio_gateway import __version__
from trio_gateway.core.health import EJECTION_CAUSES, State, Transition

if TYPE_CHECKING:
    from trio_gateway.telemetry.record import RequestRecord

#: The label value for what is not known on a failure path.
NONE = "none"
#: The model label of a model the gateway does not list, past :data:`MAX_MODELS`.
OTHER_MODEL = "other"
#: Model names a gateway's targets do not list that get a label value of their own.
MAX_MODELS = 64
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
STATES = tuple(s.value for s in State)
_BOOL = {True: "true", False: "false", None: NONE}


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this process, if it runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess(path: str | None = None) -> str:
    """Make this process (and the workers it starts) write metrics to a shared directory.

    Call in the main process before any metric exists. ``path``: a directory to use
    (its ``*.db`` files, left by an earlier run, are removed: they would add up);
    ``None``: a fresh temporary one, removed by :func:`cleanup_multiprocess`.
    """
    import tempfile

    if path is None:
        path = tempfile.mkdtemp(prefix="trio-gateway-metrics-")
    else:
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink()
    os.environ[MULTIPROC_ENV] = path
    return path


def cleanup_multiprocess(path: str, *, remove: bool) -> None:
    if remove:
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """A worker process is gone: its live gauges no longer count."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


class TargetMetrics:
    """The children of one target of one upstream, bound when the configuration changes."""

    __slots__ = ("_attempts", "_family", "labels", "malformed", "ttfb")

    def __init__(self, family: Metrics, gateway: str, upstream: str, target: str) -> None:
        self._family = family
        self.labels = (gateway, upstream, target)
        self.ttfb = family.ttfb.labels(gateway, upstream, target)
        self.malformed = family.malformed.labels(gateway, upstream, target)
        self._attempts: dict[tuple[str, str], Any] = {}

    def attempt(self, provider: str, outcome: str) -> Any:
        child = self._attempts.get((provider, outcome))
        if child is None:
            child = self._attempts[provider, outcome] = self._family.attempts.labels(
                *self.labels, provider, outcome
            )
        return child

    def transitioned(self, transition: Transition) -> None:
        """Count a health transition (called by the target's actor, once each)."""
        family = self._family
        cause = transition.cause or NONE
        family.transitions.labels(*self.labels, transition.new.value, cause).inc()
        if cause in EJECTION_CAUSES:
            family.ejections.labels(*self.labels, cause).inc()

    def set_state(self, state: str, in_flight: int, queued: int) -> None:
        family, labels = self._family, self.labels
        for name in STATES:
            family.state.labels(*labels, name).set(1 if name == state else 0)
        family.in_flight.labels(*labels).set(in_flight)
        family.queued.labels(*labels).set(queued)


class UpstreamMetrics:
    """The children of one upstream (or of a gateway's requests before any upstream)."""

    __slots__ = ("_family", "_requests", "duration", "gateway", "targets", "upstream")

    def __init__(self, family: Metrics, gateway: str, upstream: str) -> None:
        self._family = family
        self.gateway = gateway
        self.upstream = upstream
        self._requests: dict[tuple[str, str, int], Any] = {}
        self.duration = {
            flag: family.duration.labels(gateway, upstream, _BOOL[flag])
            for flag in (True, False, None)
        }
        self.targets: dict[str, TargetMetrics] = {}

    def requests(self, fmt: str, stream: bool | None, status: int) -> Any:
        key = (fmt, _BOOL[stream], status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self._family.requests.labels(
                self.gateway, self.upstream, fmt, key[1], str(status)
            )
        return child

    def target(self, target_id: str) -> TargetMetrics:
        found = self.targets.get(target_id)
        if found is None:
            found = self.targets[target_id] = TargetMetrics(
                self._family, self.gateway, self.upstream, target_id
            )
        return found


class Metrics:
    """Every metric family of the gateway. See the module docstring."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess and not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus-client picks its value class from the environment when it is
            # first imported; this process learnt it is one of several only later.
            values.ValueClass = values.MultiProcessValue()
        # ``*_created`` series double the count for nothing a dashboard uses.
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if self.multiprocess else self.registry
        if not self.multiprocess:
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
            prometheus_client.GCCollector(registry=registry)

        def counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str], mode: str) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry, multiprocess_mode=mode)

        target = ("gateway", "upstream", "target")
        self.requests = counter(
            "trio_gateway_requests",
            "Client requests answered by the proxy, by the status sent to the client.",
            ("gateway", "upstream", "client_format", "stream", "status"),
        )
        self.attempts = counter(
            "trio_gateway_attempts",
            "Attempts at targets, by outcome (the words of X-Gateway-Attempts).",
            (*target, "provider", "outcome"),
        )
        self.duration = Histogram(
            "trio_gateway_request_duration_seconds",
            "Time from a client request's arrival to the end of its answer (a stream's end).",
            ["gateway", "upstream", "stream"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "trio_gateway_time_to_first_byte_seconds",
            "Time from the start of the attempt that answered to its answer's first byte "
            "(a whole answer's headers and body, a stream's first content).",
            list(target),
            buckets=TTFB_BUCKETS,
            registry=registry,
        )
        self.state = gauge(
            "trio_gateway_target_state",
            "1 for the target's current health state, 0 for the others.",
            (*target, "state"),
            "liveall",
        )
        self.in_flight = gauge(
            "trio_gateway_target_in_flight",
            "Attempts the target's actor holds (running or queued).",
            target,
            "livesum",
        )
        self.queued = gauge(
            "trio_gateway_target_queued",
            "Attempts waiting in the target's queue.",
            target,
            "livesum",
        )
        self.ejections = counter(
            "trio_gateway_ejections",
            "Targets taken out of rotation by their failures, by cause.",
            (*target, "reason"),
        )
        self.transitions = counter(
            "trio_gateway_target_transitions",
            "Health transitions, by new state and cause.",
            (*target, "to", "reason"),
        )
        self.tokens = counter(
            "trio_gateway_tokens",
            "Tokens the providers reported, by API key name and model sent.",
            ("gateway", "key", "model", "direction"),
        )
        self.cost = counter(
            "trio_gateway_cost",
            "What requests cost at their gateway's prices (docs/keys.md), by API key name "
            "and model sent.",
            ("gateway", "key", "model"),
        )
        self.key_refusals = counter(
            "trio_gateway_key_refusals",
            "Requests an API key's own limits refused, by the limit (requests, tokens, "
            "budget, model).",
            ("gateway", "key", "limit"),
        )
        self.malformed = counter(
            "trio_gateway_malformed_events",
            "Provider stream events passed on unread or skipped after a stream's first content.",
            target,
        )
        self.reloads = counter(
            "trio_gateway_config_reloads",
            "Configuration file reloads (SIGHUP), by result.",
            ("result",),
        )
        Gauge(
            "trio_gateway_build_info",
            "The gateway's version.",
            ["version"],
            registry=registry,
            multiprocess_mode="max",
        ).labels(__version__).set(1)
        self._none: dict[str, UpstreamMetrics] = {}
        self._tokens: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._costs: dict[tuple[str, str, str], Any] = {}
        self._refusals: dict[tuple[str, str, str], Any] = {}
        #: Model label values by gateway name: listed by a target, or seen (bounded).
        self._listed: dict[str, frozenset[str]] = {}
        self._seen: dict[str, set[str]] = {}
        self._upstreams: dict[tuple[str, str], UpstreamMetrics] = {}
        if self.multiprocess:
            multiprocess.MultiProcessCollector(self.registry)

    # --- configuration ---------------------------------------------------------------------

    def configured(self, gateways: Mapping[str, str], dispatchers: Iterable[Any]) -> None:
        """Bind every dispatcher and actor of the new configuration to its children.

        ``gateways`` maps gateway ids to names. Children of upstreams and targets that
        are gone are dropped (single-process mode: multiprocess files keep them).
        """
        upstreams: dict[tuple[str, str], UpstreamMetrics] = {}
        current: dict[tuple[str, str], set[str]] = {}
        listed: dict[str, set[str]] = {}
        for dispatcher in dispatchers:
            upstream = dispatcher.upstream
            gateway = gateways.get(upstream.gateway_id, NONE)
            key = (gateway, upstream.name)
            bound = upstreams.get(key) or self._upstreams.get(key)
            if bound is None:
                bound = UpstreamMetrics(self, gateway, upstream.name)
                for fmt in ("openai", "anthropic"):  # the usual series exist from the start
                    for stream in (False, True):
                        bound.requests(fmt, stream, 200)
            upstreams[key] = bound
            dispatcher.metrics = bound
            models = listed.setdefault(gateway, set())
            ids = current.setdefault(key, set())
            for actor in dispatcher.actors:
                target = actor.target
                ids.add(target.id)
                actor.observer = bound.target(target.id)
                actor.observer.attempt(target.provider.value, "200")
                models.update(target.models)
                if target.default_model:
                    models.add(target.default_model)
        for key, bound in upstreams.items():
            for target_id in [t for t in bound.targets if t not in current[key]]:
                self._drop_target(bound.targets.pop(target_id))
        for key, old in self._upstreams.items():
            if key not in upstreams:
                for target in old.targets.values():
                    self._drop_target(target)
                if not self.multiprocess:
                    self.requests.remove_by_labels({"gateway": key[0], "upstream": key[1]})
                    self.duration.remove_by_labels({"gateway": key[0], "upstream": key[1]})
        self._upstreams = upstreams
        self._listed = {g: frozenset(m) for g, m in listed.items()}

    def _drop_target(self, target: TargetMetrics) -> None:
        """A target left the configuration: its series go (its gauges read 0 in multiprocess
        mode, where series cannot be removed)."""
        if self.multiprocess:
            target.set_state("", 0, 0)
        else:
            self._remove_target(target.labels)

    def _remove_target(self, labels: tuple[str, str, str]) -> None:
        match = dict(zip(("gateway", "upstream", "target"), labels, strict=True))
        for family in (
            self.attempts,
            self.ttfb,
            self.state,
            self.in_flight,
            self.queued,
            self.ejections,
            self.transitions,
            self.malformed,
        ):
            family.remove_by_labels(match)

    def refresh(self, dispatchers: Iterable[Any]) -> None:
        """Set the target gauges from the actors' statistics (scrape time, or periodically)."""
        for dispatcher in dispatchers:
            if dispatcher.metrics is None:
                continue
            for actor in dispatcher.actors:
                observer = actor.observer
                if observer is None:
                    continue
                stats = actor.statistics()
                observer.set_state(stats.health.state.value, stats.in_flight, stats.queued)

    # --- requests --------------------------------------------------------------------------

    def unrouted(self, gateway: str) -> UpstreamMetrics:
        """The children of requests that reached no upstream (``upstream="none"``)."""
        found = self._none.get(gateway)
        if found is None:
            found = self._none[gateway] = UpstreamMetrics(self, gateway, NONE)
        return found

    def observe(self, record: RequestRecord, upstream: UpstreamMetrics, duration: float) -> None:
        """A request ended: count it, its attempts, its time and its tokens."""
        upstream.requests(record.client_format, record.stream, record.status).inc()
        upstream.duration[record.stream].observe(duration)
        targets = upstream.targets
        for attempt in record.trail:
            target = targets.get(attempt.target_id) or upstream.target(attempt.target_id)
            target.attempt(attempt.provider, attempt.outcome).inc()
        answered = record.answered
        if answered is not None:
            target = targets.get(answered.target_id) or upstream.target(answered.target_id)
            target.ttfb.observe(answered.ms / 1000)
            if record.malformed:
                target.malformed.inc(record.malformed)
            usage = record.usage
            if usage is not None:
                given, taken = usage.input_tokens, usage.output_tokens
                if given or taken:
                    key = record.key.name if record.key is not None else NONE
                    counters = self._token_counters(upstream.gateway, key, answered.model)
                    if given:
                        counters[0].inc(given)
                    if taken:
                        counters[1].inc(taken)
        cost = record.cost
        if cost:
            model = answered.model if answered is not None else record.model or NONE
            self._cost_counter(upstream.gateway, record.key.name, model).inc(cost)
        elif record.refused_by is not None:
            self._refusal_counter(upstream.gateway, record.key.name, record.refused_by).inc()

    def _cost_counter(self, gateway: str, key: str, model: str) -> Any:
        found = self._costs.get((gateway, key, model))
        if found is None:
            label = self._model_label(gateway, model)
            found = self._costs.get((gateway, key, label))
            if found is None:
                found = self._costs[gateway, key, label] = self.cost.labels(gateway, key, label)
        return found

    def _refusal_counter(self, gateway: str, key: str, limit: str) -> Any:
        found = self._refusals.get((gateway, key, limit))
        if found is None:
            found = self._refusals[gateway, key, limit] = self.key_refusals.labels(
                gateway, key, limit
            )
        return found

    def _model_label(self, gateway: str, model: str) -> str:
        """``model`` as a label value: listed or among the first seen, else ``other``."""
        if model in self._listed.get(gateway, ()):
            return model
        seen = self._seen.setdefault(gateway, set())
        if model not in seen:
            if len(seen) >= MAX_MODELS:
                return OTHER_MODEL
            seen.add(model)
        return model

    def _token_counters(self, gateway: str, key: str, model: str) -> tuple[Any, Any]:
        found = self._tokens.get((gateway, key, model))
        if found is not None:
            return found
        label = self._model_label(gateway, model)
        found = self._tokens.get((gateway, key, label))
        if found is None:
            found = (
                self.tokens.labels(gateway, key, label, "input"),
                self.tokens.labels(gateway, key, label, "output"),
            )
            self._tokens[gateway, key, label] = found
        return found

    # --- the scrape --------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)
