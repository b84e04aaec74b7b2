"""Constrained scalar types of the configuration model, enforced by :mod:`trio_gateway.serde`.

``Annotated`` aliases whose metadata the converters check, so a bad value is reported
with its path (``targets[1].weight``). Apart from :mod:`~trio_gateway.config.models` so
that every model (the gateway's entities, the fault model shared with the fake
providers) can use them without importing the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import attrs


@attrs.frozen
class Between:
    """Inclusive numeric bounds; ``lo_open`` makes the lower bound exclusive."""

    lo: float
    hi: float
    lo_open: bool = False


@attrs.frozen
class Text:
    """A string of ``min_len``..``max_len`` characters with no control characters."""

    min_len: int = 1
    max_len: int = 256


class HeaderNameT:
    """An HTTP field name: an RFC 9110 token."""


class HeaderValueT:
    """An HTTP field value: visible characters, spaces and tabs only."""


class SecretT:
    """A credential: a non-empty HTTP field value."""


class UrlPathT:
    """An absolute URL path (``/v1/chat/completions``)."""


class BaseUrlT:
    """An ``http`` or ``https`` URL with a host and an optional path prefix."""


Name = Annotated[str, Text(1, 200)]
ModelName = Annotated[str, Text(1, 256)]
HeaderName = Annotated[str, HeaderNameT()]
HeaderValue = Annotated[str, HeaderValueT()]
Secret = Annotated[str, SecretT()]
UrlPath = Annotated[str, UrlPathT()]
BaseUrl = Annotated[str, BaseUrlT()]
Headers = Mapping[HeaderName, HeaderValue]
