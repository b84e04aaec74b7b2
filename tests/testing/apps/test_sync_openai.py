"""A synchronous application on the OpenAI SDK, tested through the gateway: plain def tests."""

import openai

from trio_gateway.testing.fake import Fault


def ask(client: openai.OpenAI, question: str) -> str:
    """The application's code: one question, one answer."""
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    return reply.choices[0].message.content


def test_the_app_is_answered_while_its_provider_fails(gateway_stack):
    stack = gateway_stack()  # fakes "primary" and "backup" (the fallback tier)
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.key, max_retries=0, timeout=10)
    stack.fakes["primary"].set_faults(Fault.error(503))

    for _ in range(5):
        assert ask(client, "hi") == "Hello from gpt-4o-mini! You said: hi"

    # Three 503s in a row ejected the primary: the last two calls went straight to the backup.
    assert [r.status for r in stack.fakes["primary"].requests] == [503, 503, 503]
    assert len(stack.fakes["backup"].requests) == 5
    assert stack.health()["primary"].state == "ejected"


def test_a_stream_cut_after_its_first_words_ends_with_an_error(gateway_stack):
    stack = gateway_stack()
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.key, max_retries=0, timeout=10)
    stack.fakes["primary"].set_faults(Fault.cut_stream(after_chunks=3))

    words = []
    try:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        for chunk in stream:
            words.append(chunk.choices[0].delta.content or "")
    except openai.APIError as exc:
        error = exc  # the gateway ended the stream with an error event: never a silent cut
    else:
        error = None

    assert words and "".join(words) != "Hello from gpt-4o-mini! You said: hi"
    assert error is not None
