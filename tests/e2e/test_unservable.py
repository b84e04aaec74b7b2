"""No entity the runtime cannot serve gets in, and one that is there anyway freezes nothing.

Issue 9, item 1: an upstream whose target URL the HTTP client refuses used to be
stored, then stopped every later admin write from reaching the proxy, and kept the
gateway from restarting.
"""

from __future__ import annotations

import logging

import attrs
import pytest
import trio

from tests.e2e.conftest import KEY, config, setup, target
from trio_gateway import serde
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.file import apply, parse
from trio_gateway.store import Change, open_store
from trio_gateway.testing.harness import open_gateway

BAD_URLS = [
    ("http://999.999.999.999", "Invalid IPv4 address"),
    ("http://☃.com", "Invalid IDNA hostname"),
    ("http://\uff21.com", "Invalid IDNA hostname"),  # a full-width A
    ("http://example.com/" + "x" * 70_000, "at most 2048 characters"),
]


def two_upstreams(fakes):
    cfg = config(
        [target(fakes[0], default_model="gpt-4o-mini", models=["gpt-4o-mini"])],
        upstream={"name": "main"},
        service={"name": "main"},
    )
    gateway = cfg["gateways"][0]
    gateway["upstreams"][0]["name"] = "main"
    gateway["services"][0]["upstream"] = "main"
    gateway["rules"][0]["service"] = "main"
    gateway["upstreams"].append(
        {"name": "other", "targets": [target(fakes[0], default_model="gpt-4o-mini")]}
    )
    gateway["services"].append({"name": "other", "upstream": "other"})
    gateway["rules"].append({"name": "other", "path": "/other", "service": "other"})
    return cfg


async def key_deletion_deactivation_and_new_key_take_effect_at_once(s) -> None:
    """The rest of item 1's sequence: each admin write is served by the very next request."""
    gid = s.gateway_id
    extra = await s.admin.post(f"/gateways/{gid}/keys", json={"name": "second"})
    assert extra.status_code == 201
    new_key = extra.json()["key"]
    assert (await s.chat()).status_code == 200
    with_new = await s.client.post(
        "/v1/chat/completions",
        headers={"X-Api-Key": new_key},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert with_new.status_code == 200, with_new.text  # a new key works at once

    old = next(
        k for k in (await s.admin.get(f"/gateways/{gid}/keys")).json()["items"] if k["name"] == "k"
    )
    assert (await s.admin.delete(f"/gateways/{gid}/keys/{old['id']}")).status_code == 204
    assert (await s.chat()).status_code == 401  # a deleted key stops at once

    assert (await s.admin.put(f"/gateways/{gid}", json={"status": "inactive"})).status_code == 200
    refused = await s.client.post(
        "/v1/chat/completions",
        headers={"X-Api-Key": new_key},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert refused.status_code == 403  # an inactive gateway stops at once


@pytest.mark.parametrize(("url", "reason"), BAD_URLS, ids=["ipv4", "snowman", "fullwidth", "long"])
async def test_a_target_url_the_client_refuses_is_a_422_and_nothing_freezes(url, reason):
    async with setup([{}], two_upstreams) as s:
        gid = s.gateway_id
        body = {"name": "bad", "targets": [{"provider": "openai", "base_url": url}]}
        created = await s.admin.post(f"/gateways/{gid}/upstreams", json=body)
        assert created.status_code == 422, created.text
        error = created.json()["error"]
        assert error["type"] == "validation_failed"
        assert error["details"][0]["loc"] == "targets[0].base_url"
        assert reason in error["details"][0]["msg"]
        assert len(s.gateway.catalog.snapshot.upstreams) == 2  # nothing stored

        # The same through a PUT that changes an existing target.
        upstream = (await s.admin.get(f"/gateways/{gid}/upstreams/{s.upstream_id}")).json()
        upstream["targets"][0]["base_url"] = url
        replaced = await s.admin.put(f"/gateways/{gid}/upstreams/{s.upstream_id}", json=upstream)
        assert replaced.status_code == 422
        assert replaced.json()["error"]["details"][0]["loc"] == "targets[0].base_url"

        await key_deletion_deactivation_and_new_key_take_effect_at_once(s)


async def test_what_validation_misses_the_runtimes_own_preflight_refuses(monkeypatch):
    """The write is checked by the code that builds it, so it is refused rather than stored."""
    async with setup([{}], two_upstreams) as s:
        monkeypatch.setattr(serde, "url_problem", lambda url: None)  # validation misses it
        body = {"name": "bad", "targets": [{"provider": "openai", "base_url": BAD_URLS[0][0]}]}
        created = await s.admin.post(f"/gateways/{s.gateway_id}/upstreams", json=body)
        assert created.status_code == 422, created.text
        assert created.json()["error"]["details"] == [
            {
                "loc": "targets[0]",
                "msg": "cannot be served: the HTTP client refuses its URL "
                "(Invalid IPv4 address: '999.999.999.999')",
            }
        ]
        assert len(s.gateway.catalog.snapshot.upstreams) == 2
        await key_deletion_deactivation_and_new_key_take_effect_at_once(s)


async def test_an_upstream_the_runtime_cannot_build_is_isolated_and_the_write_says_so(
    monkeypatch, caplog
):
    """If validation ever misses something, the runtime still isolates it (by construction)."""
    async with setup([{}], two_upstreams) as s:
        # Switch off both checks that keep such a URL out: the converter's and the preflight.
        monkeypatch.setattr(serde, "url_problem", lambda url: None)
        monkeypatch.setattr(s.gateway.catalog, "_preflight", None)
        caplog.set_level(logging.ERROR)
        gid = s.gateway_id
        other = next(u for u in s.gateway.catalog.snapshot.upstreams.values() if u.name == "other")
        edited = (await s.admin.get(f"/gateways/{gid}/upstreams/{other.id}")).json()
        edited["targets"][0]["base_url"] = "http://999.999.999.999"
        answer = await s.admin.put(f"/gateways/{gid}/upstreams/{other.id}", json=edited)
        assert answer.status_code == 500
        message = answer.json()["error"]["message"]
        assert "upstream 'other' cannot be served" in message and "Invalid IPv4" in message
        assert "previous configuration still serves" in message

        ready = (await s.admin.get(s.gateway.admin_url + "/readyz")).json()
        assert ready["ready"] is True
        assert [(p["kind"], p["name"], p["serving_previous"]) for p in ready["problems"]] == [
            ("upstream", "other", True)
        ]
        health = (await s.admin.get(f"/gateways/{gid}/upstreams/{other.id}/health")).json()
        assert health["serving"] is True and "Invalid IPv4" in health["problem"]
        assert any("cannot be served" in r.getMessage() for r in caplog.records)

        # Every other change still reaches the proxy, at once.
        await key_deletion_deactivation_and_new_key_take_effect_at_once(s)


async def _store_with_an_unservable_upstream(data_dir, fake_url: str) -> None:
    """A store as a hand edit (or an older version) could leave it: no validation on the way."""
    raw = {
        "gateways": [
            {
                "name": "g",
                "upstreams": [
                    {"name": "good", "targets": [target_for(fake_url)]},
                    {"name": "broken", "targets": [target_for(fake_url)]},
                ],
                "services": [
                    {"name": "good", "upstream": "good"},
                    {"name": "broken", "upstream": "broken"},
                ],
                "rules": [
                    {"name": "good", "path": "/v1", "service": "good"},
                    {"name": "broken", "path": "/broken", "service": "broken"},
                ],
                "api_keys": [{"name": "k", "key": KEY}],
            }
        ]
    }
    async with open_store(data_dir) as store:
        catalog = await Catalog.load(store)
        await catalog.write(lambda draft: apply(draft, parse(raw, {})))
        broken = next(u for u in catalog.snapshot.upstreams.values() if u.name == "broken")
        bad_target = attrs.evolve(broken.targets[0], base_url="http://999.999.999.999")
        await store.commit(Change(puts=[attrs.evolve(broken, targets=(bad_target,))]))


def target_for(url: str) -> dict:
    return {
        "provider": "openai",
        "base_url": url,
        "default_model": "gpt-4o-mini",
        "credentials": {"header_value": "sk-fake-0"},
    }


async def test_a_store_holding_an_unservable_upstream_starts_serves_the_rest_and_reports_it(
    tmp_path, caplog
):
    import httpx2

    from trio_gateway.testing.fake import open_fake_provider

    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with open_fake_provider(name="f", api_key="sk-fake-0") as fake:
            await _store_with_an_unservable_upstream(tmp_path, fake.url)
            async with open_gateway(data_dir=tmp_path) as gw:
                async with httpx2.AsyncClient(
                    base_url=gw.proxy_url, headers={"X-Api-Key": KEY}
                ) as client:
                    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
                    served = await client.post("/v1/chat/completions", json=body)
                    assert served.status_code == 200, served.text
                    refused = await client.post("/broken/v1/chat/completions", json=body)
                async with httpx2.AsyncClient(base_url=gw.admin_url) as admin:
                    ready = (await admin.get("/readyz")).json()
                    broken = next(
                        u for u in gw.catalog.snapshot.upstreams.values() if u.name == "broken"
                    )
                    health = await admin.get(
                        f"/api/v1/gateways/{broken.gateway_id}/upstreams/{broken.id}/health"
                    )
    assert refused.status_code == 404  # /broken/v1/... is no endpoint without strip_path
    assert ready["ready"] is True
    assert [(p["name"], p["serving_previous"]) for p in ready["problems"]] == [("broken", False)]
    assert "Invalid IPv4 address" in ready["problems"][0]["error"]
    assert health.status_code == 200
    assert health.json()["serving"] is False and "Invalid IPv4" in health.json()["problem"]
    logged = [r for r in caplog.records if "cannot be served" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR


async def test_a_service_on_an_unservable_upstream_answers_503_saying_why(tmp_path):
    import httpx2

    from trio_gateway.testing.fake import open_fake_provider

    with trio.fail_after(30):
        async with open_fake_provider(name="f", api_key="sk-fake-0") as fake:
            await _store_with_an_unservable_upstream(tmp_path, fake.url)
            async with open_store(tmp_path) as store:  # route /broken with strip_path
                catalog = await Catalog.load(store)
                rule = next(r for r in catalog.snapshot.rules.values() if r.name == "broken")
                await store.commit(Change(puts=[attrs.evolve(rule, strip_path=True)]))
            async with open_gateway(data_dir=tmp_path) as gw:
                async with httpx2.AsyncClient(
                    base_url=gw.proxy_url, headers={"X-Api-Key": KEY}
                ) as client:
                    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
                    refused = await client.post("/broken/v1/chat/completions", json=body)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "service_unavailable" and refused.headers["retry-after"]
    assert "upstream 'broken' cannot be served" in error["message"]
