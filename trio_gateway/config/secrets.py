"""Secrets in the configuration: masking on the way out, keeping on the way back in.

What is secret is decided by where a value is, not by what its name looks like
(``X-Auth-Key``, ``Ocp-Apim-Subscription-Key``, ``X-Signature``... are all
credentials that no name pattern catches):

* a target's ``credentials.header_value``, always;
* the value of every header a target or a health check adds, unless the header
  is on :data:`PUBLIC_HEADERS`, a short list of headers known to carry no secret;
* the userinfo of a ``base_url`` (``https://user:password@host``).

A credential is returned as ``sk-…f3a9`` (scheme kept: ``Bearer sk-…f3a9``), a
URL's userinfo as ``…``. A client that GETs an upstream and PUTs it back sends
those masked values; :func:`unmask` swaps each one back for the stored secret it
stands for, so an edit of a weight never destroys a key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping

MASK = "…"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9-]*) (\S.*)$")

#: Headers whose values are shown as they are (lower-case names). Every other
#: header value a target or a probe sends is treated as a secret.
PUBLIC_HEADERS = frozenset(
    {
        "accept",
        "anthropic-beta",
        "anthropic-version",
        "openai-beta",
        "openai-organization",
        "openai-project",
        "user-agent",
        "x-title",
        "http-referer",
    }
)

KEY_PREFIX = "tgk_"


def is_secret_header(name: str) -> bool:
    return name.lower() not in PUBLIC_HEADERS


def mask(value: str) -> str:
    """``Bearer sk-proj-…f3a9``: never more than 7 characters, and only of a long secret.

    24 characters or more show the first 3 and the last 4; 12 to 23 the last 4;
    shorter ones nothing. A ``Scheme`` prefix (``Bearer``) is kept as it is.
    """
    if m := _SCHEME.match(value):
        return f"{m.group(1)} {mask(m.group(2))}"
    if len(value) >= 24:
        return f"{value[:3]}{MASK}{value[-4:]}"
    if len(value) >= 12:
        return f"{MASK}{value[-4:]}"
    return MASK


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header values as the admin API shows them: secret unless the name is public."""
    return {name: mask(v) if is_secret_header(name) else v for name, v in headers.items()}


def mask_url(url: str) -> str:
    """``https://…@host/v1`` for ``https://user:password@host/v1``; other URLs as they are."""
    scheme, sep, rest = url.partition("://")
    netloc_end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    _, at, host = rest[:netloc_end].rpartition("@")
    if not sep or not at:
        return url
    return f"{scheme}://{MASK}@{host}{rest[netloc_end:]}"


def is_masked(value: str) -> bool:
    return MASK in value


def unmask(
    value: str,
    preferred: Iterable[str],
    others: Iterable[str] = (),
    masker: Callable[[str], str] = mask,
) -> str | None:
    """The stored secret that ``value`` is the mask of, if ``value`` is a mask.

    ``preferred`` (the same target's own secret) wins; otherwise exactly one of
    ``others`` must match. ``None`` when none does, or when several different
    secrets mask alike (two short secrets both mask to ``…``): the client must then
    send the secret itself. ``masker`` is how the value was masked
    (:func:`mask_url` for a ``base_url``).
    """
    if not is_masked(value):
        return value
    for secret in preferred:
        if masker(secret) == value:
            return secret
    matches = {secret for secret in others if masker(secret) == value}
    return matches.pop() if len(matches) == 1 else None


def new_api_key() -> str:
    """A client key: 32 random bytes, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Keys carry 256 random bits, so a plain SHA-256 is as good as a slow hash here."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """What lists show of a key so people can tell keys apart: ``tgk_AbCd…``."""
    return key[: len(KEY_PREFIX) + 4] + MASK
