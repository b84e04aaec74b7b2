"""Peak-EWMA latency estimate (as in Finagle and Linkerd). Sans-IO: ``now`` is passed in.

A slower sample replaces the estimate at once (the "peak"); a faster one is blended
in with a weight that grows with the time since the last sample. Reading the
estimate decays it towards zero with time constant ``tau``, so a target that
stopped getting traffic because it was slow looks cheaper and cheaper until it
is measured again: that is the exploration that brings a recovered target back.
"""

from __future__ import annotations

import math

import attrs

DEFAULT_TAU_S = 10.0


@attrs.define
class PeakEwma:
    tau: float = DEFAULT_TAU_S
    value: float | None = None
    stamp: float = 0.0

    def observe(self, sample: float, now: float) -> None:
        if self.value is None:
            self.value = sample
        else:
            current = self.estimate(now) or 0.0
            if sample > current:
                self.value = sample
            else:
                weight = math.exp(-max(now - self.stamp, 0.0) / self.tau)
                self.value = current * weight + sample * (1.0 - weight)
        self.stamp = now

    def estimate(self, now: float) -> float | None:
        """The decayed estimate in seconds, ``None`` before the first sample."""
        if self.value is None:
            return None
        return self.value * math.exp(-max(now - self.stamp, 0.0) / self.tau)
