"""Fault and FakeProviderSpec: Python constructors, JSON/YAML form, validation by path."""

from __future__ import annotations

import pytest
import yaml

from trio_gateway import serde
from trio_gateway.errors import ValidationFailed
from trio_gateway.testing.fake import (
    DEFAULT_MODELS,
    FakeProviderSpec,
    Fault,
    FaultKind,
    Flap,
    Window,
    fault_from_json,
    fault_to_json,
    faults_from_json,
)
from trio_gateway.testing.fake.spec import KIND_PARAMS

EVERY_KIND = [
    Fault.latency(0.5, jitter=0.1),
    Fault.error(503, times=2),
    Fault.error(502, body="<html>bad gateway</html>", headers={"content-type": "text/html"}),
    Fault.overloaded(model="claude-3-5-sonnet-20241022"),
    Fault.rate_limit(retry_after=3, path="/v1/chat/completions"),
    Fault.hang(probability=0.25),
    Fault.close(skip=1),
    Fault.reset(window=(1, 5)),
    Fault.hang_after_headers(stream=True),
    Fault.slow_first_token(2),
    Fault.stall_stream(1.5, after_chunks=4),
    Fault.malformed_event(after_chunks=0),
    Fault.error_event(500, after_chunks=3),
    Fault.cut_stream(after_chunks=3),
    Fault.no_terminator(),
    Fault.flap(down=2, up=3),
    Fault.flap(down=1, up=1, fault=Fault.hang()),
]


def test_every_kind_has_a_constructor_in_the_examples() -> None:
    assert {f.kind for f in EVERY_KIND} == set(FaultKind) == set(KIND_PARAMS)


@pytest.mark.parametrize("fault", EVERY_KIND, ids=lambda f: f.kind.value)
def test_faults_round_trip_through_json(fault: Fault) -> None:
    data = fault_to_json(fault)
    assert data["kind"] == fault.kind.value
    assert fault_from_json(data) == fault
    assert fault_from_json(yaml.safe_load(yaml.safe_dump(data))) == fault


def test_json_leaves_defaults_out() -> None:
    assert fault_to_json(Fault.hang()) == {"kind": "hang"}
    assert fault_to_json(Fault.flap(down=2, up=3)) == {
        "kind": "error",
        "status": 503,
        "flapping": {"down": 2, "up": 3},
    }
    assert fault_to_json(Fault.rate_limit(retry_after=0.5)) == {
        "kind": "rate_limit",
        "retry_after": 0.5,
    }


def test_response_headers_and_body_are_not_masked() -> None:
    fault = Fault.error(401, body={"authorization": "Bearer sk-abcdefghijklmnop"})
    fault = Fault.error(401, body=fault.body, headers={"x-api-key": "sk-abcdefghijklmnop"})
    data = fault_to_json(fault)
    assert data["body"] == {"authorization": "Bearer sk-abcdefghijklmnop"}
    assert data["headers"] == {"x-api-key": "sk-abcdefghijklmnop"}


def test_a_bare_kind_name_is_a_fault() -> None:
    assert fault_from_json("hang") == Fault.hang()
    assert faults_from_json(["close", {"kind": "error", "status": 500}]) == (
        Fault.close(),
        Fault.error(500),
    )


def test_python_numbers_are_normalized() -> None:
    fault = Fault.flap(down=2, up=3)
    assert fault.flapping == Flap(down=2.0, up=3.0)
    assert Fault.latency(1, window=(0, 5)).window == Window(start=0.0, end=5.0)


@pytest.mark.parametrize(
    ("data", "loc", "msg"),
    [
        ({"kind": "boom"}, "faults[0].kind", "must be one of 'latency', 'error'"),
        ({"kind": "error"}, "faults[0]", "kind 'error' needs 'status'"),
        ({"kind": "hang", "seconds": 3}, "faults[0]", "kind 'hang' does not take 'seconds'"),
        ({"kind": "latency", "seconds": -1}, "faults[0].seconds", "must be between 0 and 86400"),
        ({"kind": "error", "status": 99}, "faults[0].status", "must be between 200 and 599"),
        ({"kind": "error", "status": "503"}, "faults[0].status", "must be an integer"),
        ({"kind": "hang", "times": 0}, "faults[0].times", "must be between 1 and"),
        ({"kind": "hang", "probability": 0}, "faults[0].probability", "greater than 0"),
        ({"kind": "hang", "probability": 1.5}, "faults[0].probability", "at most 1"),
        ({"kind": "hang", "path": "v1/x"}, "faults[0].path", "must start with '/'"),
        ({"kind": "hang", "window": {"start": 5, "end": 2}}, "faults[0].window", "after 'start'"),
        ({"kind": "hang", "flapping": {"down": 0, "up": 1}}, "faults[0].flapping.down", "greater"),
        ({"kind": "cut_stream", "stream": False}, "faults[0]", "only applies to streams"),
        ({"kind": "hang", "bogus": 1}, "faults[0].bogus", "unknown field"),
    ],
)
def test_bad_faults_are_reported_by_path(data: dict, loc: str, msg: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        faults_from_json([data])
    [problem] = info.value.details
    assert problem.loc == loc
    assert msg in problem.msg


def test_spec_from_a_configuration_file_entry() -> None:
    entry = yaml.safe_load(
        """
        name: flaky-openai
        listen: 127.0.0.1:9101
        api_key: sk-fake-openai
        models: [gpt-4o-mini]
        seed: 7
        faults:
          - {kind: error, status: 503, times: 2}
          - kind: latency
            seconds: 0.2
            jitter: 0.05
          - {kind: cut_stream}
        """
    )
    spec = serde.structure(entry, FakeProviderSpec, loc="fake_providers[0]")
    assert spec.name == "flaky-openai"
    assert spec.address == ("127.0.0.1", 9101)
    assert spec.models == ("gpt-4o-mini",)
    assert spec.faults == (
        Fault.error(503, times=2),
        Fault.latency(0.2, jitter=0.05),
        Fault.cut_stream(after_chunks=None),
    )
    assert "sk-fake-openai" not in repr(spec)


def test_spec_defaults() -> None:
    spec = serde.structure({"name": "quickstart-openai"}, FakeProviderSpec)
    assert spec.listen == "127.0.0.1:0"
    assert spec.api_key is None
    assert spec.models == DEFAULT_MODELS
    assert {"gpt-4o-mini", "gpt-4", "gpt-3.5-turbo", "claude-3-5-sonnet-20241022"} <= set(
        spec.models
    )
    assert spec.faults == ()


@pytest.mark.parametrize(
    ("entry", "loc", "msg"),
    [
        ({"listen": ":80"}, "fake_providers[2].name", "is required"),
        ({"name": "x", "listen": "localhost"}, "fake_providers[2]", "listen: must be HOST:PORT"),
        ({"name": "x", "models": "gpt-4"}, "fake_providers[2].models", "must be a list"),
        (
            {"name": "x", "faults": [{"kind": "hang"}, {"kind": "error"}]},
            "fake_providers[2].faults[1]",
            "needs 'status'",
        ),
    ],
)
def test_bad_specs_are_reported_by_path(entry: dict, loc: str, msg: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        serde.structure(entry, FakeProviderSpec, loc="fake_providers[2]")
    [problem] = info.value.details
    assert problem.loc == loc
    assert msg in problem.msg


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_addresses(listen: str, address: tuple[str, int]) -> None:
    assert FakeProviderSpec(name="x", listen=listen).address == address


def test_python_lists_become_tuples() -> None:
    spec = FakeProviderSpec(name="x", models=["a"], faults=[Fault.hang()])
    assert spec.models == ("a",)
    assert spec.faults == (Fault.hang(),)
