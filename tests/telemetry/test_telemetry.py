"""Telemetry's parts on their own: tracing's configuration, metric labels, the usage splice."""

from __future__ import annotations

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from trio_gateway import jsonio
from trio_gateway.core.failover import AttemptRecord
from trio_gateway.providers.formats import ApiFormat
from trio_gateway.providers.usage import Usage
from trio_gateway.runtime.dispatcher import ClientRequest, _provider_body, _usage_unasked
from trio_gateway.telemetry import Metrics, Telemetry
from trio_gateway.telemetry.metrics import MAX_MODELS, OTHER_MODEL
from trio_gateway.telemetry.tracing import Tracing, TracingUnavailable, configured

# --- tracing's configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "gw"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ, exporters):
    assert configured(environ) == exporters


def test_tracing_from_the_environment():
    assert Tracing.from_environment({}) is None
    tracing = Tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None and tracing.owned
    assert tracing.provider.resource.attributes["service.name"] == "trio-gateway"
    tracing.shutdown()
    named = Tracing.from_environment(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "edge"}
    )
    assert named is not None
    named.shutdown()
    with pytest.raises(TracingUnavailable, match="no OpenTelemetry trace exporter named 'zipkin'"):
        Tracing.from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(TracingUnavailable, match="http/protobuf or grpc"):
        Tracing.from_environment(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )


def test_otlp_over_http_is_what_the_extra_installs():
    tracing = Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert tracing is not None
    processor = tracing.provider._active_span_processor._span_processors[0]
    assert type(processor._batch_processor._exporter).__module__.startswith(
        "opentelemetry.exporter.otlp.proto.http"
    )
    tracing.provider.shutdown()


# --- metric labels ---------------------------------------------------------------------------


@attrs.define
class FakeTarget:
    id: str
    models: tuple[str, ...] = ()
    default_model: str | None = None

    @property
    def provider(self):
        return ApiFormat.OPENAI


@attrs.define(eq=False)
class FakeActor:
    target: FakeTarget
    observer: object = None


@attrs.define
class FakeUpstream:
    name: str
    gateway_id: str = "g1"


@attrs.define(eq=False)
class FakeDispatcher:
    upstream: FakeUpstream
    actors: tuple[FakeActor, ...]
    metrics: object = None


def samples(metrics: Metrics) -> list:
    text = metrics.render().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def labels_of(metrics: Metrics, name: str) -> list[dict]:
    return [s.labels for s in samples(metrics) if s.name == name]


class Record:
    """What :meth:`Metrics.observe` reads of a request."""

    def __init__(self, model: str) -> None:
        self.client_format = "openai"
        self.stream = False
        self.status = 200
        self.trail = [AttemptRecord("t1", "openai", model, "200", 5.0)]
        self.answered = self.trail[0]
        self.malformed = 0
        self.usage = Usage(1, 2)
        self.key = type("Key", (), {"name": "app"})()
        self.model = model
        self.cost = 0.001
        self.refused_by = None


def test_model_label_values_are_bounded():
    metrics = Metrics()
    dispatcher = FakeDispatcher(
        FakeUpstream("u"), (FakeActor(FakeTarget("t1", models=("listed",))),)
    )
    metrics.configured({"g1": "gw"}, [dispatcher])
    for i in range(MAX_MODELS + 20):
        metrics.observe(Record(f"client-model-{i}"), dispatcher.metrics, 0.1)
    metrics.observe(Record("listed"), dispatcher.metrics, 0.1)
    models = {lab["model"] for lab in labels_of(metrics, "trio_gateway_tokens_total")}
    assert "listed" in models and OTHER_MODEL in models
    assert len(models) == MAX_MODELS + 2
    costs = {lab["model"] for lab in labels_of(metrics, "trio_gateway_cost_total")}
    assert costs == models
    assert len(metrics._costs) == MAX_MODELS + 2  # nothing kept per unlisted name beyond
    other = [
        s.value
        for s in samples(metrics)
        if s.name == "trio_gateway_tokens_total"
        and s.labels["model"] == OTHER_MODEL
        and s.labels["direction"] == "output"
    ]
    assert other == [40.0]  # 20 requests of 2 output tokens


def test_series_of_removed_targets_and_upstreams_go_away():
    metrics = Metrics()
    one, two = FakeActor(FakeTarget("t1")), FakeActor(FakeTarget("t2"))
    metrics.configured({"g1": "gw"}, [FakeDispatcher(FakeUpstream("u"), (one, two))])
    metrics.refresh([])
    assert {lab["target"] for lab in labels_of(metrics, "trio_gateway_attempts_total")} == {
        "t1",
        "t2",
    }
    metrics.configured({"g1": "gw"}, [FakeDispatcher(FakeUpstream("u"), (one,))])
    assert {lab["target"] for lab in labels_of(metrics, "trio_gateway_attempts_total")} == {"t1"}
    metrics.configured({"g1": "gw"}, [FakeDispatcher(FakeUpstream("renamed"), (one,))])
    upstreams = {lab["upstream"] for lab in labels_of(metrics, "trio_gateway_requests_total")}
    assert upstreams == {"renamed"}


def test_nothing_is_recorded_when_everything_is_off():
    telemetry = Telemetry(access=False)
    assert not telemetry.enabled
    assert telemetry.begin("r", "POST", "/v1/messages", {}, "anthropic") is None


# --- asking an OpenAI-dialect provider for a stream's usage -------------------------------------


def client_request(body: dict, model: str | None = "gpt-4o-mini") -> ClientRequest:
    raw = jsonio.dumpb(body)
    return ClientRequest(ApiFormat.OPENAI, body, raw, model, body.get("stream") is True, (), "r")


def test_the_usage_request_is_spliced_into_the_clients_own_bytes():
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
    request = client_request(body)
    assert _usage_unasked(request, ApiFormat.OPENAI)
    assert not _usage_unasked(request, ApiFormat.ANTHROPIC)  # the translator's own business
    sent = _provider_body(request, "gpt-4o-mini", None, True)
    assert jsonio.loads(sent) == {**body, "stream_options": {"include_usage": True}}
    assert sent.endswith(request.raw[1:])  # the client's bytes, untouched after the splice
    assert _provider_body(request, "gpt-4o-mini", None, False) is request.raw


def test_a_clients_own_stream_options_are_kept():
    asked = {
        "model": "m",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert not _usage_unasked(client_request(asked), ApiFormat.OPENAI)
    declined = {**asked, "stream_options": {"include_usage": False, "other": 1}}
    request = client_request(declined)
    assert _usage_unasked(request, ApiFormat.OPENAI)
    sent = jsonio.loads(_provider_body(request, "other-model", None, True))
    assert sent["stream_options"] == {"include_usage": True, "other": 1}
    assert sent["model"] == "other-model"
    whole = {"model": "m", "messages": []}
    assert not _usage_unasked(client_request(whole), ApiFormat.OPENAI)
