"""The configuration file: validation with API-style paths, env substitution, apply by name."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx2
import pytest
import yaml

from trio_gateway.config.catalog import Catalog
from trio_gateway.config.file import apply, load_file, parse
from trio_gateway.config.secrets import hash_api_key
from trio_gateway.errors import ValidationFailed
from trio_gateway.store import MemoryStore
from trio_gateway.testing.harness import open_gateway

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def quickstart_text() -> str:
    """The quickstart, its fake providers on free ports (a developer may be running it)."""
    text = (EXAMPLES / "quickstart.yaml").read_text()
    return text.replace("listen: 127.0.0.1:9101", "listen: 127.0.0.1:0").replace(
        "listen: 127.0.0.1:9102", "listen: 127.0.0.1:0"
    )


def quickstart() -> dict:
    return yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())


def problems_of(raw: dict, environ: dict | None = None) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        parse(raw, environ or {})
    return {p.loc: p.msg for p in info.value.details}


def test_quickstart_example_is_valid():
    declarations = load_file(EXAMPLES / "quickstart.yaml", environ={})
    assert [g.name for g in declarations.gateways] == ["quickstart", "guide"]
    assert declarations.server["base_url_overrides"] == {
        "https://api.openai.com": "fake-openai",
        "https://api.anthropic.com": "fake-anthropic",
    }


def test_errors_carry_the_path_of_the_file():
    raw = quickstart()
    gateway = raw["gateways"][0]
    gateway["upstreams"][0]["targets"][1]["weight"] = 101
    gateway["upstreams"][0]["algorithm"] = "fastest"
    gateway["services"][0]["upstream"] = "missing"
    gateway["rules"][0]["methdos"] = ["GET"]
    gateway["api_keys"][0]["key"] = "short"
    raw["gatways"] = []
    found = problems_of(raw)
    assert found["gateways[0].upstreams[0].targets[1].weight"] == "must be between 1 and 100"
    assert "must be one of" in found["gateways[0].upstreams[0].algorithm"]
    assert "no upstream named 'missing'" in found["gateways[0].services[0].upstream"]
    assert found["gateways[0].rules[0].methdos"] == "unknown field"
    assert "at least 16" in found["gateways[0].api_keys[0].key"]
    assert found["gatways"] == "unknown field"


def test_default_model_rule_applies_in_files_too():
    raw = quickstart()
    raw["gateways"][0]["upstreams"][0]["targets"][0]["default_model"] = "gpt-5"
    assert "gateways[0].upstreams[0].targets[0].default_model" in problems_of(raw)


def test_duplicate_names_in_a_file():
    raw = quickstart()
    raw["gateways"][0]["upstreams"].append(copy.deepcopy(raw["gateways"][0]["upstreams"][0]))
    raw["gateways"].append({"name": "quickstart"})
    found = problems_of(raw)
    assert "gateways[0].upstreams[1].name" in found
    assert found["gateways[2].name"] == "another gateway in this file has this name"


def test_environment_substitution():
    raw = {
        "gateways": [{"name": "${NAME}", "subdomain": "${SUB:-fallback}", "status": "$${literal}"}]
    }
    found = problems_of(raw, {})
    assert found["gateways[0].name"] == "environment variable NAME is not set"
    declarations = parse(
        {"gateways": [{"name": "${NAME}", "subdomain": "${SUB:-fallback}"}]}, {"NAME": "from-env"}
    )
    assert declarations.gateways[0].fields == {"name": "from-env", "subdomain": "fallback"}
    literal = parse({"server": {"admin_token": "a$$b"}}, {})
    assert literal.server == {"admin_token": "a$b"}


def test_invalid_yaml_points_at_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("gateways:\n  - name: [unclosed\n")
    with pytest.raises(ValidationFailed) as info:
        load_file(path, {})
    assert "line" in info.value.message


async def test_apply_creates_then_leaves_unchanged():
    catalog = Catalog(MemoryStore(), (await Catalog.load(MemoryStore())).snapshot)
    declarations = parse(quickstart(), {})
    first = await catalog.write(lambda d: apply(d, declarations))
    assert len(first.created) == 6 and not first.updated
    generation = catalog.snapshot.generation
    second = await catalog.write(lambda d: apply(d, declarations))
    assert not second.created and not second.updated and second.unchanged == 6
    assert catalog.snapshot.generation == generation  # nothing was written


async def test_apply_updates_by_name_and_keeps_ids():
    catalog = await Catalog.load(MemoryStore())
    raw = quickstart()
    await catalog.write(lambda d: apply(d, parse(raw, {})))
    before = next(iter(catalog.snapshot.upstreams.values()))
    raw["gateways"][0]["upstreams"][0]["targets"][0]["weight"] = 70
    raw["gateways"][0]["api_keys"][0]["key"] = "tgk_a_brand_new_declared_key"
    report = await catalog.write(lambda d: apply(d, parse(raw, {})))
    assert sorted(report.updated) == ["API key 'quickstart'", "upstream 'quickstart-upstream'"]
    after = catalog.snapshot.upstreams[before.id]
    assert after.targets[0].weight == 70
    assert [t.id for t in after.targets] == [t.id for t in before.targets]
    key = next(iter(catalog.snapshot.api_keys.values()))
    assert key.key_hash == hash_api_key("tgk_a_brand_new_declared_key")


async def test_file_and_api_together(tmp_path):
    """The file wins for what it names; what only the API made is left alone."""
    config = tmp_path / "gateway.yaml"
    config.write_text(quickstart_text())
    async with open_gateway(config, data_dir=tmp_path / "data", environ={}) as gw:
        async with httpx2.AsyncClient(base_url=gw.admin_url + "/api/v1") as admin:
            gid = next(iter(gw.catalog.snapshot.gateways))
            upstreams = (await admin.get(f"/gateways/{gid}/upstreams")).json()["items"]
            declared = upstreams[0]
            await admin.put(
                f"/gateways/{gid}/upstreams/{declared['id']}", json={"algorithm": "random"}
            )
            extra = await admin.post(
                f"/gateways/{gid}/upstreams",
                json={"name": "api-made", "targets": [{"provider": "openai"}]},
            )
            assert extra.status_code == 201
    async with open_gateway(config, data_dir=tmp_path / "data", environ={}) as gw:
        async with httpx2.AsyncClient(base_url=gw.admin_url + "/api/v1") as admin:
            items = (await admin.get(f"/gateways/{gid}/upstreams")).json()["items"]
            by_name = {u["name"]: u for u in items}
            assert by_name["quickstart-upstream"]["algorithm"] == "round-robin"
            assert by_name["quickstart-upstream"]["id"] == declared["id"]
            assert "api-made" in by_name
        assert gw.report.updated == ("upstream 'quickstart-upstream'",)


def test_target_ids_and_keyless_api_keys_are_refused_in_files():
    raw = quickstart()
    raw["gateways"][0]["upstreams"][0]["targets"][0]["id"] = "mine"
    del raw["gateways"][0]["api_keys"][0]["key"]
    found = problems_of(raw)
    assert (
        found["gateways[0].upstreams[0].targets[0].id"]
        == "is assigned by the gateway; leave it out"
    )
    assert "is required in a file" in found["gateways[0].api_keys[0].key"]


def test_server_admin_hosts_and_base_url_overrides_are_checked():
    raw = {
        "server": {
            "admin_hosts": ["admin.internal", "bad host", "x.example:8443"],
            "base_url_overrides": {
                "https://api.openai.com/": "fake-openai",
                "https://api.anthropic.com": "nowhere",
                "ftp://x": "http://127.0.0.1:1",
            },
        },
        "fake_providers": [{"name": "fake-openai"}],
    }
    found = problems_of(raw)
    assert found["server.admin_hosts[1]"] == "must be a host name, optionally with :port"
    assert (
        "must be an http(s) URL" in found["server.base_url_overrides['https://api.anthropic.com']"]
    )
    assert "must be an http(s) URL" in found["server.base_url_overrides['ftp://x']"]
    assert len(found) == 3
    raw["server"] = {
        "admin_hosts": ["Admin.Internal"],
        "base_url_overrides": {"https://api.openai.com/": "fake-openai"},
    }
    server = parse(raw, {}).server
    assert server == {
        "admin_hosts": ("admin.internal",),
        "base_url_overrides": {"https://api.openai.com": "fake-openai"},
    }
