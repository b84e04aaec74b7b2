"""``trio-gateway scenario run FILE`` and ``trio-gateway scenario check FILE``.

Parse, load the file (errors by line and field), ``trio.run`` the runner (with a
``MockClock`` for ``--virtual-time``), print the report, write ``--json`` and
``--html``; exit 0 when every expectation held, 1 when one failed, 2 for a bad file
or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import trio
import trio.testing

from trio_gateway import logs
from trio_gateway.testing.scenario.model import Scenario, ScenarioError, load_scenario
from trio_gateway.testing.scenario.report import evaluate, render_html, render_text, to_json
from trio_gateway.testing.scenario.runner import GatewayTarget, Progress, run_scenario

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "scenario",
        help="run a failure scenario (fakes, faults over time, a load, expectations)",
        description=textwrap.fill(
            "Failure scenarios: fake providers whose faults change over time, a gateway "
            "in front of them, a load, and expectations checked at the end "
            "(docs/testing.md; examples in examples/scenarios/).",
            width=80,
        ),
    )
    commands = p.add_subparsers(title="commands", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a scenario file and check its expectations",
        description="Run FILE: start its fakes and a gateway with its upstream (or use "
        "--gateway), drive its load through its phases, print a report. Exit 0 when every "
        "expectation held, 1 when one failed, 2 for a bad file.",
    )
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON to OUT")
    run.add_argument(
        "--html",
        type=Path,
        metavar="OUT",
        help="write a self-contained HTML report with a timeline to OUT",
    )
    run.add_argument(
        "--short",
        action="store_true",
        help="use the file's 'short' load (the same timeline, less load)",
    )
    run.add_argument(
        "--virtual-time",
        action="store_true",
        help="run on a virtual clock: a minute of scenario in the time its requests take "
        "(in-process gateway only)",
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--gateway",
        metavar="URL",
        help="drive a gateway that is already running (its proxy URL) instead of starting "
        "one; needs --key. Its upstream is its own: point its targets at the file's fakes "
        "(give them fixed 'listen' addresses)",
    )
    where.add_argument(
        "--process",
        action="store_true",
        help="run the gateway in a child process (what the soak needs to measure the "
        "gateway's own memory and descriptors)",
    )
    run.add_argument("--key", metavar="KEY", help="a client key of the --gateway")
    run.add_argument(
        "--admin",
        metavar="URL",
        help="the --gateway's admin API (its base URL), to follow its targets' health",
    )
    run.add_argument(
        "--admin-token", metavar="TOKEN", help="the --gateway's admin token, if it has one"
    )
    run.add_argument(
        "--upstream",
        metavar="NAME",
        help="the --gateway's upstream to watch (default: its only one)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress line")
    run.set_defaults(run=_run)

    check = commands.add_parser(
        "check",
        help="validate a scenario file without running it",
        description="Validate FILE. Exit 0 when it is valid, 2 with one line per problem "
        "(FILE:LINE: field: problem) otherwise.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(run=_check)
    p.set_defaults(run=lambda args: p.print_help() or EXIT_USAGE)


def _load(path: Path) -> Scenario | None:
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    scenario = _load(args.file)
    if scenario is None:
        return EXIT_USAGE
    checks = sum(
        1 for e in [scenario.expect, *(p.expect for p in scenario.phases)] if e is not None
    )
    print(
        f"{args.file}: valid (scenario {scenario.name!r}: {len(scenario.fakes)} fake(s), "
        f"{len(scenario.phases)} phase(s), {scenario.duration:g} s, "
        f"{checks} scope(s) with expectations)"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    logs.configure("text", "ERROR")
    scenario = _load(args.file)
    if scenario is None:
        return EXIT_USAGE
    if args.short:
        scenario = scenario.shortened()
    gateway = None
    if args.gateway:
        if not args.key:
            print("trio-gateway scenario run: --gateway needs --key", file=sys.stderr)
            return EXIT_USAGE
        gateway = GatewayTarget(
            args.gateway.rstrip("/"),
            args.key,
            args.admin.rstrip("/") if args.admin else None,
            args.admin_token,
            args.upstream,
        )
    if args.virtual_time and (gateway is not None or args.process):
        print(
            "trio-gateway scenario run: --virtual-time needs the in-process gateway",
            file=sys.stderr,
        )
        return EXIT_USAGE
    progress = None if args.quiet else _progress_printer()
    clock = trio.testing.MockClock(autojump_threshold=0) if args.virtual_time else None
    run = trio.run(
        lambda: run_scenario(
            scenario,
            gateway=gateway,
            process=args.process,
            progress=progress,
            virtual=args.virtual_time,
        ),
        clock=clock,
    )
    if progress is not None:
        print(file=sys.stderr)
    report = evaluate(run)
    print(render_text(report))
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=1) + "\n", encoding="utf-8")
    if args.html:
        args.html.write_text(render_html(report), encoding="utf-8")
    return 0 if report.passed else EXIT_FAILED


def _progress_printer() -> Any:
    tty = sys.stderr.isatty()

    def show(p: Progress) -> None:
        rate = f"{p.ok / p.requests:.1%}" if p.requests else "-"
        line = (
            f"t={p.t:5.1f}/{p.duration:g} s  phase {p.phase:<12}  requests {p.requests:6d}  "
            f"ok {rate:>6}  errors {p.errors:5d}  in flight {p.in_flight:3d}"
        )
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif int(p.t) % 10 == 0:
            print(line, file=sys.stderr, flush=True)

    return show
