"""Usage per key, model and UTC day, added up in memory between flushes. Sans-IO.

Every request of every key adds to one row of :class:`UsageBook` (a dict lookup
and a few additions); the runtime flushes the book to the store about once a
second (:meth:`UsageBook.drain`), where rows of every process add up, and puts a
batch back when the store could not take it (:meth:`UsageBook.restore`): usage is
never lost to an outage, only delayed. The usage endpoint reads the sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from trio_gateway.core.limits import day_of
from trio_gateway.providers.usage import Usage

#: A row's amounts, by index in the book's lists.
REQUESTS, INPUT, OUTPUT, CACHED, COST, REFUSED = range(6)


@attrs.frozen
class UsageRow:
    """What one key used of one model on one UTC day (``model`` ``""``: none named)."""

    key_id: str
    gateway_id: str
    model: str
    day: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    #: Requests the key's limits refused (not in ``requests``).
    refused: int = 0

    def values(self) -> tuple[str, str, str, str, int, int, int, int, float, int]:
        """The row as a store writes it, its fields in order (cost always a float)."""
        return (
            self.key_id,
            self.gateway_id,
            self.model,
            self.day,
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cached_tokens,
            float(self.cost),
            self.refused,
        )

    def __add__(self, other: UsageRow) -> UsageRow:
        return attrs.evolve(
            self,
            requests=self.requests + other.requests,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost=self.cost + other.cost,
            refused=self.refused + other.refused,
        )


class UsageBook:
    """Usage not yet flushed, by ``(key_id, gateway_id, model, day)``."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str, str], list[float]] = {}
        self._day = ""
        self._day_ends = -math.inf

    def __len__(self) -> int:
        return len(self._rows)

    def _row(self, key_id: str, gateway_id: str, model: str | None, wall: float) -> list[float]:
        if wall >= self._day_ends:
            self._day, self._day_ends = day_of(wall)
        index = (key_id, gateway_id, model or "", self._day)
        row = self._rows.get(index)
        if row is None:
            row = self._rows[index] = [0, 0, 0, 0, 0.0, 0]
        return row

    def add(
        self,
        key_id: str,
        gateway_id: str,
        model: str | None,
        wall: float,
        usage: Usage | None,
        cost: float,
    ) -> None:
        """One request that went out, with what it used (``None``: nothing reported)."""
        row = self._row(key_id, gateway_id, model, wall)
        row[REQUESTS] += 1
        if usage is not None:
            row[INPUT] += usage.input_tokens or 0
            row[OUTPUT] += usage.output_tokens or 0
            row[CACHED] += usage.cached_tokens or 0
        row[COST] += cost

    def refuse(self, key_id: str, gateway_id: str, model: str | None, wall: float) -> None:
        """One request the key's limits refused."""
        self._row(key_id, gateway_id, model, wall)[REFUSED] += 1

    def drain(self) -> list[UsageRow]:
        """Everything added since the last drain, as rows; the book is empty after."""
        rows, self._rows = self._rows, {}
        return [
            UsageRow(
                key_id,
                gateway_id,
                model,
                day,
                int(v[REQUESTS]),
                int(v[INPUT]),
                int(v[OUTPUT]),
                int(v[CACHED]),
                v[COST],
                int(v[REFUSED]),
            )
            for (key_id, gateway_id, model, day), v in rows.items()
        ]

    def restore(self, rows: Iterable[UsageRow]) -> None:
        """Put back rows a flush could not write (they are added to what came since)."""
        for r in rows:
            row = self._rows.setdefault(
                (r.key_id, r.gateway_id, r.model, r.day), [0, 0, 0, 0, 0.0, 0]
            )
            row[REQUESTS] += r.requests
            row[INPUT] += r.input_tokens
            row[OUTPUT] += r.output_tokens
            row[CACHED] += r.cached_tokens
            row[COST] += r.cost
            row[REFUSED] += r.refused

    def pending(self, key_id: str) -> list[UsageRow]:
        """This key's rows not flushed yet (without draining them)."""
        return [
            UsageRow(k, g, m, d, int(v[0]), int(v[1]), int(v[2]), int(v[3]), v[4], int(v[5]))
            for (k, g, m, d), v in self._rows.items()
            if k == key_id
        ]
