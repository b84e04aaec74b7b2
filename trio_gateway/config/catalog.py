"""The live configuration and its only write path.

Theory of operation
-------------------
The whole configuration lives in memory as an immutable :class:`Snapshot`. Readers
(the admin API, the data plane) take ``catalog.snapshot`` and never wait on the
store. A write:

1. stages its edits in a :class:`Draft` over the current snapshot (pure, no I/O):
   input is merged, validated, secrets restored, references and names checked;
2. commits the draft's batch to the store, shielded from cancellation so that a
   client hanging up cannot leave memory and disk disagreeing;
3. publishes the new snapshot and wakes :meth:`Catalog.wait_changed` waiters.

Writes are serialized by one lock, so each draft starts from the latest snapshot.
A failed check raises before anything is written; a failed commit publishes
nothing.

Update semantics (PUT): fields the client sends replace the stored ones, fields it
omits keep their value, ``null`` resets a field to its default. Targets are
matched by ``id`` and merged the same way; a target sent without ``id`` keeps the
id of the stored target with the same endpoint and credential, so health state
survives an edit of its weight. A masked secret sent back stands for the stored
secret it masks.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import trio

from trio_gateway import serde
from trio_gateway.config import secrets
from trio_gateway.config.faults import FaultInjection
from trio_gateway.config.models import (
    ApiKey,
    Credentials,
    Entity,
    Gateway,
    Kind,
    Rule,
    Service,
    Target,
    Upstream,
    check_api_key,
    check_gateway,
    check_upstream,
    effective_limits,
    rule_prefix,
)
from trio_gateway.errors import (
    Conflict,
    NotFound,
    Problem,
    ServiceUnavailable,
    ValidationFailed,
)
from trio_gateway.store import Change, StaleVersion, Store

T = TypeVar("T")

#: The runtime's check that it can build an upstream: what would stop it, by field.
Preflight = Callable[[Upstream], Sequence[Problem]]

#: Fields the gateway sets. Clients may echo them back; the gateway ignores them.
READ_ONLY = frozenset({"id", "gateway_id", "created_at", "updated_at"})
READ_ONLY_BY_KIND: Mapping[Kind, frozenset[str]] = {
    kind: READ_ONLY | ({"prefix"} if kind is Kind.API_KEY else frozenset()) for kind in Kind
}
#: Fields that exist only inside the gateway; a client sending one gets "unknown field".
INTERNAL_BY_KIND: Mapping[Kind, frozenset[str]] = {
    kind: frozenset({"key_hash"}) if kind is Kind.API_KEY else frozenset() for kind in Kind
}
#: How often a write is tried on a newer snapshot when another process wrote first,
#: waiting up to ``WRITE_RETRY_S * 2**attempt`` (at random) before the next try.
WRITE_ATTEMPTS = 10
WRITE_RETRY_S = 0.002


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@attrs.frozen
class Snapshot:
    """The configuration at one generation. Never mutated: a write makes a new one."""

    generation: int
    entities: Mapping[Kind, Mapping[str, Entity]]

    @classmethod
    def empty(cls) -> Snapshot:
        return cls(generation=0, entities={kind: {} for kind in Kind})

    @classmethod
    def of(cls, entities: Iterable[Entity], generation: int = 1) -> Snapshot:
        by_kind: dict[Kind, dict[str, Entity]] = {kind: {} for kind in Kind}
        for entity in entities:
            by_kind[Kind.of(entity)][entity.id] = entity
        return cls(generation=generation, entities=by_kind)

    def get(self, kind: Kind, entity_id: str) -> Entity | None:
        return self.entities[kind].get(entity_id)

    def in_gateway(self, kind: Kind, gateway_id: str) -> Iterator[Any]:
        return (e for e in self.entities[kind].values() if e.gateway_id == gateway_id)

    @property
    def gateways(self) -> Mapping[str, Gateway]:
        return self.entities[Kind.GATEWAY]  # type: ignore[return-value]

    @property
    def upstreams(self) -> Mapping[str, Upstream]:
        return self.entities[Kind.UPSTREAM]  # type: ignore[return-value]

    @property
    def services(self) -> Mapping[str, Service]:
        return self.entities[Kind.SERVICE]  # type: ignore[return-value]

    @property
    def rules(self) -> Mapping[str, Rule]:
        return self.entities[Kind.RULE]  # type: ignore[return-value]

    @property
    def api_keys(self) -> Mapping[str, ApiKey]:
        return self.entities[Kind.API_KEY]  # type: ignore[return-value]


class Draft:
    """Edits staged over a snapshot. Pure: nothing here does I/O.

    Every method checks what it changes and raises :class:`ValidationFailed`,
    :class:`NotFound` or :class:`Conflict` before touching the draft.
    """

    def __init__(self, base: Snapshot, now: datetime, preflight: Preflight | None = None) -> None:
        self.base = base
        self.now = now
        self.preflight = preflight
        self._entities = {kind: dict(by_id) for kind, by_id in base.entities.items()}
        self._puts: dict[tuple[Kind, str], Entity] = {}
        self._deletes: set[tuple[Kind, str]] = set()

    # --- reading ------------------------------------------------------------------

    def get(self, kind: Kind, entity_id: str, gateway_id: str | None = None) -> Any:
        """The entity, or :class:`NotFound` (also when it lives in another gateway)."""
        entity = self._entities[kind].get(entity_id)
        if entity is None or (gateway_id is not None and entity.gateway_id != gateway_id):
            raise NotFound(f"no {kind.label} with id {entity_id!r}")
        return entity

    def in_gateway(self, kind: Kind, gateway_id: str) -> Iterator[Any]:
        return (e for e in self._entities[kind].values() if e.gateway_id == gateway_id)

    def find(self, kind: Kind, name: str, gateway_id: str | None = None) -> Any | None:
        pool = (
            self._entities[kind].values()
            if gateway_id is None
            else self.in_gateway(kind, gateway_id)
        )
        return next((e for e in pool if e.name == name), None)

    # --- writing ------------------------------------------------------------------

    def create(self, kind: Kind, data: Any, gateway_id: str | None = None) -> Entity:
        if kind is Kind.API_KEY:
            raise TypeError("use create_api_key")
        fields = _input_fields(kind, data, creating=True)
        if kind is Kind.UPSTREAM:
            _refuse_target_ids(fields.get("targets"))
        if kind is not Kind.GATEWAY:
            self.get(Kind.GATEWAY, gateway_id)
        entity = self._build(kind, fields, old=None, gateway_id=gateway_id or "")
        self._check(entity)
        return self._put(entity)

    def create_api_key(
        self, gateway_id: str, data: Any, key: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key for ``gateway_id``; returns the entity and the key in plain text."""
        fields = _input_fields(Kind.API_KEY, data, creating=True)
        self.get(Kind.GATEWAY, gateway_id)
        key = key or secrets.new_api_key()
        entity = self._build(Kind.API_KEY, fields, old=None, gateway_id=gateway_id)
        entity = attrs.evolve(
            entity, key_hash=secrets.hash_api_key(key), prefix=secrets.key_prefix(key)
        )
        self._check(entity)
        return self._put(entity), key

    def restore(self, entity: Entity) -> Entity:
        """Put a complete entity as it is, ids and timestamps kept (``trio-gateway import``).

        Checked like any write (names, references, upstream rules); an entity with
        the same id is overwritten. Returns the stored entity.
        """
        kind = Kind.of(entity)
        if kind is not Kind.GATEWAY:
            self.get(Kind.GATEWAY, entity.gateway_id)
        self._check(entity)
        return self._put(entity)

    def replace(
        self,
        kind: Kind,
        entity_id: str,
        data: Any,
        gateway_id: str | None = None,
        *,
        keep_omitted: bool = True,
    ) -> Entity:
        """Update an entity; returns the stored entity (``old`` itself when nothing changed).

        ``keep_omitted`` (PUT): omitted fields keep their value. Without it (the
        configuration file), the data is the whole entity and omitted fields reset.
        """
        old = self.get(kind, entity_id, gateway_id)
        fields = _input_fields(kind, data, creating=False, entity_id=entity_id)
        server_fields = READ_ONLY_BY_KIND[kind] | INTERNAL_BY_KIND[kind]
        base = serde.STORE.unstructure(old) if keep_omitted else {}
        merged = _merge(base, fields, server_fields)
        if kind is Kind.UPSTREAM and "targets" in fields:
            merged["targets"] = _merge_targets(fields["targets"], old.targets)
        entity = self._build(kind, merged, old=old, gateway_id=getattr(old, "gateway_id", ""))
        self._check(entity)
        return self._put(entity)

    def set_fault_injection(self, gateway_id: str, data: Any) -> Gateway:
        """Update a gateway's ``fault_injection`` as a ``PUT`` would.

        ``data`` is the setting's JSON: sent fields replace, omitted ones stay,
        ``null`` resets one. Problems are named by their path in ``data``.
        """
        old = self.get(Kind.GATEWAY, gateway_id)
        if not isinstance(data, dict):
            raise ValidationFailed.single("$", "must be a JSON object")
        base = serde.STORE.unstructure(old.fault_injection)
        sent = {k: v for k, v in data.items() if k != "since"}
        setting = serde.structure(_merge(base, sent, {"since"}), FaultInjection)
        return self._set_fault_injection(old, setting)

    def switch_off_faults(self, gateway_id: str) -> Gateway:
        """The kill switch: the gateway's ``fault_injection`` back to its default (off, none)."""
        return self._set_fault_injection(self.get(Kind.GATEWAY, gateway_id), FaultInjection())

    def switch_off_all_faults(self) -> list[Gateway]:
        """The kill switch of every gateway at once; returns those that had a setting."""
        return [
            self.switch_off_faults(gateway.id)
            for gateway in list(self._entities[Kind.GATEWAY].values())
            if not gateway.fault_injection.same_as(FaultInjection())
        ]

    def _set_fault_injection(self, old: Gateway, setting: FaultInjection) -> Gateway:
        gateway = attrs.evolve(old, fault_injection=setting, updated_at=self.now)
        gateway = _stamp_injection(gateway, old)
        self._check(gateway)
        return self._put(gateway)

    def set_api_key(self, entity: ApiKey, key: str) -> ApiKey:
        """Point an existing key entity at a new key (declared keys in the config file)."""
        return self._put(
            attrs.evolve(entity, key_hash=secrets.hash_api_key(key), prefix=secrets.key_prefix(key))
        )

    def delete(self, kind: Kind, entity_id: str, gateway_id: str | None = None) -> None:
        entity = self.get(kind, entity_id, gateway_id)
        if kind is Kind.UPSTREAM:
            users = [
                s.name
                for s in self.in_gateway(Kind.SERVICE, entity.gateway_id)
                if s.upstream_id == entity_id
            ]
            if users:
                raise Conflict(f"upstream {entity.name!r} is used by service(s) {_names(users)}")
        elif kind is Kind.SERVICE:
            users = [
                r.name
                for r in self.in_gateway(Kind.RULE, entity.gateway_id)
                if r.service_id == entity_id
            ]
            if users:
                raise Conflict(f"service {entity.name!r} is used by rule(s) {_names(users)}")
        elif kind is Kind.GATEWAY:
            for child in reversed(Kind):
                if child is not Kind.GATEWAY:
                    for e in list(self.in_gateway(child, entity_id)):
                        self._remove(child, e.id)
        self._remove(kind, entity_id)

    # --- results --------------------------------------------------------------------

    def change(self) -> Change:
        return Change(puts=list(self._puts.values()), deletes=sorted(self._deletes))

    def snapshot(self) -> Snapshot:
        return Snapshot(generation=self.base.generation + 1, entities=self._entities)

    # --- internals ------------------------------------------------------------------

    def _put(self, entity: Any) -> Any:
        """Stage ``entity``; if it equals the stored one but for ``updated_at``, keep the stored one."""
        kind = Kind.of(entity)
        old = self._entities[kind].get(entity.id)
        if old is not None and attrs.evolve(old, updated_at=entity.updated_at) == entity:
            return old
        self._entities[kind][entity.id] = entity
        self._puts[kind, entity.id] = entity
        self._deletes.discard((kind, entity.id))
        return entity

    def _remove(self, kind: Kind, entity_id: str) -> None:
        del self._entities[kind][entity_id]
        self._puts.pop((kind, entity_id), None)
        self._deletes.add((kind, entity_id))

    def _build(self, kind: Kind, fields: dict[str, Any], old: Any, gateway_id: str) -> Any:
        entity = serde.structure(fields, kind.model)
        stamps = {
            "id": old.id if old else new_id(),
            "created_at": old.created_at if old else self.now,
            "updated_at": self.now,
        }
        if kind is not Kind.GATEWAY:
            stamps["gateway_id"] = gateway_id
        if kind is Kind.API_KEY and old:
            stamps |= {"key_hash": old.key_hash, "prefix": old.prefix}
        entity = attrs.evolve(entity, **stamps)
        if kind is Kind.UPSTREAM:
            entity = _finish_upstream(entity, old)
        elif kind is Kind.GATEWAY:
            entity = _stamp_injection(entity, old)
        return entity

    def _check(self, entity: Any) -> None:
        kind = Kind.of(entity)
        scope = None if kind is Kind.GATEWAY else entity.gateway_id
        same_name = self.find(kind, entity.name, scope)
        if same_name is not None and same_name.id != entity.id:
            where = "" if scope is None else " in this gateway"
            raise Conflict(f"{kind.a_label} named {entity.name!r} already exists{where}")
        match entity:
            case Gateway(subdomain=str(sub)):
                taken = next(
                    (
                        g
                        for g in self._entities[Kind.GATEWAY].values()
                        if g.subdomain == sub and g.id != entity.id
                    ),
                    None,
                )
                if taken:
                    raise Conflict(f"gateway {taken.name!r} already uses subdomain {sub!r}")
        match entity:
            case Gateway():
                if problems := check_gateway(entity):
                    raise ValidationFailed.of(problems)
                self._check_priced(entity)
            case ApiKey():
                if problems := check_api_key(entity):
                    raise ValidationFailed.of(problems)
                gateway = self._entities[Kind.GATEWAY].get(entity.gateway_id)
                if gateway is not None:
                    self._check_priced(gateway, (entity,))
            case Upstream():
                if problems := check_upstream(entity):
                    raise ValidationFailed.of(problems)
                if self.preflight is not None and (problems := list(self.preflight(entity))):
                    raise ValidationFailed.of(problems)
            case Service():
                target = self._entities[Kind.UPSTREAM].get(entity.upstream_id)
                if target is None or target.gateway_id != entity.gateway_id:
                    raise ValidationFailed.single(
                        "upstream_id", "no upstream with this id in this gateway"
                    )
            case Rule():
                target = self._entities[Kind.SERVICE].get(entity.service_id)
                if target is None or target.gateway_id != entity.gateway_id:
                    raise ValidationFailed.single(
                        "service_id", "no service with this id in this gateway"
                    )
                if len(set(entity.methods)) != len(entity.methods):
                    raise ValidationFailed.single("methods", "lists a method more than once")
                if entity.active:
                    for other in self.in_gateway(Kind.RULE, entity.gateway_id):
                        shared = set(other.methods) & set(entity.methods)
                        if (
                            other.id != entity.id
                            and other.active
                            and rule_prefix(other.path) == rule_prefix(entity.path)
                            and shared
                        ):
                            raise Conflict(
                                f"active rule {other.name!r} already routes "
                                f"{'/'.join(sorted(shared))} {entity.path}"
                            )

    def _check_priced(self, gateway: Gateway, keys: Iterable[ApiKey] | None = None) -> None:
        """A cost budget needs a price table: without one, every request would cost 0.

        ``keys``: the keys being written (a key write); ``None``: a gateway write,
        checked with its defaults and every key it has.
        """
        if gateway.prices:
            return
        if keys is None:
            defaults = gateway.key_defaults
            if defaults is not None and _has_cost_budget(defaults.limits):
                raise ValidationFailed.single(
                    "key_defaults.limits.budget.cost",
                    "needs a price table: set 'prices' (per million tokens, by model)",
                )
            for key in self.in_gateway(Kind.API_KEY, gateway.id):
                if _has_cost_budget(effective_limits(key, gateway)):
                    raise ValidationFailed.single(
                        "prices",
                        f"must not be empty: API key {key.name!r} has a cost budget, "
                        "which needs a price per model",
                    )
            return
        for key in keys:
            if _has_cost_budget(effective_limits(key, gateway)):
                raise ValidationFailed.single(
                    "limits.budget.cost",
                    f"needs a price table: set 'prices' on gateway {gateway.name!r} "
                    "(per million tokens, by model)",
                )


def _has_cost_budget(limits: Any) -> bool:
    return limits is not None and limits.budget is not None and limits.budget.cost is not None


# --- input handling (pure) ---------------------------------------------------------


def _input_fields(
    kind: Kind, data: Any, *, creating: bool, entity_id: str | None = None
) -> dict[str, Any]:
    """The client's fields, minus the server-assigned ones it may echo back."""
    if not isinstance(data, dict):
        raise ValidationFailed.single("$", "must be a JSON object")
    if internal := sorted(INTERNAL_BY_KIND[kind] & data.keys()):
        raise ValidationFailed.of([Problem(name, "unknown field") for name in internal])
    sent_id = data.get("id")
    if creating and sent_id is not None:
        raise ValidationFailed.single("id", "is assigned by the gateway; leave it out")
    if not creating and sent_id is not None and sent_id != entity_id:
        raise ValidationFailed.single("id", "does not match the id in the URL")
    return {k: v for k, v in data.items() if k not in READ_ONLY_BY_KIND[kind]}


def _merge(base: dict[str, Any], sent: Mapping[str, Any], drop: Iterable[str]) -> dict[str, Any]:
    """Sent fields replace, omitted fields stay, ``null`` resets to the default."""
    merged = {k: v for k, v in base.items() if k not in drop}
    for key, value in sent.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _refuse_target_ids(targets: Any) -> None:
    """A new upstream's targets get their ids from the gateway (ids are unique everywhere)."""
    if isinstance(targets, list):
        problems = [
            Problem(f"targets[{i}].id", "is assigned by the gateway; leave it out")
            for i, target in enumerate(targets)
            if isinstance(target, dict) and target.get("id") is not None
        ]
        if problems:
            raise ValidationFailed.of(problems)


def _merge_targets(sent: Any, old: tuple[Target, ...]) -> Any:
    if not isinstance(sent, list):
        return sent  # let the converter report the type error with its path
    by_id = {t.id: t for t in old}
    merged = []
    problems = []
    for i, target in enumerate(sent):
        if isinstance(target, dict) and "id" in target and target["id"] is None:
            target = {k: v for k, v in target.items() if k != "id"}  # null: no id, a new target
        if isinstance(target, dict) and target.get("id") is not None:
            current = by_id.get(target["id"])
            if current is None:
                problems.append(
                    Problem(f"targets[{i}].id", "no target with this id in this upstream")
                )
                continue
            base = serde.STORE.unstructure(current)
            target = {"id": current.id, **_merge(base, target, {"id"})}
        merged.append(target)
    if problems:
        raise ValidationFailed.of(problems)
    return merged


def _finish_upstream(upstream: Upstream, old: Upstream | None) -> Upstream:
    """Restore masked secrets, then give every target a stable id."""
    old_targets = old.targets if old else ()
    old_by_id = {t.id: t for t in old_targets}
    problems: list[Problem] = []

    def restore(
        value: str,
        loc: str,
        preferred: list[str],
        others: list[str] = (),
        masker: Callable[[str], str] = secrets.mask,
    ) -> str:
        real = secrets.unmask(value, preferred, others, masker)
        if real is None:
            problems.append(
                Problem(
                    loc,
                    "is a masked value that matches no single stored secret; send the full value",
                )
            )
            return value
        return real

    def restore_headers(
        headers: Mapping[str, str],
        loc: str,
        before: Mapping[str, str],
        elsewhere: Iterable[Mapping[str, str]] = (),
    ) -> dict:
        """Masked values back to their secrets: this target's own header of the same name,
        else the one stored header of that name (a target sent without its id)."""
        elsewhere = list(elsewhere)
        return {
            name: restore(
                value,
                f"{loc}[{name!r}]",
                [before[name]] if name in before else [],
                [h[name] for h in elsewhere if name in h],
            )
            if secrets.is_masked(value)
            else value
            for name, value in headers.items()
        }

    def same_header(name: str | None) -> list[str]:
        """Stored credentials sent in header ``name``: what a target without an id may mean."""
        return [
            t.credentials.header_value
            for t in old_targets
            if t.credentials and (t.credentials.header_name or "").lower() == (name or "").lower()
        ]

    targets = []
    for i, target in enumerate(upstream.targets):
        previous = old_by_id.get(target.id)
        changes: dict[str, Any] = {}
        if target.credentials and secrets.is_masked(target.credentials.header_value):
            mine = [previous.credentials.header_value] if previous and previous.credentials else []
            changes["credentials"] = Credentials(
                header_name=target.credentials.header_name,
                header_value=restore(
                    target.credentials.header_value,
                    f"targets[{i}].credentials.header_value",
                    mine,
                    same_header(target.credentials.header_name),
                ),
            )
        if target.base_url is not None and secrets.is_masked(target.base_url):
            changes["base_url"] = restore(
                target.base_url,
                f"targets[{i}].base_url",
                [previous.base_url] if previous and previous.base_url else [],
                [t.base_url for t in old_targets if t.base_url],
                secrets.mask_url,
            )
        if any(secrets.is_masked(v) for v in target.headers.values()):
            changes["headers"] = restore_headers(
                target.headers,
                f"targets[{i}].headers",
                previous.headers if previous else {},
                () if previous else (t.headers for t in old_targets),
            )
        targets.append(attrs.evolve(target, **changes) if changes else target)

    checks = upstream.health_checks
    if any(secrets.is_masked(v) for v in checks.headers.values()):
        before = old.health_checks.headers if old else {}
        checks = attrs.evolve(
            checks, headers=restore_headers(checks.headers, "health_checks.headers", before)
        )
    if problems:
        raise ValidationFailed.of(problems)
    return attrs.evolve(
        upstream, targets=_assign_target_ids(targets, old_targets), health_checks=checks
    )


def _stamp_injection(gateway: Gateway, old: Gateway | None) -> Gateway:
    """``fault_injection.since``: kept while the faults stay the same, else now.

    ``window`` and ``flapping`` count from it, in every instance and across restarts
    (a configuration file applied again at a start changes nothing). A setting at its
    default (off, no faults) has none.
    """
    setting = gateway.fault_injection
    before = old.fault_injection if old is not None else None
    if setting.same_as(FaultInjection()):
        since = None
    elif before is not None and before.since is not None and setting.same_clock(before):
        since = before.since
    else:
        since = gateway.updated_at
    if since == setting.since:
        return gateway
    return attrs.evolve(gateway, fault_injection=attrs.evolve(setting, since=since))


def _endpoint(target: Target) -> tuple:
    secret = target.credentials.header_value if target.credentials else None
    return (target.provider, target.base_url, target.path, secret)


def _assign_target_ids(targets: list[Target], old: tuple[Target, ...]) -> tuple[Target, ...]:
    claimed = {t.id for t in targets if t.id}
    free = [t for t in old if t.id not in claimed]
    result = []
    for target in targets:
        if not target.id:
            match = next((o for o in free if _endpoint(o) == _endpoint(target)), None)
            if match is not None:
                free.remove(match)
            target = attrs.evolve(target, id=match.id if match else new_id())
        result.append(target)
    return tuple(result)


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in sorted(names))


# --- the catalog -------------------------------------------------------------------


class Catalog:
    """Owns the live :class:`Snapshot` and serializes writes to it and to the store.

    Not a task: it owns no nursery. Writers call the async methods from their own
    tasks (the admin handlers, the config-file loader); the data plane reads
    :attr:`snapshot` and waits on :meth:`wait_changed`; the store follower
    (``serve.follow_store``) calls :meth:`refresh` when the store moved.

    Several processes may share the store. :attr:`version` is the store version
    the snapshot reflects. A write is validated against the snapshot and
    committed on condition that the store is still at that version; if another
    process committed in between, the catalog catches up (:meth:`refresh`) and
    runs the edit again on the newer snapshot, so what lands was always checked
    against what it lands on. Writes and refreshes hold the same lock: a refresh
    never interleaves with a write of this process.
    """

    def __init__(
        self,
        store: Store,
        snapshot: Snapshot,
        clock: Callable[[], datetime] = utcnow,
        version: int = 0,
        *,
        preflight: Preflight | None = None,
    ):
        self._store = store
        self._snapshot = snapshot
        self._version = version
        self._clock = clock
        self._preflight = preflight
        self._lock = trio.Lock()
        self._changed = trio.Event()

    @classmethod
    async def load(
        cls,
        store: Store,
        clock: Callable[[], datetime] = utcnow,
        *,
        preflight: Preflight | None = None,
    ) -> Catalog:
        """The store's content, as it is: an entity the runtime cannot serve is its to report.

        ``preflight`` is the runtime's own check that it can build an upstream; every
        write of an upstream passes it before anything is stored.
        """
        loaded = await store.read()
        return cls(store, Snapshot.of(loaded.puts), clock, loaded.version, preflight=preflight)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def version(self) -> int:
        """The store version :attr:`snapshot` reflects."""
        return self._version

    @property
    def store(self) -> Store:
        return self._store

    # --- reads (synchronous: memory only) ----------------------------------------

    def get(self, kind: Kind, entity_id: str, gateway_id: str | None = None) -> Any:
        return Draft(self._snapshot, self._clock(), self._preflight).get(
            kind, entity_id, gateway_id
        )

    def list(self, kind: Kind, gateway_id: str | None = None) -> list[Any]:
        if kind is not Kind.GATEWAY:
            self.get(Kind.GATEWAY, gateway_id)
            items = self._snapshot.in_gateway(kind, gateway_id)
        else:
            items = iter(self._snapshot.gateways.values())
        return sorted(items, key=lambda e: (e.created_at, e.id))

    # --- writes -------------------------------------------------------------------

    async def write(self, edit: Callable[[Draft], T]) -> T:
        """Run ``edit`` on a draft of the latest snapshot, commit it, publish it.

        ``edit`` must be pure (it may run again, on a newer snapshot, when another
        process wrote first; see the class docstring).
        """
        async with self._lock:
            for attempt in range(WRITE_ATTEMPTS):
                draft = Draft(self._snapshot, self._clock(), self._preflight)
                result = edit(draft)
                change = draft.change()
                if not change:
                    return result
                try:
                    # Once the store has the batch, memory must too: no cancel in between.
                    # Unbounded on purpose: a thread cannot be abandoned mid-commit, and
                    # the commit itself is bounded (SQLite's busy timeout and an fsync;
                    # PostgreSQL's connect timeout and TCP user timeout).
                    with trio.CancelScope(shield=True):
                        version = await self._store.commit(change, base_version=self._version)
                        self._publish(draft.snapshot(), version)
                except StaleVersion:
                    await self._refresh_locked()
                    # Jitter: two instances writing in step would otherwise collide forever.
                    await trio.sleep(random.uniform(0, WRITE_RETRY_S * 2**attempt))
                    continue
                return result
        raise ServiceUnavailable(
            "the configuration kept changing under this write (other instances are "
            "writing); try again"
        )

    async def create(self, kind: Kind, data: Any, gateway_id: str | None = None) -> Any:
        return await self.write(lambda d: d.create(kind, data, gateway_id))

    async def create_api_key(self, gateway_id: str, data: Any) -> tuple[ApiKey, str]:
        return await self.write(lambda d: d.create_api_key(gateway_id, data))

    async def replace(
        self, kind: Kind, entity_id: str, data: Any, gateway_id: str | None = None
    ) -> Any:
        return await self.write(lambda d: d.replace(kind, entity_id, data, gateway_id))

    async def set_fault_injection(self, gateway_id: str, data: Any) -> Gateway:
        return await self.write(lambda d: d.set_fault_injection(gateway_id, data))

    async def switch_off_faults(self, gateway_id: str) -> Gateway:
        return await self.write(lambda d: d.switch_off_faults(gateway_id))

    async def switch_off_all_faults(self) -> list[Gateway]:
        return await self.write(lambda d: d.switch_off_all_faults())

    async def delete(self, kind: Kind, entity_id: str, gateway_id: str | None = None) -> None:
        await self.write(lambda d: d.delete(kind, entity_id, gateway_id))

    async def refresh(self) -> bool:
        """Catch up with the store: read what changed since :attr:`version`, publish it.

        Cheap when nothing changed (the store answers with its version alone) and
        proportional to the change otherwise. Returns whether anything was published.
        """
        async with self._lock:
            return await self._refresh_locked()

    async def reload(self) -> None:
        """Take the whole of the store's content as the configuration."""
        async with self._lock:
            loaded = await self._store.read()
            self._publish(Snapshot.of(loaded.puts, self._snapshot.generation + 1), loaded.version)

    async def _refresh_locked(self) -> bool:
        changes = await self._store.read(since=self._version)
        if changes.complete:
            snapshot = Snapshot.of(changes.puts, self._snapshot.generation + 1)
        elif changes.puts or changes.deletes:
            entities = {kind: dict(by_id) for kind, by_id in self._snapshot.entities.items()}
            for entity in changes.puts:
                entities[Kind.of(entity)][entity.id] = entity
            for kind, entity_id in changes.deletes:
                entities[kind].pop(entity_id, None)
            snapshot = Snapshot(self._snapshot.generation + 1, entities)
        else:
            self._version = changes.version
            return False
        self._publish(snapshot, changes.version)
        return True

    # --- change notification ----------------------------------------------------

    def _publish(self, snapshot: Snapshot, version: int) -> None:
        self._snapshot = snapshot
        self._version = version
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, generation: int) -> Snapshot:
        """Return the first snapshot newer than ``generation``."""
        while self._snapshot.generation <= generation:
            await self._changed.wait()
        return self._snapshot
