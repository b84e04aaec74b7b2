"""The scenario catalogue (examples/scenarios/), in its short form, in virtual time.

Each scenario runs twice: as written (its expectations must hold) and with the
protection it exercises switched off (the expectations that guard it must fail),
so no expectation here is one that cannot fail. Everything runs in the test's
Trio loop on pytest-trio's ``autojump_clock``: a 150 s scenario takes the time
its requests take to process, over real loopback sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trio_gateway.core import failover
from trio_gateway.runtime.supervisor import Runtime
from trio_gateway.testing.scenario.model import Scenario, load_scenario
from trio_gateway.testing.scenario.report import Report, evaluate, render_text
from trio_gateway.testing.scenario.runner import run_scenario

CATALOGUE = Path(__file__).parent.parent.parent / "examples" / "scenarios"
#: Beyond its own length, what a run may take (virtual seconds): a bound on a hang.
SLACK_S = 120

#: Scenarios whose expectations are those of issue 10's health model, which the
#: current gateway does not meet yet. Strict: each goes red the moment it passes,
#: so the lead flips it here when the health model lands.
NEEDS_ISSUE_10 = {
    "all-down": "needs issue 10: try the likeliest target rather than 503 without an attempt",
    "flapping": "needs issue 10: a recovered target is back within one ejection time",
    "mixed-faults": "needs issue 10: failures must have tried every target",
    "no-response": "needs issue 10: slow failures eject however long each took",
    "no-terminator": "needs issue 10: a complete stream without [DONE] is ended properly",
    "rate-limit-retry-after": "needs issue 10: a 429 parks a target exactly Retry-After long",
    "slow-first-token": "needs issue 10: slow failures eject however long each took",
    "stall-after-headers": "needs issue 10: a whole answer that stalls fails over",
    "stream-stall": "needs issue 10: slow failures eject however long each took",
}

SOAK = "soak"
NAMES = sorted(p.stem for p in CATALOGUE.glob("*.yaml") if p.stem != SOAK)


def load(name: str) -> Scenario:
    return load_scenario(CATALOGUE / f"{name}.yaml").shortened()


async def run(scenario: Scenario, **options: Any) -> Report:
    with trio.fail_after(scenario.duration + scenario.load.timeout + SLACK_S):
        return evaluate(await run_scenario(scenario, virtual=True, **options))


def test_the_catalogue_is_the_issue_s_list():
    assert set(NAMES) == {
        "rate-limit-retry-after",
        "rate-limit-persistent",
        "one-500",
        "persistent-503",
        "reset-before-headers",
        "no-response",
        "slow-first-token",
        "stall-after-headers",
        "stream-cut",
        "stream-stall",
        "malformed-event",
        "no-terminator",
        "flapping",
        "tier-down",
        "all-down",
        "reconfigure",
        "disconnects",
        "mixed-faults",
    }
    assert set(NEEDS_ISSUE_10) <= set(NAMES)
    assert set(OFF) == set(NAMES)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NEEDS_ISSUE_10[n]))
        if n in NEEDS_ISSUE_10
        else n
        for n in NAMES
    ],
)
async def test_the_scenario_holds(name, autojump_clock):
    report = await run(load(name))
    assert report.checks, "a scenario without expectations proves nothing"
    assert report.passed, render_text(report)


# --- each scenario with its protection switched off ----------------------------------------


def _upstream(**changes: Any) -> Callable[[Scenario], Scenario]:
    checks = changes.pop("health_checks", {})

    def change(s: Scenario) -> Scenario:
        upstream = dict(s.upstream)
        merged = {**upstream.get("health_checks", {}), **checks}
        return attrs.evolve(s, upstream={**upstream, **changes, "health_checks": merged})

    return change


def _service(**changes: Any) -> Callable[[Scenario], Scenario]:
    return lambda s: attrs.evolve(s, service={**s.service, **changes})


NO_EJECTION = _upstream(health_checks={"passive": False})
NO_FAILOVER = _service(max_attempts=1)
#: Budgets longer than the test: a silent target is waited for until the client gives up.
NO_FIRST_BYTE_BUDGET = _service(first_byte_timeout=5000, request_timeout=10000)
NO_IDLE_BUDGET = _service(idle_timeout=5000, request_timeout=10000)


def _frozen_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime that ignores configuration changes after its start."""
    reconcile = Runtime._reconcile

    def first_only(self: Runtime, snapshot: Any) -> None:
        if not self._actors:
            reconcile(self, snapshot)

    monkeypatch.setattr(Runtime, "_reconcile", first_only)


def _abandons_blamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway that holds a call its client abandoned against the target."""
    monkeypatch.setattr(
        failover, "NEUTRAL_OUTCOMES", failover.NEUTRAL_OUTCOMES - {failover.Outcome.CANCELLED}
    )


def _everyone_leaves(s: Scenario) -> Scenario:
    return attrs.evolve(s, load=attrs.evolve(s.load, disconnect=1.0))


@attrs.frozen
class Off:
    """How to switch a scenario's protection off, and which expectations must then fail."""

    fails: frozenset[str]
    change: Callable[[Scenario], Scenario] = lambda s: s
    #: No gateway at all: the load goes straight to this fake.
    direct: str | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def off(*fails: str, **how: Any) -> Off:
    return Off(fails=frozenset(fails), **how)


OFF = {
    "rate-limit-retry-after": off("limited: success_rate", change=NO_FAILOVER),
    "rate-limit-persistent": off("limited: success_rate", change=NO_FAILOVER),
    "one-500": off("blip: success_rate", change=NO_FAILOVER),
    "persistent-503": off(
        "outage: calls primary", "outage: ejected_within primary", change=NO_EJECTION
    ),
    "reset-before-headers": off(
        "resets: calls primary", "resets: ejected_within primary", change=NO_EJECTION
    ),
    "no-response": off("silent: latency p50", "silent: success_rate", change=NO_FIRST_BYTE_BUDGET),
    "slow-first-token": off("slow: latency p50", change=NO_FIRST_BYTE_BUDGET),
    "stall-after-headers": off("stalled: success_rate", change=NO_IDLE_BUDGET),
    "stream-cut": off("cutting: success_rate", "cutting: calls primary", change=NO_EJECTION),
    "stream-stall": off("whole run: streams_terminated", change=NO_IDLE_BUDGET),
    "malformed-event": off("malformed: success_rate", change=NO_FAILOVER),
    "no-terminator": off("whole run: streams_terminated", direct="primary"),
    "flapping": off("flapping: failed_calls primary", change=NO_EJECTION),
    "tier-down": off("tier-down: calls first-a", "tier-down: calls first-b", change=NO_EJECTION),
    "all-down": off("all-down: failures_tried_every_target", change=NO_FAILOVER),
    "reconfigure": off("after: calls old", "after: traffic new", patch=_frozen_configuration),
    "disconnects": off(
        "whole run: not_ejected primary", change=_everyone_leaves, patch=_abandons_blamed
    ),
    "mixed-faults": off("whole run: success_rate", change=NO_FAILOVER),
}


@pytest.mark.parametrize("name", NAMES)
async def test_the_scenario_fails_with_its_protection_off(name, autojump_clock, monkeypatch):
    how = OFF[name]
    if how.patch is not None:
        how.patch(monkeypatch)
    report = await run(how.change(load(name)), direct=how.direct)
    failed = {f"{c.scope}: {c.name}" for c in report.failed}
    assert how.fails <= failed, render_text(report)
