"""Great-circle distance, shared by the travel rule and the model features."""

from __future__ import annotations

import math

__all__ = ["km_between"]


def km_between(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Kilometres between two WGS84 points (haversine, mean Earth radius).

    Plain arithmetic and `math` only: `kernels.py` compiles this same function with numba,
    and both give the same bits (squares are products, never `pow`)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dlat = math.sin((p2 - p1) / 2)
    dlon = math.sin(math.radians(lon2 - lon1) / 2)
    a = dlat * dlat + math.cos(p1) * math.cos(p2) * (dlon * dlon)
    return 12_742.0 * math.asin(min(1.0, math.sqrt(a)))
