"""The one verifier every fault scenario ends with."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings
from fraudstream.detection import Engine, load_ruleset, tutorial_rules
from fraudstream.schema import (
    InvalidTransaction,
    decode_label,
    decode_transaction,
    encode_decided,
)
from fraudstream.stream.ordering import MARK, decode_block
from tests.conftest import no_open_transaction, read_to_end, topic_ends

# What the detector adds to a dead letter's headers, after the input's own.
DLQ_HEADERS = (
    "error.class",
    "error.message",
    "error.stage",
    "source.topic",
    "source.partition",
    "source.offset",
)


@dataclass
class Verdict:
    inputs: int
    valid: int
    decided: int
    dead: int


@dataclass
class DeadLetter:
    """What the dead-letter topic must hold for one bad record."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]  # the record's own
    error_class: str
    stage: str


def decided(settings: Settings) -> dict[str, bytes]:
    """Every committed decision on the legit and fraud topics, by transaction id."""
    out: dict[str, bytes] = {}
    for topic in (settings.legit_topic, settings.fraud_topic):
        for m in read_to_end(settings, topic):
            out[json.loads(m.value())["id"]] = m.value()
    return out


def group_topics(settings: Settings, group: str) -> list[str]:
    """Every topic on the broker named `<group>.…`: what a detector of `group` writes besides
    the outputs (repartition topics, `.ordered`, changelogs, its shape and status)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
    return sorted(t for t in admin.list_topics(timeout=10).topics if t.startswith(group + "."))


def _is_repartition(group: str, topic: str) -> bool:
    """A topic the group reads between its stages (`<group>.by-<key>`, `<group>.ordered`)."""
    rest = topic[len(group) + 1 :]
    return (rest.startswith("by-") and not rest.endswith(".changelog")) or rest == "ordered"


def unread_work(settings: Settings, topic: str, partition: int, start: int, end: int) -> list[str]:
    """The envelopes that carry work (a transaction, a verdict) among a repartition topic's
    committed records from offset `start` to `end`, described; [] when all are marks. A
    stopping detector's last commit may write a mark no one reads until its next run (an
    abort makes each task send its mark again): that is no work left behind."""
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_broker_url,
            "group.id": f"unread-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    work: list[str] = []
    try:
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break  # its end (read_committed)
                raise AssertionError(f"reading {topic}[{partition}] from {start}: {msg.error()}")
            for env in decode_block(msg.value() or b""):
                if env.kind < MARK:
                    work.append(f"{topic}[{partition}]@{msg.offset()}: kind {env.kind}")
            if msg.offset() >= end - 1:
                break
        else:
            raise AssertionError(f"{topic}[{partition}] not read from {start} to {end} in 30 s")
    finally:
        c.close()
    return work


def expected_dead_label(m: Any) -> DeadLetter | None:
    """The dead letter a label record must give (None: a label the detector uses)."""
    try:
        label = decode_label(m.value())
    except InvalidTransaction as exc:
        error_class = exc.kind
    else:
        if not (label.is_fraud and label.target is None):
            return None
        error_class = "label_incomplete"  # a fraud verdict naming no payee feeds nothing
    return DeadLetter(m.key(), m.value(), list(m.headers() or []), error_class, "label")


def verify(
    settings: Settings,
    *,
    group: str | None = None,
    rules: Path | None = None,
    reference: dict[str, bytes] | None = None,
    now_ms: int | None = None,
) -> Verdict:
    """Read input, legit, fraud and dead letters `read_committed` from the beginning and check:
    every input appears exactly once, nothing else appears, order within a partition is kept,
    every decision equals a clean run's (and keeps its input's key and headers), every bad
    record is dead-lettered once with its key, value and headers and the right error.class,
    no transaction hangs open on any topic the detector writes (outputs, and every
    `<group>.…` topic: repartition, ordered, changelogs), and the group has read every topic
    it reads to its read_uncommitted end.

    A record whose event time is more than MAX_EVENT_TIME_SKEW_MS ahead of the wall clock
    must be dead-lettered (`event_time_skew`); the wall clock is `now_ms` (default: now; a
    record within the few minutes between the detector's run and now of that limit would
    be ambiguous, and no scenario writes one)."""
    group = group or settings.detector_group
    wall = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    latest = wall + settings.max_event_time_skew_ms
    # the outputs read once their last transaction's markers are written (a stopped detector's
    # last commit can return just before), so a reader's end is the whole of them
    no_open_transaction(settings, list(settings.output_topics))
    inputs = read_to_end(settings, settings.transactions_topic)
    # The oracle is a clean single-process run over the input in order (with stateful rules
    # the input has one partition, so that order is the live one): it catches state counted
    # twice or lost across a restore.
    oracle = (
        Engine.from_ruleset(load_ruleset(rules))
        if rules is not None
        else Engine(tutorial_rules(), version="tutorial-1")
    )
    if rules is not None and reference is None:
        assert len({m.partition() for m in inputs}) <= 1, "stateful oracle needs one partition"
    expected: dict[str, bytes] = {}
    position: dict[str, tuple[int, int]] = {}
    original: dict[str, tuple[bytes | None, list[tuple[str, bytes]]]] = {}  # key, headers
    dead_expected: dict[tuple[str, int, int], DeadLetter] = {}
    for m in inputs:
        where = (m.topic(), m.partition(), m.offset())
        headers = list(m.headers() or [])
        try:
            decoded = decode_transaction(
                m.value(),
                topic=m.topic(),
                partition=m.partition(),
                offset=m.offset(),
                record_ts_ms=m.timestamp()[1],
            )
        except InvalidTransaction as exc:
            dead_expected[where] = DeadLetter(m.key(), m.value(), headers, exc.kind, "decode")
            continue
        if decoded.tx.ts_ms > latest:
            dead_expected[where] = DeadLetter(
                m.key(), m.value(), headers, "event_time_skew", "decode"
            )
            continue
        tx_id = decoded.tx.id or ""
        assert tx_id not in expected, f"input id {tx_id} is not unique"
        if reference is not None:  # a clean run's output, read from its topics
            expected[tx_id] = reference[tx_id]
        else:
            (decision,) = oracle.decide([decoded.tx])
            expected[tx_id] = encode_decided(m.value(), decoded.added, decision, decoded.tx)
        position[tx_id] = (m.partition(), m.offset())
        original[tx_id] = (m.key(), headers)

    seen: dict[str, int] = defaultdict(int)
    for topic, outcome in ((settings.legit_topic, "legit"), (settings.fraud_topic, "fraud")):
        last: dict[tuple[int, int], int] = {}  # (output partition, input partition) -> offset
        for m in read_to_end(settings, topic):
            record: dict[str, Any] = json.loads(m.value())
            tx_id = record["id"]
            seen[tx_id] += 1
            assert tx_id in expected, f"{topic} holds {tx_id}, which is no input"
            assert m.value() == expected[tx_id], f"decision for {tx_id} differs from a clean run"
            assert record["decision"]["outcome"] == outcome, f"{tx_id} is on {topic}"
            key, headers = original[tx_id]
            assert m.key() == key, f"{tx_id} lost its key: {m.key()!r}, input {key!r}"
            assert list(m.headers() or []) == headers, f"{tx_id} lost its input's headers"
            in_part, in_off = position[tx_id]
            k = (m.partition(), in_part)
            assert last.get(k, -1) < in_off, f"order broken in {topic}[{m.partition()}]"
            last[k] = in_off
    duplicated = {i: n for i, n in seen.items() if n > 1}
    lost = set(expected) - set(seen)
    assert not duplicated, f"{len(duplicated)} duplicated, e.g. {next(iter(duplicated))}"
    assert not lost, f"{len(lost)} lost, e.g. {next(iter(lost))}"

    internal = group_topics(settings, group)
    reads_labels = f"{group}.labels.changelog" in internal
    if reads_labels:  # the group reads verdicts too: bad ones are dead-lettered
        for m in read_to_end(settings, settings.labels_topic):
            dead_label = expected_dead_label(m)
            if dead_label is not None:
                dead_expected[(m.topic(), m.partition(), m.offset())] = dead_label

    dead = read_to_end(settings, settings.dlq_topic)
    dead_seen: set[tuple[str, int, int]] = set()
    for m in dead:
        headers = list(m.headers() or [])
        ours = dict(headers[-len(DLQ_HEADERS) :])
        assert [name for name, _ in headers[-len(DLQ_HEADERS) :]] == list(DLQ_HEADERS), (
            f"dead letter headers {[n for n, _ in headers]} do not end with {DLQ_HEADERS}"
        )
        where = (
            ours["source.topic"].decode(),
            int(ours["source.partition"]),
            int(ours["source.offset"]),
        )
        assert where not in dead_seen, f"a dead letter was written twice: {where}"
        dead_seen.add(where)
        want = dead_expected.get(where)
        assert want is not None, f"dead letter for {where}, which is a valid record"
        assert m.key() == want.key, f"dead letter {where}: key {m.key()!r}, not {want.key!r}"
        assert m.value() == want.value, f"dead letter {where}: its value was changed"
        assert headers[: -len(DLQ_HEADERS)] == want.headers, (
            f"dead letter {where}: headers {headers[: -len(DLQ_HEADERS)]}, "
            f"the record's own were {want.headers}"
        )
        assert ours["error.class"].decode() == want.error_class, (
            f"dead letter {where}: error.class {ours['error.class']!r}, "
            f"expected {want.error_class!r}"
        )
        assert ours["error.stage"].decode() == want.stage, f"dead letter {where}: error.stage"
        assert ours["error.message"], f"dead letter {where}: no error.message"
    missing = set(dead_expected) - dead_seen
    assert not missing, f"{len(missing)} bad records not dead-lettered, e.g. {min(missing)}"

    topics = [settings.transactions_topic, *settings.output_topics, *internal]
    if reads_labels:
        topics.append(settings.labels_topic)
    no_open_transaction(settings, topics)

    # Lag: the group has read every topic it reads to its read_uncommitted end: the input,
    # the topics between its stages, the labels when it reads them, and any other
    # `<group>.…` topic it has committed offsets for.
    read = [settings.transactions_topic] + [t for t in internal if _is_repartition(group, t)]
    if reads_labels:
        read.append(settings.labels_topic)
    maybe = [t for t in internal if t not in read]
    c = Consumer({"bootstrap.servers": settings.kafka_broker_url, "group.id": group})
    try:
        for topic in read + maybe:
            ends = topic_ends(settings, topic, "read_uncommitted")
            committed = {
                tp.partition: tp.offset
                for tp in c.committed([TopicPartition(topic, p) for p in ends], timeout=10)
            }
            if topic in maybe and all(o < 0 for o in committed.values()):
                continue  # not a topic the group reads (a changelog, its shape or status)
            # nothing committed (-1001) is position 0: right only for an empty partition
            lagging = {
                p: (committed[p], end) for p, end in ends.items() if max(committed[p], 0) != end
            }
            if _is_repartition(group, topic):  # marks only left unread: nothing undone
                lagging = {
                    p: (at, end)
                    for p, (at, end) in lagging.items()
                    if at > end or unread_work(settings, topic, p, max(at, 0), end)
                }
            assert not lagging, (
                f"group {group} has not read {topic} to its end: partition: (committed, end) "
                f"{lagging}"
            )
    finally:
        c.close()
    return Verdict(len(inputs), len(expected), len(seen), len(dead))
