"""Great-circle distance, shared by the travel rule and the model features."""

from __future__ import annotations

import math

__all__ = ["km_between"]


def km_between(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Kilometres between two WGS84 points (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 12_742.0 * math.asin(min(1.0, math.sqrt(a)))
