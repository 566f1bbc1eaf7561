"""The one verifier every fault scenario ends with."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from fraudstream.config import Settings
from fraudstream.detection import Engine, load_ruleset, tutorial_rules
from fraudstream.schema import InvalidTransaction, decode_transaction, encode_decided
from fraudstream.stream import group_lag
from tests.conftest import read_to_end


@dataclass
class Verdict:
    inputs: int
    valid: int
    decided: int
    dead: int


def _watermarks(settings: Settings, topic: str, isolation: str) -> dict[int, int]:
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_broker_url,
            "group.id": f"wm-{uuid.uuid4().hex}",
            "isolation.level": isolation,
        }
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in parts
        }
    finally:
        c.close()


def decided(settings: Settings) -> dict[str, bytes]:
    """Every committed decision on the legit and fraud topics, by transaction id."""
    out: dict[str, bytes] = {}
    for topic in (settings.legit_topic, settings.fraud_topic):
        for m in read_to_end(settings, topic):
            out[json.loads(m.value())["id"]] = m.value()
    return out


def verify(
    settings: Settings,
    *,
    group: str | None = None,
    rules: Path | None = None,
    reference: dict[str, bytes] | None = None,
) -> Verdict:
    """Read input, legit, fraud and dead letters `read_committed` from the beginning and check:
    every input appears exactly once, nothing else appears, order within a partition is kept,
    every decision equals a clean run's, no transaction hangs, and the group's lag is 0."""
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
    bad: set[tuple[int, int]] = set()
    for m in inputs:
        try:
            decoded = decode_transaction(
                m.value(),
                topic=m.topic(),
                partition=m.partition(),
                offset=m.offset(),
                record_ts_ms=m.timestamp()[1],
            )
        except InvalidTransaction:
            bad.add((m.partition(), m.offset()))
            continue
        tx_id = decoded.tx.id or ""
        assert tx_id not in expected, f"input id {tx_id} is not unique"
        if reference is not None:  # a clean run's output, read from its topics
            expected[tx_id] = reference[tx_id]
        else:
            (decision,) = oracle.decide([decoded.tx])
            expected[tx_id] = encode_decided(m.value(), decoded, decision)
        position[tx_id] = (m.partition(), m.offset())

    seen: dict[str, int] = defaultdict(int)
    for topic in (settings.legit_topic, settings.fraud_topic):
        last: dict[tuple[int, int], int] = {}  # (output partition, input partition) -> offset
        for m in read_to_end(settings, topic):
            record: dict[str, Any] = json.loads(m.value())
            tx_id = record["id"]
            seen[tx_id] += 1
            assert tx_id in expected, f"{topic} holds {tx_id}, which is no input"
            assert m.value() == expected[tx_id], f"decision for {tx_id} differs from a clean run"
            in_part, in_off = position[tx_id]
            k = (m.partition(), in_part)
            assert last.get(k, -1) < in_off, f"order broken in {topic}[{m.partition()}]"
            last[k] = in_off
    duplicated = {i: n for i, n in seen.items() if n > 1}
    lost = set(expected) - set(seen)
    assert not duplicated, f"{len(duplicated)} duplicated, e.g. {next(iter(duplicated))}"
    assert not lost, f"{len(lost)} lost, e.g. {next(iter(lost))}"

    dead = read_to_end(settings, settings.dlq_topic)
    dead_at = [
        (int(dict(m.headers())["source.partition"]), int(dict(m.headers())["source.offset"]))
        for m in dead
    ]
    assert len(dead_at) == len(set(dead_at)), "a dead letter was written twice"
    assert set(dead_at) == bad, "dead letters do not match the bad input"

    for topic in (settings.legit_topic, settings.fraud_topic, settings.dlq_topic):
        assert _watermarks(settings, topic, "read_committed") == _watermarks(
            settings, topic, "read_uncommitted"
        ), f"a transaction hangs open on {topic}"

    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_broker_url,
            "group.id": group or settings.detector_group,
        }
    )
    try:
        ends = _watermarks(settings, settings.transactions_topic, "read_uncommitted")
        committed = c.committed(
            [TopicPartition(settings.transactions_topic, p) for p in ends], timeout=10
        )
        assert {tp.partition: tp.offset for tp in committed} == ends, "consumer lag is not 0"
    finally:
        c.close()
    stages = settings.model_copy(update={"detector_group": group or settings.detector_group})
    assert group_lag(stages) == 0, "records wait unfinished between the detector's stages"
    return Verdict(len(inputs), len(expected), len(seen), len(dead))
