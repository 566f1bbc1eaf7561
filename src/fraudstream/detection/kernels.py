"""Compiled batch kernels for the rules whose state is plain columns (numba).

A kernel walks a batch in order, reading and updating one rule's columns row by row exactly
as the rule's own `apply` does one transaction at a time: the same integer arithmetic, the
same order, so the same state and the same numbers come out (a property test runs both on
random streams). The columns are the table's own `array.array`s, seen through numpy views
without a copy; a view must be gone before the table grows (`array` refuses to resize while
one is exported), so the engine makes them per call and drops them at once.

    count, cents = velocity_window(rows, ts, cents_in, width, buckets, head, n, s)
"""

from __future__ import annotations

from array import array
from typing import Any

import numba
import numpy as np

__all__ = ["column_view", "velocity_window"]


def column_view(data: array) -> np.ndarray[Any, Any]:  # type: ignore[type-arg]
    """A numpy view of an `array.array` column (writes go to the column)."""
    return np.frombuffer(data, dtype=np.dtype(data.typecode))


@numba.njit(cache=True, nogil=True)
def _velocity(
    rows: Any,
    ts: Any,
    cents: Any,
    width: int,
    buckets: int,
    head: Any,
    n: Any,
    s: Any,
    keep_n: bool,
    keep_s: bool,
    out_count: Any,
    out_total: Any,
) -> None:  # pragma: no cover (compiled; tested against Velocity.apply)
    for j in range(rows.shape[0]):
        row = rows[j]
        bid = ts[j] // width
        h = np.int64(head[row])
        if bid > h:  # the window moves on: empty the slots it passes
            for b in range(max(h + 1, bid - buckets + 1), bid + 1):
                slot = b % buckets
                if keep_n:
                    n[slot][row] = 0
                if keep_s:
                    s[slot][row] = 0
            head[row] = bid
            h = bid
        if bid > h - buckets:  # else older than the whole window: it counts nowhere
            slot = bid % buckets
            if keep_n:
                n[slot][row] = min(np.int64(n[slot][row]) + 1, 65_535)
            if keep_s:
                s[slot][row] = min(np.int64(s[slot][row]) + cents[j], 2**31 - 1)
        count = 0
        total = 0
        for b in range(max(bid, h) - buckets + 1, min(bid, h) + 1):
            if b > h - buckets:
                slot = b % buckets
                if keep_n:
                    count += n[slot][row]
                if keep_s:
                    total += s[slot][row]
        out_count[j] = count
        out_total[j] = total


def velocity_window(
    rows: np.ndarray[Any, Any],
    ts: np.ndarray[Any, Any],
    cents: np.ndarray[Any, Any],
    width: int,
    buckets: int,
    head: array,  # type: ignore[type-arg]
    n: list[array] | None,  # type: ignore[type-arg]
    s: list[array] | None,  # type: ignore[type-arg]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Add each payment (row, event time, cents) to its key's ring of `buckets` buckets of
    `width` ms, in order; returns the count and the cents in each one's window after it.
    `n` / `s`: the count / sum columns per slot (None: not kept, reads 0)."""
    m = rows.shape[0]
    count = np.zeros(m, dtype=np.int64)
    total = np.zeros(m, dtype=np.int64)
    if m == 0:
        return count, total
    none16, none32 = np.zeros(1, np.uint16), np.zeros(1, np.int32)
    nv = tuple(column_view(c) for c in n) if n else tuple(none16 for _ in range(buckets))
    sv = tuple(column_view(c) for c in s) if s else tuple(none32 for _ in range(buckets))
    hv = column_view(head)
    try:
        _velocity(rows, ts, cents, width, buckets, hv, nv, sv, bool(n), bool(s), count, total)
    finally:
        del nv, sv, hv  # release the columns: the table may grow again
    return count, total
