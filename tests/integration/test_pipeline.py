"""Generator → detector → legit / fraud / dead-letter, on the real broker."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import generate_latest

from fraudstream.config import Settings
from fraudstream.detection import Engine, load_ruleset
from fraudstream.errors import ProcessingError
from fraudstream.generator import generate
from fraudstream.stream import Processor, committed_progress, ensure_topics
from fraudstream.stream.metrics import RuntimeMetrics
from tests.conftest import (
    REPO,
    SettingsFactory,
    env_for,
    produce_raw,
    read_all,
    read_to_end,
    run_detector,
    spawn,
    topic_ends,
    wait_for,
)

DEFAULT_RULES = REPO / "rules" / "default.yaml"


def _decided(settings: Settings, expect: int) -> tuple[list[dict], list[dict]]:
    legit = [
        json.loads(m.value()) for m in read_all(settings, settings.legit_topic, expect=0, timeout=0)
    ]
    fraud = [
        json.loads(m.value())
        for m in read_all(settings, settings.fraud_topic, expect=expect - len(legit))
    ]
    return legit, fraud


def _outputs(settings: Settings) -> list[dict[str, Any]]:
    """Every committed decision on the legit and fraud topics, decoded."""
    return [
        json.loads(m.value())
        for topic in (settings.legit_topic, settings.fraud_topic)
        for m in read_to_end(settings, topic)
    ]


def test_ten_thousand_generated_transactions_are_each_decided_exactly_once(
    settings: Settings,
) -> None:
    stats = generate(settings, rate=math.inf, count=10_000, seed=42, progress=None)
    assert (stats.sent, stats.failed) == (10_000, 0)
    inputs = {
        t["id"]: t
        for t in (
            json.loads(m.value())
            for m in read_all(settings, settings.transactions_topic, expect=10_000)
        )
    }
    assert len(inputs) == 10_000

    run_detector(settings, 10_000)
    legit, fraud = _decided(settings, 10_000)

    out_ids = [t["id"] for t in legit + fraud]
    assert len(out_ids) == 10_000 and set(out_ids) == set(inputs)  # each exactly once
    assert {t["id"] for t in fraud} == {i for i, t in inputs.items() if t["amount"] >= 900}
    assert 500 < len(fraud) < 1500  # ~10% of uniform 1.00 to 1000.00
    for t in fraud:
        assert t["decision"]["outcome"] == "fraud"
        assert t["decision"]["reasons"][0]["rule"] == "amount_ge_900"
        assert {k: v for k, v in t.items() if k != "decision"} == inputs[t["id"]]
    assert all(
        t["decision"]["outcome"] == "legit" and t["decision"]["reasons"] == [] for t in legit
    )
    assert read_all(settings, settings.dlq_topic, expect=0, timeout=0) == []


MALFORMED = [
    b"not json",
    b"\xff\xfe garbage",
    b'{"source":"a","target":"b","amount":"12.00","currency":"EUR"}',
    b'{"source":"a","amount":12,"currency":"EUR"}',
    b'{"source":"a","target":"b","amount":-3,"currency":"EUR"}',
    b'{"source":"a","target":"b","amount":3,"currency":"QQQ"}',
    b"[]",
    b"",
    None,
    b'{"source":"a","target":"b","amount":1.234,"currency":"EUR"}',
]


def test_records_held_until_their_partition_went_idle_are_not_decided_again_after_a_restart(
    make_settings: SettingsFactory,
) -> None:
    """A partition's first records wait until a record shows which clock they are on, or
    until the partition goes idle: then they are decided, and the transaction that decides
    them commits the input past them. A restart reads on from there (it decided them a second
    time when the input's committed offset stayed at the first held record)."""
    settings = make_settings(partition_idle_ms=100)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    first = [(f"A{i}".encode(), _payment(f"first-{i}", f"A{i}")) for i in range(3)]
    produce_raw(settings, first)  # a few per partition: held until the partition is idle
    run_detector(settings, 3, engine=engine)
    assert committed_progress(settings) == 3  # all three read and committed past
    then = [(f"B{i}".encode(), _payment(f"then-{i}", f"B{i}")) for i in range(3)]
    produce_raw(settings, then)
    run_detector(settings, 3, engine=Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    decided = [d["id"] for d in _outputs(settings)]
    assert sorted(decided) == [f"first-{i}" for i in range(3)] + [f"then-{i}" for i in range(3)]


def test_an_input_whose_end_of_partition_event_is_missed_still_goes_idle(
    make_settings: SettingsFactory,
) -> None:
    """The stages release a partition's last records once its input is idle, which the
    consumer's end-of-partition event says; librdkafka sends it once per offset, and with it
    missed (ignored here on purpose) they waited for good: the detector decided nothing of
    these three. An input whose position reached its high watermark goes idle anyway."""
    settings = make_settings(partition_idle_ms=100, fault_drop_partition_eof=True)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    records = [(f"E{i}".encode(), _payment(f"eof-{i}", f"E{i}")) for i in range(3)]
    produce_raw(settings, records)
    run_detector(settings, 3, timeout=60, engine=engine)
    assert sorted(d["id"] for d in _outputs(settings)) == [f"eof-{i}" for i in range(3)]


@pytest.mark.parametrize(
    ("rules", "recreated"), [("default", False), ("tutorial", False), ("default", True)]
)
def test_a_group_whose_committed_offsets_are_gone_resumes_where_its_changelog_says(
    make_settings: SettingsFactory, rules: str, recreated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker forgets an empty group's committed offsets after `offsets.retention.minutes`
    (7 days by default): a detector stopped longer than that started again from the input's
    earliest offset and decided everything retained a second time. The input task's Meta,
    committed in the same transaction as its offset, says where it was: the restart resumes
    there (and says so). Deleting the stopped group leaves the broker in the same state.
    An input topic deleted and created again under its name is not resumed in: its records
    from the first are new (they were skipped when the changelog's place was taken for one
    in it)."""
    settings = make_settings(partition_idle_ms=100)
    ensure_topics(settings)

    def engine() -> Engine | None:
        return Engine.from_ruleset(load_ruleset(DEFAULT_RULES)) if rules == "default" else None

    first = [(f"A{i}".encode(), _payment(f"first-{i}", f"A{i}")) for i in range(12)]
    produce_raw(settings, first)
    run_detector(settings, len(first), engine=engine())
    admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})

    def deleted() -> bool:  # (refused while the group's last member is still leaving)
        future = admin.delete_consumer_groups([settings.detector_group])[settings.detector_group]
        try:
            future.result(timeout=10)
        except KafkaException as e:
            if e.args[0].code() == KafkaError.NON_EMPTY_GROUP:
                return False
            raise
        return True

    wait_for(deleted, what="the stopped group deleted")
    assert committed_progress(settings) == 0
    more = 24 if recreated else 12  # (recreated: past where the old one ended)
    then = [(f"B{i}".encode(), _payment(f"then-{i}", f"B{i}")) for i in range(more)]
    if recreated:  # a new topic of that name: the changelog's place is not in it
        _recreate_input(settings)
    produce_raw(settings, then)
    # its first transaction aborted on purpose (the seed's first draw, 0.13 < 0.5): the
    # rewind finds no committed offset either, and goes where the changelog says too
    aborting = settings.model_copy(update={"fault_abort_rate": 0.5, "fault_injection_seed": 1})
    with caplog.at_level(logging.WARNING, logger="fraudstream"):
        run_detector(aborting, len(then), engine=engine())
    assert "chaos: aborting this transaction on purpose" in caplog.text
    decided = [d["id"] for d in _outputs(settings)]
    assert sorted(decided) == sorted(
        [f"first-{i}" for i in range(12)] + [f"then-{i}" for i in range(more)]
    )
    assert ("no committed offset" in caplog.text) is not recreated


def _move_group_offsets(settings: Settings, offsets: dict[int, int]) -> None:
    """Set the stopped detector group's committed offsets of the input's partitions, as
    `kafka-consumer-groups.sh --reset-offsets` does (refused while its last member is still
    leaving the group: asked again)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
    topic = settings.transactions_topic
    request = ConsumerGroupTopicPartitions(
        settings.detector_group, [TopicPartition(topic, p, o) for p, o in offsets.items()]
    )

    def moved() -> bool:
        future = admin.alter_consumer_group_offsets([request])[settings.detector_group]
        try:
            result = future.result(timeout=10)
        except KafkaException:
            return False
        return all(tp.error is None for tp in result.topic_partitions)

    wait_for(moved, what="the stopped group's offsets moved")


_PAST_STATE = re.compile(
    r"(\S+) \[(\d+)\]: group \S+'s committed offset is past its state: the state read up to "
    r"offset (\d+), and the records from offset (\d+) to (\d+) were never read by it"
)


@pytest.mark.parametrize("mode", ["follow", "rewind"])
def test_a_group_resumed_past_its_state_says_which_records_it_never_decided(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """A group whose committed offsets are ahead of its changelog's place (the offsets moved
    forward by hand, or a commit whose records a single-node broker lost after a kill while
    its offsets stayed committed: docs/delivery.md) skipped those records without a word.
    Now it says, per partition, which records its state never read, and counts them; by
    default it still follows the committed offset, and with RESUME_PAST_STATE=rewind it
    decides them first."""
    settings = make_settings(partition_idle_ms=100, resume_past_state=mode)
    ensure_topics(settings)
    topic = settings.transactions_topic
    first = [(f"A{i}".encode(), _payment(f"first-{i}", f"A{i}")) for i in range(12)]
    produce_raw(settings, first)
    run_detector(settings, len(first))
    before = topic_ends(settings, topic, "read_committed")
    skipped = [(f"S{i}".encode(), _payment(f"skipped-{i}", f"S{i}")) for i in range(12)]
    produce_raw(settings, skipped)
    after = topic_ends(settings, topic, "read_committed")
    _move_group_offsets(settings, after)
    then = [(f"B{i}".encode(), _payment(f"then-{i}", f"B{i}")) for i in range(24)]
    produce_raw(settings, then)
    latest = topic_ends(settings, topic, "read_committed")
    metrics = RuntimeMetrics()
    also = [f"skipped-{i}" for i in range(12)] if mode == "rewind" else []
    with caplog.at_level(logging.WARNING, logger="fraudstream"):
        run_detector(settings, len(then) + len(also), metrics=metrics)
    decided = sorted(d["id"] for d in _outputs(settings))
    assert decided == sorted(
        [f"first-{i}" for i in range(12)] + also + [f"then-{i}" for i in range(24)]
    )
    said = {
        int(m[2]): (int(m[3]), int(m[4]), int(m[5]))
        for m in _PAST_STATE.finditer(caplog.text)
        if m[1] == topic
    }
    # each partition that decided a record before, got skipped records and read one after
    # them: where its state stands and which records it never read (a partition with no
    # decided record has no place in its changelog; one with no record since, no first one)
    expected = {
        p: (before[p] - 1, before[p], after[p] - 1)
        for p in before
        if before[p] > 0 and after[p] > before[p] and latest[p] > after[p]
    }
    assert expected, "the keys put no first, skipped and later record in one partition"
    assert said == expected
    told = "Deciding them now" if mode == "rewind" else "They are skipped"
    assert caplog.text.count(told) == len(expected)
    # and counted for the metrics: the offsets of each partition's gap
    exposed = generate_latest(metrics.registry).decode()
    counted = {
        int(m[1]): float(m[2])
        for m in re.finditer(
            rf'fraudstream_input_offsets_skipped_total{{partition="(\d+)",topic="{topic}"}} (\S+)',
            exposed,
        )
    }
    assert counted == {p: float(last - first + 1) for p, (_, first, last) in expected.items()}


def test_a_restart_past_transaction_markers_alone_says_nothing_was_skipped(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An input written in transactions has a marker after each: the group's committed
    offset stands past it, one beyond the state's place, with no record between. That gap is
    checked, and not reported."""
    settings = make_settings(partition_idle_ms=100)
    ensure_topics(settings)
    topic = settings.transactions_topic

    def produce_in_transactions(records: list[tuple[bytes, bytes]]) -> None:
        producer = Producer(
            {"bootstrap.servers": settings.kafka_broker_url, "transactional.id": f"in-{uuid4()}"}
        )
        producer.init_transactions(30)
        for i in range(0, len(records), 4):
            producer.begin_transaction()
            for key, value in records[i : i + 4]:
                producer.produce(topic, value, key)
            producer.commit_transaction(30)

    first = [(f"A{i}".encode(), _payment(f"first-{i}", f"A{i}")) for i in range(12)]
    produce_in_transactions(first)
    run_detector(settings, len(first))
    before = topic_ends(settings, topic, "read_committed")
    then = [(f"B{i}".encode(), _payment(f"then-{i}", f"B{i}")) for i in range(24)]
    produce_in_transactions(then)
    latest = topic_ends(settings, topic, "read_committed")
    with caplog.at_level(logging.DEBUG, logger="fraudstream.stream.inputs"):
        run_detector(settings, len(then))
    decided = sorted(d["id"] for d in _outputs(settings))
    assert decided == sorted([f"first-{i}" for i in range(12)] + [f"then-{i}" for i in range(24)])
    # the gaps were read: each partition that decided a record and got more resumed one
    # past its place (the first run's last marker)
    checked = re.findall(r"\[(\d+)\]: offsets \d+ to \d+, between its state's place", caplog.text)
    expected = [p for p in before if before[p] > 0 and latest[p] > before[p]]
    assert expected, "the keys put no first and later record in one partition"
    assert sorted(map(int, checked)) == sorted(expected)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def _recreate_input(settings: Settings) -> None:
    """Delete the input topic and create it again under its name (another topic id)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
    topic = settings.transactions_topic
    admin.delete_topics([topic])[topic].result(timeout=30)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, what="it deleted")
    wait_for(lambda: _created(settings), what="it created again")


def _created(settings: Settings) -> bool:
    """The input topic made (again); False while the broker still deletes the old one."""
    try:
        ensure_topics(settings)
    except KafkaException:
        return False
    return True


def _payment(tx_id: str, account: str) -> bytes:
    return json.dumps(
        {"id": tx_id, "source": account, "target": "P1", "amount": 20.0, "currency": "EUR"}
    ).encode()


def test_an_input_topic_created_again_under_a_running_detector_stops_it_then_is_read_whole(
    make_settings: SettingsFactory,
) -> None:
    """librdkafka's consumer does not tell a topic deleted and created again under its name
    from the old one (confluentinc/librdkafka#3255): a running detector read on at its old
    position in the new topic and skipped its first records for good (12 of 24 here, with
    no warning). It now compares the input's id before each commit: it stops, committing
    nothing read from the new topic, and says so; started again, it decides the new topic
    from its first record, and the old topic's records are not decided again."""
    settings = make_settings(partition_idle_ms=100)
    ensure_topics(settings)
    first = [(f"A{i}".encode(), _payment(f"first-{i}", f"A{i}")) for i in range(12)]
    produce_raw(settings, first)
    processor = Processor(settings, Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            processor.run(stop)
        except BaseException as exc:  # (what the thread ended with, for the assertions)
            failed.append(exc)

    def decided() -> list[str]:
        return [d["id"] for d in _outputs(settings)]

    runner = threading.Thread(target=run)
    runner.start()
    then = [(f"B{i}".encode(), _payment(f"then-{i}", f"B{i}")) for i in range(24)]
    try:
        wait_for(lambda: len(decided()) == len(first), 60, "the first 12 decided")
        _recreate_input(settings)
        produce_raw(settings, then)
        runner.join(60)
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert [type(e) for e in failed] == [ProcessingError], failed
    assert f"input topic {settings.transactions_topic} was deleted and created again" in str(
        failed[0]
    )
    assert "Start it again: it reads the new topic from its first record" in str(failed[0])
    assert len(decided()) == len(first)  # nothing of the new topic committed
    run_detector(settings, len(then), engine=Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    assert sorted(decided()) == sorted(
        [f"first-{i}" for i in range(12)] + [f"then-{i}" for i in range(24)]
    )


def test_an_offset_committed_in_a_topic_of_the_same_name_deleted_since_is_not_followed(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The detector's input offsets name their topic's id (the offset's metadata). One left
    for a topic of that name deleted since (a broker that kept it, or a commit that raced the
    deletion) is not taken as the new topic's: the partition is read from its first record
    (it was followed, and the new topic's first records were skipped for good)."""
    settings = make_settings(partition_idle_ms=100)
    ensure_topics(settings)
    topic = settings.transactions_topic
    first = [(f"A{i}".encode(), _payment(f"first-{i}", f"A{i}")) for i in range(12)]
    produce_raw(settings, first)
    run_detector(settings, len(first), engine=Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
    old_id = str(admin.describe_topics(TopicCollection([topic]))[topic].result(10).topic_id)
    group = settings.detector_group
    consumer = Consumer({"bootstrap.servers": settings.kafka_broker_url, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        committed = consumer.committed(parts, timeout=10)
        assert {tp.metadata for tp in committed} == {old_id}  # each offset names its topic
        _recreate_input(settings)
        # what a broker that kept the old offsets, or a commit racing the deletion, leaves
        consumer.commit(
            offsets=[
                TopicPartition(topic, tp.partition, tp.offset, metadata=old_id) for tp in committed
            ],
            asynchronous=False,
        )
    finally:
        consumer.close()
    then = [(f"B{i}".encode(), _payment(f"then-{i}", f"B{i}")) for i in range(24)]
    produce_raw(settings, then)
    with caplog.at_level(logging.WARNING, logger="fraudstream"):
        run_detector(settings, len(then), engine=Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    assert "was committed in another topic of this name" in caplog.text
    decided = [d["id"] for d in _outputs(settings)]
    assert sorted(decided) == sorted(
        [f"first-{i}" for i in range(12)] + [f"then-{i}" for i in range(24)]
    )


def test_a_restarted_detector_evicts_idle_accounts_on_the_days_its_first_run_did(
    make_settings: SettingsFactory,
) -> None:
    """Accounts idle past the retention (400 days of event time) are evicted once a day. A
    detector restored from its changelog went on evicting at its first payment instead of on
    the first run's day: an account idle 400.2 days, still known to a detector that had gone
    on, was forgotten by the restarted one, and its 400 EUR after that silence passed as
    legit (`dormant_reactivated` fires on one that went on). The changelog now says when the
    next eviction falls, and the rows evicted since are written off it; an account evicted
    before the restart stays forgotten, though its row is still in the changelog."""
    settings = make_settings(partition_idle_ms=100, snapshot_interval_ms=0)  # the changelog
    ensure_topics(settings)
    t0 = (int(time.time()) - 500 * 86_400) * 1000
    day = 86_400_000

    def pay(tx_id: str, account: str, at: int, amount: float = 20.0) -> tuple[bytes, bytes]:
        value = {"id": tx_id, "source": account, "target": "P1", "amount": amount}
        return b"one-partition", json.dumps({**value, "currency": "EUR", "timestamp": at}).encode()

    first = [pay("a", "A", t0), pay("gone", "GONE", t0 + day // 10), pay("x", "X", t0 + day // 2)]
    # then (another run, so that their rows are in the changelog before) payments that evict
    # A and GONE (idle more than 400 days), not X (400.0 days idle)
    then = [pay(f"y{i}", "Y", t0 + 400 * day + 4 * day // 10 + i) for i in range(3)]
    for records in (first, then):
        produce_raw(settings, records)
        run_detector(
            settings, len(records), engine=Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
        )
    later = t0 + 400 * day + 7 * day // 10
    wakes = [pay("x-wakes", "X", later, 400.0), pay("gone-pays", "GONE", later + 1, 400.0)]
    produce_raw(settings, wakes)
    run_detector(settings, 2, engine=Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    decided = {d["id"]: d for d in _outputs(settings)}
    woke = decided["x-wakes"]["decision"]
    assert "dormant_reactivated" in {r["rule"] for r in woke["reasons"]}, woke
    # evicted before the restart: forgotten by both (its row is still in the changelog)
    assert decided["gone-pays"]["decision"]["reasons"] == [], decided["gone-pays"]


def test_malformed_records_go_to_the_dead_letter_topic_and_the_rest_flows_on(
    settings: Settings,
) -> None:
    records: list[tuple[bytes | None, bytes | None]] = []
    good_ids = set()
    for i in range(1000):
        if i % 10 == 5:
            records.append((f"bad-{i}".encode(), MALFORMED[(i // 10) % len(MALFORMED)]))
        else:
            amount = 950 if i % 7 == 0 else 12.5
            good_ids.add(f"good-{i}")
            records.append(
                (
                    b"acct",
                    msgspec.json.encode(
                        {
                            "id": f"good-{i}",
                            "timestamp": 1_790_000_000_000 + i,
                            "source": "acct",
                            "target": "shop",
                            "amount": amount,
                            "currency": "EUR",
                        }
                    ),
                )
            )
    produce_raw(settings, records)

    run_detector(settings, 1000)

    dead = read_all(settings, settings.dlq_topic, expect=100)
    assert len(dead) == 100
    sent_bad = {k: v for k, v in records if k is not None and k.startswith(b"bad-")}
    for msg in dead:
        headers = dict(msg.headers())
        assert msg.value() == sent_bad[msg.key()]  # unchanged
        assert headers["source.topic"].decode() == settings.transactions_topic
        assert int(headers["source.partition"]) >= 0 and int(headers["source.offset"]) >= 0
        assert headers["error.class"] and headers["error.message"]
        assert headers["error.stage"] == b"decode"
    legit, fraud = _decided(settings, 900)
    assert {t["id"] for t in legit + fraud} == good_ids
    assert len(legit) + len(fraud) == 900
    assert all(t["amount"] >= 900 for t in fraud) and all(t["amount"] < 900 for t in legit)


def test_a_one_megabyte_value_goes_to_the_dead_letter_topic(settings: Settings) -> None:
    from confluent_kafka import Producer

    huge = b'{"source":"' + b"a" * (1024 * 1024) + b'","target":"b","amount":1,"currency":"EUR"}'
    producer = Producer(
        {"bootstrap.servers": settings.kafka_broker_url, "message.max.bytes": 4_194_304}
    )
    producer.produce(settings.transactions_topic, huge, b"big")
    producer.produce(
        settings.transactions_topic,
        msgspec.json.encode(
            {"id": "after", "source": "a", "target": "b", "amount": 5.0, "currency": "EUR"}
        ),
        b"big",
    )
    assert producer.flush(30) == 0
    run_detector(settings, 2)
    (dead,) = read_all(settings, settings.dlq_topic, expect=1)
    assert dead.value() == huge
    assert dict(dead.headers())["error.class"] == b"schema"
    legit, fraud = _decided(settings, 1)
    assert [t["id"] for t in legit + fraud] == ["after"]


def test_records_at_the_size_limit_are_dead_lettered_and_the_rest_decided(
    settings: Settings,
) -> None:
    """Records the broker took but the detector could not write on (its output adds the
    decision, a dead letter headers, a hop an envelope's fields): one within a few hundred
    bytes of the producer's limit stopped the detector, with "Message size too large", and
    at every restart again. Now such a record goes to the dead-letter topic as `too_large`
    without its value (it stays in its topic, where the headers point); the largest input
    taken is decided with its bytes intact, after small payments that open a bundle (which
    it joined, passing the limit) and through the payee stage's hop."""
    from confluent_kafka import Producer

    from fraudstream.schema import MAX_INPUT_BYTES, MAX_RECORD_BYTES

    def tx(name: str, size: int, currency: str = "EUR") -> bytes:
        base = {"id": name, "source": "a", "target": "b", "amount": 5.0, "currency": currency}
        pad = size - len(msgspec.json.encode(base | {"memo": ""}))
        return msgspec.json.encode(base | {"memo": "x" * pad})

    near, near_bad = (
        tx("near", MAX_RECORD_BYTES - 300),
        tx("near-bad", MAX_RECORD_BYTES - 300, "XYZ"),
    )
    fits = tx("fits", MAX_INPUT_BYTES)
    assert len(near) == len(near_bad) == MAX_RECORD_BYTES - 300 and len(fits) == MAX_INPUT_BYTES
    records = [tx("s1", 100), tx("s2", 100), fits, near, tx("s3", 100), near_bad, tx("s4", 100)]
    producer = Producer(
        {"bootstrap.servers": settings.kafka_broker_url, "message.max.bytes": MAX_RECORD_BYTES}
    )
    for value in records:
        producer.produce(settings.transactions_topic, value, b"a")
    assert producer.flush(30) == 0
    run_detector(settings, 7, engine=Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    dead = read_all(settings, settings.dlq_topic, expect=2)
    assert len(dead) == 2
    for msg, offset in zip(dead, (3, 5), strict=True):
        headers = dict(msg.headers())
        assert msg.value() is None and msg.key() == b"a"
        assert headers["error.class"] == b"too_large"
        assert int(headers["source.offset"]) == offset
        assert int(headers["source.bytes"]) > MAX_RECORD_BYTES - 300
    legit, fraud = _decided(settings, 5)
    decided = {t["id"]: t for t in legit + fraud}
    assert sorted(decided) == ["fits", "s1", "s2", "s3", "s4"]
    assert len(decided["fits"]["memo"]) == len(msgspec.json.decode(fits)["memo"])


def test_third_party_kcat_records_in_the_tutorial_form_are_routed(settings: Settings) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by `make setup-test`"
    lines = (
        b"\n".join(
            [
                b'{"source": "Jpe2zq1QDYTn", "target": "lLbLnl0FSr7T", "amount": 254.83, "currency": "EUR"}',
                b'{"source": "mfGWAdLKW8jh", "target": "ede8FQpjBeej", "amount": 985.22, "currency": "EUR"}',
                b'{"source": "GufdRdi1TElh", "target": "u0ANirFVu76B", "amount": 900.00, "currency": "EUR"}',
            ]
        )
        + b"\n"
    )
    subprocess.run(
        [kcat, "-b", settings.kafka_broker_url, "-P", "-t", settings.transactions_topic],
        input=lines,
        check=True,
        timeout=30,
    )
    run_detector(settings, 3)

    def kcat_read(topic: str, count: int) -> list[dict]:
        out = subprocess.run(
            [
                kcat,
                "-b",
                settings.kafka_broker_url,
                "-C",
                "-t",
                topic,
                "-o",
                "beginning",
                "-c",
                str(count),
                "-e",
                "-q",
                "-X",
                "isolation.level=read_committed",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    legit, fraud = kcat_read(settings.legit_topic, 1), kcat_read(settings.fraud_topic, 2)
    assert [t["source"] for t in legit] == ["Jpe2zq1QDYTn"]
    assert sorted(t["source"] for t in fraud) == ["GufdRdi1TElh", "mfGWAdLKW8jh"]
    for t in legit + fraud:
        assert t["id"].startswith(settings.transactions_topic + "-")
        assert isinstance(t["timestamp"], int)


def test_detector_command_stops_cleanly_on_sigterm_with_offsets_committed(
    settings: Settings, tmp_path: Path
) -> None:
    generate(settings, rate=math.inf, count=2000, seed=3, progress=None)
    proc = spawn(["detect"], env_for(settings), tmp_path / "detect.log")
    try:
        wait_for(
            lambda: (
                len(read_all(settings, settings.legit_topic, expect=0, timeout=0))
                + len(read_all(settings, settings.fraud_topic, expect=0, timeout=0))
                >= 2000
            ),
            timeout=60,
            what="the detector to decide all records",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, (tmp_path / "detect.log").read_text()
    # The group's committed offsets cover the whole input: a restart would redo nothing.
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": settings.kafka_broker_url, "group.id": settings.detector_group}
    )
    parts = [TopicPartition(settings.transactions_topic, p) for p in range(3)]
    committed = c.committed(parts, timeout=10)
    ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    c.close()
    assert [tp.offset for tp in committed] == ends


def test_a_clean_stop_deletes_what_the_group_committed_past_on_the_repartition_topics(
    settings: Settings, tmp_path: Path
) -> None:
    """After a clean stop, every record of the payee stage's repartition topic that the group
    has committed past is deleted, up to its committed offset exactly, whichever commit
    carried each partition's offset (the last ones carry only marks and their readers')."""
    from confluent_kafka import Consumer, TopicPartition

    from fraudstream.stream import committed_progress, group_lag
    from fraudstream.stream.health import read_status
    from tests.chaos.test_faults import Detectors
    from tests.conftest import REPO

    n = 3_000
    generate(settings, rate=math.inf, count=n, seed=7, progress=None)
    d = Detectors(
        settings, tmp_path, rules=str(REPO / "rules" / "default.yaml"), STATUS_INTERVAL_MS="300"
    )

    def inputs_idle() -> bool:
        marks = [
            t.mark for r in read_status(settings).reports for t in r.tasks if t.stage == "input"
        ]
        return len(marks) == settings.topic_partitions and all(m.startswith("idle") for m in marks)

    try:
        proc = d.start()
        wait_for(
            lambda: committed_progress(settings) >= n and group_lag(settings) == 0,
            timeout=120,
            what="every record decided",
        )
        wait_for(inputs_idle, timeout=60, what="the inputs' idle marks committed")
        d.stop(proc)
    finally:
        d.cleanup()
    topic = f"{settings.detector_group}.by-target"
    c = Consumer(
        {"bootstrap.servers": settings.kafka_broker_url, "group.id": settings.detector_group}
    )
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        committed = [tp.offset for tp in c.committed(parts, timeout=30)]
        low = [c.get_watermark_offsets(tp, timeout=10, cached=False)[0] for tp in parts]
    finally:
        c.close()
    assert all(o > 0 for o in committed), committed
    assert low == committed
    # deleted only so: kept until then, however long the group stops (the broker's default
    # retention, 7 days, lost what a stage still held)
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource("topic", topic)
    admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["retention.ms"].value == "-1"


def test_an_output_waiting_for_a_record_that_never_comes_writes_on_without_it(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Records numbered 1 and 3 from input partition 0 reach the output, 2 never does (as
    when a broker lost its transaction after the commit: docs/delivery.md): 1 is written, 3
    waits, and once OUTPUT_GAP_TIMEOUT_MS has passed and the stage before is idle, 3 is
    written without 2, saying which numbers never came. 2, coming after all, is written
    then, out of order, saying so."""
    from confluent_kafka import Producer

    from fraudstream.stream.ordering import DATA, Envelope, encode_block
    from fraudstream.stream.topology import TopicNames

    settings = make_settings(topic_partitions=1, output_gap_timeout_ms=1000)
    ensure_topics(settings)
    ordered = TopicNames(settings.detector_group).ordered
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})

    def record(c: int) -> Envelope:
        tx = {"id": f"g-{c}", "timestamp": 1_790_000_000_000 + c, "source": "A", "target": "B"}
        value = json.dumps(tx | {"amount": 5.0, "currency": "EUR"}).encode()
        return Envelope(DATA, 1_790_000_000_000 + c, 0, 10 * c, 0, 0, value=value, c=c)

    def written() -> list[str]:
        return [json.loads(m.value())["id"] for m in read_to_end(settings, settings.legit_topic)]

    processor = Processor(settings, Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,))
    caplog.set_level(logging.WARNING, logger="fraudstream.stream.tasks")
    thread.start()
    try:
        admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
        wait_for(lambda: ordered in admin.list_topics(timeout=10).topics, what="its topics")
        producer.produce(ordered, encode_block([record(1), record(3)]), partition=0)
        assert producer.flush(30) == 0
        wait_for(lambda: written() == ["g-1", "g-3"], timeout=60, what="g-3 written without g-2")
        skipped = [r.getMessage() for r in caplog.records if "never arrived" in r.getMessage()]
        assert len(skipped) == 1, skipped
        assert "records numbered 2 from input partition 0 never arrived" in skipped[0]
        # counted once committed (`written` reads committed outputs; the count follows
        # the commit in the processing thread)
        wait_for(lambda: processor.stats.gap_numbers == 1, what="the skipped number counted")
        assert processor.stats.late_numbers == 0
        producer.produce(ordered, encode_block([record(2)]), partition=0)
        assert producer.flush(30) == 0
        wait_for(lambda: written() == ["g-1", "g-3", "g-2"], what="g-2 written late")
        late = [r.getMessage() for r in caplog.records if "came after all" in r.getMessage()]
        assert len(late) == 1 and "records numbered 2 from input partition 0" in late[0], late
        wait_for(lambda: processor.stats.late_numbers == 1, what="the late number counted")
        exposed = generate_latest(processor.metrics.registry).decode()
        assert "fraudstream_output_gap_numbers_total 1.0" in exposed
        assert "fraudstream_output_late_numbers_total 1.0" in exposed
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


def test_a_bad_repartition_record_read_again_after_a_restart_is_dead_lettered_once(
    make_settings: SettingsFactory,
) -> None:
    """A record on a repartition topic that no detector wrote goes to the dead-letter topic
    once. A keyed stage's committed offset stays at the oldest block it still buffers, so a
    restart reads again what came after it: the blocks are recognised by their numbers, and
    the bad record, which has none, by the last offset the stage had read (its `Meta`,
    committed with the dead letter). It was dead-lettered a second time."""
    import threading
    from collections.abc import Iterator
    from contextlib import contextmanager

    from confluent_kafka import Producer

    from fraudstream.stream import Processor
    from fraudstream.stream.ordering import DATA, decode_block
    from fraudstream.stream.topology import TopicNames

    # input partition 2 stays silent and never idles: the payee stage releases nothing
    settings = make_settings(partition_idle_ms=600_000)
    ensure_topics(settings)
    by_target = TopicNames(settings.detector_group).by("target")

    @contextmanager
    def detecting() -> Iterator[None]:
        processor = Processor(settings, Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
        stop = threading.Event()
        thread = threading.Thread(target=processor.run, args=(stop,))
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(60)
            assert not thread.is_alive()

    t0 = 1_790_000_000_000
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})

    def pay(i: int, ts: int, partition: int) -> None:
        # at 500 or more through the payee stage; amounts apart: mule_fan_in never fires
        tx = {"id": f"p-{i}", "source": f"A{i}", "target": "P1", "amount": 600.0 + i}
        value = json.dumps(tx | {"currency": "EUR", "timestamp": ts}).encode()
        producer.produce(settings.transactions_topic, value, partition=partition)

    for i in range(40):
        pay(i, t0 + i * 1000, i % 2)
    assert producer.flush(30) == 0

    def dead() -> list[Any]:
        return read_to_end(settings, settings.dlq_topic)

    with detecting():
        data: set[int] = set()  # the payee stage's partitions with payments

        def forwarded() -> bool:
            try:
                blocks = read_to_end(settings, by_target)
            except KafkaException:  # (the topic just made: no leader yet)
                return False
            data.update(m.partition() for m in blocks if decode_block(m.value())[0].kind == DATA)
            return bool(data)

        wait_for(forwarded, what="payments on the payee stage's topic")
        for p in data:  # after payments it buffers (nothing is let out)
            producer.produce(by_target, b"not a block", b"k", partition=p)
        assert producer.flush(30) == 0
        wait_for(lambda: len(dead()) == len(data), what="the bad records dead-lettered")
    with detecting():  # reads the payee stage's topic again from its oldest buffered block
        # the silent partition speaks (past its first RUN records, whose clock they tell)
        for i in range(40, 57):
            pay(i, t0 + 100_000 + i, 2)
        assert producer.flush(30) == 0
        # all but the last (above input partition 0's mark, the lowest now)
        wait_for(
            lambda: len(read_to_end(settings, settings.legit_topic)) >= 39,
            what="the first 39 decided",
        )
    bad = dead()
    assert len(bad) == len(data), [m.value() for m in bad]
    assert {dict(m.headers())["error.stage"] for m in bad} == {b"repartition"}
