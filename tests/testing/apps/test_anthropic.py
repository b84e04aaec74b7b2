"""An application on the Anthropic SDK, tested through the gateway: plain def tests."""

import anthropic

from trio_gateway.testing.fake import Fault

SPEC = {
    "fakes": [{"name": "claude"}, {"name": "openai"}],
    "upstream": {
        "targets": [
            {"fake": "claude", "provider": "anthropic"},
            {"fake": "openai", "provider": "openai", "priority": 2},
        ],
    },
}


def test_a_rate_limited_provider_is_failed_over_to_another_dialect(gateway_stack):
    stack = gateway_stack(SPEC)
    client = anthropic.Anthropic(base_url=stack.proxy_url, api_key=stack.key, max_retries=0)
    stack.fakes["claude"].set_faults(Fault.rate_limit(retry_after=30))

    with client.messages.stream(
        model="claude-3-5-haiku-20241022",
        max_tokens=100,
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        text = "".join(stream.text_stream)

    # The OpenAI-format fallback answered, translated to Anthropic's stream.
    assert text == "Hello from gpt-4o-mini! You said: hi"
    assert [r.status for r in stack.fakes["claude"].requests] == [429]


def test_the_client_sees_an_overloaded_error_when_every_provider_is(gateway_stack):
    stack = gateway_stack(SPEC)
    client = anthropic.Anthropic(base_url=stack.proxy_url, api_key=stack.key, max_retries=0)
    for fake in stack.fakes.values():
        fake.set_faults(Fault.overloaded())

    try:
        client.messages.create(
            model="claude-3-5-haiku-20241022",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
        )
    except anthropic.APIStatusError as exc:
        status = exc.status_code
    else:
        status = None

    assert status == 529
