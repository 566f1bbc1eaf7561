"""What the dashboard shows, computed from the decided records: pure (no Kafka, no clock of
its own); the feed hands it each record and the time.

Every decision on the legit and fraud topics is counted (real totals, from each partition's
first record) and put in a per-second bucket of its decision time (the Kafka record's
timestamp) for the charts. The newest ones are also decoded: their rules and accounts feed
the rankings of the last `TOP_WINDOW_MIN` minutes, fraud feeds the alert queue (grouped by
account exactly as `fraudstream alerts` groups it, so an alert has the same `alert_id` on the
page as in Slack), and each becomes a row a page may show. What a page receives is bounded
whatever the input rate: one payload per tick, with at most `ROWS_PER_TICK` rows matching its
view (fraud first), the counters, the last seconds of the series, the rankings and the alerts
that changed.

    board = Board(history=200, alert_window_ms=60_000)
    board.add("fraud", partition, offset, ts_ms, value, now_ms, detail=True)
    rows, shared = board.tick(now_ms)        # since the last tick
    board.select(rows, View(outcome="fraud"), limit=100)
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import msgspec

from fraudstream.detection.alerting import Group, Grouper

__all__ = ["Board", "Row", "View"]

SERIES_S = 600  # seconds of per-second counts kept for the charts
SERIES_RESENT_S = 15  # each tick resends the last seconds (late commits, a lost tick)
TOP_WINDOW_MIN = 15  # minutes the rule and account rankings cover
TOP_N = 10
RATE_WINDOW_S = 5  # tx/s: the last full seconds' mean
FRAUD_RATE_WINDOW_S = 60
PENDING_LEGIT = 20_000  # legit rows held between two ticks (the newest)
PENDING_FRAUD = 2_000
ROWS_PER_TICK = 100
ALERTS_KEPT = 200  # closed alerts a page is told of
OPEN_ALERTS_SENT = 50
ALERT_TX_SENT = 50  # transactions of one alert sent to the page (the count says how many)
RAW_MAX = 16_384  # a larger record is shown by its fields' summary only
REVIEWS_KEPT = 10_000  # the latest analysts' verdicts a new page is told of
FILTER_MAX = 200  # characters of a rule or account filter


class _Reason(msgspec.Struct):
    rule: str = ""


class _Decision(msgspec.Struct):
    reasons: list[_Reason] = []


class _Record(msgspec.Struct):
    timestamp: Any = None
    source: Any = None
    target: Any = None
    decision: _Decision | None = None


_decode_record = msgspec.json.Decoder(_Record).decode
_decode_any = msgspec.json.Decoder().decode


@dataclass(slots=True, frozen=True)
class Row:
    """One decision a page may show: its outcome, where and when it was decided, the
    accounts and rules a view filters on, and the record's bytes (sent as they are)."""

    seq: int
    outcome: str
    decided_ms: int
    partition: int
    offset: int
    source: str
    target: str
    rules: tuple[str, ...]
    value: bytes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "outcome": self.outcome,
            "decided_ms": self.decided_ms,
            "partition": self.partition,
            "offset": self.offset,
        }
        if len(self.value) <= RAW_MAX:
            out["record"] = msgspec.Raw(self.value)  # valid JSON: it was decoded
        else:
            out["record"] = {"source": self.source, "target": self.target, "truncated": True}
        return out


@dataclass(frozen=True)
class View:
    """A page's filter: an outcome, a rule that fired, an account (payer or payee)."""

    outcome: str = ""
    rule: str = ""
    account: str = ""

    @classmethod
    def parse(cls, params: Any) -> View:
        """From a query string's mapping; ValueError saying what is wrong."""
        outcome = params.get("outcome") or ""
        if outcome not in ("", "legit", "fraud"):
            raise ValueError("outcome must be legit or fraud (or absent, for both)")
        rule, account = params.get("rule") or "", params.get("account") or ""
        if len(rule) > FILTER_MAX or len(account) > FILTER_MAX:
            raise ValueError(f"a rule or account filter has at most {FILTER_MAX} characters")
        return cls(outcome, rule, account.strip())

    def matches(self, row: Row) -> bool:
        return (
            (not self.outcome or row.outcome == self.outcome)
            and (not self.rule or self.rule in row.rules)
            and (not self.account or self.account in (row.source, row.target))
        )


class Board:
    """The aggregates and the bounded row buffers; see the module's doc."""

    def __init__(self, history: int, alert_window_ms: int) -> None:
        self.history = history
        self.legit = 0
        self.fraud = 0
        self.series: dict[int, list[int]] = {}  # second -> [legit, fraud]
        self.rules_by_min: dict[int, Counter[str]] = {}
        self.accounts_by_min: dict[int, Counter[str]] = {}  # payers of fraud
        self.recent: deque[Row] = deque(maxlen=history)
        self.recent_fraud: deque[Row] = deque(maxlen=history)
        self.pending: deque[Row] = deque(maxlen=PENDING_LEGIT)
        self.pending_fraud: deque[Row] = deque(maxlen=PENDING_FRAUD)
        self.tick_decided = 0  # decoded since the last tick
        self.tick_fraud = 0
        self.grouper = Grouper(alert_window_ms)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=ALERTS_KEPT)  # closed, oldest first
        self.changed_alerts: list[dict[str, Any]] = []
        self.reviews: dict[str, dict[str, Any]] = {}  # transaction id -> latest verdict
        self.new_reviews: list[dict[str, Any]] = []
        self.health: dict[str, Any] = {"known": False, "why": "not read yet"}
        self.stream_ms = 0  # the latest event time among the decisions decoded (ms)
        self.caught_up = False  # the history on the topics is counted
        self.behind = 0  # records of that history still to count
        self._seq = 0  # the next row's

    # --- input ----------------------------------------------------------------------------

    def add(
        self,
        outcome: str,
        partition: int,
        offset: int,
        decided_ms: int,
        value: bytes | None,
        now_ms: int,
        *,
        detail: bool,
    ) -> None:
        """One decision from the legit or fraud topic; `detail`: decode it too (the newest
        records), else it is only counted."""
        fraud = outcome == "fraud"
        if fraud:
            self.fraud += 1
        else:
            self.legit += 1
        sec = decided_ms // 1000
        if sec > now_ms // 1000 - SERIES_S:
            bucket = self.series.get(sec)
            if bucket is None:
                bucket = self.series[sec] = [0, 0]
            bucket[fraud] += 1
        if not detail or not value:
            return
        self.tick_decided += 1
        self.tick_fraud += fraud
        try:
            rec = _decode_record(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not a decided record of ours: counted, not shown
        source = rec.source if isinstance(rec.source, str) else str(rec.source or "")
        target = rec.target if isinstance(rec.target, str) else str(rec.target or "")
        rules = tuple(r.rule for r in rec.decision.reasons) if rec.decision else ()
        ts = rec.timestamp
        if isinstance(ts, int) and not isinstance(ts, bool) and ts > self.stream_ms:
            self.stream_ms = ts
        minute = decided_ms // 60_000
        if minute > now_ms // 60_000 - TOP_WINDOW_MIN:
            if rules:
                self.rules_by_min.setdefault(minute, Counter()).update(rules)
            if fraud:
                self.accounts_by_min.setdefault(minute, Counter())[source] += 1
        self._seq += 1
        row = Row(
            self._seq - 1, outcome, decided_ms, partition, offset, source, target, rules, value
        )
        self.recent.append(row)
        if fraud:
            self.recent_fraud.append(row)
            self.pending_fraud.append(row)
            record = _decode_any(value)
            if isinstance(record, dict):
                closed = self.grouper.add(partition, offset, decided_ms, record, now_ms)
                if closed is not None:
                    self._close(closed, now_ms)
        else:
            self.pending.append(row)

    def review(self, review: dict[str, Any]) -> None:
        self.reviews.pop(review["id"], None)  # the latest verdict, newest last
        self.reviews[review["id"]] = review
        while len(self.reviews) > REVIEWS_KEPT:
            del self.reviews[next(iter(self.reviews))]
        self.new_reviews.append(review)

    # --- output ---------------------------------------------------------------------------

    def tick(self, now_ms: int) -> tuple[list[Row], dict[str, Any]]:
        """The rows decided since the last tick (oldest first; bounded) and what every page
        is told this tick."""
        for group in self.grouper.close_due(now_ms):
            self._close(group, now_ms)
        self._prune(now_ms)
        rows = _merge(self.pending, self.pending_fraud)
        self.pending.clear()
        self.pending_fraud.clear()
        since = now_ms // 1000 - SERIES_RESENT_S
        shared = {
            "stats": self.stats(now_ms)
            | {"decided": self.tick_decided, "decided_fraud": self.tick_fraud},
            "series": [[s, *c] for s, c in sorted(self.series.items()) if s > since],
            "top_rules": self.top(self.rules_by_min),
            "top_accounts": self.top(self.accounts_by_min),
            "alerts": self.changed_alerts + self.open_alerts(now_ms),
            "reviews": self.new_reviews,
            "health": self.health,
        }
        self.tick_decided = self.tick_fraud = 0
        self.changed_alerts = []
        self.new_reviews = []
        return rows, shared

    def snapshot(self, view: View, now_ms: int) -> tuple[list[Row], dict[str, Any]]:
        """Everything a new page needs: the recent rows of its view, the whole series, the
        rankings, every alert kept, every verdict. Its ticks then bring the rows from
        `next_seq` on (see `Feed.subscribe`)."""
        self._prune(now_ms)
        rows = self.select(_merge(self.recent, self.recent_fraud), view, self.history)
        shared = {
            "stats": self.stats(now_ms) | {"decided": 0, "decided_fraud": 0},
            "series": [[s, *c] for s, c in sorted(self.series.items())],
            "top_rules": self.top(self.rules_by_min),
            "top_accounts": self.top(self.accounts_by_min),
            "alerts": list(self.alerts) + self.open_alerts(now_ms),
            "reviews": list(self.reviews.values()),
            "health": self.health,
            "snapshot": True,
        }
        return rows, shared

    @property
    def next_seq(self) -> int:
        """The sequence number the next row will get."""
        return self._seq

    @staticmethod
    def select(rows: list[Row], view: View, limit: int) -> list[Row]:
        """The rows of `view`, at most `limit`: every fraud one first (the newest), then the
        newest legit ones; oldest first."""
        matched = [r for r in rows if view.matches(r)]
        if len(matched) <= limit:
            return matched
        fraud = [r for r in matched if r.outcome == "fraud"][-limit:]
        legit = [r for r in matched if r.outcome != "fraud"][len(fraud) - limit :]
        if len(fraud) == limit:
            legit = []
        return sorted(fraud + legit, key=lambda r: r.seq)

    def stats(self, now_ms: int) -> dict[str, Any]:
        now_s = now_ms // 1000
        last = [self.series.get(s, (0, 0)) for s in range(now_s - RATE_WINDOW_S, now_s)]
        minute = [self.series.get(s, (0, 0)) for s in range(now_s - FRAUD_RATE_WINDOW_S, now_s)]
        decided = sum(a + b for a, b in minute)
        return {
            "legit": self.legit,
            "fraud": self.fraud,
            "total": self.legit + self.fraud,
            "rate": round(sum(a + b for a, b in last) / RATE_WINDOW_S, 1),
            "fraud_rate": round(sum(b for _, b in minute) / decided, 5) if decided else 0.0,
            "caught_up": self.caught_up,
            "behind": self.behind,
        }

    @staticmethod
    def top(by_minute: dict[int, Counter[str]]) -> list[tuple[str, int]]:
        total: Counter[str] = Counter()
        for counts in by_minute.values():
            total.update(counts)
        return heapq.nlargest(TOP_N, total.items(), key=lambda kv: (kv[1], kv[0]))

    def open_alerts(self, now_ms: int) -> list[dict[str, Any]]:
        groups = heapq.nlargest(
            OPEN_ALERTS_SENT, self.grouper.open.values(), key=lambda g: g.first_ts
        )
        return [_alert_json(g, now_ms, closed=False) for g in reversed(groups)]

    # --- internals ------------------------------------------------------------------------

    def _close(self, group: Group, now_ms: int) -> None:
        alert = _alert_json(group, now_ms, closed=True)
        self.alerts.append(alert)
        self.changed_alerts.append(alert)

    def _prune(self, now_ms: int) -> None:
        oldest_s = now_ms // 1000 - SERIES_S
        for s in [s for s in self.series if s <= oldest_s]:
            del self.series[s]
        oldest_min = now_ms // 60_000 - TOP_WINDOW_MIN
        for by_minute in (self.rules_by_min, self.accounts_by_min):
            for m in [m for m in by_minute if m <= oldest_min]:
                del by_minute[m]


def _merge(*parts: deque[Row]) -> list[Row]:
    """Rows of several buffers in arrival order, each once."""
    merged = heapq.merge(*parts, key=lambda r: r.seq)
    out: list[Row] = []
    for row in merged:
        if not out or out[-1].seq != row.seq:
            out.append(row)
    return out


def _alert_json(group: Group, now_ms: int, *, closed: bool) -> dict[str, Any]:
    """An alert as the page shows it: an open group's id is provisional (it changes as
    records join), a closed one's is the id the sinks were sent."""
    alert = group.alert(now_ms).to_json()
    alert["transactions"] = alert["transactions"][-ALERT_TX_SENT:]
    alert["key"] = f"{group.partition}:{group.account}:{group.first_ts}"
    alert["first_ms"] = group.first_ts
    alert["open"] = not closed
    return alert
