"""Which faults fire on a request: see :mod:`trio_gateway.core.faults`, re-exported here.

The plan is sans-IO and shared with the gateway's fault injection on live traffic,
so it lives in ``core``; the fakes' users have always found it here.
"""

from trio_gateway.core.faults import (
    END,
    FIRST_TOKEN,
    LATENCY,
    MALFORMED,
    NOTHING,
    PLAIN,
    RESPONSE,
    SLOTS,
    STALL,
    Decision,
    FaultPlan,
    FaultStatistics,
    RequestInfo,
    StreamShape,
    selects,
)

__all__ = [
    "END",
    "FIRST_TOKEN",
    "LATENCY",
    "MALFORMED",
    "NOTHING",
    "PLAIN",
    "RESPONSE",
    "SLOTS",
    "STALL",
    "Decision",
    "FaultPlan",
    "FaultStatistics",
    "RequestInfo",
    "StreamShape",
    "selects",
]
