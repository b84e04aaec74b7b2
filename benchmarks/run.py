"""`make bench`: the gateway against a direct call and the floor proxy, in one run.

    .venv/bin/python benchmarks/run.py [--duration 8] [--warmup 2] [--repeat 1] [--profile]

Starts, and stops at the end:

* the **mock provider**: nginx answering from memory (benchmarks/nginx.conf.template,
  bodies from benchmarks/mock_bodies.py), one process;
* the **floor**: benchmarks/floor_proxy.py, the thinnest pass-through on our stack;
* the **gateway**: ``trio-gateway serve`` with benchmarks/gateway.yaml (API key, rule,
  service, two-target round-robin upstream, passive health), on the memory store.

Floor and gateway are pinned to core 0; nginx, wrk and this script to core 1. Each case
(non-streaming at 1/32/64 concurrent, streaming at 1/32, OpenAI client on an Anthropic
target at 1/32, whole and streamed) runs against the direct mock, the floor and the
gateway one after the other, with a warm-up before each measurement; at 32 concurrent
(whole and streamed), also a ``gateway-quiet`` with ``--metrics off --access-log off``,
whose difference to the gateway is what metrics and the access log cost (issue 11's
target: at most 5 %). Then: two workers,
1,000 slow streams open at once, start-to-ready time, and (``--profile``) a py-spy profile
of the gateway at 32 concurrent. Writes the tables into docs/benchmarks.md (between the
``results`` markers), raw numbers into benchmarks/results/latest.json, and prints
PASS/MISS for each target of issue 6.

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
SLOW_SLEEP_S = 0.5
SLOW_RAMP_S = 4.0
SLOW_STREAMS = 1000
#: Other processes using more than this share of a core during a measurement: noisy.
NOISY = 0.15

# Targets of issue 6.
ADDED_P50_MAX = 1.25
RPS_MIN = 0.85
STREAM_CPU_MAX = 1.3
TRANSLATED_CPU_MAX = 2.0
SLOW_RSS_MAX_MB = 250.0
READY_MAX_S = 1.5
# Target of issue 11: metrics + access log cost at most this share of the gateway's CPU.
TELEMETRY_COST_MAX = 0.05
#: Cases measured with the telemetry off too (the gateway-quiet rows).
QUIET_CASES = ("nonstream-c32", "stream-c32")
QUIET_FLAGS = ["--metrics", "off", "--access-log", "off"]


def gateway_key(gateway: str) -> str:
    """The API key benchmarks/gateway.yaml declares for gateway ``bench-<gateway>``."""
    return f"tgk_bench_{gateway.replace('-', '_')}_key_0123456789"


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

    @property
    def gateway_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_GATEWAY_")}
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
            slow_sleep=SLOW_SLEEP_S,
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
    proc_env = {**os.environ, "FLOOR_UPSTREAM": f"http://127.0.0.1:{env.port_a}"}
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
    env: Env, *, workers: int = 1, name: str | None = None, extra: list[str] | None = None
) -> tuple[Proc, int, float]:
    """Start it; return it, its proxy port and seconds from spawn to ``/readyz`` 200.

    The access log (on unless ``extra`` says ``--access-log off``) goes to the
    process's log file, like any log line: the cost of writing it is measured.
    """
    port, admin = free_port(), free_port()
    cores = SERVER_CORE if workers == 1 else ALL_CORES
    argv = ["taskset", "-c", cores, env.gateway_bin, "serve"]
    argv += ["--config", str(HERE / "gateway.yaml")]
    if workers == 1:
        argv += ["--memory"]
    else:  # several workers share the configuration through the SQLite store
        data = env.tmp / f"gateway-data-{free_port()}"
        argv += ["--data-dir", str(data)]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", "--proxy-listen", f"127.0.0.1:{port}"]
    argv += ["--log-level", "WARNING", *(extra or [])]
    if workers != 1:
        argv += ["--workers", str(workers)]
    proc_env = env.gateway_env
    name = name or ("gateway" if workers == 1 else f"gateway-{workers}w")
    proc = Proc(name, argv, env.tmp / f"{name}.log", env=proc_env)
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
        return gateway_key(case.gateway) if self.is_gateway else None

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


def measure(env: Env, mock: Proc, server: Server, case: Case, args, round_: int) -> Sample:
    run_wrk(env, server, case, args.warmup)
    time.sleep(0.2)
    tree, mock_tree = server.proc.tree(), mock.tree()
    cpu0, mock0, t0 = cpu_seconds(tree), cpu_seconds(mock_tree), time.monotonic()
    busy0 = machine_busy_seconds()
    result, wrk_cpu = run_wrk(env, server, case, args.duration)
    wall = time.monotonic() - t0
    busy = machine_busy_seconds() - busy0
    tree = server.proc.tree()
    cpu, mock_cpu = cpu_seconds(tree) - cpu0, cpu_seconds(mock_tree) - mock0
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
    )
    print(
        f"  {case.id:<22} {server.name:<11} {sample.rps:8.0f} req/s  p50 {sample.p50_ms:7.2f} ms"
        f"  p99 {sample.p99_ms:7.2f} ms  cpu {sample.cpu_ms_per_req:6.3f} ms/req"
        f" ({sample.cpu_util:4.0%})  rss {sample.rss_mb:5.0f} MB  mock {sample.mock_cpu_util:4.0%}"
        f"  wrk {sample.wrk_cpu_util:4.0%}  other {sample.other_cpu_util:4.0%}"
        + (f"  ERRORS {errors}" if errors else ""),
        flush=True,
    )
    return sample


def combine(samples: list[Sample]) -> dict:
    """Median of each metric over rounds (one round: the sample itself)."""
    first = samples[0]
    out = {"case": first.case, "server": first.server, "concurrency": first.concurrency}
    out["rounds"] = len(samples)
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
    """Peak resident memory of ``proc``'s tree while the block runs."""
    state = {"peak_mb": 0.0, "samples": 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            state["peak_mb"] = max(state["peak_mb"], proc.rss())
            state["samples"] += 1
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join()


def slow_streams(env: Env, server: Server, n: int) -> dict:
    case = Case("slow", n, "/slow/v1/chat/completions", "slow", True, False)
    path = server.path(case)
    body = env.bodies["openai-stream"]
    argv = ["taskset", "-c", LOAD_CORE, env.python, str(HERE / "slow_streams.py")]
    argv += ["--url", f"http://127.0.0.1:{server.port}{path}", "--body-file", str(body)]
    argv += ["-n", str(n), "--ramp", str(SLOW_RAMP_S), "--api-key", server.key(case) or ""]
    idle = server.proc.rss()
    cpu0 = server.proc.cpu()
    with rss_sampler(server.proc) as rss:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    cpu = server.proc.cpu() - cpu0
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
    )
    print(
        f"  {n} slow streams via {server.name:<8}: {result['ok']}/{n} complete, "
        f"{result['max_open']} open at once (all open at {result['all_open_at'] or 0:.1f} s), "
        f"RSS {idle:.0f} → peak {rss['peak_mb']:.0f} MB, {result['elapsed_s']} s",
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
        if not frames:
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


def package_diff(floor: dict, gateway: dict) -> str:
    """Own CPU time per request by package, gateway against floor (µs)."""
    f = {e["frame"]: e["us_per_req"] for e in floor["packages"]}
    g = {e["frame"]: e["us_per_req"] for e in gateway["packages"]}
    names = sorted(set(f) | set(g), key=lambda n: -(g.get(n, 0) - f.get(n, 0)))
    lines = ["  own µs/request by package: floor → gateway (difference)"]
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


def targets(rows: list[dict], slow: list[dict], startup: dict) -> list[dict]:
    checks = []

    def check(
        name: str, value: float | None, limit: float, ok: Callable[[float], bool], detail: str
    ):
        checks.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "result": "n/a" if value is None else ("PASS" if ok(value) else "MISS"),
                "detail": detail,
            }
        )

    d, f, g = (find(rows, "nonstream-c1", s) for s in ("direct", "floor", "gateway"))
    if d and f and g:
        added_g, added_f = g["p50_ms"] - d["p50_ms"], f["p50_ms"] - d["p50_ms"]
        check(
            "non-streaming c=1: gateway's added p50 ÷ floor's",
            added_g / added_f,
            ADDED_P50_MAX,
            lambda v: v <= ADDED_P50_MAX,
            f"gateway +{added_g:.3f} ms, floor +{added_f:.3f} ms over direct {d['p50_ms']:.3f} ms",
        )
    for case in QUIET_CASES:
        g, q = find(rows, case, "gateway"), find(rows, case, "gateway-quiet")
        if g and q:
            check(
                f"{case}: metrics + access log, share of the gateway's CPU per request",
                g["cpu_ms_per_req"] / q["cpu_ms_per_req"] - 1,
                TELEMETRY_COST_MAX,
                lambda v: v <= TELEMETRY_COST_MAX,
                f"gateway {g['cpu_ms_per_req'] * 1000:.0f} µs/req, with --metrics off "
                f"--access-log off {q['cpu_ms_per_req'] * 1000:.0f} µs/req",
            )
    f, g = find(rows, "nonstream-c32", "floor"), find(rows, "nonstream-c32", "gateway")
    if f and g:
        check(
            "non-streaming c=32, one worker: gateway req/s ÷ floor's",
            g["rps"] / f["rps"],
            RPS_MIN,
            lambda v: v >= RPS_MIN,
            f"gateway {g['rps']:.0f}, floor {f['rps']:.0f} req/s",
        )
    for c in (1, 32):
        f, g = find(rows, f"stream-c{c}", "floor"), find(rows, f"stream-c{c}", "gateway")
        if f and g:
            check(
                f"streaming c={c}: gateway CPU per stream ÷ floor's",
                g["cpu_ms_per_req"] / f["cpu_ms_per_req"],
                STREAM_CPU_MAX,
                lambda v: v <= STREAM_CPU_MAX,
                f"gateway {g['cpu_ms_per_req']:.3f}, floor {f['cpu_ms_per_req']:.3f} ms",
            )
    for c in (1, 32):
        f = find(rows, f"translate-stream-c{c}", "floor")
        g = find(rows, f"translate-stream-c{c}", "gateway")
        if f and g:
            check(
                f"translated streaming c={c}: gateway CPU per stream ÷ floor's",
                g["cpu_ms_per_req"] / f["cpu_ms_per_req"],
                TRANSLATED_CPU_MAX,
                lambda v: v <= TRANSLATED_CPU_MAX,
                f"gateway {g['cpu_ms_per_req']:.3f} ms (translating), floor "
                f"{f['cpu_ms_per_req']:.3f} ms (relaying the same Anthropic stream)",
            )
    g_slow = next((s for s in slow if s["server"] == "gateway"), None)
    if g_slow:
        complete = g_slow["ok"] == g_slow["n"] and g_slow["max_open"] == g_slow["n"]
        check(
            f"{g_slow['n']} concurrent open streams: all complete, peak RSS (MB)",
            g_slow["rss_peak_mb"] if complete else float("inf"),
            SLOW_RSS_MAX_MB,
            lambda v: v < SLOW_RSS_MAX_MB,
            f"{g_slow['ok']}/{g_slow['n']} complete, {g_slow['max_open']} open at once",
        )
    if startup.get("gateway"):
        times = startup["gateway"]
        check(
            "start to ready (s), median of runs",
            statistics.median(times),
            READY_MAX_S,
            lambda v: v < READY_MAX_S,
            "runs: " + ", ".join(f"{t:.2f}" for t in times),
        )
    return checks


SERVER_ORDER = {
    "direct": 0,
    "floor": 1,
    "gateway": 2,
    "gateway-quiet": 3,
    "floor-2w": 4,
    "gateway-2w": 5,
}


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
        "### Requests",
        "",
        "CPU is the server's (for `direct`: nginx's) per request and as a share of one core. "
        "The mock's and wrk's CPU show that neither was the bottleneck; *other* is everything "
        "else the machine ran meanwhile (a noisy neighbour shows there).",
        "",
        "| Case | Conc. | Server | req/s | p50 ms | p99 ms | CPU ms/req | CPU % core "
        "| RSS MB | mock CPU % | wrk CPU % | other CPU % | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(
        report["rows"],
        key=lambda r: (report["case_order"].index(r["case"]), SERVER_ORDER.get(r["server"], 9)),
    )
    labels = report["case_labels"]
    for r in rows:
        lines.append(
            f"| {labels[r['case']]} | {r['concurrency']} | {r['server']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_ms_per_req']:.3f} | "
            f"{r['cpu_util']:.0%} | {r['rss_mb']:.0f} | "
            + ("(server)" if r["server"] == "direct" else f"{r['mock_cpu_util']:.0%}")
            + f" | {r['wrk_cpu_util']:.0%} | {r['other_cpu_util']:.0%} | {r['errors']} |"
        )
    lines += ["", "### Targets (issue 6)", "", "| Target | Measured | Limit | Result | Detail |"]
    lines += ["|---|---:|---:|---|---|"]
    for c in report["targets"]:
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        lines.append(
            f"| {c['target']} | {value} | {c['limit']:g} | **{c['result']}** | {c['detail']} |"
        )
    if report["slow"]:
        lines += [
            "",
            f"### {SLOW_STREAMS} slow streams open at once",
            "",
            f"Each stream: the 21 events of the streaming case, {SLOW_SLEEP_S} s apart "
            f"(~{20 * SLOW_SLEEP_S:.0f} s); connections opened evenly over {SLOW_RAMP_S:g} s, "
            "one stream per connection; RSS sampled every 50 ms.",
            "",
            "| Server | complete | most open at once | RSS before MB | peak RSS MB | CPU ms/stream | wall s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s in report["slow"]:
            lines.append(
                f"| {s['server']} | {s['ok']}/{s['n']} | {s['max_open']} | {s['rss_before_mb']:.0f} | "
                f"{s['rss_peak_mb']:.0f} | {s['cpu_ms_per_stream']:.2f} | {s['elapsed_s']:.1f} |"
            )
    if report["startup"]:
        lines += [
            "",
            "### Start to ready",
            "",
            "| Process | runs (s) | median s |",
            "|---|---|---:|",
        ]
        for name, times in report["startup"].items():
            lines.append(
                f"| {name} | {', '.join(f'{t:.2f}' for t in times)} | {statistics.median(times):.2f} |"
            )
    profiles = {p["server"]: p for p in report.get("profile") or []}
    if "floor" in profiles and "gateway" in profiles:
        f, g = profiles["floor"], profiles["gateway"]
        fp = {e["frame"]: e["us_per_req"] for e in f["packages"]}
        gp = {e["frame"]: e["us_per_req"] for e in g["packages"]}
        names = sorted(set(fp) | set(gp), key=lambda n: -(gp.get(n, 0) - fp.get(n, 0)))
        lines += [
            "",
            f"### Where the CPU goes ({f['case']}, py-spy)",
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
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median is reported")
    parser.add_argument("--only", default="", help="comma-separated case ids (e.g. nonstream-c32)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the floor and the gateway at nonstream-c32"
    )
    parser.add_argument(
        "--no-extras", action="store_true", help="skip 2 workers, slow streams, start-up"
    )
    parser.add_argument("--startups", type=int, default=5, help="start-to-ready runs")
    parser.add_argument(
        "--ref",
        help="measure the gateway of this commit (git archive into a temporary directory) "
        "instead of the working tree",
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the doc's results")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args()

    echo, gateway_bin = check_prerequisites()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 16384), hard), hard))
    cases = make_cases()
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c.id in wanted]
    out_dir = args.json.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4 * SLOW_STREAMS:
        notes.append(f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} is low")

    info = machine()  # before the run: the working tree may change while it runs
    with tempfile.TemporaryDirectory(prefix="trio-gateway-bench-") as tmp:
        env = Env(tmp=Path(tmp), python=sys.executable, gateway_bin=gateway_bin, echo_module=echo)
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
        try:
            print("Starting the mock (nginx), the floor and the gateway…", flush=True)
            mock = start_mock(env)
            floor, floor_port = start_floor(env)
            gateway, gateway_port, _ = start_gateway(env)
            servers = [
                Server("direct", mock, env.port_a),
                Server("floor", floor, floor_port),
                Server("gateway", gateway, gateway_port),
            ]
            quiet = None
            if gateway_quiet_flags(env):
                proc, port, _ = start_gateway(env, name="gateway-quiet", extra=QUIET_FLAGS)
                quiet = Server("gateway-quiet", proc, port)
            for case in cases:
                for server in servers:
                    validate(env, server, case)
                if quiet is not None and case.id in QUIET_CASES:
                    validate(env, quiet, case)
            print(
                f"All {len(cases) * 3} response shapes check out. Measuring "
                f"({args.warmup:g} s warm-up + {args.duration:g} s each, {args.repeat} round(s)):",
                flush=True,
            )
            samples: dict[tuple[str, str], list[Sample]] = {}
            for round_ in range(args.repeat):
                for case in cases:
                    order = servers if round_ % 2 == 0 else [servers[0], servers[2], servers[1]]
                    if quiet is not None and case.id in QUIET_CASES:
                        # Right beside the gateway, alternating which goes first.
                        at = order.index(servers[2])
                        pair = [servers[2], quiet] if round_ % 2 == 0 else [quiet, servers[2]]
                        order = [*order[:at], *pair, *order[at + 1 :]]
                    for server in order:
                        s = measure(env, mock, server, case, args, round_)
                        samples.setdefault((case.id, server.name), []).append(s)
            if quiet is not None:
                quiet.proc.stop()
            rows = [combine(v) for v in samples.values()]

            profiled = []
            if args.profile:
                case = next(c for c in make_cases() if c.id == "nonstream-c32")
                for server in servers[1:]:
                    print(f"Profiling {server.name} at {case.id} with py-spy…", flush=True)
                    if (found := profile(env, server, case, args, out_dir)) is not None:
                        profiled.append(found)
                if len(profiled) == 2:
                    print(package_diff(*profiled), flush=True)

            slow: list[dict] = []
            startup: dict[str, list[float]] = {}
            if not args.no_extras:
                print(f"{SLOW_STREAMS} slow streams at once:", flush=True)
                for server in servers[1:]:
                    slow.append(slow_streams(env, server, SLOW_STREAMS))
                time.sleep(1)

                print("Two workers:", flush=True)
                floor.stop()
                gateway.stop()
                two = [Server("floor-2w", *start_floor(env, workers=2))]
                if gateway_workers_flag(env):
                    proc, port, _ = start_gateway(env, workers=2)
                    two.append(Server("gateway-2w", proc, port))
                else:
                    notes.append(
                        "`trio-gateway serve` has no `--workers` option yet: two workers "
                        "measured for the floor only."
                    )
                    print("  (trio-gateway serve has no --workers: floor only)", flush=True)
                notes.append(
                    "Two workers (`-2w`): the processes may use both cores (`taskset -c 0,1`), so "
                    "on this 2-core machine they share core 1 with nginx and wrk: the rows show "
                    "that multi-process serving works and what it costs per request, not how it "
                    "scales. CPU and RSS are summed over the process tree (the gateway's main "
                    "process keeps the admin API; its workers use the SQLite store in a "
                    "temporary directory)."
                )
                two_cases = [
                    c for c in cases if c.id in ("nonstream-c32", "nonstream-c64", "stream-c32")
                ]
                for server in two:
                    for case in two_cases:
                        validate(env, server, case)
                        rows.append(combine([measure(env, mock, server, case, args, 0)]))
                    server.proc.stop()

                print(
                    f"Start to ready ({args.startups} runs each, after one untimed start):",
                    flush=True,
                )
                start_gateway(env, name="gateway-warm")[0].stop()
                startup["gateway"] = []
                for i in range(args.startups):
                    proc, _, seconds = start_gateway(env, name=f"gateway-start{i}")
                    proc.stop()
                    startup["gateway"].append(seconds)
                startup["floor"] = []
                for _ in range(3):
                    started = time.monotonic()
                    proc, _ = start_floor(env)
                    startup["floor"].append(time.monotonic() - started)
                    proc.stop()
                for name, times in startup.items():
                    print(f"  {name}: " + ", ".join(f"{t:.2f} s" for t in times), flush=True)
        finally:
            for proc in reversed(list(RUNNING)):
                proc.stop()

    checks = targets(rows, slow, startup)
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
        f"{args.repeat} round(s){', median' if args.repeat > 1 else ''}; wrk -t1; "
        f"floor and gateway on core {SERVER_CORE}, nginx and wrk on core {LOAD_CORE}",
        "case_order": [c.id for c in make_cases()],
        "case_labels": {c.id: c.label for c in make_cases()},
        "rows": rows,
        "samples": [asdict(s) for v in samples.values() for s in v],
        "slow": slow,
        "startup": startup,
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
    print("Targets:")
    for c in checks:
        value = "-" if c["value"] is None else f"{c['value']:.3f}"
        print(f"  {c['result']:<4}  {c['target']}: {value} (limit {c['limit']:g}); {c['detail']}")
    print(f"\nRaw numbers: {rel(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
