"""One Kafka consumer per server process, fanned out to every connected browser.

A thread reads the legit and fraud topics (`read_committed`) in batches and hands each batch
to the event loop, which keeps the counters and a bounded history and puts one pre-encoded SSE
payload on every subscriber's queue. A slow browser loses batches, never the server's memory.

    feed = Feed(settings)
    feed.start(asyncio.get_running_loop())
    queue = feed.subscribe()        # str payloads, one per batch
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import Consumer, TopicPartition

from fraudstream.config import Settings
from fraudstream.errors import FraudstreamError
from fraudstream.stream import consumer_config, ensure_topics

__all__ = ["Feed", "FeedStats"]

log = logging.getLogger(__name__)

_FIELDS = ("id", "timestamp", "source", "target", "amount", "currency", "merchant", "country")
_RATE_WINDOW_S = 5.0
_REVIEWS_KEPT = 10_000  # the latest analysts' verdicts a new page is told of


@dataclass
class FeedStats:
    legit: int = 0
    fraud: int = 0
    dropped: int = 0
    window: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def total(self) -> int:
        return self.legit + self.fraud

    def rate(self, now: float) -> float:
        while self.window and self.window[0][0] < now - _RATE_WINDOW_S:
            self.window.popleft()
        return sum(n for _, n in self.window) / _RATE_WINDOW_S


class Feed:
    """The shared consumer and its subscribers."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.history: deque[dict[str, Any]] = deque(maxlen=settings.dashboard_history)
        self.stats = FeedStats()
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._encode = msgspec.json.Encoder().encode
        self.ready = threading.Event()
        self.reviews: dict[str, dict[str, Any]] = {}  # transaction id -> latest verdict
        self.stream_ms = 0  # the latest event time among the decisions read (ms)

    # --- the event-loop side ---------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._consume, name="feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def subscribe(self, maxsize: int = 64) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        self._subscribers.discard(queue)

    def snapshot(self) -> str:
        """Everything a new browser needs: the history (oldest first), the counters and the
        analysts' verdicts."""
        return self._payload(list(self.history), list(self.reviews.values()))

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "legit": s.legit,
            "fraud": s.fraud,
            "total": s.total,
            "rate": round(s.rate(self.clock()), 1),
            "clients": len(self._subscribers),
        }

    def _payload(
        self, items: list[dict[str, Any]], reviews: list[dict[str, Any]] | None = None
    ) -> str:
        body = {"items": items, "stats": self.stats_dict(), "reviews": reviews or []}
        return self._encode(body).decode()

    def _publish(
        self,
        items: list[dict[str, Any]],
        legit: int,
        fraud: int,
        reviews: list[dict[str, Any]] | None = None,
    ) -> None:
        s = self.stats
        s.legit += legit
        s.fraud += fraud
        s.window.append((self.clock(), legit + fraud))
        self.history.extend(items)
        for item in items:
            ts = item.get("timestamp")
            if isinstance(ts, int) and ts > self.stream_ms:
                self.stream_ms = ts
        for review in reviews or []:
            self.reviews.pop(review["id"], None)  # the latest verdict, newest last
            self.reviews[review["id"]] = review
        while len(self.reviews) > _REVIEWS_KEPT:
            del self.reviews[next(iter(self.reviews))]
        # The page shows a bounded history: a batch larger than that is cut to its newest part.
        payload = self._payload(items[-self.settings.dashboard_history :], reviews)
        for queue in self._subscribers:
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                s.dropped += 1

    # --- the consumer thread ---------------------------------------------------------------

    def _consume(self) -> None:
        settings = self.settings
        topics = {
            settings.legit_topic: "legit",
            settings.fraud_topic: "fraud",
            settings.labels_topic: "label",  # for the analysts' verdicts among them
        }
        consumer = Consumer(
            consumer_config(
                settings, "fraudstream-dashboard", group_id=f"fraudstream-dashboard-{uuid.uuid4()}"
            )
        )
        try:
            ensure_topics(settings, list(topics))
            consumer.assign(self._start_positions(consumer, list(topics)))
            self.ready.set()
            while not self._stop.is_set():
                msgs = consumer.consume(num_messages=1000, timeout=0.2)
                if not msgs:
                    continue
                items, legit, fraud, reviews = self._decode(msgs, topics)
                if (items or reviews) and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._publish, items, legit, fraud, reviews)
        except FraudstreamError as exc:  # says what to do; no traceback
            log.error("dashboard feed stopped: %s", exc)
        except Exception:
            log.exception("dashboard feed stopped")
            raise
        finally:
            consumer.close()

    def _start_positions(self, consumer: Consumer, topics: list[str]) -> list[TopicPartition]:
        """Each partition's last `history` records, so a fresh page is not empty."""
        md = consumer.list_topics(timeout=10)
        positions = []
        for topic in topics:
            for partition in md.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                start = max(low, high - self.settings.dashboard_history)
                positions.append(TopicPartition(topic, partition, start))
        return positions

    @staticmethod
    def _decode(
        msgs: list[Any], topics: dict[str, str]
    ) -> tuple[list[dict[str, Any]], int, int, list[dict[str, Any]]]:
        items: list[dict[str, Any]] = []
        reviews: list[dict[str, Any]] = []
        legit = fraud = 0
        for msg in msgs:
            if msg.error() is not None:
                continue
            outcome = topics[msg.topic()]
            if outcome == "label":
                review = _review(msg.value())
                if review is not None:
                    reviews.append(review)
                continue
            try:
                record = msgspec.json.decode(msg.value() or b"")
            except msgspec.DecodeError:
                continue  # not ours to judge; the page shows decided transactions only
            if not isinstance(record, dict):
                continue
            item = {k: record[k] for k in _FIELDS if k in record}
            decision = record.get("decision")
            item["outcome"] = outcome
            if isinstance(decision, dict):
                item["score"] = decision.get("score")
                item["reasons"] = decision.get("reasons") or []
            items.append(item)
            if outcome == "fraud":
                fraud += 1
            else:
                legit += 1
        return items, legit, fraud, reviews


def _review(value: bytes | None) -> dict[str, Any] | None:
    """An analyst's verdict from a labels-topic record (None for the other labels: the
    simulator's ground truth, a bank's chargebacks)."""
    if not value or b'"reviewer"' not in value:  # most labels: not decoded at all
        return None
    try:
        label = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    if not isinstance(label, dict) or not isinstance(label.get("reviewer"), str):
        return None
    return {
        "id": str(label.get("id", "")),
        "verdict": "fraud" if label.get("is_fraud") else "legit",
        "reviewer": label["reviewer"],
        "known_ms": label.get("known_ms"),
    }
