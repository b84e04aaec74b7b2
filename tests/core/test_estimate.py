"""The token estimate a request reserves before it is sent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_gateway.core.estimate import IMAGE, PER_MESSAGE, PER_REQUEST, Estimate, estimate

TEXT = "x" * 400  # 100 tokens


def test_output_is_the_most_the_request_may_produce_in_each_dialect():
    assert estimate({"max_tokens": 300}, 4096).output_tokens == 300
    assert estimate({"max_completion_tokens": 200, "max_tokens": 900}, 4096).output_tokens == 200
    assert estimate({"max_output_tokens": 50}, 4096).output_tokens == 50  # Responses
    assert estimate({}, 4096).output_tokens == 4096  # the upstream's default_max_tokens
    assert estimate({"max_tokens": 100, "n": 3}, 4096).output_tokens == 300
    assert estimate({"max_tokens": "lots"}, 1000).output_tokens == 1000


def test_input_counts_the_prompt_the_same_in_every_dialect():
    chat = {"messages": [{"role": "system", "content": TEXT}, {"role": "user", "content": TEXT}]}
    messages = {
        "system": TEXT,
        "messages": [{"role": "user", "content": [{"type": "text", "text": TEXT}]}],
    }
    responses = {"instructions": TEXT, "input": [{"role": "user", "content": TEXT}]}
    assert estimate(chat, 1).input_tokens == PER_REQUEST + 200 + 2 * PER_MESSAGE
    assert estimate(messages, 1).input_tokens == PER_REQUEST + 200 + PER_MESSAGE
    assert estimate(responses, 1).input_tokens == PER_REQUEST + 200 + PER_MESSAGE
    assert estimate({"input": TEXT}, 1).input_tokens == PER_REQUEST + 100


def test_images_count_a_fixed_amount_not_their_base64():
    data = "data:image/png;base64," + "A" * 200_000
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": TEXT},
                    {"type": "image_url", "image_url": {"url": data}},
                ],
            }
        ]
    }
    assert estimate(chat, 1).input_tokens == PER_REQUEST + PER_MESSAGE + 100 + IMAGE
    anthropic = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "data": "A" * 99_999}}],
            }
        ]
    }
    assert estimate(anthropic, 1).input_tokens == PER_REQUEST + PER_MESSAGE + IMAGE


def test_tools_and_non_ascii_text_count_too():
    tools = {"tools": [{"name": "lookup", "description": TEXT}]}
    assert estimate(tools, 1).input_tokens == PER_REQUEST + 2 + 100
    assert estimate({"messages": [{"content": "é" * 10 + "日本"}]}, 1).input_tokens == (
        PER_REQUEST + PER_MESSAGE + 5 + 2
    )


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=50,
    )
)
def test_any_body_gets_an_estimate(body):
    found = estimate(body if not isinstance(body, dict) else {"messages": body}, 16)
    assert isinstance(found, Estimate) and found.input_tokens >= 0 and found.output_tokens >= 16
