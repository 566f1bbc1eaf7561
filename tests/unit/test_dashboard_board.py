"""The dashboard's board: real totals, per-second series, rankings over a window, the alert
queue (the alerts service's groups and ids), and a bounded, fraud-first selection of rows."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.dashboard import board as b
from fraudstream.dashboard.board import Board, View
from fraudstream.detection.alerting import Grouper

NOW = 1_790_000_000_000


def record(
    i: int, *, source: str = "acct", rules: tuple[str, ...] = (), fraud: bool = False
) -> bytes:
    return msgspec.json.encode(
        {
            "id": f"tx-{i}",
            "timestamp": NOW - 1000 + i,
            "source": source,
            "target": f"payee-{i % 3}",
            "amount": 10.0 + i,
            "currency": "EUR",
            "decision": {
                "outcome": "fraud" if fraud else "legit",
                "score": 0.9 if fraud else 0.1,
                "reasons": [{"rule": r, "reason": f"{r} fired"} for r in rules],
                "rules_version": "t",
            },
        }
    )


def add(
    board: Board, i: int, *, fraud: bool = False, ts: int = NOW, detail: bool = True, **kw: Any
) -> None:
    board.add(
        "fraud" if fraud else "legit",
        0,
        i,
        ts,
        record(i, fraud=fraud, **kw),
        NOW,
        detail=detail,
    )


def test_every_record_is_counted_and_bucketed_by_its_decision_second_decoded_or_not() -> None:
    board = Board(history=5, alert_window_ms=60_000)
    for i in range(30):
        add(board, i, fraud=i % 10 == 0, ts=NOW - 3000 + (i % 3) * 1000, detail=i >= 25)
    assert (board.legit, board.fraud) == (27, 3)
    assert sum(sum(c) for c in board.series.values()) == 30
    assert board.series[(NOW - 3000) // 1000] == [9, 1]  # i % 3 == 0: 10 records, i = 0 fraud
    stats = board.stats(NOW)
    assert stats["total"] == 30
    assert stats["rate"] == 30 / b.RATE_WINDOW_S
    assert stats["fraud_rate"] == 0.1
    assert len(board.recent) == 5  # the history kept: decoded rows only, bounded


def test_records_older_than_the_series_and_the_ranking_window_are_counted_only() -> None:
    board = Board(history=10, alert_window_ms=60_000)
    old = NOW - max(b.SERIES_S * 1000, b.TOP_WINDOW_MIN * 60_000) - 60_000
    add(board, 1, ts=old, rules=("velocity",))
    add(board, 2, ts=NOW - 1000, rules=("velocity", "new_payee"))
    assert board.legit == 2
    assert list(board.series) == [(NOW - 1000) // 1000]
    assert board.top(board.rules_by_min) == [("velocity", 1), ("new_payee", 1)]
    # and what falls out of the window as time passes is pruned
    later = NOW + (b.TOP_WINDOW_MIN + 1) * 60_000
    _, shared = board.tick(later)
    assert shared["top_rules"] == [] and shared["series"] == []
    assert shared["stats"]["total"] == 2  # totals are totals


def test_rules_and_flagged_accounts_are_ranked() -> None:
    board = Board(history=10, alert_window_ms=60_000)
    for i in range(6):
        add(board, i, fraud=i < 4, source="mule" if i < 3 else "alice", rules=("burst",))
    add(board, 9, rules=("new_payee",))
    _, shared = board.tick(NOW)
    assert shared["top_rules"] == [("burst", 6), ("new_payee", 1)]
    assert shared["top_accounts"] == [("mule", 3), ("alice", 1)]


def test_the_alert_queue_has_the_alerts_service_groups_and_ids() -> None:
    """The page and the sinks group the same records the same way: an alert opened from a
    Slack link (`/#alert/<id>`) is found on the page."""
    board = Board(history=10, alert_window_ms=60_000)
    service = Grouper(60_000)
    records = [(0, NOW), (1, NOW + 10_000), (2, NOW + 70_000)]  # the third: a new window
    closed = []
    for i, ts in records:
        value = record(i, source="mule", fraud=True)
        board.add("fraud", 0, i, ts, value, NOW, detail=True)
        group = service.add(0, i, ts, msgspec.json.decode(value), NOW)
        if group is not None:
            closed.append(group.alert(NOW).alert_id)
    _, shared = board.tick(NOW)
    sent = [a for a in shared["alerts"] if not a["open"]]
    assert [a["alert_id"] for a in sent] == closed and sent[0]["count"] == 2
    opened = [a for a in shared["alerts"] if a["open"]]
    assert [a["count"] for a in opened] == [1]
    assert opened[0]["reasons"] == []  # this record's decision has no reasons
    _, again = board.tick(NOW)
    assert [a["open"] for a in again["alerts"]] == [True]  # a closed alert is sent once
    _, snap = board.snapshot(View(), NOW)
    assert [a["alert_id"] for a in snap["alerts"] if not a["open"]] == closed


def test_view_parsing_refuses_what_it_cannot_filter_on() -> None:
    assert View.parse({"outcome": "fraud", "account": " bob "}) == View("fraud", "", "bob")
    for bad in ({"outcome": "maybe"}, {"rule": "x" * (b.FILTER_MAX + 1)}):
        try:
            View.parse(bad)
        except ValueError as exc:
            assert "outcome" in str(exc) or "characters" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_views_filter_on_outcome_rule_and_either_account() -> None:
    board = Board(history=50, alert_window_ms=60_000)
    add(board, 1, source="alice", rules=("burst",))
    add(board, 2, source="bob", fraud=True, rules=("velocity",))
    add(board, 3, source="carol")  # target payee-0
    rows, _ = board.tick(NOW)

    def ids(view: View) -> list[int]:
        return [r.offset for r in Board.select(rows, view, 10)]

    assert ids(View()) == [1, 2, 3]
    assert ids(View(outcome="fraud")) == [2]
    assert ids(View(rule="burst")) == [1]
    assert ids(View(account="bob")) == [2]
    assert ids(View(account="payee-0")) == [3]
    assert ids(View(outcome="legit", account="bob")) == []


def test_a_tick_holds_a_bounded_number_of_rows_whatever_the_input() -> None:
    board = Board(history=10, alert_window_ms=60_000)
    n = b.PENDING_LEGIT + 5_000
    for i in range(n):
        add(board, i, fraud=i % 100 == 0)
    rows, shared = board.tick(NOW)
    assert len(rows) <= b.PENDING_LEGIT + b.PENDING_FRAUD
    assert sum(r.outcome == "fraud" for r in rows) == n // 100  # every fraud row is kept
    assert shared["stats"]["decided"] == n
    chosen = Board.select(rows, View(), b.ROWS_PER_TICK)
    assert len(chosen) == b.ROWS_PER_TICK
    assert sum(r.outcome == "fraud" for r in chosen) == b.ROWS_PER_TICK  # fraud first
    assert board.tick(NOW)[0] == []  # nothing twice


@settings(max_examples=200, deadline=None)
@given(
    outcomes=st.lists(st.booleans(), max_size=60),
    limit=st.integers(min_value=1, max_value=30),
    view=st.sampled_from(
        [View(), View(outcome="fraud"), View(outcome="legit"), View(account="a1")]
    ),
)
def test_selection_is_every_match_or_the_newest_matches_fraud_first(
    outcomes: list[bool], limit: int, view: View
) -> None:
    board = Board(history=100, alert_window_ms=60_000)
    for i, fraud in enumerate(outcomes):
        add(board, i, fraud=fraud, source=f"a{i % 2}")
    rows, _ = board.tick(NOW)
    matched = [r for r in rows if view.matches(r)]
    chosen = Board.select(rows, view, limit)
    assert [r.seq for r in chosen] == sorted(r.seq for r in chosen)  # oldest first
    assert set(chosen) <= set(matched)
    if len(matched) <= limit:
        assert chosen == matched
        return
    assert len(chosen) == limit
    fraud = [r for r in matched if r.outcome == "fraud"]
    want_fraud = fraud[-limit:]
    assert [r for r in chosen if r.outcome == "fraud"] == want_fraud
    legit = [r for r in matched if r.outcome != "fraud"]
    kept = [r for r in chosen if r.outcome != "fraud"]
    assert kept == (legit[len(legit) - len(kept) :] if kept else [])  # the newest legit


def test_a_row_carries_the_record_as_it_was_written() -> None:
    board = Board(history=10, alert_window_ms=60_000)
    add(board, 7, fraud=True, rules=("burst",))
    [row] = board.tick(NOW)[0]
    out = msgspec.json.decode(msgspec.json.encode(row.to_json()))
    assert out["record"] == msgspec.json.decode(record(7, fraud=True, rules=("burst",)))
    assert (out["outcome"], out["decided_ms"], out["offset"]) == ("fraud", NOW, 7)


def test_records_that_are_not_ours_are_counted_and_not_shown() -> None:
    board = Board(history=10, alert_window_ms=60_000)
    for value in (b"not json", b'{"decision": "a string"}', b"[1, 2]"):
        board.add("legit", 0, 0, NOW, value, NOW, detail=True)
    assert board.legit == 3 and board.tick(NOW)[0] == []


def test_reviews_keep_the_latest_verdict_per_transaction() -> None:
    board = Board(history=10, alert_window_ms=60_000)
    board.review({"id": "t1", "verdict": "fraud", "reviewer": "ana", "known_ms": 1})
    board.review({"id": "t1", "verdict": "legit", "reviewer": "bo", "known_ms": 2})
    _, shared = board.tick(NOW)
    assert [r["reviewer"] for r in shared["reviews"]] == ["ana", "bo"]
    _, snap = board.snapshot(View(), NOW)
    assert snap["reviews"] == [{"id": "t1", "verdict": "legit", "reviewer": "bo", "known_ms": 2}]


def test_a_new_page_gets_recent_rows_in_its_snapshot_and_only_later_ones_in_ticks() -> None:
    """Subscribing between two ticks: the rows it has not been handed yet are in the snapshot
    (not only those a tick handed out), and none of them again in the next tick."""
    import asyncio

    from fraudstream.config import load_settings
    from fraudstream.dashboard.feed import Feed

    feed = Feed(load_settings(_env_file=None, dashboard_history=50))

    async def scenario() -> tuple[list[str], list[str], list[str], dict[str, Any]]:
        old_page, _ = feed.subscribe()
        for i in range(3):
            feed.board.add("legit", 0, i, NOW, record(i), NOW, detail=True)
        feed.tick()  # rows 0-2 go to the page that was there
        for i in range(3, 5):
            feed.board.add("legit", 0, i, NOW, record(i), NOW, detail=True)
        new_page, first = feed.subscribe()  # rows 3-4 not ticked yet
        feed.tick()

        def ids(payload: str) -> list[str]:
            return [item["record"]["id"] for item in msgspec.json.decode(payload)["items"]]

        old = ids(old_page.get_nowait()) + ids(old_page.get_nowait())
        tick: dict[str, Any] = msgspec.json.decode(new_page.get_nowait())
        return old, ids(first), [i["record"]["id"] for i in tick["items"]], tick

    old, snapshot, ticked, tick = asyncio.run(scenario())
    assert old == [f"tx-{i}" for i in range(5)]  # every row once
    assert snapshot == [f"tx-{i}" for i in range(5)] and ticked == []
    # the tick's 2 decisions were in the snapshot: the page does not call its rows a sample
    assert (tick["stats"]["decided"], tick["in_snapshot"]) == (2, 2)


def test_a_reviews_transaction_time_is_read_as_the_transaction_gives_it() -> None:
    """The page sends the decision's own `timestamp`: epoch milliseconds or RFC 3339 text
    (the text was dropped before, and the label lost its transaction's time)."""
    from fraudstream.config import load_settings
    from fraudstream.dashboard.app import Reviews

    reviews = Reviews(load_settings(_env_file=None))
    body = {"id": "t1", "verdict": "legit", "analyst": "Ana"}
    as_text = reviews.label(body | {"timestamp": "2026-01-31T12:00:00Z"}, stream_ms=0, now_ms=5)
    as_ms = reviews.label(body | {"timestamp": 1_769_860_800_000}, stream_ms=0, now_ms=5)
    assert as_text["tx_ms"] == as_ms["tx_ms"] == 1_769_860_800_000
    assert as_text["known_ms"] == 1_769_860_800_001  # never before the transaction
    assert reviews.label(body, stream_ms=0, now_ms=5)["tx_ms"] is None
    with pytest.raises(ValueError, match="time zone"):
        reviews.label(body | {"timestamp": "2026-01-31T12:00:00"}, stream_ms=0, now_ms=5)
