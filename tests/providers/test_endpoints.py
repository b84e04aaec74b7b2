"""Each target's URL per API, resolved once per configuration (providers/endpoints.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_gateway.config.models import Credentials, Provider, Target, Upstream, check_upstream
from trio_gateway.providers.endpoints import SUFFIXES, Endpoint, sibling_path
from trio_gateway.providers.formats import Api
from trio_gateway.runtime.supervisor import preflight

BASE = "http://provider.test"


def endpoint(provider: str, **fields) -> Endpoint:
    return Endpoint.of(
        Target(provider=Provider(provider), base_url=fields.pop("base_url", BASE), **fields)
    )


def urls(e: Endpoint) -> dict[Api, str]:
    return dict(e.urls)


def test_each_provider_has_its_apis_at_their_public_paths():
    assert urls(endpoint("openai")) == {
        Api.CHAT: f"{BASE}/v1/chat/completions",
        Api.RESPONSES: f"{BASE}/v1/responses",
        Api.EMBEDDINGS: f"{BASE}/v1/embeddings",
    }
    assert urls(endpoint("anthropic")) == {
        Api.MESSAGES: f"{BASE}/v1/messages",
        Api.COUNT_TOKENS: f"{BASE}/v1/messages/count_tokens",
    }
    # Not native by default: Responses requests are translated to chat completions.
    assert urls(endpoint("openai-compatible")) == {
        Api.CHAT: f"{BASE}/v1/chat/completions",
        Api.EMBEDDINGS: f"{BASE}/v1/embeddings",
    }
    azure = endpoint("azure-openai", native_responses=True)
    assert urls(azure) == {
        Api.CHAT: f"{BASE}/openai/deployments/{{model}}/chat/completions?api-version=2024-10-21",
        Api.EMBEDDINGS: f"{BASE}/openai/deployments/{{model}}/embeddings?api-version=2024-10-21",
        Api.RESPONSES: f"{BASE}/openai/v1/responses",
    }
    assert azure.url_for("dep", Api.EMBEDDINGS).startswith(f"{BASE}/openai/deployments/dep/")


def test_native_responses_follows_the_provider_unless_the_target_says():
    assert endpoint("openai").native_responses is True
    assert endpoint("openai", native_responses=False).native_responses is False
    assert not endpoint("openai", native_responses=False).serves(Api.RESPONSES)
    assert endpoint("openai-compatible").native_responses is False
    assert endpoint("openai-compatible", native_responses=True).serves(Api.RESPONSES)
    assert endpoint("azure-openai").native_responses is False
    assert endpoint("anthropic").native_responses is False


def test_a_target_path_carries_its_prefix_and_query_to_the_other_apis():
    groq = endpoint("openai-compatible", path="/openai/v1/chat/completions", native_responses=True)
    assert urls(groq) == {
        Api.CHAT: f"{BASE}/openai/v1/chat/completions",
        Api.RESPONSES: f"{BASE}/openai/v1/responses",
        Api.EMBEDDINGS: f"{BASE}/openai/v1/embeddings",
    }
    azure = endpoint(
        "azure-openai",
        path="/openai/deployments/{model}/chat/completions?api-version=2025-01-01",
        native_responses=True,
    )
    assert urls(azure)[Api.EMBEDDINGS] == (
        f"{BASE}/openai/deployments/{{model}}/embeddings?api-version=2025-01-01"
    )
    assert urls(azure)[Api.RESPONSES] == f"{BASE}/openai/v1/responses"  # Azure's own place
    claude = endpoint("anthropic", path="/proxy/v1/messages")
    assert urls(claude)[Api.COUNT_TOKENS] == f"{BASE}/proxy/v1/messages/count_tokens"


def test_a_path_that_does_not_end_as_its_api_has_no_other_api():
    odd = endpoint("openai", path="/generate")
    assert urls(odd) == {Api.CHAT: f"{BASE}/generate"}
    assert odd.native_responses is False  # openai's default yields: Responses are translated
    with pytest.raises(ValueError, match="native_responses needs"):
        endpoint("openai-compatible", path="/generate", native_responses=True)


def upstream(**target) -> Upstream:
    credentials = Credentials(header_value="sk-x")
    return Upstream(name="u", targets=(Target(credentials=credentials, **target),))


def test_an_unservable_native_responses_is_refused_with_its_field():
    problems = check_upstream(upstream(provider=Provider.ANTHROPIC, native_responses=True))
    assert [p.loc for p in problems] == ["targets[0].native_responses"]
    problems = preflight(
        upstream(
            provider=Provider.OPENAI_COMPATIBLE,
            base_url=BASE,
            path="/generate",
            native_responses=True,
        )
    )
    assert [p.loc for p in problems] == ["targets[0]"]
    assert "native_responses needs" in problems[0].msg


SEGMENT = st.text("abcxyz-_.{}", min_size=1, max_size=6)


@given(
    prefix=st.lists(SEGMENT, max_size=3).map(lambda s: "".join("/" + x for x in s)),
    query=st.one_of(st.just(""), st.text("abc=&-0123456789", max_size=12).map(lambda q: "?" + q)),
    api=st.sampled_from([Api.CHAT, Api.MESSAGES]),
    other=st.sampled_from(list(SUFFIXES)),
)
def test_a_sibling_path_keeps_everything_but_the_last_segments(prefix, query, api, other):
    own = prefix + SUFFIXES[api] + query
    sibling = sibling_path(own, api, other)
    assert sibling == prefix + SUFFIXES[other] + query
    assert sibling_path(sibling, other, api) == own  # and back
    assert sibling_path(prefix + "/elsewhere" + query, api, other) is None
