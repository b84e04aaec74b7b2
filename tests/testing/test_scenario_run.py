"""Scenario files: validation by line and field, the CLI, the three gateway modes, reports."""

from __future__ import annotations

import json
import re
import socket
import textwrap
from pathlib import Path

import pytest
import trio

from trio_gateway.cli import main
from trio_gateway.testing.fake import Fault
from trio_gateway.testing.harness import open_gateway
from trio_gateway.testing.scenario.load import Attempt, Result
from trio_gateway.testing.scenario.model import ScenarioError, parse_scenario
from trio_gateway.testing.scenario.report import evaluate, render_html, to_json
from trio_gateway.testing.scenario.runner import GatewayTarget, Run, Sample, Span, run_scenario

SMALL = """\
name: small
fakes:
  - name: primary
    faults: [{kind: latency, seconds: 0.1}]
  - name: backup
    faults: [{kind: latency, seconds: 0.1}]
upstream:
  targets:
    - {fake: primary}
    - {fake: backup, priority: 2}
load: {concurrency: 2, pause: 0.1, stream: 0.5}
phases:
  - name: calm
    duration: 2
    expect: {success_rate: 1.0, traffic: {primary: {min: 0.9}}}
  - name: outage
    duration: 4
    faults:
      primary: [{kind: error, status: 503}]
    expect:
      success_rate: 1.0
      ejected_within: {primary: 1}
      no_calls_while_ejected: [primary]
      traffic: {backup: {min: 0.9}}
expect:
  streams_terminated: true
  error_kinds: []
"""

BAD = """\
name: bad
fakes:
  - {name: primary, faults: [hang]}
upstream:
  targets:
    - {fake: primary}
    - {fake: backupp, priority: 2}
load:
  concurency: 4
phases:
  - name: outage
    duration: 10
    faults:
      primary: [{kind: error, status: 700}]
    expect:
      success_rate: 1.5
"""


def test_a_bad_file_gets_each_problem_with_its_line_and_field():
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(BAD, "bad.yaml")
    assert caught.value.lines() == [
        "bad.yaml:7: upstream.targets[1].fake: no fake named 'backupp' (fakes: 'primary')",
        "bad.yaml:9: load.concurency: unknown field",
        "bad.yaml:14: phases[0].faults.primary[0].status: must be between 200 and 599",
        "bad.yaml:16: phases[0].expect.success_rate: must be between 0 and 1",
    ]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("name: x\nload: [", 2, "$: invalid YAML"),
        (SMALL.replace("stream: 0.5}", "stream: 0.5, rate: 3}"), 11, "load: give exactly one"),
        (
            SMALL.replace("ejected_within: {primary: 1}", "ejected_within: {ghost: 1}"),
            22,
            "phases[1].expect.ejected_within.ghost: no target named 'ghost'",
        ),
        (
            SMALL.replace("      primary: [{kind: error", "      nobody: [{kind: error"),
            19,
            "phases[1].faults.nobody: no fake named 'nobody'",
        ),
        (
            SMALL + "short: {durations: {later: 3}}\n",
            28,
            "short.durations.later: no phase named 'later'",
        ),
    ],
)
def test_cross_section_mistakes_are_located_too(text, line, problem):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, "f.yaml")
    found = caught.value.lines()
    assert any(entry.startswith(f"f.yaml:{line}: {problem}") for entry in found), found


def test_check_validates_without_running(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(SMALL)
    bad.write_text(BAD)
    assert main(["scenario", "check", str(good)]) == 0
    assert "valid (scenario 'small': 2 fake(s), 2 phase(s), 6 s" in capsys.readouterr().out
    assert main(["scenario", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:9: load.concurency: unknown field" in err


def test_the_catalogue_files_are_valid():
    for path in sorted((Path(__file__).parents[2] / "examples" / "scenarios").glob("*.yaml")):
        assert main(["scenario", "check", str(path)]) == 0, path


def test_run_prints_a_table_per_phase_and_writes_json_and_html(tmp_path, capsys):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    code = main(
        [
            "scenario",
            "run",
            str(path),
            "--virtual-time",
            "--quiet",
            "--json",
            str(out_json),
            "--html",
            str(out_html),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert re.search(r"^calm  \(0-2 s\)$", text, re.MULTILINE)
    assert re.search(r"^outage  \(2-6 s\)$", text, re.MULTILINE)
    assert re.search(r"^  target\s+answered\s+calls\s+failed\s+received\s+ejections$", text, re.M)
    assert "result: PASSED" in text
    data = json.loads(out_json.read_text())
    assert data["passed"] is True and [p["scope"] for p in data["phases"]] == ["calm", "outage"]
    assert all(c["passed"] for c in data["expectations"])
    assert data["timeline"]["health"]["primary"][-1]["state"] == "ejected"
    page = out_html.read_text()
    assert "<svg" in page and "health state" in page and "PASSED" in page
    assert "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_run_exits_1_when_an_expectation_fails(tmp_path, capsys):
    path = tmp_path / "strict.yaml"
    path.write_text(SMALL.replace("ejected_within: {primary: 1}", "not_ejected: [primary]"))
    assert main(["scenario", "run", str(path), "--virtual-time", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  [outage] not_ejected primary: expected no ejection; got 1 ejection(s)" in out
    assert "result: FAILED" in out


async def test_a_running_gateway_can_be_driven_with_gateway_and_admin(autojump_clock):
    """--gateway: the file's fakes listen where the running gateway's targets point."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    text = SMALL.replace(
        "  - name: primary\n",
        f"  - name: primary\n    listen: 127.0.0.1:{ports[0]}\n    api_key: sk-p\n",
    )
    text = text.replace(
        "  - name: backup\n",
        f"  - name: backup\n    listen: 127.0.0.1:{ports[1]}\n    api_key: sk-b\n",
    )
    scenario = parse_scenario(text)
    key = "tgk_running_gateway_0123456789"
    config = {
        "gateways": [
            {
                "name": "live",
                "upstreams": [
                    {
                        "name": "u",
                        "targets": [
                            {
                                "provider": "openai",
                                "base_url": f"http://127.0.0.1:{ports[0]}",
                                "credentials": {"header_value": "sk-p"},
                            },
                            {
                                "provider": "openai",
                                "base_url": f"http://127.0.0.1:{ports[1]}",
                                "credentials": {"header_value": "sk-b"},
                                "priority": 2,
                            },
                        ],
                    }
                ],
                "services": [{"name": "s", "upstream": "u"}],
                "rules": [{"name": "r", "path": "/v1", "service": "s"}],
                "api_keys": [{"name": "k", "key": key}],
            }
        ]
    }
    with trio.fail_after(60):
        async with open_gateway(config) as gw:
            target = GatewayTarget(gw.proxy_url, key, gw.admin_url)
            report = evaluate(await run_scenario(scenario, gateway=target))
    assert report.passed, [c for c in report.checks if not c.passed]
    assert report.whole.answered_by.keys() == {"primary", "backup"}  # named after the fakes
    assert report.run.health is not None and report.phases[1].ejections["primary"] == 1


async def test_the_gateway_can_run_in_its_own_process_for_resource_checks(tmp_path):
    scenario = parse_scenario(
        SMALL + "  resources: {rss_growth: 0.5, fd_growth: 50}\n  settled_within: 5\n"
    )
    with trio.fail_after(90):
        run = await run_scenario(scenario, process=True)
    report = evaluate(run)
    assert run.gateway == "process"
    assert {"rss_warm", "rss_end", "fds_warm", "fds_end"} <= run.resources.keys()
    assert report.passed, [c for c in report.checks if not c.passed]


# --- expectations on made-up runs: each one can fail --------------------------------------------


def made_up_run(results, health=None, received=None, text=SMALL):
    scenario = parse_scenario(text)
    return Run(
        scenario=scenario,
        spans=[Span("calm", 0, 2), Span("outage", 2, 6)],
        results=results,
        health=health,
        received=received or {"primary": [], "backup": []},
        fake_of={"primary": "primary", "backup": "backup"},
        settled=0.0,
        settle_limit=5,
        resources={},
        gateway="in-process",
    )


def ok(index, start, target, stream=False):
    return Result(
        index,
        start,
        stream,
        end=start + 0.1,
        target=target,
        first_byte=0.1,
        attempts=(Attempt(target, "200", 100),),
        terminated=True if stream else None,
    )


def failed_checks(run):
    return {f"{c.scope}: {c.name}" for c in evaluate(run).failed}


def test_a_call_to_an_ejected_target_outside_its_trial_is_caught():
    health = {
        "primary": [
            Sample(2.0, "healthy", 0, None, 0),
            Sample(2.5, "ejected", 1, 60, 0),
            Sample(3.0, "ejected", 1, 59.5, 0),
            Sample(6.0, "ejected", 1, 56.5, 0),
        ],
        "backup": [Sample(t, "healthy", 0, None, 0) for t in (2.0, 6.0)],
    }
    results = [ok(1, 0.5, "primary"), ok(2, 2.6, "backup"), ok(3, 3.0, "backup")]
    calm = made_up_run(results, health, {"primary": [0.5, 2.1, 2.2, 2.3], "backup": []})
    assert "outage: no_calls_while_ejected primary" not in failed_checks(calm)
    stray = made_up_run(results, health, {"primary": [0.5, 2.1, 2.2, 2.3, 4.0], "backup": []})
    assert "outage: no_calls_while_ejected primary" in failed_checks(stray)
    # A call between two ejections (the trial between them) is not held against it.
    trial = dict(health, primary=[*health["primary"][:3], Sample(6.0, "ejected", 2, 60, 0)])
    assert "outage: no_calls_while_ejected primary" not in failed_checks(
        made_up_run(results, trial, {"primary": [4.0], "backup": []})
    )


def test_an_unterminated_stream_and_a_failure_that_skipped_a_target_are_caught():
    cut = Result(
        2,
        2.5,
        True,
        end=3,
        kind="stream_cut",
        target="primary",
        terminated=False,
        attempts=(Attempt("primary", "200", 10),),
        content=True,
    )
    refused = Result(3, 3.0, False, end=3.1, kind="http_503", attempts=())
    lone = Result(4, 3.5, False, end=3.6, kind="http_502", attempts=(Attempt("backup", "502", 5),))
    checks = failed_checks(made_up_run([ok(1, 0.5, "primary", stream=True), cut, refused, lone]))
    assert {
        "whole run: streams_terminated",
        "whole run: error_kinds",
        "outage: success_rate",
    } <= checks
    report = evaluate(
        made_up_run(
            [cut, refused, lone],
            text=SMALL.replace(
                "expect:\n  streams",
                "expect:\n  refused_without_attempt: 0\n  failures_tried_every_target: true\n  streams",
            ),
        )
    )
    failed = {c.name: c.actual for c in report.failed}
    assert failed["refused_without_attempt"] == "1"
    assert failed["failures_tried_every_target"].startswith("3 did not")


def test_an_error_event_after_content_is_a_clean_failure():
    late = Result(
        2,
        2.5,
        True,
        end=3,
        kind="stream_error",
        target="primary",
        terminated=True,
        attempts=(Attempt("primary", "200", 10),),
        content=True,
    )
    report = evaluate(
        made_up_run(
            [late],
            text=SMALL.replace(
                "expect:\n  streams", "expect:\n  failures_tried_every_target: true\n  streams"
            ),
        )
    )
    names = {c.name for c in report.failed}
    assert "failures_tried_every_target" not in names and "streams_terminated" not in names


def test_the_html_report_is_self_contained(tmp_path):
    run = made_up_run(
        [ok(1, 0.5, "primary"), ok(2, 2.5, "backup")],
        {"primary": [Sample(0, "healthy", 0, None, 0), Sample(3, "ejected", 1, 9, 0)]},
    )
    page = render_html(evaluate(run))
    assert page.count("<svg") == 1 and "<script" not in page and "<link" not in page
    assert "primary: ejected" in page
    assert json.loads(json.dumps(to_json(evaluate(run))))["requests"] == 2


def test_faults_of_a_file_are_the_fakes_own():
    scenario = parse_scenario(textwrap.dedent(SMALL))
    assert scenario.phases[1].faults["primary"] == (Fault.error(503),)
