"""A whole stack for any test suite: fake providers and a gateway in front of them.

A *stack* is what a failure test needs: fake providers (:mod:`trio_gateway.testing.fake`)
and a gateway (port 0, memory store) whose one upstream points at them, with a
client key ready. It is described by a :class:`StackSpec` (a mapping, or the
``fakes``/``upstream``/``service`` sections of a scenario file)::

    {
        "fakes": [{"name": "primary"}, {"name": "backup"}],
        "upstream": {
            "targets": [
                {"fake": "primary", "provider": "openai"},
                {"fake": "backup", "provider": "anthropic", "priority": 2},
            ],
            "health_checks": {"passive": True, "threshold": 3, "interval": 60},
        },
        "service": {"first_byte_timeout": 5},
    }

A target says ``fake: NAME`` instead of ``base_url`` and ``credentials``: the stack
fills both in once the fake listens. Everything else is the gateway's own upstream
and service format (``docs/configuration.md``), validated by the gateway's own rules.

Two ways to run one:

* :func:`open_stack` (Trio): ``async with open_stack(spec) as stack``, everything in
  the caller's Trio loop; what the scenario runner uses (also in virtual time).
* :func:`run_stack` (any code): a context manager for plain synchronous code (and
  asyncio code) that runs the stack in a background thread with its own Trio loop.

Why a thread running ``trio.run`` and not ``trio.lowlevel.start_guest_run``
--------------------------------------------------------------------------
Guest mode runs Trio on top of a host event loop that keeps turning. Plain
synchronous code has no host loop, and a blocking call (``openai.OpenAI().chat...``)
stops the calling thread until the answer comes: a gateway that runs on that
thread cannot answer it, which is the deadlock the Trio-only fixtures had. Even an
asyncio host would stall Trio whenever the test makes a blocking call, which
asyncio tests do all the time (a sync SDK, ``requests``). A thread of its own with
its own ``trio.run`` serves whatever the caller does: block, run asyncio, run
another Trio loop. The caller talks to it only through ``trio.from_thread``
(:meth:`Stack.call`), so every touch of the fakes and the runtime happens on the
Trio thread, and the handles are thread-safe.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import yaml

from trio_gateway import serde
from trio_gateway.config.file import parse
from trio_gateway.config.models import Kind, Service, Upstream, check_upstream
from trio_gateway.errors import Problem, ValidationFailed
from trio_gateway.testing.fake import (
    DEFAULT_MODELS,
    FakeProvider,
    FakeProviderSpec,
    FakeProviderStatistics,
    Fault,
    RecordedRequest,
)
from trio_gateway.testing.harness import TEST_SETTINGS

T = TypeVar("T")

#: Models a target on a fake gets when it names none: what the SDK examples ask for.
DEFAULT_TARGET_MODEL = {
    "anthropic": "claude-3-5-haiku-20241022",
    "openai": "gpt-4o-mini",
    "openai-compatible": "gpt-4o-mini",
    "azure-openai": "gpt-4o-mini",
}
#: Client paths the gateway serves in a stack (the rule sends ``/v1`` to the upstream).
RULE_PATH = "/v1"
#: Bound on starting and on stopping the stack's thread.
THREAD_TIMEOUT_S = 30.0

_STACK_FIELDS = ("fake", "name")


@attrs.frozen(kw_only=True)
class StackSpec:
    """Fakes, the gateway's upstream (targets may say ``fake: NAME``) and its service.

    Build with :meth:`of` (a mapping or a YAML file); the result is validated:
    a bad field raises :class:`~trio_gateway.errors.ValidationFailed` naming it
    (``upstream.targets[1].fake``).
    """

    fakes: tuple[FakeProviderSpec, ...] = ()
    upstream: Mapping[str, Any] = attrs.field(factory=dict)
    service: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def of(cls, data: StackSpec | Mapping[str, Any] | str | Path, *, loc: str = "") -> StackSpec:
        if isinstance(data, StackSpec):
            return data
        if isinstance(data, str | Path):
            data = yaml.safe_load(Path(data).read_text(encoding="utf-8")) or {}
        if not isinstance(data, Mapping):
            raise ValidationFailed.single(loc or "$", "must be a mapping")
        problems: list[Problem] = []
        extra = sorted(set(data) - {"fakes", "upstream", "service"})
        problems += [Problem(_at(loc, str(k)), "unknown field") for k in extra]
        fakes = check_fakes(data.get("fakes"), _at(loc, "fakes"), problems)
        upstream = data.get("upstream")
        service = data.get("service") or {}
        names = {f.name for f in fakes}
        check_upstream_section(upstream, names, _at(loc, "upstream"), problems)
        check_service_section(service, _at(loc, "service"), problems)
        if problems:
            raise ValidationFailed.of(problems)
        assert isinstance(upstream, Mapping)
        return cls(fakes=fakes, upstream=dict(upstream), service=dict(service))

    def models(self) -> dict[str, Sequence[str]]:
        """The models each fake serves (an empty list: any name)."""
        return {f.name: f.models for f in self.fakes}

    def target_names(self) -> list[str]:
        """Each target's name: ``name`` if given, else its fake's, else ``target<i>``."""
        return target_names(self.upstream.get("targets") or [])


def _at(loc: str, field: str) -> str:
    return f"{loc}.{field}" if loc else field


def target_names(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for i, target in enumerate(targets):
        name = target.get("name") or target.get("fake") or f"target{i}"
        while name in names:
            name = f"{name}#{i}"
        names.append(name)
    return names


def check_fakes(data: Any, loc: str, problems: list[Problem]) -> tuple[FakeProviderSpec, ...]:
    """The fakes a stack declares; every problem is added to ``problems``."""
    if data is None:
        return ()
    if not isinstance(data, list):
        problems.append(Problem(loc, "must be a list of fake providers"))
        return ()
    fakes = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        try:
            fake = serde.structure(entry, FakeProviderSpec, loc=f"{loc}[{i}]")
        except ValidationFailed as exc:
            problems.extend(exc.details)
            continue
        if fake.name in seen:
            problems.append(Problem(f"{loc}[{i}].name", "another fake has this name"))
        seen.add(fake.name)
        fakes.append(fake)
    return tuple(fakes)


def check_upstream_section(
    upstream: Any, fakes: set[str], loc: str, problems: list[Problem]
) -> None:
    """Validate an upstream whose targets may name a fake, with the gateway's own rules."""
    if not isinstance(upstream, Mapping):
        problems.append(Problem(loc, "is required: a mapping with 'targets'"))
        return
    targets = upstream.get("targets")
    if not isinstance(targets, list) or not targets:
        problems.append(Problem(f"{loc}.targets", "must be a non-empty list of targets"))
        return
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping):
            continue  # the converter says so below
        fake = target.get("fake")
        if fake is not None and fake not in fakes:
            known = ", ".join(repr(f) for f in sorted(fakes)) or "none"
            problems.append(
                Problem(f"{loc}.targets[{i}].fake", f"no fake named {fake!r} (fakes: {known})")
            )
        elif (
            fake is None
            and "base_url" not in target
            and target.get("provider")
            in (
                None,
                "openai-compatible",
                "azure-openai",
            )
        ):
            problems.append(Problem(f"{loc}.targets[{i}]", "needs 'fake: NAME' or a 'base_url'"))
        name = target.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(Problem(f"{loc}.targets[{i}].name", "must be a non-empty string"))
    probe = dict(resolve_upstream(upstream, {f: "http://127.0.0.1:1" for f in fakes}, {}))
    probe.setdefault("name", "stack")
    try:
        checked = serde.structure(probe, Upstream, loc=loc)
    except ValidationFailed as exc:
        problems.extend(exc.details)
        return
    problems.extend(attrs.evolve(p, loc=f"{loc}.{p.loc}") for p in check_upstream(checked))


def check_service_section(service: Any, loc: str, problems: list[Problem]) -> None:
    """A service's time budgets and attempt limit, checked by the gateway's own model."""
    if not isinstance(service, Mapping):
        problems.append(Problem(loc, "must be a mapping"))
        return
    try:
        serde.structure({"name": "stack", "upstream_id": "x", **service}, Service, loc=loc)
    except ValidationFailed as exc:
        problems.extend(exc.details)


def resolve_upstream(
    upstream: Mapping[str, Any],
    urls: Mapping[str, str],
    keys: Mapping[str, str],
    models: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The gateway's upstream: ``fake: NAME`` targets get the fake's URL and credential.

    A target on a fake that lists no ``models`` gets those of the fake's models that
    its provider's side serves (a fake serves Claude names on its Anthropic side
    only, OpenAI names on its OpenAI side only), so the gateway sends each fake only
    models it answers, and falls back to the target's ``default_model`` otherwise.
    """
    targets = []
    for target in upstream.get("targets") or []:
        if not isinstance(target, Mapping):
            targets.append(target)
            continue
        resolved = {k: v for k, v in target.items() if k not in _STACK_FIELDS}
        fake = target.get("fake")
        if fake is not None:
            resolved.setdefault("provider", "openai")
            resolved.setdefault("base_url", urls.get(fake, "http://127.0.0.1:1"))
            resolved.setdefault(
                "credentials", {"header_value": keys.get(fake) or f"sk-fake-{fake}"}
            )
            provider = resolved["provider"]
            if isinstance(provider, str) and provider in DEFAULT_TARGET_MODEL:
                resolved.setdefault("default_model", DEFAULT_TARGET_MODEL[provider])
                claude = provider == "anthropic"
                served = [
                    m
                    for m in (models or {}).get(fake, DEFAULT_MODELS)
                    if m.startswith("claude") == claude and not m.startswith("text-embedding")
                ]
                if resolved["default_model"] not in served:
                    served.append(resolved["default_model"])
                resolved.setdefault("models", served)
        targets.append(resolved)
    return {**upstream, "targets": targets}


def gateway_config(
    spec: StackSpec, urls: Mapping[str, str], keys: Mapping[str, str], client_key: str
) -> dict[str, Any]:
    """What a configuration file would hold for this stack."""
    upstream = {"name": "stack", **resolve_upstream(spec.upstream, urls, keys, spec.models())}
    return {
        "gateways": [
            {
                "name": "stack",
                "upstreams": [upstream],
                "services": [{**spec.service, "name": "stack", "upstream": upstream["name"]}],
                "rules": [{"name": "v1", "path": RULE_PATH, "service": "stack"}],
                "api_keys": [{"name": "client", "key": client_key}],
            }
        ]
    }


def _with_key(spec: FakeProviderSpec) -> FakeProviderSpec:
    # A fake without a key accepts any; give it one, so the gateway must send the right one.
    return spec if spec.api_key else attrs.evolve(spec, api_key=f"sk-fake-{spec.name}")


# --- health -------------------------------------------------------------------------


@attrs.frozen
class TargetHealth:
    """One target as the gateway sees it now (a snapshot of its health statistics)."""

    name: str
    id: str
    #: ``healthy``, ``ejected`` or ``half_open`` (whatever the gateway's health endpoint says).
    state: str
    ejections: int
    consecutive_failures: int
    in_flight: int
    requests: int
    failures: int
    #: Seconds until an ejected target may be tried again (``None`` unless ejected).
    ejected_for: float | None
    last_error: str | None


def target_health(name: str, stats: Any, now: float) -> TargetHealth:
    """Adapt the runtime's per-target statistics (the one place that reads them)."""
    health = stats.health
    until = getattr(health, "ejected_until", None)
    return TargetHealth(
        name=name,
        id=stats.id,
        state=str(getattr(health.state, "value", health.state)),
        ejections=int(getattr(health, "ejections", 0)),
        consecutive_failures=int(getattr(health, "consecutive_failures", 0)),
        in_flight=int(getattr(stats, "in_flight", 0)),
        requests=int(getattr(stats, "requests", 0)),
        failures=int(getattr(stats, "failures", 0)),
        ejected_for=max(0.0, until - now) if until is not None else None,
        last_error=getattr(health, "last_error", None),
    )


# --- the Trio side ------------------------------------------------------------------


@attrs.define(eq=False)
class OpenStack:
    """A stack running in the caller's Trio loop (see :func:`open_stack`)."""

    spec: StackSpec
    running: Any  #: :class:`trio_gateway.serve.Running`
    fakes: dict[str, FakeProvider]
    key: str

    @property
    def proxy_url(self) -> str:
        return self.running.proxy_url

    @property
    def admin_url(self) -> str:
        return self.running.admin_url

    @property
    def gateway_id(self) -> str:
        return next(iter(self.running.catalog.snapshot.gateways))

    @property
    def upstream_id(self) -> str:
        return next(iter(self.running.catalog.snapshot.upstreams))

    def target_names(self) -> dict[str, str]:
        """Target id -> its name (its fake's name unless the spec named it)."""
        upstream = self.running.catalog.snapshot.upstreams[self.upstream_id]
        return dict(zip((t.id for t in upstream.targets), self.spec.target_names(), strict=True))

    def health(self) -> dict[str, TargetHealth]:
        """Every target's health now, by target name, in configuration order."""
        names = self.target_names()
        stats = self.running.runtime.upstream_health(self.upstream_id) or []
        now = trio.current_time()
        found = [target_health(names.get(s.id, s.id), s, now) for s in stats]
        return {h.name: h for h in found}

    async def set_targets(self, targets: Sequence[Mapping[str, Any]]) -> None:
        """Replace the upstream's targets (same format as the spec's), as an admin write.

        Returns once the proxy routes with the new targets. Targets whose endpoint
        is unchanged keep their id and health, as with any admin write.
        """
        upstream = {**self.spec.upstream, "targets": list(targets)}
        urls = {name: fake.url or "" for name, fake in self.fakes.items()}
        keys = {name: fake.spec.api_key or "" for name, fake in self.fakes.items()}
        fields = {"name": "stack", **resolve_upstream(upstream, urls, keys, self.spec.models())}
        catalog = self.running.catalog
        await catalog.replace(Kind.UPSTREAM, self.upstream_id, fields, self.gateway_id)
        self.spec = attrs.evolve(self.spec, upstream=upstream)
        await self.running.runtime.wait_applied(catalog.snapshot.generation)


@asynccontextmanager
async def open_stack(
    spec: StackSpec | Mapping[str, Any] | str | Path,
    *,
    start_fakes: bool = True,
    **settings: Any,
) -> AsyncIterator[OpenStack]:
    """Start the spec's fakes, then a gateway in front of them; cancel both on exit.

    ``settings`` override :class:`~trio_gateway.settings.Settings` fields (port 0
    and a memory store by default).
    """
    from trio_gateway.serve import serve

    spec = StackSpec.of(spec)
    key = f"tgk_stack_{secrets.token_hex(12)}"
    async with trio.open_nursery() as nursery:
        fakes: dict[str, FakeProvider] = {}
        if start_fakes:
            for fake_spec in spec.fakes:
                fake = FakeProvider.of(_with_key(fake_spec))
                await nursery.start(fake.serve)
                fakes[fake.name] = fake
        urls = {name: fake.url or "" for name, fake in fakes.items()}
        keys = {name: fake.spec.api_key or "" for name, fake in fakes.items()}
        declarations = parse(gateway_config(spec, urls, keys, key), {})
        running = await nursery.start(
            partial(serve, attrs.evolve(TEST_SETTINGS, **settings), declarations)
        )
        yield OpenStack(spec=spec, running=running, fakes=fakes, key=key)
        nursery.cancel_scope.cancel()


# --- the thread side ----------------------------------------------------------------


class FakeHandle:
    """A fake provider of a :class:`Stack`, used from the calling thread.

    Every method runs on the stack's Trio thread and returns copies: safe to call
    from any thread while the stack runs.
    """

    def __init__(self, stack: Stack, name: str, url: str) -> None:
        self._stack = stack
        self.name = name
        self.url = url

    def _fake(self) -> FakeProvider:
        return self._stack._open.fakes[self.name]  # only ever called on the Trio thread

    def set_faults(self, *faults: Fault | Iterable[Fault]) -> None:
        """Replace its faults (``set_faults()`` clears them); windows start now."""
        self._stack.call(lambda: self._fake().set_faults(*faults))

    def add_fault(self, fault: Fault) -> None:
        self._stack.call(lambda: self._fake().add_fault(fault))

    def clear_faults(self) -> None:
        self._stack.call(lambda: self._fake().clear_faults())

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._stack.call(lambda: self._fake().faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """What it received since the last reset: copies, safe to keep."""
        return self._stack.call(lambda: [copy.copy(r) for r in self._fake().requests])

    def clear_requests(self) -> None:
        self._stack.call(lambda: self._fake().clear_requests())

    def reset(self) -> None:
        """Back to its spec's faults (fresh counters), no requests."""
        self._stack.call(lambda: self._fake().reset())

    def statistics(self) -> FakeProviderStatistics:
        return self._stack.call(lambda: self._fake().statistics())

    def __repr__(self) -> str:
        return f"<FakeHandle {self.name!r} {self.url}>"


class Stack:
    """A running stack, from the calling thread (see :func:`run_stack`).

    ``proxy_url`` (point an SDK at ``proxy_url + "/v1"``), ``admin_url``, ``key``
    (a client key of the gateway), ``fakes[name]`` (:class:`FakeHandle`),
    :meth:`health` and :meth:`set_targets`. Thread-safe.
    """

    def __init__(self, open_stack: OpenStack, token: trio.lowlevel.TrioToken) -> None:
        self._open = open_stack
        self._token = token
        self.proxy_url: str = open_stack.proxy_url
        self.admin_url: str = open_stack.admin_url
        self.key: str = open_stack.key
        self.gateway_id: str = open_stack.gateway_id
        self.upstream_id: str = open_stack.upstream_id
        self.fakes: dict[str, FakeHandle] = {
            name: FakeHandle(self, name, fake.url or "") for name, fake in open_stack.fakes.items()
        }

    @property
    def base_url(self) -> str:
        """The OpenAI SDK's ``base_url`` for this gateway (``proxy_url + "/v1"``)."""
        return self.proxy_url + RULE_PATH

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the stack's Trio thread and return its result."""
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def health(self) -> dict[str, TargetHealth]:
        """Every target's health now, by target name (its fake's name by default)."""
        return self.call(self._open.health)

    def set_targets(self, targets: Sequence[Mapping[str, Any]]) -> None:
        """Replace the upstream's targets (spec format); returns once the proxy uses them."""
        trio.from_thread.run(self._open.set_targets, targets, trio_token=self._token)


@contextmanager
def run_stack(spec: StackSpec | Mapping[str, Any] | str | Path, **settings: Any) -> Iterator[Stack]:
    """Run a stack in a background thread for the ``with`` block; usable from any code.

    ::

        with run_stack({"fakes": [...], "upstream": {...}}) as stack:
            client = openai.OpenAI(base_url=stack.base_url, api_key=stack.key)
            stack.fakes["primary"].set_faults(Fault.error(503))
            ...
            assert stack.health()["primary"].state == "ejected"

    Starting raises what went wrong (a bad spec: :class:`ValidationFailed`). On exit,
    whatever happened in the block, everything is cancelled and the thread joined.
    """
    spec = StackSpec.of(spec)  # validate in the caller's thread: a clear error, no thread
    started: dict[str, Any] = {}
    ready = threading.Event()
    stop: list[Callable[[], None]] = []

    async def main() -> None:
        stopped = trio.Event()
        async with open_stack(spec, **settings) as opened:
            started["stack"] = Stack(opened, trio.lowlevel.current_trio_token())
            stop.append(stopped.set)
            ready.set()
            await stopped.wait()

    def thread() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            started["error"] = exc
        finally:
            ready.set()

    worker = threading.Thread(target=thread, name="trio-gateway-stack", daemon=True)
    worker.start()
    if not ready.wait(THREAD_TIMEOUT_S):
        raise RuntimeError(f"the stack did not start within {THREAD_TIMEOUT_S:g} s")
    if "stack" not in started:
        worker.join(THREAD_TIMEOUT_S)
        raise RuntimeError("the stack failed to start") from started.get("error")
    stack: Stack = started["stack"]
    try:
        yield stack
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(stop[0], trio_token=stack._token)
        worker.join(THREAD_TIMEOUT_S)
        if worker.is_alive():
            raise RuntimeError(f"the stack did not stop within {THREAD_TIMEOUT_S:g} s")
    if "error" in started:
        raise RuntimeError("the stack's Trio thread failed") from started["error"]
