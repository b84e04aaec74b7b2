"""``trio-gateway fake-provider``: help, argument checking, and a real run stopped by SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx2
import pytest
import trio

from trio_gateway.cli import build_parser, main
from trio_gateway.testing.fake import FakeProviderSpec, Fault, FaultKind
from trio_gateway.testing.fake.cli import build_spec

from .helpers import OPENAI, chat


def test_help_explains_every_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["fake-provider", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for kind in FaultKind:
        assert f"\n  {kind.value}" in out
    for selection in ("path:", "model:", "times:", "probability:", "window:", "flapping:", "skip:"):
        assert selection in out
    assert "/_fake/faults" in out


def test_arguments_make_a_spec() -> None:
    args = build_parser().parse_args(
        [
            "fake-provider",
            "--listen",
            "127.0.0.1:9100",
            "--name",
            "flaky",
            "--api-key",
            "sk-1",
            "--model",
            "gpt-4o-mini",
            "--model",
            "claude-3-5-sonnet-20241022",
            "--fault",
            "hang",
            "--fault",
            '{"kind": "error", "status": 503, "times": 2}',
            "--fault",
            "{kind: error, status: 503, flapping: {down: 2, up: 3}}",
            "--seed",
            "4",
        ]
    )
    assert build_spec(args) == FakeProviderSpec(
        name="flaky",
        listen="127.0.0.1:9100",
        api_key="sk-1",
        models=("gpt-4o-mini", "claude-3-5-sonnet-20241022"),
        faults=(Fault.hang(), Fault.error(503, times=2), Fault.flap(down=2, up=3)),
        seed=4,
    )
    any_model = build_spec(build_parser().parse_args(["fake-provider", "--any-model"]))
    assert any_model.models == () and any_model.listen == "127.0.0.1:9001"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault", "{kind: error}"], "--fault #1: kind 'error' needs 'status'"),
        (["--fault", "hang", "--fault", "{kind: hang, times: 0}"], "--fault #2: times: must be"),
        (["--fault", "{kind: ["], "--fault #1: is not valid YAML or JSON"),
        (["--fault", "explode"], "--fault #1: kind: must be one of 'latency'"),
        (["--listen", "nowhere"], "listen: must be HOST:PORT"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-provider", *argv]) == 2
    assert message in capsys.readouterr().err


async def test_runs_until_sigint() -> None:
    command = [sys.executable, "-m", "trio_gateway", "fake-provider", "--listen", "127.0.0.1:0"]
    command += ["--fault", "{kind: error, status: 503, times: 1}"]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            banner = b""
            while b"\n" not in banner:
                banner += await process.stdout.receive_some()
            first = banner.decode().splitlines()[0]
            assert first.startswith("fake provider 'fake' listening on http://127.0.0.1:")
            url = first.split(" on ")[1].split(",")[0]
            async with httpx2.AsyncClient(base_url=url) as client:
                codes = [
                    (
                        await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
                    ).status_code
                    for _ in range(2)
                ]
                put = await client.put("/_fake/faults", json=["close"])
                with pytest.raises(httpx2.RemoteProtocolError):
                    await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
            assert codes == [503, 200] and put.status_code == 200
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
