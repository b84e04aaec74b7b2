"""The count_tokens estimate for targets that cannot count."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from anthropic.types import MessageTokensCount
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.providers.translate import TranslationError
from trio_gateway.providers.translate.count_tokens import (
    IMAGE,
    PDF_PAGE,
    PER_MESSAGE,
    PER_REQUEST,
    TOOLS,
    count_tokens_estimate,
    estimate_input_tokens,
    text_tokens,
)


def body(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": list(messages), **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def test_the_answer_is_anthropics_shape_labelled_as_an_estimate():
    answer = count_tokens_estimate(body(user("Hello, world")))
    parsed = MessageTokensCount.model_validate(answer)
    assert parsed.input_tokens == PER_REQUEST + PER_MESSAGE + 3  # 12 ASCII characters
    assert parsed.model_extra == {"estimated": True}


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        ("abcd", 1),
        ("abcde", 2),
        ("héllo", 1 + 1),  # 4 ASCII, 1 other
        ("日本語のテキスト", 8),  # one per CJK character
        ("Привет", 3),  # Cyrillic: one per 2 characters
    ],
)
def test_text(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


def test_english_prose_is_near_what_tokenizers_count():
    # "The quick brown fox jumps over the lazy dog." is 10 tokens for cl100k.
    assert 10 <= text_tokens("The quick brown fox jumps over the lazy dog.") <= 12


def test_system_tools_and_blocks_all_count():
    plain = estimate_input_tokens(body(user("hi")))
    with_system = estimate_input_tokens(
        body(user("hi"), system=[{"type": "text", "text": "x" * 40}])
    )
    assert with_system == plain + 10
    tool = {"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}
    with_tools = estimate_input_tokens(body(user("hi"), tools=[tool]))
    assert with_tools > plain + TOOLS
    image = {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}
    assert estimate_input_tokens(body(user([image]))) == PER_REQUEST + PER_MESSAGE + IMAGE
    loop = body(
        user("call it"),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
        },
        user(
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "text", "text": "x" * 8}],
                }
            ]
        ),
    )
    assert estimate_input_tokens(loop) > estimate_input_tokens(body(user("call it")))


def test_pdf_pages_are_counted_in_the_file():
    pdf = b"%PDF-1.4\n1 0 obj <</Type /Pages /Kids [2 0 R 3 0 R]>>\n2 0 obj <</Type /Page>>\n3 0 obj <</Type/Page>>\n"
    doc = {
        "type": "document",
        "source": {
            "type": "base64",
            "media_type": "application/pdf",
            "data": base64.b64encode(pdf).decode(),
        },
    }
    assert estimate_input_tokens(body(user([doc]))) == PER_REQUEST + PER_MESSAGE + 2 * PDF_PAGE


@pytest.mark.parametrize(
    ("request_body", "loc"),
    [
        ([], "$"),
        ({"messages": [user("x")]}, "model"),
        (body(), "messages"),
        (body({"role": "system", "content": "x"}), "messages[0].role"),
        (body(user(5)), "messages[0].content"),
        (body(user([{"type": "text"}])), "messages[0].content[0].text"),
        (body(user("x"), system=5), "system"),
        (body(user("x"), tools={}), "tools"),
    ],
)
def test_bad_requests_are_a_400_naming_the_field(request_body: Any, loc: str) -> None:
    with pytest.raises(TranslationError) as info:
        estimate_input_tokens(request_body)
    assert info.value.status == 400 and info.value.details[0].loc == loc


_texts = st.text(max_size=200)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["user", "assistant"]), _texts), min_size=1, max_size=8),
    _texts,
)
def test_more_text_never_counts_less(turns: list[tuple[str, str]], extra: str) -> None:
    messages = [{"role": role, "content": text} for role, text in turns]
    base = estimate_input_tokens(body(*messages))
    assert base >= PER_REQUEST + PER_MESSAGE * len(turns)
    assert base >= sum(len(text) for _, text in turns) // 4
    longer = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + extra}]
    assert estimate_input_tokens(body(*longer)) >= base
