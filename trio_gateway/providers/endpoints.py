"""Where each provider lives and how it authenticates. Static data, sans-IO.

A target's own ``base_url``, ``path``, ``credentials`` and ``headers`` override
these defaults. ``{model}`` in a path is replaced by the model sent (Azure
OpenAI puts the deployment in the URL).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from trio_gateway.config.models import Provider, Target
from trio_gateway.providers.formats import ApiFormat

AZURE_API_VERSION = "2024-10-21"


@attrs.frozen
class ProviderInfo:
    """A provider's defaults. Its dialect comes from the one provider-to-dialect table,
    :meth:`ApiFormat.of_provider`, which the translators use too."""

    format: ApiFormat
    #: ``None``: the target must set ``base_url`` (there is no public default).
    base_url: str | None
    path: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: What an active health probe ``GET``s by default: the model list.
    probe_path: str = "/v1/models"
    #: The header credentials go in when a target names none, and its scheme.
    auth_header: str = "authorization"
    auth_scheme: str | None = "Bearer"


PROVIDERS: Mapping[Provider, ProviderInfo] = {
    Provider.OPENAI: ProviderInfo(
        ApiFormat.of_provider(Provider.OPENAI), "https://api.openai.com", "/v1/chat/completions"
    ),
    Provider.ANTHROPIC: ProviderInfo(
        ApiFormat.of_provider(Provider.ANTHROPIC),
        "https://api.anthropic.com",
        "/v1/messages",
        {"anthropic-version": "2023-06-01"},
        auth_header="x-api-key",
        auth_scheme=None,
    ),
    Provider.OPENAI_COMPATIBLE: ProviderInfo(
        ApiFormat.of_provider(Provider.OPENAI_COMPATIBLE), None, "/v1/chat/completions"
    ),
    Provider.AZURE_OPENAI: ProviderInfo(
        ApiFormat.of_provider(Provider.AZURE_OPENAI),
        None,
        f"/openai/deployments/{{model}}/chat/completions?api-version={AZURE_API_VERSION}",
        probe_path=f"/openai/models?api-version={AZURE_API_VERSION}",
        auth_header="api-key",
        auth_scheme=None,
    ),
}


def credential_header(target: Target) -> tuple[str, str]:
    """The (lower-case) header name and value a target's credentials are sent as."""
    credentials = target.credentials
    assert credentials is not None
    if credentials.header_name:
        return credentials.header_name.lower(), credentials.header_value
    info = PROVIDERS[target.provider]
    value = credentials.header_value
    if info.auth_scheme and not value.startswith(f"{info.auth_scheme} "):
        value = f"{info.auth_scheme} {value}"
    return info.auth_header, value


@attrs.frozen
class Endpoint:
    """A target's resolved URL template and headers, computed once per configuration.

    Headers come in three layers, later ones winning: the provider's defaults
    (``anthropic-version``), what the client sent, and the target's own
    ``headers`` and ``credentials``.
    """

    format: ApiFormat
    url: str
    base_url: str
    probe_path: str
    defaults: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    own_names: frozenset[str]

    @classmethod
    def of(cls, target: Target) -> Endpoint:
        info = PROVIDERS[target.provider]
        base = target.base_url or info.base_url
        if base is None:
            raise ValueError(f"provider {target.provider.value!r} needs a base_url")
        own = {name.lower(): value for name, value in target.headers.items()}
        if target.credentials is not None:
            name, value = credential_header(target)
            own[name] = value
        own["content-type"] = "application/json"
        return cls(
            format=info.format,
            url=base + (target.path or info.path),
            base_url=base,
            probe_path=info.probe_path,
            defaults=tuple((n, v) for n, v in info.headers.items() if n not in own),
            headers=tuple(own.items()),
            own_names=frozenset(own),
        )

    def request_headers(self, client: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers to send: defaults, then the client's (lower-cased names), then ours."""
        own = self.own_names
        sent = {name for name, _ in client}
        headers = [(n, v) for n, v in self.defaults if n not in sent]
        headers += [(n, v) for n, v in client if n not in own]
        headers += self.headers
        return headers

    def probe_url(self, path: str | None) -> str:
        return self.base_url + (path or self.probe_path)

    def url_for(self, model: str) -> str:
        return self.url.replace("{model}", model) if "{model}" in self.url else self.url
