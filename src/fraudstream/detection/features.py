"""Model features, computed by the same stateful code live, in backtests and in training.

For each transaction, in event time, only features that carry over between banks (nothing
keyed to a scenario of our simulator): the account's spending over about 1, 7 and 30 days
(exponentially decayed counts and sums, so the state per account is a few floats), the amount
against its usual and its last, time since its last payment, a new device, distance and speed
from its last place, payments to payees new to the account and from payers new to the payee
(distinct counterparties, against the last `RECENT` remembered), time of day and weekend, and
the confirmed-fraud risk of the payee and merchant over 3, 7 and 30 days from labels known
*before* the transaction, and the time since their latest confirmed fraud, both by when the
verdict became known and by when that fraud happened (`LabelRecord.tx_ms`: a shop whose fraud
stopped days ago, with verdicts still arriving, is not one where fraud goes on), and how many of
the shop's latest payments came after that fraud, by age (the older such payments are, the
likelier a fraud verdict would have come by now if the fraud had gone on).

That risk counts only the fraud the rules *missed*: a verdict on a payment the rules had
already decided fraud on their own (their weights reaching the rule set's threshold, or a
block-list hit) says the rules cover that pattern, not that the payee or shop is risky. A
payee or shop remembers the ids of its latest `RECENT_CAUGHT` such payments; a verdict on one
of them is not counted. (Without this a shop whose fraud a dated rule caught, say payments at a
shop closed by a lockdown, looked like a skimmed shop for days after the rule's period ended,
and every honest customer there was flagged; see docs/detection.md.) "The rules" of a payee's
or shop's part are those of its stage and the stages before it (`Engine.stage_keys`), what a
stage of the key-partitioned pipeline knows, so one engine and the pipeline agree.

    fs = FeatureState(tables)
    row = fs.compute(tx, ts)     # list[float], in FEATURE_NAMES order; then updates the state
    fs.label(label)              # a confirmed verdict, applied at its own time
"""

from __future__ import annotations

import heapq
import math
import sys
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from fraudstream.detection.geo import km_between
from fraudstream.detection.kernels import (
    account_features,
    merchant_features,
    target_features,
)
from fraudstream.detection.state import DAY, HOUR, Tables
from fraudstream.schema import LabelRecord, Transaction

if TYPE_CHECKING:
    from fraudstream.detection.rules import Segment

__all__ = ["FEATURE_NAMES", "FeatureState", "Label", "Parts", "assemble_row", "caught_code"]

_TAUS = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}  # spending windows
_NEW = ("1d", "7d")  # windows counting payments to (from) counterparties new to a key
_RISK = {"3d": 3 * DAY, "7d": 7 * DAY, "30d": 30 * DAY}  # confirmed fraud on a payee, shop
_SHARE = {"3d": 3 * DAY, "30d": 30 * DAY}  # a shop's payments, for its fraud share

# Each key's part, in the order `FeatureState` computes them; the row is their concatenation.
ACCOUNT_FEATURES: tuple[str, ...] = (
    "amount_log",
    "amount_cents_zero",
    "hour_sin",
    "hour_cos",
    "weekend",
    "acct_count_1d",
    "acct_count_7d",
    "acct_count_30d",
    "acct_mean_1d",
    "acct_mean_7d",
    "acct_mean_30d",
    "amount_vs_mean_30d",
    "amount_vs_last",
    "acct_known",
    "log_hours_since_last",
    "new_device",
    "km_from_last_place",
    "kmh_from_last_place",
    "new_payee",
    "acct_new_payees_1d",
    "acct_new_payees_7d",
)
TARGET_FEATURES: tuple[str, ...] = (
    "target_in_count_1d",
    "target_in_log_mean_1d",
    "target_new_payers_1d",
    "target_new_payers_7d",
    "target_missed_fraud_3d",
    "target_missed_fraud_7d",
    "target_missed_fraud_30d",
    "target_missed_fraud_share_30d",
    "log_hours_since_target_missed_fraud",
    "log_hours_since_target_missed_fraud_happened",
)
MERCHANT_FEATURES: tuple[str, ...] = (
    "merchant_missed_fraud_3d",
    "merchant_missed_fraud_7d",
    "merchant_missed_fraud_30d",
    "merchant_missed_fraud_share_3d",
    "merchant_missed_fraud_share_30d",
    "log_hours_since_merchant_missed_fraud",
    "log_hours_since_merchant_missed_fraud_happened",
    "merchant_payments_since_missed_fraud",
    "merchant_payments_since_missed_fraud_1d_old",
    "merchant_payments_since_missed_fraud_2d_old",
    "merchant_payments_since_missed_fraud_3d_old",
)
FEATURE_NAMES: tuple[str, ...] = ACCOUNT_FEATURES + TARGET_FEATURES + MERCHANT_FEATURES


Label = LabelRecord  # a confirmed verdict, known from `known_ms` on

_label_codec = (msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder(tuple[int, Label]).decode)


@dataclass(frozen=True, slots=True)
class Parts:
    """Which keys' features a `FeatureState` holds: all three in one engine, or one each in
    the stages of a key-partitioned pipeline."""

    source: bool = True
    target: bool = True
    merchant: bool = True

    @classmethod
    def only(cls, key: str) -> Parts:
        return cls(key == "source", key == "target", key == "merchant")


# the windows as the kernels take them, in the dicts' order
_TAU_ARRAY = np.array(list(_TAUS.values()), dtype=np.int64)
_RISK_ARRAY = np.array(list(_RISK.values()), dtype=np.int64)
_SHARE_ARRAY = np.array(list(_SHARE.values()), dtype=np.int64)


def _decay(dt: int, tau: int) -> float:
    return math.exp(-dt / tau) if dt > 0 else 1.0


class FeatureState:
    """The stateful feature extractor (one per engine)."""

    RECENT = 4  # counterparties remembered per key: "new" is none of the last RECENT
    RECENT_PAYMENTS = 16  # a shop's latest payment times, for those since its latest fraud
    RECENT_CAUGHT = 8  # ids of a payee's (shop's) latest payments the rules caught

    def __init__(self, tables: Tables, parts: Parts | None = None) -> None:
        self.parts = parts or Parts()
        a = self.accounts = tables["source"]
        self.a_ts = a.column("f.ts", "q", 0)
        self.a_cnt = {k: a.column(f"f.c{k}", "f", 0.0) for k in _TAUS}
        self.a_sum = {k: a.column(f"f.s{k}", "f", 0.0) for k in _TAUS}
        self.a_last_amount = a.column("f.last_amount", "f", 0.0)
        self.a_dev = (a.column("f.dev1", "I", 0), a.column("f.dev2", "I", 0))
        self.a_loc = (
            a.column("f.lat", "f", 0.0),
            a.column("f.lon", "f", 0.0),
            a.column("f.loc_ts", "q", 0),
        )
        self.a_payees = [a.column(f"f.payee{i}", "I", 0) for i in range(self.RECENT)]
        self.a_new = {k: a.column(f"f.new{k}", "f", 0.0) for k in _NEW}
        t = self.targets = tables["target"]
        self.t_ts = t.column("f.ts", "q", 0)
        self.t_cnt = t.column("f.c1d", "f", 0.0)
        self.t_sum = t.column("f.s1d", "f", 0.0)
        self.t_pay30 = t.column("f.p30d", "f", 0.0)
        self.t_payers = [t.column(f"f.payer{i}", "I", 0) for i in range(self.RECENT)]
        self.t_new = {k: t.column(f"f.new{k}", "f", 0.0) for k in _NEW}
        # the fraud the rules missed ("f.missed…": the "f.fraud…" columns of versions that
        # counted every fraud are not restored into them)
        self.t_fraud = {k: t.column(f"f.missed{k}", "f", 0.0) for k in _RISK}
        self.t_fraud_ts = t.column("f.missed_ts", "q", 0)
        self.t_fraud_at = t.column("f.missed_at", "q", 0)
        self.t_caught = [t.column(f"f.caught{i}", "I", 0) for i in range(self.RECENT_CAUGHT)]
        m = self.merchants = tables["merchant"]
        self.m_ts = m.column("f.ts", "q", 0)
        self.m_pay = {k: m.column(f"f.p{k}", "f", 0.0) for k in _SHARE}
        self.m_fraud = {k: m.column(f"f.missed{k}", "f", 0.0) for k in _RISK}
        self.m_fraud_ts = m.column("f.missed_ts", "q", 0)
        self.m_fraud_at = m.column("f.missed_at", "q", 0)
        # the shop's latest payment times, a ring: `m_next` is the slot the next one takes
        self.m_times = [m.column(f"f.t{i}", "q", 0) for i in range(self.RECENT_PAYMENTS)]
        self.m_next = m.column("f.t_next", "B", 0)
        self.m_caught = [m.column(f"f.caught{i}", "I", 0) for i in range(self.RECENT_CAUGHT)]
        self._pending: list[tuple[int, int, Label]] = []
        self._seq = 0
        self._seq_at_begin = 0
        self._journal: tuple[list[tuple[int, int, Label]], list[tuple[int, int, Label]]] | None
        self._journal = None  # (pushed, popped) while a transaction is open

    def begin(self) -> None:
        self._journal = ([], [])
        self._seq_at_begin = self._seq

    def rollback(self) -> None:
        if self._journal is None:
            return
        pushed, popped = self._journal
        self._journal = None
        self._seq = self._seq_at_begin  # a redo numbers its verdicts as the first try did
        gone = {id(e) for e in pushed}  # queued in this transaction: never were
        if gone:
            self._pending = [e for e in self._pending if id(e) not in gone]
            heapq.heapify(self._pending)
        for entry in popped:  # applied in it: queued again, unless queued in it too
            if id(entry) not in gone:
                heapq.heappush(self._pending, entry)

    def commit(self) -> None:
        self._journal = None

    # --- labels ----------------------------------------------------------------------------

    def label(self, label: Label) -> None:
        """Queue a verdict; it affects only transactions at or after `label.known_ms`."""
        if label.known_ms is None:
            raise ValueError(f"label {label.id} has no known_ms: complete_label() it first")
        if label.is_fraud:
            self._seq += 1
            entry = (label.known_ms, self._seq, label)
            heapq.heappush(self._pending, entry)
            if self._journal is not None:
                self._journal[0].append(entry)

    def changes(self) -> list[tuple[bytes, bytes | None]]:
        """Changelog records for the verdicts queued or applied in the open transaction."""
        if self._journal is None:
            return []
        pushed, popped = self._journal
        gone = {e[1] for e in popped}
        out: list[tuple[bytes, bytes | None]] = [(b"%d" % seq, None) for seq in sorted(gone)]
        out += [(b"%d" % e[1], _label_codec[0]((e[0], e[2]))) for e in pushed if e[1] not in gone]
        return out

    def load(self, records: dict[bytes, bytes | None]) -> None:
        """Restore the queued verdicts from their latest changelog records (None: applied),
        over what is queued already: a snapshot's queue, which the changelog's tail after it
        updates (a verdict applied since leaves it; one queued again is not doubled)."""
        given = {int(seq): value for seq, value in records.items()}
        if given:
            self._seq = max(self._seq, max(given))
        pending = [e for e in self._pending if e[1] not in given]
        for n, value in given.items():
            if value is not None:
                known, label = _label_codec[1](value)
                pending.append((known, n, label))
        heapq.heapify(pending)
        self._pending = pending

    def pending_bytes(self) -> int:
        """Bytes of the verdicts not yet known at the current event time."""
        return sys.getsizeof(self._pending) + sum(
            sys.getsizeof(entry) + sys.getsizeof(entry[2]) for entry in self._pending
        )

    def _apply_labels(self, ts: int) -> None:
        pending = self._pending
        while pending and pending[0][0] <= ts:
            entry = heapq.heappop(pending)
            if self._journal is not None:
                self._journal[1].append(entry)
            known, _, lab = entry
            # when the fraud itself happened: the labelled payment's time (unknown: when
            # the verdict became known)
            happened = min(lab.tx_ms, known) if lab.tx_ms is not None else known
            code = _hash(lab.id)
            target = (self.targets, self.t_caught, self.t_fraud, self.t_fraud_ts, self.t_fraud_at)
            shop = (self.merchants, self.m_caught, self.m_fraud, self.m_fraud_ts, self.m_fraud_at)
            for key, held, (table, caught, counts, last, at) in (
                (lab.target, self.parts.target, target),
                (lab.merchant, self.parts.merchant, shop),
            ):
                if key is None or not held:
                    continue
                r = table.row(key, known)
                if not _recent(caught, r, code):  # else the rules caught it
                    self._count_fraud(counts, last, r, known)
                    at[r] = max(happened, at[r])

    @staticmethod
    def _count_fraud(counts: dict[str, Any], last: Any, r: int, known: int) -> None:
        """Count a verdict on row `r` at its `known` time."""
        gap = known - last[r]
        for k, tau in _RISK.items():
            counts[k][r] = counts[k][r] * _decay(gap, tau) + 1
        last[r] = max(known, last[r])

    # --- per transaction -------------------------------------------------------------------

    def compute_batch(
        self,
        seg: Segment,
        *,
        part: bool = False,
        caught: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None,
    ) -> np.ndarray[Any, Any]:
        """`compute` (`part`: `compute_part`) of each transaction of a segment in order (a
        row each), with `caught` its (target, merchant) codes (whether the
        rules caught it, as that part knows them, from `Engine._caught_codes`; None: none
        was caught), as compiled kernels
        over it, one per key's part (`kernels.py`); a verdict
        that becomes known inside the segment is applied where `compute` would apply it,
        between two runs of the kernels. The same rows and the same state as one at a time (a
        property test holds it to that). The keys' rows are the segment's (`Segment.rows`:
        looked up once for the features and the rules, touched in order)."""
        n = len(seg)
        held = [self.parts.source, self.parts.target, self.parts.merchant]
        if part:  # only the first part this state holds, as `compute_part`
            held = [i == held.index(True) if any(held) else False for i in range(3)]
        at, width = [], 0
        for i, names in enumerate((ACCOUNT_FEATURES, TARGET_FEATURES, MERCHANT_FEATURES)):
            at.append(width)
            width += len(names) if held[i] else 0
        out = np.zeros((n, width), dtype=np.float64)
        if not n or not width:
            return out
        t, ts, every = seg.times, seg.ts, np.arange(n)
        if caught is None:
            caught = (np.zeros(n, np.uint32), np.zeros(n, np.uint32))
        inputs: list[tuple[Any, ...]] = [(), (), ()]
        if held[0]:
            devices, lats, lons = seg.field("device"), seg.field("lat"), seg.field("lon")
            inputs[0] = (
                seg.rows(self.accounts, every),
                t,
                seg.amounts,
                np.fromiter((0 if d is None else _hash(d) for d in devices), np.uint32, n),
                seg.present("lat") & seg.present("lon"),
                np.fromiter((0.0 if x is None else x for x in lats), np.float64, n),
                np.fromiter((0.0 if x is None else x for x in lons), np.float64, n),
                np.fromiter(map(_hash, seg.field("target")), np.uint32, n),
            )
        if held[1]:
            inputs[1] = (
                seg.rows(self.targets, every),
                t,
                seg.amounts,
                np.fromiter(map(_hash, seg.field("source")), np.uint32, n),
                caught[0],
            )
        if held[2]:
            m_rows = np.full(n, -1, dtype=np.int64)
            shops = np.flatnonzero(seg.present("merchant"))
            if shops.size:
                m_rows[shops] = seg.rows(self.merchants, shops)
            inputs[2] = (m_rows, t, caught[1])
        start = 0
        while start < n:
            end, pending = n, self._pending
            if pending:  # cut where the next verdict becomes known; apply it there
                if pending[0][0] <= ts[start]:
                    self._apply_labels(ts[start])
                if pending:
                    later = np.flatnonzero(t[start + 1 :] >= pending[0][0])
                    if later.size:
                        end = start + 1 + int(later[0])
            span = slice(start, end)
            for i in range(3):
                if held[i]:
                    self._kernel(i, [x[span] for x in inputs[i]], out[span], at[i])
            start = end
        return out

    def _kernel(self, part: int, args: list[Any], out: Any, c: int) -> None:
        """Run one part's kernel over `args` (its inputs, sliced), writing columns `c`… of
        `out`: the columns seen through the table's own views (`Table.view`), held no longer
        than the call (a table may grow next)."""
        v = (self.accounts, self.targets, self.merchants)[part].view
        kernel: Any
        if part == 0:
            views: tuple[Any, ...] = (
                _TAU_ARRAY,
                v(self.a_ts),
                tuple(v(self.a_cnt[k]) for k in _TAUS),
                tuple(v(self.a_sum[k]) for k in _TAUS),
                v(self.a_last_amount),
                v(self.a_dev[0]),
                v(self.a_dev[1]),
                *(v(c) for c in self.a_loc),
                tuple(v(c) for c in self.a_payees),
                tuple(v(self.a_new[k]) for k in _NEW),
            )
            kernel = account_features
        elif part == 1:
            views = (
                _TAU_ARRAY,
                _RISK_ARRAY,
                v(self.t_ts),
                v(self.t_cnt),
                v(self.t_sum),
                v(self.t_pay30),
                tuple(v(c) for c in self.t_payers),
                tuple(v(self.t_new[k]) for k in _NEW),
                tuple(v(self.t_fraud[k]) for k in _RISK),
                v(self.t_fraud_ts),
                v(self.t_fraud_at),
                tuple(v(c) for c in self.t_caught),
            )
            kernel = target_features
        else:
            views = (
                _SHARE_ARRAY,
                _RISK_ARRAY,
                v(self.m_ts),
                tuple(v(self.m_pay[k]) for k in _SHARE),
                tuple(v(self.m_fraud[k]) for k in _RISK),
                v(self.m_fraud_ts),
                v(self.m_fraud_at),
                tuple(v(c) for c in self.m_times),
                v(self.m_next),
                tuple(v(c) for c in self.m_caught),
            )
            kernel = merchant_features
        try:
            kernel(*args, *views, out, c)
        finally:
            del views

    def compute(self, tx: Transaction, ts: int, caught: tuple[int, int] = (0, 0)) -> list[float]:
        """The feature row for `tx` from what was known before it; then learn from it
        (`caught`: its target and merchant codes, from `Engine._caught_codes`)."""
        if self._pending:
            self._apply_labels(ts)
        return assemble_row(
            self._account(tx, ts) if self.parts.source else [],
            self._target(tx, ts, caught[0]) if self.parts.target else [],
            self._merchant(tx, ts, caught[1]) if self.parts.merchant else [],
        )

    def compute_part(
        self, tx: Transaction, ts: int, caught: tuple[int, int] = (0, 0)
    ) -> list[float]:
        """Only the features of the keys this state holds (a stage of a staged pipeline):
        account, target or merchant values, in `assemble_row`'s argument order."""
        if self._pending:
            self._apply_labels(ts)
        if self.parts.source:
            return self._account(tx, ts)
        if self.parts.target:
            return self._target(tx, ts, caught[0])
        return self._merchant(tx, ts, caught[1])

    def _account(self, tx: Transaction, ts: int) -> list[float]:
        amount = tx.amount
        seconds = ts // 1000
        hour = (seconds % 86_400) / 3600
        weekday = (seconds // 86_400 + 3) % 7  # 1970-01-01 was a Thursday; 5, 6 = Sat, Sun
        row: list[float] = [
            math.log1p(amount),
            1.0 if amount == int(amount) else 0.0,
            math.sin(2 * math.pi * hour / 24),
            math.cos(2 * math.pi * hour / 24),
            1.0 if weekday >= 5 else 0.0,
        ]
        r = self.accounts.row(tx.source, ts)
        last = self.a_ts[r]
        dt = ts - last if last else 0
        decays = {k: _decay(dt, tau) for k, tau in _TAUS.items()}
        counts = {k: self.a_cnt[k][r] * decays[k] for k in _TAUS}
        sums = {k: self.a_sum[k][r] * decays[k] for k in _TAUS}
        means = {k: sums[k] / counts[k] if counts[k] > 1e-6 else 0.0 for k in _TAUS}
        row += [
            counts["1d"],
            counts["7d"],
            counts["30d"],
            means["1d"],
            means["7d"],
            means["30d"],
            amount / (means["30d"] + 1.0),
            math.log1p(amount) - math.log1p(self.a_last_amount[r]) if last else 0.0,
            1.0 if last else 0.0,
            math.log1p(max(dt, 0) / HOUR) if last else -1.0,  # a late one: 0
        ]
        dev1, dev2 = self.a_dev
        device = _hash(tx.device) if tx.device is not None else 0
        row.append(1.0 if device and last and device not in (dev1[r], dev2[r]) else 0.0)
        lat, lon, loc_ts = self.a_loc
        km = kmh = 0.0
        if tx.lat is not None and tx.lon is not None and loc_ts[r]:
            km = km_between(lat[r], lon[r], tx.lat, tx.lon)
            kmh = km / max((ts - loc_ts[r]) / HOUR, 1 / 60) if ts >= loc_ts[r] else 0.0
        row += [km, min(kmh, 50_000.0)]
        payee = _hash(tx.target)
        new = 0.0 if _recent(self.a_payees, r, payee) else 1.0
        news = {k: self.a_new[k][r] * decays[k] for k in _NEW}
        row += [new, news["1d"], news["7d"]]
        # learn from this transaction (out-of-order events count at the newest time)
        if ts >= last:
            self.a_ts[r] = ts
            self.a_last_amount[r] = amount
        for k in _TAUS:
            self.a_cnt[k][r] = counts[k] + 1
            self.a_sum[k][r] = sums[k] + amount
        for k in _NEW:
            self.a_new[k][r] = news[k] + new
        if new:
            _remember(self.a_payees, r, payee)
        if device and device not in (dev1[r], dev2[r]):
            dev2[r], dev1[r] = dev1[r], device
        if tx.lat is not None and tx.lon is not None and ts >= loc_ts[r]:
            lat[r], lon[r], loc_ts[r] = tx.lat, tx.lon, ts
        return row

    def _target(self, tx: Transaction, ts: int, caught: int = 0) -> list[float]:
        tr = self.targets.row(tx.target, ts)
        t_dt = ts - self.t_ts[tr] if self.t_ts[tr] else 0
        decays = {k: _decay(t_dt, tau) for k, tau in _TAUS.items()}
        t_cnt, t_sum = self.t_cnt[tr] * decays["1d"], self.t_sum[tr] * decays["1d"]
        t_pay30 = self.t_pay30[tr] * decays["30d"]
        payer = _hash(tx.source)
        new = 0.0 if _recent(self.t_payers, tr, payer) else 1.0
        news = {k: self.t_new[k][tr] * decays[k] for k in _NEW}
        fraud = _risk(self.t_fraud, self.t_fraud_ts, tr, ts)
        t_known = self.t_fraud_ts[tr]
        row = [
            t_cnt,
            math.log1p(t_sum / t_cnt) if t_cnt > 1e-6 else 0.0,
            news["1d"],
            news["7d"],
            fraud["3d"],
            fraud["7d"],
            fraud["30d"],
            fraud["30d"] / (t_pay30 + 1.0),
            _log_hours_since(ts, t_known),
            _log_hours_since(ts, self.t_fraud_at[tr]),
        ]
        if ts >= self.t_ts[tr]:
            self.t_ts[tr] = ts
        self.t_cnt[tr], self.t_sum[tr] = t_cnt + 1, t_sum + tx.amount
        self.t_pay30[tr] = t_pay30 + 1
        for k in _NEW:
            self.t_new[k][tr] = news[k] + new
        if new:
            _remember(self.t_payers, tr, payer)
        if caught:
            _remember(self.t_caught, tr, caught)
        return row

    def _merchant(self, tx: Transaction, ts: int, caught: int = 0) -> list[float]:
        if tx.merchant is None:
            return [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]
        mr = self.merchants.row(tx.merchant, ts)
        m_dt = ts - self.m_ts[mr] if self.m_ts[mr] else 0
        pays = {k: self.m_pay[k][mr] * _decay(m_dt, tau) for k, tau in _SHARE.items()}
        fraud = _risk(self.m_fraud, self.m_fraud_ts, mr, ts)
        m_known = self.m_fraud_ts[mr]
        row = [
            fraud["3d"],
            fraud["7d"],
            fraud["30d"],
            fraud["3d"] / (pays["3d"] + 1.0),
            fraud["30d"] / (pays["30d"] + 1.0),
            _log_hours_since(ts, m_known),
            _log_hours_since(ts, self.m_fraud_at[mr]),
            *_since_fraud(self.m_times, mr, self.m_fraud_at[mr], ts),
        ]
        slot = self.m_next[mr]
        self.m_times[slot][mr] = ts
        self.m_next[mr] = (slot + 1) % self.RECENT_PAYMENTS
        for k in _SHARE:
            self.m_pay[k][mr] = pays[k] + 1
        if ts >= self.m_ts[mr]:
            self.m_ts[mr] = ts
        if caught:
            _remember(self.m_caught, mr, caught)
        return row


def _log_hours_since(ts: int, at: int) -> float:
    """log(1 + hours from `at` to `ts`); -1 when there is no such time (0)."""
    return math.log1p(max(0, ts - at) / HOUR) if at else -1.0


def _since_fraud(times: list[Any], r: int, fraud_at: int, ts: int) -> tuple[float, ...]:
    """Of the key's latest remembered payments, those after its latest confirmed fraud
    happened: all, and those at least 1, 2 and 3 days old. Such payments without a fraud verdict,
    the older the likelier, say the fraud there has stopped (when there was one: 0s if not)."""
    if not fraud_at:
        return (0.0, 0.0, 0.0, 0.0)
    ages = [ts - t for t in (c[r] for c in times) if t > fraud_at]
    return (float(len(ages)), *(float(sum(1 for a in ages if a >= d * DAY)) for d in (1, 2, 3)))


def caught_code(tx: Transaction, caught: bool) -> int:
    """What a payee's or shop's part remembers of a payment the rules caught (its id's code),
    0 for one they did not catch (or without an id: no verdict can name it)."""
    return _hash(tx.id) if caught and tx.id is not None else 0


def _hash(text: str) -> int:
    """A stable 32-bit code for a device or counterparty (0 means none)."""
    return zlib.crc32(text.encode()) or 1


def _recent(columns: list[Any], r: int, code: int) -> bool:
    return any(c[r] == code for c in columns)


def _remember(columns: list[Any], r: int, code: int) -> None:
    """Make `code` the newest of the row's remembered counterparties (the oldest drops)."""
    for i in range(len(columns) - 1, 0, -1):
        columns[i][r] = columns[i - 1][r]
    columns[0][r] = code


def _risk(counts: dict[str, Any], last: Any, r: int, ts: int) -> dict[str, float]:
    """Confirmed fraud on a key known before `ts`, decayed over each window."""
    known = last[r]
    if not known:
        return dict.fromkeys(_RISK, 0.0)
    return {k: counts[k][r] * _decay(ts - known, tau) for k, tau in _RISK.items()}


def assemble_row(account: list[float], target: list[float], merchant: list[float]) -> list[float]:
    """The full feature row, in FEATURE_NAMES order, from the three keys' parts (an empty part
    stays empty: a state holding only some keys)."""
    return account + target + merchant
