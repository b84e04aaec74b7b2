"""Routing decisions, sans-IO: rule matching, and which target (and model) serves a request.

Everything here is compiled once per configuration change (``compile_*``) and
then answers per request with plain lookups: no parsing, no allocation beyond
the answer.

Target choice (:meth:`UpstreamPlan.choose`), in order:

1. A target is *eligible* when its health admits a request now and it was not
   already tried for this request. (Its API dialect does not matter: the gateway
   translates.)
2. The *model*: a target serves model ``M`` when ``M`` is in its ``models`` (or
   its ``models`` is empty: it takes any model). A request without a model is
   served by targets with a ``default_model``, which is what is sent.
3. If no eligible target serves ``M``, the request falls back to the
   ``default_model`` of a target chosen among the eligible ones, and the choice
   says so (``fallback``), unless the upstream's ``model_fallback`` is
   ``reject``: then a model nobody lists is the client's error (400).
4. *Tiers*: the lowest ``priority`` number with a candidate serves; within it the
   tier's balancer picks.
5. *Last resort*: when no eligible target can serve (every one able to is out of
   rotation, or already tried), the gateway does not refuse: it tries the one that
   is most likely to have recovered (the soonest back, by ``rank``), the model's
   targets before a fallback, and says so (``last_resort``). Envoy calls this panic
   routing.

``choose(..., peek=True)`` answers the same without moving any balancer: what the
next request would get when nothing changes in between (``explain``).

``choose(..., allowed=...)``: the models the client's API key may use
(docs/keys.md). A model the client names was checked before (the proxy refuses it);
here it matters for the models the gateway picks itself: a ``default_model`` for a
request without a model, a fallback, a last resort. A target whose default the key
may not use is not chosen for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from trio_gateway.config.models import Rule, rule_prefix
from trio_gateway.core.balancing import Balancer, Load, make_balancer
from trio_gateway.errors import ModelNotServed

# --- rules ------------------------------------------------------------------------


@attrs.frozen
class CompiledRule:
    id: str
    name: str
    prefix: str
    methods: frozenset[str]
    service_id: str
    strip_path: bool
    public: bool

    def matches(self, method: str, path: str) -> bool:
        if method not in self.methods:
            return False
        prefix = self.prefix
        return prefix == "/" or path == prefix or path.startswith(prefix + "/")

    def endpoint_path(self, path: str) -> str:
        """The path the client meant for the API, with the rule's prefix removed if asked."""
        if not self.strip_path or self.prefix == "/":
            return path
        rest = path[len(self.prefix) :]
        return rest if rest.startswith("/") else "/" + rest


def compile_rules(rules: Sequence[Rule]) -> tuple[CompiledRule, ...]:
    """Active rules, longest prefix first (ties: most specific method set first)."""
    compiled = [
        CompiledRule(
            id=r.id,
            name=r.name,
            prefix=rule_prefix(r.path),
            methods=frozenset(m.value for m in r.methods),
            service_id=r.service_id,
            strip_path=r.strip_path,
            public=r.public,
        )
        for r in rules
        if r.active
    ]
    compiled.sort(key=lambda r: (-len(r.prefix), len(r.methods), r.prefix))
    return tuple(compiled)


def match_rule(rules: Sequence[CompiledRule], method: str, path: str) -> CompiledRule | None:
    for rule in rules:
        if rule.matches(method, path):
            return rule
    return None


# --- targets -----------------------------------------------------------------------------


def _default_refused(target: TargetRoute, model: str | None, allowed: frozenset[str]) -> bool:
    """Would ``target`` be chosen only to send a default model the key may not use?

    Only for a target that does not serve ``model`` itself (or when there is no
    model): those are chosen for their ``default_model``.
    """
    if model is not None and target.serves(model):
        return False
    return target.default_model not in allowed


@attrs.frozen
class TargetRoute:
    """What routing needs to know of one target."""

    index: int
    id: str
    weight: int
    priority: int
    models: frozenset[str]
    default_model: str | None

    @property
    def any_model(self) -> bool:
        return not self.models

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models


@attrs.frozen
class Choice:
    index: int
    model: str
    fallback: bool = False
    #: Out of rotation, tried because nothing in rotation can serve.
    last_resort: bool = False


@attrs.define
class Tier:
    priority: int
    members: tuple[int, ...]
    balancer: Balancer


@attrs.define
class UpstreamPlan:
    """Tiers and balancers of one upstream; lives as long as its configuration."""

    targets: tuple[TargetRoute, ...]
    tiers: tuple[Tier, ...]
    reject_unknown_models: bool = False

    @classmethod
    def compile(
        cls,
        targets: Sequence[TargetRoute],
        algorithm: object,
        *,
        reject_unknown_models: bool = False,
        balancer_factory: Callable[..., Balancer] = make_balancer,
    ) -> UpstreamPlan:
        priorities = sorted({t.priority for t in targets})
        weights = [t.weight for t in targets]
        tiers = tuple(
            Tier(
                priority=p,
                members=tuple(t.index for t in targets if t.priority == p),
                balancer=balancer_factory(algorithm, weights),
            )
            for p in priorities
        )
        return cls(tuple(targets), tiers, reject_unknown_models)

    def choose(
        self,
        model: str | None,
        *,
        admits: Callable[[int], bool],
        excluded: Callable[[int], bool],
        loads: Sequence[Load],
        now: float,
        rank: Callable[[int], float] | None = None,
        peek: bool = False,
        allowed: frozenset[str] | None = None,
    ) -> Choice | None:
        """The target and model for this attempt, or ``None`` when none can serve.

        ``excluded`` targets (tried, retired) are never chosen. Targets not excluded
        that ``admits`` refuses are the last resort, best ``rank`` first, when ``rank``
        is given. Raises :class:`ModelNotServed` when ``model`` is listed by no target
        and the upstream rejects unknown models. ``peek``: change no balancer's state.
        ``allowed``: the models the client's key may use (``None``: any); a target is
        never chosen to send its ``default_model`` outside them.
        """
        out = excluded
        if allowed is not None:
            targets = self.targets

            def out(i: int) -> bool:
                return excluded(i) or _default_refused(targets[i], model, allowed)

        choice = self._choose(model, admits, out, loads, now, peek)
        if choice is None and rank is not None:
            choice = self._last_resort(model, out, rank)
        return choice

    def _choose(
        self,
        model: str | None,
        admits: Callable[[int], bool],
        excluded: Callable[[int], bool],
        loads: Sequence[Load],
        now: float,
        peek: bool = False,
    ) -> Choice | None:
        targets = self.targets

        def eligible(i: int) -> bool:
            return not excluded(i) and admits(i)

        if model is None:
            return self._pick(
                lambda i: eligible(i) and targets[i].default_model is not None,
                None,
                loads,
                now,
                peek,
            )
        choice = self._pick(
            lambda i: eligible(i) and targets[i].serves(model), model, loads, now, peek
        )
        if choice is not None:
            return choice
        if self.reject_unknown_models:
            if not any(t.serves(model) for t in targets):
                served = sorted({m for t in targets for m in t.models})
                raise ModelNotServed(
                    f"model {model!r} is not served here; available: {', '.join(served) or 'none'}"
                )
            return None
        choice = self._pick(
            lambda i: eligible(i) and targets[i].default_model is not None, None, loads, now, peek
        )
        return attrs.evolve(choice, fallback=True) if choice is not None else None

    def _pick(
        self,
        candidate: Callable[[int], bool],
        model: str | None,
        loads: Sequence[Load],
        now: float,
        peek: bool = False,
    ) -> Choice | None:
        for tier in self.tiers:
            eligible = [i for i in tier.members if candidate(i)]
            if eligible:
                balancer = tier.balancer
                index = (
                    eligible[0]
                    if len(eligible) == 1
                    else (balancer.peek if peek else balancer.pick)(eligible, loads, now)
                )
                return Choice(
                    index, model if model is not None else self.targets[index].default_model
                )
        return None

    def _last_resort(
        self, model: str | None, excluded: Callable[[int], bool], rank: Callable[[int], float]
    ) -> Choice | None:
        targets = self.targets

        def best(candidates: list[int]) -> int:
            return min(candidates, key=lambda i: (rank(i), targets[i].priority, i))

        with_default = [
            t.index for t in targets if not excluded(t.index) and t.default_model is not None
        ]
        if model is not None:
            serving = [t.index for t in targets if not excluded(t.index) and t.serves(model)]
            if serving:
                return Choice(best(serving), model, last_resort=True)
            if self.reject_unknown_models:
                return None
        if not with_default:
            return None
        index = best(with_default)
        default = targets[index].default_model
        assert default is not None
        return Choice(index, default, fallback=model is not None, last_resort=True)
