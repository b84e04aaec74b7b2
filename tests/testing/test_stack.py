"""run_stack: a stack in a thread of its own, driven from plain synchronous code."""

from __future__ import annotations

import threading

import httpx2
import pytest

from trio_gateway.errors import ValidationFailed
from trio_gateway.testing.fake import Fault, Outcome
from trio_gateway.testing.stack import StackSpec, run_stack

SPEC = {
    "fakes": [{"name": "primary"}, {"name": "backup"}],
    "upstream": {
        "targets": [{"fake": "primary"}, {"fake": "backup", "priority": 2}],
        "health_checks": {"passive": True, "threshold": 2, "interval": 60},
    },
    "service": {"first_byte_timeout": 0.5},
}


def chat(stack, **body):
    return httpx2.post(
        stack.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {stack.key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body},
        timeout=10,
    )


def test_a_blocking_client_in_the_calling_thread_is_answered():
    with run_stack(SPEC) as stack:
        response = chat(stack)
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"].endswith("You said: hi")
        received = stack.fakes["primary"].requests
        # The gateway sent the fake its own credential, not the client's key.
        assert received[0].header("authorization") == "Bearer sk-fake-primary"
        assert stack.key not in str(received[0].headers)


def test_faults_health_and_logs_are_reachable_from_the_calling_thread():
    with run_stack(SPEC) as stack:
        stack.fakes["primary"].set_faults(Fault.hang())
        assert stack.fakes["primary"].faults == (Fault.hang(),)
        for _ in range(3):
            assert chat(stack).status_code == 200
        health = stack.health()
        assert list(health) == ["primary", "backup"]
        assert health["primary"].state == "ejected" and health["primary"].ejections == 1
        assert health["backup"].state == "healthy"
        assert len(stack.fakes["primary"].requests) == 2
        assert {r.outcome for r in stack.fakes["primary"].requests} == {Outcome.DISCONNECTED}
        stack.fakes["primary"].reset()
        assert stack.fakes["primary"].requests == []
        assert stack.fakes["primary"].statistics().requests == 0


def test_the_handles_are_safe_from_several_threads():
    with run_stack(SPEC) as stack:
        errors = []

        def work() -> None:
            try:
                for _ in range(5):
                    assert chat(stack).status_code == 200
                    stack.fakes["backup"].statistics()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert stack.fakes["primary"].statistics().requests == 20


def test_targets_can_be_changed_under_a_running_stack():
    with run_stack(SPEC) as stack:
        stack.set_targets([{"fake": "backup"}])
        assert list(stack.health()) == ["backup"]
        assert chat(stack).status_code == 200
        assert len(stack.fakes["backup"].requests) == 1


def test_everything_stops_when_the_block_fails():
    with pytest.raises(RuntimeError, match="the test failed"), run_stack(SPEC) as stack:
        url = stack.proxy_url
        raise RuntimeError("the test failed")
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(url + "/v1/models", timeout=2)
    assert not [t for t in threading.enumerate() if t.name == "trio-gateway-stack"]


def test_a_bad_spec_is_refused_before_any_thread_starts():
    bad = {**SPEC, "upstream": {"targets": [{"fake": "nobody"}]}}
    with pytest.raises(ValidationFailed) as caught, run_stack(bad):
        pass  # pragma: no cover
    assert [p.loc for p in caught.value.details] == ["upstream.targets[0].fake"]
    assert not [t for t in threading.enumerate() if t.name == "trio-gateway-stack"]


def test_a_stack_spec_checks_the_upstream_with_the_gateway_s_own_rules():
    with pytest.raises(ValidationFailed) as caught:
        StackSpec.of(
            {
                "fakes": [{"name": "a"}],
                "upstream": {"targets": [{"fake": "a", "weight": 0}], "algorithm": "fastest"},
                "service": {"idle_timeout": 0},
                "extra": 1,
            }
        )
    assert sorted(p.loc for p in caught.value.details) == [
        "extra",
        "service.idle_timeout",
        "upstream.algorithm",
        "upstream.targets[0].weight",
    ]
