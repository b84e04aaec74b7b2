"""Rule matching and target choice: tiers, models, fallback."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_gateway.config.models import Algorithm, Method, Rule
from trio_gateway.core.routing import (
    ModelNotServed,
    TargetRoute,
    UpstreamPlan,
    compile_rules,
    match_rule,
)


@attrs.define
class Idle:
    in_flight: int = 0

    def latency(self, now: float) -> None:
        return None


def route(i, priority=1, models=(), default=None, weight=1):
    return TargetRoute(i, f"t{i}", weight, priority, frozenset(models), default)


def choose(plan, model, down=(), tried=()):
    return plan.choose(
        model,
        admits=lambda i: i not in down,
        excluded=lambda i: i in tried,
        loads=[Idle()] * len(plan.targets),
        now=0.0,
    )


def test_lowest_priority_tier_serves_while_any_target_is_eligible():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["m"]), route(1, 1, ["m"]), route(2, 2, ["m"])], Algorithm.ROUND_ROBIN
    )
    assert {choose(plan, "m").index for _ in range(10)} == {0, 1}
    assert choose(plan, "m", down={0}).index == 1
    assert choose(plan, "m", down={0}, tried={1}).index == 2
    assert choose(plan, "m", down={0, 1, 2}) is None


def test_model_routing_and_default_model():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["gpt-4"], "gpt-4"), route(1, 1, ["claude"], "claude")],
        Algorithm.ROUND_ROBIN,
    )
    assert [choose(plan, "claude").index for _ in range(3)] == [1, 1, 1]
    picked = [choose(plan, None) for _ in range(2)]
    assert {(c.index, c.model) for c in picked} == {(0, "gpt-4"), (1, "claude")}


def test_unlisted_model_falls_back_to_a_default_model():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["a"], "a"), route(1, 2, ["b"], "b")], Algorithm.ROUND_ROBIN
    )
    choice = choose(plan, "zzz")
    assert (choice.index, choice.model, choice.fallback) == (0, "a", True)
    # The target listing the model is down: a default model of an eligible one is used.
    choice = choose(plan, "a", down={0})
    assert (choice.index, choice.model, choice.fallback) == (1, "b", True)


def test_reject_unknown_models():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["a"], "a")], Algorithm.ROUND_ROBIN, reject_unknown_models=True
    )
    with pytest.raises(ModelNotServed, match="'zzz' is not served"):
        choose(plan, "zzz")
    assert choose(plan, "a", down={0}) is None  # listed but down: no substitution


def test_empty_models_accept_any_model():
    plan = UpstreamPlan.compile([route(0, 1, [], None)], Algorithm.ROUND_ROBIN)
    assert choose(plan, "anything").model == "anything"
    assert choose(plan, None) is None  # no model and no default: nothing to send


def rule(path, methods=("POST",), name="r", active=True, strip=False):
    return Rule(
        id=name,
        name=name,
        path=path,
        methods=tuple(Method(m) for m in methods),
        service_id="s-" + name,
        active=active,
        strip_path=strip,
    )


def test_longest_prefix_wins_on_segment_boundaries():
    rules = compile_rules(
        [
            rule("/", name="root"),
            rule("/v1", name="v1"),
            rule("/v1/chat", name="chat"),
            rule("/v1/messages", name="off", active=False),
        ]
    )
    assert match_rule(rules, "POST", "/v1/chat/completions").name == "chat"
    assert match_rule(rules, "POST", "/v1/messages").name == "v1"
    assert match_rule(rules, "POST", "/v10/x").name == "root"
    assert match_rule(rules, "GET", "/v1/chat/completions") is None


def test_strip_path():
    compiled = compile_rules([rule("/team-a", strip=True)])[0]
    assert compiled.endpoint_path("/team-a/v1/messages") == "/v1/messages"


# --- the last resort ---------------------------------------------------------------------


def last_resort(plan, model, down=(), tried=(), back_at=None):
    back_at = back_at or {}
    return plan.choose(
        model,
        admits=lambda i: i not in down,
        excluded=lambda i: i in tried,
        loads=[Idle()] * len(plan.targets),
        now=0.0,
        rank=lambda i: back_at.get(i, 0.0),
    )


def test_when_every_target_is_out_the_soonest_back_is_tried_rather_than_none():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["m"]), route(1, 1, ["m"]), route(2, 2, ["m"])], Algorithm.ROUND_ROBIN
    )
    choice = last_resort(plan, "m", down={0, 1, 2}, back_at={0: 30.0, 1: 5.0, 2: 10.0})
    assert (choice.index, choice.last_resort) == (1, True)
    # Failover goes on through the others, soonest back first; then nothing is left.
    assert last_resort(plan, "m", down={0, 1, 2}, tried={1}, back_at={0: 30.0, 2: 10.0}).index == 2
    assert last_resort(plan, "m", down={0, 1, 2}, tried={0, 1, 2}) is None


def test_a_target_in_rotation_always_comes_before_the_last_resort():
    plan = UpstreamPlan.compile([route(0, 1, ["m"]), route(1, 2, ["m"])], Algorithm.ROUND_ROBIN)
    choice = last_resort(plan, "m", down={0}, back_at={0: 0.1})
    assert (choice.index, choice.last_resort) == (1, False)


def test_the_models_own_targets_come_before_a_fallback_even_as_a_last_resort():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["m"], "m"), route(1, 1, ["other"], "other")], Algorithm.ROUND_ROBIN
    )
    choice = last_resort(plan, "m", down={0, 1}, back_at={0: 50.0, 1: 1.0})
    assert (choice.index, choice.model, choice.fallback) == (0, "m", False)
    fallback = last_resort(plan, "m", down={0, 1}, tried={0})
    assert (fallback.index, fallback.model, fallback.fallback) == (1, "other", True)


def test_with_model_fallback_reject_the_last_resort_keeps_to_the_model():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["m"], "m"), route(1, 1, ["other"], "other")],
        Algorithm.ROUND_ROBIN,
        reject_unknown_models=True,
    )
    assert last_resort(plan, "m", down={0, 1}).index == 0
    assert last_resort(plan, "m", down={0, 1}, tried={0}) is None


# --- peek (explain): the next choice, without moving a balancer ----------------------------------


@given(
    algorithm=st.sampled_from(list(Algorithm)),
    targets=st.lists(
        st.tuples(
            st.integers(1, 3),  # priority
            st.integers(1, 5),  # weight
            st.sets(st.sampled_from(["a", "b"])),  # models (empty: any)
            st.sampled_from([None, "a", "b"]),  # default model
        ),
        min_size=1,
        max_size=5,
    ),
    requests=st.lists(
        st.tuples(st.sampled_from([None, "a", "b", "c"]), st.sets(st.integers(0, 4))),
        min_size=1,
        max_size=20,
    ),
    reject=st.booleans(),
)
def test_a_peeked_choice_is_the_next_real_choice(algorithm, targets, requests, reject):
    routes = []
    for i, (priority, weight, models, default) in enumerate(targets):
        if models and default is not None and default not in models:
            default = None
        routes.append(route(i, priority, models, default, weight))
    plan = UpstreamPlan.compile(routes, algorithm, reject_unknown_models=reject)
    loads = [Idle()] * len(routes)

    def pick(model, down, peek):
        try:
            return plan.choose(
                model,
                admits=lambda i: i not in down,
                excluded=lambda i: False,
                loads=loads,
                now=0.0,
                rank=lambda i: float(i),
                peek=peek,
            )
        except ModelNotServed as exc:
            return exc.message

    for model, down in requests:
        assert pick(model, down, True) == pick(model, down, True) == pick(model, down, False)


# --- the models the client's API key may use ------------------------------------------------------


@given(
    targets=st.lists(
        st.tuples(
            st.integers(1, 2),  # priority
            st.sets(st.sampled_from(["a", "b", "c"])),  # models (empty: any)
            st.sampled_from([None, "a", "b", "c"]),  # default model
        ),
        min_size=1,
        max_size=5,
    ),
    allowed=st.sets(st.sampled_from(["a", "b", "c"]), min_size=1),
    model=st.sampled_from([None, "a", "b", "c", "d"]),
    down=st.sets(st.integers(0, 4)),
)
def test_a_key_never_gets_a_model_it_may_not_use(targets, allowed, model, down):
    """Whatever the request (no model, one nobody serves) and the targets' health: the
    model sent is the one asked for or one the key may use; and a choice is refused by
    the key only when every choice would have sent a model the key may not use."""
    routes = [
        route(i, priority, models, default if not models or default in models else None)
        for i, (priority, models, default) in enumerate(targets)
    ]
    plan = UpstreamPlan.compile(routes, Algorithm.ROUND_ROBIN)
    if model is not None and model not in allowed:
        return  # the proxy refuses it before routing
    kwargs = dict(
        admits=lambda i: i not in down,
        excluded=lambda i: False,
        loads=[Idle()] * len(routes),
        now=0.0,
        rank=lambda i: float(i),
        peek=True,
    )
    choice = plan.choose(model, allowed=frozenset(allowed), **kwargs)
    if choice is not None:
        assert choice.model == model or choice.model in allowed
        return
    anything = plan.choose(model, **kwargs)
    if anything is not None:  # what the key would have got: a model it may not use
        assert anything.model != model and anything.model not in allowed


def test_a_request_without_a_model_skips_targets_whose_default_the_key_may_not_use():
    plan = UpstreamPlan.compile(
        [route(0, 1, ["a"], "a"), route(1, 2, ["b"], "b")], Algorithm.ROUND_ROBIN
    )
    assert choose(plan, None).index == 0
    choice = plan.choose(
        None,
        admits=lambda i: True,
        excluded=lambda i: False,
        loads=[Idle()] * 2,
        now=0.0,
        allowed=frozenset({"b"}),
    )
    assert (choice.index, choice.model) == (1, "b")  # the lower tier, with a default it may use
