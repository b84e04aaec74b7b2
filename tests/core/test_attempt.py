"""One attempt's budgets and the meaning of an answer, sans-IO (``now`` is a number)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.core.attempt import (
    AttemptBudget,
    Budgets,
    Meaning,
    Phase,
    judge_status,
    parse_retry_after,
    retry_after,
)
from trio_gateway.errors import BodyTimeout, DeadlineExceeded, FirstByteTimeout, IdleTimeout

DEFAULTS = Budgets(first_byte_timeout=30.0, body_timeout=10.0, idle_timeout=60.0)


def start(now: float = 0.0, deadline: float = 120.0, budgets: Budgets = DEFAULTS) -> AttemptBudget:
    return AttemptBudget.start(budgets, deadline, now)


def test_no_answer_within_the_first_byte_budget():
    b = start()
    assert b.timer == 30.0
    assert isinstance(b.expired(), FirstByteTimeout)


def test_the_deadline_is_nobodys_fault_when_it_comes_first():
    b = start(now=100.0, deadline=120.0)
    assert b.timer == 120.0
    assert isinstance(b.expired(), DeadlineExceeded)


def test_a_whole_answer_that_stalls_after_its_headers_has_a_budget_of_its_own():
    b = start()
    b.headers(1.0, stream=False)
    assert b.phase is Phase.BODY and b.timer == 11.0
    b.progress(5.0)
    assert b.timer == 15.0
    assert isinstance(b.expired(), BodyTimeout)


def test_a_body_cut_short_by_the_deadline_blames_nobody():
    b = start(now=0.0, deadline=12.0)
    b.headers(5.0, stream=False)
    assert b.timer == 12.0 and isinstance(b.expired(), DeadlineExceeded)


def test_a_streams_first_byte_is_its_first_content_and_then_only_content_counts():
    b = start()
    b.headers(1.0, stream=True)
    assert b.phase is Phase.OPENING and b.timer == 30.0  # metadata does not move it
    assert isinstance(b.expired(), FirstByteTimeout)
    assert b.content(2.0) is True  # the commit
    assert b.phase is Phase.STREAMING and b.timer == 62.0 and b.first_byte_at == 2.0
    assert b.content(3.0) is False
    assert b.timer == 63.0
    assert isinstance(b.expired(), IdleTimeout)


def test_the_time_a_slow_client_takes_is_not_the_providers_idleness():
    b = start()
    b.headers(1.0, stream=True)
    b.content(2.0)
    b.paused(100.0)  # the client took 100 s to take the event it was sent
    assert b.timer == 162.0


def test_a_committed_stream_has_no_total_limit():
    b = start(deadline=10.0)
    b.headers(1.0, stream=True)
    b.content(2.0)
    b.content(500.0)
    assert b.timer == 560.0  # past the request's deadline: only silence ends a stream


@settings(max_examples=200, deadline=None)
@given(
    start_at=st.floats(0, 100),
    left=st.floats(0.01, 300),
    first_byte=st.floats(0.1, 100),
    body=st.floats(0.1, 100),
    steps=st.lists(st.floats(0, 50), max_size=10),
)
def test_a_whole_answer_never_outlives_the_deadline(start_at, left, first_byte, body, steps):
    b = AttemptBudget.start(Budgets(first_byte, body, 60.0), start_at + left, start_at)
    assert b.timer <= start_at + left
    now = start_at
    b.headers(now, stream=False)
    for step in steps:
        now += step
        b.progress(now)
        assert b.timer <= start_at + left


# --- meanings -----------------------------------------------------------------------------


def body(**error: object) -> bytes:
    return json.dumps({"error": error}).encode()


def test_statuses():
    assert judge_status(200) is Meaning.SUCCESS
    assert judge_status(429) is Meaning.RATE_LIMITED
    assert judge_status(401) is Meaning.CREDENTIAL and judge_status(403) is Meaning.CREDENTIAL
    for status in (500, 502, 503, 529, 408):
        assert judge_status(status) is Meaning.FAILURE
    assert judge_status(400, body(message="messages: required")) is Meaning.CLIENT_ERROR
    assert judge_status(422) is Meaning.CLIENT_ERROR
    assert judge_status(413) is Meaning.MODEL


def test_errors_of_the_model_are_not_the_clients():
    openai_context = body(
        message="This model's maximum context length is 8192 tokens.",
        type="invalid_request_error",
        code="context_length_exceeded",
    )
    anthropic_context = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 250000 tokens > 200000 maximum",
            },
        }
    ).encode()
    model_gone = body(message="The model `gpt-9` does not exist", code="model_not_found")
    anthropic_gone = json.dumps(
        {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-9"}}
    ).encode()
    assert judge_status(400, openai_context) is Meaning.MODEL
    assert judge_status(400, anthropic_context) is Meaning.MODEL
    assert judge_status(404, model_gone) is Meaning.MODEL
    assert judge_status(404, anthropic_gone) is Meaning.MODEL


def test_a_content_filter_refusal_stays_the_clients():
    refusal = body(
        message="Your request was rejected by the content filter's context window policy",
        code="content_filter",
    )
    assert judge_status(400, refusal) is Meaning.CLIENT_ERROR
    assert judge_status(400, b"not json") is Meaning.CLIENT_ERROR
    assert judge_status(404, body(message="no such route")) is Meaning.CLIENT_ERROR


def test_retry_after_in_its_three_spellings():
    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"retry-after": "10"}) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now_epoch=1445412480.0) == 10.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("nan") is None
