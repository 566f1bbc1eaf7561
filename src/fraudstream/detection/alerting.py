"""Alerts: the fraud topic's records grouped by account, each group one notification.

A record joins the open group of its account when its time (the Kafka record's timestamp,
stored with it, so a re-read sees the same) is within `window_ms` of the group's first record;
otherwise it opens a new one. A group closes when its partition's records have moved past its
window, or when it has been open for `window_ms` of wall time on a quiet stream. Its
`alert_id` is a digest of its account and transaction ids: the same group formed again after
a restart carries the same id, which receivers use to drop the duplicate.

    grouper = Grouper(window_ms=60_000)
    grouper.add(partition, offset, ts_ms, record)     # record: the decided JSON object
    for group in grouper.close_due(now_wall_ms): ...  # Group -> group.alert(created_ms)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Alert", "Group", "Grouper"]


@dataclass(frozen=True)
class Alert:
    alert_id: str
    created: int  # epoch ms, when the group closed
    account: str
    count: int
    score: float  # the highest score among its transactions
    reasons: list[str]  # each distinct reason once, in order of appearance
    transactions: list[dict[str, Any]]  # the decided records, as on the fraud topic
    partition: int = -1  # where its records came from (not sent)
    offsets: tuple[int, int] = (0, 0)  # first and last offset of its records (not sent)

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "created": self.created,
            "account": self.account,
            "count": self.count,
            "score": self.score,
            "reasons": self.reasons,
            "transactions": self.transactions,
        }


@dataclass
class Group:
    account: str
    partition: int
    first_ts: int
    opened_wall_ms: int
    offsets: list[int] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def alert(self, created_ms: int) -> Alert:
        ids = [str(r.get("id", "")) for r in self.records]
        digest = hashlib.sha256("\x00".join([self.account, *sorted(ids)]).encode())
        reasons: dict[str, None] = {}
        score = 0.0
        for r in self.records:  # a record of another shape still alerts, with what it has
            decision = r.get("decision")
            if not isinstance(decision, dict):
                continue
            value = decision.get("score")
            if isinstance(value, int | float) and not isinstance(value, bool):
                score = max(score, float(value))
            found = decision.get("reasons")
            for reason in found if isinstance(found, list) else []:
                text = (
                    f"{reason.get('rule', '?')}: {reason.get('reason', '')}"
                    if isinstance(reason, dict)
                    else str(reason)
                )
                reasons.setdefault(text, None)
        return Alert(
            alert_id=digest.hexdigest()[:24],
            created=created_ms,
            account=self.account,
            count=len(self.records),
            score=score,
            reasons=list(reasons),
            transactions=list(self.records),
            partition=self.partition,
            offsets=(self.offsets[0], self.offsets[-1]),
        )


class Grouper:
    """Open groups by (partition, account); see the module's doc."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.open: dict[tuple[int, str], Group] = {}
        self._stream_ms: dict[int, int] = {}  # per partition: the latest record time seen

    def add(
        self, partition: int, offset: int, ts_ms: int, record: dict[str, Any], wall_ms: int
    ) -> Group | None:
        """Add a record; returns the group it closed (its account's previous one), if any."""
        account = str(record.get("source", "?"))
        key = (partition, account)
        closed = None
        group = self.open.get(key)
        if group is not None and ts_ms >= group.first_ts + self.window_ms:
            closed = self.open.pop(key)
            group = None
        if group is None:
            group = self.open[key] = Group(account, partition, ts_ms, wall_ms)
        group.offsets.append(offset)
        group.records.append(record)
        self._stream_ms[partition] = max(self._stream_ms.get(partition, ts_ms), ts_ms)
        return closed

    def close_due(self, wall_ms: int) -> list[Group]:
        """Groups whose window their partition's records have passed, or open for a window of
        wall time: oldest first."""
        due = [
            key
            for key, g in self.open.items()
            if self._stream_ms.get(g.partition, 0) >= g.first_ts + self.window_ms
            or wall_ms - g.opened_wall_ms >= self.window_ms
        ]
        return [self.open.pop(k) for k in due]

    def close_all(self) -> list[Group]:
        groups = list(self.open.values())
        self.open.clear()
        return groups

    def drop(self, partitions: set[int]) -> None:
        """Forget the open groups of partitions this process no longer owns."""
        for key in [k for k in self.open if k[0] in partitions]:
            del self.open[key]
        for p in partitions:
            self._stream_ms.pop(p, None)

    def first_open_offset(self, partition: int) -> int | None:
        firsts = [g.offsets[0] for (p, _), g in self.open.items() if p == partition]
        return min(firsts) if firsts else None
