"""What a scenario file says, and how it is read: validated, errors by line and field.

A scenario is a failure *story*: fake providers, a gateway upstream in front of
them, a load, and a timeline of phases that change faults (and targets) as it
runs, with expectations for the whole run and for each phase. The file format is
documented in ``docs/testing.md``; in short::

    name: persistent-503
    fakes: [{name: primary}, {name: backup}]
    upstream:
      targets: [{fake: primary}, {fake: backup, priority: 2}]
      health_checks: {passive: true, threshold: 3, interval: 60}
    service: {first_byte_timeout: 5}
    load: {concurrency: 4, stream: 0.5}
    phases:
      - {name: calm, duration: 5}
      - name: outage
        duration: 20
        faults: {primary: [{kind: error, status: 503}]}
        expect: {success_rate: 1.0, calls: {primary: {max: 3}}}
    expect: {streams_terminated: true}

Reading is two steps: YAML is composed into nodes (so every field's line is known),
then the data is structured by :mod:`trio_gateway.serde`'s strict converter into the
frozen classes below (so every problem has a ``phases[1].faults.primary[0].status``
path), and the path is mapped back to its line: ``scenario.yaml:12: phases[1]...``.
The upstream and service sections are checked by the gateway's own models
(:mod:`trio_gateway.testing.stack`), so a scenario accepts exactly what the gateway does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import attrs
import yaml

from trio_gateway import serde
from trio_gateway.config.models import Between, Name, Text
from trio_gateway.errors import Problem, ValidationFailed
from trio_gateway.testing.fake import Fault
from trio_gateway.testing.stack import (
    StackSpec,
    check_fakes,
    check_service_section,
    check_upstream_section,
    target_names,
)

Share = Annotated[float, Between(0, 1)]
Seconds = Annotated[float, Between(0, 86_400)]
Duration = Annotated[float, Between(0, 86_400, lo_open=True)]
Count = Annotated[int, Between(0, 1_000_000_000)]
PERCENTILES = ("p50", "p90", "p99", "max")


class Api(enum.StrEnum):
    """The client dialect of the load."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@attrs.frozen(kw_only=True)
class Load:
    """The clients: ``concurrency`` loops, or ``rate`` new requests per second."""

    concurrency: Annotated[int, Between(1, 10_000)] | None = None
    rate: Annotated[float, Between(0, 100_000, lo_open=True)] | None = None
    #: Share of the requests that stream.
    stream: Share = 0.0
    api: Api = Api.OPENAI
    #: The request body (``model``, ``messages``...); ``stream`` is set per request.
    request: Mapping[str, Any] | None = None
    #: The client's own bound on one request: a request still running then is *hung*.
    timeout: Duration = 300.0
    #: Each client's pause between two requests (``concurrency`` only).
    pause: Seconds = 0.0
    #: Share of the requests the client abandons: a stream after its first content,
    #: a whole answer after ``disconnect_after`` seconds.
    disconnect: Share = 0.0
    disconnect_after: Duration = 0.05
    #: ``rate`` only: at most this many requests at once (the next ones wait).
    max_in_flight: Annotated[int, Between(1, 100_000)] = 1000
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of 'concurrency' or 'rate'")


@attrs.frozen(kw_only=True)
class Limit:
    """At most ``max``, at least ``min`` (either may be left out)."""

    min: float | None = None
    max: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' must not be above 'max'")

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g}..{self.max:g}"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


@attrs.frozen(kw_only=True)
class TrafficShare:
    """A target's share of the successful answers: ``share`` ± ``tolerance``, or a range."""

    share: Share | None = None
    tolerance: Share = 0.05
    min: Share | None = None
    max: Share | None = None

    def __attrs_post_init__(self) -> None:
        if (self.share is None) == (self.min is None and self.max is None):
            raise ValueError("give 'share' (with 'tolerance'), or 'min'/'max'")

    def limit(self) -> Limit:
        if self.share is not None:
            return Limit(min=max(0.0, self.share - self.tolerance), max=self.share + self.tolerance)
        return Limit(min=self.min, max=self.max)


@attrs.frozen(kw_only=True)
class Resources:
    """The soak's leak checks, measured in the runner's process (in-process gateway)."""

    #: Resident memory at the end may exceed its level after the first phase by this share.
    rss_growth: Share | None = None
    #: Open file descriptors at the end may exceed their level after the first phase by this.
    fd_growth: Count | None = None


@attrs.frozen(kw_only=True)
class Expectations:
    """What must hold, for the whole run or for one phase (the requests it started).

    Targets are named as in the upstream (their fake's name by default).
    """

    #: Share of the requests (those the client did not abandon) that succeeded.
    success_rate: Share | None = None
    #: Every stream read to its end ended with its terminator or an error event.
    streams_terminated: bool | None = None
    #: The only error kinds the client may see (``http_503``, ``stream_error``...).
    error_kinds: tuple[Annotated[str, Text(1, 100)], ...] | None = None
    #: At most this many errors of a kind.
    max_errors: Mapping[Annotated[str, Text(1, 100)], Count] | None = None
    #: At most this many errors answered without any attempt (a 503 with an empty trail).
    refused_without_attempt: Count | None = None
    #: Every failed request tried every target, or failed after its first content.
    failures_tried_every_target: bool | None = None
    #: Each target's share of the successful answers.
    traffic: Mapping[Name, TrafficShare] | None = None
    #: Client calls (attempts in the trails) to a target.
    calls: Mapping[Name, Limit] | None = None
    #: Client calls to a target that failed.
    failed_calls: Mapping[Name, Limit] | None = None
    #: The target was ejected within this many seconds of the scope's start.
    ejected_within: Mapping[Name, Seconds] | None = None
    #: These targets were never ejected.
    not_ejected: tuple[Name, ...] | None = None
    #: The target answered a client successfully again within this many seconds.
    recovered_within: Mapping[Name, Seconds] | None = None
    #: No client request reached these targets while they were ejected (trials aside).
    no_calls_while_ejected: tuple[Name, ...] | None = None
    #: Client-observed latency of the successful requests, in seconds (p50, p90, p99, max).
    latency: Mapping[str, Seconds] | None = None
    #: What the gateway added: time to the answer minus the answering attempt's own time.
    added_latency: Mapping[str, Seconds] | None = None
    #: After the load, nothing in flight at the gateway or pending at a fake within N s.
    settled_within: Seconds | None = None
    resources: Resources | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("latency", "added_latency"):
            value = getattr(self, name)
            for key in value or ():
                if key not in PERCENTILES:
                    raise ValueError(f"{name}: {key!r} is not one of {', '.join(PERCENTILES)}")


@attrs.frozen(kw_only=True)
class Phase:
    """A span of the timeline: faults (and targets) set at its start, its expectations."""

    name: Name
    duration: Duration
    #: Per fake: the faults in effect from this phase's start (``[]`` clears them).
    faults: Mapping[Name, tuple[Fault, ...]] = attrs.field(factory=dict)
    #: The upstream's targets from this phase's start (an admin write under load).
    targets: tuple[Mapping[str, Any], ...] | None = None
    expect: Expectations | None = None


@attrs.frozen(kw_only=True)
class Short:
    """The short form: load fields to change, and shorter phases (by name, in seconds)."""

    load: Mapping[str, Any] = attrs.field(factory=dict)
    durations: Mapping[Name, Duration] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Scenario:
    name: Name
    description: str = ""
    fakes: tuple[Any, ...] = ()
    upstream: Mapping[str, Any] = attrs.field(factory=dict)
    service: Mapping[str, Any] = attrs.field(factory=dict)
    load: Load
    phases: tuple[Phase, ...]
    expect: Expectations | None = None
    #: What ``--short`` (and the test suite) changes: less load, shorter phases.
    short: Short | None = None
    #: How often the runner samples each target's health, in seconds.
    health_interval: Duration = 0.1

    @property
    def duration(self) -> float:
        return sum(phase.duration for phase in self.phases)

    def stack_spec(self) -> StackSpec:
        return StackSpec(fakes=self.fakes, upstream=self.upstream, service=self.service)

    def target_names(self) -> list[str]:
        return target_names(self.upstream.get("targets") or [])

    def shortened(self) -> Scenario:
        """The short form: the ``short`` load fields and phase durations applied."""
        if self.short is None:
            return self
        phases = tuple(
            attrs.evolve(p, duration=self.short.durations.get(p.name, p.duration))
            for p in self.phases
        )
        return attrs.evolve(self, load=_short_load(self.load, self.short.load), phases=phases)


def _short_load(load: Load, changes: Mapping[str, Any]) -> Load:
    fields = {**attrs.asdict(load, recurse=False), **changes}
    if "rate" in changes:
        fields["concurrency"] = None
    if "concurrency" in changes:
        fields["rate"] = None
    fields["api"] = Api(fields["api"])
    return Load(**fields)


# --- reading -------------------------------------------------------------------------------


class ScenarioError(Exception):
    """A scenario file that cannot be run: each problem with its line and field."""

    def __init__(self, source: str, problems: list[tuple[int | None, Problem]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [
            f"{self.source}:{line}: {p.loc}: {p.msg}"
            if line
            else f"{self.source}: {p.loc}: {p.msg}"
            for line, p in self.problems
        ]


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file, or raise :class:`ScenarioError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = Problem("$", f"cannot read: {exc.strerror}")
        raise ScenarioError(str(path), [(None, problem)]) from exc
    return parse_scenario(text, str(path))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(source, [(line, Problem("$", f"invalid YAML: {problem}"))]) from exc
    lines = _lines(node) if node is not None else {}
    try:
        return validate(data)
    except ValidationFailed as exc:
        problems = [attrs.evolve(p, loc=_clean(p.loc)) for p in exc.details]
        located = sorted(((_line_of(p.loc, lines), p) for p in problems), key=lambda lp: lp[0] or 0)
        raise ScenarioError(source, located) from exc


def validate(data: Any) -> Scenario:
    """A scenario from parsed YAML/JSON, or :class:`ValidationFailed` naming each problem."""
    if not isinstance(data, dict):
        raise ValidationFailed.single("$", "a scenario file is a mapping (name, fakes, ...)")
    problems: list[Problem] = []
    fakes = check_fakes(_fakes(data.get("fakes")), "fakes", problems)
    fake_names = {f.name for f in fakes}
    check_upstream_section(data.get("upstream"), fake_names, "upstream", problems)
    check_service_section(data.get("service") or {}, "service", problems)
    rest = {k: v for k, v in data.items() if k not in ("fakes", "upstream", "service")}
    for phase in rest.get("phases") or ():
        if isinstance(phase, dict) and isinstance(phase.get("faults"), dict):
            phase["faults"] = {k: _bare_kinds(v) for k, v in phase["faults"].items()}
    try:
        scenario = serde.structure(rest, Scenario)
    except ValidationFailed as exc:
        problems.extend(exc.details)
        scenario = None
    if scenario is None or problems:
        raise ValidationFailed.of(problems)
    scenario = attrs.evolve(
        scenario,
        fakes=fakes,
        upstream=dict(data["upstream"]),
        service=dict(data.get("service") or {}),
    )
    problems += _cross_checks(scenario, fake_names)
    if problems:
        raise ValidationFailed.of(problems)
    return scenario


def _bare_kinds(faults: Any) -> Any:
    """A fault may be a bare kind name (``hang``), as everywhere else."""
    if isinstance(faults, list):
        return [{"kind": f} if isinstance(f, str) else f for f in faults]
    return faults


def _fakes(fakes: Any) -> Any:
    if not isinstance(fakes, list):
        return fakes
    return [
        {**f, "faults": _bare_kinds(f["faults"])} if isinstance(f, dict) and "faults" in f else f
        for f in fakes
    ]


def _cross_checks(scenario: Scenario, fakes: set[str]) -> list[Problem]:
    """What spans sections: names of fakes and targets, the phases' target lists."""
    problems: list[Problem] = []
    if not scenario.phases:
        problems.append(Problem("phases", "must list at least one phase"))
    targets = set(scenario.target_names())
    seen: set[str] = set()
    for i, phase in enumerate(scenario.phases):
        loc = f"phases[{i}]"
        if phase.name in seen:
            problems.append(Problem(f"{loc}.name", "another phase has this name"))
        seen.add(phase.name)
        for fake in phase.faults:
            if fake not in fakes:
                problems.append(Problem(f"{loc}.faults.{fake}", f"no fake named {fake!r}"))
        if phase.targets is not None:
            check_upstream_section(
                {**scenario.upstream, "targets": list(phase.targets)},
                fakes,
                loc,
                problems,
            )
            targets |= set(target_names(phase.targets))
    scopes = [("expect", scenario.expect)] + [
        (f"phases[{i}].expect", p.expect) for i, p in enumerate(scenario.phases)
    ]
    for loc, expect in scopes:
        if expect is None:
            continue
        for field in (
            "traffic",
            "calls",
            "failed_calls",
            "ejected_within",
            "not_ejected",
            "recovered_within",
            "no_calls_while_ejected",
        ):
            for name in getattr(expect, field) or ():
                if name not in targets:
                    known = ", ".join(sorted(targets))
                    problems.append(
                        Problem(f"{loc}.{field}.{name}", f"no target named {name!r} ({known})")
                    )
    if scenario.short is not None:
        fields = {**attrs.asdict(scenario.load, recurse=False), **scenario.short.load}
        if "rate" in scenario.short.load:
            fields["concurrency"] = None
        if "concurrency" in scenario.short.load:
            fields["rate"] = None
        if isinstance(fields["api"], Api):
            fields["api"] = fields["api"].value
        try:
            serde.structure(
                {k: v for k, v in fields.items() if v is not None}, Load, loc="short.load"
            )
        except ValidationFailed as exc:
            problems.extend(exc.details)
        phase_names = {p.name for p in scenario.phases}
        for name in scenario.short.durations:
            if name not in phase_names:
                problems.append(Problem(f"short.durations.{name}", f"no phase named {name!r}"))
    return problems


# --- line numbers --------------------------------------------------------------------------

_QUOTED_KEY = re.compile(r"\[(['\"])(.*?)\1\]")


def _clean(loc: str) -> str:
    """``faults['primary'][0]`` (cattrs' spelling of a mapping key) -> ``faults.primary[0]``."""
    return _QUOTED_KEY.sub(lambda m: f".{m.group(2)}", loc)


def _lines(root: yaml.Node) -> dict[str, int]:
    """Every field's path (``phases[1].faults.primary[0].status``) -> its line (1-based)."""
    found: dict[str, int] = {"$": root.start_mark.line + 1}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value)
                child = f"{path}.{name}" if path else name
                found[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = f"{path}[{i}]"
                found[child] = item.start_mark.line + 1
                walk(item, child)

    walk(root, "")
    return found


def _line_of(loc: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``loc``, or of its nearest enclosing field that the file has."""
    while loc:
        if loc in lines:
            return lines[loc]
        cut = max(loc.rfind("."), loc.rfind("["))
        if cut <= 0:
            break
        loc = loc[:cut]
    return lines.get(loc) or lines.get("$")
