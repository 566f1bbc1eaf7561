"""One Kafka consumer per server process, aggregated once, fanned out to every browser.

A thread reads the legit and fraud topics (`read_committed`) from each partition's first
record, so the counters are real totals, and hands every record to the `Board` (see
`board.py`); the newest records of each partition are decoded for the rows, rankings and
alerts. It also reads the labels topic's latest records for the analysts' verdicts. A second
thread reads the detector group's health every few seconds (`fraudstream status`'s source: the
stages' lag from the committed offsets, and the instances' reports of stalls and drift). On
the event loop, a tick every `TICK_S` sends each connected page one payload with what changed,
the rows selected for its view: bounded whatever the input rate. A slow browser loses ticks,
never the server's memory.

    feed = Feed(settings)
    feed.start(asyncio.get_running_loop())
    queue = feed.subscribe(View(outcome="fraud"))   # str payloads, one per tick
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition

from fraudstream.config import Settings
from fraudstream.dashboard.board import ROWS_PER_TICK, Board, Row, View
from fraudstream.errors import FraudstreamError
from fraudstream.stream import consumer_config, ensure_topics
from fraudstream.stream.health import read_status, running

__all__ = ["Feed"]

log = logging.getLogger(__name__)

TICK_S = 0.5
HEALTH_EVERY_S = 5.0
DETAIL_TAIL = 20_000  # per partition: the newest records decoded at start (rows, rankings)
_BATCH = 5_000


class Feed:
    """The shared consumer, the board it fills, and the pages it feeds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.board = Board(settings.dashboard_history, int(settings.alert_group_window * 1000))
        self.lock = threading.Lock()  # the board: written by the consumer, read by the ticks
        self.ready = threading.Event()
        self.dropped = 0  # payloads a slow page did not take
        self._subscribers: dict[asyncio.Queue[str], View] = {}
        self._cuts: dict[asyncio.Queue[str], int] = {}  # new pages: rows their snapshot had
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ticker: asyncio.Task[None] | None = None
        self._encode = msgspec.json.Encoder().encode

    @property
    def stream_ms(self) -> int:
        return self.board.stream_ms

    # --- the event-loop side ---------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for name, target in (("feed", self._consume), ("feed-health", self._watch_health)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._ticker = loop.create_task(self._tick_forever())

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.cancel()
        for (
            thread
        ) in self._threads:  # the health thread may be mid-read: a daemon, not awaited long
            thread.join(timeout=10 if thread.name == "feed" else 2)

    def subscribe(
        self, view: View | None = None, maxsize: int = 64
    ) -> tuple[asyncio.Queue[str], str]:
        """A page's queue and its first payload (everything it needs), taken at once on the
        event loop, where the ticks run: no row is in both, none in neither."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        view = view or View()
        with self.lock:
            rows, shared = self.board.snapshot(view, _now_ms())
            self._cuts[queue] = self.board.next_seq  # its first tick: the rows after these
        self._subscribers[queue] = view
        return queue, self._payload(self._items(rows), self._shared(shared))

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self._subscribers.pop(queue, None)
        self._cuts.pop(queue, None)

    def stats_dict(self) -> dict[str, Any]:
        with self.lock:
            stats = self.board.stats(_now_ms())
        return stats | {"clients": len(self._subscribers), "dropped": self.dropped}

    def health(self) -> dict[str, Any]:
        """The detector group's health, as last read."""
        with self.lock:
            return dict(self.board.health)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    def tick(self) -> None:
        """One payload to every page: the shared part encoded once, the rows once per
        distinct view."""
        with self.lock:
            rows, shared = self.board.tick(_now_ms())
        if not self._subscribers:
            return
        common = self._shared(shared)
        by_view: dict[View, str] = {}
        for queue, view in list(self._subscribers.items()):
            cut = self._cuts.pop(queue, None)
            if cut is not None and rows and rows[0].seq < cut:  # some were in its snapshot
                later = [r for r in rows if r.seq >= cut]
                chosen = Board.select(later, view, ROWS_PER_TICK)
                payload = self._payload(self._items(chosen), common, len(rows) - len(later))
            elif view in by_view:
                payload = by_view[view]
            else:
                chosen = Board.select(rows, view, ROWS_PER_TICK)
                payload = by_view[view] = self._payload(self._items(chosen), common)
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                self.dropped += 1

    def _items(self, rows: list[Row]) -> bytes:
        return self._encode([r.to_json() for r in rows])

    def _shared(self, shared: dict[str, Any]) -> bytes:
        stats = shared["stats"] | {"clients": len(self._subscribers), "dropped": self.dropped}
        return self._encode(shared | {"stats": stats})

    @staticmethod
    def _payload(items: bytes, shared: bytes, in_snapshot: int = 0) -> str:
        # {"items": [...], <the shared members>}: the rows differ per view, the rest does not;
        # a new page's first tick also says how many of the tick's rows its snapshot had
        extra = b'"in_snapshot":%d,' % in_snapshot if in_snapshot else b""
        return (b'{"items":' + items + b"," + extra + shared[1:]).decode()

    # --- the consumer thread ---------------------------------------------------------------

    def _consume(self) -> None:
        settings = self.settings
        outcomes = {settings.legit_topic: "legit", settings.fraud_topic: "fraud"}
        consumer = Consumer(
            consumer_config(
                settings, "fraudstream-dashboard", group_id=f"fraudstream-dashboard-{uuid.uuid4()}"
            )
        )
        try:
            ensure_topics(settings, [*outcomes, settings.labels_topic])
            positions, detail_from, ends = self._plan(consumer, list(outcomes))
            consumer.assign(positions)
            self.ready.set()
            counting = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
            idle_since = time.monotonic()
            board = self.board
            while not self._stop.is_set():
                msgs = consumer.consume(num_messages=_BATCH, timeout=0.2)
                now_ms = _now_ms()
                with self.lock:
                    for msg in msgs:
                        if msg.error() is not None:
                            continue
                        topic = msg.topic() or ""
                        outcome = outcomes.get(topic)
                        if outcome is None:
                            review = _review(msg.value())
                            if review is not None:
                                board.review(review)
                            continue
                        partition, offset = msg.partition() or 0, msg.offset() or 0
                        board.add(
                            outcome,
                            partition,
                            offset,
                            msg.timestamp()[1],
                            msg.value(),
                            now_ms,
                            detail=offset >= detail_from[(topic, partition)],
                        )
                if board.caught_up:
                    continue
                if msgs:
                    idle_since = time.monotonic()
                counting = [
                    tp
                    for tp in consumer.position(counting)
                    if tp.offset < ends[(tp.topic, tp.partition)]
                ]
                behind = sum(ends[(tp.topic, tp.partition)] - max(tp.offset, 0) for tp in counting)
                # an open transaction at the end holds the rest back: after 10 s of nothing
                # to read, what is there is counted
                done = not counting or time.monotonic() - idle_since > 10
                with self.lock:
                    board.behind = 0 if done else behind
                    board.caught_up = done
                if done:
                    log.info(
                        "dashboard: counted %d decisions on the topics", board.legit + board.fraud
                    )
        except FraudstreamError as exc:  # says what to do; no traceback
            log.error("dashboard feed stopped: %s", exc)
        except Exception:
            log.exception("dashboard feed stopped")
            raise
        finally:
            consumer.close()

    def _plan(
        self, consumer: Consumer, topics: list[str]
    ) -> tuple[list[TopicPartition], dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        """Where to start each partition (the first record, to count all; the labels topic's
        last `DASHBOARD_HISTORY` records, for the verdicts), from which offset to decode, and
        each partition's end at start."""
        md = consumer.list_topics(timeout=10)
        positions: list[TopicPartition] = []
        detail_from: dict[tuple[str, int], int] = {}
        ends: dict[tuple[str, int], int] = {}
        for topic in [*topics, self.settings.labels_topic]:
            for partition in md.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10, cached=False
                )
                if topic == self.settings.labels_topic:
                    start = max(low, high - self.settings.dashboard_history)
                else:
                    start = low
                    detail_from[(topic, partition)] = max(low, high - DETAIL_TAIL)
                    ends[(topic, partition)] = high
                positions.append(TopicPartition(topic, partition, start))
        return positions, detail_from, ends

    # --- the health thread -----------------------------------------------------------------

    def _watch_health(self) -> None:
        while True:
            try:
                health = _health(self.settings)
            except (FraudstreamError, KafkaException) as exc:
                health = {"known": False, "why": f"cannot read the detector's status: {exc}"}
            with self.lock:
                self.board.health = health
            if self._stop.wait(HEALTH_EVERY_S):
                return


def _health(settings: Settings) -> dict[str, Any]:
    """The detector group's health, as `fraudstream status` reads it, summed per stage."""
    status = read_status(settings)
    stages: dict[str, dict[str, int]] = {}
    for row in status.rows:
        stage = stages.setdefault(row.stage, {"lag": 0, "buffered": 0, "partitions": 0})
        stage["lag"] += row.lag
        stage["buffered"] += row.buffered
        stage["partitions"] += 1
    live = running(status.reports, status.now_ms, 3 * settings.status_interval_ms)
    commits = [r.last_commit_ms for r in live if r.last_commit_ms]
    return {
        "known": True,
        "group": status.group,
        "stalled": status.stalled,
        "why": status.why,
        "instances": len(live),
        # a commit reported after the status was read would show "-0.1 s ago": 0 at least
        "last_commit_ago_s": (
            round(max(status.now_ms - max(commits), 0) / 1000, 1) if commits else None
        ),
        "drift": sorted({r.drift for r in live if r.drift}),
        "stages": [{"stage": name, **v} for name, v in stages.items()],
        "at_ms": status.now_ms,
    }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _review(value: bytes | None) -> dict[str, Any] | None:
    """An analyst's verdict from a labels-topic record (None for the other labels: the
    simulator's ground truth, a bank's chargebacks)."""
    if not value or b'"reviewer"' not in value:  # most labels: not decoded at all
        return None
    with contextlib.suppress(msgspec.DecodeError):
        label = msgspec.json.decode(value)
        if isinstance(label, dict) and isinstance(label.get("reviewer"), str):
            return {
                "id": str(label.get("id", "")),
                "verdict": "fraud" if label.get("is_fraud") else "legit",
                "reviewer": label["reviewer"],
                "known_ms": label.get("known_ms"),
            }
    return None
