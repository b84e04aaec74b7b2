"""Where each provider lives, which of its APIs a target calls, and how it authenticates.

Static data, sans-IO. A target's own ``base_url``, ``path``, ``credentials`` and
``headers`` override these defaults. ``{model}`` in a path is replaced by the model
sent (Azure OpenAI puts the deployment in the URL).

A target's ``path`` is its *generation* API's: chat completions for the OpenAI
dialect, Messages for Anthropic. Its other APIs (:class:`~.formats.Api`) are found
beside it: the path's last segments (``/chat/completions``, ``/messages``) are
replaced by the other API's (``/embeddings``, ``/responses``,
``/messages/count_tokens``), its query kept. So ``/openai/v1/chat/completions``
has its embeddings at ``/openai/v1/embeddings``, and Azure's
``/openai/deployments/{model}/chat/completions?api-version=...`` at
``/openai/deployments/{model}/embeddings?api-version=...``. A path that does not end
that way has no other API. Azure's Responses API is the exception: it lives outside
the deployments, at ``/openai/v1/responses``, whatever the target's ``path``.

Which APIs a provider has: OpenAI-dialect providers chat completions, embeddings and
(when the target serves it itself, :attr:`Endpoint.native_responses`) the Responses
API; Anthropic Messages and token counting. Everything is resolved once per
configuration (:meth:`Endpoint.of`), never per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from trio_gateway import __version__
from trio_gateway.config.models import Provider, Target
from trio_gateway.providers.formats import Api, ApiFormat

AZURE_API_VERSION = "2024-10-21"
#: The last segments of each API's path, which a target's own ``path`` is read by.
SUFFIXES: Mapping[Api, str] = {
    Api.CHAT: "/chat/completions",
    Api.MESSAGES: "/messages",
    Api.RESPONSES: "/responses",
    Api.EMBEDDINGS: "/embeddings",
    Api.COUNT_TOKENS: "/messages/count_tokens",
}


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
    #: The provider's APIs besides ``path``'s, and their default paths.
    paths: Mapping[Api, str] = attrs.field(factory=dict)
    #: Of those, the ones whose path does not follow a target's own ``path``.
    fixed: frozenset[Api] = frozenset()
    #: Whether its targets serve the Responses API themselves unless they say otherwise.
    native_responses: bool = False

    @property
    def api(self) -> Api:
        """The generation API, the one ``path`` is for."""
        return Api.MESSAGES if self.format is ApiFormat.ANTHROPIC else Api.CHAT


_OPENAI_PATHS = {Api.RESPONSES: "/v1/responses", Api.EMBEDDINGS: "/v1/embeddings"}

PROVIDERS: Mapping[Provider, ProviderInfo] = {
    Provider.OPENAI: ProviderInfo(
        ApiFormat.of_provider(Provider.OPENAI),
        "https://api.openai.com",
        "/v1/chat/completions",
        paths=_OPENAI_PATHS,
        native_responses=True,
    ),
    Provider.ANTHROPIC: ProviderInfo(
        ApiFormat.of_provider(Provider.ANTHROPIC),
        "https://api.anthropic.com",
        "/v1/messages",
        {"anthropic-version": "2023-06-01"},
        auth_header="x-api-key",
        auth_scheme=None,
        paths={Api.COUNT_TOKENS: "/v1/messages/count_tokens"},
    ),
    Provider.OPENAI_COMPATIBLE: ProviderInfo(
        ApiFormat.of_provider(Provider.OPENAI_COMPATIBLE),
        None,
        "/v1/chat/completions",
        paths=_OPENAI_PATHS,
    ),
    Provider.AZURE_OPENAI: ProviderInfo(
        ApiFormat.of_provider(Provider.AZURE_OPENAI),
        None,
        f"/openai/deployments/{{model}}/chat/completions?api-version={AZURE_API_VERSION}",
        probe_path=f"/openai/models?api-version={AZURE_API_VERSION}",
        auth_header="api-key",
        auth_scheme=None,
        paths={
            # Azure's v1 API: the deployment goes in the body's "model", no api-version.
            Api.RESPONSES: "/openai/v1/responses",
            Api.EMBEDDINGS: f"/openai/deployments/{{model}}/embeddings?api-version={AZURE_API_VERSION}",
        },
        fixed=frozenset({Api.RESPONSES}),
    ),
}


def sibling_path(path: str, api: Api, other: Api) -> str | None:
    """``other``'s path beside ``path`` (``api``'s), or ``None`` if ``path`` does not end as ``api``'s.

    The query stays: ``/x/chat/completions?v=1`` → ``/x/embeddings?v=1``.
    """
    head, sep, query = path.partition("?")
    suffix = SUFFIXES[api]
    if not head.endswith(suffix):
        return None
    return head[: -len(suffix)] + SUFFIXES[other] + sep + query


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


#: Headers every provider request carries unless the target sets its own.
GATEWAY_HEADERS = (("user-agent", f"trio-gateway/{__version__}"),)


@attrs.frozen
class Endpoint:
    """A target's resolved URL templates and headers, computed once per configuration.

    Headers come in three layers, later ones winning: the provider's defaults
    (``anthropic-version``), what the client sent, and the target's own
    ``headers`` and ``credentials``. They are the same for every API of the target.
    """

    format: ApiFormat
    #: The generation API's URL template (``path``'s).
    url: str
    base_url: str
    probe_path: str
    defaults: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    own_names: frozenset[str]
    #: The URL template of every API the target has, the generation API's included.
    urls: tuple[tuple[Api, str], ...] = ()
    #: It serves ``/v1/responses`` itself: Responses requests go to it as they came.
    native_responses: bool = False

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
        path = target.path or info.path
        urls = {info.api: base + path}
        for api, default in info.paths.items():
            if target.path is None or api in info.fixed:
                urls[api] = base + default
            elif (sibling := sibling_path(target.path, info.api, api)) is not None:
                urls[api] = base + sibling
        native = (
            info.native_responses if target.native_responses is None else target.native_responses
        )
        if native and Api.RESPONSES not in urls:
            if target.native_responses:
                raise ValueError(
                    f"native_responses needs the Responses API's path: 'path' must end with "
                    f"{SUFFIXES[info.api]!r} to find it beside ({path!r} does not)"
                    if info.format is ApiFormat.OPENAI
                    else f"provider {target.provider.value!r} has no Responses API"
                )
            native = False  # a path that hides it: the target is sent translations
        if not native:
            urls.pop(Api.RESPONSES, None)
        return cls(
            format=info.format,
            url=urls[info.api],
            base_url=base,
            probe_path=info.probe_path,
            defaults=tuple(
                (n, v) for n, v in (*info.headers.items(), *GATEWAY_HEADERS) if n not in own
            ),
            headers=tuple(own.items()),
            own_names=frozenset(own),
            urls=tuple(urls.items()),
            native_responses=native,
        )

    @property
    def api(self) -> Api:
        """The generation API (chat completions or Messages), the one ``path`` is for."""
        return Api.MESSAGES if self.format is ApiFormat.ANTHROPIC else Api.CHAT

    def serves(self, api: Api) -> bool:
        """Has the target a path for ``api`` (an API of its provider, called as it is)?"""
        return any(a is api for a, _ in self.urls)

    def url_template(self, api: Api) -> str | None:
        for a, url in self.urls:
            if a is api:
                return url
        return None

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

    def url_for(self, model: str, api: Api | None = None) -> str:
        url = self.url if api is None else self.url_template(api)
        if url is None:
            raise LookupError(f"the target has no {api} API")
        return url.replace("{model}", model) if "{model}" in url else url
