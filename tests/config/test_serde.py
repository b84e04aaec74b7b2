"""The converters: strict types, every problem named by path, secrets masked on the way out."""

from __future__ import annotations

import pytest

from trio_gateway import serde
from trio_gateway.config.models import HealthChecks, Target, Upstream
from trio_gateway.errors import ValidationFailed


def problems(data, cls=Upstream) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        serde.structure(data, cls)
    return {p.loc: p.msg for p in info.value.details}


@pytest.mark.parametrize(
    ("field", "value", "msg"),
    [
        ("weight", "5", "must be an integer, not a string"),
        ("weight", True, "must be an integer, not a boolean"),
        ("models", "gpt-4", "must be a list, not a string"),
        ("headers", ["a"], "must be an object, not a list"),
        ("credentials", "Bearer x", "must be an object, not a string"),
        ("base_url", "ftp://x", "must be an http(s) URL such as https://api.openai.com"),
        ("base_url", "https://x/?q=1", "must not have a query or a fragment"),
        ("path", "v1/chat", "must start with '/'"),
        ("priority", 0, "must be between 1 and 1000"),
    ],
)
def test_strict_target_fields(field, value, msg):
    assert problems({"provider": "openai", field: value}, Target) == {field: msg}


def test_a_non_object_where_an_object_belongs():
    assert problems({"name": "u", "targets": ["x"]}) == {
        "targets[0]": "must be an object, not a string"
    }
    assert problems({"name": "u", "targets": [{"provider": "openai"}], "health_checks": 5}) == {
        "health_checks": "must be an object, not a number"
    }


def test_missing_required_fields():
    assert problems({"targets": [{}]}) == {
        "name": "is required",
        "targets[0].provider": "is required",
    }


def test_integral_seconds_echo_as_integers():
    assert serde.API.unstructure(HealthChecks(interval=60))["interval"] == 60
    assert serde.API.unstructure(HealthChecks(interval=0.5))["interval"] == 0.5


def test_header_values_are_masked_unless_the_header_is_known_to_be_public():
    headers = {"api-key": "abcdefghijklmnop", "x-team": "blue", "Anthropic-Version": "2023-06-01"}
    target = serde.structure({"provider": "openai", "headers": headers}, Target)
    shown = serde.API.unstructure(target)["headers"]
    assert shown == {"api-key": "…mnop", "x-team": "…", "Anthropic-Version": "2023-06-01"}
    assert serde.STORE.unstructure(target)["headers"]["api-key"] == "abcdefghijklmnop"


def test_base_url_needed_where_there_is_no_public_default():
    from trio_gateway.config.models import check_upstream

    upstream = serde.structure(
        {"name": "u", "targets": [{"provider": "openai-compatible"}]}, Upstream
    )
    assert [(p.loc, p.msg) for p in check_upstream(upstream)] == [
        ("targets[0].base_url", "is required for provider 'openai-compatible'")
    ]
