"""Gateway instances as real processes (``python -m trio_gateway serve``), on port 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx2
import trio

from tests.e2e.conftest import KEY

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


@attrs.define
class Instance:
    process: trio.Process
    admin_url: str
    proxy_url: str
    log: Path

    def api(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(base_url=self.admin_url + "/api/v1", timeout=10)

    def proxy(self, key: str = KEY) -> httpx2.AsyncClient:
        # No keep-alive: every request may land on any worker process.
        return httpx2.AsyncClient(
            base_url=self.proxy_url,
            headers={"X-Api-Key": key},
            timeout=10,
            limits=httpx2.Limits(max_keepalive_connections=0),
        )

    async def ready(self) -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=5) as client:
            return await client.get(self.admin_url + "/readyz")


@asynccontextmanager
async def open_instance(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Instance]:
    """Start ``trio-gateway serve ARGS`` (in ``env``, else this process's environment);
    yield it once its banner is out; SIGTERM it after.

    Its stderr (the log) goes to ``log``; the test fails if it does not exit 0 on SIGTERM.
    """
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "trio_gateway",
                "serve",
                "--admin-listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--graceful-timeout",
                "1",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=log_fd,
            env=env,
        )
    finally:
        os.close(log_fd)
    try:
        text = ""
        with trio.fail_after(START_TIMEOUT_S):
            while "store:" not in text:
                chunk = await process.stdout.receive_some()
                if not chunk:
                    raise AssertionError(
                        f"the gateway exited at start:\n{await trio.Path(log).read_text()}"
                    )
                text += chunk.decode()
        admin = re.search(r"admin API: (\S+)/api/v1", text).group(1)
        proxy = re.search(r"proxy: +(\S+)", text).group(1)
        yield Instance(process, admin, proxy, log)
    finally:
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(STOP_TIMEOUT_S, shield=True):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
                raise AssertionError(
                    f"the gateway did not stop on SIGTERM:\n{await trio.Path(log).read_text()}"
                )


async def within(bound: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll ``check`` until true; return how long it took (fails past ``bound`` seconds)."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > bound:
            raise AssertionError(f"not seen within {bound} s")
        await trio.sleep(0.005)
    return time.monotonic() - start
