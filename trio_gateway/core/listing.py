"""What ``GET /v1/models`` lists: the models a key reaches through its gateway's rules. Sans-IO.

Theory of operation
-------------------
A client that lists models at ``<base>/models`` (``base_url=".../v1"`` for the
openai SDK; the anthropic SDK asks ``/v1/models`` too) then sends its requests to
``<base>/chat/completions``, ``<base>/messages``, ``<base>/responses``,
``<base>/embeddings`` and ``<base>/messages/count_tokens``. Each of those paths goes
through the gateway's rules like any request: the rule that matches it (for
``POST``) names a service, whose upstream's targets serve some models. The list is
the union of those models: exactly what the key can reach from that base, no more
(a rule that sends ``/v1/embeddings`` elsewhere adds that upstream's models; a path
no rule routes adds nothing), with the providers that serve each.

A target serves the models in its ``models`` and its ``default_model``; a target
with an empty ``models`` takes any name, but only its default can be listed.

Every base a request can use is known from the rules (``/v1``, and ``<prefix>/v1``
for each ``strip_path`` rule), so the lists are compiled when the configuration
changes (:func:`compile_model_lists`), twice per base: for a request with a key
(every rule) and for one without (public rules only). Per request only health is
read, and only for upstreams with ``hide_ejected_models``: a model is then left out
while every target serving it there is ejected (:meth:`ModelList.visible`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from trio_gateway.config.models import Upstream
from trio_gateway.core.routing import CompiledRule, match_rule
from trio_gateway.providers.formats import Api

__all__ = [
    "API_ENDPOINTS",
    "MODELS_ENDPOINT",
    "ListedModel",
    "ModelList",
    "ModelLists",
    "Server",
    "compile_model_lists",
    "model_bases",
    "page",
]

#: The endpoints that go to providers, as a path reads once a ``strip_path`` rule's
#: prefix is removed, and their APIs.
API_ENDPOINTS: Mapping[str, Api] = {
    "/v1/chat/completions": Api.CHAT,
    "/v1/messages": Api.MESSAGES,
    "/v1/messages/count_tokens": Api.COUNT_TOKENS,
    "/v1/responses": Api.RESPONSES,
    "/v1/embeddings": Api.EMBEDDINGS,
}
MODELS_ENDPOINT = "/v1/models"
#: ``created`` / ``created_at`` of a listed model: the gateway does not know when a
#: provider released it, and says so with the epoch rather than invent a date.
CREATED = 0
CREATED_AT = "1970-01-01T00:00:00Z"

#: ``ejected(upstream_id, target_index)``: is that target out of rotation for failures?
Ejected = Callable[[str, int], bool]


@attrs.frozen
class Server:
    """One target serving a listed model: where its health is read."""

    upstream_id: str
    index: int
    provider: str
    #: Its upstream leaves the model out while the model's targets there are ejected.
    hides: bool


@attrs.frozen
class ListedModel:
    id: str
    #: Provider kinds serving it, in tier order (``openai``, ``anthropic``...).
    providers: tuple[str, ...]
    servers: tuple[Server, ...]

    def visible(self, ejected: Ejected) -> bool:
        """Listed unless every target serving it is ejected, in upstreams that hide."""
        return not all(s.hides and ejected(s.upstream_id, s.index) for s in self.servers)

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "created": CREATED,
            "owned_by": self.providers[0],
            "providers": list(self.providers),
        }

    def anthropic(self) -> dict[str, Any]:
        return {
            "type": "model",
            "id": self.id,
            "display_name": self.id,
            "created_at": CREATED_AT,
            "providers": list(self.providers),
        }


@attrs.frozen
class ModelList:
    """The models one base reaches, sorted by id."""

    models: tuple[ListedModel, ...] = ()
    #: Some upstream hides ejected models: health must be read per request.
    hides: bool = False
    by_id: Mapping[str, ListedModel] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "by_id", {m.id: m for m in self.models})

    def visible(self, ejected: Ejected) -> Sequence[ListedModel]:
        if not self.hides:
            return self.models
        return tuple(m for m in self.models if m.visible(ejected))

    def get(self, model_id: str, ejected: Ejected) -> ListedModel | None:
        model = self.by_id.get(model_id)
        if model is None or (self.hides and not model.visible(ejected)):
            return None
        return model


@attrs.frozen
class ModelLists:
    """One base's lists: for a request with a key, and for one without (public rules)."""

    keyed: ModelList
    public: ModelList


def model_bases(rules: Sequence[CompiledRule]) -> list[str]:
    """Every base a ``/v1/models`` request can have: ``/v1``, and ``<prefix>/v1`` for
    each ``strip_path`` rule (its prefix removed, the rest must read ``/v1/models``)."""
    bases = ["/v1"]
    for rule in rules:
        if rule.strip_path and rule.prefix != "/":
            base = rule.prefix + "/v1"
            if base not in bases:
                bases.append(base)
    return bases


def compile_model_lists(
    rules: Sequence[CompiledRule], upstreams: Mapping[str, Upstream]
) -> dict[str, ModelLists]:
    """The lists of every base of a gateway, by base.

    ``upstreams``: the upstream of each service that can serve, by service id (a
    service whose upstream could not be built lists nothing: its requests get 503s).
    """
    lists = {}
    for base in model_bases(rules):
        keyed: dict[str, Upstream] = {}
        public: dict[str, Upstream] = {}
        for endpoint in API_ENDPOINTS:
            path = base + endpoint[len("/v1") :]
            rule = match_rule(rules, "POST", path)
            if rule is None or rule.endpoint_path(path) != endpoint:
                continue
            upstream = upstreams.get(rule.service_id)
            if upstream is None:
                continue
            keyed.setdefault(upstream.id, upstream)
            if rule.public:
                public.setdefault(upstream.id, upstream)
        lists[base] = ModelLists(
            _model_list(list(keyed.values())), _model_list(list(public.values()))
        )
    return lists


def _model_list(upstreams: Sequence[Upstream]) -> ModelList:
    servers: dict[str, list[Server]] = {}
    for upstream in upstreams:
        order = sorted(range(len(upstream.targets)), key=lambda i: upstream.targets[i].priority)
        for i in order:
            target = upstream.targets[i]
            names = list(target.models)
            if target.default_model is not None and target.default_model not in names:
                names.append(target.default_model)
            server = Server(upstream.id, i, target.provider.value, upstream.hide_ejected_models)
            for name in names:
                servers.setdefault(name, []).append(server)
    models = tuple(
        ListedModel(
            name,
            tuple(dict.fromkeys(s.provider for s in found)),
            tuple(found),
        )
        for name, found in sorted(servers.items())
    )
    return ModelList(models, hides=any(u.hide_ejected_models for u in upstreams))


def page(
    models: Sequence[ListedModel],
    limit: int,
    after_id: str | None = None,
    before_id: str | None = None,
) -> tuple[Sequence[ListedModel], bool]:
    """Anthropic's pagination over a list sorted by id: the page, and whether there is
    more in the direction asked (``before_id``: before the page; else after it).

    Ids are compared, not looked up, so a cursor stays valid when its model has
    left the list between two pages.
    """
    ids = [m.id for m in models]
    if before_id is not None:
        end = bisect.bisect_left(ids, before_id)
        start = max(0, end - limit)
        return models[start:end], start > 0
    start = bisect.bisect_right(ids, after_id) if after_id is not None else 0
    return models[start : start + limit], start + limit < len(models)
