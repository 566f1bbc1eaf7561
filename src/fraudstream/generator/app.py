"""`fraudstream generate`: stream transactions into the input topic at a steady rate."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec
from confluent_kafka import KafkaError, Producer

from fraudstream.config import Settings
from fraudstream.generator.pacing import Pacer
from fraudstream.generator.tutorial import TutorialSource
from fraudstream.stream import ensure_topics, producer_config

__all__ = ["GeneratorStats", "generate"]


@dataclass
class GeneratorStats:
    sent: int = 0
    failed: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


def generate(
    settings: Settings,
    *,
    rate: float | None = None,
    count: int | None = None,
    seed: int | None = None,
    stop: threading.Event | None = None,
    progress: TextIO | None = sys.stderr,
    clock: Callable[[], float] = time.monotonic,
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> GeneratorStats:
    """Produce `count` transactions (or until `stop`) at `rate` per second (inf: no pacing)."""
    stop = stop or threading.Event()
    rate = settings.transactions_per_second if rate is None else rate
    ensure_topics(settings, [settings.transactions_topic])
    producer = Producer(producer_config(settings, "fraudstream-generator"))
    stats = GeneratorStats()
    source = TutorialSource(seed)
    encode = msgspec.json.Encoder().encode
    topic = settings.transactions_topic

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            stats.failed += 1

    limit = count if count is not None else 2**62
    chunk = 1 if math.isinf(rate) else max(1, min(10_000, int(rate / 200)))
    start = clock()
    pacer = Pacer(rate, start)
    next_report = start + 0.5
    produce, poll = producer.produce, producer.poll
    while stats.sent < limit and not stop.is_set():
        now = clock()
        n = min(pacer.due(now), limit) - stats.sent
        if n <= 0:
            time.sleep(max(0.0, min(pacer.time_of(stats.sent + 1) - now, 0.05)))
            continue
        n = min(n, chunk * 20) if math.isinf(rate) else n
        now_ms = wall_ms()
        for _ in range(n):
            tx = source.next(now_ms)
            value = encode(tx)
            while True:
                try:
                    produce(topic, value, tx.source.encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    poll(0.05)
        stats.sent += n
        poll(0)
        if progress is not None and now >= next_report:
            stats.elapsed = now - start
            _report(progress, stats, rate)
            next_report = now + 0.5
    stats.elapsed = clock() - start
    remaining = producer.flush(30)
    stats.failed += remaining
    if progress is not None:
        _report(progress, stats, rate)
        progress.write("\n")
        progress.flush()
    return stats


def _report(out: TextIO, stats: GeneratorStats, target: float) -> None:
    goal = "max" if math.isinf(target) else f"{target:,.0f}"
    failed = f" | {stats.failed:,} failed" if stats.failed else ""
    out.write(f"\rgenerated {stats.sent:,} tx | {stats.rate:,.1f} tx/s (target {goal}){failed}   ")
    out.flush()
