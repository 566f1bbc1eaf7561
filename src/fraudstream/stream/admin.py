"""Topic administration: create the pipeline's topics when they are missing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from fraudstream.config import Settings
from fraudstream.errors import FraudstreamError, KafkaUnavailableError, TopicNotFoundError
from fraudstream.stream.changelog import watermarks
from fraudstream.stream.clients import (
    admin_client,
    base_config,
    check_connection,
    consumer_config,
)
from fraudstream.stream.topology import Topology

__all__ = ["committed_progress", "create_missing", "ensure_topics", "group_lag", "read_topic"]


def ensure_topics(
    settings: Settings,
    topics: Iterable[str] | None = None,
    *,
    partitions: int | None = None,
    compacted: Iterable[str] = (),
    admin: AdminClient | None = None,
) -> list[str]:
    """Create each missing topic; return the names created. Existing topics are left alone.
    `admin`: a client the caller holds (and whose broker it knows answers)."""
    if admin is None:
        check_connection(settings)
    wanted = list(topics if topics is not None else settings.all_topics)
    compact = set(compacted)
    n = partitions or settings.topic_partitions
    return create_missing(settings, {t: (n, t in compact) for t in wanted}, admin=admin)


def create_missing(
    settings: Settings,
    specs: dict[str, tuple[int, bool]],
    configs: dict[str, dict[str, str]] | None = None,
    admin: AdminClient | None = None,
    listed: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics of `specs` (name -> partitions, compacted) that do not exist, in one
    request, with the topic configs of `configs` (name -> config) besides; return the names
    this request created (not those another client created meanwhile). Existing ones are
    left as they are. `admin`: a client to use (a new client's first request waits about
    50 ms: a caller with several requests shares one); `listed`: the broker's topics as the
    caller has just listed them (one request fewer)."""
    admin = admin or admin_client(settings)
    existing = set(listed if listed is not None else admin.list_topics(timeout=10).topics)
    missing = {t: spec for t, spec in specs.items() if t not in existing}
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=n,
                replication_factor=settings.topic_replication_factor,
                config=({"cleanup.policy": "compact"} if compact else {})
                | (configs or {}).get(t, {}),
            )
            for t, (n, compact) in missing.items()
        ],
        operation_timeout=30,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result()
            created.append(topic)
        except KafkaException as exc:  # another client may have just created it: fine
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise FraudstreamError(f"could not create topic {topic}: {exc}") from None
    return created


def committed_progress(settings: Settings) -> int:
    """Input records the detector group has committed, over all partitions (0 while the
    group coordinator is still loading)."""
    topic = settings.transactions_topic
    # read_uncommitted: the offsets as last committed, without waiting for an open
    # transaction's pending offsets to settle (a killed detector's stay pending until its
    # transaction times out, 20 s (`TRANSACTION_TIMEOUT_MS`), or its successor starts: a
    # read_committed fetch waits)
    consumer = Consumer(
        base_config(settings, "fraudstream-progress", consumer=True)
        | {"group.id": settings.detector_group, "isolation.level": "read_uncommitted"}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        try:
            tps = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        except KafkaException as exc:
            err = exc.args[0]
            if err.retriable() or err.code() == KafkaError.NOT_COORDINATOR:
                return 0
            raise
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


def group_lag(settings: Settings) -> int:
    """Records the detector group has not finished: the input and every internal topic
    between its stages (0 when every decision is committed and nothing waits in a stage; -1
    while that cannot be known yet: a coordinator loading, a topic just created).

    Against the read_uncommitted ends: a transaction still open (a mark on its way to the
    next stage, say) is work not finished. The read_committed end stops before it, so a
    group would show no lag while its last mark is still to be read."""
    group = settings.detector_group
    consumer = Consumer(
        base_config(settings, "fraudstream-lag", consumer=True)
        | {"group.id": group, "isolation.level": "read_uncommitted"}
    )
    try:
        topics = consumer.list_topics(timeout=10).topics
        names = [settings.transactions_topic] + [
            t for t in topics if Topology.is_repartition(group, t)
        ]
        tps = [TopicPartition(t, p) for t in names if t in topics for p in topics[t].partitions]
        try:
            committed = consumer.committed(tps, timeout=10)
        except KafkaException as exc:
            err = exc.args[0]
            if err.retriable() or err.code() == KafkaError.NOT_COORDINATOR:
                return -1
            raise
        lag = 0
        for tp in committed:
            try:
                end = consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            except KafkaException as exc:  # a topic just created: its leader is not known yet
                if exc.args[0].retriable() or exc.args[0].code() in (
                    KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE,
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_PARTITION,
                ):
                    return -1
                raise
            lag += end - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def read_topic(
    settings: Settings, topic: str, *, last: int | None = None, created: bool = False
) -> Iterator[tuple[bytes | None, int, int, int]]:
    """(value, partition, offset, record time) of each committed record of `topic`, from its
    beginning (or each partition's `last` offsets) to its end when reading starts, each
    partition in order. Raises `TopicNotFoundError` when there is no such topic. `created`:
    the caller has just made sure it exists, so a topic not known yet, or a partition
    without its leader yet, is waited for (up to 30 s) rather than taken as missing."""
    check_connection(settings)  # nothing listening there: said in seconds
    consumer = Consumer(
        consumer_config(
            settings, "fraudstream-reader", group_id=f"fraudstream-reader-{uuid.uuid4()}"
        )
    )
    try:
        try:
            deadline = time.monotonic() + 30
            md = consumer.list_topics(topic, timeout=10)
            while created and (topic not in md.topics or md.topics[topic].error is not None):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)  # (a topic just created: its metadata is on its way)
                md = consumer.list_topics(topic, timeout=10)
            if topic not in md.topics or md.topics[topic].error is not None:
                raise TopicNotFoundError(f"no topic {topic} at {settings.kafka_broker_url}")
            starts, ends = {}, {}
            for p in md.topics[topic].partitions:
                tp = TopicPartition(topic, p)
                if created:  # (a partition without its leader yet is asked again)
                    low, high = watermarks(consumer, tp, max(deadline - time.monotonic(), 1))
                else:
                    low, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high > low:
                    starts[p] = low if last is None else max(low, high - last)
                    ends[p] = high
        except KafkaException as exc:
            raise KafkaUnavailableError(settings.kafka_broker_url, str(exc)) from None
        consumer.assign([TopicPartition(topic, p, at) for p, at in starts.items()])
        idle = 0
        while ends and idle < 3:  # transaction markers keep positions one short: idle ends it
            msgs = consumer.consume(num_messages=10_000, timeout=1.0)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                if msg.error() is not None:
                    continue
                p, off = int(msg.partition() or 0), int(msg.offset() or 0)
                yield msg.value(), p, off, msg.timestamp()[1]
                if p in ends and off + 1 >= ends[p]:
                    del ends[p]
    finally:
        consumer.close()
