"""Compiled batch kernels for the rules whose state is plain columns (numba).

A kernel walks a batch in order, reading and updating one rule's columns row by row exactly
as the rule's own `apply` does one transaction at a time: the same arithmetic, the same
order, so the same state and the same numbers come out (a property test runs both on random
streams). A kernel returns what the rule's reasons need (counts, times, distances) for the
transactions that fired; the rule formats the reasons in Python, for those only. The columns
are the table's own `array.array`s, seen through numpy views without a copy; a view must be
gone before the table grows (`array` refuses to resize while one is exported), so the
kernels make them per call and drop them at once.

    count, cents = velocity_window(rows, ts, cents_in, width, buckets, head, n, s)
    fired, idle_days = dormant(rows, ts, big, idle_ms, awake_ms, last, woke, idle_d)
    fired, small_ts = small_then_large(rows, ts, amounts, small_max, large_min, within, small)
    fired, km, prev_ts = travel(rows, ts, lat, lon, max_kmh, min_km, lat_col, lon_col, when)
"""

from __future__ import annotations

from array import array
from typing import Any

import numba
import numpy as np

from fraudstream.detection.geo import km_between
from fraudstream.detection.state import DAY, HOUR

__all__ = ["column_view", "dormant", "small_then_large", "travel", "velocity_window"]

_km = numba.njit(cache=True, nogil=True)(km_between)  # the same source, compiled


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


Column = Any  # an `array.array` column of a table (see `column_view`)


@numba.njit(cache=True, nogil=True)
def _dormant(
    rows: Any,
    ts: Any,
    big: Any,
    idle_ms: int,
    awake_ms: int,
    last: Any,
    woke: Any,
    idle_d: Any,
    fired: Any,
    idle_at: Any,
) -> None:  # pragma: no cover (compiled; tested against DormantAccount.apply)
    for j in range(rows.shape[0]):
        r, t = rows[j], ts[j]
        prev = np.int64(last[r])
        if t > prev:
            last[r] = t
        if prev != 0 and t - prev >= idle_ms:
            woke[r] = t
            idle_d[r] = (t - prev) // DAY
        w = np.int64(woke[r])
        if w != 0 and big[j] and 0 <= t - w <= awake_ms:
            fired[j] = True
            idle_at[j] = idle_d[r]


def dormant(
    rows: np.ndarray[Any, Any],
    ts: np.ndarray[Any, Any],
    big: np.ndarray[Any, Any],
    idle_ms: int,
    awake_ms: int,
    last: Column,
    woke: Column,
    idle_d: Column,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`DormantAccount.apply` over a batch (`big`: amount at least the rule's minimum):
    whether each fired, and the idle days its reason names."""
    fired = np.zeros(rows.shape[0], dtype=np.bool_)
    idle_at = np.zeros(rows.shape[0], dtype=np.int64)
    views = column_view(last), column_view(woke), column_view(idle_d)
    try:
        _dormant(rows, ts, big, idle_ms, awake_ms, *views, fired, idle_at)
    finally:
        del views
    return fired, idle_at


@numba.njit(cache=True, nogil=True)
def _small_then_large(
    rows: Any,
    ts: Any,
    amounts: Any,
    small_max: float,
    large_min: float,
    within_ms: int,
    small: Any,
    fired: Any,
    small_at: Any,
) -> None:  # pragma: no cover (compiled; tested against SmallThenLarge.apply)
    for j in range(rows.shape[0]):
        r, t, a = rows[j], ts[j], amounts[j]
        s = np.int64(small[r])
        if a <= small_max:
            if t > s:
                small[r] = t
            continue
        if s != 0 and a >= large_min and 0 <= t - s <= within_ms:
            fired[j] = True
            small_at[j] = s


def small_then_large(
    rows: np.ndarray[Any, Any],
    ts: np.ndarray[Any, Any],
    amounts: np.ndarray[Any, Any],
    small_max: float,
    large_min: float,
    within_ms: int,
    small: Column,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`SmallThenLarge.apply` over a batch: whether each fired, and the time of the test
    payment before it."""
    fired = np.zeros(rows.shape[0], dtype=np.bool_)
    small_at = np.zeros(rows.shape[0], dtype=np.int64)
    view = column_view(small)
    try:
        _small_then_large(rows, ts, amounts, small_max, large_min, within_ms, view, fired, small_at)
    finally:
        del view
    return fired, small_at


@numba.njit(cache=True, nogil=True)
def _travel(
    rows: Any,
    ts: Any,
    lat: Any,
    lon: Any,
    max_kmh: float,
    min_km: float,
    lat_col: Any,
    lon_col: Any,
    when: Any,
    fired: Any,
    km_at: Any,
    prev_at: Any,
) -> None:  # pragma: no cover (compiled; tested against ImpossibleTravel.apply)
    for j in range(rows.shape[0]):
        r, t = rows[j], ts[j]
        prev = np.int64(when[r])
        if prev != 0 and t >= prev:
            km = _km(np.float64(lat_col[r]), np.float64(lon_col[r]), lat[j], lon[j])
            hours = max((t - prev) / HOUR, 1 / 60)
            if km >= min_km and km / hours > max_kmh:
                fired[j] = True
                km_at[j] = km
                prev_at[j] = prev
        if t >= prev:
            lat_col[r] = lat[j]
            lon_col[r] = lon[j]
            when[r] = t


def travel(
    rows: np.ndarray[Any, Any],
    ts: np.ndarray[Any, Any],
    lat: np.ndarray[Any, Any],
    lon: np.ndarray[Any, Any],
    max_kmh: float,
    min_km: float,
    lat_col: Column,
    lon_col: Column,
    when: Column,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`ImpossibleTravel.apply` over a batch: whether each fired, the distance and the time
    of the payment before it."""
    m = rows.shape[0]
    fired = np.zeros(m, dtype=np.bool_)
    km_at = np.zeros(m, dtype=np.float64)
    prev_at = np.zeros(m, dtype=np.int64)
    views = column_view(lat_col), column_view(lon_col), column_view(when)
    try:
        _travel(rows, ts, lat, lon, max_kmh, min_km, *views, fired, km_at, prev_at)
    finally:
        del views
    return fired, km_at, prev_at
