"""The command line: check-config, serve's refusal to expose an unauthenticated admin API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trio_gateway import __version__
from trio_gateway.cli import main

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"trio-gateway {__version__}"


def test_check_config_valid(capsys):
    assert main(["check-config", str(EXAMPLES / "quickstart.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_check_config_lists_every_problem(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "gateways:\n"
        "  - name: g\n"
        "    upstreams:\n"
        "      - name: u\n"
        "        algorithm: fastest\n"
        "        targets: [{provider: openai, weight: 0}]\n"
    )
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "gateways[0].upstreams[0].algorithm: must be one of" in err
    assert "gateways[0].upstreams[0].targets[0].weight: must be between 1 and 100" in err


def test_serve_refuses_a_public_admin_listener_without_token(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trio_gateway", "serve", "--memory", "--admin-listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "without a token" in result.stderr


def test_serve_reports_a_busy_port(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trio_gateway",
                "serve",
                "--memory",
                "--admin-listen",
                f"127.0.0.1:{port}",
                "--proxy-listen",
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    import re
    import signal
    import time

    from tests.config.test_file import quickstart_text

    config = tmp_path / "quickstart.yaml"
    config.write_text(quickstart_text())

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_gateway",
            "serve",
            "--memory",
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        assert server.stdout is not None
        for line in server.stdout:
            if re.search("is ready", line) or time.monotonic() > deadline:
                break
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 0
    assert "shutting down" in err
    assert "Traceback" not in err


#: What `serve` must not import: the testing tools' parsers pull in the fake providers,
#: the scenario runner and, through trio.testing, pytest (a tenth of a second of every
#: start; docs/benchmarks.md, "Start to ready").
_TOOLS_IMPORTED = """
import sys
from trio_gateway.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.startswith(("trio_gateway.testing", "trio.testing", "pytest"))))
"""


def _imported_by(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _TOOLS_IMPORTED, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def test_serve_starts_without_the_testing_tools():
    assert _imported_by("serve", "--help") == "[]"


def test_every_command_is_still_listed_and_the_tools_still_run(capsys):
    assert "trio_gateway.testing.fake.cli" in _imported_by("fake-provider", "--help")
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("serve", "fake-provider", "scenario"))
