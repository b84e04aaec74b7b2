"""Key limits, models, defaults and prices through the admin API, over real sockets."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("gateway")

LIMITS = {"requests_per_minute": 10, "budget": {"period": "day", "cost": 2.5}}


async def test_limits_are_created_shown_replaced_and_refused_with_paths(admin, gateway_id):
    base = f"/gateways/{gateway_id}"
    refused = await admin.post(f"{base}/keys", json={"name": "k", "limits": LIMITS})
    assert refused.status_code == 422
    assert refused.json()["error"]["details"] == [
        {
            "loc": "limits.budget.cost",
            "msg": "needs a price table: set 'prices' on gateway 'test' (per million tokens, by model)",
        }
    ]
    priced = await admin.put(base, json={"prices": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}})
    assert priced.status_code == 200, priced.text
    assert priced.json()["prices"] == {
        "gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached": None}
    }

    created = await admin.post(
        f"{base}/keys", json={"name": "k", "limits": LIMITS, "models": ["gpt-4o-mini"]}
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["limits"] == {
        "requests_per_minute": 10,
        "tokens_per_minute": None,
        "budget": {"period": "day", "tokens": None, "cost": 2.5},
    }
    assert key["models"] == ["gpt-4o-mini"] and key["key"].startswith("tgk_")

    replaced = await admin.put(
        f"{base}/keys/{key['id']}", json={"limits": {"tokens_per_minute": 5000}}
    )
    assert replaced.status_code == 200
    assert replaced.json()["limits"]["requests_per_minute"] is None
    assert replaced.json()["models"] == ["gpt-4o-mini"]  # omitted: kept

    bad = await admin.put(
        f"{base}/keys/{key['id']}",
        json={"limits": {"requests_per_minute": -1, "budget": {"tokens": 5}}, "models": []},
    )
    assert bad.status_code == 422
    assert {d["loc"]: d["msg"] for d in bad.json()["error"]["details"]} == {
        "limits.requests_per_minute": "must be between 1 and 1000000000",
        "limits.budget.period": "is required",
    }


async def test_gateway_key_defaults(admin, gateway_id):
    response = await admin.put(
        f"/gateways/{gateway_id}",
        json={"key_defaults": {"limits": {"requests_per_minute": 30}, "models": ["a", "b"]}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["key_defaults"] == {
        "limits": {"requests_per_minute": 30, "tokens_per_minute": None, "budget": None},
        "models": ["a", "b"],
    }
    key = await admin.post(f"/gateways/{gateway_id}/keys", json={"name": "plain"})
    assert key.json()["limits"] is None and key.json()["models"] is None  # defaults apply
