"""Secrets are masked by value, not by the look of a header's name (issue 9, item 8)."""

from __future__ import annotations

import copy

from trio_gateway.config import secrets

#: Credentials no name pattern recognises: each must come back masked.
SECRET_HEADERS = {
    "X-Auth-Key": "auth-key-0123456789abcdef",
    "Ocp-Apim-Subscription-Key": "0123456789abcdef0123456789abcdef",
    "X-Access-Key": "access-0123456789",
    "Key": "k-0123456789abcdef",
    "X-Credential": "cred-0123456789abcdef",
    "X-Private-Key": "private-0123456789abcdef",
    "X-Signature": "sig-0123456789abcdef",
    "X-Session": "session-0123456789abcdef",
    "X-Auth": "short",
}
PUBLIC_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "tools-2024-04-04",
    "OpenAI-Organization": "org-public",
}
USERINFO = "gateway-user:s3cret-passw0rd"


def upstream_body(guide_upstream: dict) -> dict:
    body = copy.deepcopy(guide_upstream)
    body["targets"][0]["headers"] = {**SECRET_HEADERS, **PUBLIC_HEADERS}
    body["targets"][0]["base_url"] = f"https://{USERINFO}@llm.example.com/proxy"
    body["health_checks"]["headers"] = {"X-Probe-Token": "probe-0123456789abcdef"}
    return body


async def test_every_custom_header_credential_and_userinfo_is_masked(
    admin, gateway_id, guide_upstream
):
    body = upstream_body(guide_upstream)
    created = await admin.post(f"/gateways/{gateway_id}/upstreams", json=body)
    assert created.status_code == 201, created.text
    fetched = await admin.get(f"/gateways/{gateway_id}/upstreams/{created.json()['id']}")
    listed = await admin.get(f"/gateways/{gateway_id}/upstreams")
    for response in (created, fetched, listed):
        for value in (*SECRET_HEADERS.values(), "s3cret-passw0rd", "gateway-user"):
            assert value not in response.text, value
        assert "probe-0123456789abcdef" not in response.text
    shown = fetched.json()
    headers = shown["targets"][0]["headers"]
    for name, value in SECRET_HEADERS.items():
        assert headers[name] == secrets.mask(value) and secrets.MASK in headers[name]
    for name, value in PUBLIC_HEADERS.items():
        assert headers[name] == value
    assert shown["targets"][0]["base_url"] == "https://…@llm.example.com/proxy"
    assert shown["health_checks"]["headers"] == {"X-Probe-Token": "…cdef"}
    assert shown["targets"][0]["credentials"]["header_value"] == "Bearer …-key"
    assert shown["targets"][1]["credentials"]["header_value"] == "…-key"


async def test_a_masked_value_sent_back_keeps_the_stored_secret(
    admin, gateway, gateway_id, guide_upstream
):
    created = await admin.post(
        f"/gateways/{gateway_id}/upstreams", json=upstream_body(guide_upstream)
    )
    upstream_id = created.json()["id"]
    shown = (await admin.get(f"/gateways/{gateway_id}/upstreams/{upstream_id}")).json()
    shown["targets"][0]["weight"] = 70
    put = await admin.put(f"/gateways/{gateway_id}/upstreams/{upstream_id}", json=shown)
    assert put.status_code == 200, put.text
    stored = gateway.catalog.snapshot.upstreams[upstream_id]
    assert stored.targets[0].weight == 70
    assert dict(stored.targets[0].headers) == {**SECRET_HEADERS, **PUBLIC_HEADERS}
    assert stored.targets[0].base_url == f"https://{USERINFO}@llm.example.com/proxy"
    assert dict(stored.health_checks.headers) == {"X-Probe-Token": "probe-0123456789abcdef"}
    assert stored.targets[0].credentials.header_value == "Bearer your-openai-key"

    # Without ids, the targets are matched by endpoint and the secrets still restored.
    for t in shown["targets"]:
        del t["id"]
    again = await admin.put(f"/gateways/{gateway_id}/upstreams/{upstream_id}", json=shown)
    assert again.status_code == 200, again.text
    restored = gateway.catalog.snapshot.upstreams[upstream_id]
    assert restored.targets[0].base_url == stored.targets[0].base_url
    assert [t.id for t in restored.targets] == [t.id for t in stored.targets]


async def test_a_masked_url_that_matches_no_stored_one_is_refused(
    admin, gateway_id, guide_upstream
):
    created = await admin.post(
        f"/gateways/{gateway_id}/upstreams", json=upstream_body(guide_upstream)
    )
    shown = created.json()
    shown["targets"][0]["base_url"] = "https://…@elsewhere.example.com"
    put = await admin.put(f"/gateways/{gateway_id}/upstreams/{shown['id']}", json=shown)
    assert put.status_code == 422
    assert put.json()["error"]["details"] == [
        {
            "loc": "targets[0].base_url",
            "msg": "is a masked value that matches no single stored secret; send the full value",
        }
    ]


def test_mask_url_keeps_everything_but_the_userinfo():
    assert secrets.mask_url("https://u:p@h:8443/a?b") == "https://…@h:8443/a?b"
    assert secrets.mask_url("https://h/a@b") == "https://h/a@b"  # an @ in the path is no userinfo
    assert secrets.mask_url("http://h") == "http://h"
