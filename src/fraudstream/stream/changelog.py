"""The detector's state changelog: a compacted topic written in the same transaction as the
outputs, read back from the beginning when partitions are assigned.

One partition holds every key's latest committed state, so any instance can restore any key:
simple and exact, at the cost of every instance holding all keys (co-partitioned changelogs
come with the repartition step of scale-out).
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from fraudstream.config import Settings
from fraudstream.errors import FraudstreamError
from fraudstream.stream.clients import consumer_config

__all__ = ["changelog_topic", "read_changelog"]


def changelog_topic(settings: Settings) -> str:
    return f"{settings.detector_group}.changelog"


def read_changelog(settings: Settings, timeout: float = 300) -> list[tuple[bytes, bytes | None]]:
    """Every committed changelog record, oldest first (read_committed, to the current end)."""
    topic = changelog_topic(settings)
    consumer = Consumer(
        consumer_config(
            settings, "fraudstream-restore", group_id=f"fraudstream-restore-{uuid.uuid4()}"
        )
    )
    out: list[tuple[bytes, bytes | None]] = []
    try:
        tp = TopicPartition(topic, 0)
        end = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
        if end <= 0:
            return out
        consumer.assign([TopicPartition(topic, 0, -2)])
        deadline = time.monotonic() + timeout
        while consumer.position([tp])[0].offset < end:
            if time.monotonic() > deadline:
                raise FraudstreamError(f"restoring state from {topic} took over {timeout:.0f}s")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                key = msg.key()
                if msg.error() is None and key is not None:
                    out.append((key, msg.value()))
    finally:
        consumer.close()
    return out
