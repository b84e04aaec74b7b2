"""``trio-gateway export`` and ``import``: the whole configuration as one YAML file.

The file has the configuration-file format (docs/configuration.md): gateways,
each with its ``upstreams``, ``services`` (``upstream: <name>``), ``rules``
(``service: <name>``) and ``api_keys``. An export adds what makes an import
restore the *same* installation rather than a look-alike:

* every entity's ``id`` (and every target's) and its timestamps, so the ids that
  admin clients hold stay valid;
* API keys as ``key_hash`` and ``prefix``: keys are stored hashed, so an export
  never knows them, and the clients' keys keep working after an import;
* secrets (credentials, and headers whose names look like credentials) as
  ``${VAR}`` references, listed at the top of the file, unless asked for the
  values themselves (``--include-secrets``). Every other ``$`` is written ``$$``,
  as the file format wants.

:func:`restore` (the import) is pure: it validates the file with the admin API's
rules, then writes each entity with its id through :meth:`Draft.restore`. An
entity whose id exists is overwritten, one that is new is created, entities the
file does not name are left alone, and the whole import is one commit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from trio_gateway import serde
from trio_gateway.config import secrets
from trio_gateway.config.catalog import Draft, Snapshot
from trio_gateway.config.file import GATEWAY_LISTS, REFERENCES, ApplyReport
from trio_gateway.config.models import Entity, Gateway, Kind
from trio_gateway.errors import Problem, ValidationFailed

#: Fields the nesting of the file implies, or that references by name replace.
_IMPLIED = frozenset({"gateway_id", "upstream_id", "service_id"})


def _by_age(entities: Iterator[Any]) -> list[Any]:
    return sorted(entities, key=lambda e: (e.created_at is None, e.created_at, e.id))


class _Secrets:
    """Turns secret values into ``${VAR}`` references (or keeps them), naming each once."""

    def __init__(self, include: bool) -> None:
        self.include = include
        self.names: dict[str, str] = {}

    def __call__(self, value: str, *where: str) -> str:
        if self.include:
            return _escape(value)
        base = "TG_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "_", w).strip("_").upper() for w in where)
        name, n = base, 1
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names[name] = "/".join(where)
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9-]*) \S", value)
        prefix = f"{scheme.group(1)} " if scheme and scheme.group(1).lower() == "bearer" else ""
        return f"{prefix}${{{name}}}"


def _escape(value: Any) -> Any:
    """Every ``$`` doubled, so that the import's ``${VAR}`` substitution gives it back."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def _headers(headers: Mapping[str, str], hide: _Secrets, *where: str) -> dict[str, str]:
    return {
        name: hide(value, *where, "header", name)
        if secrets.is_secret_header(name)
        else _escape(value)
        for name, value in headers.items()
    }


def export(snapshot: Snapshot, *, include_secrets: bool = False) -> tuple[dict[str, Any], dict]:
    """The whole configuration in file form, and the ``${VAR}`` names it uses (name -> where)."""
    hide = _Secrets(include_secrets)
    gateways = []
    for gateway in _by_age(iter(snapshot.gateways.values())):
        item = _escape(serde.STORE.unstructure(gateway))
        names = {kind: {} for kind in Kind}
        for kind in Kind:
            if kind is not Kind.GATEWAY:
                names[kind] = {e.id: e.name for e in snapshot.in_gateway(kind, gateway.id)}
        for list_name, kind in GATEWAY_LISTS.items():
            entries = []
            for entity in _by_age(snapshot.in_gateway(kind, gateway.id)):
                raw = serde.STORE.unstructure(entity)
                secret_fields = _secret_fields(raw, hide, gateway.name, entity.name)
                entry = {k: _escape(v) for k, v in raw.items() if k not in _IMPLIED}
                entry.update(secret_fields)
                if kind in REFERENCES:
                    ref_field, id_field, target_kind = REFERENCES[kind]
                    entry[ref_field] = _escape(names[target_kind][raw[id_field]])
                entries.append(entry)
            item[list_name] = entries
        gateways.append(item)
    return {"gateways": gateways}, hide.names


def _secret_fields(raw: dict[str, Any], hide: _Secrets, *where: str) -> dict[str, Any]:
    """The fields of ``raw`` (an unstructured entity) that hold secrets, hidden."""
    out: dict[str, Any] = {}
    if "targets" in raw:
        targets = []
        for i, target in enumerate(raw["targets"]):
            target = _escape(target)
            plain = raw["targets"][i]
            if plain.get("credentials"):
                target["credentials"] = {
                    **target["credentials"],
                    "header_value": hide(
                        plain["credentials"]["header_value"], *where, f"target{i + 1}", "credential"
                    ),
                }
            if plain.get("headers"):
                target["headers"] = _headers(plain["headers"], hide, *where, f"target{i + 1}")
            targets.append(target)
        out["targets"] = targets
    checks = raw.get("health_checks")
    if checks and checks.get("headers"):
        out["health_checks"] = {
            **_escape(checks),
            "headers": _headers(checks["headers"], hide, *where, "health"),
        }
    return out


# --- import ------------------------------------------------------------------------


def restore(draft: Draft, data: Any) -> ApplyReport:
    """Write every entity of an exported file (already ``${VAR}``-substituted) into ``draft``.

    Pure. Raises :class:`ValidationFailed` naming every problem, before writing anything.
    """
    problems: list[Problem] = []
    if not isinstance(data, dict) or not isinstance(data.get("gateways", []), list):
        raise ValidationFailed.single("$", "the file must be a mapping with a 'gateways' list")
    for key in sorted(data.keys() - {"gateways"}):
        problems.append(Problem(str(key), "unknown field (an import takes gateways only)"))
    entities: list[Entity] = []
    for i, item in enumerate(data.get("gateways") or []):
        entities.extend(_gateway_entities(item, f"gateways[{i}]", problems))
    if problems:
        raise ValidationFailed.of(problems)

    created: list[str] = []
    updated: list[str] = []
    unchanged = 0
    for entity in entities:
        kind = Kind.of(entity)
        old = draft.base.get(kind, entity.id)
        stamped = entity
        if entity.created_at is None or entity.updated_at is None:
            stamped = _stamp(entity, draft, old)
        if draft.restore(stamped) is old and old is not None:
            unchanged += 1
        else:
            (updated if old is not None else created).append(f"{kind.label} {entity.name!r}")
    return ApplyReport(created=tuple(created), updated=tuple(updated), unchanged=unchanged)


def _stamp(entity: Any, draft: Draft, old: Any) -> Any:
    return attrs.evolve(
        entity,
        created_at=entity.created_at or (old.created_at if old else draft.now),
        updated_at=entity.updated_at or draft.now,
    )


def _gateway_entities(item: Any, loc: str, problems: list[Problem]) -> list[Entity]:
    if not isinstance(item, dict):
        problems.append(Problem(loc, "must be a mapping"))
        return []
    fields = {k: v for k, v in item.items() if k not in GATEWAY_LISTS}
    gateway = _structure(Kind.GATEWAY, fields, loc, problems)
    if not isinstance(gateway, Gateway):
        return []
    found: list[Entity] = [gateway]
    ids_by_name: dict[Kind, dict[str, str]] = {kind: {} for kind in Kind}
    for list_name, kind in GATEWAY_LISTS.items():
        entries = item.get(list_name) or []
        if not isinstance(entries, list):
            problems.append(Problem(f"{loc}.{list_name}", "must be a list"))
            continue
        for j, entry in enumerate(entries):
            entry_loc = f"{loc}.{list_name}[{j}]"
            if not isinstance(entry, dict):
                problems.append(Problem(entry_loc, "must be a mapping"))
                continue
            fields = {**entry, "gateway_id": gateway.id}
            if kind in REFERENCES:
                ref_field, id_field, target_kind = REFERENCES[kind]
                if ref_field in fields:
                    ref = fields.pop(ref_field)
                    if ref not in ids_by_name[target_kind]:
                        problems.append(
                            Problem(
                                f"{entry_loc}.{ref_field}",
                                f"no {target_kind.label} named {ref!r} in this gateway of the file",
                            )
                        )
                        continue
                    fields[id_field] = ids_by_name[target_kind][ref]
            if kind is Kind.API_KEY and "key" in fields:
                key = fields.pop("key")
                if isinstance(key, str):
                    fields["key_hash"] = secrets.hash_api_key(key)
                    fields["prefix"] = secrets.key_prefix(key)
            entity = _structure(kind, fields, entry_loc, problems)
            if entity is not None:
                ids_by_name[kind][entity.name] = entity.id
                found.append(entity)
    return found


def _structure(kind: Kind, fields: dict[str, Any], loc: str, problems: list[Problem]) -> Any:
    if not isinstance(fields.get("id"), str) or not fields["id"]:
        problems.append(
            Problem(
                f"{loc}.id",
                "is required in an import (it takes what 'trio-gateway export' writes; "
                "apply a hand-written file with 'serve --config')",
            )
        )
        return None
    for i, target in enumerate(fields.get("targets") or []) if kind is Kind.UPSTREAM else ():
        if isinstance(target, dict) and not target.get("id"):
            problems.append(Problem(f"{loc}.targets[{i}].id", "is required in an import"))
            return None
    if kind is Kind.API_KEY and not fields.get("key_hash"):
        problems.append(Problem(f"{loc}.key_hash", "is required in an import (or a 'key')"))
        return None
    try:
        return serde.structure(fields, kind.model, converter=serde.STORE, loc=loc)
    except ValidationFailed as exc:
        problems.extend(exc.details)
        return None
