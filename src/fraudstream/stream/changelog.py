"""State changelogs: compacted topics written in the same transaction as the outputs, one
partition per task (a stage's partition), read back when that partition is assigned.

    records = read_changelog(settings, "fraud-detector.changelog", [0, 3])
    records[3]   # [(key, value), ...] oldest first, committed only
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from fraudstream.config import Settings
from fraudstream.errors import FraudstreamError
from fraudstream.stream.clients import (
    BROKER_ABORT_SWEEP_MS,
    consumer_config,
    transaction_timeout_ms,
)

__all__ = [
    "FIRST_RECORD_TIMEOUT_S",
    "end_offset",
    "end_offsets",
    "first_record",
    "read_changelog",
    "topic_id",
    "topic_ids",
    "wait_readable",
]

log = logging.getLogger(__name__)

FIRST_RECORD_TIMEOUT_S = 5.0  # `first_record`: the whole look, requests and reading

_NOT_YET = (  # a topic just created, whose leader the cluster is still electing or announcing
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
)


def end_offset(consumer: Consumer, tp: TopicPartition, timeout: float = 30) -> int:
    """The partition's end offset, waiting while a topic just created is not known yet."""
    return watermarks(consumer, tp, timeout)[1]


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 30) -> tuple[int, int]:
    """The partition's low and high watermarks, waiting while a topic just created is not
    known yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.code() in _NOT_YET or err.retriable()) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def read_changelog(
    settings: Settings,
    topic: str,
    partitions: list[int],
    timeout: float = 300,
    *,
    start: dict[int, int] | None = None,
) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """Every committed record of these partitions, oldest first (read_committed, to the end
    as it is now); from `start[p]` on where given (a snapshot's offset), else whole.

    A transaction left open there (by a process killed in the middle of one) hides what
    was committed after it until the broker aborts it: a reader stops at its first record
    (the last stable offset). The process that had these partitions before waited for its
    own commits to be readable (`TaskManager.hand_over`), but one killed too could not,
    and its commits, made after such a transaction of the owner before it, would be left
    out. So the reading goes on to the high watermark the first fetch saw, waiting for
    that transaction to end, at most the transaction timeout, the broker's sweep and 5 s
    (saying what it waits for after a second, and warning if it gave up)."""
    start = start or {}
    out: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in partitions}
    if not partitions:
        return out
    # The last offset of a transactional topic is a commit marker, which no record comes
    # back for: its fetch waited the broker's `fetch.wait.max.ms` (500 ms) and the consume
    # its timeout, twice, about a second of every restore whatever its size.
    consumer = Consumer(
        consumer_config(
            settings, "fraudstream-restore", group_id=f"fraudstream-restore-{uuid.uuid4()}"
        )
        | {"fetch.wait.max.ms": 10}
    )
    try:
        # the last stable offsets (read_committed): what is committed now, read in any case
        ends = {p: end_offset(consumer, TopicPartition(topic, p)) for p in partitions}
        # (one with nothing committed to read is assigned at its end: the fetch there tells
        # whether anything lies beyond, and none is asked where it starts)
        consumer.assign(
            [
                TopicPartition(
                    topic, p, ends[p] if ends[p] <= start.get(p, 0) else start.get(p, -2)
                )
                for p in partitions
            ]
        )
        open_wait = (transaction_timeout_ms(settings) + BROKER_ABORT_SWEEP_MS) / 1000 + 5
        deadline = time.monotonic() + timeout + open_wait
        left = dict(ends)  # per partition, the end to read to
        seen: set[int] = set()  # the partitions whose first fetch's high watermark is known
        since: dict[int, float] = {}  # partitions read to their stable end: since when
        said = False
        while left:
            now = time.monotonic()
            if now > deadline:
                raise FraudstreamError(
                    f"restoring state from {topic} took over {timeout:.0f}s; is the broker "
                    "overloaded? Restart the detector to try again"
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.02):
                key = msg.key()
                partition = msg.partition()
                if msg.error() is None and key is not None and partition is not None:
                    out[partition].append((key, msg.value()))
            tps = [TopicPartition(topic, p) for p in list(left)]
            behind = []
            for tp in consumer.position(tps):
                p = tp.partition
                # the high watermark of the last fetch (past any open transaction); not
                # fetched yet: -1
                low, high = consumer.get_watermark_offsets(tp, cached=True)
                here = tp.offset if tp.offset >= 0 else max(start.get(p, 0), low)
                if high < 0:
                    continue  # (not fetched yet)
                if p not in seen:  # (the end as the first fetch saw it)
                    seen.add(p)
                    left[p] = max(left[p], high)
                if here < ends[p]:
                    continue  # (the committed part is still being read)
                if here >= left[p]:
                    del left[p]
                    continue
                waited = now - since.setdefault(p, now)  # (each from its own stable end)
                if waited < open_wait:
                    behind.append(tp)
                    continue
                log.warning(
                    "a transaction left open on %s[%d] is still not ended after %.0fs: "
                    "restored without what was committed after it (check the broker's "
                    "health)",
                    topic,
                    p,
                    waited,
                )
                del left[p]
            if behind and now - min(since[tp.partition] for tp in behind) >= 1 and not said:
                said = True
                log.info(
                    "waiting for a transaction left open on %s (by a process that stopped "
                    "in the middle of one) to end, so that what was committed after it is "
                    "restored too (at most %.0fs)",
                    ", ".join(f"{tp.topic}[{tp.partition}]" for tp in behind[:5]),
                    open_wait,
                )
    finally:
        consumer.close()
    return out


def end_offsets(settings: Settings, topic: str, partitions: list[int]) -> dict[int, int]:
    """The partitions' end offsets now (a topic just created waits for its leader)."""
    consumer = Consumer(
        consumer_config(settings, "fraudstream-ends", group_id=f"fraudstream-ends-{uuid.uuid4()}")
    )
    try:
        return {p: end_offset(consumer, TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


def wait_readable(
    admin: Any, tps: list[TopicPartition], timeout: float = 10, *, name: str = ""
) -> list[TopicPartition]:
    """Wait until a read_committed reader can read each partition to its end: its last stable
    offset has reached its high watermark as first asked. A producer's `commit_transaction`
    returns once the transaction is decided, before its markers are written on the
    partitions; until then a reader stops before it (measured: 35 of 200 commits, asked right
    after they returned). Returns the partitions still not readable after `timeout` (an
    open transaction of another producer holds them until it ends). A retriable error (a
    leader moving) is asked again within `timeout`; others raise, as KafkaException."""
    from confluent_kafka import IsolationLevel
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    from fraudstream.stream.clients import admin_result

    if not tps:
        return []
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + timeout

    def ends(level: IsolationLevel) -> dict[tuple[str, int], int] | None:
        """Each partition's end at `level`; None after a retriable error."""
        wait = max(min(5.0, deadline - time.monotonic()), 0.5)
        asked = admin.list_offsets(
            dict.fromkeys(tps, latest), isolation_level=level, request_timeout=wait
        )
        try:
            return {
                (tp.topic, tp.partition): admin_result(f, wait).offset for tp, f in asked.items()
            }
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() >= deadline:
                raise
            return None

    started = time.monotonic()
    high = None
    said, pause = False, 0.002
    while True:
        if high is None:
            high = ends(IsolationLevel.READ_UNCOMMITTED)
        stable = ends(IsolationLevel.READ_COMMITTED) if high is not None else None
        behind = tps
        if high is not None and stable is not None:
            behind = [
                tp
                for tp in tps
                if stable[(tp.topic, tp.partition)] < high[(tp.topic, tp.partition)]
            ]
        if not behind or time.monotonic() >= deadline:
            return behind
        if time.monotonic() - started >= 1 and not said:
            said = True
            log.info(
                "%swaiting for the last transaction's markers on %s to be written (or for "
                "the broker to abort a transaction left open there by a process that "
                "stopped), so that whoever takes these partitions next restores them whole",
                f"{name}: " if name else "",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in behind[:5]),
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def first_record(
    settings: Settings,
    topic: str,
    partition: int,
    start: int,
    timeout: float = FIRST_RECORD_TIMEOUT_S,
) -> tuple[int, int | None]:
    """The partition's first offset still kept, and the offset of its first committed record
    at or after `start` (read_committed: transaction markers and aborted records are passed
    over); None when none came within `timeout` (for the whole: requests and reading). It
    reads ahead little: one record is all it needs."""
    deadline = time.monotonic() + timeout
    consumer = Consumer(
        consumer_config(settings, "fraudstream-gap", group_id=f"fraudstream-gap-{uuid.uuid4()}")
        | {
            "fetch.wait.max.ms": 10,
            "max.partition.fetch.bytes": 65_536,
            "queued.max.messages.kbytes": 64,
            "queued.min.messages": 1,
        }
    )
    try:
        tp = TopicPartition(topic, partition)
        low = int(consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)[0])
        consumer.assign([TopicPartition(topic, partition, max(start, low))])
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None and (offset := msg.offset()) is not None:
                return low, offset
        return low, None
    finally:
        consumer.close()


def topic_id(settings: Settings, topic: str) -> str:
    """The topic's id: a topic deleted and created again under the same name has another."""
    return topic_ids(settings, [topic])[topic]


def topic_ids(settings: Settings, topics: list[str], admin: Any = None) -> dict[str, str]:
    """`topic_id` of each (`admin`: a client to ask with, else one of its own)."""
    from confluent_kafka import TopicCollection

    from fraudstream.stream.clients import admin_client, admin_result

    if admin is None:
        admin = admin_client(settings, "fraudstream-topic-id")
    described = admin.describe_topics(TopicCollection(topics), request_timeout=20)
    return {t: str(admin_result(described[t], 20).topic_id) for t in topics}
