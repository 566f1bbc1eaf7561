"""Pace output on an absolute schedule: record i is due at start + (i + 1) / rate.

Because the schedule is absolute, a slow moment is made up by the next ones and the achieved
rate converges on the target instead of drifting (sleeping 1/rate after each send drifts).

    pacer = Pacer(rate=1000, start=clock())
    n = pacer.due(clock()) - sent    # how many to send now
    # none due: sleep until pacer.time_of(sent + 1), which is always later than now
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
        """Records due in total by `now`: the largest n with `time_of(n) <= now`.

        Exactly consistent with `time_of` (rounding never makes the record due at
        `time_of(n)` count as not yet due, which would make the caller sleep for 0 s)."""
        if math.isinf(self.rate):
            return 2**62
        n = max(0, math.floor((now - self.start) * self.rate))
        while self.time_of(n + 1) <= now:
            n += 1
        while n > 0 and self.time_of(n) > now:
            n -= 1
        return n

    def time_of(self, n: int) -> float:
        """When the `n`-th record (1-based) is due."""
        if math.isinf(self.rate):
            return self.start
        return self.start + n / self.rate
