"""Event time that cannot take the pipeline hostage.

During `make run` a user sent the README's kcat example (no timestamp: it takes the wall
clock) into the simulator's stream, whose event time runs months behind the clock. Its
partition's time jumped months ahead, the payee stage held every later record of that
partition until the others caught up (never), memory grew without bound and later records were
never decided. A record far ahead of its partition's time is now decided at the stream's time
(flagged `event_time_skew`), and one ahead of the wall clock goes to the dead-letter topic.

The same when such records are a fresh partition's first (sent just after `make run` starts,
before the generator's first records there): they set the partition's time to the clock's, and
every record after them waited. A partition's first records are now held until the records
after them show which clock the partition runs on.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from fraudstream.config import Settings
from fraudstream.generator.app import records
from fraudstream.stream import committed_progress, consumer_config, group_lag
from tests.chaos.test_faults import Detectors
from tests.conftest import REPO, read_to_end, wait_for

pytestmark = pytest.mark.chaos
DEFAULT_RULES = str(REPO / "rules" / "default.yaml")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Outputs:
    """Counts committed decisions as they appear (one reader, kept open)."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer(
            consumer_config(settings, "test-outputs", group_id=f"out-{uuid.uuid4().hex}")
        )
        self.consumer.subscribe([settings.legit_topic, settings.fraud_topic])
        self.values: list[dict[str, Any]] = []

    def count(self) -> int:
        for m in self.consumer.consume(num_messages=10_000, timeout=0.2):
            if m.error() is None:
                self.values.append(json.loads(m.value()))
        return len(self.values)


def test_wall_clock_and_future_records_in_a_simulated_stream(
    settings: Settings, tmp_path: Path
) -> None:
    """With idle marks off (PARTITION_IDLE_MS=10 min: a stream that never pauses), everything
    but the last instants of the stream is decided; before, every record after the clock's
    ones on their partitions waited in the payee stage."""
    n = 20_000
    source = records("sim", 41, lambda: 0, fraud_rate=0.02)
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url, "linger.ms": 5})
    topic = settings.transactions_topic

    def simulated(count: int) -> None:
        for _ in range(count):
            key, value, _label = next(source)
            producer.produce(topic, value, key)

    kcat = b'{"source":"a1","target":"b2","amount":950.00,"currency":"EUR"}'
    future = (
        b'{"source":"a9","target":"b9","amount":5.00,"currency":"EUR",'
        b'"timestamp":"2100-01-01T00:00:00Z"}'
    )
    for partition in (0, 0, 2):  # the first records of two partitions, on the clock
        producer.produce(topic, kcat, b"a1", partition=partition)
    simulated(n)
    for partition in (0, 1, 1, 2, 2):  # five records on the clock, on every partition
        producer.produce(topic, kcat, b"a1", partition=partition)
    for partition in (0, 2):
        producer.produce(topic, future, b"a9", partition=partition)
    simulated(n)  # the same world, carrying on
    assert producer.flush(30) == 0
    total = 2 * n + 3 + 5 + 2

    outputs = Outputs(settings)
    d = Detectors(settings, tmp_path, rules=DEFAULT_RULES, PARTITION_IDLE_MS="600000")
    try:
        proc = d.start()
        peak = 0.0

        def most_decided() -> bool:
            nonlocal peak
            assert proc.poll() is None, proc.log.read_text()  # type: ignore[attr-defined]
            peak = max(peak, _rss_mb(proc.pid))
            return outputs.count() >= 2 * n + 8 - TAIL

        wait_for(most_decided, timeout=120, what=f"all but the last {TAIL} decided")
        d.stop(proc)
        d.env.pop("PARTITION_IDLE_MS")
        # idle marks on again: the stream's last instants come out too (with the default rules
        # those are only the records after a payment of 500 or more held in the payee stage,
        # so there may be none left: wait for it to run before it is stopped)
        proc = d.ready(d.start())
        wait_for(
            lambda: committed_progress(settings) >= total and group_lag(settings) == 0,
            timeout=120,
            what="every record decided",
        )
        d.stop(proc)
    finally:
        d.cleanup()

    decisions = [
        json.loads(m.value())
        for t in (settings.legit_topic, settings.fraud_topic)
        for m in read_to_end(settings, t)
    ]
    ids = [r["id"] for r in decisions]
    assert len(ids) == 2 * n + 8 and len(set(ids)) == len(ids), "lost or duplicated"
    flagged = [
        r
        for r in decisions
        if any(x["rule"] == "event_time_skew" for x in r["decision"]["reasons"])
    ]
    assert sorted(r["source"] for r in flagged) == ["a1"] * 8
    assert all("decided at" in r["decision"]["reasons"][-1]["reason"] for r in flagged)
    dead = read_to_end(settings, settings.dlq_topic)
    assert [dict(m.headers())["error.class"] for m in dead] == [b"event_time_skew"] * 2
    assert all(m.value() == future for m in dead)
    assert peak < 400, f"resident memory peaked at {peak:.0f} MB"


# Records held at the end of a stream that never idles: those above the lowest partition's
# last mark (measured: 0-200 for this seeded stream); the clock's records held ~13,000.
TAIL = 300
