"""Compiled batch kernels for the rules whose state is plain columns (numba).

A kernel walks a batch in order, reading and updating one rule's columns row by row exactly
as the rule's own `apply` does one transaction at a time: the same arithmetic, the same
order, so the same state and the same numbers come out (a property test runs both on random
streams). A kernel returns what the rule's reasons need (counts, times, distances) for the
transactions that fired; the rule formats the reasons in Python, for those only. The columns
are the table's own `array.array`s, seen through numpy views without a copy: the table's own
(`Table.view`), which it keeps until its columns grow and then drops (`array` refuses to
resize while a view of it exists); so the kernels hold none past their call.

    count, cents = velocity_window(rows, ts, cents_in, width, buckets, head, n, s, view)
    fired, idle_days = dormant(rows, ts, big, idle_ms, awake_ms, last, woke, idle_d, view)
    fired, small_ts = small_then_large(rows, ts, amounts, small_max, large_min, within, small, view)
    fired, km, prev_ts = travel(rows, ts, lat, lon, max_kmh, min_km, lat_col, lon_col, when, view)
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from fraudstream.detection.geo import km_between
from fraudstream.detection.state import DAY, HOUR

__all__ = ["View", "dormant", "small_then_large", "travel", "velocity_window"]

_km = numba.njit(cache=True, nogil=True)(km_between)  # the same source, compiled


View = Callable[[Any], np.ndarray[Any, Any]]  # a column's numpy view: its table's `Table.view`


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
    view: View,
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
    nv = tuple(map(view, n)) if n else tuple(none16 for _ in range(buckets))
    sv = tuple(map(view, s)) if s else tuple(none32 for _ in range(buckets))
    hv = view(head)
    try:
        _velocity(rows, ts, cents, width, buckets, hv, nv, sv, bool(n), bool(s), count, total)
    finally:
        del nv, sv, hv  # release the columns: the table may grow again
    return count, total


Column = Any  # an `array.array` column of a table (seen through `View`)


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
    view: View,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`DormantAccount.apply` over a batch (`big`: amount at least the rule's minimum):
    whether each fired, and the idle days its reason names."""
    fired = np.zeros(rows.shape[0], dtype=np.bool_)
    idle_at = np.zeros(rows.shape[0], dtype=np.int64)
    views = view(last), view(woke), view(idle_d)
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
    view: View,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`SmallThenLarge.apply` over a batch: whether each fired, and the time of the test
    payment before it."""
    fired = np.zeros(rows.shape[0], dtype=np.bool_)
    small_at = np.zeros(rows.shape[0], dtype=np.int64)
    seen = view(small)
    try:
        _small_then_large(rows, ts, amounts, small_max, large_min, within_ms, seen, fired, small_at)
    finally:
        del seen
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
    view: View,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`ImpossibleTravel.apply` over a batch: whether each fired, the distance and the time
    of the payment before it."""
    m = rows.shape[0]
    fired = np.zeros(m, dtype=np.bool_)
    km_at = np.zeros(m, dtype=np.float64)
    prev_at = np.zeros(m, dtype=np.int64)
    views = view(lat_col), view(lon_col), view(when)
    try:
        _travel(rows, ts, lat, lon, max_kmh, min_km, *views, fired, km_at, prev_at)
    finally:
        del views
    return fired, km_at, prev_at


# --- model features (`FeatureState`): one kernel per key's part, columns as in features.py ---


@numba.njit(cache=True, nogil=True)
def _decay(dt: int, tau: int) -> float:  # pragma: no cover (compiled)
    return math.exp(-dt / tau) if dt > 0 else 1.0


@numba.njit(cache=True, nogil=True)
def _log_hours_since(t: Any, at: Any) -> float:  # pragma: no cover (compiled)
    return math.log1p(max(0, t - at) / HOUR) if at != 0 else -1.0


@numba.njit(cache=True, nogil=True)
def _recent(columns: Any, r: int, code: int) -> bool:  # pragma: no cover (compiled)
    # a loop, not any(): numba compiles no generator over a tuple
    for c in columns:  # noqa: SIM110
        if c[r] == code:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _remember(columns: Any, r: int, code: int) -> None:  # pragma: no cover (compiled)
    for i in range(len(columns) - 1, 0, -1):
        columns[i][r] = columns[i - 1][r]
    columns[0][r] = code


@numba.njit(cache=True, nogil=True)
def account_features(
    rows: Any,
    ts: Any,
    amounts: Any,
    device: Any,
    has_loc: Any,
    lat: Any,
    lon: Any,
    payee: Any,
    taus: Any,
    last_ts: Any,
    cnt: Any,
    sums: Any,
    last_amount: Any,
    dev1: Any,
    dev2: Any,
    lat_c: Any,
    lon_c: Any,
    loc_ts: Any,
    payees: Any,
    new_c: Any,
    out: Any,
    c: int,
) -> None:  # pragma: no cover (compiled; tested against FeatureState._account)
    """`FeatureState._account` for each transaction in order: its features into columns
    `c`… of `out`, the same arithmetic in the same order (so the same bits)."""
    for j in range(rows.shape[0]):
        r, t, amount = rows[j], ts[j], amounts[j]
        seconds = t // 1000
        hour = (seconds % 86_400) / 3600
        weekday = (seconds // 86_400 + 3) % 7
        o = out[j]
        o[c] = math.log1p(amount)
        o[c + 1] = 1.0 if amount == np.trunc(amount) else 0.0
        o[c + 2] = math.sin(2 * math.pi * hour / 24)
        o[c + 3] = math.cos(2 * math.pi * hour / 24)
        o[c + 4] = 1.0 if weekday >= 5 else 0.0
        last = np.int64(last_ts[r])
        dt = t - last if last != 0 else 0
        d0, d1, d2 = _decay(dt, taus[0]), _decay(dt, taus[1]), _decay(dt, taus[2])
        c0, c1, c2 = (
            np.float64(cnt[0][r]) * d0,
            np.float64(cnt[1][r]) * d1,
            np.float64(cnt[2][r]) * d2,
        )
        s0, s1, s2 = (
            np.float64(sums[0][r]) * d0,
            np.float64(sums[1][r]) * d1,
            np.float64(sums[2][r]) * d2,
        )
        m0 = s0 / c0 if c0 > 1e-6 else 0.0
        m1 = s1 / c1 if c1 > 1e-6 else 0.0
        m2 = s2 / c2 if c2 > 1e-6 else 0.0
        o[c + 5], o[c + 6], o[c + 7] = c0, c1, c2
        o[c + 8], o[c + 9], o[c + 10] = m0, m1, m2
        o[c + 11] = amount / (m2 + 1.0)
        o[c + 12] = (
            math.log1p(amount) - math.log1p(np.float64(last_amount[r])) if last != 0 else 0.0
        )
        o[c + 13] = 1.0 if last != 0 else 0.0
        o[c + 14] = math.log1p(max(dt, 0) / HOUR) if last != 0 else -1.0
        dev = device[j]
        known_dev = dev == dev1[r] or dev == dev2[r]
        o[c + 15] = 1.0 if dev != 0 and last != 0 and not known_dev else 0.0
        km = 0.0
        kmh = 0.0
        lt = np.int64(loc_ts[r])
        if has_loc[j] and lt != 0:
            km = _km(np.float64(lat_c[r]), np.float64(lon_c[r]), lat[j], lon[j])
            kmh = km / max((t - lt) / HOUR, 1 / 60) if t >= lt else 0.0
        o[c + 16] = km
        o[c + 17] = min(kmh, 50_000.0)
        p = payee[j]
        new = 0.0 if _recent(payees, r, p) else 1.0
        n0, n1 = np.float64(new_c[0][r]) * d0, np.float64(new_c[1][r]) * d1
        o[c + 18], o[c + 19], o[c + 20] = new, n0, n1
        # learn from it (out-of-order events count at the newest time)
        if t >= last:
            last_ts[r] = t
            last_amount[r] = amount
        cnt[0][r], cnt[1][r], cnt[2][r] = c0 + 1, c1 + 1, c2 + 1
        sums[0][r], sums[1][r], sums[2][r] = s0 + amount, s1 + amount, s2 + amount
        new_c[0][r], new_c[1][r] = n0 + new, n1 + new
        if new != 0.0:
            _remember(payees, r, p)
        if dev != 0 and not known_dev:
            dev2[r] = dev1[r]
            dev1[r] = dev
        if has_loc[j] and t >= loc_ts[r]:
            lat_c[r] = lat[j]
            lon_c[r] = lon[j]
            loc_ts[r] = t


@numba.njit(cache=True, nogil=True)
def target_features(
    rows: Any,
    ts: Any,
    amounts: Any,
    payer: Any,
    caught: Any,
    taus: Any,
    risk_taus: Any,
    last_ts: Any,
    cnt: Any,
    sums: Any,
    pay30: Any,
    payers: Any,
    new_c: Any,
    fraud: Any,
    fraud_ts: Any,
    fraud_at: Any,
    caught_ring: Any,
    out: Any,
    c: int,
) -> None:  # pragma: no cover (compiled; tested against FeatureState._target)
    """`FeatureState._target` for each transaction in order, into columns `c`… of `out`."""
    for j in range(rows.shape[0]):
        r, t = rows[j], ts[j]
        last = np.int64(last_ts[r])
        dt = t - last if last != 0 else 0
        d0, d1, d2 = _decay(dt, taus[0]), _decay(dt, taus[1]), _decay(dt, taus[2])
        t_cnt, t_sum = np.float64(cnt[r]) * d0, np.float64(sums[r]) * d0
        t_pay30 = np.float64(pay30[r]) * d2
        p = payer[j]
        new = 0.0 if _recent(payers, r, p) else 1.0
        n0, n1 = np.float64(new_c[0][r]) * d0, np.float64(new_c[1][r]) * d1
        known = np.int64(fraud_ts[r])
        f0 = f1 = f2 = 0.0
        if known != 0:
            f0 = np.float64(fraud[0][r]) * _decay(t - known, risk_taus[0])
            f1 = np.float64(fraud[1][r]) * _decay(t - known, risk_taus[1])
            f2 = np.float64(fraud[2][r]) * _decay(t - known, risk_taus[2])
        o = out[j]
        o[c] = t_cnt
        o[c + 1] = math.log1p(t_sum / t_cnt) if t_cnt > 1e-6 else 0.0
        o[c + 2], o[c + 3] = n0, n1
        o[c + 4], o[c + 5], o[c + 6] = f0, f1, f2
        o[c + 7] = f2 / (t_pay30 + 1.0)
        o[c + 8] = _log_hours_since(t, known)
        o[c + 9] = _log_hours_since(t, np.int64(fraud_at[r]))
        if t >= last:
            last_ts[r] = t
        cnt[r], sums[r] = t_cnt + 1, t_sum + amounts[j]
        pay30[r] = t_pay30 + 1
        new_c[0][r], new_c[1][r] = n0 + new, n1 + new
        if new != 0.0:
            _remember(payers, r, p)
        if caught[j] != 0:
            _remember(caught_ring, r, caught[j])


@numba.njit(cache=True, nogil=True)
def merchant_features(
    rows: Any,
    ts: Any,
    caught: Any,
    share_taus: Any,
    risk_taus: Any,
    last_ts: Any,
    pay: Any,
    fraud: Any,
    fraud_ts: Any,
    fraud_at: Any,
    times: Any,
    next_slot: Any,
    caught_ring: Any,
    out: Any,
    c: int,
) -> None:  # pragma: no cover (compiled; tested against FeatureState._merchant)
    """`FeatureState._merchant` for each transaction in order, into columns `c`… of `out`
    (a row below 0: no merchant, the constant row)."""
    for j in range(rows.shape[0]):
        r, t = rows[j], ts[j]
        o = out[j]
        if r < 0:
            for k in range(11):
                o[c + k] = -1.0 if k == 5 or k == 6 else 0.0
            continue
        last = np.int64(last_ts[r])
        dt = t - last if last != 0 else 0
        p0 = np.float64(pay[0][r]) * _decay(dt, share_taus[0])
        p1 = np.float64(pay[1][r]) * _decay(dt, share_taus[1])
        known = np.int64(fraud_ts[r])
        f0 = f1 = f2 = 0.0
        if known != 0:
            f0 = np.float64(fraud[0][r]) * _decay(t - known, risk_taus[0])
            f1 = np.float64(fraud[1][r]) * _decay(t - known, risk_taus[1])
            f2 = np.float64(fraud[2][r]) * _decay(t - known, risk_taus[2])
        at = np.int64(fraud_at[r])
        o[c], o[c + 1], o[c + 2] = f0, f1, f2
        o[c + 3] = f0 / (p0 + 1.0)
        o[c + 4] = f2 / (p1 + 1.0)
        o[c + 5] = _log_hours_since(t, known)
        o[c + 6] = _log_hours_since(t, at)
        since = old1 = old2 = old3 = 0
        if at != 0:
            for col in times:
                when = np.int64(col[r])
                if when > at:
                    age = t - when
                    since += 1
                    old1 += age >= DAY
                    old2 += age >= 2 * DAY
                    old3 += age >= 3 * DAY
        o[c + 7], o[c + 8], o[c + 9], o[c + 10] = since, old1, old2, old3
        slot = np.int64(next_slot[r])
        times[slot][r] = t
        next_slot[r] = (slot + 1) % len(times)
        pay[0][r], pay[1][r] = p0 + 1, p1 + 1
        if t >= last:
            last_ts[r] = t
        if caught[j] != 0:
            _remember(caught_ring, r, caught[j])
