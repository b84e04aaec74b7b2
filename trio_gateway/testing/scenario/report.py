"""What a run showed: statistics per phase, the expectations' verdicts, and three renderings.

:func:`evaluate` turns a :class:`~.runner.Run` into a :class:`Report`: one
:class:`Stats` per scope (each phase, and the whole run), and one :class:`Check` per
expectation. :func:`render_text` is the terminal report (a table per phase),
:func:`to_json` the same as data, :func:`render_html` a self-contained page with an
inline SVG timeline (answers per target per second, errors, each target's health
state over time) and no script or outside resource.

A scope's requests are those that *started* in it; a fake's calls are the client
calls that reached it (its POST requests) in it; times are seconds since the run's start.
"""

from __future__ import annotations

import bisect
import collections
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from trio_gateway.testing.scenario.load import Result
from trio_gateway.testing.scenario.model import Expectations, Scenario
from trio_gateway.testing.scenario.runner import Run, Sample, Span
from trio_gateway.testing.stack import target_names

WHOLE = "whole run"
EJECTED = "ejected"


@attrs.frozen
class Stats:
    scope: str
    start: float
    end: float
    requests: int
    ok: int
    abandoned: int
    answered_by: Mapping[str, int]
    errors: Mapping[str, int]
    latency: Mapping[str, float]
    added_latency: Mapping[str, float]
    #: Client calls per target (attempts in the trails), and how many of them failed.
    calls: Mapping[str, int]
    failed_calls: Mapping[str, int]
    #: Client requests each fake received (its POSTs), by target name.
    received: Mapping[str, int]
    ejections: Mapping[str, int]
    streams: int
    unterminated: int
    malformed_events: int
    refused_without_attempt: int

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.requests if self.requests else None


@attrs.frozen
class Check:
    scope: str
    name: str
    expected: str
    actual: str
    passed: bool


@attrs.frozen
class Report:
    scenario: Scenario
    run: Run
    phases: tuple[Stats, ...]
    whole: Stats
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


# --- statistics ----------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 (nearest rank) and max of ``values``; empty for no values."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1]}


def _targets(run: Run) -> list[str]:
    names = list(run.scenario.target_names())
    for phase in run.scenario.phases:
        if phase.targets is not None:
            names += [n for n in target_names(phase.targets) if n not in names]
    return names


def _in(results: Iterable[Result], span: Span) -> list[Result]:
    return [r for r in results if span.start <= r.start < span.end]


def stats(run: Run, span: Span, *, whole: bool = False) -> Stats:
    results = run.results if whole else _in(run.results, span)
    counted = [r for r in results if not r.abandoned]
    ok = [r for r in counted if r.ok]
    calls: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    for r in results:
        for a in r.attempts:
            calls[a.target] += 1
            if not a.outcome.startswith("2"):
                failed[a.target] += 1
    end = math.inf if whole else span.end
    received = {
        target: sum(1 for t in run.received.get(fake, ()) if span.start <= t < end)
        for target, fake in run.fake_of.items()
    }
    ejections = {}
    for target, samples in (run.health or {}).items():
        ejections[target] = _ejections(samples, span.start, end)
    streams = [r for r in counted if r.stream and r.terminated is not None]
    return Stats(
        scope=WHOLE if whole else span.name,
        start=span.start,
        end=span.end,
        requests=len(counted),
        ok=len(ok),
        abandoned=len(results) - len(counted),
        answered_by=dict(collections.Counter(r.target or "?" for r in ok)),
        errors=dict(collections.Counter(r.kind for r in counted if not r.ok)),
        latency=percentiles([r.latency for r in ok]),
        added_latency=percentiles([a for r in ok if (a := r.added_latency) is not None]),
        calls=dict(calls),
        failed_calls=dict(failed),
        received=received,
        ejections=ejections,
        streams=len(streams),
        unterminated=sum(1 for r in streams if not r.terminated),
        malformed_events=sum(r.malformed for r in counted),
        refused_without_attempt=sum(
            1 for r in counted if r.kind.startswith("http_") and not r.attempts
        ),
    )


def _ejections(samples: Sequence[Sample], start: float, end: float) -> int:
    before = [s.ejections for s in samples if s.t <= start]
    during = [s.ejections for s in samples if start <= s.t < end]
    if not during:
        return 0
    return max(during) - (before[-1] if before else 0)


# --- expectations --------------------------------------------------------------------------


def evaluate(run: Run) -> Report:
    scenario = run.scenario
    whole_span = Span(WHOLE, 0.0, run.duration)
    phases = tuple(stats(run, span) for span in run.spans)
    whole = stats(run, whole_span, whole=True)
    checks: list[Check] = []
    if scenario.expect is not None:
        checks += _check(run, scenario.expect, whole_span, whole, whole=True)
    for phase, span, phase_stats in zip(scenario.phases, run.spans, phases, strict=True):
        if phase.expect is not None:
            checks += _check(run, phase.expect, span, phase_stats)
    return Report(scenario, run, phases, whole, tuple(checks))


def _check(
    run: Run, expect: Expectations, span: Span, s: Stats, *, whole: bool = False
) -> list[Check]:
    scope = s.scope
    out: list[Check] = []

    def add(name: str, expected: str, actual: str, passed: bool) -> None:
        out.append(Check(scope, name, expected, actual, passed))

    if expect.success_rate is not None:
        rate = s.success_rate
        add(
            "success_rate",
            f">= {expect.success_rate:.3f}",
            "no requests" if rate is None else f"{rate:.4f} ({s.ok}/{s.requests})",
            rate is not None and rate >= expect.success_rate,
        )
    if expect.streams_terminated:
        add(
            "streams_terminated",
            "every stream ends with its terminator or an error event",
            f"{s.unterminated} of {s.streams} did not",
            s.unterminated == 0,
        )
    if expect.error_kinds is not None:
        other = {k: n for k, n in s.errors.items() if k not in expect.error_kinds}
        add(
            "error_kinds",
            f"only {', '.join(expect.error_kinds) or 'none'}",
            _counts(s.errors) or "none",
            not other,
        )
    for kind, most in (expect.max_errors or {}).items():
        n = s.errors.get(kind, 0)
        add(f"max_errors {kind}", f"<= {most}", str(n), n <= most)
    if expect.refused_without_attempt is not None:
        n = s.refused_without_attempt
        add(
            "refused_without_attempt",
            f"<= {expect.refused_without_attempt}",
            str(n),
            n <= expect.refused_without_attempt,
        )
    if expect.failures_tried_every_target:
        bad = _untried_failures(run, span, whole)
        add(
            "failures_tried_every_target",
            "each failure tried every target, or failed after its first content",
            f"{len(bad)} did not"
            + (f" (e.g. request {bad[0].index}: {bad[0].kind})" if bad else ""),
            not bad,
        )
    answered = sum(s.answered_by.values())
    for target, share in (expect.traffic or {}).items():
        limit = share.limit()
        value = s.answered_by.get(target, 0) / answered if answered else 0.0
        add(
            f"traffic {target}",
            f"share {limit}",
            f"{value:.3f} ({s.answered_by.get(target, 0)}/{answered})",
            answered > 0 and limit.holds(value),
        )
    for target, limit in (expect.calls or {}).items():
        n = s.calls.get(target, 0)
        add(
            f"calls {target}",
            str(limit),
            f"{n} ({s.failed_calls.get(target, 0)} failed)",
            limit.holds(n),
        )
    for target, limit in (expect.failed_calls or {}).items():
        n = s.failed_calls.get(target, 0)
        add(
            f"failed_calls {target}", str(limit), f"{n} of {s.calls.get(target, 0)}", limit.holds(n)
        )
    for target, within in (expect.ejected_within or {}).items():
        when = _ejected_at(run, target, span)
        add(
            f"ejected_within {target}",
            f"<= {within:g} s",
            _health_missing(run) or ("never" if when is None else f"{when:.2f} s"),
            when is not None and when <= within,
        )
    for target in expect.not_ejected or ():
        n = s.ejections.get(target, 0)
        add(
            f"not_ejected {target}",
            "no ejection",
            _health_missing(run) or f"{n} ejection(s)",
            run.health is not None and n == 0,
        )
    for target, within in (expect.recovered_within or {}).items():
        when = _recovered_at(run, target, span)
        add(
            f"recovered_within {target}",
            f"<= {within:g} s",
            "never" if when is None else f"{when:.2f} s",
            when is not None and when <= within,
        )
    for target in expect.no_calls_while_ejected or ():
        bad = _calls_while_ejected(run, target, span, whole)
        add(
            f"no_calls_while_ejected {target}",
            "none outside a trial",
            _health_missing(run) or (f"{len(bad)} (first at {bad[0]:.2f} s)" if bad else "none"),
            run.health is not None and not bad,
        )
    for name, bounds, values in (
        ("latency", expect.latency, s.latency),
        ("added_latency", expect.added_latency, s.added_latency),
    ):
        for p, most in (bounds or {}).items():
            value = values.get(p)
            add(
                f"{name} {p}",
                f"<= {most:g} s",
                "no answers" if value is None else f"{value:.3f} s",
                value is not None and value <= most,
            )
    if expect.settled_within is not None:
        settled = run.settled
        add(
            "settled_within",
            f"<= {expect.settled_within:g} s after the load",
            "not settled" if settled is None else f"{settled:.2f} s",
            settled is not None and settled <= expect.settled_within,
        )
    if expect.resources is not None:
        out += _resources(run, expect, scope)
    return out


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _health_missing(run: Run) -> str:
    return "" if run.health is not None else "no health (give the gateway's admin API)"


def _targets_at(run: Run, t: float) -> list[str]:
    names = run.scenario.target_names()
    for phase, span in zip(run.scenario.phases, run.spans, strict=True):
        if span.start <= t and phase.targets is not None:
            names = target_names(phase.targets)
    return names


def _untried_failures(run: Run, span: Span, whole: bool) -> list[Result]:
    results = run.results if whole else _in(run.results, span)
    bad = []
    for r in results:
        if r.ok or r.abandoned:
            continue
        if r.stream and r.content and r.kind == "stream_error":
            continue  # failed after its first content: nothing could fail over
        tried = {a.target for a in r.attempts}
        if not set(_targets_at(run, r.start)) <= tried:
            bad.append(r)
    return bad


def _ejected_at(run: Run, target: str, span: Span) -> float | None:
    """Seconds from the scope's start to the first sample showing a new ejection."""
    samples = (run.health or {}).get(target, [])
    before = [s.ejections for s in samples if s.t <= span.start]
    base = before[-1] if before else 0
    for s in samples:
        if s.t >= span.start and (s.ejections > base or (s.state == EJECTED and s.t > span.start)):
            return s.t - span.start
    return None


def _recovered_at(run: Run, target: str, span: Span) -> float | None:
    """Seconds from the scope's start until the target answered a client successfully."""
    times = [
        r.start + (r.first_byte if r.first_byte is not None else r.latency)
        for r in run.results
        if r.ok and r.target == target and r.start >= span.start
    ]
    return min(times) - span.start if times else None


def _calls_while_ejected(run: Run, target: str, span: Span, whole: bool) -> list[float]:
    """Arrival times at the target's fake while it was continuously ejected.

    A call counts when a sample before it and the next one after it both show the
    target ejected, with the same ejection count (no trial in between), and the
    earlier one's cool-down still running at the call's time.
    """
    fake = run.fake_of.get(target)
    samples = (run.health or {}).get(target, [])
    if fake is None or not samples:
        return []
    end = math.inf if whole else span.end
    bad = []
    times = [s.t for s in samples]
    for t in run.received.get(fake, ()):
        if not span.start <= t < end:
            continue
        i = bisect.bisect_left(times, t)  # samples[i - 1].t < t <= samples[i].t
        if i == 0 or i >= len(samples):
            continue
        a, b = samples[i - 1], samples[i]
        if (
            a.state == EJECTED
            and b.state == EJECTED
            and a.ejections == b.ejections
            and a.ejected_for is not None
            and a.t + a.ejected_for > t + 1e-3
        ):
            bad.append(t)
    return bad


def _resources(run: Run, expect: Expectations, scope: str) -> list[Check]:
    assert expect.resources is not None
    r = run.resources
    out = []
    if expect.resources.rss_growth is not None:
        if "rss_warm" in r and "rss_end" in r:
            growth = r["rss_end"] / r["rss_warm"] - 1
            actual = (
                f"{growth:+.1%} ({r['rss_warm'] / 2**20:.1f} -> {r['rss_end'] / 2**20:.1f} MiB)"
            )
            passed = growth <= expect.resources.rss_growth
        else:
            actual, passed = "not measured (needs the gateway's process)", False
        out.append(
            Check(scope, "rss_growth", f"<= {expect.resources.rss_growth:.0%}", actual, passed)
        )
    if expect.resources.fd_growth is not None:
        if "fds_warm" in r and "fds_end" in r:
            growth_fds = int(r["fds_end"] - r["fds_warm"])
            actual = f"{growth_fds:+d} ({int(r['fds_warm'])} -> {int(r['fds_end'])})"
            passed = growth_fds <= expect.resources.fd_growth
        else:
            actual, passed = "not measured (needs the gateway's process)", False
        out.append(Check(scope, "fd_growth", f"<= +{expect.resources.fd_growth}", actual, passed))
    return out


# --- text ------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def render_stats(s: Stats, targets: Sequence[str], run: Run) -> list[str]:
    rate = s.success_rate
    head = (
        f"{s.scope}  ({s.start:g}-{s.end:g} s)" if s.scope != WHOLE else f"{WHOLE}  (0-{s.end:g} s)"
    )
    lines = [
        head,
        f"  requests {s.requests}, ok {s.ok}"
        + (f" ({rate:.2%})" if rate is not None else "")
        + (f", abandoned {s.abandoned}" if s.abandoned else "")
        + (f", streams {s.streams} ({s.unterminated} unterminated)" if s.streams else ""),
        "  errors:  "
        + (_counts(s.errors) or "none")
        + (
            f"  ({s.refused_without_attempt} without any attempt)"
            if s.refused_without_attempt
            else ""
        ),
        "  latency: "
        + "  ".join(f"{p} {_ms(s.latency.get(p))}" for p in ("p50", "p90", "p99", "max"))
        + "   added: "
        + "  ".join(f"{p} {_ms(s.added_latency.get(p))}" for p in ("p50", "p99")),
    ]
    rows = [["  target", "answered", "calls", "failed", "received", "ejections"]]
    for t in targets:
        rows.append(
            [
                f"  {t}",
                str(s.answered_by.get(t, 0)),
                str(s.calls.get(t, 0)),
                str(s.failed_calls.get(t, 0)),
                str(s.received[t]) if t in s.received else "-",
                str(s.ejections[t]) if t in s.ejections else "-",
            ]
        )
    return lines + _table(rows)


def render_text(report: Report) -> str:
    run = report.run
    scenario = report.scenario
    targets = _targets(run)
    clock = "virtual time" if run.virtual else "real time"
    lines = [
        f"scenario {scenario.name}: {len(scenario.fakes)} fake(s), gateway {run.gateway}, "
        f"{run.duration:g} s ({clock}), {len(run.results)} requests",
        "",
    ]
    for s in report.phases:
        lines += [*render_stats(s, targets, run), ""]
    if len(report.phases) > 1:
        lines += [*render_stats(report.whole, targets, run), ""]
    settled = "not within the limit" if run.settled is None else f"after {run.settled:.2f} s"
    lines.append(f"settled (nothing in flight, nothing pending): {settled}")
    if run.resources:
        r = run.resources
        parts = []
        if "rss_warm" in r and "rss_end" in r:
            parts.append(f"RSS {r['rss_warm'] / 2**20:.1f} -> {r['rss_end'] / 2**20:.1f} MiB")
        if "fds_warm" in r and "fds_end" in r:
            parts.append(f"descriptors {int(r['fds_warm'])} -> {int(r['fds_end'])}")
        if parts:
            lines.append("resources after warm-up -> at the end: " + ", ".join(parts))
    lines += ["", "expectations"]
    for c in report.checks:
        mark = "PASS" if c.passed else "FAIL"
        lines.append(f"  {mark}  [{c.scope}] {c.name}: expected {c.expected}; got {c.actual}")
    failed = len(report.failed)
    lines.append(
        f"result: {'PASSED' if report.passed else 'FAILED'} "
        f"({len(report.checks) - failed} of {len(report.checks)} expectations met)"
    )
    return "\n".join(lines)


# --- JSON -------------------------------------------------------------------------------------


def _stats_json(s: Stats) -> dict[str, Any]:
    data = attrs.asdict(s)
    data["success_rate"] = s.success_rate
    return data


def timeline(run: Run) -> dict[str, Any]:
    """Per second: answers per target and errors; per target: health state intervals."""
    seconds = max(1, math.ceil(run.duration))
    answered: dict[str, list[int]] = {t: [0] * seconds for t in _targets(run)}
    errors = [0] * seconds
    for r in run.results:
        second = min(seconds - 1, int(r.start))
        if r.ok and r.target is not None:
            answered.setdefault(r.target, [0] * seconds)[second] += 1
        elif not r.ok and not r.abandoned:
            errors[second] += 1
    health: dict[str, list[dict[str, Any]]] = {}
    for target, samples in (run.health or {}).items():
        intervals: list[dict[str, Any]] = []
        for s in samples:
            if intervals and intervals[-1]["state"] == s.state:
                intervals[-1]["end"] = s.t
            else:
                if intervals:
                    intervals[-1]["end"] = s.t
                intervals.append({"state": s.state, "start": s.t, "end": s.t})
        health[target] = intervals
    return {"answered": answered, "errors": errors, "health": health}


def to_json(report: Report) -> dict[str, Any]:
    run = report.run
    return {
        "scenario": report.scenario.name,
        "description": report.scenario.description,
        "gateway": run.gateway,
        "virtual_time": run.virtual,
        "duration": run.duration,
        "requests": len(run.results),
        "passed": report.passed,
        "phases": [_stats_json(s) for s in report.phases],
        "whole": _stats_json(report.whole),
        "settled": run.settled,
        "resources": run.resources,
        "expectations": [attrs.asdict(c) for c in report.checks],
        "timeline": timeline(run),
    }


# --- HTML -------------------------------------------------------------------------------------

_COLOURS = ("#3b7dd8", "#8e5bd6", "#2aa198", "#d68a1f", "#6c8e23", "#c9489b", "#5a6b7d")
_STATES = {"healthy": "#4caf50", "ejected": "#e53935", "half_open": "#fbc02d"}
_ERROR = "#e53935"


def render_svg(report: Report) -> str:
    run = report.run
    data = timeline(run)
    seconds = max(1, math.ceil(run.duration))
    targets = list(data["answered"])
    left, width, chart_h, band_h, gap = 110, 860, 220, 18, 6
    x_scale = width / seconds
    peak = (
        max(
            [
                sum(col) + e
                for col, e in zip(
                    zip(*data["answered"].values(), strict=True), data["errors"], strict=True
                )
            ]
            if targets
            else data["errors"],
            default=1,
        )
        or 1
    )
    y_scale = chart_h / peak
    health_rows = list(data["health"])
    height = 40 + chart_h + 30 + len(health_rows) * (band_h + gap) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 150}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="16" font-size="13">answers per target and errors, per second</text>',
    ]
    top = 30
    for second in range(seconds):
        y = top + chart_h
        for i, target in enumerate(targets):
            n = data["answered"][target][second]
            if n:
                h = n * y_scale
                y -= h
                out.append(
                    f'<rect x="{left + second * x_scale:.2f}" y="{y:.2f}" width="{max(x_scale - 0.5, 0.5):.2f}" '
                    f'height="{h:.2f}" fill="{_COLOURS[i % len(_COLOURS)]}"><title>{html.escape(target)}: {n} at {second} s</title></rect>'
                )
        n = data["errors"][second]
        if n:
            h = n * y_scale
            y -= h
            out.append(
                f'<rect x="{left + second * x_scale:.2f}" y="{y:.2f}" width="{max(x_scale - 0.5, 0.5):.2f}" '
                f'height="{h:.2f}" fill="{_ERROR}" opacity="0.85"><title>errors: {n} at {second} s</title></rect>'
            )
    out.append(
        f'<line x1="{left}" y1="{top + chart_h}" x2="{left + width}" y2="{top + chart_h}" stroke="#333"/>'
    )
    out.append(f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}/s</text>')
    out.append(f'<text x="{left - 6}" y="{top + chart_h}" text-anchor="end">0</text>')
    band_top = top + chart_h + 30
    out.append(f'<text x="{left}" y="{band_top - 8}" font-size="13">health state</text>')
    for row, target in enumerate(health_rows):
        y = band_top + row * (band_h + gap)
        out.append(
            f'<text x="{left - 6}" y="{y + band_h - 5}" text-anchor="end">{html.escape(target)}</text>'
        )
        for interval in data["health"][target]:
            x0 = left + interval["start"] * x_scale
            x1 = left + max(interval["end"], interval["start"] + 0.05) * x_scale
            colour = _STATES.get(interval["state"], "#9e9e9e")
            out.append(
                f'<rect x="{x0:.2f}" y="{y}" width="{max(x1 - x0, 0.5):.2f}" height="{band_h}" fill="{colour}">'
                f"<title>{html.escape(target)}: {html.escape(interval['state'])} {interval['start']:.1f}-{interval['end']:.1f} s</title></rect>"
            )
    bottom = band_top + len(health_rows) * (band_h + gap)
    for span in run.spans:
        x = left + span.start * x_scale
        out.append(
            f'<line x1="{x:.2f}" y1="{top - 4}" x2="{x:.2f}" y2="{bottom}" stroke="#555" stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<text x="{x + 3:.2f}" y="{top + 8}" fill="#555">{html.escape(span.name)}</text>'
        )
    for tick in range(0, seconds + 1, max(1, seconds // 10)):
        x = left + tick * x_scale
        out.append(f'<text x="{x:.2f}" y="{bottom + 14}" text-anchor="middle">{tick} s</text>')
    legend_y = top
    for i, target in enumerate(targets):
        out.append(
            f'<rect x="{left + width + 16}" y="{legend_y + i * 16}" width="10" height="10" fill="{_COLOURS[i % len(_COLOURS)]}"/>'
        )
        out.append(
            f'<text x="{left + width + 30}" y="{legend_y + i * 16 + 9}">{html.escape(target)}</text>'
        )
    legend_y += len(targets) * 16
    out.append(
        f'<rect x="{left + width + 16}" y="{legend_y}" width="10" height="10" fill="{_ERROR}"/>'
    )
    out.append(f'<text x="{left + width + 30}" y="{legend_y + 9}">errors</text>')
    for j, (state, colour) in enumerate(_STATES.items()):
        y = band_top + j * 16
        out.append(
            f'<rect x="{left + width + 16}" y="{y}" width="10" height="10" fill="{colour}"/>'
        )
        out.append(f'<text x="{left + width + 30}" y="{y + 9}">{state}</text>')
    out.append("</svg>")
    return "\n".join(out)


def render_html(report: Report) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    colour = "#2e7d32" if report.passed else "#c62828"
    rows = "\n".join(
        f'<tr class="{"pass" if c.passed else "fail"}"><td>{"PASS" if c.passed else "FAIL"}</td>'
        f"<td>{html.escape(c.scope)}</td><td>{html.escape(c.name)}</td>"
        f"<td>{html.escape(c.expected)}</td><td>{html.escape(c.actual)}</td></tr>"
        for c in report.checks
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>scenario {html.escape(report.scenario.name)}: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
h1 span {{ color: {colour}; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; }}
tr.fail td {{ background: #fdecea; }}
pre {{ background: #f6f6f6; padding: 12px; font-size: 12px; }}
</style></head><body>
<h1>scenario {html.escape(report.scenario.name)}: <span>{verdict}</span></h1>
<p>{html.escape(report.scenario.description)}</p>
{render_svg(report)}
<h2>expectations</h2>
<table><tr><th></th><th>scope</th><th>expectation</th><th>expected</th><th>observed</th></tr>
{rows}
</table>
<h2>report</h2>
<pre>{html.escape(render_text(report))}</pre>
</body></html>
"""
