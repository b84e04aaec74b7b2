"""SIGHUP applies the configuration file again: no connection or stream dropped, result logged."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import trio
import yaml

from tests.e2e.conftest import KEY, config, sse_events, target
from trio_gateway.testing.fake import Fault, open_fake_provider
from trio_gateway.testing.harness import is_health_check

MODEL = "gpt-4o-mini"
NEW_KEY = KEY + "_added"


class Gateway:
    """``trio-gateway serve`` in a child process, its JSON log lines read as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[dict] = []
        self._buffer = b""

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self._buffer += chunk
            *whole, self._buffer = self._buffer.split(b"\n")
            self.lines += [json.loads(line) for line in whole if line.startswith(b"{")]

    async def wait_for(self, message: str, after: int = 0) -> dict:
        while True:
            for line in self.lines[after:]:
                if line["msg"].startswith(message):
                    return line
            await trio.sleep(0.02)


async def test_sighup_reapplies_the_file_without_dropping_a_stream(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    slow = [Fault.stall_stream(1.5, after_chunks=2)]
    with trio.fail_after(60):
        async with (
            open_fake_provider(name="old", api_key="sk-fake-0", faults=slow) as old,
            open_fake_provider(name="new", api_key="sk-fake-1") as new,
        ):
            first = config([target(old, default_model=MODEL)])
            path.write_text(yaml.safe_dump(first))
            argv = [
                sys.executable,
                "-m",
                "trio_gateway",
                "serve",
                "--memory",
                "--config",
                str(path),
            ]
            argv += ["--admin-listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0"]
            process = await trio.lowlevel.open_process(
                [*argv, "--log-format", "json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            gateway = Gateway(process)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(gateway.read_log)
                    text = ""
                    while "gateway 'e2e'" not in text:
                        text += (await process.stdout.receive_some()).decode()
                    proxy = re.search(r"proxy: +(\S+)", text).group(1)
                    async with httpx2.AsyncClient(
                        base_url=proxy, headers={"X-Api-Key": KEY}, timeout=30
                    ) as client:
                        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
                        streamed: list[str] = []

                        async def stream() -> None:
                            response = await client.post(
                                "/v1/chat/completions", json={**body, "stream": True}
                            )
                            streamed.append(response.text)

                        nursery.start_soon(stream)
                        while not [r for r in old.requests if not is_health_check(r)]:  # noqa: ASYNC110
                            await trio.sleep(0.02)

                        # Mid-stream: the target moves to another provider, a key is added.
                        second = config([target(new, default_model=MODEL)])
                        second["gateways"][0]["api_keys"].append({"name": "k2", "key": NEW_KEY})
                        path.write_text(yaml.safe_dump(second))
                        seen = len(gateway.lines)
                        process.send_signal(signal.SIGHUP)
                        line = await gateway.wait_for("configuration file", seen)
                        assert line["msg"] == "configuration file reloaded", line
                        assert line["created"] == 1 and line["updated"] >= 1
                        assert line["level"] == "info"

                        # The new configuration serves at once; the stream goes on.
                        response = await client.post(
                            "/v1/chat/completions", json=body, headers={"X-Api-Key": NEW_KEY}
                        )
                        assert response.status_code == 200
                        assert [r for r in new.requests if not is_health_check(r)]
                        assert not streamed  # still streaming from the retired target
                        while not streamed:  # noqa: ASYNC110
                            await trio.sleep(0.05)
                        events = sse_events(streamed[0])
                        assert events[-1] == (None, "[DONE]")
                        assert not any('"error"' in data for _, data in events)

                        # A file with a problem changes nothing, and says why.
                        path.write_text(path.read_text().replace("round-robin", "round-robbin"))
                        seen = len(gateway.lines)
                        process.send_signal(signal.SIGHUP)
                        line = await gateway.wait_for("configuration file", seen)
                        assert line["msg"].startswith("configuration file not reloaded")
                        assert line["level"] == "error"
                        assert any("algorithm" in problem for problem in line["problems"])
                        again = await client.post(
                            "/v1/chat/completions", json=body, headers={"X-Api-Key": NEW_KEY}
                        )
                        assert again.status_code == 200
                    nursery.cancel_scope.cancel()
            finally:
                process.terminate()
                await process.wait()
            assert process.returncode == 0
