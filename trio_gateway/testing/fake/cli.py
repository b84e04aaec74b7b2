"""``trio-gateway fake-provider``: run one fake provider from the shell.

Parse, build a :class:`~trio_gateway.testing.fake.spec.FakeProviderSpec` with the
same validation as a configuration file, ``trio.run`` it until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
from typing import Any

import trio
import yaml

from trio_gateway import logs, serde
from trio_gateway.errors import ValidationFailed
from trio_gateway.testing.fake.server import CONTROL, FakeProvider
from trio_gateway.testing.fake.spec import KIND_PARAMS, FakeProviderSpec

DEFAULT_LISTEN = "127.0.0.1:9001"
EXIT_USAGE = 2
EXIT_FAILED = 1

_SELECTION = """\
Any fault also takes (all optional):
  path: /v1/messages     only requests to this exact path
  model: gpt-4o-mini     only requests for this model (Azure: the deployment)
  stream: true|false     only streaming / only non-streaming requests
  skip: N                let the first N matching requests through
  times: N               fire at most N times (times: 1 = once)
  probability: P         fire on a fraction P of matching requests (seeded by --seed)
  window: {start: S, end: E}   only from S to E seconds after the fault was set
  flapping: {down: D, up: U}   only while down: D seconds down, U seconds up, repeating

Faults are checked in order; the first one that fires answers instead of the
provider (error, rate_limit, hang, close, reset, hang_after_headers). A latency
adds to it; stream faults shape a normal streamed answer and fire on streaming
requests only ("chunks" are the SSE events before the terminator).

Examples:
  --fault hang
  --fault '{kind: error, status: 503, times: 2}'
  --fault '{kind: rate_limit, retry_after: 3, model: gpt-4o-mini}'
  --fault '{kind: error, status: 503, flapping: {down: 2, up: 3}}'
  --fault '{kind: latency, seconds: 0.5, jitter: 0.1}' --fault '{kind: cut_stream, after_chunks: 3}'

Change faults while it runs (any language, JSON):
  PUT {c}/faults [faults]  replace   POST {c}/faults fault  add   DELETE {c}/faults  clear
  GET {c}/requests[?since=N]  what it received   GET {c}/stats   POST {c}/reset
"""


def fault_help() -> str:
    """Every fault kind, its parameters and what it does (the ``--help`` epilog)."""
    lines = ["Faults (--fault, repeatable; a kind name, or YAML/JSON as below):"]
    for kind, params in KIND_PARAMS.items():
        names = [*sorted(params.required), *(f"[{n}]" for n in sorted(params.optional))]
        lines.append(f"  {kind.value}" + (f"  {' '.join(names)}" if names else ""))
        lines += textwrap.wrap(
            params.summary, width=76, initial_indent="      ", subsequent_indent="      "
        )
    return "\n".join(lines) + "\n\n" + _SELECTION.replace("{c}", CONTROL)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "fake-provider",
        help="run a fake OpenAI + Anthropic provider with scripted faults",
        description=textwrap.fill(
            "Run a fake AI provider: the OpenAI API (chat completions, embeddings, models, "
            "Azure deployment paths) and the Anthropic Messages API on one address, "
            "deterministic answers, every request recorded, faults injected on command. "
            "SIGINT/SIGTERM stop it.",
            width=80,
        ),
        epilog=fault_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 picks a free port)",
    )
    p.add_argument("--name", default="fake", help="its name, sent as 'x-fake-provider'")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="the credential it requires ('Authorization: Bearer KEY', 'api-key: KEY' or "
        "'x-api-key: KEY'); default: any non-empty credential",
    )
    models = p.add_mutually_exclusive_group()
    models.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="a model it serves (repeatable; default: common OpenAI and Claude models)",
    )
    models.add_argument("--any-model", action="store_true", help="serve any model name")
    p.add_argument(
        "--fault",
        action="append",
        dest="faults",
        default=[],
        metavar="FAULT",
        help="a fault in effect from the start (repeatable); see below",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for 'probability' and 'jitter' (default 0)"
    )
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="default WARNING",
    )
    p.set_defaults(run=run)


def build_spec(args: argparse.Namespace) -> FakeProviderSpec:
    """The spec the arguments describe, or :class:`ValidationFailed` naming each problem."""
    faults = []
    for i, text in enumerate(args.faults):
        try:
            faults.append(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (column {mark.column + 1})" if mark is not None else ""
            raise ValidationFailed.single(
                f"faults[{i}]", f"is not valid YAML or JSON{where}: {text!r}"
            ) from exc
    data: dict[str, Any] = {
        "name": args.name,
        "listen": args.listen,
        "faults": [{"kind": f} if isinstance(f, str) else f for f in faults],
        "seed": args.seed,
    }
    if args.api_key is not None:
        data["api_key"] = args.api_key
    if args.any_model:
        data["models"] = []
    elif args.models:
        data["models"] = args.models
    return serde.structure(data, FakeProviderSpec)


def run(args: argparse.Namespace) -> int:
    logs.configure("text", args.log_level)
    try:
        spec = build_spec(args)
    except ValidationFailed as exc:
        print(f"trio-gateway fake-provider: {len(exc.details)} problem(s):", file=sys.stderr)
        for problem in exc.details:
            where = "" if problem.loc == "$" else f"{_flag(problem.loc)}: "
            print(f"  {where}{problem.msg}", file=sys.stderr)
        return EXIT_USAGE
    try:
        trio.run(_run_until_signalled, spec)
    except Exception as exc:
        if (found := _os_error(exc)) is None:
            raise
        print(
            f"trio-gateway fake-provider: cannot listen on {spec.listen}: {found}", file=sys.stderr
        )
        return EXIT_FAILED
    return 0


def _os_error(exc: BaseException) -> OSError | None:
    """The first ``OSError`` leaf of an exception (group): binding failed."""
    if isinstance(exc, BaseExceptionGroup):
        return next((f for e in exc.exceptions if (f := _os_error(e)) is not None), None)
    return exc if isinstance(exc, OSError) else None


def _flag(loc: str) -> str:
    """``faults[1].status`` -> ``--fault #2: status``: name what the user typed."""
    if loc.startswith("faults["):
        index, _, rest = loc[len("faults[") :].partition("]")
        if index.isdigit():
            return f"--fault #{int(index) + 1}" + (f": {rest.lstrip('.')}" if rest else "")
    return {"api_key": "--api-key", "models": "--model", "seed": "--seed"}.get(
        loc.split("[")[0], loc
    )


async def _run_until_signalled(spec: FakeProviderSpec) -> None:
    fake = FakeProvider.of(spec)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(fake.serve)
            faults = f", {len(spec.faults)} fault(s)" if spec.faults else ""
            print(
                f"fake provider {spec.name!r} listening on {url}{faults}\n"
                f"  OpenAI:    {url}/v1  (chat/completions, responses, embeddings, models)\n"
                f"  Anthropic: {url}  (/v1/messages)\n"
                f"  control:   {url}{CONTROL}/faults, {CONTROL}/requests, {CONTROL}/stats, "
                f"{CONTROL}/reset",
                flush=True,
            )
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
