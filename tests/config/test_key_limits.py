"""Key limits, models, gateway defaults and prices: validated with paths, in the API and the file."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.config.test_file import EXAMPLES, problems_of
from trio_gateway import serde
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.file import apply, parse
from trio_gateway.config.models import ApiKey, Gateway, Kind
from trio_gateway.errors import ValidationFailed
from trio_gateway.store import MemoryStore

LIMITS = {
    "requests_per_minute": 60,
    "tokens_per_minute": 100_000,
    "budget": {"tokens": 5_000_000, "cost": 25, "period": "month"},
}
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached": 0.075}}


def problems(data: dict, cls: type = ApiKey) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        serde.structure(data, cls)
    return {p.loc: p.msg for p in info.value.details}


def test_a_key_with_limits_and_models_round_trips():
    key = serde.structure({"name": "k", "limits": LIMITS, "models": ["gpt-4o-mini"]}, ApiKey)
    shown = serde.API.unstructure(key)
    assert shown["limits"] == {
        "requests_per_minute": 60,
        "tokens_per_minute": 100_000,
        "budget": {"period": "month", "tokens": 5_000_000, "cost": 25},
    }
    assert shown["models"] == ["gpt-4o-mini"]
    assert serde.STORE.structure(serde.STORE.unstructure(key), ApiKey) == key


@pytest.mark.parametrize(
    ("data", "loc", "msg"),
    [
        (
            {"limits": {"requests_per_minute": 0}},
            "limits.requests_per_minute",
            "must be between 1 and 1000000000",
        ),
        (
            {"limits": {"tokens_per_minute": 1.5}},
            "limits.tokens_per_minute",
            "must be an integer, not a number",
        ),
        ({"limits": {"budget": {"tokens": 5}}}, "limits.budget.period", "is required"),
        (
            {"limits": {"budget": {"period": "week", "tokens": 5}}},
            "limits.budget.period",
            "must be one of 'day', 'month', 'lifetime'",
        ),
        (
            {"limits": {"budget": {"period": "day", "cost": 0}}},
            "limits.budget.cost",
            "must be greater than 0 and at most 1000000000000",
        ),
        ({"limits": {"rpm": 5}}, "limits.rpm", "unknown field"),
        ({"models": "gpt-4o"}, "models", "must be a list, not a string"),
        ({"models": [""]}, "models[0]", "must not be empty"),
    ],
)
def test_field_problems_carry_their_path(data, loc, msg):
    assert problems({"name": "k", **data}) == {loc: msg}


def test_prices_are_checked_by_model():
    assert problems({"name": "g", "prices": {"m": {"input": -1, "output": 1}}}, Gateway) == {
        "prices['m'].input": "must be between 0 and 1000000"
    }
    assert problems({"name": "g", "prices": {"m": {"output": 1}}}, Gateway) == {
        "prices['m'].input": "is required"
    }
    assert problems({"name": "g", "key_defaults": {"model": ["a"]}}, Gateway) == {
        "key_defaults.model": "unknown field"
    }


async def catalog_with_gateway(**fields) -> tuple[Catalog, Gateway]:
    catalog = await Catalog.load(MemoryStore())
    gateway = await catalog.create(Kind.GATEWAY, {"name": "g", **fields})
    return catalog, gateway


async def test_rules_that_span_fields_are_checked_on_write():
    catalog, gateway = await catalog_with_gateway()
    cases = [
        (
            {"limits": {"budget": {"period": "day"}}},
            "limits.budget",
            "must set 'tokens', 'cost' or both",
        ),
        (
            {"models": []},
            "models",
            "must not be empty (leave it out, or null, to allow every model)",
        ),
        ({"models": ["a", "a"]}, "models", "lists a model more than once"),
        (
            {"limits": {"budget": {"period": "day", "cost": 5}}},
            "limits.budget.cost",
            "needs a price table: set 'prices' on gateway 'g' (per million tokens, by model)",
        ),
    ]
    for data, loc, msg in cases:
        with pytest.raises(ValidationFailed) as info:
            await catalog.create_api_key(gateway.id, {"name": "k", **data})
        assert [(p.loc, p.msg) for p in info.value.details] == [(loc, msg)]


async def test_a_cost_budget_keeps_its_price_table():
    catalog, gateway = await catalog_with_gateway(prices=PRICES)
    key, _ = await catalog.create_api_key(
        gateway.id, {"name": "k", "limits": {"budget": {"period": "day", "cost": 5}}}
    )
    assert key.limits.budget.cost == 5
    with pytest.raises(ValidationFailed) as info:
        await catalog.replace(Kind.GATEWAY, gateway.id, {"prices": None})
    assert [(p.loc, p.msg) for p in info.value.details] == [
        (
            "prices",
            "must not be empty: API key 'k' has a cost budget, which needs a price per model",
        )
    ]
    with pytest.raises(ValidationFailed) as info:
        await catalog.create(
            Kind.GATEWAY,
            {"name": "other", "key_defaults": {"limits": {"budget": {"period": "day", "cost": 1}}}},
        )
    assert info.value.details[0].loc == "key_defaults.limits.budget.cost"


async def test_put_replaces_the_limits_as_a_whole_and_null_takes_the_default():
    catalog, gateway = await catalog_with_gateway(
        key_defaults={"limits": {"requests_per_minute": 5}, "models": ["gpt-4o-mini"]}
    )
    key, _ = await catalog.create_api_key(
        gateway.id, {"name": "k", "limits": LIMITS | {"budget": None}}
    )
    key = await catalog.replace(
        Kind.API_KEY, key.id, {"limits": {"tokens_per_minute": 10}}, gateway.id
    )
    assert key.limits.requests_per_minute is None and key.limits.tokens_per_minute == 10
    key = await catalog.replace(Kind.API_KEY, key.id, {"limits": None}, gateway.id)
    assert key.limits is None  # the gateway's defaults apply
    from trio_gateway.config.models import effective_limits, effective_models

    assert effective_limits(key, catalog.snapshot.gateways[gateway.id]).requests_per_minute == 5
    assert effective_models(key, catalog.snapshot.gateways[gateway.id]) == ("gpt-4o-mini",)
    key = await catalog.replace(Kind.API_KEY, key.id, {"limits": {}}, gateway.id)
    assert effective_limits(key, catalog.snapshot.gateways[gateway.id]) is None  # none at all


def quickstart_with_limits() -> dict:
    raw = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    gateway = raw["gateways"][0]
    gateway["prices"] = copy.deepcopy(PRICES)
    gateway["key_defaults"] = {"limits": {"requests_per_minute": 100}}
    gateway["api_keys"][0]["limits"] = copy.deepcopy(LIMITS)
    gateway["api_keys"][0]["models"] = ["gpt-4o-mini"]
    return raw


async def test_the_file_declares_limits_defaults_and_prices():
    declarations = parse(quickstart_with_limits(), {})
    catalog = await Catalog.load(MemoryStore())
    await catalog.write(lambda draft: apply(draft, declarations))
    gateway = next(g for g in catalog.snapshot.gateways.values() if g.name == "quickstart")
    [key] = catalog.snapshot.in_gateway(Kind.API_KEY, gateway.id)
    assert key.limits.budget.cost == 25 and key.models == ("gpt-4o-mini",)
    assert gateway.prices["gpt-4o-mini"].cached == 0.075
    assert gateway.key_defaults.limits.requests_per_minute == 100


def test_file_problems_carry_the_files_path():
    raw = quickstart_with_limits()
    gateway = raw["gateways"][0]
    gateway["api_keys"][0]["limits"]["budget"] = {"period": "month"}
    gateway["api_keys"][0]["models"] = ["a", "a"]
    gateway["prices"]["gpt-4o-mini"]["output"] = "cheap"
    assert problems_of(raw) == {
        "gateways[0].api_keys[0].limits.budget": "must set 'tokens', 'cost' or both",
        "gateways[0].api_keys[0].models": "lists a model more than once",
        "gateways[0].prices['gpt-4o-mini'].output": "must be a number, not a string",
    }
    raw = quickstart_with_limits()
    raw["gateways"][0]["key_defaults"]["models"] = []
    assert problems_of(raw) == {
        "gateways[0].key_defaults.models": (
            "must not be empty (leave it out, or null, to allow every model)"
        ),
    }


async def test_export_and_import_keep_limits_and_prices():
    from trio_gateway.config.transfer import export, restore

    declarations = parse(quickstart_with_limits(), {})
    source = await Catalog.load(MemoryStore())
    await source.write(lambda draft: apply(draft, declarations))
    exported, _ = export(source.snapshot, include_secrets=True)
    target = await Catalog.load(MemoryStore())
    await target.write(lambda draft: restore(draft, yaml.safe_load(yaml.safe_dump(exported))))
    for kind in (Kind.GATEWAY, Kind.API_KEY):
        assert target.snapshot.entities[kind] == source.snapshot.entities[kind]
