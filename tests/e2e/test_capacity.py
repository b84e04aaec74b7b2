"""Many connections at once: the listen queue and the open-file limit (issue 17).

Both bounded how many slow streams the gateway held at once before any of its own
limits did (docs/benchmarks.md, "1,000 slow streams"): a burst of connections beyond
hypercorn's listen backlog of 100 waited for SYN retransmits (1 s, then 3 s, 7 s), and
under a shell's usual limit of 1,024 open files the gateway held about 500 streams
and answered the next ones 502.
"""

from __future__ import annotations

import contextlib
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import trio

from trio_gateway.testing.harness import open_gateway

#: More connections than hypercorn's own backlog (100) lets the kernel queue.
BURST = 300


def _connect_burst(host: str, port: int, n: int, wait_s: float) -> int:
    """Start ``n`` connections without letting anything accept them; how many complete.

    Runs synchronously on purpose: the gateway shares this thread's Trio loop, so it
    accepts nothing meanwhile and only the kernel's listen queue holds the connections.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((host, port))
            socks.append(s)
        pending, connected = list(socks), 0
        deadline = time.monotonic() + wait_s
        while pending and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], pending, [], left)
            for s in writable:
                pending.remove(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected += 1
        return connected
    finally:
        for s in socks:
            s.close()


async def test_a_burst_of_connections_waits_in_the_listen_queue_not_for_syn_retransmits():
    with trio.fail_after(30):
        async with open_gateway() as running:
            url = urlsplit(running.proxy_url)
            # A refused SYN is sent again after 1 s: within 0.5 s only queued ones complete.
            connected = _connect_burst(url.hostname, url.port, BURST, wait_s=0.5)
            assert connected == BURST
            # The gateway then serves normally (the burst's connections were closed unused).
            async with await trio.open_tcp_stream(url.hostname, url.port) as stream:
                await stream.send_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200")


#: Lowers the soft open-file limit, then becomes ``trio-gateway serve`` (no preexec_fn:
#: the test process may have threads).
_LOW_LIMIT_THEN_SERVE = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
os.execv(sys.executable, [sys.executable, "-m", "trio_gateway", "serve", *sys.argv[3:]])
"""


def test_serve_raises_its_open_file_limit_to_the_hard_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = hard if hard != resource.RLIM_INFINITY else 1 << 20
    low = 256
    assert hard > low, "the test needs a hard limit above 256"
    listen = ["--admin-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0"]
    server = subprocess.Popen(
        [sys.executable, "-c", _LOW_LIMIT_THEN_SERVE, str(low), str(hard), "--memory", *listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        assert server.stdout is not None
        for line in server.stdout:
            if "is ready" in line or time.monotonic() > deadline:
                break
        with open(f"/proc/{server.pid}/limits") as f:
            limits = f.read()
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    finally:
        server.kill()  # after it was reaped: nothing (Popen knows; a reused pid is safe)
        server.wait()
    found = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert found is not None, limits
    assert (int(found[1]), int(found[2])) == (hard, hard)
