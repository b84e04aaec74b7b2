"""A newcomer's first hour: `make run`'s configuration, its banner, the guide end to end.

The guide's flow is scripted from the banner itself: every ``curl`` it prints is
run as printed (``-d @file`` as curl sends it), with the ids the answers give, and
Step 4 must be answered by the guide's own upstream, offline.
"""

from __future__ import annotations

import logging
import shlex
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import attrs
import httpx2
import trio

from tests.e2e.conftest import config, setup, target
from trio_gateway import __version__
from trio_gateway.cli import banner, main
from trio_gateway.config.file import Declarations, load_file
from trio_gateway.serve import Running, serve
from trio_gateway.testing.harness import TEST_SETTINGS

ROOT = Path(__file__).parent.parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
QUICKSTART_KEY = "tgk_quickstart_local_only_key"


def quickstart() -> Declarations:
    """``make run``'s file, its fake providers on free ports."""
    declarations = load_file(QUICKSTART, environ={})
    fakes = tuple(attrs.evolve(f, listen="127.0.0.1:0") for f in declarations.fake_providers)
    return attrs.evolve(declarations, fake_providers=fakes)


async def start_quickstart(nursery: trio.Nursery) -> tuple[Running, object, Declarations]:
    declarations = quickstart()
    settings = TEST_SETTINGS.with_file(declarations.server, set())
    running = await nursery.start(partial(serve, settings, declarations))
    return running, settings, declarations


def printed_commands(text: str) -> list[list[str]]:
    """The shell commands a banner prints (``export`` and ``curl``), continuations joined."""
    commands, current = [], None
    for line in text.splitlines():
        part = line.strip()
        if current is None and not part.startswith(("curl ", "export ")):
            continue
        continued = part.endswith("\\")
        part = part.removesuffix("\\").strip()
        current = part if current is None else f"{current} {part}"
        if not continued:
            commands.append(shlex.split(current))
            current = None
    return commands


async def run_curl(argv: list[str], variables: dict[str, str]) -> httpx2.Response:
    """``argv`` as curl would send it: -X, -H, -d (``@file``: newlines dropped), -i."""

    def expand(text: str) -> str:
        for name, value in variables.items():
            text = text.replace(f"${name}", value).replace(name, value)
        return text

    assert argv[0] == "curl"
    method, headers, body, url = None, {}, None, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = expand(value.strip())
        elif arg == "-d":
            data = next(args)
            if data.startswith("@"):
                body = (ROOT / data[1:]).read_bytes().replace(b"\r", b"").replace(b"\n", b"")
            else:
                body = expand(data).encode()
        elif arg == "-i":
            pass
        else:
            assert not arg.startswith("-"), f"the banner uses a curl option the test lacks: {arg}"
            url = expand(arg)
    method = method or ("POST" if body is not None else "GET")
    async with httpx2.AsyncClient(timeout=30) as client:
        return await client.request(method, url, headers=headers, content=body)


async def test_the_guide_printed_by_make_run_works_end_to_end_offline(nursery, guide_upstream):
    with trio.fail_after(30):
        running, settings, declarations = await start_quickstart(nursery)
        text = banner(running, settings, declarations)
        assert QUICKSTART_KEY not in text  # where the declared key is, not what it is
        assert "gateways[0].api_keys[0].key" in text
        commands = printed_commands(text)
        assert [c[0] for c in commands] == ["export"] + ["curl"] * 6

        variables: dict[str, str] = {}
        name, _, value = commands[0][1].partition("=")
        variables[name] = value
        answers = []
        for command in commands[1:]:
            response = await run_curl(command, variables)
            assert response.status_code in (200, 201), (command, response.text)
            answers.append(response)
            if response.request.method == "POST":
                collection = response.request.url.path.rsplit("/", 1)[-1]
                if collection == "upstreams":
                    variables["UPSTREAM_ID"] = response.json()["id"]
                elif collection == "services":
                    variables["SERVICE_ID"] = response.json()["id"]
                elif collection == "keys":
                    variables["YOUR_API_KEY"] = response.json()["key"]

        created, verified = answers[0].json(), answers[1].json()
        assert verified == created
        assert created["name"] == guide_upstream["name"]
        assert [t["models"] for t in created["targets"]] == [
            t["models"] for t in guide_upstream["targets"]
        ]
        step4 = answers[-1]
        assert step4.headers["x-selected-provider"] == "openai"
        guide_targets = {t["id"] for t in created["targets"]}
        assert step4.headers["x-selected-target"] in guide_targets
        assert step4.json()["choices"][0]["message"]["content"]
        # Offline: the fake standing in for api.openai.com took the guide's placeholder key.
        assert "fake-openai" in running.fake_providers
        async with httpx2.AsyncClient() as client:
            seen = (
                await client.get(running.fake_providers["fake-openai"] + "/_fake/requests")
            ).json()
        assert seen["requests"][-1]["headers"]["authorization"] == "Bearer your-openai-key"

        # A second start shows what is done, with its ids.
        again = banner(running, settings, declarations)
        assert f"(done: id {created['id']})" in again
        assert f"$GATEWAY/upstreams/{created['id']}" in again


async def test_the_quickstart_gateway_answers_through_the_stand_ins(nursery):
    with trio.fail_after(30):
        running, _, _ = await start_quickstart(nursery)
        async with httpx2.AsyncClient(base_url=running.proxy_url, timeout=30) as client:
            for model, provider in (
                ("gpt-4o-mini", "openai"),
                ("claude-3-5-sonnet-20241022", "anthropic"),
            ):
                response = await client.post(
                    "/v1/chat/completions",
                    headers={"X-Api-Key": QUICKSTART_KEY},
                    json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
                )
                assert response.status_code == 200, response.text
                assert response.headers["x-selected-provider"] == provider
            # Without a model: round-robin, each target sending its default_model (README).
            seen = set()
            for _ in range(2):
                response = await client.post(
                    "/v1/chat/completions",
                    headers={"X-Api-Key": QUICKSTART_KEY},
                    json={"messages": [{"role": "user", "content": "Hi"}]},
                )
                assert response.status_code == 200, response.text
                seen.add((response.headers["x-selected-provider"], response.json()["model"]))
            assert seen == {("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-sonnet-20241022")}


async def test_without_the_override_a_target_goes_to_its_public_endpoint(nursery):
    """The stand-ins are the quickstart's explicit setting, not a hijack of provider names."""
    with trio.fail_after(30):
        declarations = quickstart()
        settings = TEST_SETTINGS  # no base_url_overrides
        running = await nursery.start(partial(serve, settings, declarations))
        actors = [
            actor
            for dispatcher in running.runtime.table.dispatchers.values()
            for actor in dispatcher.actors
        ]
        assert sorted(a.endpoint.base_url for a in actors) == [
            "https://api.anthropic.com",
            "https://api.openai.com",
        ]


async def test_the_admin_url_the_banner_prints_answers(gateway):
    async with httpx2.AsyncClient() as client:
        response = await client.get(gateway.admin_url + "/api/v1")
    assert response.status_code == 200
    assert response.json()["version"] == __version__
    assert response.json()["gateways"] == "/api/v1/gateways"


async def test_hypercorn_lines_are_not_logged_as_errors(caplog):
    caplog.set_level(logging.INFO)
    async with setup([{}], lambda f: config([target(f[0], default_model="gpt-4o-mini")])):
        pass
    running = [r for r in caplog.records if "Running on" in r.getMessage()]
    assert running and all(r.name == "trio_gateway.server" for r in running)
    assert not [r for r in caplog.records if r.name == "hypercorn.error"]


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0
    assert capsys.readouterr().out.strip() == f"trio-gateway {__version__}"


def test_a_second_make_run_names_the_taken_port_and_touches_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config_file = tmp_path / "quickstart.yaml"
        config_file.write_text(
            QUICKSTART.read_text()
            .replace("127.0.0.1:9101", "127.0.0.1:0")
            .replace("127.0.0.1:9102", "127.0.0.1:0")
        )
        data = tmp_path / "data"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trio_gateway",
                "serve",
                "--config",
                str(config_file),
                "--data-dir",
                str(data),
                "--admin-listen",
                "127.0.0.1:0",
                "--proxy-listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} (the proxy) is already in use" in result.stderr
    assert "--proxy-listen" in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists() or not any(data.iterdir())  # the store was never opened
