"""Command line: parse, load, ``trio.run``. Nothing else lives here."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import attrs
import trio
import yaml

from trio_gateway import __version__, logs, serde
from trio_gateway.config import transfer
from trio_gateway.config.catalog import Catalog
from trio_gateway.config.file import Declarations, load_file, read_yaml, substitute
from trio_gateway.config.models import BaseUrl, Kind
from trio_gateway.errors import GatewayError, ValidationFailed
from trio_gateway.serve import Running, reload_config, serve
from trio_gateway.settings import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_PROXY_LISTEN,
    STORE_ENV,
    TOKEN_ENV,
    Settings,
    SettingsError,
    split_listen,
)
from trio_gateway.store import Store, StoreCorrupt, StoreUnavailable, open_store
from trio_gateway.store.base import is_postgres_url
from trio_gateway.telemetry import metrics
from trio_gateway.web.server import LISTEN_BACKLOG

log = logging.getLogger("trio_gateway")

EXIT_USAGE = 2
EXIT_FAILED = 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `serve` starts without the testing tools' parsers: building them imports the
    # fake providers and the scenario runner (and through trio.testing, pytest), a
    # tenth of a second or more of every start for nothing (docs/benchmarks.md).
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(tools=command != "serve")
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    return args.run(args)


def build_parser(*, tools: bool = True) -> argparse.ArgumentParser:
    """Every command; ``tools=False`` leaves out ``fake-provider`` and ``scenario``."""
    parser = argparse.ArgumentParser(
        prog="trio-gateway",
        description="A self-hosted AI gateway: one OpenAI- and Anthropic-compatible endpoint "
        "in front of many providers.",
    )
    parser.add_argument("--version", action="version", version=f"trio-gateway {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="run the gateway (admin API and proxy)",
        description="Run the gateway. The admin API and the proxy listen separately. "
        "SIGINT/SIGTERM stop it cleanly: in-flight requests get --graceful-timeout seconds. "
        "SIGHUP applies the --config file again (docs/operations.md).",
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
        "--store",
        metavar="URL",
        help=f"the PostgreSQL store shared by several instances (postgresql://...; also "
        f"{STORE_ENV} or server.store in the config file); default: SQLite in --data-dir",
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
        "--base-url-override",
        action="append",
        default=[],
        metavar="URL=STAND_IN",
        help="send what targets address to base URL URL (their provider's public one when "
        "they set none) to STAND_IN instead; for offline demos and tests, like the "
        "configuration file's server.base_url_overrides",
    )
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
    p.add_argument(
        "--access-log",
        choices=["on", "off"],
        default="on",
        help="one line per proxied request, whatever --log-level says (default on)",
    )
    p.add_argument(
        "--metrics",
        choices=["on", "off"],
        default="on",
        help="Prometheus metrics at /metrics on the admin listener (default on)",
    )
    p.set_defaults(run=_serve)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file without starting",
        description="Validate FILE with the same rules as the admin API. Exit 0 when valid, "
        "2 with one line per problem otherwise. ${VAR} references must be set.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(run=_check_config)

    p = sub.add_parser(
        "migrate",
        help="bring the store's schema up to date and exit",
        description="Apply the store's migrations (forward only; a lock makes instances "
        "starting at once migrate once) and exit. serve does the same at start; run this "
        "before rolling out a new version to several instances.",
    )
    _add_store_arguments(p)
    p.set_defaults(run=_migrate)

    p = sub.add_parser(
        "export",
        help="write the whole configuration as a YAML file",
        description="Write every gateway, upstream, service, rule and API key as a YAML "
        "file in the configuration-file format, with ids, so that 'import' restores the "
        "same installation. Secrets become ${VAR} references, listed at the top.",
    )
    _add_store_arguments(p)
    p.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write to FILE (default: stdout)"
    )
    p.add_argument(
        "--include-secrets",
        action="store_true",
        help="write the secrets themselves instead of ${VAR} references (the file is then "
        "created readable by its owner only)",
    )
    p.set_defaults(run=_export)

    p = sub.add_parser(
        "import",
        help="load a file written by export into a store",
        description="Write every entity of FILE (from 'export') into the store, ids kept, "
        "in one transaction: entities with the same id are overwritten, others left alone. "
        "${VAR} references must be set. Instances using the store pick it up at once.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    _add_store_arguments(p)
    p.set_defaults(run=_import)

    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(run=lambda args: print(f"trio-gateway {__version__}") or 0)
    if not tools:
        return parser

    from trio_gateway.testing.fake import cli as fake_cli

    fake_cli.add_parser(sub)

    from trio_gateway.testing.scenario import cli as scenario_cli

    scenario_cli.add_parser(sub)
    return parser


def _add_store_arguments(p: argparse.ArgumentParser) -> None:
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="the SQLite store (default: ./data)"
    )
    store.add_argument(
        "--store", metavar="URL", help=f"the PostgreSQL store (postgresql://...; or {STORE_ENV})"
    )


def _store_of(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """(data_dir, url) from ``--data-dir``/``--store``/the environment."""
    if args.data_dir is not None:
        return args.data_dir, None
    url = args.store or os.environ.get(STORE_ENV) or None
    return (None, url) if url else (Path("data"), None)


def _with_store(args: argparse.Namespace, work: Callable[[Store], Awaitable[int]]) -> int:
    """Open the store the arguments name, run ``work`` on it, report store errors."""
    logs.configure("text", "WARNING")
    data_dir, url = _store_of(args)
    if url is not None and not is_postgres_url(url):
        print(f"trio-gateway: --store: expected postgresql://..., got {url!r}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> int:
        async with open_store(data_dir, url) as store:
            return await work(store)

    try:
        return trio.run(run)
    except (StoreCorrupt, StoreUnavailable, OSError) as exc:
        print(f"trio-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _migrate(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        stats = store.statistics()
        found = getattr(store, "migrated_from", stats.schema_version)
        what = (
            "already up to date"
            if found == stats.schema_version
            else f"migrated from schema version {found}"
        )
        print(f"{stats.location}: schema version {stats.schema_version} ({what})")
        return 0

    return _with_store(args, work)


def _export(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        catalog = await Catalog.load(store)
        data, names = transfer.export(catalog.snapshot, include_secrets=args.include_secrets)
        stats = store.statistics()
        lines = [
            f"# trio-gateway {__version__} export of {stats.location}, "
            f"configuration version {catalog.version}.",
            "# Load it with: trio-gateway import FILE [--store URL | --data-dir DIR]",
        ]
        if names:
            lines.append("# Set these variables before importing (the secrets of the export):")
            lines += [f"#   {name}: {where}" for name, where in names.items()]
        text = "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        if args.output is None:
            sys.stdout.write(text)
        else:
            mode = 0o600 if args.include_secrets else 0o644
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
        counts = {kind.label: len(catalog.snapshot.entities[kind]) for kind in Kind}
        print(
            f"exported {', '.join(f'{n} {label}(s)' for label, n in counts.items())}",
            file=sys.stderr,
        )
        return 0

    return _with_store(args, work)


def _import(args: argparse.Namespace) -> int:
    try:
        data = substitute(read_yaml(args.file), os.environ)
    except ValidationFailed as exc:
        return _problems(args.file, exc)

    async def work(store: Store) -> int:
        catalog = await Catalog.load(store)
        try:
            report = await catalog.write(lambda draft: transfer.restore(draft, data))
        except GatewayError as exc:  # validation, or a conflict with what the store holds
            return _problems(args.file, exc)
        print(
            f"{args.file}: imported into {store.statistics().location}: "
            f"{len(report.created)} created, {len(report.updated)} updated, "
            f"{report.unchanged} unchanged (configuration version {catalog.version})"
        )
        return 0

    return _with_store(args, work)


def _problems(path: Path, exc: GatewayError) -> int:
    if not exc.details:
        print(f"{path}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: {len(exc.details)} problem(s):", file=sys.stderr)
    for problem in exc.details:
        print(f"  {problem.loc}: {problem.msg}", file=sys.stderr)
    return EXIT_USAGE


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
    _raise_open_file_limit()
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
    if args.store or os.environ.get(STORE_ENV):
        explicit["store"] = args.store or os.environ[STORE_ENV]
    elif args.data_dir is not None or args.memory:
        explicit["store"] = None  # the command line chose: the file's server.store is ignored
    if args.base_url_override:
        overrides = _overrides(args.base_url_override)
        if overrides is None:
            return EXIT_USAGE
        explicit["base_urls"] = overrides
    settings = Settings(
        data_dir=None if args.memory else (args.data_dir or Path("data")),
        config_file=args.config,
        log_format=args.log_format,
        log_level=args.log_level,
        workers=args.workers,
        proxy_fd=args.worker_fd,
        worker=args.worker_fd is not None,
        metrics=args.metrics == "on",
        access_log=args.access_log == "on",
    )
    if declarations is not None:
        settings = settings.with_file(declarations.server, set(explicit))
    settings = attrs.evolve(settings, **explicit)
    try:
        settings.check()
    except SettingsError as exc:
        print(f"trio-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Before anything is touched (the store, the configuration file): an address in
    # use is most often a gateway already running on the same data.
    if (busy := _busy_address(settings, declarations)) is not None:
        print(f"trio-gateway: cannot start: {busy}; nothing was changed", file=sys.stderr)
        return EXIT_FAILED
    try:
        if settings.workers > 1:
            settings = attrs.evolve(settings, proxy_fd=_listen(settings.proxy_listen).detach())
    except OSError as exc:
        print(f"trio-gateway: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    shared_metrics = None
    if settings.workers > 1 and settings.metrics:
        # Every worker writes its metrics where this process's /metrics adds them up.
        given = os.environ.get(metrics.MULTIPROC_ENV) or None
        shared_metrics = (metrics.prepare_multiprocess(given), given is None)
    try:
        trio.run(_run_until_signalled, settings, declarations)
    except Exception as exc:
        if (found := _find(exc, (OSError, StoreCorrupt, StoreUnavailable))) is None:
            raise
        prefix = "cannot start: " if isinstance(found, OSError) else ""
        print(f"trio-gateway: {prefix}{found}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if shared_metrics is not None:
            metrics.cleanup_multiprocess(shared_metrics[0], remove=shared_metrics[1])
    return 0


#: Below this many open files, say at start how few streams the process can hold.
FEW_OPEN_FILES = 4096
#: What "no hard limit" becomes: Linux refuses more than ``fs.nr_open`` (2**20 by default).
UNLIMITED_OPEN_FILES = 1 << 20


def _raise_open_file_limit() -> None:
    """Take the open-file limit up to the hard limit, as Go's runtime does for its servers.

    Each open stream holds two descriptors (the client's connection and the provider's):
    under a shell's usual soft limit of 1,024 the gateway held about 500 streams, and the
    next ones failed to connect upstream (502) or waited to be accepted. The hard limit
    is the administrator's (``LimitNOFILE=`` in systemd, ``ulimit -Hn``); the soft one is
    only a default that servers are expected to raise. trio waits with epoll, so high
    descriptor numbers are safe.
    """
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # e.g. macOS caps it lower than the hard limit says
            pass
    if soft != resource.RLIM_INFINITY and soft < FEW_OPEN_FILES:
        log.warning(
            "few open files allowed: about half as many streams can be open at once",
            extra={"fields": {"open_files": soft, "raise_with": "ulimit -Hn / LimitNOFILE="}},
        )


def _overrides(pairs: list[str]) -> dict[str, str] | None:
    """``--base-url-override URL=STAND_IN`` flags as a mapping, or ``None`` (reported)."""
    result = {}
    for pair in pairs:
        public, sep, stand_in = pair.partition("=")
        try:
            if not sep:
                raise ValidationFailed.single("$", "expected URL=STAND_IN")
            result[serde.structure(public, BaseUrl)] = serde.structure(stand_in, BaseUrl)
        except ValidationFailed as exc:
            print(
                f"trio-gateway: --base-url-override {pair!r}: {exc.details[0].msg}",
                file=sys.stderr,
            )
            return None
    return result


def _busy_address(settings: Settings, declarations: Declarations | None) -> str | None:
    """The first address this process would listen on that is taken, said plainly."""
    wanted = []
    if not settings.worker:
        wanted.append(("the admin API", settings.admin_listen, "--admin-listen"))
    if settings.proxy_fd is None:
        wanted.append(("the proxy", settings.proxy_listen, "--proxy-listen"))
    for spec in declarations.fake_providers if declarations else ():
        wanted.append((f"fake provider {spec.name!r}", spec.listen, "its listen in the file"))
    for what, listen, option in wanted:
        host, port = split_listen(listen)
        if port == 0:
            continue
        try:
            socket.create_server((host, port), family=_family(host)).close()
        except OSError as exc:
            reason = (
                "is already in use (is trio-gateway already running? `make run` twice?)"
                if exc.errno == errno.EADDRINUSE
                else f"cannot be used ({exc.strerror})"
            )
            return f"{listen} ({what}) {reason}; choose another address with {option}"
    return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _listen(listen: str) -> socket.socket:
    """The proxy's listening socket, made before the workers start so they can share it."""
    host, port = split_listen(listen)
    sock = socket.create_server((host, port), family=_family(host), backlog=LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _find(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first leaf of an exception group that is one of ``types``."""
    if isinstance(exc, BaseExceptionGroup):
        return next((f for e in exc.exceptions if (f := _find(e, types)) is not None), None)
    return exc if isinstance(exc, types) else None


async def _run_until_signalled(settings: Settings, declarations: Declarations | None) -> None:
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def run_server(*, task_status: trio.TaskStatus[Running]) -> None:
                await serve(settings, declarations, shutdown=shutdown, task_status=task_status)
                nursery.cancel_scope.cancel()

            running = await nursery.start(run_server)
            if not settings.worker:
                print(banner(running, settings, declarations), flush=True)
            reloads = _Reloads(running, settings, declarations)
            nursery.start_soon(reloads.run)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reloads.request()
                    continue
                if shutdown.is_set():
                    log.warning("second signal: stopping now")
                    nursery.cancel_scope.cancel()
                    break
                log.info("shutting down", extra={"fields": {"signal": signal.Signals(signum).name}})
                shutdown.set()


class _Reloads:
    """SIGHUP: one reload at a time; signals during one make one more after it."""

    def __init__(
        self, running: Running, settings: Settings, declarations: Declarations | None
    ) -> None:
        self._running, self._settings, self._started = running, settings, declarations
        self._wanted = trio.Event()

    def request(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            if self._settings.worker:
                log.info("SIGHUP ignored: the main process reloads the configuration")
            elif self._settings.config_file is None:
                log.warning("SIGHUP: there is no --config file to reload")
            else:
                await reload_config(self._running, self._settings.config_file, self._started)


GUIDE_GATEWAY = "guide"
GUIDE_BODY = "examples/guide-upstream.json"
GUIDE_UPSTREAM = "ai-providers-upstream"
GUIDE_CHAT = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'


def banner(running: Running, settings: Settings, declarations: Declarations | None) -> str:
    """What ``make run`` shows: where things are, and the guide's steps ready to paste.

    Never a secret: a key the configuration file declares is shown by where it is.
    """
    admin = running.admin_url
    lines = [
        f"trio-gateway {__version__} is ready.",
        f"  admin API: {admin}/api/v1"
        + ("" if settings.admin_token else "  (no token: loopback only)"),
        f"  proxy:     {running.proxy_url}"
        + (f"  ({settings.workers} worker processes)" if settings.workers > 1 else ""),
        f"  store:     {_store_line(running)}",
    ]
    stands_for = {stand_in: public for public, stand_in in settings.base_urls.items()}
    for name, url in running.fake_providers.items():
        instead = stands_for.get(name) or stands_for.get(url)
        lines.append(
            f"  fake provider {name!r}: {url}" + (f"  (stands in for {instead})" if instead else "")
        )
    for public, stand_in in settings.base_urls.items():
        if stand_in not in running.fake_providers:
            lines.append(f"  base URL {public} is sent to {stand_in}")
    snapshot = running.catalog.snapshot
    gateways = sorted(snapshot.gateways.values(), key=lambda g: (g.created_at, g.id))
    keys = _declared_keys(settings, declarations)
    for gateway in gateways:
        where = keys.get(gateway.name)
        lines.append(
            f"  gateway {gateway.name!r}: {gateway.id}"
            + (f"  (its API key: {where})" if where else "")
        )
    guide = next((g for g in gateways if g.name == GUIDE_GATEWAY), None)
    if guide is not None:
        lines += guide_steps(running, settings, guide.id)
    return "\n".join(lines)


def _store_line(running: Running) -> str:
    stats = running.catalog.store.statistics()
    if stats.kind == "memory":
        return "memory (nothing survives a restart)"
    return f"{stats.kind} {stats.location} (configuration version {running.catalog.version})"


def guide_steps(running: Running, settings: Settings, gateway_id: str) -> list[str]:
    """The guide's steps in gateway ``gateway_id``, in an order that works end to end.

    The guide ends with "Next steps: configure a service to use this upstream": until
    then nothing routes to it, so those steps (a service, a rule, a key) come before
    Step 4, whose ``X-Selected-Provider`` then names a provider of the guide's upstream.
    What already exists (from an earlier run) is shown with its id.
    """
    snapshot = running.catalog.snapshot
    auth = ' -H "Authorization: Bearer $TRIO_GATEWAY_ADMIN_TOKEN"' if settings.admin_token else ""
    json = f'{auth} -H "Content-Type: application/json"'
    base = f"{running.admin_url}/api/v1/gateways/{gateway_id}"

    def existing(kind: Kind, name: str) -> str | None:
        found = next((e for e in snapshot.in_gateway(kind, gateway_id) if e.name == name), None)
        return found.id if found is not None else None

    upstream_id = existing(Kind.UPSTREAM, GUIDE_UPSTREAM)
    service_id = existing(Kind.SERVICE, "ai")
    rule_id = existing(Kind.RULE, "v1")
    key_id = existing(Kind.API_KEY, "my-app")

    def done(entity_id: str | None) -> str:
        return f"  (done: id {entity_id})" if entity_id else ""

    upstream = upstream_id or "UPSTREAM_ID"
    service = service_id or "SERVICE_ID"
    return [
        "",
        f'The "Configure an Upstream" guide, end to end, in gateway {GUIDE_GATEWAY!r}:',
        f"  export GATEWAY={base}",
        f"Step 2: create the upstream ({GUIDE_BODY} is the guide's body, verbatim)"
        + done(upstream_id),
        f"  curl -X POST $GATEWAY/upstreams{json} -d @{GUIDE_BODY}",
        'Step 3: verify it (UPSTREAM_ID: the "id" Step 2 answered)',
        f"  curl $GATEWAY/upstreams/{upstream}{auth}",
        "Next steps, taken now so that Step 4 reaches this upstream:",
        "  a service on the upstream" + done(service_id),
        f"  curl -X POST $GATEWAY/services{json} \\",
        f'    -d \'{{"name": "ai", "type": "upstream", "upstream_id": "{upstream}"}}\'',
        '  a rule sending /v1 to the service (SERVICE_ID: the "id" it answered)' + done(rule_id),
        f"  curl -X POST $GATEWAY/rules{json} \\",
        f'    -d \'{{"name": "v1", "path": "/v1", "service_id": "{service}"}}\'',
        '  an API key (YOUR_API_KEY: the "key" it answers, shown only once)' + done(key_id),
        f'  curl -X POST $GATEWAY/keys{json} -d \'{{"name": "my-app"}}\'',
        "Step 4: test load balancing (X-Selected-Provider says which provider answered)",
        f"  curl -i -X POST {running.proxy_url}/v1/chat/completions \\",
        '    -H "Content-Type: application/json" -H "X-Api-Key: YOUR_API_KEY" \\',
        f"    -d '{GUIDE_CHAT}'",
    ]


def _declared_keys(settings: Settings, declarations: Declarations | None) -> dict[str, str]:
    """Where the configuration file declares each gateway's first API key, by gateway name."""
    found = {}
    source = settings.config_file or "the configuration file"
    for i, gateway in enumerate(declarations.gateways if declarations else ()):
        for j, entry in enumerate(gateway.entities[Kind.API_KEY]):
            if entry.get("key"):
                found[gateway.name] = f"{source}, gateways[{i}].api_keys[{j}].key"
                break
    return found
