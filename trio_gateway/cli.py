"""Command line: parse, load, ``trio.run``. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from trio_gateway import __version__, logs
from trio_gateway.config.file import Declarations, load_file
from trio_gateway.config.models import Kind
from trio_gateway.errors import ValidationFailed
from trio_gateway.serve import Running, serve
from trio_gateway.settings import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_PROXY_LISTEN,
    TOKEN_ENV,
    Settings,
    SettingsError,
    split_listen,
)
from trio_gateway.store import StoreCorrupt

log = logging.getLogger("trio_gateway")

EXIT_USAGE = 2
EXIT_FAILED = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    return args.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-gateway",
        description="A self-hosted AI gateway: one OpenAI- and Anthropic-compatible endpoint "
        "in front of many providers.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run the gateway (admin API and proxy)",
        description="Run the gateway. The admin API and the proxy listen separately. "
        "SIGINT/SIGTERM stop it cleanly: in-flight requests get --graceful-timeout seconds.",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML file of gateways, upstreams, services, rules and keys, applied "
        "by name at every start (see docs/configuration.md)",
    )
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the SQLite store lives (default: ./data)",
    )
    store.add_argument(
        "--memory",
        action="store_true",
        help="keep the configuration in memory only; nothing survives a restart",
    )
    p.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help=f"admin API address (default {DEFAULT_ADMIN_LISTEN}); a non-loopback "
        f"address needs an admin token ({TOKEN_ENV})",
    )
    p.add_argument(
        "--proxy-listen",
        metavar="HOST:PORT",
        help=f"proxy address (default {DEFAULT_PROXY_LISTEN})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="proxy processes sharing the proxy port (default 1); more than one needs "
        "the SQLite store; this process keeps the admin API",
    )
    p.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--graceful-timeout",
        type=float,
        metavar="SECONDS",
        help="how long in-flight requests may finish on shutdown (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a request body may take to arrive (default 60; docs/http.md)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        metavar="SECONDS",
        help="how long an idle client connection is kept open (default 75; docs/http.md)",
    )
    _add_log_arguments(p)
    p.set_defaults(run=_serve)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file without starting",
        description="Validate FILE with the same rules as the admin API. Exit 0 when valid, "
        "2 with one line per problem otherwise. ${VAR} references must be set.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(run=_check_config)

    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(run=lambda args: print(f"trio-gateway {__version__}") or 0)

    from trio_gateway.testing.fake import cli as fake_cli

    fake_cli.add_parser(sub)

    from trio_gateway.testing.scenario import cli as scenario_cli

    scenario_cli.add_parser(sub)
    return parser


def _add_log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="one line per event, as text or as JSON (default text)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="default INFO",
    )


def _load(path: Path) -> Declarations | None:
    try:
        return load_file(path)
    except ValidationFailed as exc:
        print(f"{path}: {len(exc.details)} problem(s):", file=sys.stderr)
        for problem in exc.details:
            print(f"  {problem.loc}: {problem.msg}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    declarations = _load(args.file)
    if declarations is None:
        return EXIT_USAGE
    counts = ", ".join(
        f"{len(decl.entities[kind])} {kind.label}(s)"
        for decl in declarations.gateways[:1]
        for kind in decl.entities
    )
    print(
        f"{args.file}: valid ({len(declarations.gateways)} gateway(s){'; first: ' + counts if counts else ''})"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    declarations = None
    if args.config is not None:
        declarations = _load(args.config)
        if declarations is None:
            return EXIT_USAGE
    explicit = {
        "admin_listen": args.admin_listen,
        "proxy_listen": args.proxy_listen,
        "admin_token": os.environ.get(TOKEN_ENV) or None,
        "graceful_timeout": args.graceful_timeout,
        "body_timeout": args.body_timeout,
        "keep_alive_timeout": args.keep_alive_timeout,
    }
    explicit = {k: v for k, v in explicit.items() if v is not None}
    settings = Settings(
        data_dir=None if args.memory else (args.data_dir or Path("data")),
        config_file=args.config,
        log_format=args.log_format,
        log_level=args.log_level,
        workers=args.workers,
        proxy_fd=args.worker_fd,
        worker=args.worker_fd is not None,
    )
    if declarations is not None:
        settings = settings.with_file(declarations.server, set(explicit))
    settings = attrs.evolve(settings, **explicit)
    try:
        settings.check()
        if settings.workers > 1:
            settings = attrs.evolve(settings, proxy_fd=_listen(settings.proxy_listen).detach())
    except SettingsError as exc:
        print(f"trio-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"trio-gateway: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        trio.run(_run_until_signalled, settings, declarations)
    except Exception as exc:
        if (found := _find(exc, (OSError, StoreCorrupt))) is None:
            raise
        prefix = "cannot start: " if isinstance(found, OSError) else ""
        print(f"trio-gateway: {prefix}{found}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _listen(listen: str) -> socket.socket:
    """The proxy's listening socket, made before the workers start so they can share it."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.set_inheritable(True)
    return sock


def _find(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first leaf of an exception group that is one of ``types``."""
    if isinstance(exc, BaseExceptionGroup):
        return next((f for e in exc.exceptions if (f := _find(e, types)) is not None), None)
    return exc if isinstance(exc, types) else None


async def _run_until_signalled(settings: Settings, declarations: Declarations | None) -> None:
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_server(*, task_status: trio.TaskStatus[Running]) -> None:
                await serve(settings, declarations, shutdown=shutdown, task_status=task_status)
                nursery.cancel_scope.cancel()

            running = await nursery.start(run_server)
            if not settings.worker:
                print(banner(running, settings, declarations), flush=True)
            async for signum in signals:
                if shutdown.is_set():
                    log.warning("second signal: stopping now")
                    nursery.cancel_scope.cancel()
                    break
                log.info("shutting down", extra={"fields": {"signal": signal.Signals(signum).name}})
                shutdown.set()


def banner(running: Running, settings: Settings, declarations: Declarations | None) -> str:
    """What ``make run`` shows: where things are, and commands ready to paste."""
    admin = running.admin_url
    lines = [
        f"trio-gateway {__version__} is ready.",
        f"  admin API: {admin}/api/v1"
        + ("" if settings.admin_token else "  (no token: loopback only)"),
        f"  proxy:     {running.proxy_url}"
        + (f"  ({settings.workers} worker processes)" if settings.workers > 1 else ""),
        f"  store:     {settings.data_dir or 'memory (nothing survives a restart)'}",
    ]
    for name, url in running.fake_providers.items():
        lines.append(f"  fake provider {name!r}: {url}")
    snapshot = running.catalog.snapshot
    auth = ' -H "Authorization: Bearer $TRIO_GATEWAY_ADMIN_TOKEN"' if settings.admin_token else ""
    for gateway in sorted(snapshot.gateways.values(), key=lambda g: g.created_at):
        lines.append(f"  gateway {gateway.name!r}: {gateway.id}")
    if snapshot.gateways:
        gateway = min(snapshot.gateways.values(), key=lambda g: g.created_at)
        base = f"{admin}/api/v1/gateways/{gateway.id}/upstreams"
        lines += [
            "",
            "Create the upstream of the guide (examples/guide-upstream.json is its body, verbatim):",
            f"  curl -X POST {base}{auth} \\",
            '    -H "Content-Type: application/json" -d @examples/guide-upstream.json',
            "Read it back with the id that call returns:",
            f"  curl {base}/UPSTREAM_ID{auth}",
        ]
    key = _declared_key(declarations)
    if key is not None:
        body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'
        lines += [
            "Call the proxy with the file's API key (-i shows X-Selected-Provider and the attempt trail):",
            f'  curl -i {running.proxy_url}/v1/chat/completions -H "X-Api-Key: {key}" \\',
            f"    -H \"Content-Type: application/json\" -d '{body}'",
        ]
    return "\n".join(lines)


def _declared_key(declarations: Declarations | None) -> str | None:
    """The first API key the configuration file spells out, to show a working call."""
    for gateway in declarations.gateways if declarations else ():
        for entry in gateway.entities[Kind.API_KEY]:
            if entry.get("key"):
                return entry["key"]
    return None
