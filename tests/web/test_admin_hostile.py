"""The admin API under hostile input: every case a precise 4xx, never a 5xx or a traceback.

Also its cross-site rules (issue 9, item 4) and its limits (item 3).
"""

from __future__ import annotations

import copy
import json

import httpx2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.web.hostile import admin_error, deep, no_tracebacks  # noqa: F401 (autouse)
from trio_gateway import serde
from trio_gateway.config.models import Upstream, check_upstream
from trio_gateway.testing.harness import open_gateway

pytestmark = pytest.mark.usefixtures("gateway")

JSON = {"Content-Type": "application/json"}


async def post_raw(admin: httpx2.AsyncClient, path: str, raw: bytes, **headers: str):
    return await admin.post(path, content=raw, headers={**JSON, **headers})


# --- hostile JSON (item 5) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        (deep(5000), "invalid JSON: nested more than 1024 levels deep"),
        (b'{"name": ' + b"9" * 5000 + b"}", "invalid JSON: integer of 5000 digits"),
        (b'{"name": NaN}', "invalid JSON: NaN is not a JSON value"),
        (b'{"name": 1e999}', "invalid JSON: number 1e999 is out of range"),
        ('{"name": "g"}'.encode("utf-16"), "invalid JSON: not UTF-8 text"),
        (b'{"name": "g"} trailing', "invalid JSON: Extra data"),
    ],
    ids=["deep", "huge-int", "nan", "overflow", "utf-16", "trailing"],
)
async def test_json_the_gateway_cannot_take_is_a_422_saying_why(admin, raw, msg):
    error = admin_error(await post_raw(admin, "/gateways", raw), 422, "validation_failed")
    assert error["details"][0]["loc"] == "$"
    assert error["details"][0]["msg"].startswith(msg)


async def test_a_lone_surrogate_is_refused_with_its_path(admin, gateway_id, guide_upstream):
    body = copy.deepcopy(guide_upstream)
    body["targets"][0]["models"][1] = "gpt-\ud800"
    body["\udfff-unknown"] = 1
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogates travel as escapes
    error = admin_error(
        await post_raw(admin, f"/gateways/{gateway_id}/upstreams", raw), 422, "validation_failed"
    )
    found = {d["loc"]: d["msg"] for d in error["details"]}
    assert found["targets[0].models[1]"].startswith("must be valid Unicode text")
    assert found["\udfff-unknown"] == "unknown field"  # echoed back as the escape it came as


async def test_deep_values_and_huge_numbers_inside_fields_are_422s(
    admin, gateway_id, guide_upstream
):
    path = f"/gateways/{gateway_id}/upstreams"
    text = json.dumps(guide_upstream)
    cases = [
        ('"weight": 50', '"weight": ' + "9" * 400, "targets[0].weight", "must be between 1 and"),
        (
            '"priority": 1',
            '"priority": ' + deep(1000).decode(),
            "targets[0].priority",
            "must be an",
        ),
        (
            '"interval": 60',
            '"interval": ' + "9" * 400,
            "health_checks.interval",
            "must be a number of a sensible size",
        ),
        (
            '"threshold": 3',
            '"threshold": ' + deep(300, '"\\ud800"').decode(),
            "health_checks.threshold",
            "must be an",
        ),
    ]
    for old, new, loc, msg in cases:
        raw = text.replace(old, new, 1).encode()
        error = admin_error(await post_raw(admin, path, raw), 422, "validation_failed")
        found = {d["loc"]: d["msg"] for d in error["details"]}
        assert found[loc].startswith(msg), found


# --- limits (item 3) -----------------------------------------------------------------


LIMITS = [
    ("health_checks", {"interval": 1e-9}, "health_checks.interval", "must be between 1 and 86400"),
    (
        "health_checks",
        {"interval": 90000.5},
        "health_checks.interval",
        "must be between 1 and 86400",
    ),
    (
        "health_checks",
        {"interval": 0.5, "active": True},
        "health_checks.interval",
        "must be between 1 and 86400",
    ),
    (
        "health_checks",
        {"ejection_time": 0.001},
        "health_checks.ejection_time",
        "must be between 1 and 86400",
    ),
    (
        "health_checks",
        {"headers": {"Host": "x"}},
        "health_checks.headers['Host']",
        "is set by the gateway",
    ),
    (
        "target",
        {"headers": {"Content-Length": "5"}},
        "targets[0].headers['Content-Length']",
        "is set by",
    ),
    (
        "target",
        {"headers": {"Transfer-Encoding": "chunked"}},
        "targets[0].headers['Transfer-Encoding']",
        "is set by",
    ),
    (
        "target",
        {"headers": {"Connection": "close"}},
        "targets[0].headers['Connection']",
        "is set by",
    ),
    ("target", {"headers": {"Keep-Alive": "5"}}, "targets[0].headers['Keep-Alive']", "is set by"),
    ("target", {"headers": {"TE": "trailers"}}, "targets[0].headers['TE']", "is set by"),
    ("target", {"headers": {"Upgrade": "h2c"}}, "targets[0].headers['Upgrade']", "is set by"),
    ("target", {"headers": {"host": "evil"}}, "targets[0].headers['host']", "is set by"),
    (
        "target",
        {"headers": {"X-A": "1", "x-a": "2"}},
        "targets[0].headers['x-a']",
        "is given twice",
    ),
    (
        "target",
        {"headers": {f"X-H{i}": "v" for i in range(65)}},
        "targets[0].headers",
        "has 65 headers: at most 64",
    ),
    (
        "target",
        {"credentials": {"header_value": ""}},
        "targets[0].credentials.header_value",
        "must not be empty",
    ),
    (
        "target",
        {"credentials": {"header_name": "Host", "header_value": "k"}},
        "targets[0].credentials.header_name",
        "is set by",
    ),
    (
        "target",
        {"base_url": "http://user:pw@999.999.999.999"},
        "targets[0].base_url",
        "is not a URL",
    ),
]


@pytest.mark.parametrize(("where", "change", "loc", "msg"), LIMITS)
async def test_limits_are_422s_naming_the_field(
    admin, gateway_id, guide_upstream, where, change, loc, msg
):
    body = copy.deepcopy(guide_upstream)
    if where == "target":
        body["targets"][0].update(change)
    else:
        body[where].update(change)
    error = admin_error(
        await admin.post(f"/gateways/{gateway_id}/upstreams", json=body), 422, "validation_failed"
    )
    found = {d["loc"]: d["msg"] for d in error["details"]}
    assert loc in found, found
    assert msg in found[loc]
    assert "pw" not in json.dumps(error)


@pytest.mark.parametrize(
    ("field", "value", "msg"),
    [
        ("first_byte_timeout", 1e-300, "must be between 0.1 and 86400"),
        ("idle_timeout", 0, "must be between 0.1 and 86400"),
        ("body_timeout", 1e-300, "must be between 0.1 and 86400"),
        ("request_timeout", 0.5, "must be between 1 and 86400"),
        ("request_timeout", 86401, "must be between 1 and 86400"),
    ],
)
async def test_service_durations_have_a_floor_and_a_ceiling(
    admin, gateway_id, guide_upstream, field, value, msg
):
    upstream = (await admin.post(f"/gateways/{gateway_id}/upstreams", json=guide_upstream)).json()
    body = {"name": "s", "upstream_id": upstream["id"], field: value}
    error = admin_error(
        await admin.post(f"/gateways/{gateway_id}/services", json=body), 422, "validation_failed"
    )
    assert error["details"] == [{"loc": field, "msg": msg}]


async def test_targets_per_upstream_are_capped(admin, gateway_id):
    target = {"provider": "openai", "default_model": "m"}
    body = {"name": "big", "targets": [target] * 257}
    error = admin_error(
        await admin.post(f"/gateways/{gateway_id}/upstreams", json=body), 422, "validation_failed"
    )
    assert {"loc": "targets", "msg": "has 257 targets: at most 256"} in error["details"]
    # At the cap: valid (checked without building 256 actors here).
    at_cap = serde.structure({"name": "big", "targets": [target] * 256}, Upstream)
    assert check_upstream(at_cap) == []


# --- cross-site rules (item 4) ---------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_writes_need_a_json_content_type(gateway, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    async with httpx2.AsyncClient(base_url=gateway.admin_url) as client:
        response = await client.post("/api/v1/gateways", content=b'{"name": "x"}', headers=headers)
    error = admin_error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"]
    assert not gateway.catalog.snapshot.gateways  # nothing was created


async def test_a_json_content_type_with_parameters_is_fine(admin):
    response = await post_raw(
        admin, "/gateways", b'{"name": "x"}', **{"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example"},
        {"Host": "evil.example:8080"},
        {"Host": "127.0.0.1:1"},  # the right host, another port: not this listener
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["host", "host-port", "wrong-port", "origin", "null-origin", "fetch-site"],
)
async def test_a_web_page_cannot_use_the_token_less_admin_api(gateway, headers):
    async with httpx2.AsyncClient(base_url=gateway.admin_url) as client:
        write = await client.post("/api/v1/gateways", json={"name": "x"}, headers=headers)
        read = await client.get("/api/v1/gateways", headers=headers)
    admin_error(write, 403, "permission_denied")
    admin_error(read, 403, "permission_denied")
    assert not gateway.catalog.snapshot.gateways


async def test_the_listeners_own_names_are_accepted(gateway):
    port = gateway.admin_url.rsplit(":", 1)[1]
    async with httpx2.AsyncClient(base_url=gateway.admin_url) as client:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            response = await client.get(
                "/api/v1/gateways", headers={"Host": host, "Origin": f"http://{host}"}
            )
            assert response.status_code == 200, (host, response.text)


async def test_an_allow_list_adds_host_names():
    with trio.fail_after(30):
        async with open_gateway(admin_hosts=("admin.internal",)) as gw:
            async with httpx2.AsyncClient(base_url=gw.admin_url) as client:
                allowed = await client.get("/api/v1/gateways", headers={"Host": "admin.internal:1"})
                refused = await client.get("/api/v1/gateways", headers={"Host": "other.internal"})
    assert allowed.status_code == 200
    admin_error(refused, 403, "permission_denied")


async def test_with_a_token_the_host_is_free_but_origins_are_still_checked():
    with trio.fail_after(30):
        async with open_gateway(admin_token="t0ken-t0ken-t0ken") as gw:
            auth = {"Authorization": "Bearer t0ken-t0ken-t0ken"}
            async with httpx2.AsyncClient(base_url=gw.admin_url, headers=auth) as client:
                behind_a_proxy = await client.get(
                    "/api/v1/gateways", headers={"Host": "gw.example"}
                )
                cross_origin = await client.get(
                    "/api/v1/gateways", headers={"Origin": "http://evil.example"}
                )
    assert behind_a_proxy.status_code == 200
    admin_error(cross_origin, 403, "permission_denied")


@pytest.mark.parametrize("path", ["/api//v1/gateways", "//api/v1/gateways", "/api/v1//gateways"])
async def test_double_slashes_are_not_redirected_by_host(gateway, path):
    async with httpx2.AsyncClient(base_url=gateway.admin_url) as client:
        response = await client.get(path, headers={"Host": gateway.admin_url.split("//")[1]})
    admin_error(response, 404, "not_found")
    assert "location" not in response.headers


# --- Hypothesis: anything at all -----------------------------------------------------

# Text with every code point, lone surrogates included.
TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["name", "algorithm", "targets", "health_checks", "model_fallback", "default_max_tokens"]
TARGET_FIELDS = [
    "provider",
    "base_url",
    "path",
    "weight",
    "priority",
    "default_model",
    "models",
    "credentials",
    "headers",
    "max_in_flight",
]


@st.composite
def mutated_upstreams(draw, base: dict) -> bytes:
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            body[draw(st.sampled_from(FIELDS))] = draw(JSON_VALUES)
        elif isinstance(body.get("targets"), list) and body["targets"]:
            target = body["targets"][0]
            if isinstance(target, dict):
                target[draw(st.sampled_from(TARGET_FIELDS))] = draw(JSON_VALUES)
    return json.dumps(body).encode()


GUIDE = json.loads(
    (__import__("pathlib").Path(__file__).parents[2] / "examples/guide-upstream.json").read_text()
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    bodies=st.lists(
        mutated_upstreams(GUIDE) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        min_size=15,
        max_size=15,
    )
)
async def test_hypothesis_admin_writes_never_fail_the_gateway(bodies):
    with trio.fail_after(30):
        async with open_gateway() as gw:
            async with httpx2.AsyncClient(base_url=gw.admin_url + "/api/v1") as admin:
                gid = (await admin.post("/gateways", json={"name": "g"})).json()["id"]
                for raw in bodies:
                    response = await post_raw(admin, f"/gateways/{gid}/upstreams", raw)
                    assert response.status_code in (201, 409, 422), response.text
                    if response.status_code != 201:
                        admin_error(
                            response, response.status_code, response.json()["error"]["type"]
                        )
                        continue
                    upstream_id = response.json()["id"]
                    shown = await admin.get(f"/gateways/{gid}/upstreams/{upstream_id}")
                    assert shown.status_code == 200
                    put_back = await admin.put(
                        f"/gateways/{gid}/upstreams/{upstream_id}", json=shown.json()
                    )
                    assert put_back.status_code == 200, put_back.text
                    health = await admin.get(f"/gateways/{gid}/upstreams/{upstream_id}/health")
                    assert health.status_code == 200 and health.json()["problem"] is None
                ready = (await admin.get(gw.admin_url + "/readyz")).json()
                assert ready["problems"] == []


async def test_messages_name_entities_with_the_right_article(admin, gateway_id, guide_upstream):
    path = f"/gateways/{gateway_id}/upstreams"
    assert (await admin.post(path, json=guide_upstream)).status_code == 201
    error = admin_error(await admin.post(path, json=guide_upstream), 409, "conflict")
    assert error["message"] == (
        "an upstream named 'ai-providers-upstream' already exists in this gateway"
    )
    keys = f"/gateways/{gateway_id}/keys"
    assert (await admin.post(keys, json={"name": "k"})).status_code == 201
    error = admin_error(await admin.post(keys, json={"name": "k"}), 409, "conflict")
    assert error["message"] == "an API key named 'k' already exists in this gateway"
