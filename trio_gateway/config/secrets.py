"""Secrets in the configuration: masking on the way out, keeping on the way back in.

A credential is returned as ``sk-…f3a9`` (scheme kept: ``Bearer sk-…f3a9``). A client
that GETs an upstream and PUTs it back sends those masked values; :func:`unmask`
swaps each one back for the stored secret it stands for, so an edit of a weight
never destroys a key. Headers whose names look like credentials are treated the
same way.
"""

from __future__ import annotations

import hashlib
import re
import secrets

MASK = "…"
_SENSITIVE = re.compile(r"authorization|api[-_]?key|token|secret|password|cookie", re.I)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9-]*) (\S.*)$")

KEY_PREFIX = "tgk_"


def is_sensitive_header(name: str) -> bool:
    return bool(_SENSITIVE.search(name))


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


def is_masked(value: str) -> bool:
    return MASK in value


def unmask(value: str, preferred: list[str], others: list[str] = ()) -> str | None:
    """The stored secret that ``value`` is the mask of, if ``value`` is a mask.

    ``preferred`` (the same target's own secret) wins; otherwise exactly one of
    ``others`` must match. ``None`` when none does, or when several different
    secrets mask alike (two short secrets both mask to ``…``): the client must then
    send the secret itself.
    """
    if not is_masked(value):
        return value
    for secret in preferred:
        if mask(secret) == value:
            return secret
    matches = {secret for secret in others if mask(secret) == value}
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
