"""The admin API over real sockets: the guide's calls, CRUD, errors, secrets, auth."""

from __future__ import annotations

import json
import logging

import httpx2
import pytest

from trio_gateway.config.secrets import hash_api_key
from trio_gateway.serve import Running
from trio_gateway.testing.harness import open_gateway

pytestmark = pytest.mark.usefixtures("gateway")


async def create(admin: httpx2.AsyncClient, path: str, body: dict) -> dict:
    response = await admin.post(path, json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def service_and_rule(
    admin: httpx2.AsyncClient, gid: str, upstream_id: str
) -> tuple[dict, dict]:
    service = await create(
        admin,
        f"/gateways/{gid}/services",
        {"name": "ai", "type": "upstream", "upstream_id": upstream_id},
    )
    rule = await create(
        admin, f"/gateways/{gid}/rules", {"name": "v1", "path": "/v1", "service_id": service["id"]}
    )
    return service, rule


# --- the guide, verbatim ----------------------------------------------------------


async def test_guide_upstream_is_created_and_echoed(admin, gateway_id, guide_upstream):
    response = await admin.post(
        f"/gateways/{gateway_id}/upstreams",
        content=json.dumps(guide_upstream),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"].endswith(f"/upstreams/{body['id']}")
    assert body["gateway_id"] == gateway_id
    assert body["name"] == "ai-providers-upstream"
    assert body["algorithm"] == "round-robin"
    assert body["health_checks"] == {
        "passive": True,
        "threshold": 3,
        "interval": 60,
        "ejection_time": 5,
        "max_ejected_percent": 100,
        "request_checks": True,
        "shared": False,
        "active": False,
        "path": None,
        "headers": {},
    }
    for sent, echoed in zip(guide_upstream["targets"], body["targets"], strict=True):
        secret = sent["credentials"]["header_value"]
        assert echoed["credentials"]["header_name"] == sent["credentials"]["header_name"]
        assert echoed["credentials"]["header_value"] != secret
        assert "…" in echoed["credentials"]["header_value"]
        for field in ("path", "provider", "weight", "priority", "default_model", "models"):
            assert echoed[field] == sent[field]
        assert echoed["headers"] == sent.get("headers", {})
        assert echoed["id"]
    assert secret not in response.text

    fetched = await admin.get(f"/gateways/{gateway_id}/upstreams/{body['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == body


async def test_guide_upstream_survives_a_restart(tmp_path, guide_upstream):
    async with open_gateway(data_dir=tmp_path) as gw:
        async with httpx2.AsyncClient(base_url=gw.admin_url + "/api/v1") as admin:
            gid = (await create(admin, "/gateways", {"name": "g"}))["id"]
            created = await create(admin, f"/gateways/{gid}/upstreams", guide_upstream)
    async with open_gateway(data_dir=tmp_path) as gw:
        async with httpx2.AsyncClient(base_url=gw.admin_url + "/api/v1") as admin:
            fetched = await admin.get(f"/gateways/{gid}/upstreams/{created['id']}")
            assert fetched.status_code == 200
            assert fetched.json() == created
        stored = gw.catalog.snapshot.upstreams[created["id"]]
        assert stored.targets[0].credentials.header_value == "Bearer your-openai-key"


# --- CRUD and pagination -------------------------------------------------------------


async def test_gateway_crud(admin):
    gw = await create(admin, "/gateways", {"name": "one", "subdomain": "one"})
    assert gw["status"] == "active" and gw["created_at"] == gw["updated_at"]
    updated = await admin.put(f"/gateways/{gw['id']}", json={"status": "inactive"})
    assert updated.status_code == 200
    assert updated.json()["name"] == "one"  # omitted fields keep their value
    assert updated.json()["status"] == "inactive"
    assert updated.json()["created_at"] == gw["created_at"]
    assert (await admin.delete(f"/gateways/{gw['id']}")).status_code == 204
    assert (await admin.get(f"/gateways/{gw['id']}")).status_code == 404


async def test_pagination(admin):
    ids = [(await create(admin, "/gateways", {"name": f"g{i}"}))["id"] for i in range(5)]
    page = (await admin.get("/gateways", params={"offset": 1, "limit": 2})).json()
    assert page["total"] == 5 and page["offset"] == 1 and page["limit"] == 2
    assert [g["id"] for g in page["items"]] == ids[1:3]
    everything = (await admin.get("/gateways")).json()
    assert [g["id"] for g in everything["items"]] == ids
    beyond = (await admin.get("/gateways", params={"offset": 10})).json()
    assert beyond["items"] == [] and beyond["total"] == 5
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
        response = await admin.get("/gateways", params=params)
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["loc"] in ("limit", "offset")


async def test_every_collection_lists_creates_gets_replaces_deletes(
    admin, gateway_id, guide_upstream
):
    base = f"/gateways/{gateway_id}"
    upstream = await create(admin, f"{base}/upstreams", guide_upstream)
    service, rule = await service_and_rule(admin, gateway_id, upstream["id"])
    key = await create(admin, f"{base}/keys", {"name": "k"})
    for collection, entity in (
        ("upstreams", upstream),
        ("services", service),
        ("rules", rule),
        ("keys", key),
    ):
        listed = (await admin.get(f"{base}/{collection}")).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == entity["id"]
        got = await admin.get(f"{base}/{collection}/{entity['id']}")
        assert got.status_code == 200
        renamed = await admin.put(
            f"{base}/{collection}/{entity['id']}", json={"name": f"new-{collection}"}
        )
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["name"] == f"new-{collection}"
    for collection, entity in (
        ("rules", rule),
        ("services", service),
        ("upstreams", upstream),
        ("keys", key),
    ):
        assert (await admin.delete(f"{base}/{collection}/{entity['id']}")).status_code == 204
        assert (await admin.get(f"{base}/{collection}/{entity['id']}")).status_code == 404


async def test_put_keeps_omitted_fields_and_null_resets(admin, gateway_id, guide_upstream):
    base = f"/gateways/{gateway_id}/upstreams"
    created = await create(admin, base, guide_upstream)
    response = await admin.put(f"{base}/{created['id']}", json={"algorithm": "weighted"})
    assert response.status_code == 200
    body = response.json()
    assert body["algorithm"] == "weighted"
    assert body["targets"] == created["targets"]
    assert body["health_checks"] == created["health_checks"]
    reset = await admin.put(f"{base}/{created['id']}", json={"health_checks": None})
    assert reset.json()["health_checks"]["threshold"] == 3  # the default
    required = await admin.put(f"{base}/{created['id']}", json={"name": None})
    assert required.status_code == 422
    assert required.json()["error"]["details"] == [{"loc": "name", "msg": "is required"}]


async def test_get_then_put_back_keeps_secrets_and_target_ids(
    admin, gateway, gateway_id, guide_upstream
):
    base = f"/gateways/{gateway_id}/upstreams"
    created = await create(admin, base, guide_upstream)
    edited = dict(created)
    edited["targets"] = [dict(t) for t in created["targets"]]
    edited["targets"][0]["weight"] = 70
    edited["targets"][1]["weight"] = 30
    response = await admin.put(f"{base}/{created['id']}", json=edited)
    assert response.status_code == 200, response.text
    assert [t["id"] for t in response.json()["targets"]] == [t["id"] for t in created["targets"]]
    stored = gateway.catalog.snapshot.upstreams[created["id"]]
    assert stored.targets[0].weight == 70
    assert stored.targets[0].credentials.header_value == "Bearer your-openai-key"
    assert stored.targets[1].credentials.header_value == "your-anthropic-key"


async def test_target_sent_without_id_keeps_the_id_of_the_same_endpoint(
    admin, gateway_id, guide_upstream
):
    base = f"/gateways/{gateway_id}/upstreams"
    created = await create(admin, base, guide_upstream)
    resent = json.loads(json.dumps(guide_upstream))
    resent["targets"][0]["weight"] = 10
    body = (await admin.put(f"{base}/{created['id']}", json=resent)).json()
    assert [t["id"] for t in body["targets"]] == [t["id"] for t in created["targets"]]
    assert body["targets"][0]["weight"] == 10


async def test_unchanged_put_keeps_updated_at(admin, gateway_id, guide_upstream):
    base = f"/gateways/{gateway_id}/upstreams"
    created = await create(admin, base, guide_upstream)
    again = (await admin.put(f"{base}/{created['id']}", json=created)).json()
    assert again["updated_at"] == created["updated_at"]


# --- errors -------------------------------------------------------------------------


async def test_validation_errors_name_every_field(admin, gateway_id, guide_upstream):
    body = json.loads(json.dumps(guide_upstream))
    body["algorithm"] = "fastest"
    body["targets"][0]["provider"] = "openaii"
    body["targets"][0]["weight"] = 0
    body["targets"][1]["priority"] = 0
    body["targets"][1]["default_model"] = "claude-2"
    body["targets"][1]["wieght"] = 5
    body["targets"][1]["headers"] = {"anthropic-version": "2023\r\nX-Evil: 1", "bad name": "x"}
    response = await admin.post(f"/gateways/{gateway_id}/upstreams", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_failed"
    locs = {d["loc"]: d["msg"] for d in error["details"]}
    assert locs["algorithm"].startswith("must be one of 'round-robin', 'weighted'")
    assert "must be one of" in locs["targets[0].provider"]
    assert locs["targets[0].weight"] == "must be between 1 and 100"
    assert locs["targets[1].priority"] == "must be between 1 and 1000"
    assert locs["targets[1].wieght"] == "unknown field"
    assert "control characters" in locs["targets[1].headers['anthropic-version']"]
    assert "header name" in locs["targets[1].headers['bad name']"]


async def test_default_model_must_be_served_and_targets_not_empty(
    admin, gateway_id, guide_upstream
):
    body = json.loads(json.dumps(guide_upstream))
    body["targets"][1]["default_model"] = "claude-2"
    response = await admin.post(f"/gateways/{gateway_id}/upstreams", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"loc": "targets[1].default_model", "msg": "'claude-2' is not one of this target's models"}
    ]
    body["targets"] = []
    response = await admin.post(f"/gateways/{gateway_id}/upstreams", json=body)
    assert response.json()["error"]["details"] == [{"loc": "targets", "msg": "must not be empty"}]


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        (b'{"name": ', "invalid JSON: Expecting value at line 1 column 10"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "request body is empty; send a JSON object"),
        (
            b"\xff\xfe",
            "invalid JSON: not UTF-8 text (invalid byte at position 0); JSON must be UTF-8",
        ),
    ],
)
async def test_malformed_bodies(admin, raw, msg):
    response = await admin.post(
        "/gateways", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["msg"] == msg


async def test_body_over_the_limit_is_413(admin):
    response = await admin.post(
        "/gateways",
        content=b'{"name": "' + b"x" * (2 << 20) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"


async def test_weighted_round_robin_is_an_alias(admin, gateway_id, guide_upstream):
    guide_upstream["algorithm"] = "weighted-round-robin"
    body = await create(admin, f"/gateways/{gateway_id}/upstreams", guide_upstream)
    assert body["algorithm"] == "weighted"


async def test_not_found_everywhere(admin, gateway_id):
    for path in (
        "/gateways/nope",
        "/gateways/nope/upstreams",
        f"/gateways/{gateway_id}/upstreams/nope",
        f"/gateways/{gateway_id}/widgets",
        "/nothing-here",
    ):
        response = await admin.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found"


async def test_entity_of_another_gateway_is_not_found(admin, gateway_id, guide_upstream):
    other = (await create(admin, "/gateways", {"name": "other"}))["id"]
    upstream = await create(admin, f"/gateways/{other}/upstreams", guide_upstream)
    response = await admin.get(f"/gateways/{gateway_id}/upstreams/{upstream['id']}")
    assert response.status_code == 404


async def test_conflicts(admin, gateway_id, guide_upstream):
    base = f"/gateways/{gateway_id}"
    upstream = await create(admin, f"{base}/upstreams", guide_upstream)
    duplicate = await admin.post(f"{base}/upstreams", json=guide_upstream)
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["error"]["message"]
    assert (await admin.post("/gateways", json={"name": "test"})).status_code == 409

    service, rule = await service_and_rule(admin, gateway_id, upstream["id"])
    in_use = await admin.delete(f"{base}/upstreams/{upstream['id']}")
    assert in_use.status_code == 409
    assert "'ai'" in in_use.json()["error"]["message"]
    assert (await admin.delete(f"{base}/services/{service['id']}")).status_code == 409
    same_route = await admin.post(
        f"{base}/rules", json={"name": "v1-again", "path": "/v1", "service_id": service["id"]}
    )
    assert same_route.status_code == 409
    assert (await admin.delete(f"{base}/rules/{rule['id']}")).status_code == 204
    assert (await admin.delete(f"{base}/services/{service['id']}")).status_code == 204
    assert (await admin.delete(f"{base}/upstreams/{upstream['id']}")).status_code == 204


async def test_references_must_exist_in_the_same_gateway(admin, gateway_id, guide_upstream):
    other = (await create(admin, "/gateways", {"name": "other"}))["id"]
    foreign = await create(admin, f"/gateways/{other}/upstreams", guide_upstream)
    response = await admin.post(
        f"/gateways/{gateway_id}/services", json={"name": "s", "upstream_id": foreign["id"]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"] == "upstream_id"


async def test_deleting_a_gateway_deletes_what_it_holds(admin, gateway, gateway_id, guide_upstream):
    upstream = await create(admin, f"/gateways/{gateway_id}/upstreams", guide_upstream)
    await service_and_rule(admin, gateway_id, upstream["id"])
    await create(admin, f"/gateways/{gateway_id}/keys", {"name": "k"})
    assert (await admin.delete(f"/gateways/{gateway_id}")).status_code == 204
    snapshot = gateway.catalog.snapshot
    assert all(not snapshot.entities[kind] for kind in snapshot.entities)


async def test_read_only_fields_are_checked(admin, gateway_id):
    assert (await admin.post("/gateways", json={"id": "x", "name": "n"})).status_code == 422
    response = await admin.put(f"/gateways/{gateway_id}", json={"id": "other", "name": "n"})
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"loc": "id", "msg": "does not match the id in the URL"}
    ]


# --- keys -----------------------------------------------------------------------------


async def test_api_key_is_shown_once_and_stored_hashed(admin, gateway: Running, gateway_id):
    created = await create(admin, f"/gateways/{gateway_id}/keys", {"name": "ci"})
    key = created["key"]
    assert key.startswith("tgk_") and len(key) >= 4 + 43  # 32 random bytes, base64url
    assert created["prefix"] == key[:8] + "…"
    listed = await admin.get(f"/gateways/{gateway_id}/keys")
    fetched = await admin.get(f"/gateways/{gateway_id}/keys/{created['id']}")
    for text in (listed.text, fetched.text):
        assert key not in text and "key_hash" not in text and '"key"' not in text
    stored = gateway.catalog.snapshot.api_keys[created["id"]]
    assert stored.key_hash == hash_api_key(key)
    assert key not in repr(stored)


async def test_api_key_can_be_deactivated_and_deleted(admin, gateway: Running, gateway_id):
    created = await create(admin, f"/gateways/{gateway_id}/keys", {"name": "ci"})
    off = await admin.put(f"/gateways/{gateway_id}/keys/{created['id']}", json={"active": False})
    assert off.json()["active"] is False
    assert gateway.catalog.snapshot.api_keys[created["id"]].active is False
    assert (await admin.delete(f"/gateways/{gateway_id}/keys/{created['id']}")).status_code == 204
    assert created["id"] not in gateway.catalog.snapshot.api_keys


async def test_api_key_hash_cannot_be_set(admin, gateway_id):
    response = await admin.post(
        f"/gateways/{gateway_id}/keys", json={"name": "k", "key_hash": "00"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [{"loc": "key_hash", "msg": "unknown field"}]


async def test_api_key_expiry_needs_a_time_zone(admin, gateway_id):
    response = await admin.post(
        f"/gateways/{gateway_id}/keys", json={"name": "k", "expires_at": "2030-01-01T00:00:00"}
    )
    assert response.status_code == 422
    ok = await admin.post(
        f"/gateways/{gateway_id}/keys",
        json={"name": "k", "expires_at": "2030-01-01T00:00:00+01:00"},
    )
    assert ok.json()["expires_at"] == "2029-12-31T23:00:00Z"


# --- secrets never in logs ------------------------------------------------------------


async def test_secrets_never_logged(admin, gateway_id, guide_upstream, caplog):
    caplog.set_level(logging.DEBUG)
    upstream = await create(admin, f"/gateways/{gateway_id}/upstreams", guide_upstream)
    await admin.put(f"/gateways/{gateway_id}/upstreams/{upstream['id']}", json=upstream)
    key = (await create(admin, f"/gateways/{gateway_id}/keys", {"name": "k"}))["key"]
    assert "upstream created" in caplog.text
    for secret in ("your-openai-key", "your-anthropic-key", key):
        assert secret not in caplog.text


# --- auth -----------------------------------------------------------------------------


async def test_admin_token_is_required_when_configured():
    async with open_gateway(admin_token="s3cret-admin-token") as gw:
        async with httpx2.AsyncClient(base_url=gw.admin_url) as client:
            missing = await client.get("/api/v1/gateways")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = await client.get("/api/v1/gateways", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = await client.get(
                "/api/v1/gateways", headers={"Authorization": "Bearer s3cret-admin-token"}
            )
            assert right.status_code == 200
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).json()["ready"] is True


async def test_health_endpoints_on_both_listeners(gateway: Running):
    async with httpx2.AsyncClient() as client:
        for base in (gateway.admin_url, gateway.proxy_url):
            assert (await client.get(base + "/healthz")).json() == {"status": "ok"}
            ready = await client.get(base + "/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True


async def test_new_targets_cannot_bring_their_own_ids(admin, gateway_id, guide_upstream):
    first = await create(admin, f"/gateways/{gateway_id}/upstreams", guide_upstream)
    stolen = json.loads(json.dumps(guide_upstream))
    stolen["name"] = "other"
    stolen["targets"][0]["id"] = first["targets"][0]["id"]
    response = await admin.post(f"/gateways/{gateway_id}/upstreams", json=stolen)
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"loc": "targets[0].id", "msg": "is assigned by the gateway; leave it out"}
    ]


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        ("Bearer sk-live-1234 ", "must not start or end with whitespace"),
        ("Bearer café", "must be printable ASCII"),
    ],
)
async def test_credentials_that_no_http_client_could_send_are_refused(
    admin, gateway_id, guide_upstream, value, msg
):
    guide_upstream["targets"][0]["credentials"]["header_value"] = value
    response = await admin.post(f"/gateways/{gateway_id}/upstreams", json=guide_upstream)
    assert response.status_code == 422
    detail = response.json()["error"]["details"][0]
    assert detail["loc"] == "targets[0].credentials.header_value" and detail["msg"].startswith(msg)


async def test_an_ambiguous_mask_must_be_replaced_by_the_secret(admin, gateway, gateway_id):
    body = {
        "name": "short-keys",
        "targets": [
            {
                "provider": "openai",
                "credentials": {"header_name": "Authorization", "header_value": "k1"},
            },
            {
                "provider": "openai",
                "base_url": "http://127.0.0.1:1",
                "credentials": {"header_name": "Authorization", "header_value": "k2"},
            },
        ],
    }
    created = await create(admin, f"/gateways/{gateway_id}/upstreams", body)
    assert [t["credentials"]["header_value"] for t in created["targets"]] == ["…", "…"]
    resent = {"targets": [dict(t, id=None) for t in created["targets"]]}  # ids dropped
    response = await admin.put(f"/gateways/{gateway_id}/upstreams/{created['id']}", json=resent)
    assert response.status_code == 422
    assert "matches no single stored secret" in response.json()["error"]["details"][0]["msg"]
    with_ids = await admin.put(
        f"/gateways/{gateway_id}/upstreams/{created['id']}", json={"targets": created["targets"]}
    )
    assert with_ids.status_code == 200
    stored = gateway.catalog.snapshot.upstreams[created["id"]]
    assert [t.credentials.header_value for t in stored.targets] == ["k1", "k2"]


async def test_rules_with_and_without_a_trailing_slash_conflict(admin, gateway_id, guide_upstream):
    upstream = await create(admin, f"/gateways/{gateway_id}/upstreams", guide_upstream)
    service, _ = await service_and_rule(admin, gateway_id, upstream["id"])
    response = await admin.post(
        f"/gateways/{gateway_id}/rules",
        json={"name": "again", "path": "/v1/", "service_id": service["id"]},
    )
    assert response.status_code == 409
