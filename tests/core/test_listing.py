"""What ``GET /v1/models`` lists, compiled from the rules (core/listing.py), sans-IO."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_gateway.config.models import Method, Provider, Rule, Target, Upstream
from trio_gateway.core.listing import ListedModel, compile_model_lists, model_bases, page
from trio_gateway.core.routing import compile_rules


def rule(path: str, service: str, **fields) -> Rule:
    return Rule(id=path, name=path, path=path, service_id=service, **fields)


def upstream(uid: str, *targets: tuple[str, list[str], str | None], hide: bool = False) -> Upstream:
    return Upstream(
        id=uid,
        name=uid,
        hide_ejected_models=hide,
        targets=tuple(
            Target(
                id=f"{uid}{i}",
                provider=Provider(provider),
                base_url="http://x.test",
                models=tuple(models),
                default_model=default,
                priority=i + 1,
            )
            for i, (provider, models, default) in enumerate(targets)
        ),
    )


CHAT = upstream("chat", ("openai", ["gpt-4o", "gpt-4"], "gpt-4o"), ("anthropic", [], "claude"))
EMB = upstream("emb", ("azure-openai", ["embed", "gpt-4o"], None))
FREE = upstream("free", ("openai-compatible", ["llama"], None))


def ids(models) -> list[str]:
    return [m.id for m in models]


def never(upstream_id: str, index: int) -> bool:
    return False


def test_a_base_lists_the_models_its_endpoints_reach_with_their_providers():
    rules = compile_rules(
        [
            rule("/v1", "s-chat"),
            rule("/v1/embeddings", "s-emb"),
            rule("/other", "s-free"),  # not reachable from /v1
        ]
    )
    lists = compile_model_lists(rules, {"s-chat": CHAT, "s-emb": EMB, "s-free": FREE})
    assert list(lists) == ["/v1"]
    listed = lists["/v1"].keyed
    assert ids(listed.models) == ["claude", "embed", "gpt-4", "gpt-4o"]
    assert listed.by_id["gpt-4o"].providers == ("openai", "azure-openai")
    assert listed.by_id["claude"].providers == ("anthropic",)
    assert listed.by_id["gpt-4o"].openai()["owned_by"] == "openai"
    assert listed.by_id["claude"].anthropic()["display_name"] == "claude"
    assert ids(lists["/v1"].public.models) == []  # no public rule


def test_strip_path_rules_are_bases_of_their_own():
    rules = compile_rules(
        [
            rule("/v1", "s-chat"),
            rule("/free", "s-free", strip_path=True, public=True),
            rule("/", "s-emb", strip_path=True),
        ]
    )
    assert model_bases(rules) == ["/v1", "/free/v1"]
    lists = compile_model_lists(rules, {"s-chat": CHAT, "s-emb": EMB, "s-free": FREE})
    assert ids(lists["/free/v1"].keyed.models) == ["llama"]
    assert ids(lists["/free/v1"].public.models) == ["llama"]
    assert ids(lists["/v1"].keyed.models) == ["claude", "gpt-4", "gpt-4o"]


def test_what_no_rule_routes_to_an_endpoint_adds_nothing():
    rules = compile_rules(
        [
            # Without strip_path, /kept/v1/chat/completions is no endpoint.
            rule("/v1/chat", "s-free", methods=(Method.GET,)),  # not for POST
            rule("/v1/messages", "s-emb", strip_path=True),  # strips to "/": no endpoint
            rule("/v1/responses", "s-gone"),  # a service that cannot serve
        ]
    )
    lists = compile_model_lists(rules, {"s-free": FREE, "s-emb": EMB})
    assert ids(lists["/v1"].keyed.models) == []


def test_hidden_models_are_those_whose_every_target_is_ejected_where_hiding_is_on():
    hiding = upstream("h", ("openai", ["a", "b"], None), ("openai", ["b", "c"], None), hide=True)
    keeping = upstream("k", ("anthropic", ["c"], None))
    rules = compile_rules([rule("/v1", "s-h"), rule("/v1/messages", "s-k")])
    listed = compile_model_lists(rules, {"s-h": hiding, "s-k": keeping})["/v1"].keyed
    assert listed.hides
    out = {("h", 0)}

    def ejected(upstream_id: str, index: int) -> bool:
        return (upstream_id, index) in out

    assert ids(listed.visible(ejected)) == ["b", "c"]  # "b" is also served by h1
    assert listed.get("a", ejected) is None and listed.get("b", ejected) is not None
    out.add(("h", 1))
    assert ids(listed.visible(ejected)) == ["c"]  # "c" is served by k, which does not hide
    assert ids(listed.visible(never)) == ["a", "b", "c"]


MODELS = st.lists(st.text("abcdefgh-", min_size=1, max_size=4), unique=True).map(sorted)


@given(models=MODELS, limit=st.integers(1, 5))
def test_pages_forward_and_backward_cover_the_list_once(models, limit):
    listed = [ListedModel(m, ("openai",), ()) for m in models]
    forward: list[str] = []
    after = None
    while True:
        found, more = page(listed, limit, after_id=after)
        assert len(found) <= limit
        forward += ids(found)
        if not more:
            break
        after = found[-1].id
    assert forward == models
    backward: list[str] = []
    before = models[-1] if models else None
    tail = models[-1:]
    while before is not None:
        found, more = page(listed, limit, before_id=before)
        backward = ids(found) + backward
        if not more:
            break
        before = found[0].id
    assert backward + tail == models


@given(models=MODELS, cursor=st.text("abcdefgh-", min_size=1, max_size=4))
def test_a_cursor_that_left_the_list_still_pages(models, cursor):
    listed = [ListedModel(m, ("openai",), ()) for m in models]
    found, _ = page(listed, 1000, after_id=cursor)
    assert ids(found) == [m for m in models if m > cursor]
    found, _ = page(listed, 1000, before_id=cursor)
    assert ids(found) == [m for m in models if m < cursor]
