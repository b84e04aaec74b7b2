"""export/import: the whole configuration as a YAML file, and SQLite -> PostgreSQL in two commands."""

from __future__ import annotations

import os

import pytest
import trio
import yaml

from tests.pg import Schema
from trio_gateway import cli
from trio_gateway.config import transfer
from trio_gateway.config.catalog import Catalog, Draft, Snapshot, utcnow
from trio_gateway.config.file import substitute
from trio_gateway.config.models import Kind
from trio_gateway.errors import Conflict, ValidationFailed
from trio_gateway.store import MemoryStore, SqliteStore
from trio_gateway.store.postgres import PostgresStore

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"


async def populated(store) -> tuple[Catalog, str]:
    """A configuration with every kind, secrets, and a ``$`` in a plain value."""
    catalog = await Catalog.load(store)
    gateway = await catalog.create(Kind.GATEWAY, {"name": "prod", "subdomain": "prod"})
    upstream = await catalog.create(
        Kind.UPSTREAM,
        {
            "name": "chat",
            "targets": [
                {
                    "provider": "openai",
                    "credentials": {
                        "header_name": "Authorization",
                        "header_value": f"Bearer {SECRET}",
                    },
                    "headers": {"X-Api-Key": "hdr-secret-0123456789", "X-Title": "cost$center"},
                    "models": ["gpt-4o-mini"],
                },
                {
                    "provider": "anthropic",
                    "credentials": {"header_value": "sk-ant-0123456789abcdef"},
                    "priority": 2,
                },
            ],
            "health_checks": {"passive": True, "threshold": 3, "interval": 60},
        },
        gateway.id,
    )
    service = await catalog.create(
        Kind.SERVICE, {"name": "ai", "upstream_id": upstream.id}, gateway.id
    )
    await catalog.create(
        Kind.RULE, {"name": "v1", "path": "/v1", "service_id": service.id}, gateway.id
    )
    _, key = await catalog.create_api_key(gateway.id, {"name": "app"})
    await catalog.create(Kind.GATEWAY, {"name": "staging", "status": "inactive"})
    return catalog, key


def as_file(data: dict) -> object:
    """What an import reads: the YAML text, parsed."""
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


async def test_export_then_import_restores_the_same_installation():
    source, _ = await populated(MemoryStore())
    data, names = transfer.export(source.snapshot)
    text = yaml.safe_dump(data)
    assert SECRET not in text and "hdr-secret" not in text and "sk-ant" not in text
    assert "cost$$center" in text  # a literal $ survives the import's substitution
    assert set(names) == {
        "TG_PROD_CHAT_TARGET1_CREDENTIAL",
        "TG_PROD_CHAT_TARGET1_HEADER_X_API_KEY",
        "TG_PROD_CHAT_TARGET2_CREDENTIAL",
    }
    env = {
        "TG_PROD_CHAT_TARGET1_CREDENTIAL": SECRET,  # the file keeps "Bearer " itself
        "TG_PROD_CHAT_TARGET1_HEADER_X_API_KEY": "hdr-secret-0123456789",
        "TG_PROD_CHAT_TARGET2_CREDENTIAL": "sk-ant-0123456789abcdef",
    }
    target = await Catalog.load(MemoryStore())
    report = await target.write(lambda d: transfer.restore(d, substitute(as_file(data), env)))
    assert len(report.created) == 6 and not report.updated
    assert target.snapshot.entities == source.snapshot.entities
    # Again: nothing to do.
    again = await target.write(lambda d: transfer.restore(d, substitute(as_file(data), env)))
    assert again.unchanged == 6 and not again.created and not again.updated


async def test_include_secrets_needs_no_environment():
    source, _ = await populated(MemoryStore())
    data, names = transfer.export(source.snapshot, include_secrets=True)
    assert names == {} and SECRET in yaml.safe_dump(data)
    draft = Draft(Snapshot.empty(), utcnow())
    transfer.restore(draft, substitute(as_file(data), {}))
    assert draft.snapshot().entities == source.snapshot.entities


async def test_an_import_names_every_problem_before_writing_anything():
    source, _ = await populated(MemoryStore())
    data, _ = transfer.export(source.snapshot)
    with pytest.raises(ValidationFailed) as info:
        substitute(as_file(data), {})
    assert "TG_PROD_CHAT_TARGET1_CREDENTIAL is not set" in info.value.message
    assert info.value.details[0].loc.startswith("gateways[0].upstreams[0].targets[0]")

    broken, _ = transfer.export(source.snapshot, include_secrets=True)
    del broken["gateways"][0]["upstreams"][0]["id"]
    broken["gateways"][0]["rules"][0]["service"] = "missing"
    broken["gateways"][0]["upstreams"][0]["targets"][0]["weight"] = 0
    target = await Catalog.load(MemoryStore())
    with pytest.raises(ValidationFailed) as info:
        await target.write(lambda d: transfer.restore(d, as_file(broken)))
    locs = {p.loc for p in info.value.details}
    assert "gateways[0].upstreams[0].id" in locs
    assert "gateways[0].rules[0].service" in locs
    assert target.snapshot.gateways == {}


async def test_an_import_does_not_take_a_name_another_entity_holds():
    source, _ = await populated(MemoryStore())
    data, _ = transfer.export(source.snapshot, include_secrets=True)
    target = await Catalog.load(MemoryStore())
    await target.create(Kind.GATEWAY, {"name": "prod"})
    with pytest.raises(Conflict, match="named 'prod' already exists"):
        await target.write(lambda d: transfer.restore(d, as_file(data)))


def test_sqlite_to_postgresql_in_two_commands(tmp_path, postgres: Schema, capsys, monkeypatch):
    data_dir = tmp_path / "data"

    async def fill() -> dict:
        async with SqliteStore.open(data_dir) as store:
            catalog, _ = await populated(store)
            return catalog.snapshot.entities

    before = trio.run(fill)
    out = tmp_path / "gateway.yaml"
    assert cli.main(["export", "--data-dir", str(data_dir), "-o", str(out)]) == 0
    assert os.stat(out).st_mode & 0o077 == 0o044
    header = out.read_text().split("gateways:")[0]
    assert "TG_PROD_CHAT_TARGET1_CREDENTIAL" in header

    assert cli.main(["import", str(out), "--store", postgres.url]) == 2  # secrets unset
    assert "TG_PROD_CHAT_TARGET1_CREDENTIAL is not set" in capsys.readouterr().err
    monkeypatch.setenv("TG_PROD_CHAT_TARGET1_CREDENTIAL", SECRET)
    monkeypatch.setenv("TG_PROD_CHAT_TARGET1_HEADER_X_API_KEY", "hdr-secret-0123456789")
    monkeypatch.setenv("TG_PROD_CHAT_TARGET2_CREDENTIAL", "sk-ant-0123456789abcdef")
    assert cli.main(["import", str(out), "--store", postgres.url]) == 0
    assert "6 created" in capsys.readouterr().out

    async def read_back() -> dict:
        async with PostgresStore.open(postgres.url) as store:
            return (await Catalog.load(store)).snapshot.entities

    assert trio.run(read_back) == before


def test_migrate_applies_the_migrations_once_and_says_so(postgres: Schema, capsys):
    from trio_gateway.store.postgres import SCHEMA_VERSION

    assert cli.main(["migrate", "--store", postgres.url]) == 0
    out = capsys.readouterr().out
    assert f"schema version {SCHEMA_VERSION} (migrated from schema version 0)" in out
    assert cli.main(["migrate", "--store", postgres.url]) == 0
    assert "already up to date" in capsys.readouterr().out
    steps = postgres.query("SELECT step FROM tg_migrations ORDER BY step")
    assert steps == [(n,) for n in range(1, SCHEMA_VERSION + 1)]


def test_an_unreachable_database_is_a_clear_error(capsys):
    url = "postgresql://nobody@127.0.0.1:1/none"
    assert cli.main(["migrate", "--store", url]) == 1
    err = capsys.readouterr().err
    assert "unreachable" in err and "127.0.0.1" in err
