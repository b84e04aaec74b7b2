"""`make bench`: the gateway against the floor proxy (and a direct call), interleaved, in rounds.

    .venv/bin/python benchmarks/run.py [--repeat 3] [--duration 8] [--warmup 2] [--profile]

Starts, and stops at the end:

* the **mock provider**: nginx answering from memory (benchmarks/nginx.conf.template,
  bodies from benchmarks/mock_bodies.py), one process, on the load core;
* the **floor**: benchmarks/floor_proxy.py, the thinnest pass-through on our stack;
* the **gateway**: ``trio-gateway serve`` with benchmarks/gateway.yaml (API key, rule,
  service, two-target round-robin upstream, passive health, metrics and access log on)
  on the SQLite store, as a user runs it; ``gateway-quiet``, the same with
  ``--metrics off --access-log off`` (issue 11); ``gateway-limited``, the gateway's own
  process called with its second API key, which carries every limit (requests and tokens
  per minute, a token and cost budget, a model list; set far above what a run reaches) and
  whose difference to the gateway (its key without limits) is what limits cost (issue 14);
* ``floor-2w`` and ``gateway-2w``: the same with two worker processes on both cores.

One-worker servers are pinned to core 0; nginx, wrk and this script to core 1. Every
server runs for the whole measurement; only the one under load does work.

**Rounds** (``--repeat``, 3 by default): each round measures every (case, server) pair
once, a case's servers back to back (so every ratio compares measurements taken
within a minute of each other), in reverse order every other round (so a drift of the
machine does not favour one side). Each ratio is computed within each round, then
reported as its median and its spread (min-max) over the rounds; a target whose rounds
fall on both sides of its limit is reported as inconclusive. Then, once: 1,000 slow
streams open at once, start-to-ready times, and (``--profile``) py-spy profiles.

Writes the tables into docs/benchmarks.md (between the ``results`` markers), raw
numbers (every sample, every round's ratios) into benchmarks/results/latest.json, and
prints PASS/MISS for each target of issues 17, 6 and 11.

Installs nothing: it says what to ``apt-get install`` when nginx, its echo module or wrk
is missing. Linux only (taskset, /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import mock_bodies  # noqa: E402

SERVER_CORE = "0"
LOAD_CORE = "1"
ALL_CORES = "0,1"
INSTALL = "apt-get install -y nginx libnginx-mod-http-echo wrk"
ECHO_MODULES = [
    Path("/usr/lib/nginx/modules/ngx_http_echo_module.so"),
    Path("/usr/share/nginx/modules/ngx_http_echo_module.so"),
    Path("/usr/lib64/nginx/modules/ngx_http_echo_module.so"),
]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"
#: Seconds between the events of a slow stream, and over how long the streams are opened
#: (``--slow-interval``, ``--slow-ramp``; docs/benchmarks.md says why these values).
SLOW_SLEEP_S = 0.5
SLOW_RAMP_S = 4.0
SLOW_STREAMS = 1000
#: Other processes using more than this share of a core during a measurement: noisy.
NOISY = 0.15
ROUNDS = 3

# Targets of issue 17 (medians over the rounds).
RPS_MIN = 0.95  # non-streaming c=32: gateway req/s ÷ floor's
RPS_STRETCH = 1.0
CONCURRENCY_CPU_MAX = 1.05  # gateway CPU per request at c=32 ÷ its own at c=1
TRANSLATED_MIN = 0.9  # translated streams per CPU-second ÷ the floor's relaying them
WORKERS_MIN = 1.8  # --workers 2 req/s ÷ one worker's, c=32
SLOW_RSS_MAX_MB = 250.0
READY_MAX_S = 1.5
# Target of issue 9: creating an upstream of BIG_TARGETS targets stalls the proxy at most this.
BIG_TARGETS = 100
BIG_STALL_MAX_MS = 100.0
# Targets of issue 6 that still say something.
ADDED_P50_MAX = 1.25
STREAM_CPU_MAX = 1.3
# Target of issue 11: metrics + access log cost at most this share of the gateway's CPU.
TELEMETRY_COST_MAX = 0.05

#: Cases measured with the telemetry off too (the gateway-quiet rows).
QUIET_CASES = ("nonstream-c32", "stream-c32")
#: Cases measured with the limited key too (the gateway-limited rows: the same process).
LIMITED_CASES = ("nonstream-c32", "stream-c32")
# Target of issue 14: a key with limits costs at most this share more CPU per request.
LIMITED_COST_MAX = 0.10
QUIET_FLAGS = ["--metrics", "off", "--access-log", "off"]
#: Cases measured against the mock directly too (the latency under the added p50).
DIRECT_CASES = ("nonstream-c1",)
#: Cases measured with two workers too (floor-2w, gateway-2w).
WORKER_CASES = ("nonstream-c32",)
#: What ``--only`` may name besides case ids.
EXTRAS = ("slow-streams", "big-upstream", "startup")


def gateway_key(gateway: str, limited: bool = False) -> str:
    """The API key benchmarks/gateway.yaml declares for gateway ``bench-<gateway>``
    (``limited``: its second key, with limits; bench-plain and bench-stream have one)."""
    kind = "limited_key" if limited else "key"
    return f"tgk_bench_{gateway.replace('-', '_')}_{kind}_0123456789"


@dataclass(frozen=True)
class Case:
    kind: str  # nonstream | stream | translate | translate-stream
    concurrency: int
    mock_path: str  # what the direct call and the floor ask the mock for
    gateway: str  # the gateway (and API key) of benchmarks/gateway.yaml
    stream: bool
    translated: bool

    @property
    def id(self) -> str:
        return f"{self.kind}-c{self.concurrency}"

    @property
    def label(self) -> str:
        return {
            "nonstream": "non-streaming",
            "stream": "streaming (20 events)",
            "translate": "OpenAI client → Anthropic target",
            "translate-stream": "OpenAI client → Anthropic target, streaming",
        }[self.kind]


def make_cases() -> list[Case]:
    spec = [
        ("nonstream", (1, 32, 64), "/v1/chat/completions", "plain", False, False),
        ("stream", (1, 32), "/stream/v1/chat/completions", "stream", True, False),
        ("translate", (1, 32), "/v1/messages", "translate", False, True),
        ("translate-stream", (1, 32), "/stream/v1/messages", "translate-stream", True, True),
    ]
    return [
        Case(kind, c, path, gw, stream, translated)
        for kind, levels, path, gw, stream, translated in spec
        for c in levels
    ]


# --- processes ---------------------------------------------------------------------------


def proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    children = proc_children()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of live processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time all cores spent in user and system mode (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(x) for x in fields[:3])
    return (user + nice + system) / CLK_TCK


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            total_kb += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        except OSError:
            continue
    return total_kb / 1024


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen | None = None
    #: A gateway's admin API port.
    admin_port: int | None = None

    def start(self) -> Proc:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
        )
        out.close()
        RUNNING.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.tree())

    def rss(self) -> float:
        return rss_mb(self.tree())

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.tree()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.popen.wait(5)
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


RUNNING: list[Proc] = []


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_ready(
    proc: Proc, port: int, path: str, *, ok: Callable[[int], bool], deadline_s: float = 30
) -> float:
    """Poll ``path`` every 2 ms until ``ok(status)``; the monotonic time it first was."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not proc.alive():
            raise SystemExit(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            status, _, _ = http_call(port, "GET", path)
            if ok(status):
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"{proc.name} not ready on :{port}{path} after {deadline_s} s:\n{proc.tail()}")


def wait_settled(proc: Proc, processes: int, deadline_s: float = 60) -> None:
    """Until ``proc``'s tree has ``processes`` processes, all of them idle.

    A server with several workers is ready (``/readyz``) as soon as its first process
    is; the others start after it. Measured before they are up, every connection wrk
    opens goes to the first one and stays there (keep-alive): two workers would be
    measured as one.
    """
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        tree = proc.tree()
        if len(tree) >= processes:
            before = {pid: cpu_seconds([pid]) for pid in tree}
            time.sleep(0.5)
            if all(cpu_seconds([pid]) - cpu < 0.05 for pid, cpu in before.items()):
                return
        else:
            time.sleep(0.05)
    raise SystemExit(f"{proc.name}: not {processes} idle processes after {deadline_s} s")


# --- the pieces -----------------------------------------------------------------------------


@dataclass
class Env:
    tmp: Path
    python: str
    gateway_bin: str
    echo_module: Path
    #: ``--ref``: where the exported trio_gateway package lives (imported before the
    #: editable install); ``None``: the working tree.
    gateway_src: Path | None = None
    port_a: int = 0
    port_b: int = 0
    bodies: dict[str, Path] = field(default_factory=dict)
    #: ``memory`` or ``sqlite`` (``--store``): the one-worker gateways' store.
    store: str = "sqlite"
    slow_sleep: float = SLOW_SLEEP_S
    slow_ramp: float = SLOW_RAMP_S
    #: Where the Python servers' bytecode is cached, in ``tmp``.
    pycache: str = "pycache"

    @property
    def python_env(self) -> dict[str, str]:
        """The environment of the Python servers: bytecode cached, as an installed package has it.

        A ``PYTHONDONTWRITEBYTECODE`` in the caller's environment would make every start
        compile the gateway's sources again (an editable install has no ``.pyc``), a
        cost no installed gateway pays; the cache goes into the run's temporary
        directory, not the working tree.
        """
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(self.tmp / self.pycache)
        return env

    @property
    def gateway_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.python_env.items() if not k.startswith("TRIO_GATEWAY_")}
        env["BENCH_MOCK_A"] = f"http://127.0.0.1:{self.port_a}"
        env["BENCH_MOCK_B"] = f"http://127.0.0.1:{self.port_b}"
        if self.gateway_src is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.gateway_src), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        return env


def export_ref(ref: str, into: Path) -> tuple[Path, str]:
    """``git archive`` the trio_gateway package of ``ref`` into ``into`` (read-only on the repo)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        sys.exit(f"--ref {ref}: not a commit: {commit.stderr.strip()}")
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "trio_gateway"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into, commit.stdout.strip()


def check_prerequisites() -> tuple[Path, str]:
    missing = []
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        missing.append("nginx (Debian: nginx)")
    echo = next((p for p in ECHO_MODULES if p.exists()), None)
    if echo is None:
        missing.append("nginx's echo module (Debian: libnginx-mod-http-echo)")
    if shutil.which("wrk") is None:
        missing.append("wrk (Debian: wrk)")
    if shutil.which("taskset") is None:
        missing.append("taskset (Debian: util-linux)")
    if missing:
        sys.exit(
            "make bench needs:\n  - "
            + "\n  - ".join(missing)
            + f"\nOn Debian/Ubuntu:  sudo {INSTALL}"
        )
    if not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("make bench needs 2 cores (0 and 1): servers on one, mock and load on the other")
    gateway = shutil.which("trio-gateway", path=str(Path(sys.executable).parent)) or shutil.which(
        "trio-gateway"
    )
    if gateway is None:
        sys.exit("trio-gateway is not installed in this Python's environment: run `make install`")
    return echo, gateway  # type: ignore[return-value]


def start_mock(env: Env) -> Proc:
    env.port_a, env.port_b = free_port(), free_port()
    directory = env.tmp / "nginx"
    directory.mkdir()
    conf = directory / "nginx.conf"
    conf.write_text(
        mock_bodies.render_nginx_conf(
            HERE / "nginx.conf.template",
            directory=directory,
            port_a=env.port_a,
            port_b=env.port_b,
            echo_module=env.echo_module,
            slow_sleep=env.slow_sleep,
        )
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = ["taskset", "-c", LOAD_CORE, nginx, "-c", str(conf), "-p", str(directory)]
    argv += ["-e", str(directory / "nginx-error.log")]
    proc = Proc("mock (nginx)", argv, env.tmp / "nginx.log").start()
    wait_ready(proc, env.port_a, "/readyz", ok=lambda s: s == 200)
    return proc


def start_floor(env: Env, *, workers: int = 1) -> tuple[Proc, int]:
    port = free_port()
    cores = SERVER_CORE if workers == 1 else ALL_CORES
    argv = ["taskset", "-c", cores, env.python, str(HERE / "floor_proxy.py")]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    proc_env = {**env.python_env, "FLOOR_UPSTREAM": f"http://127.0.0.1:{env.port_a}"}
    name = "floor" if workers == 1 else f"floor-{workers}w"
    proc = Proc(name, argv, env.tmp / f"{name}.log", env=proc_env).start()
    # The floor has no GET route: any HTTP answer means it is serving.
    wait_ready(proc, port, "/", ok=lambda s: s > 0)
    return proc, port


def gateway_workers_flag(env: Env) -> bool:
    out = subprocess.run(
        [env.gateway_bin, "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env.gateway_env,
    ).stdout
    return "--workers" in out


def gateway_quiet_flags(env: Env) -> bool:
    """Does this gateway have ``--metrics`` and ``--access-log`` (issue 11)?"""
    out = subprocess.run(
        [env.gateway_bin, "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env.gateway_env,
    ).stdout
    return "--access-log" in out and "--metrics" in out


def start_gateway(
    env: Env,
    *,
    workers: int = 1,
    name: str | None = None,
    extra: list[str] | None = None,
    data: Path | None = None,
) -> tuple[Proc, int, float]:
    """Start it; return it, its proxy port and seconds from spawn to ``/readyz`` 200.

    The store is SQLite in ``data`` (default: a directory of its own in the run's
    temporary directory), as ``trio-gateway serve`` uses by default; with
    ``--store memory`` the one-worker gateways keep it in memory. The access log (on
    unless ``extra`` says ``--access-log off``) goes to the process's log file, like
    any log line: the cost of writing it is measured.
    """
    port, admin = free_port(), free_port()
    name = name or ("gateway" if workers == 1 else f"gateway-{workers}w")
    cores = SERVER_CORE if workers == 1 else ALL_CORES
    argv = ["taskset", "-c", cores, env.gateway_bin, "serve"]
    argv += ["--config", str(HERE / "gateway.yaml")]
    if workers == 1 and env.store == "memory" and data is None:
        argv += ["--memory"]
    else:  # several workers share the configuration through the SQLite store
        argv += ["--data-dir", str(data or env.tmp / f"data-{name}")]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", "--proxy-listen", f"127.0.0.1:{port}"]
    argv += ["--log-level", "WARNING", *(extra or [])]
    if workers != 1:
        argv += ["--workers", str(workers)]
    proc_env = env.gateway_env
    proc = Proc(name, argv, env.tmp / f"{name}.log", env=proc_env, admin_port=admin)
    started = time.monotonic()
    proc.start()
    ready = wait_ready(proc, port, "/readyz", ok=lambda s: s == 200)
    return proc, port, ready - started


@dataclass
class Server:
    name: str  # direct | floor | gateway | floor-2w | gateway-2w
    proc: Proc
    port: int

    def path(self, case: Case) -> str:
        return "/v1/chat/completions" if self.is_gateway else case.mock_path

    @property
    def is_gateway(self) -> bool:
        return self.name.startswith("gateway")

    def key(self, case: Case) -> str | None:
        if not self.is_gateway:
            return None
        return gateway_key(case.gateway, limited=self.name == "gateway-limited")

    def body_name(self, case: Case) -> str:
        if case.translated and not self.is_gateway:
            return "anthropic-stream" if case.stream else "anthropic"
        model = "translate" if case.translated else "openai"
        return f"{model}-stream" if case.stream else model


def write_bodies(env: Env) -> None:
    bodies = {
        "openai": mock_bodies.client_request(OPENAI_MODEL, stream=False),
        "openai-stream": mock_bodies.client_request(OPENAI_MODEL, stream=True),
        "translate": mock_bodies.client_request(ANTHROPIC_MODEL, stream=False),
        "translate-stream": mock_bodies.client_request(ANTHROPIC_MODEL, stream=True),
        "anthropic": mock_bodies.anthropic_request(ANTHROPIC_MODEL, stream=False),
        "anthropic-stream": mock_bodies.anthropic_request(ANTHROPIC_MODEL, stream=True),
    }
    for name, data in bodies.items():
        path = env.tmp / f"body-{name}.json"
        path.write_bytes(data)
        env.bodies[name] = path


def validate(env: Env, server: Server, case: Case) -> None:
    """One request as wrk will send it; the answer must be the realistic one."""
    headers = {"Content-Type": "application/json"}
    if key := server.key(case):
        headers["X-Api-Key"] = key
    body = env.bodies[server.body_name(case)].read_bytes()
    status, resp_headers, data = http_call(server.port, "POST", server.path(case), body, headers)
    ctype = resp_headers.get("content-type", "")
    problems = []
    if status != 200:
        problems.append(f"status {status}")
    anthropic_out = case.translated and not server.is_gateway
    if case.stream:
        text = data.decode()
        if not ctype.startswith("text/event-stream"):
            problems.append(f"content-type {ctype!r}")
        if anthropic_out:
            if text.count("event: content_block_delta") != len(mock_bodies.WORDS):
                problems.append("not the Anthropic stream")
            if "event: message_stop" not in text:
                problems.append("no message_stop")
        else:
            if text.count("data: ") < 20:
                problems.append(f"{text.count('data: ')} data: events")
            if not text.rstrip().endswith("data: [DONE]"):
                problems.append("does not end with data: [DONE]")
    else:
        try:
            obj = json.loads(data)
        except ValueError:
            obj = {}
        want = "message" if anthropic_out else "chat.completion"
        if obj.get("object", obj.get("type")) != want:
            problems.append(f"not a {want}: {data[:200]!r}")
    if problems:
        raise SystemExit(
            f"{server.name} {case.id}: {'; '.join(problems)}\n{data[:500]!r}\n{server.proc.tail()}"
        )


# --- load ---------------------------------------------------------------------------------


def run_wrk(env: Env, server: Server, case: Case, duration: float) -> tuple[dict, float]:
    """wrk pinned to the load core; its JSON result and its own CPU seconds."""
    url = f"http://127.0.0.1:{server.port}{server.path(case)}"
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{case.concurrency}"]
    argv += [f"-d{duration:g}s", "--timeout", "30s", "-s", str(HERE / "wrk_post.lua"), url]
    wrk_env = {**os.environ, "BENCH_BODY_FILE": str(env.bodies[server.body_name(case)])}
    wrk_env["BENCH_API_KEY"] = server.key(case) or ""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=wrk_env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return json.loads(line.removeprefix("BENCH_RESULT ")), cpu


@dataclass
class Sample:
    case: str
    server: str
    concurrency: int
    round: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_ms_per_req: float
    cpu_util: float  # of one core
    rss_mb: float
    mock_cpu_util: float
    mock_cpu_us_per_req: float
    wrk_cpu_util: float
    #: Everything else the machine ran meanwhile (other processes, this script), as a
    #: share of one core: a noisy neighbour shows here.
    other_cpu_util: float
    #: Each process's CPU as a share of one core, busiest first (several workers:
    #: how evenly the load was spread).
    proc_cpu_util: list[float] = field(default_factory=list)


def measure(env: Env, mock: Proc, server: Server, case: Case, args, round_: int) -> Sample:
    run_wrk(env, server, case, args.warmup)
    time.sleep(0.2)
    tree, mock_tree = server.proc.tree(), mock.tree()
    each0 = {pid: cpu_seconds([pid]) for pid in tree}
    mock0, t0 = cpu_seconds(mock_tree), time.monotonic()
    busy0 = machine_busy_seconds()
    result, wrk_cpu = run_wrk(env, server, case, args.duration)
    wall = time.monotonic() - t0
    busy = machine_busy_seconds() - busy0
    each = {pid: cpu_seconds([pid]) - each0.get(pid, 0.0) for pid in server.proc.tree()}
    cpu, mock_cpu = sum(each.values()), cpu_seconds(mock_tree) - mock0
    tree = list(each)
    if server.proc is mock:
        mock_cpu = 0.0  # direct: the server is the mock
    n = max(result["requests"], 1)
    lat = result["latency_us"]
    errors = sum(result["errors"].values())
    sample = Sample(
        case=case.id,
        server=server.name,
        concurrency=case.concurrency,
        round=round_,
        requests=result["requests"],
        errors=errors,
        rps=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        cpu_ms_per_req=cpu * 1000 / n,
        cpu_util=cpu / wall,
        rss_mb=rss_mb(tree),
        mock_cpu_util=mock_cpu / wall,
        mock_cpu_us_per_req=mock_cpu * 1e6 / n,
        wrk_cpu_util=wrk_cpu / wall,
        other_cpu_util=max(busy - cpu - mock_cpu - wrk_cpu, 0.0) / wall,
        proc_cpu_util=sorted((c / wall for c in each.values() if c / wall >= 0.01), reverse=True),
    )
    print(
        f"  r{round_ + 1} {case.id:<20} {server.name:<13} {sample.rps:8.0f} req/s  p50 {sample.p50_ms:7.2f} ms"
        f"  p99 {sample.p99_ms:7.2f} ms  cpu {sample.cpu_ms_per_req:6.3f} ms/req"
        f" ({sample.cpu_util:4.0%})  rss {sample.rss_mb:5.0f} MB  mock {sample.mock_cpu_util:4.0%}"
        f"  wrk {sample.wrk_cpu_util:4.0%}  other {sample.other_cpu_util:4.0%}"
        + (f"  ERRORS {errors}" if errors else ""),
        flush=True,
    )
    return sample


def combine(samples: list[Sample]) -> dict:
    """Median of each metric over rounds (one round: the sample itself), and the spread
    (min, max) of requests/s and CPU per request."""
    first = samples[0]
    out = {"case": first.case, "server": first.server, "concurrency": first.concurrency}
    out["rounds"] = len(samples)
    for name in ("rps", "cpu_ms_per_req"):
        out[f"{name}_min"] = min(getattr(s, name) for s in samples)
        out[f"{name}_max"] = max(getattr(s, name) for s in samples)
    split = [s.proc_cpu_util for s in samples if len(s.proc_cpu_util) > 1]
    out["proc_cpu_util"] = (
        [statistics.median(c) for c in zip(*split, strict=False)] if split else []
    )
    out["requests"] = sum(s.requests for s in samples)
    out["errors"] = sum(s.errors for s in samples)
    for name in (
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "cpu_ms_per_req",
        "cpu_util",
        "rss_mb",
        "mock_cpu_util",
        "mock_cpu_us_per_req",
        "wrk_cpu_util",
        "other_cpu_util",
    ):
        out[name] = statistics.median(getattr(s, name) for s in samples)
    return out


@contextlib.contextmanager
def rss_sampler(proc: Proc, interval: float = 0.05) -> Iterator[dict]:
    """Peak resident memory of ``proc``'s tree while the block runs.

    The tree is listed once (a listing reads every process's ``/proc`` entry: every
    50 ms, on the load core, that would take CPU from the load generator and the mock).
    """
    state = {"peak_mb": 0.0, "samples": 0}
    stop = threading.Event()
    pids = proc.tree()

    def loop() -> None:
        while not stop.is_set():
            state["peak_mb"] = max(state["peak_mb"], rss_mb(pids))
            state["samples"] += 1
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join()


def big_upstream(env: Env, server: Server, n: int = BIG_TARGETS, times: int = 3) -> dict:
    """Create (and delete) an upstream of ``n`` targets on distinct origins through the
    admin API, ``times`` times, while one client sends proxied requests back to back:
    the proxy's stall is the slowest of its requests that overlapped a creation, less
    their median before (issue 9: creating targets must not block the proxy)."""
    admin = server.proc.admin_port
    assert admin is not None
    status, _, raw = http_call(admin, "GET", "/api/v1/gateways?limit=1000")
    gateway_id = next(g["id"] for g in json.loads(raw)["items"] if g["name"] == "bench-plain")
    body = mock_bodies.client_request(OPENAI_MODEL, stream=False)
    headers = {"Content-Type": "application/json", "X-Api-Key": gateway_key("plain")}
    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()

    def probe() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while not stop.is_set():
            began = time.monotonic()
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            samples.append((began, time.monotonic(), resp.status))
        conn.close()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    time.sleep(1.0)
    windows, created_ms, rss = [], [], []
    upstream = {
        "name": "bench-big",
        "algorithm": "round-robin",
        "targets": [
            {
                "provider": "openai",
                "base_url": f"http://127.0.{i // 250}.{i % 250 + 2}:{env.port_a}",
                "credentials": {"header_value": "sk-bench"},
            }
            for i in range(n)
        ],
    }
    path = f"/api/v1/gateways/{gateway_id}/upstreams"
    before_mb = server.proc.rss()
    for _ in range(times):
        began = time.monotonic()
        status, _, raw = http_call(
            admin, "POST", path, json.dumps(upstream).encode(), {"Content-Type": "application/json"}
        )
        ended = time.monotonic()
        if status != 201:
            stop.set()
            raise SystemExit(f"creating {n} targets: {status} {raw[:300]!r}")
        windows.append((began, ended))
        created_ms.append((ended - began) * 1000)
        time.sleep(0.5)
        rss.append(server.proc.rss())
        upstream_id = json.loads(raw)["id"]
        http_call(admin, "DELETE", f"{path}/{upstream_id}")
        time.sleep(0.5)
    stop.set()
    thread.join()
    after_mb = server.proc.rss()
    quiet = [
        end - start
        for start, end, _ in samples
        if all(end < w0 or start > w1 + 0.2 for w0, w1 in windows)
    ]
    base = statistics.median(quiet) * 1000 if quiet else 0.0
    stalls = []
    for w0, w1 in windows:
        during = [end - start for start, end, _ in samples if start <= w1 + 0.2 and end >= w0]
        stalls.append(max(0.0, max(during, default=0.0) * 1000 - base))
    errors = sum(1 for *_, code in samples if code != 200)
    return {
        "targets": n,
        "stall_ms": stalls,
        "create_ms": created_ms,
        "probe_p50_ms": base,
        "probes": len(samples),
        "probe_errors": errors,
        "rss_before_mb": before_mb,
        "rss_with_mb": max(rss),
        "rss_after_delete_mb": after_mb,
    }


def slow_streams(env: Env, server: Server, n: int) -> dict:
    case = Case("slow", n, "/slow/v1/chat/completions", "slow", True, False)
    path = server.path(case)
    body = env.bodies["openai-stream"]
    argv = ["taskset", "-c", LOAD_CORE, env.python, str(HERE / "slow_streams.py")]
    argv += ["--url", f"http://127.0.0.1:{server.port}{path}", "--body-file", str(body)]
    argv += ["-n", str(n), "--ramp", str(env.slow_ramp), "--api-key", server.key(case) or ""]
    idle = server.proc.rss()
    cpu0, t0 = server.proc.cpu(), time.monotonic()
    with rss_sampler(server.proc) as rss:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    cpu, wall = server.proc.cpu() - cpu0, time.monotonic() - t0
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise SystemExit(f"slow_streams failed:\n{done.stdout}\n{done.stderr}")
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    result.update(
        server=server.name,
        rss_before_mb=idle,
        rss_peak_mb=rss["peak_mb"],
        rss_after_mb=server.proc.rss(),
        cpu_ms_per_stream=cpu * 1000 / n,
        cpu_util=cpu / wall,
        interval_s=env.slow_sleep,
        ramp_s=env.slow_ramp,
    )
    all_open = result["all_open_at"]
    print(
        f"  {n} slow streams via {server.name:<8}: {result['ok']}/{n} complete, "
        f"{result['max_open']} open at once"
        + (f" (all open at {all_open:.1f} s)" if all_open is not None else "")
        + f", first byte p99 {result.get('first_byte_s', {}).get('p99', 0):.2f} s, "
        f"{result.get('connects_over_1s', 0)} connects ≥ 1 s, "
        f"RSS {idle:.0f} → peak {rss['peak_mb']:.0f} MB, CPU {cpu / wall:.0%}, "
        f"{result['elapsed_s']} s",
        flush=True,
    )
    return result


# --- profile --------------------------------------------------------------------------------


def frame_package(frame: str) -> str:
    """``func (trio/_core/_run.py:12)`` -> ``trio``; stdlib files have no directory."""
    where = frame.rpartition(" (")[2]
    if where.startswith("<attrs generated"):
        return "attrs (generated)"
    if where.startswith("<"):
        return "stdlib"
    return where.split("/", 1)[0] if "/" in where else "stdlib"


#: A Trio thread-cache worker waiting for a job (``lock.acquire(timeout=...)``): idle, but
#: py-spy's idle detection counts it as running (it was 1/3 of a streaming profile's samples).
IDLE_WORKER = "WorkerThread._work (trio/_core/_thread_cache.py"


def profile(env: Env, server: Server, case: Case, args, out_dir: Path) -> dict | None:
    """py-spy (blocking sampling, idle excluded) of ``server`` under ``case``'s load.

    The server is CPU-bound under this load, so a share of the samples is a share of its
    CPU time: multiplied by the CPU per request measured meanwhile, it is µs per request.
    """
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if pyspy is None:
        print("  (no py-spy: `.venv/bin/pip install py-spy` for --profile)")
        return None
    raw = out_dir / f"profile-{server.name}-{case.id}.txt"
    duration = max(int(args.duration), 5)
    argv = ["taskset", "-c", LOAD_CORE, pyspy, "record", "--pid", str(server.proc.pid)]
    argv += ["--duration", str(duration + 1), "--rate", "200", "--format", "raw", "--function"]
    argv += ["--output", str(raw)]
    run_wrk(env, server, case, args.warmup)
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    cpu0 = server.proc.cpu()
    result, _ = run_wrk(env, server, case, duration)
    cpu_per_req_us = (server.proc.cpu() - cpu0) * 1e6 / max(result["requests"], 1)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        print(f"  py-spy failed: {err.decode(errors='replace')[-500:]}")
        return None
    own, cumulative, packages, total = Counter(), Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not re.match(r"^(process|thread) ", f)]
        if not frames or frames[-1].startswith(IDLE_WORKER):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        packages[frame_package(frames[-1])] += n
        for frame in set(frames):
            cumulative[frame] += n
    total = max(total, 1)

    def entries(counter: Counter, k: int) -> list[dict]:
        return [
            {"frame": f, "share": n / total, "us_per_req": n / total * cpu_per_req_us}
            for f, n in counter.most_common(k)
        ]

    summary = {
        "case": case.id,
        "server": server.name,
        "samples": total,
        "rps_while_profiled": result["requests"] / (result["duration_us"] / 1e6),
        "cpu_us_per_req": cpu_per_req_us,
        "raw": rel(raw),
        "packages": entries(packages, 20),
        "own": entries(own, 25),
        "cumulative": entries(cumulative, 25),
    }
    text = [
        f"py-spy, {server.name} at {case.id}: {total} samples (idle excluded), "
        f"{summary['rps_while_profiled']:.0f} req/s, {cpu_per_req_us:.0f} µs CPU/request",
        "",
        "share  µs/req  (own time by package)",
    ]
    text += [f"{e['share']:6.1%} {e['us_per_req']:6.0f}  {e['frame']}" for e in summary["packages"]]
    text += ["", "share  µs/req  (own time, top 25 functions)"]
    text += [f"{e['share']:6.1%} {e['us_per_req']:6.0f}  {e['frame']}" for e in summary["own"]]
    text += ["", "share  µs/req  (cumulative time, top 25 functions)"]
    text += [
        f"{e['share']:6.1%} {e['us_per_req']:6.0f}  {e['frame']}" for e in summary["cumulative"]
    ]
    top = out_dir / f"profile-{server.name}-{case.id}-top.txt"
    top.write_text("\n".join(text) + "\n")
    summary["top"] = rel(top)
    print("\n".join("  " + t for t in text), flush=True)
    return summary


def package_diff(floor: dict, gateway: dict, labels: str = "floor → gateway") -> str:
    """Own CPU time per request by package, the second profile against the first (µs)."""
    f = {e["frame"]: e["us_per_req"] for e in floor["packages"]}
    g = {e["frame"]: e["us_per_req"] for e in gateway["packages"]}
    names = sorted(set(f) | set(g), key=lambda n: -(g.get(n, 0) - f.get(n, 0)))
    lines = [f"  own µs/request by package: {labels} (difference)"]
    lines += [
        f"  {n:<20} {f.get(n, 0):6.0f} → {g.get(n, 0):6.0f}  ({g.get(n, 0) - f.get(n, 0):+.0f})"
        for n in names
    ]
    total_f, total_g = floor["cpu_us_per_req"], gateway["cpu_us_per_req"]
    lines.append(f"  {'total':<20} {total_f:6.0f} → {total_g:6.0f}  ({total_g - total_f:+.0f})")
    return "\n".join(lines)


# --- report ---------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        release = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
        os_name = release.get("PRETTY_NAME", os_name).strip('"') + f", kernel {platform.release()}"

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError:
            return "?"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if (done.stdout + done.stderr).strip()
            else "?"
        )

    from importlib.metadata import version as pkg

    packages = {}
    for name in ("trio-gateway", "trio", "hypercorn", "quart", "quart-trio", "httpx2", "h11"):
        with contextlib.suppress(Exception):
            packages[name] = pkg(name)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "trio_gateway"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "os": os_name,
        "python": platform.python_version(),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "packages": packages,
        "commit": commit + (" + uncommitted changes in trio_gateway/" if dirty else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_line() -> str:
    extra = " ".join(sys.argv[1:])
    if os.environ.get("MAKELEVEL"):
        return "make bench" + (f" BENCH_ARGS='{extra}'" if extra else "")
    python = (
        os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    )
    return f"{python} {os.path.relpath(sys.argv[0], ROOT)}" + (f" {extra}" if extra else "")


def find(rows: list[dict], case: str, server: str) -> dict | None:
    return next((r for r in rows if r["case"] == case and r["server"] == server), None)


#: One round's samples by (case id, server name).
Round = dict[tuple[str, str], "Sample"]


@dataclass(frozen=True)
class Check:
    """A target: a value computed within each round, judged by its median over rounds."""

    issue: str
    name: str
    #: ``None``: shown for information, judged against nothing.
    limit: float | None
    at_least: bool
    #: The value in one round, from the samples it names (``None``: not measured).
    value: Callable[[Round], float | None]
    #: What the value is made of, from the medians of the rows.
    detail: Callable[[list[dict]], str]
    #: The (case, server) pairs the value uses: their noisy samples are counted.
    uses: tuple[tuple[str, str], ...] = ()

    def passes(self, value: float) -> bool:
        assert self.limit is not None
        return value >= self.limit if self.at_least else value <= self.limit


def _metric(r: Round, case: str, server: str, name: str) -> float | None:
    sample = r.get((case, server))
    return None if sample is None else getattr(sample, name)


def _ratio(case: str, num: str, den: str, metric: str) -> Callable[[Round], float | None]:
    """``num``'s ``metric`` over ``den``'s, both in ``case``, within one round."""

    def value(r: Round) -> float | None:
        a, b = _metric(r, case, num, metric), _metric(r, case, den, metric)
        return None if a is None or not b else a / b

    return value


def _extra_cpu(
    issue: str,
    case: str,
    name: str,
    limit: float,
    more: tuple[str, str],
    base: tuple[str, str],
) -> Check:
    """What server ``more`` spends beyond server ``base`` per request in ``case``, as a
    share of ``base``'s CPU (each a server name and how the detail calls it)."""
    server, base_server = more[0], base[0]

    def detail(rows: list[dict]) -> str:
        found = _rows(rows, case, server, base_server)
        if found is None:
            return ""
        m, b = found
        return (
            f"{more[1]} {m['cpu_ms_per_req'] * 1000:.0f} µs/req, "
            f"{base[1]} {b['cpu_ms_per_req'] * 1000:.0f} µs/req"
        )

    ratio = _ratio(case, server, base_server, "cpu_ms_per_req")
    return Check(
        issue,
        f"{case}: {name}",
        limit,
        False,
        lambda r: None if (v := ratio(r)) is None else v - 1,
        detail,
        ((case, server), (case, base_server)),
    )


def _rows(rows: list[dict], case: str, *servers: str) -> list[dict] | None:
    found = [find(rows, case, s) for s in servers]
    return None if any(f is None for f in found) else found  # type: ignore[return-value]


def make_checks() -> list[Check]:
    """Every target, issue 17's first. How each is measured: docs/benchmarks.md."""
    checks: list[Check] = []

    def rps_detail(case: str, a: str, b: str) -> Callable[[list[dict]], str]:
        def detail(rows: list[dict]) -> str:
            found = _rows(rows, case, a, b)
            if found is None:
                return ""
            x, y = found
            return f"{a} {x['rps']:.0f}, {b} {y['rps']:.0f} req/s (medians)"

        return detail

    c32 = "nonstream-c32"
    checks.append(
        Check(
            "17",
            "non-streaming c=32, one worker: gateway req/s ÷ floor's",
            RPS_MIN,
            True,
            _ratio(c32, "gateway", "floor", "rps"),
            rps_detail(c32, "gateway", "floor"),
            ((c32, "gateway"), (c32, "floor")),
        )
    )
    checks.append(
        Check(
            "17 (stretch)",
            "non-streaming c=32, one worker: gateway req/s ÷ floor's",
            RPS_STRETCH,
            True,
            _ratio(c32, "gateway", "floor", "rps"),
            rps_detail(c32, "gateway", "floor"),
            ((c32, "gateway"), (c32, "floor")),
        )
    )

    def growth(r: Round) -> float | None:
        a = _metric(r, c32, "gateway", "cpu_ms_per_req")
        b = _metric(r, "nonstream-c1", "gateway", "cpu_ms_per_req")
        return None if a is None or not b else a / b

    def growth_detail(rows: list[dict]) -> str:
        a, b = find(rows, c32, "gateway"), find(rows, "nonstream-c1", "gateway")
        if a is None or b is None:
            return ""
        return (
            f"gateway {a['cpu_ms_per_req'] * 1000:.0f} µs/req at c=32, "
            f"{b['cpu_ms_per_req'] * 1000:.0f} at c=1"
        )

    checks.append(
        Check(
            "17",
            "non-streaming: gateway CPU per request at c=32 ÷ at c=1",
            CONCURRENCY_CPU_MAX,
            False,
            growth,
            growth_detail,
            ((c32, "gateway"), ("nonstream-c1", "gateway")),
        )
    )
    for c in (1, 32):
        case = f"translate-stream-c{c}"

        def translated_detail(rows: list[dict], case: str = case) -> str:
            found = _rows(rows, case, "gateway", "floor")
            if found is None:
                return ""
            g, f = found
            return (
                f"CPU per stream: gateway {g['cpu_ms_per_req']:.3f} ms (translating), floor "
                f"{f['cpu_ms_per_req']:.3f} ms (relaying the same Anthropic stream); "
                f"req/s ratio {g['rps'] / f['rps']:.2f}"
            )

        checks.append(
            Check(
                "17",
                f"translated streaming c={c}: streams per CPU-second, gateway ÷ floor's",
                TRANSLATED_MIN,
                True,
                # Streams per CPU-second is the inverse of CPU per stream.
                _ratio(case, "floor", "gateway", "cpu_ms_per_req"),
                translated_detail,
                ((case, "gateway"), (case, "floor")),
            )
        )

    def workers_detail(server: str, one: str) -> Callable[[list[dict]], str]:
        def detail(rows: list[dict]) -> str:
            found = _rows(rows, c32, server, one)
            if found is None:
                return ""
            two, single = found
            load = two["wrk_cpu_util"] + two["mock_cpu_util"]
            split = "+".join(f"{u:.0%}" for u in two["proc_cpu_util"]) or "?"
            return (
                f"{server} {two['rps']:.0f}, {one} {single['rps']:.0f} req/s; processes' CPU "
                f"{split} of a core; wrk + mock {load:.0%} of a core (ceiling ≈ "
                f"{2 - load:.2f})"
            )

        return detail

    checks.append(
        Check(
            "17",
            "`--workers 2` on 2 cores ÷ one worker, non-streaming c=32, req/s",
            WORKERS_MIN,
            True,
            _ratio(c32, "gateway-2w", "gateway", "rps"),
            workers_detail("gateway-2w", "gateway"),
            ((c32, "gateway-2w"), (c32, "gateway")),
        )
    )
    checks.append(
        Check(
            "info",
            "the floor's two workers ÷ its one, non-streaming c=32, req/s (the stack's own)",
            None,
            True,
            _ratio(c32, "floor-2w", "floor", "rps"),
            workers_detail("floor-2w", "floor"),
            ((c32, "floor-2w"), (c32, "floor")),
        )
    )

    # Issue 6: what still says something.
    def added_p50(r: Round) -> float | None:
        d = _metric(r, "nonstream-c1", "direct", "p50_ms")
        f = _metric(r, "nonstream-c1", "floor", "p50_ms")
        g = _metric(r, "nonstream-c1", "gateway", "p50_ms")
        if d is None or f is None or g is None or f <= d:
            return None
        return (g - d) / (f - d)

    def added_detail(rows: list[dict]) -> str:
        found = _rows(rows, "nonstream-c1", "direct", "floor", "gateway")
        if found is None:
            return ""
        d, f, g = found
        return (
            f"gateway +{g['p50_ms'] - d['p50_ms']:.3f} ms, floor +{f['p50_ms'] - d['p50_ms']:.3f} "
            f"ms over direct {d['p50_ms']:.3f} ms"
        )

    checks.append(
        Check(
            "6",
            "non-streaming c=1: gateway's added p50 ÷ floor's",
            ADDED_P50_MAX,
            False,
            added_p50,
            added_detail,
            tuple(("nonstream-c1", s) for s in ("direct", "floor", "gateway")),
        )
    )
    for c in (1, 32):
        case = f"stream-c{c}"

        def stream_detail(rows: list[dict], case: str = case) -> str:
            found = _rows(rows, case, "gateway", "floor")
            if found is None:
                return ""
            g, f = found
            return f"gateway {g['cpu_ms_per_req']:.3f}, floor {f['cpu_ms_per_req']:.3f} ms"

        checks.append(
            Check(
                "6",
                f"streaming c={c}: gateway CPU per stream ÷ floor's",
                STREAM_CPU_MAX,
                False,
                _ratio(case, "gateway", "floor", "cpu_ms_per_req"),
                stream_detail,
                ((case, "gateway"), (case, "floor")),
            )
        )
    for case in QUIET_CASES:
        checks.append(
            _extra_cpu(
                "11",
                case,
                "metrics + access log, share of the gateway's CPU per request",
                TELEMETRY_COST_MAX,
                ("gateway", "gateway"),
                ("gateway-quiet", "with --metrics off --access-log off"),
            )
        )
    for case in LIMITED_CASES:
        checks.append(
            _extra_cpu(
                "14",
                case,
                "a key with limits, extra share of the CPU per request",
                LIMITED_COST_MAX,
                ("gateway-limited", "key with limits"),
                ("gateway", "key without"),
            )
        )
    return checks


def judge(
    name: str,
    issue: str,
    values: list[float],
    limit: float | None,
    at_least: bool,
    detail: str,
    noisy: int = 0,
) -> dict:
    """Median and spread of ``values``; PASS/MISS by the median; conclusive or not."""
    median = statistics.median(values)
    out = {
        "issue": issue,
        "target": name,
        "values": values,
        "value": median,
        "min": min(values),
        "max": max(values),
        "limit": limit,
        "at_least": at_least,
        "detail": detail,
        "noisy_rounds": noisy,
    }
    if limit is None:
        out.update(result="info", conclusive="")
        return out

    def ok(v: float) -> bool:
        return v >= limit if at_least else v <= limit

    passing = sum(ok(v) for v in values)
    out["result"] = "PASS" if ok(median) else "MISS"
    if 0 < passing < len(values):
        out["conclusive"] = "no: the rounds straddle the limit"
    elif len(values) < ROUNDS:
        out["conclusive"] = f"no: {len(values)} round(s)"
    else:
        out["conclusive"] = "yes"
    if noisy:
        out["conclusive"] += f" ({noisy} noisy round(s))"
    return out


def targets(
    rows: list[dict],
    rounds: list[Round],
    slow: list[dict],
    startup: dict[str, list[float]],
    big: dict | None = None,
) -> list[dict]:
    results = []
    for check in make_checks():
        values, noisy = [], 0
        for r in rounds:
            value = check.value(r)
            if value is None:
                continue
            values.append(value)
            used = [r[u] for u in check.uses if u in r]
            noisy += any(s.other_cpu_util > NOISY for s in used)
        if values:
            results.append(
                judge(
                    check.name,
                    check.issue,
                    values,
                    check.limit,
                    check.at_least,
                    check.detail(rows),
                    noisy,
                )
            )
    g_slow = next((s for s in slow if s["server"] == "gateway"), None)
    if g_slow:
        complete = g_slow["ok"] == g_slow["n"] and g_slow["max_open"] == g_slow["n"]
        out = judge(
            f"{g_slow['n']} slow streams: all complete and open at once, peak RSS (MB)",
            "17",
            [g_slow["rss_peak_mb"] if complete else float("inf")],
            SLOW_RSS_MAX_MB,
            False,
            f"{g_slow['ok']}/{g_slow['n']} complete, {g_slow['max_open']} open at once, "
            f"peak {g_slow['rss_peak_mb']:.0f} MB",
        )
        out["conclusive"] = "one run"
        results.append(out)
    if big:
        out = judge(
            f"creating an upstream of {big['targets']} targets: the proxy's stall (ms)",
            "9",
            big["stall_ms"],
            BIG_STALL_MAX_MS,
            False,
            "creation took " + ", ".join(f"{v:.0f}" for v in big["create_ms"]) + " ms; "
            f"RSS {big['rss_before_mb']:.0f} -> {big['rss_with_mb']:.0f} MB, "
            f"{big['rss_after_delete_mb']:.0f} MB once deleted",
        )
        results.append(out)
    if startup.get("gateway"):
        results.append(
            judge(
                "start to ready (s)",
                "17",
                startup["gateway"],
                READY_MAX_S,
                False,
                "runs: " + ", ".join(f"{t:.2f}" for t in startup["gateway"]),
            )
        )
    return results


SERVER_ORDER = {
    "direct": 0,
    "floor": 1,
    "gateway": 2,
    "gateway-quiet": 3,
    "gateway-limited": 4,
    "floor-2w": 5,
    "gateway-2w": 6,
}


def _fmt(value: float) -> str:
    return "∞" if value == float("inf") else f"{value:.2f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Run of {m['date']}, commit {m['commit'] or '?'}.",
        "",
        f"* Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['os']}.",
        f"* Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + f"; {m['nginx']}; {m['wrk'].split(' [')[0]}.",
        f"* Command: `{report['command']}` ({report['settings']}).",
        "",
        "### Targets",
        "",
        "Each value is computed within each round; *median* and *rounds* are over the "
        "rounds. *Conclusive*: **no** when some rounds meet the limit and others miss it "
        "(the median then decides nothing: rerun on a quiet machine); *noisy*: rounds in "
        "which another process used more than "
        f"{NOISY:.0%} of a core during one of the measurements compared.",
        "",
        "| Issue | Target | Median | Rounds (min-max) | Limit | Result | Conclusive | Detail |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for c in report["targets"]:
        limit = "" if c["limit"] is None else f"{'≥' if c['at_least'] else '≤'} {c['limit']:g}"
        spread = "" if len(c["values"]) < 2 else f"{_fmt(c['min'])}-{_fmt(c['max'])}"
        result = c["result"] if c["result"] == "info" else f"**{c['result']}**"
        lines.append(
            f"| {c['issue']} | {c['target']} | {_fmt(c['value'])} | {spread} | {limit} | "
            f"{result} | {c['conclusive']} | {c['detail']} |"
        )
    lines += [
        "",
        "### Requests",
        "",
        "Medians over the rounds; req/s also as min-max. CPU is the server's (for `direct`: "
        "nginx's) per request and as a share of one core (several processes: each one's). "
        "The mock's and wrk's CPU show that neither was the bottleneck; *other* is everything "
        "else the machine ran meanwhile (a noisy neighbour shows there).",
        "",
        "| Case | Conc. | Server | req/s | req/s min-max | p50 ms | p99 ms | CPU ms/req | "
        "CPU % core | RSS MB | mock CPU % | wrk CPU % | other CPU % | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(
        report["rows"],
        key=lambda r: (report["case_order"].index(r["case"]), SERVER_ORDER.get(r["server"], 9)),
    )
    labels = report["case_labels"]
    for r in rows:
        util = f"{r['cpu_util']:.0%}"
        if len(r.get("proc_cpu_util") or []) > 1:
            util += " (" + "+".join(f"{u:.0%}" for u in r["proc_cpu_util"]) + ")"
        lines.append(
            f"| {labels[r['case']]} | {r['concurrency']} | {r['server']} | {r['rps']:.0f} | "
            f"{r['rps_min']:.0f}-{r['rps_max']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_ms_per_req']:.3f} | "
            f"{util} | {r['rss_mb']:.0f} | "
            + ("(server)" if r["server"] == "direct" else f"{r['mock_cpu_util']:.0%}")
            + f" | {r['wrk_cpu_util']:.0%} | {r['other_cpu_util']:.0%} | {r['errors']} |"
        )
    if report["slow"]:
        first = report["slow"][0]
        lines += [
            "",
            f"### {first['n']} slow streams open at once",
            "",
            f"Each stream: the 23 events of the streaming case, {first['interval_s']:g} s apart "
            f"(~{22 * first['interval_s']:.0f} s); connections opened evenly over "
            f"{first['ramp_s']:g} s, one stream per connection; a stream is open from its first "
            "byte to its end; RSS sampled every 50 ms. *First byte*: from the start of the "
            "connection; *connects ≥ 1 s*: connections that waited for a SYN retransmit "
            "(a full listen queue); *CPU %*: the server's, over the run.",
            "",
            "| Server | complete | most open at once | all open at s | first byte p50 / p99 s "
            "| connects ≥ 1 s | RSS before MB | peak RSS MB | CPU ms/stream | CPU % | wall s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in report["slow"]:
            fb = s.get("first_byte_s") or {}
            at = "-" if s["all_open_at"] is None else f"{s['all_open_at']:.1f}"
            lines.append(
                f"| {s['server']} | {s['ok']}/{s['n']} | {s['max_open']} | {at} | "
                f"{fb.get('p50', 0):.2f} / {fb.get('p99', 0):.2f} | "
                f"{s.get('connects_over_1s', 0)} | {s['rss_before_mb']:.0f} | "
                f"{s['rss_peak_mb']:.0f} | {s['cpu_ms_per_stream']:.2f} | "
                f"{s['cpu_util']:.0%} | {s['elapsed_s']:.1f} |"
            )
    if report["startup"]:
        lines += [
            "",
            "### Start to ready",
            "",
            "From spawning the process to the first `200` from `/readyz` on the proxy "
            "listener; bytecode cached. *first start*: the untimed one before them (bytecode "
            "compiled, the store created).",
            "",
            "| Process | first start s | runs (s) | median s |",
            "|---|---:|---|---:|",
        ]
        first_starts = report.get("first_start") or {}
        for name, times in report["startup"].items():
            first = first_starts.get(name)
            lines.append(
                f"| {name} | {'-' if first is None else f'{first:.2f}'} | "
                f"{', '.join(f'{t:.2f}' for t in times)} | {statistics.median(times):.2f} |"
            )
    by_case: dict[str, dict[str, dict]] = {}
    for p in report.get("profile") or []:
        by_case.setdefault(p["case"], {})[p["server"]] = p
    for case, profiles in by_case.items():
        if "floor" not in profiles or "gateway" not in profiles:
            continue
        f, g = profiles["floor"], profiles["gateway"]
        fp = {e["frame"]: e["us_per_req"] for e in f["packages"]}
        gp = {e["frame"]: e["us_per_req"] for e in g["packages"]}
        names = sorted(set(fp) | set(gp), key=lambda n: -(gp.get(n, 0) - fp.get(n, 0)))
        lines += [
            "",
            f"### Where the CPU goes ({case}, py-spy)",
            "",
            f"Own CPU time per request by package. Top functions: `{f['top']}`, `{g['top']}`.",
            "",
            "| Package | floor µs/req | gateway µs/req | difference |",
            "|---|---:|---:|---:|",
        ]
        for n in names:
            a, b = fp.get(n, 0.0), gp.get(n, 0.0)
            if max(a, b) >= 2:
                lines.append(f"| {n} | {a:.0f} | {b:.0f} | {b - a:+.0f} |")
        a, b = f["cpu_us_per_req"], g["cpu_us_per_req"]
        lines.append(f"| **total** | {a:.0f} | {b:.0f} | {b - a:+.0f} |")
    if report["notes"]:
        lines += ["", "### Notes", ""] + [f"* {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def write_doc(path: Path, results: str) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n## Results\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{start}\n{results}{end}{tail}")


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up before each")
    parser.add_argument(
        "--repeat",
        type=int,
        default=ROUNDS,
        help=f"interleaved rounds (default {ROUNDS}); medians and min-max reported",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated case ids (e.g. nonstream-c32) and extras ("
        + ", ".join(EXTRAS)
        + "): only these",
    )
    parser.add_argument(
        "--servers",
        default="",
        help="comma-separated servers to measure (direct, floor, gateway, gateway-quiet, "
        "gateway-limited, floor-2w, gateway-2w); default: every one each case has",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="nonstream-c32",
        default=None,
        metavar="CASES",
        help="py-spy the floor and the gateway (default at nonstream-c32; or comma-separated "
        "case ids, e.g. nonstream-c1,nonstream-c32)",
    )
    parser.add_argument("--no-extras", action="store_true", help="skip slow streams, start-up")
    parser.add_argument("--startups", type=int, default=5, help="start-to-ready runs")
    parser.add_argument(
        "--slow-interval",
        type=float,
        default=SLOW_SLEEP_S,
        help=f"seconds between a slow stream's events (default {SLOW_SLEEP_S:g})",
    )
    parser.add_argument(
        "--slow-ramp",
        type=float,
        default=SLOW_RAMP_S,
        help=f"seconds over which the slow streams are opened (default {SLOW_RAMP_S:g})",
    )
    parser.add_argument(
        "--store",
        choices=["sqlite", "memory"],
        default="sqlite",
        help="the one-worker gateways' store (default sqlite, as `trio-gateway serve`)",
    )
    parser.add_argument(
        "--ref",
        help="measure the gateway of this commit (git archive into a temporary directory) "
        "instead of the working tree",
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the doc's results")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args()

    all_cases = make_cases()
    wanted = {w for w in args.only.split(",") if w}
    if unknown := wanted - {c.id for c in all_cases} - set(EXTRAS):
        sys.exit(
            f"--only: unknown {', '.join(sorted(unknown))}; cases: "
            + ", ".join(c.id for c in all_cases)
            + "; extras: "
            + ", ".join(EXTRAS)
        )
    cases = [c for c in all_cases if not wanted or c.id in wanted]
    extras = set() if args.no_extras else {e for e in EXTRAS if not wanted or e in wanted}
    profiled_ids = [c for c in (args.profile or "").split(",") if c]
    if bad := set(profiled_ids) - {c.id for c in all_cases}:
        sys.exit(f"--profile: unknown case(s) {', '.join(sorted(bad))}")
    only_servers = {s for s in args.servers.split(",") if s}
    if bad := only_servers - set(SERVER_ORDER):
        sys.exit(f"--servers: unknown {', '.join(sorted(bad))}; known: {', '.join(SERVER_ORDER)}")
    if args.repeat < 1:
        sys.exit("--repeat: at least 1")

    echo, gateway_bin = check_prerequisites()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 16384), hard), hard))
    out_dir = args.json.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4 * SLOW_STREAMS:
        notes.append(f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} is low")

    info = machine()  # before the run: the working tree may change while it runs
    with tempfile.TemporaryDirectory(prefix="trio-gateway-bench-") as tmp:
        env = Env(tmp=Path(tmp), python=sys.executable, gateway_bin=gateway_bin, echo_module=echo)
        env.store, env.slow_sleep, env.slow_ramp = args.store, args.slow_interval, args.slow_ramp
        if args.ref:
            env.gateway_src, ref_commit = export_ref(args.ref, Path(tmp) / "src")
            where = subprocess.run(
                [sys.executable, "-c", "import trio_gateway; print(trio_gateway.__file__)"],
                capture_output=True,
                text=True,
                env=env.gateway_env,
                cwd=tmp,  # as for the console script: the working tree is not on sys.path
                check=True,
            ).stdout.strip()
            if not where.startswith(str(env.gateway_src)):
                sys.exit(f"--ref: the gateway would import {where}, not the exported copy")
            print(f"Gateway from commit {ref_commit} ({args.ref}), exported to {where}")
            info["commit"] = f"{ref_commit} (`--ref {args.ref}`: trio_gateway/ as committed)"
        write_bodies(env)
        samples: dict[tuple[str, str], list[Sample]] = {}
        rounds: list[Round] = []
        profiled: list[dict] = []
        slow: list[dict] = []
        big: dict | None = None
        startup: dict[str, list[float]] = {}
        first_start: dict[str, float] = {}
        try:
            print("Starting the mock (nginx)…", flush=True)
            mock = start_mock(env)
            servers = start_servers(env, mock, cases, only_servers, profiled_ids, extras, notes)
            blocks = schedule(cases, lambda case: group(case, servers))
            pairs = [pair for block in blocks for pair in block]
            for case, server in pairs:
                validate(env, server, case)
            print(
                f"All {len(pairs)} response shapes check out. Measuring {len(pairs)} pairs in "
                f"{args.repeat} interleaved round(s) ({args.warmup:g} s warm-up + "
                f"{args.duration:g} s each, ~{len(pairs) * args.repeat * (args.warmup + args.duration + 0.5) / 60:.0f} min):",
                flush=True,
            )
            for round_ in range(args.repeat):
                this: Round = {}
                for block in blocks:
                    for case, server in block if round_ % 2 == 0 else reversed(block):
                        s = measure(env, mock, server, case, args, round_)
                        samples.setdefault((case.id, server.name), []).append(s)
                        this[(case.id, server.name)] = s
                rounds.append(this)
            rows = [combine(v) for v in samples.values()]

            for case_id in profiled_ids:
                case = next(c for c in all_cases if c.id == case_id)
                found = []
                for name in ("floor", "gateway"):
                    server = servers[name]
                    validate(env, server, case)
                    print(f"Profiling {name} at {case.id} with py-spy…", flush=True)
                    if (summary := profile(env, server, case, args, out_dir)) is not None:
                        found.append(summary)
                if len(found) == 2:
                    print(package_diff(*found), flush=True)
                profiled += found

            if "big-upstream" in extras and "gateway" in servers:
                print(f"An upstream of {BIG_TARGETS} targets created under load:", flush=True)
                big = big_upstream(env, servers["gateway"])
                print(
                    "  proxy stall per creation (ms): "
                    + ", ".join(f"{v:.0f}" for v in big["stall_ms"])
                    + "; creation (ms): "
                    + ", ".join(f"{v:.0f}" for v in big["create_ms"])
                    + f"; RSS {big['rss_before_mb']:.0f} -> {big['rss_with_mb']:.0f} MB, "
                    f"{big['rss_after_delete_mb']:.0f} MB once deleted",
                    flush=True,
                )
            if "slow-streams" in extras:
                print(f"{SLOW_STREAMS} slow streams at once:", flush=True)
                for name in ("floor", "gateway"):
                    slow.append(slow_streams(env, servers[name], SLOW_STREAMS))
            for server in servers.values():
                if server.proc is not mock:
                    server.proc.stop()

            if "startup" in extras:
                print(
                    f"Start to ready ({args.startups} runs each, after one untimed start):",
                    flush=True,
                )
                # A cache of its own: the first start compiles, as a fresh install's does.
                env.pycache = "pycache-startup"
                data = env.tmp / "data-startup"
                proc, _, first_start["gateway"] = start_gateway(
                    env, name="gateway-first", data=data
                )
                proc.stop()
                startup["gateway"] = []
                for i in range(args.startups):
                    proc, _, seconds = start_gateway(env, name=f"gateway-start{i}", data=data)
                    proc.stop()
                    startup["gateway"].append(seconds)
                startup["floor"] = []
                env.pycache = "pycache-startup-floor"
                for i in range(4):
                    started = time.monotonic()
                    proc, _ = start_floor(env)
                    seconds = time.monotonic() - started
                    proc.stop()
                    if i == 0:
                        first_start["floor"] = seconds
                    else:
                        startup["floor"].append(seconds)
                for name, times in startup.items():
                    print(
                        f"  {name}: first {first_start[name]:.2f} s, then "
                        + ", ".join(f"{t:.2f} s" for t in times),
                        flush=True,
                    )
        finally:
            for proc in reversed(list(RUNNING)):
                proc.stop()

    checks = targets(rows, rounds, slow, startup, big)
    busy = [s for v in samples.values() for s in v if s.other_cpu_util > NOISY]
    if busy:
        notes.append(
            f"{len(busy)} of {sum(len(v) for v in samples.values())} measurements ran while "
            f"other processes used more than {NOISY:.0%} of a core (the *other* column): "
            "compare ratios with care, or rerun on a quiet machine."
        )
    report = {
        "machine": info,
        "command": command_line(),
        "settings": f"{args.warmup:g} s warm-up + {args.duration:g} s per measurement, "
        f"{args.repeat} interleaved round(s), medians; wrk -t1; one-worker servers on core "
        f"{SERVER_CORE}, two workers on cores {ALL_CORES}, nginx and wrk on core {LOAD_CORE}; "
        f"the gateways on the {args.store} store",
        "case_order": [c.id for c in make_cases()],
        "case_labels": {c.id: c.label for c in make_cases()},
        "rows": rows,
        "samples": [asdict(s) for v in samples.values() for s in v],
        "slow": slow,
        "big_upstream": big,
        "startup": startup,
        "first_start": first_start,
        "targets": checks,
        "profile": profiled,
        "notes": notes,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    if not args.no_doc:
        write_doc(args.doc, table)
    print()
    print(table)
    print("Targets (median over rounds; min-max):")
    for c in checks:
        spread = f" [{_fmt(c['min'])}-{_fmt(c['max'])}]" if len(c["values"]) > 1 else ""
        limit = "" if c["limit"] is None else f" (limit {c['limit']:g})"
        print(
            f"  {c['result']:<4}  {c['target']}: {_fmt(c['value'])}{spread}{limit}"
            + (f"; conclusive: {c['conclusive']}" if c["conclusive"] else "")
            + f"; {c['detail']}"
        )
    print(f"\nRaw numbers: {rel(args.json)}")
    return 0


def start_servers(
    env: Env,
    mock: Proc,
    cases: list[Case],
    only: set[str],
    profiled: list[str],
    extras: set[str],
    notes: list[str],
) -> dict[str, Server]:
    """Every server some measurement needs, started once and kept for the whole run."""
    wanted = {"direct"} if any(c.id in DIRECT_CASES for c in cases) else set()
    wanted |= {"floor", "gateway"}
    if any(c.id in QUIET_CASES for c in cases):
        wanted.add("gateway-quiet")
    if any(c.id in LIMITED_CASES for c in cases):
        wanted.add("gateway-limited")
    if any(c.id in WORKER_CASES for c in cases):
        wanted |= {"floor-2w", "gateway-2w"}
    if only:
        wanted &= only
    if profiled or "slow-streams" in extras:
        wanted |= {"floor", "gateway"}
    servers: dict[str, Server] = {}
    if "direct" in wanted:
        servers["direct"] = Server("direct", mock, env.port_a)
    print(f"Starting {', '.join(n for n in SERVER_ORDER if n in wanted)}…", flush=True)
    if "floor" in wanted:
        servers["floor"] = Server("floor", *start_floor(env))
    if "gateway" in wanted:
        proc, port, _ = start_gateway(env)
        servers["gateway"] = Server("gateway", proc, port)
    if "gateway-limited" in wanted and "gateway" in servers:
        # The gateway's own process, called with its limited key.
        servers["gateway-limited"] = Server(
            "gateway-limited", servers["gateway"].proc, servers["gateway"].port
        )
    if "gateway-quiet" in wanted:
        if gateway_quiet_flags(env):
            proc, port, _ = start_gateway(env, name="gateway-quiet", extra=QUIET_FLAGS)
            servers["gateway-quiet"] = Server("gateway-quiet", proc, port)
        else:
            notes.append(
                "`trio-gateway serve` has no `--metrics`/`--access-log`: no gateway-quiet."
            )
    if "floor-2w" in wanted:
        servers["floor-2w"] = Server("floor-2w", *start_floor(env, workers=2))
        wait_settled(servers["floor-2w"].proc, 3)  # hypercorn's supervisor and two workers
    if "gateway-2w" in wanted:
        if gateway_workers_flag(env):
            proc, port, _ = start_gateway(env, workers=2)
            wait_settled(proc, 2)  # the first process serves too
            servers["gateway-2w"] = Server("gateway-2w", proc, port)
        else:
            notes.append("`trio-gateway serve` has no `--workers`: two workers for the floor only.")
    if {"floor-2w", "gateway-2w"} & set(servers):
        notes.append(
            "Two workers (`-2w`): both processes may use both cores (`taskset -c 0,1`) and share "
            "core 1 with nginx and wrk, whose CPU (the *mock* and *wrk* columns) is what the "
            "second worker cannot have: the ceiling of the ratio to one worker is 2 minus that "
            "share. CPU and RSS are summed over the process tree, each process's share in "
            "brackets (the gateway's first process also keeps the admin API; the floor's "
            "first is hypercorn's idle supervisor)."
        )
    return servers


def group(case: Case, servers: dict[str, Server]) -> list[Server]:
    """The servers ``case`` is measured on, in the order of :data:`SERVER_ORDER`."""
    names = ["floor", "gateway"]
    if case.id in DIRECT_CASES:
        names.insert(0, "direct")
    if case.id in QUIET_CASES:
        names.append("gateway-quiet")
    if case.id in LIMITED_CASES:
        names.append("gateway-limited")
    if case.id in WORKER_CASES:
        names += ["gateway-2w", "floor-2w"]
    return [servers[n] for n in names if n in servers]


def schedule(
    cases: list[Case], servers_of: Callable[[Case], list[Server]]
) -> list[list[tuple[Case, Server]]]:
    """The order of one round: one block per kind of case, its concurrencies in a row.

    Within a block, the gateway sits at the boundary between two concurrencies (last
    of the first, first of the next), so its own c=1 and c=32 measurements are
    adjacent, and every other server of a case is next to or near the gateway of the
    same case. Odd rounds run each block backwards.
    """
    blocks = []
    for kind in dict.fromkeys(c.kind for c in cases):
        block: list[tuple[Case, Server]] = []
        for i, case in enumerate(c for c in cases if c.kind == kind):
            group_ = servers_of(case)
            gateway = [s for s in group_ if s.name == "gateway"]
            others = [s for s in group_ if s.name != "gateway"]
            ordered = others + gateway if i % 2 == 0 else gateway + others
            block += [(case, s) for s in ordered]
        if block:
            blocks.append(block)
    return blocks


if __name__ == "__main__":
    sys.exit(main())
