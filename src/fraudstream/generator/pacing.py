"""Pace output on an absolute schedule: record i is due at start + (i + 1) / rate.

Because the schedule is absolute, a slow moment is made up by the next ones and the achieved
rate converges on the target instead of drifting (sleeping 1/rate after each send drifts).

    pacer = Pacer(rate=1000, start=clock())
    n = pacer.due(clock()) - sent    # how many to send now
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Pacer"]


@dataclass(frozen=True, slots=True)
class Pacer:
    rate: float  # records per second; math.inf means as fast as possible
    start: float

    def due(self, now: float) -> int:
        """Records due in total by `now`."""
        if math.isinf(self.rate):
            return 2**62
        return max(0, math.floor((now - self.start) * self.rate + 1e-9))

    def time_of(self, n: int) -> float:
        """When the `n`-th record (1-based) is due."""
        if math.isinf(self.rate):
            return self.start
        return self.start + n / self.rate
