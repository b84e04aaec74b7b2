"""Fixtures shared by the whole suite: a running gateway and an admin client."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
import trio
from hypothesis import settings

from tests.pg import Schema
from trio_gateway.serve import Running
from trio_gateway.testing.harness import open_gateway

EXAMPLES = Path(__file__).parent.parent / "examples"

# The same examples on every run: a property test must not turn CI red by luck.
# Set HYPOTHESIS_PROFILE=explore to search with fresh random examples.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SOCKET_TEST_TIMEOUT = 30


@pytest.fixture
def guide_upstream() -> dict:
    """The body of the guide's ``POST .../upstreams`` call, verbatim."""
    return json.loads((EXAMPLES / "guide-upstream.json").read_text())


@pytest.fixture
async def gateway() -> AsyncIterator[Running]:
    with trio.fail_after(SOCKET_TEST_TIMEOUT):
        async with open_gateway() as running:
            yield running


@pytest.fixture
async def admin(gateway: Running) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=gateway.admin_url + "/api/v1") as client:
        yield client


@pytest.fixture
async def gateway_id(admin: httpx2.AsyncClient) -> str:
    response = await admin.post("/gateways", json={"name": "test"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def postgres() -> Iterator[Schema]:
    """A fresh schema on the test PostgreSQL server (fails when there is none)."""
    schema = Schema()
    schema.create()
    try:
        yield schema
    finally:
        schema.drop()
