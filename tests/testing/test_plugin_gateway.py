"""The shipped gateway_server fixture, used as a user would: the docs' example."""

from __future__ import annotations

import httpx2

from trio_gateway.testing.fake import Fault


async def test_the_backup_answers_when_the_primary_fails(fake_provider, gateway_server):
    primary = await fake_provider(api_key="k1", faults=[Fault.error(503)])
    backup = await fake_provider(api_key="k2")
    targets = [
        {
            "provider": "openai",
            "base_url": fake.url,
            "priority": priority,
            "default_model": "gpt-4o-mini",
            "credentials": {"header_name": "Authorization", "header_value": f"Bearer {key}"},
        }
        for fake, key, priority in ((primary, "k1", 1), (backup, "k2", 2))
    ]
    gw = await gateway_server(
        {
            "gateways": [
                {
                    "name": "test",
                    "upstreams": [{"name": "u", "targets": targets}],
                    "services": [{"name": "s", "upstream": "u"}],
                    "rules": [{"name": "r", "path": "/v1", "service": "s"}],
                    "api_keys": [{"name": "k", "key": "tgk_test_key_0123456789"}],
                }
            ]
        }
    )
    async with httpx2.AsyncClient(base_url=gw.proxy_url) as client:
        response = await client.post(
            "/v1/chat/completions",
            headers={"X-Api-Key": "tgk_test_key_0123456789"},
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status_code == 200
    assert response.headers["x-gateway-attempts"].count("outcome=") == 2
    assert [r.status for r in primary.requests] == [503]
