"""What a fake provider is told: its spec, and the faults it injects.

Plain frozen attrs classes, structured from JSON/YAML by :mod:`trio_gateway.serde`
(so a bad fault in a configuration file or a ``PUT /_fake/faults`` body is reported
by path, ``faults[1].status``). The fault model itself (:class:`Fault` and its
constructors) lives in :mod:`trio_gateway.config.faults`, shared with the gateway's
fault injection on live traffic; it is re-exported here, where the fakes' users have
always found it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any

import attrs

from trio_gateway.config.faults import (
    DEFAULT_AFTER_CHUNKS,
    DEFAULT_RETRY_AFTER,
    KIND_PARAMS,
    STREAM_KINDS,
    Count,
    Duration,
    Fault,
    FaultKind,
    Flap,
    Offset,
    Period,
    Probability,
    Status,
    Window,
    fault_from_json,
    fault_to_json,
    faults_from_json,
)
from trio_gateway.config.types import Between, ModelName, Name, Text

__all__ = [
    "DEFAULT_AFTER_CHUNKS",
    "DEFAULT_MODELS",
    "DEFAULT_RETRY_AFTER",
    "KIND_PARAMS",
    "STREAM_KINDS",
    "Count",
    "Duration",
    "FakeProviderSpec",
    "Fault",
    "FaultKind",
    "Flap",
    "Listen",
    "Offset",
    "Period",
    "Probability",
    "Status",
    "Window",
    "fault_from_json",
    "fault_to_json",
    "faults_from_json",
    "parse_listen",
]

Listen = Annotated[str, Text(1, 300)]


# --- the provider -----------------------------------------------------------------

#: Models a fake serves unless told otherwise: what examples, docs and SDK tests use.
DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4",
    "gpt-4-turbo",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-3.5-turbo",
    "o3-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "claude-3-7-sonnet-20250219",
    "claude-3-haiku-20240307",
    "claude-3-opus-20240229",
    "claude-sonnet-4-20250514",
    "claude-opus-4-20250514",
)

_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})$")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``, or ``ValueError``."""
    m = _LISTEN.match(listen)
    if m is None or int(m["port"]) > 65_535:
        raise ValueError(f"listen: must be HOST:PORT such as 127.0.0.1:8001, not {listen!r}")
    return m["v6"] or m["host"], int(m["port"])


def _tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class FakeProviderSpec:
    """One fake provider: it serves the OpenAI and the Anthropic API on one address.

    * ``api_key``: the credential it requires (OpenAI side: ``Authorization: Bearer
      <key>`` or Azure's ``api-key: <key>``; Anthropic side: ``x-api-key: <key>``,
      or ``Authorization: Bearer <key>`` as the Anthropic SDK 2.x sends it);
      ``None`` accepts any non-empty credential, but one must be sent.
    * ``models``: the models it serves; empty means any name. Either way names
      starting with ``claude`` are served on the Anthropic side only, and names of
      OpenAI's families (``gpt-``, ``o1``/``o3``/``o4``, ``text-embedding-``,
      ``chatgpt``) on the OpenAI side only, so a gateway that sends a model to the
      wrong API gets the 404 the real provider would send.
    * ``faults``: in effect from the start; change them at run time with
      :meth:`FakeProvider.set_faults` or ``PUT /_fake/faults``.
    * ``seed``: seeds ``probability`` and ``jitter``, so a run is reproducible.
    * ``keep_requests``: how many of the latest requests the log keeps.
    """

    name: Name
    listen: Listen = "127.0.0.1:0"
    api_key: Annotated[str, Text(1, 1000)] | None = attrs.field(default=None, repr=False)
    models: tuple[ModelName, ...] = attrs.field(default=DEFAULT_MODELS, converter=_tuple)
    faults: tuple[Fault, ...] = attrs.field(default=(), converter=_tuple)
    seed: int = 0
    keep_requests: Annotated[int, Between(1, 10_000_000)] = 10_000

    def __attrs_post_init__(self) -> None:
        parse_listen(self.listen)

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)
