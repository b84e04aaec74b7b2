"""Failover across attempts: when to stop, and what to answer when nothing worked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.core.failover import AttemptRecord, Exchange, render_trail
from trio_gateway.errors import (
    Answer,
    AttemptError,
    CredentialRejected,
    DeadlineExceeded,
    FirstByteTimeout,
    ModelUnavailable,
    RateLimited,
    TargetBusy,
    Untranslatable,
    UpstreamConnectError,
    UpstreamStatusError,
    ValidationFailed,
)

ANSWER = Answer(503, [("content-type", "application/json")], b'{"error": "down"}')


def record(ex: Exchange, target: str, error: AttemptError | None) -> None:
    word = error.word if error is not None else "200"
    ex.record(AttemptRecord(target, "openai", "m", word, 12.0), error)


def test_each_target_once_and_skips_do_not_count():
    ex = Exchange(deadline=100.0, max_attempts=2)
    record(ex, "a", TargetBusy("full"))
    record(ex, "b", Untranslatable(ValidationFailed.single("x", "no")))
    assert ex.may_try(0.0) and ex.made == 0 and ex.tried == {"a", "b"}
    record(ex, "c", UpstreamConnectError("refused"))
    record(ex, "d", UpstreamConnectError("refused"))
    assert not ex.may_try(0.0)


def test_no_attempt_close_to_the_deadline_and_none_after_a_final_failure():
    ex = Exchange(deadline=10.0, max_attempts=5)
    assert ex.may_try(9.98) and not ex.may_try(9.995)
    record(ex, "a", DeadlineExceeded("late"))
    assert not ex.may_try(0.0)


def test_the_last_error_a_provider_answered_is_relayed_not_a_credential_refusal():
    ex = Exchange(deadline=100.0, max_attempts=5)
    record(ex, "a", UpstreamStatusError(503, "HTTP 503", answer=ANSWER))
    record(ex, "b", CredentialRejected(401, "b"))
    record(ex, "c", FirstByteTimeout("silent"))
    conclusion = ex.conclude("m")
    assert conclusion.answer is ANSWER and conclusion.record.target_id == "a"


def test_a_429_and_an_error_of_the_model_are_relayed_as_the_provider_said():
    for error in (
        RateLimited("HTTP 429", retry_after=3.0, answer=ANSWER),
        ModelUnavailable(400, "context", answer=ANSWER),
    ):
        ex = Exchange(deadline=100.0, max_attempts=5)
        record(ex, "a", error)
        assert ex.conclude("m").answer is ANSWER


def test_a_refused_credential_is_a_502_of_ours():
    ex = Exchange(deadline=100.0, max_attempts=5)
    record(ex, "a", CredentialRejected(403, "a"))
    conclusion = ex.conclude("m")
    assert conclusion.answer is None
    assert conclusion.error.status == 502
    assert "rejected the gateway's credential" in conclusion.message


def test_untranslatable_everywhere_is_the_clients_error():
    ex = Exchange(deadline=100.0, max_attempts=5)
    cause = ValidationFailed.single("messages[0]", "audio is not supported")
    record(ex, "a", Untranslatable(cause))
    assert ex.conclude("m").error is cause


def test_every_target_full_is_a_429_and_nothing_at_all_a_503():
    ex = Exchange(deadline=100.0, max_attempts=5)
    record(ex, "a", TargetBusy("full"))
    busy = ex.conclude("m").error
    assert busy.status == 429 and busy.headers == {"Retry-After": "1"}
    nothing = Exchange(deadline=100.0, max_attempts=5).conclude("m")
    assert nothing.error.status == 503 and nothing.record is None
    assert "model 'm'" in nothing.error.message


def test_otherwise_the_last_failure_names_itself():
    ex = Exchange(deadline=100.0, max_attempts=5)
    record(ex, "a", UpstreamConnectError("refused"))
    record(ex, "b", FirstByteTimeout("no answer within 30 s"))
    conclusion = ex.conclude("m")
    assert conclusion.error.status == 504 and conclusion.record.target_id == "b"
    assert (
        conclusion.message == "2 attempt(s) failed; last: first_byte_timeout: no answer within 30 s"
    )
    assert (
        render_trail(ex.trail)
        == "a;outcome=connect_error;ms=12, b;outcome=first_byte_timeout;ms=12"
    )


ERRORS = [
    lambda: UpstreamConnectError("x"),
    lambda: FirstByteTimeout("x"),
    lambda: TargetBusy("x"),
    lambda: Untranslatable(ValidationFailed.single("a", "b")),
    lambda: UpstreamStatusError(503, "x", answer=ANSWER),
    lambda: RateLimited("x", retry_after=None, answer=ANSWER),
    lambda: CredentialRejected(401, "t"),
    lambda: DeadlineExceeded("x"),
    lambda: None,
]


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from(ERRORS), max_size=12),
    max_attempts=st.integers(1, 6),
)
def test_an_exchange_stops_when_it_must_and_always_has_an_answer(outcomes, max_attempts):
    ex = Exchange(deadline=100.0, max_attempts=max_attempts)
    tried = 0
    for i, make in enumerate(outcomes):
        if not ex.may_try(0.0):
            break
        error = make()
        record(ex, f"t{i}", error)
        tried += 1
        if error is None:
            return  # answered: the dispatcher returns the response
    assert ex.made <= max_attempts
    assert len(ex.tried) == tried  # each target once
    conclusion = ex.conclude("m")
    assert conclusion.answer is not None or 400 <= conclusion.error.status < 600
    if any(isinstance(e, CredentialRejected) for _, e in ex.failures) and conclusion.answer:
        assert conclusion.answer is ANSWER  # never the credential refusal's own body
