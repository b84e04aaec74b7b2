"""The declarative configuration file (YAML).

A file declares gateways, each with its upstreams, services, rules and API keys,
plus optional ``server`` settings and ``fake_providers`` to start beside the
gateway. It is validated with the same converter, rules and error paths as the
admin API (``gateways[0].upstreams[1].targets[0].weight``), and applied at every
start **by name**:

* an entity the file names is created if missing and otherwise set to exactly what
  the file says (omitted fields take their defaults, target ids are kept);
* an entity the file does not name is left alone, so API-made entities survive;
* the whole file is applied as one store transaction: all of it or none of it.

Secrets come from the environment: ``${VAR}`` or ``${VAR:-default}`` anywhere in a
string value, ``$$`` for a literal ``$``. Services name their upstream with
``upstream: <name>`` and rules their service with ``service: <name>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from trio_gateway import serde
from trio_gateway.config.catalog import Draft
from trio_gateway.config.models import (
    ApiKey,
    BaseUrl,
    Gateway,
    Kind,
    Upstream,
    check_api_key,
    check_gateway,
    check_upstream,
)
from trio_gateway.errors import Problem, ValidationFailed

#: libyaml's safe loader when PyYAML was built with it: the same documents, ten times
#: faster to read (the start of `serve` waits for the file).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")

SERVER_FIELDS = frozenset({"admin_listen", "proxy_listen", "admin_token", "store"})
#: ``server`` fields that are not strings: a list of host names, a URL mapping.
SERVER_LISTS = frozenset({"admin_hosts"})
SERVER_MAPPINGS = frozenset({"base_url_overrides"})
GATEWAY_LISTS = {
    "upstreams": Kind.UPSTREAM,
    "services": Kind.SERVICE,
    "rules": Kind.RULE,
    "api_keys": Kind.API_KEY,
}
#: In the file, references are by name: the field that names, and the id field it fills.
REFERENCES = {
    Kind.SERVICE: ("upstream", "upstream_id", Kind.UPSTREAM),
    Kind.RULE: ("service", "service_id", Kind.SERVICE),
}
MIN_DECLARED_KEY = 16
_KEY = re.compile(r"^[\x21-\x7e]+$")


@attrs.frozen
class GatewayDecl:
    fields: Mapping[str, Any]
    entities: Mapping[Kind, tuple[Mapping[str, Any], ...]]

    @property
    def name(self) -> str:
        return self.fields["name"]


@attrs.frozen
class Declarations:
    """A validated file: what to apply, and settings for the process."""

    server: Mapping[str, Any] = attrs.field(factory=dict)
    gateways: tuple[GatewayDecl, ...] = ()
    fake_providers: tuple[Any, ...] = ()


@attrs.frozen
class ApplyReport:
    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: int = 0


def load_file(path: Path, environ: Mapping[str, str] | None = None) -> Declarations:
    """Read, substitute and validate ``path``; :class:`ValidationFailed` lists every problem."""
    raw = read_yaml(path)
    return parse(raw if raw is not None else {}, os.environ if environ is None else environ)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``, or :class:`ValidationFailed` saying where it breaks."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationFailed.single("$", f"cannot read {path}: {exc.strerror}") from exc
    try:
        raw = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        raise ValidationFailed.single(
            "$", f"invalid YAML{at}: {getattr(exc, 'problem', exc)}"
        ) from exc
    return raw


def substitute(raw: Any, environ: Mapping[str, str]) -> Any:
    """``raw`` with every ``${VAR}`` replaced; :class:`ValidationFailed` names each unset one."""
    problems: list[Problem] = []
    data = _substitute(raw, "", environ, problems)
    if problems:
        raise ValidationFailed.of(problems)
    return data


def parse(raw: Any, environ: Mapping[str, str]) -> Declarations:
    problems: list[Problem] = []
    data = _substitute(raw, "", environ, problems)
    if problems:  # values that could not be substituted would only add noise below
        raise ValidationFailed.of(problems)
    if not isinstance(data, dict):
        raise ValidationFailed.single("$", "the file must be a mapping with a 'gateways' list")
    for key in sorted(data.keys() - {"server", "gateways", "fake_providers"}):
        problems.append(Problem(str(key), "unknown field"))

    server = data.get("server") or {}
    if not isinstance(server, dict):
        problems.append(Problem("server", "must be a mapping"))
        server = {}
    fakes = tuple(_fake_providers(data, problems))
    for key, value in server.items():
        if key in SERVER_LISTS:
            server[key] = _host_names(value, f"server.{key}", problems)
        elif key in SERVER_MAPPINGS:
            server[key] = _stand_ins(value, {f.name for f in fakes}, problems)
        elif key not in SERVER_FIELDS:
            problems.append(Problem(f"server.{key}", "unknown field"))
        elif value is not None and not isinstance(value, str):
            problems.append(Problem(f"server.{key}", "must be a string"))

    gateways = tuple(
        decl
        for i, item in enumerate(_list(data, "gateways", "", problems))
        if (decl := _gateway(item, f"gateways[{i}]", problems)) is not None
    )
    seen: set[str] = set()
    for i, decl in enumerate(gateways):
        if decl.name in seen:
            problems.append(
                Problem(f"gateways[{i}].name", "another gateway in this file has this name")
            )
        seen.add(decl.name)

    if problems:
        raise ValidationFailed.of(problems)
    return Declarations(
        server={k: v for k, v in server.items() if v not in (None, "")},
        gateways=gateways,
        fake_providers=fakes,
    )


def _host_names(value: Any, loc: str, problems: list[Problem]) -> tuple[str, ...]:
    """``server.admin_hosts``: host names (``name`` or ``name:port``) the admin API answers to."""
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(Problem(loc, "must be a list of host names"))
        return ()
    names = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _HOST.match(name):
            problems.append(Problem(f"{loc}[{i}]", "must be a host name, optionally with :port"))
        else:
            names.append(name.lower())
    return tuple(names)


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$")


def _stand_ins(value: Any, fake_names: set[str], problems: list[Problem]) -> dict[str, str]:
    """``server.base_url_overrides``: base URL -> stand-in base URL or fake provider name."""
    loc = "server.base_url_overrides"
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(Problem(loc, "must be a mapping of base URL to base URL"))
        return {}
    result = {}
    for public, stand_in in value.items():
        where = f"{loc}[{public!r}]"
        try:
            public = serde.structure(public, BaseUrl, loc=where)
            if stand_in not in fake_names:
                stand_in = serde.structure(stand_in, BaseUrl, loc=where)
        except ValidationFailed as exc:
            problems.extend(
                attrs.evolve(p, msg=f"{p.msg} (or, as a stand-in, a fake provider's name)")
                for p in exc.details
            )
            continue
        result[public] = stand_in
    return result


def _gateway(item: Any, loc: str, problems: list[Problem]) -> GatewayDecl | None:
    if not isinstance(item, dict):
        problems.append(Problem(loc, "must be a mapping"))
        return None
    fields = {k: v for k, v in item.items() if k not in GATEWAY_LISTS}
    gateway = _check(fields, Gateway, loc, problems)
    if isinstance(gateway, Gateway):
        problems.extend(attrs.evolve(p, loc=f"{loc}.{p.loc}") for p in check_gateway(gateway))
    entities: dict[Kind, tuple[Mapping[str, Any], ...]] = {}
    names: dict[Kind, set[str]] = {}
    for list_name, kind in GATEWAY_LISTS.items():
        checked = []
        for j, entry in enumerate(_list(item, list_name, loc, problems)):
            entry_loc = f"{loc}.{list_name}[{j}]"
            if (entry := _entity(kind, entry, entry_loc, problems)) is not None:
                name = entry.get("name")
                if name in names.setdefault(kind, set()):
                    problems.append(
                        Problem(
                            f"{entry_loc}.name",
                            f"another {kind.label} in this gateway has this name",
                        )
                    )
                names[kind].add(name)
                checked.append(entry)
        entities[kind] = tuple(checked)
    for kind, (ref_field, _, target_kind) in REFERENCES.items():
        for j, entry in enumerate(entities[kind]):
            ref = entry.get(ref_field)
            if ref is not None and ref not in names.get(target_kind, set()):
                problems.append(
                    Problem(
                        f"{loc}.{_list_name(kind)}[{j}].{ref_field}",
                        f"no {target_kind.label} named {ref!r} in this gateway of the file",
                    )
                )
    return GatewayDecl(fields=fields, entities=entities)


def _entity(kind: Kind, entry: Any, loc: str, problems: list[Problem]) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        problems.append(Problem(loc, "must be a mapping"))
        return None
    entry = dict(entry)
    probe = dict(entry)
    if kind in REFERENCES:
        ref_field, id_field, target_kind = REFERENCES[kind]
        if (ref_field in entry) == (id_field in entry):
            problems.append(
                Problem(
                    f"{loc}.{ref_field}",
                    f"name the {target_kind.label} (give exactly one of {ref_field!r} or {id_field!r})",
                )
            )
            return None
        if ref_field in entry:
            if not isinstance(entry[ref_field], str):
                problems.append(Problem(f"{loc}.{ref_field}", "must be a string"))
                return None
            probe[id_field] = probe.pop(ref_field)
    if kind is Kind.UPSTREAM and isinstance(entry.get("targets"), list):
        for i, target in enumerate(entry["targets"]):
            if isinstance(target, dict) and "id" in target:
                problems.append(
                    Problem(f"{loc}.targets[{i}].id", "is assigned by the gateway; leave it out")
                )
    if kind is Kind.API_KEY:
        key = probe.pop("key", None)
        if key is None:
            problems.append(
                Problem(f"{loc}.key", "is required in a file (nobody would see a generated key)")
            )
        elif not isinstance(key, str) or len(key) < MIN_DECLARED_KEY:
            problems.append(
                Problem(f"{loc}.key", f"must be a string of at least {MIN_DECLARED_KEY} characters")
            )
        elif not _KEY.match(key):
            problems.append(
                Problem(
                    f"{loc}.key", "must be printable ASCII without spaces (it is sent in a header)"
                )
            )
    entity = _check(probe, kind.model, loc, problems)
    if isinstance(entity, Upstream):
        problems.extend(attrs.evolve(p, loc=f"{loc}.{p.loc}") for p in check_upstream(entity))
    if isinstance(entity, ApiKey):
        problems.extend(attrs.evolve(p, loc=f"{loc}.{p.loc}") for p in check_api_key(entity))
    return entry


def _check(fields: dict[str, Any], cls: type, loc: str, problems: list[Problem]) -> Any:
    for read_only in ("id", "gateway_id", "created_at", "updated_at"):
        if read_only in fields:
            problems.append(
                Problem(f"{loc}.{read_only}", "is assigned by the gateway; leave it out")
            )
            return None
    try:
        return serde.structure(fields, cls, loc=loc)
    except ValidationFailed as exc:
        problems.extend(exc.details)
        return None


def _list(container: dict, key: str, loc: str, problems: list[Problem]) -> list:
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(Problem(f"{loc}.{key}" if loc else key, "must be a list"))
        return []
    return value


def _list_name(kind: Kind) -> str:
    return next(name for name, k in GATEWAY_LISTS.items() if k is kind)


def _fake_providers(data: dict, problems: list[Problem]) -> list[Any]:
    entries = _list(data, "fake_providers", "", problems)
    if not entries:
        return []
    from trio_gateway.testing.fake import FakeProviderSpec

    specs = []
    for i, entry in enumerate(entries):
        try:
            specs.append(serde.structure(entry, FakeProviderSpec, loc=f"fake_providers[{i}]"))
        except ValidationFailed as exc:
            problems.extend(exc.details)
    return specs


def _substitute(value: Any, loc: str, environ: Mapping[str, str], problems: list[Problem]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string, depth first."""
    if isinstance(value, str):

        def replace(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in environ and (environ[name] or default is None):
                return environ[name]
            if default is not None:
                return default
            problems.append(Problem(loc or "$", f"environment variable {name} is not set"))
            return ""

        return _VAR.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, f"{loc}[{i}]", environ, problems) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: _substitute(v, f"{loc}.{k}" if loc else str(k), environ, problems)
            for k, v in value.items()
        }
    return value


# --- applying ------------------------------------------------------------------------


def apply(draft: Draft, declarations: Declarations) -> ApplyReport:
    """Make every entity the file names match it, by name. Pure: edits ``draft`` only."""
    created: list[str] = []
    updated: list[str] = []
    unchanged = 0

    def upsert(
        kind: Kind, fields: dict[str, Any], gateway_id: str | None, key: str | None = None
    ) -> Any:
        nonlocal unchanged
        label = f"{kind.label} {fields['name']!r}"
        existing = draft.find(kind, fields["name"], gateway_id)
        if existing is None:
            if kind is Kind.API_KEY:
                entity, _ = draft.create_api_key(gateway_id, fields, key)
            else:
                entity = draft.create(kind, fields, gateway_id)
            created.append(label)
            return entity
        entity = draft.replace(kind, existing.id, fields, gateway_id, keep_omitted=False)
        if isinstance(entity, ApiKey) and key is not None:
            entity = draft.set_api_key(entity, key)
        if entity is existing:
            unchanged += 1
        else:
            updated.append(label)
        return entity

    for decl in declarations.gateways:
        gateway = upsert(Kind.GATEWAY, dict(decl.fields), None)
        for kind in (Kind.UPSTREAM, Kind.SERVICE, Kind.RULE, Kind.API_KEY):
            for entry in decl.entities[kind]:
                fields = dict(entry)
                key = fields.pop("key", None) if kind is Kind.API_KEY else None
                if kind in REFERENCES:
                    ref_field, id_field, target_kind = REFERENCES[kind]
                    if ref_field in fields:
                        target = draft.find(target_kind, fields.pop(ref_field), gateway.id)
                        fields[id_field] = target.id
                upsert(kind, fields, gateway.id, key)
    return ApplyReport(created=tuple(created), updated=tuple(updated), unchanged=unchanged)
