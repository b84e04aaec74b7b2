"""The configuration model: gateways, upstreams and their targets, services, rules, API keys.

Plain frozen attrs classes. They know nothing of JSON, YAML or SQL: every wire
format, and all validation of field values, lives in :mod:`trio_gateway.serde`.
Constrained field types (``Weight``, ``HeaderName``...) are ``Annotated`` aliases
whose metadata the converters enforce, so a bad value is reported with its path
(``targets[1].weight``). Rules that span fields or entities (``default_model``
listed in ``models``, unique names) are checked by :func:`check_upstream` and by
the catalog.

Server-assigned fields (``id``, ``gateway_id``, timestamps) default to empty
values and are filled in by the catalog; a client may send them back unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

import attrs

from trio_gateway.config.faults import FaultInjection
from trio_gateway.config.types import (
    BaseUrl,
    Between,
    HeaderName,
    Headers,
    ModelName,
    Name,
    Secret,
    Text,
    UrlPath,
)
from trio_gateway.errors import Problem

#: Durations, in seconds: every one has a floor (no spinning, no probe floods, no
#: budget too short to be met) and a ceiling (no request held for days).
REQUEST_TIMEOUT_S = Between(1, 86_400)
ATTEMPT_TIMEOUT_S = Between(0.1, 86_400)
#: ``interval`` and ``ejection_time`` pace the gateway's own checks of each target:
#: at most one a second.
CHECK_PERIOD_S = Between(1, 86_400)
#: Targets per upstream: each is a task with its own queue and connections.
MAX_TARGETS = 256
#: Models a target may list, and headers a target or a probe may add.
MAX_MODELS = 1000
MAX_HEADERS = 64
#: Header names a target or a probe may not set: the gateway frames every request
#: itself (hop-by-hop headers, body framing, the Host it connects to).
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "content-type",
        "content-encoding",
    }
)

Description = Annotated[str, Text(0, 2000)]
Weight = Annotated[int, Between(1, 100)]
Priority = Annotated[int, Between(1, 1000)]
Threshold = Annotated[int, Between(1, 1000)]
RequestSeconds = Annotated[float, REQUEST_TIMEOUT_S]
AttemptSeconds = Annotated[float, ATTEMPT_TIMEOUT_S]
CheckSeconds = Annotated[float, CHECK_PERIOD_S]


class Algorithm(enum.StrEnum):
    ROUND_ROBIN = "round-robin"
    WEIGHTED = "weighted"
    LEAST_CONNECTIONS = "least-connections"
    RANDOM = "random"
    LOWEST_LATENCY = "lowest-latency"


#: Accepted spellings that mean the same algorithm.
ALGORITHM_ALIASES: Mapping[str, Algorithm] = {"weighted-round-robin": Algorithm.WEIGHTED}


class Provider(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai-compatible"
    AZURE_OPENAI = "azure-openai"


class ModelFallback(enum.StrEnum):
    """What to do with a model that no eligible target lists."""

    #: Send the chosen target's ``default_model`` instead (what the guide describes).
    DEFAULT_MODEL = "default_model"
    #: Refuse: 400 if no target lists the model, 503 if those that do are all down.
    REJECT = "reject"


class GatewayStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class ServiceType(enum.StrEnum):
    UPSTREAM = "upstream"


class Method(enum.StrEnum):
    GET = "GET"
    POST = "POST"


class BudgetPeriod(enum.StrEnum):
    """What a budget is per: a UTC calendar day, a UTC calendar month, or ever."""

    DAY = "day"
    MONTH = "month"
    LIFETIME = "lifetime"


#: Providers without a public endpoint: the target must say where they are.
NEEDS_BASE_URL = frozenset({Provider.OPENAI_COMPATIBLE, Provider.AZURE_OPENAI})


#: Ceilings of the per-key limits: far beyond any real use, low enough that every
#: sum the gateway makes of them stays exact in a double (2**53).
MAX_RATE = 1_000_000_000
MAX_TOKEN_RATE = 1_000_000_000_000
MAX_BUDGET_TOKENS = 1_000_000_000_000_000
MAX_COST = 1_000_000_000_000
#: Price per million tokens (the table's currency): up to a million.
MAX_PRICE = 1_000_000
#: Models a price table may list.
MAX_PRICES = 10_000


# --- key limits and prices -------------------------------------------------------


@attrs.frozen(kw_only=True)
class Budget:
    """A cap on what a key spends per ``period``: ``tokens`` (input + output), ``cost``
    (in the currency of the gateway's price table), or both. See docs/keys.md."""

    period: BudgetPeriod
    tokens: Annotated[int, Between(1, MAX_BUDGET_TOKENS)] | None = None
    cost: Annotated[float, Between(0, MAX_COST, lo_open=True)] | None = None


@attrs.frozen(kw_only=True)
class KeyLimits:
    """What one API key may spend; every limit is optional (``None``: not limited).

    ``requests_per_minute`` and ``tokens_per_minute`` are token buckets holding a
    minute's worth, refilled continuously; ``budget`` is a counter per period.
    """

    requests_per_minute: Annotated[int, Between(1, MAX_RATE)] | None = None
    tokens_per_minute: Annotated[int, Between(1, MAX_TOKEN_RATE)] | None = None
    budget: Budget | None = None

    @property
    def any(self) -> bool:
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.budget is not None
        )


@attrs.frozen(kw_only=True)
class KeyDefaults:
    """A gateway's defaults for its keys: a key without ``limits`` (or ``models``) of its
    own has these. A key's own value replaces the default as a whole."""

    limits: KeyLimits | None = None
    models: tuple[ModelName, ...] | None = None


@attrs.frozen(kw_only=True)
class Price:
    """What a model costs per million tokens: ``input``, ``output``, and ``cached``
    input tokens (read from a provider's prompt cache; ``None``: as ``input``)."""

    input: Annotated[float, Between(0, MAX_PRICE)]
    output: Annotated[float, Between(0, MAX_PRICE)]
    cached: Annotated[float, Between(0, MAX_PRICE)] | None = None


# --- entities ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Gateway:
    id: str = ""
    name: Name
    subdomain: Annotated[str, Text(1, 63)] | None = None
    status: GatewayStatus = GatewayStatus.ACTIVE
    #: Limits and models for the gateway's keys that set none of their own.
    key_defaults: KeyDefaults | None = None
    #: Price per million tokens, by model name: the cost of each request.
    prices: Mapping[ModelName, Price] = attrs.field(factory=dict)
    #: Faults injected into this gateway's live traffic: off unless an admin enables it.
    fault_injection: FaultInjection = attrs.field(factory=FaultInjection)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Credentials:
    """The header a target authenticates with. ``header_value`` is a secret.

    Without ``header_name`` the provider's own header is used (``Authorization:
    Bearer <value>`` for OpenAI-style providers, ``x-api-key`` for Anthropic,
    ``api-key`` for Azure OpenAI), so ``{"header_value": "sk-..."}`` is enough.
    """

    header_name: HeaderName | None = None
    header_value: Secret = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Target:
    """One provider endpoint an upstream can send a request to.

    An empty ``models`` means the target accepts any model name and forwards it.
    ``path`` and ``base_url`` default to the provider's public endpoint.
    """

    id: str = ""
    path: UrlPath | None = None
    provider: Provider
    base_url: BaseUrl | None = None
    weight: Weight = 1
    priority: Priority = 1
    default_model: ModelName | None = None
    models: tuple[ModelName, ...] = ()
    credentials: Credentials | None = None
    headers: Headers = attrs.field(factory=dict)
    #: Requests sent to this target at once (as many more may queue); ``None``: 1024.
    max_in_flight: Annotated[int, Between(1, 100_000)] | None = None
    #: Whether it serves OpenAI's Responses API (``/v1/responses``) itself, or is sent
    #: Responses requests translated to its chat API; ``None``: only ``openai`` does.
    native_responses: bool | None = None


@attrs.frozen(kw_only=True)
class HealthChecks:
    """Passive health (fed by real traffic), recovery checks and optional active probes.

    ``threshold`` consecutive failures eject a target, however long each took. An
    ejected target is out for ``ejection_time`` seconds (doubling while it keeps
    failing soon after each recovery, to at most ``interval``), then the gateway checks
    it every ``ejection_time`` seconds until it answers: a ``GET`` of ``path`` (default:
    the provider's model list) and, with ``request_checks``, a minimal real request.
    ``interval`` is the time between health checks: with ``active`` the probes of
    targets in rotation come that often, and an ejected target is checked at least
    that often. At most ``max_ejected_percent`` of the upstream's targets are ejected
    at once, and never all of them. With ``shared``, an ejection decided by one
    instance (or worker) is announced through the store and taken by the others.
    """

    passive: bool = True
    threshold: Threshold = 3
    interval: CheckSeconds = 60.0
    ejection_time: CheckSeconds = 5.0
    max_ejected_percent: Annotated[int, Between(1, 100)] = 100
    #: A recovery check also sends a minimal real request (one output token) once the
    #: model list answers; ``false``: the ``GET`` alone decides.
    request_checks: bool = True
    #: Announce this instance's ejections to the others on the same store, and take theirs.
    shared: bool = False
    active: bool = False
    path: UrlPath | None = None
    headers: Headers = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Upstream:
    id: str = ""
    gateway_id: str = ""
    name: Name
    algorithm: Algorithm = Algorithm.ROUND_ROBIN
    targets: tuple[Target, ...]
    health_checks: HealthChecks = HealthChecks()
    model_fallback: ModelFallback = ModelFallback.DEFAULT_MODEL
    #: ``max_tokens`` sent to Anthropic-format targets when an OpenAI client gave none.
    default_max_tokens: Annotated[int, Between(1, 1_000_000)] = 4096
    #: ``GET /v1/models`` leaves out a model of this upstream while every target
    #: serving it here is ejected.
    hide_ejected_models: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Service:
    id: str = ""
    gateway_id: str = ""
    name: Name
    type: ServiceType = ServiceType.UPSTREAM
    upstream_id: Annotated[str, Text(1, 64)]
    description: Description = ""
    #: One deadline per client request, shared by every attempt (until a stream starts).
    request_timeout: RequestSeconds = 120.0
    #: Budget of one attempt until its first byte (a stream's first content); a silent
    #: target is then failed over.
    first_byte_timeout: AttemptSeconds = 30.0
    #: A whole answer whose body stops arriving for this long is failed over.
    body_timeout: AttemptSeconds = 10.0
    #: Longest silence between two chunks of a started stream.
    idle_timeout: AttemptSeconds = 60.0
    #: Attempts per request, failovers included; ``None``: every target once.
    max_attempts: Annotated[int, Between(1, 100)] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Rule:
    """Requests whose path starts with ``path`` (and whose method is listed) go to ``service_id``."""

    id: str = ""
    gateway_id: str = ""
    name: Name
    path: UrlPath
    methods: tuple[Method, ...] = (Method.GET, Method.POST)
    service_id: Annotated[str, Text(1, 64)]
    strip_path: bool = False
    active: bool = True
    public: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@attrs.frozen(kw_only=True)
class ApiKey:
    """A client key of one gateway. Only ``key_hash`` (SHA-256) of the key is kept.

    ``limits`` and ``models``: ``None`` takes the gateway's ``key_defaults``; a value
    replaces them as a whole (``limits: {}``: no limits, whatever the default).
    """

    id: str = ""
    gateway_id: str = ""
    name: Name
    active: bool = True
    expires_at: datetime | None = None
    limits: KeyLimits | None = None
    #: The models the key may ask for (``None``: every model its gateway routes).
    models: tuple[ModelName, ...] | None = None
    prefix: str = ""
    key_hash: str = attrs.field(default="", repr=False)
    created_at: datetime | None = None
    updated_at: datetime | None = None


Entity = Gateway | Upstream | Service | Rule | ApiKey


class Kind(enum.StrEnum):
    """Entity kinds, in dependency order (a kind only refers to earlier kinds)."""

    GATEWAY = "gateway"
    UPSTREAM = "upstream"
    SERVICE = "service"
    RULE = "rule"
    API_KEY = "api_key"

    @property
    def model(self) -> type[Entity]:
        return _MODELS[self]

    @property
    def label(self) -> str:
        return "API key" if self is Kind.API_KEY else self.value

    @property
    def a_label(self) -> str:
        """The label with its article: "an upstream", "a rule"."""
        return f"{'an' if self.label[0] in 'aeiouAEIOU' else 'a'} {self.label}"

    @classmethod
    def of(cls, entity: Entity) -> Kind:
        return _KINDS[type(entity)]


_MODELS: dict[Kind, type[Entity]] = {
    Kind.GATEWAY: Gateway,
    Kind.UPSTREAM: Upstream,
    Kind.SERVICE: Service,
    Kind.RULE: Rule,
    Kind.API_KEY: ApiKey,
}
_KINDS = {model: kind for kind, model in _MODELS.items()}


def rule_prefix(path: str) -> str:
    """A rule's path as a prefix: ``/v1/`` and ``/v1`` are the same rule."""
    return path.rstrip("/") or "/"


# --- rules that span fields ----------------------------------------------------


def check_upstream(upstream: Upstream) -> list[Problem]:
    """Problems that no single field shows: ``default_model`` not served, duplicate ids,
    headers the gateway sets itself, limits on counts."""
    problems = []
    if not upstream.targets:
        problems.append(Problem("targets", "must not be empty"))
    if len(upstream.targets) > MAX_TARGETS:
        problems.append(
            Problem("targets", f"has {len(upstream.targets)} targets: at most {MAX_TARGETS}")
        )
    problems += check_headers(upstream.health_checks.headers, "health_checks.headers")
    seen_ids: set[str] = set()
    for i, target in enumerate(upstream.targets):
        problems += check_headers(target.headers, f"targets[{i}].headers")
        if len(target.models) > MAX_MODELS:
            problems.append(Problem(f"targets[{i}].models", f"lists more than {MAX_MODELS} models"))
        if target.credentials is not None and target.credentials.header_name is not None:
            name = target.credentials.header_name
            if name.lower() in FORBIDDEN_HEADERS:
                problems.append(Problem(f"targets[{i}].credentials.header_name", _forbidden(name)))
        if target.base_url is None and target.provider in NEEDS_BASE_URL:
            problems.append(
                Problem(
                    f"targets[{i}].base_url", f"is required for provider {target.provider.value!r}"
                )
            )
        if target.native_responses and target.provider is Provider.ANTHROPIC:
            problems.append(
                Problem(
                    f"targets[{i}].native_responses",
                    "Anthropic has no Responses API: Responses requests are translated to Messages",
                )
            )
        if len(set(target.models)) != len(target.models):
            problems.append(Problem(f"targets[{i}].models", "lists a model more than once"))
        if (
            target.default_model is not None
            and target.models
            and target.default_model not in target.models
        ):
            problems.append(
                Problem(
                    f"targets[{i}].default_model",
                    f"{target.default_model!r} is not one of this target's models",
                )
            )
        if target.id:
            if target.id in seen_ids:
                problems.append(Problem(f"targets[{i}].id", "another target has this id"))
            seen_ids.add(target.id)
    return problems


def check_key_limits(limits: KeyLimits | None, loc: str) -> list[Problem]:
    """A budget must cap something."""
    if limits is None or limits.budget is None:
        return []
    budget = limits.budget
    if budget.tokens is None and budget.cost is None:
        return [Problem(f"{loc}.budget", "must set 'tokens', 'cost' or both")]
    return []


def check_models(models: tuple[str, ...] | None, loc: str) -> list[Problem]:
    """A key's list of models: not empty (leave it out to allow every model), no repeats."""
    if models is None:
        return []
    if not models:
        return [Problem(loc, "must not be empty (leave it out, or null, to allow every model)")]
    if len(models) > MAX_MODELS:
        return [Problem(loc, f"lists more than {MAX_MODELS} models")]
    if len(set(models)) != len(models):
        return [Problem(loc, "lists a model more than once")]
    return []


def check_api_key(key: ApiKey) -> list[Problem]:
    return check_key_limits(key.limits, "limits") + check_models(key.models, "models")


def check_gateway(gateway: Gateway) -> list[Problem]:
    problems = []
    if len(gateway.prices) > MAX_PRICES:
        problems.append(Problem("prices", f"lists more than {MAX_PRICES} models"))
    if gateway.key_defaults is not None:
        problems += check_key_limits(gateway.key_defaults.limits, "key_defaults.limits")
        problems += check_models(gateway.key_defaults.models, "key_defaults.models")
    return problems


def effective_limits(key: ApiKey, gateway: Gateway | None) -> KeyLimits | None:
    """The key's limits, or its gateway's default; ``None`` when nothing is limited."""
    limits = key.limits
    if limits is None and gateway is not None and gateway.key_defaults is not None:
        limits = gateway.key_defaults.limits
    return limits if limits is not None and limits.any else None


def effective_models(key: ApiKey, gateway: Gateway | None) -> tuple[str, ...] | None:
    """The models the key may use, or ``None`` for every model."""
    if key.models is not None:
        return key.models
    if gateway is not None and gateway.key_defaults is not None:
        return gateway.key_defaults.models
    return None


def check_headers(headers: Mapping[str, str], loc: str) -> list[Problem]:
    """Headers a target or a probe adds: not too many, none the gateway frames itself,
    no name given twice (names are case-insensitive)."""
    problems = []
    if len(headers) > MAX_HEADERS:
        problems.append(Problem(loc, f"has {len(headers)} headers: at most {MAX_HEADERS}"))
    seen: set[str] = set()
    for name in headers:
        lower = name.lower()
        if lower in FORBIDDEN_HEADERS:
            problems.append(Problem(f"{loc}[{name!r}]", _forbidden(name)))
        elif lower in seen:
            problems.append(
                Problem(f"{loc}[{name!r}]", "is given twice (header names ignore case)")
            )
        seen.add(lower)
    return problems


def _forbidden(name: str) -> str:
    return (
        f"{name!r} is set by the gateway for each request (hop-by-hop and framing "
        "headers cannot be configured)"
    )
