"""The runtime's parts, each on its own against the real broker: the transaction coordinator,
the record collector, the task roles and the task manager (stream/processor.py's docstring
names them). The whole loop is tested by the pipeline and fault scenarios."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from fraudstream.config import Settings
from fraudstream.detection import Engine, load_ruleset
from fraudstream.stream import consumer_config, ensure_topics
from fraudstream.stream.changelog import wait_readable
from fraudstream.stream.clients import (
    BROKER_ABORT_SWEEP_MS,
    admin_client,
    transaction_timeout_ms,
)
from fraudstream.stream.collector import RecordCollector
from fraudstream.stream.layout import GroupMismatchError, prepare_topology
from fraudstream.stream.ordering import (
    DATA,
    HOLD,
    INF,
    MARK,
    Chain,
    Envelope,
    Lean,
    Meta,
    decode_block,
)
from fraudstream.stream.task_manager import TaskManager, choose_paused
from fraudstream.stream.tasks import InputTask, KeyedTask, LabelTask, OutputTask, TaskContext
from fraudstream.stream.topology import INPUT, KEYED, OUTPUT, Topology
from fraudstream.stream.transactions import (
    TransactionCoordinator,
    fatal_message,
    fenced,
    renewable,
)
from tests.conftest import (
    REPO,
    SettingsFactory,
    env_for,
    no_open_transaction,
    produce_raw,
    read_to_end,
    run_detector,
)

DEFAULT_RULES = REPO / "rules" / "default.yaml"


def _tx(i: int, account: str = "ACC1", target: str = "PAY1") -> bytes:
    return (
        f'{{"id": "tx-{i}", "timestamp": "2026-11-0{1 + i % 9}T10:00:00Z", "source": "{account}",'
        f' "target": "{target}", "amount": {10 + i}.5, "currency": "EUR"}}'
    ).encode()


def _coordinator(settings: Settings) -> TransactionCoordinator:
    txn = TransactionCoordinator(settings, f"parts-{uuid.uuid4().hex[:8]}")
    txn.init(30)
    return txn


# --- TransactionCoordinator ---------------------------------------------------------------


def test_committed_records_are_visible_and_aborted_ones_never(settings: Settings) -> None:
    txn = _coordinator(settings)
    collector = RecordCollector(settings, txn)
    txn.begin()
    collector.send(settings.legit_topic, b"kept", b"k")
    txn.commit([], None)
    assert not txn.in_txn
    txn.begin()
    collector.send(settings.legit_topic, b"dropped", b"k")
    txn.abort()
    assert not txn.in_txn
    txn.begin()
    collector.send(settings.legit_topic, b"kept too", b"k")
    txn.commit([], None)
    no_open_transaction(settings, [settings.legit_topic])  # the markers written
    assert sorted(m.value() for m in read_to_end(settings, settings.legit_topic)) == [
        b"kept",
        b"kept too",
    ]


def test_a_commit_is_readable_to_its_end_once_wait_readable_says_so(settings: Settings) -> None:
    """`commit_transaction` returns before the transaction's markers are written, and a
    read_committed reader stops before it until then (a new owner restoring a changelog
    would miss the last commit of the one that handed it over). `wait_readable` waits for
    the markers: after it, a reader's end is the partition's end, every time; an open
    transaction holds it back until the timeout, and is named."""
    admin = admin_client(settings, "parts-readable")
    txn = _coordinator(settings)
    collector = RecordCollector(settings, txn)
    tp = TopicPartition(settings.legit_topic, 0)
    config = consumer_config(settings, "parts-ends", group_id=f"ends-{uuid.uuid4()}")
    reader = Consumer(config)  # read_committed: its end is the last stable offset
    everything = Consumer(config | {"isolation.level": "read_uncommitted"})
    try:
        txn.begin()
        collector.send(settings.legit_topic, b"open", b"k", partition=0)
        txn.producer.flush(10)
        assert wait_readable(admin, [tp], timeout=0.3) == [tp]
        txn.commit([], None)
        for i in range(30):
            if i:
                txn.begin()
                collector.send(settings.legit_topic, b"more", b"k", partition=0)
                txn.commit([], None)
            assert wait_readable(admin, [tp]) == []
            stable = reader.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            assert stable == everything.get_watermark_offsets(tp, timeout=10, cached=False)[1]
    finally:
        reader.close()
        everything.close()


# A process killed in the middle of a transaction: it wrote one record to a partition and
# never committed or aborted (the detector's producer configuration, its transaction timeout)
_KILLED_MID_TRANSACTION = """
import sys
from confluent_kafka import Producer
from fraudstream.config import Settings
from fraudstream.stream.clients import producer_config
producer = Producer(producer_config(Settings(), "killed", transactional_id=sys.argv[2]))
producer.init_transactions(30)
producer.begin_transaction()
producer.produce(sys.argv[1], b"never committed", b"k", partition=0)
producer.flush(30)
print("open", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("side", ["giving", "receiving"])
def test_a_handover_waits_out_a_transaction_a_killed_process_left_open(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    """Two faults: a process killed in the middle of a transaction on a changelog partition
    leaves it open until the broker aborts it (its transaction timeout, then the broker's
    sweep), and no read_committed reader gets past it meanwhile. The partition's next owner
    commits there, then hands it on within that window: its handover waits until its
    commit is readable, so the owner after it restores that commit. (With librdkafka's 60 s
    timeout and a 10 s wait, it handed over unreadable state.) Killed too, that owner cannot
    wait: the restore of the one after it waits then (`receiving`; before, it restored
    without the commit). The timeout is set shorter here, as a user would
    (KAFKA_TRANSACTION_TIMEOUT_MS), and the waits follow it."""
    from fraudstream.detection import tutorial_rules
    from fraudstream.stream.changelog import read_changelog

    monkeypatch.setenv("KAFKA_TRANSACTION_TIMEOUT_MS", "5000")
    assert transaction_timeout_ms(settings) == 5000
    engine = Engine(tutorial_rules(), version="tutorial-1")
    topology = prepare_topology(settings, engine.stage_keys(), labels=False)
    tp = (settings.transactions_topic, 0)
    changelog = TopicPartition(topology.stages[0].changelog, 0)
    txn = _coordinator(settings)
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 0)
    consumer = Consumer(consumer_config(settings, "parts", group_id=settings.detector_group))
    admin = admin_client(settings, "parts-handover")
    killed: subprocess.Popen[bytes] | None = None
    try:
        consumer.assign([TopicPartition(*tp, 0)])
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: 0.0, name="parts")
        manager.assign([tp])  # (restored before the other one's transaction: none to wait for)
        task = manager.tasks[tp]
        killed = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _KILLED_MID_TRANSACTION,
                changelog.topic,
                f"killed-{uuid.uuid4()}",
            ],
            env=env_for(settings, KAFKA_TRANSACTION_TIMEOUT_MS="5000"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert killed.stdout is not None and killed.stdout.readline() == b"open\n"
        killed.kill()
        killed.wait(10)
        killed_at = time.monotonic()
        txn.begin()
        manager.begin()
        task.meta.stream_time, task.meta.last_offset = 5_000, 41  # what it read, to write
        txn.commit(manager.prepare_commit(), consumer.consumer_group_metadata())
        manager.commit()
        assert task.wrote
        assert wait_readable(admin, [changelog], timeout=0.5) == [changelog]  # held back
        if side == "giving":
            manager.hand_over([TopicPartition(*tp)])
        waited = time.monotonic() - killed_at
        restored = read_changelog(settings, changelog.topic, [0], timeout=60)[0]
        assert [k for k, _ in restored] == [b"m"], "the next owner restored without the commit"
        if side == "receiving":
            waited = time.monotonic() - killed_at
        bound = (transaction_timeout_ms(settings) + BROKER_ABORT_SWEEP_MS) / 1000 + 5
        assert waited < bound
    finally:
        consumer.close()
        if killed is not None:
            killed.kill()
            killed.wait(10)
            for pipe in (killed.stdin, killed.stdout):
                if pipe is not None:
                    pipe.close()


def test_a_commit_that_keeps_timing_out_is_raised_then_a_renewed_producer_commits(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(fault_commit_timeout_rate=1.0, fault_injection_seed=3)
    ensure_topics(settings)
    txn = _coordinator(settings)
    collector = RecordCollector(settings, txn)
    txn.begin()
    collector.send(settings.legit_topic, b"maybe", b"k")
    with pytest.raises(KafkaException) as raised:
        txn.commit([], None)
    assert raised.value.args[0].retriable()
    old = txn.producer
    txn.commit_timeout_rate = 0.0
    txn.renew(raised.value.args[0])
    assert txn.producer is not old and not txn.in_txn
    txn.begin()
    collector.send(settings.legit_topic, b"after", b"k")  # the collector follows the renewal
    txn.commit([], None)
    no_open_transaction(settings, [settings.legit_topic])  # the markers written
    values = [m.value() for m in read_to_end(settings, settings.legit_topic)]
    assert b"after" in values and len(values) in (1, 2)  # the first one's fate is unknown


def test_the_watchdog_acts_on_a_commit_stuck_past_its_timeout(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(commit_stuck_timeout_ms=1000)
    stuck = threading.Event()
    txn = TransactionCoordinator(settings, "parts-watchdog", on_stuck=stuck.set, watch_every_s=0.02)
    stop = threading.Event()
    txn.watch(stop)
    try:
        assert not stuck.wait(0.3), "the watchdog acted with no commit under way"
        with txn.watched():  # a commit that never returns, as librdkafka's can
            assert stuck.wait(10), "the watchdog never acted on a stuck commit"
    finally:
        stop.set()


def test_a_fenced_producer_is_known_as_fenced_though_produce_says_only_fatal(
    settings: Settings,
) -> None:
    """After the fencing, `produce` raises `_FATAL` with no reason; `cause` finds it. Taken
    for a fault of this producer alone, the zombie would replace its producer and fence the
    instance that took over (a CI run of the zombie fault test did)."""
    zombie = _coordinator(settings)
    zombie.begin()
    zombie.producer.produce(settings.legit_topic, b"before", b"k")
    zombie.producer.flush(10)
    successor = TransactionCoordinator(settings, zombie.name)
    successor.init(30)  # same transactional.id: fences the zombie
    zombie.producer.produce(settings.legit_topic, b"refused", b"k")
    with contextlib.suppress(KafkaException):  # the broker refuses it; flush may say so
        zombie.producer.flush(10)
    with pytest.raises(KafkaException) as raised:
        zombie.producer.produce(settings.legit_topic, b"late", b"k")
    err = raised.value.args[0]
    assert err.code() == KafkaError._FATAL and renewable(err)  # what produce says
    reason = zombie.cause(err)
    assert fenced(reason) and reason.fatal() and not renewable(reason)
    assert "took over" in fatal_message(reason)
    successor.begin()  # the successor was not disturbed
    successor.producer.produce(settings.legit_topic, b"after", b"k")
    successor.commit([], None)
    no_open_transaction(settings, [settings.legit_topic])
    assert [m.value() for m in read_to_end(settings, settings.legit_topic)] == [b"after"]


# --- RecordCollector ----------------------------------------------------------------------


def test_forwarded_envelopes_go_as_one_block_per_destination(settings: Settings) -> None:
    topic = f"{settings.detector_group}.by-target"
    ensure_topics(settings, [topic])
    txn = _coordinator(settings)
    collector = RecordCollector(settings, txn)
    txn.begin()
    for i in range(10):
        env = Envelope(DATA, 1000 + i, 0, i, 0, i + 1, value=_tx(i))
        collector.forward((topic, i % 2), [env])
    collector.flush()
    txn.commit([], None)
    no_open_transaction(settings, [topic])  # the markers written
    blocks = read_to_end(settings, topic)
    assert sorted((m.partition(), len(decode_block(m.value()))) for m in blocks) == [(0, 5), (1, 5)]
    by_partition = {m.partition(): [e.o for e in decode_block(m.value())] for m in blocks}
    assert by_partition == {0: [0, 2, 4, 6, 8], 1: [1, 3, 5, 7, 9]}  # in the order forwarded
    # a block that would pass BLOCK_BYTES goes at once, and the rest start the next one
    big = [Envelope(DATA, 2000 + i, 0, i, 0, i + 1, value=b"x" * 60_000) for i in range(5)]
    txn.begin()
    collector.forward((topic, 0), big)
    collector.flush()
    txn.commit([], None)
    no_open_transaction(settings, [topic])
    later = [m for m in read_to_end(settings, topic) if m.partition() == 0][1:]
    assert [[e.o for e in decode_block(m.value())] for m in later] == [[0, 1, 2], [3, 4]]


def test_a_blocks_size_counts_keys_and_headers(settings: Settings) -> None:
    """Records whose keys or headers are large (a bundle's as well as a lone envelope's) cut
    the blocks as large values do, so a block stays under the broker's record size limit
    whatever a producer put in them."""
    topic = f"{settings.detector_group}.by-target"
    ensure_topics(settings, [topic])
    txn = _coordinator(settings)
    collector = RecordCollector(settings, txn)
    big = b"x" * 120_000
    headed = [
        Envelope(DATA, 2000 + i, 0, i, 0, i + 1, value=b"{}", headers=[("h", big)])
        for i in range(5)
    ]
    keyed = [Envelope(DATA, 3000 + i, 0, i, 0, i + 1, value=b"{}", key=big) for i in range(3)]
    bundle = Envelope(DATA, 4000, 0, 0, 0, 1, value=b"{}")
    bundle.more = [Lean(b"{}", key=big[:60_000], headers=[("h", big[:60_000])])] * 3
    txn.begin()
    collector.forward((topic, 0), headed)
    collector.flush()
    collector.forward((topic, 0), keyed)
    collector.flush()
    collector.forward((topic, 0), [bundle, *keyed[:1]])
    collector.flush()
    txn.commit([], None)
    no_open_transaction(settings, [topic])
    blocks = [decode_block(m.value()) for m in read_to_end(settings, topic)]
    assert [[e.t for e in block] for block in blocks] == [
        [2000, 2001, 2002],
        [2003, 2004],
        [3000, 3001, 3002],
        [4000],
        [3000],
    ]


@pytest.mark.parametrize("batched", [False, True], ids=["output", "outputs"])
def test_a_full_producer_queue_waits_and_loses_nothing(settings: Settings, batched: bool) -> None:
    txn = TransactionCoordinator(settings, "unused")
    # a producer that holds at most 10 records unsent: produce() refuses every few records
    txn.producer = Producer(
        {
            "bootstrap.servers": settings.kafka_broker_url,
            "transactional.id": f"parts-full-{uuid.uuid4().hex[:8]}",
            "queue.buffering.max.messages": 10,
            "linger.ms": 5,
        }
    )
    txn.init(30)
    collector = RecordCollector(settings, txn)
    txn.begin()
    records = [
        (b"k", str(i).encode(), None, "fraud" if i % 5 == 0 else "legit") for i in range(500)
    ]
    if batched:
        collector.outputs(records)
    else:
        for record in records:
            collector.output(*record)
    txn.commit([], None)
    done = collector.settle()
    assert (done.fraud, done.legit) == (100, 400)
    no_open_transaction(settings, [settings.fraud_topic, settings.legit_topic])  # the markers
    assert len(read_to_end(settings, settings.fraud_topic)) == 100
    assert len(read_to_end(settings, settings.legit_topic)) == 400


# --- choose_paused (the task manager's back-pressure decision) ---------------------------


def test_back_pressure_pauses_all_inputs_but_the_laggard_until_below_half() -> None:
    inputs = [(("in", 0), (50, 0, 9)), (("in", 1), (10, 1, 3)), (("in", 2), (70, 2, 4))]
    assert choose_paused(inputs, 100, 0, False, 100, 1000) == (set(), False)  # at the bound
    paused = {("in", 0), ("in", 2)}  # partition 1 holds the stages back
    assert choose_paused(inputs, 101, 0, False, 100, 1000) == (paused, True)
    assert choose_paused(inputs, 51, 0, True, 100, 1000) == (paused, True)  # not half yet
    assert choose_paused(inputs, 50, 0, True, 100, 1000) == (set(), False)
    assert choose_paused(inputs, 0, 1001, False, 100, 1000) == (paused, True)  # bytes too
    # the laggard moved on while paused: the new one reads, the old one waits
    moved = [(("in", 0), (50, 0, 9)), (("in", 1), (90, 1, 8)), (("in", 2), (70, 2, 4))]
    assert choose_paused(moved, 80, 0, True, 100, 1000) == ({("in", 1), ("in", 2)}, True)


def test_another_process_holding_back_pauses_the_inputs_ahead_of_the_lowest_mark() -> None:
    """Within its own bounds, a process asked to hold back (a HOLD mark: another process's
    stages, which these inputs feed too, hold too much) pauses every input ahead of the
    lowest mark its keyed stages heard; the slowest input, if it is here, reads on."""
    inputs = [(("in", 0), (50, 0, 9)), (("in", 1), (10, 1, 3)), (("in", 2), (70, 2, 4))]
    held = (10, 1, 3)  # the lowest mark heard: input 1's own
    assert choose_paused(inputs, 0, 0, False, 100, 1000, held) == (
        {("in", 0), ("in", 2)},
        False,  # not over its own bounds: its own marks do not ask others to hold
    )
    elsewhere = (5, 4, 1)  # the slowest input is another process's: all of these wait
    assert choose_paused(inputs, 0, 0, False, 100, 1000, elsewhere, elsewhere)[0] == {
        ("in", 0),
        ("in", 1),
        ("in", 2),
    }
    # the lowest mark held comes from a later stage, which trails the inputs: the input the
    # whole group waits for (the lowest the first keyed stage heard) still reads on
    trailing = (8, 0, 2)
    assert choose_paused(inputs, 0, 0, False, 100, 1000, trailing, (10, 1, 3))[0] == {
        ("in", 0),
        ("in", 2),
    }
    # no first-stage task here to say which input that is: its own laggard reads on
    assert choose_paused(inputs, 0, 0, False, 100, 1000, trailing)[0] == {("in", 0), ("in", 2)}
    assert choose_paused(inputs, 0, 0, False, 100, 1000, None) == (set(), False)  # released
    # over its own bounds too: its own rule (all but its laggard)
    assert choose_paused(inputs, 101, 0, False, 100, 1000, elsewhere) == (
        {("in", 0), ("in", 2)},
        True,
    )


# --- tasks and the task manager, on a detector's real state -------------------------------


def _run_default_rules(settings: Settings, n: int) -> Engine:
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    produce_raw(
        settings, [(f"ACC{i % 7}".encode(), _tx(i, f"ACC{i % 7}", f"PAY{i % 3}")) for i in range(n)]
    )
    run_detector(settings, n, engine=engine)
    return engine


def test_the_task_manager_restores_a_task_of_each_role_from_the_changelogs(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(partition_idle_ms=0, state_dir=str(tmp_path))
    ensure_topics(settings)
    engine = _run_default_rules(settings, 60)
    topology = prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    assert topology.staged, "rules/default.yaml keeps state by payee: a staged topology"
    txn = TransactionCoordinator(settings, f"parts-{uuid.uuid4().hex[:8]}")
    collector = RecordCollector(settings, txn)
    ctx = TaskContext(settings, topology, engine, collector, lambda: 0)
    consumer = Consumer(consumer_config(settings, "parts", group_id=settings.detector_group))
    try:
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: 0.0, name="parts")
        wanted = [(s.topic, p) for s in topology.stages for p in range(s.partitions)]
        if topology.labels:
            wanted += [(topology.label_stage.topic, p) for p in range(topology.labels)]
        manager.assign(wanted)
        roles = {type(manager.tasks[tp]) for tp in wanted}
        expected = {InputTask, KeyedTask, OutputTask} | ({LabelTask} if topology.labels else set())
        assert roles == expected
        assert manager.restored_keys > 0  # the account and payee state came back
        inputs = [t for t in manager.tasks.values() if isinstance(t, InputTask)]
        # every input was read to its end and went idle: its last mark said so, and a
        # restored input task is idle again until a record comes
        assert all(t.meta.sent is not None and t.meta.sent[0] == INF for t in inputs)
        assert all(t.idle for t in inputs)
        assert sum(t.meta.last_offset + 1 for t in inputs) == 60
        keyed = [t for t in manager.tasks.values() if isinstance(t, KeyedTask)]
        assert all(len(t.orderer) == 0 for t in keyed)  # everything was released and decided
        stages = [*topology.stages, *([topology.label_stage] if topology.labels else [])]
        every = [
            (topology.stage_name(s), ",".join(map(str, range(s.partitions))), s.partitions)
            for s in stages
        ]
        assert manager.holding() == "; ".join(f"{name} {held} of {n}" for name, held, n in every)
        first = topology.stages[0]
        manager.drop([TopicPartition(first.topic, 0)])
        assert manager.holding().startswith(
            f"input {','.join(map(str, range(1, first.partitions))) or 'none'} of "
            f"{first.partitions}; "
        )
        manager.drop([TopicPartition(topic, p) for topic, p in wanted])
        assert manager.tasks == {}
        assert manager.holding() == "; ".join(f"{name} none of {n}" for name, _, n in every)
    finally:
        consumer.close()


def test_a_hold_heard_late_in_the_flow_never_pauses_the_input_all_wait_for(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A HOLD heard by the output stage, whose marks trail the first keyed stage's, paused
    every input here that ran ahead of its lowest mark, and so the input every first-stage
    task of the group waited for: no stage anywhere could release anything again. That input
    reads on; the others here pause."""
    settings = make_settings(state_dir=str(tmp_path), topic_partitions=3)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    topology = prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    assert [s.role for s in topology.stages] == [INPUT, KEYED, OUTPUT]
    txn = TransactionCoordinator(settings, f"parts-{uuid.uuid4().hex[:8]}")
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 0)
    consumer = Consumer(consumer_config(settings, "parts", group_id=settings.detector_group))
    first, keyed, out = (s.topic for s in topology.stages)
    ours = [(first, 0), (first, 1)]  # input partition 2 belongs to another process
    try:
        consumer.assign([TopicPartition(t, p) for t, p in [*ours, (keyed, 0), (out, 0)]])
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: 0.0, name="parts")
        manager.assign([*ours, (keyed, 0), (out, 0)])
        manager.tasks[(first, 0)].meta.sent = (50, 0, 9)
        manager.tasks[(first, 1)].meta.sent = (20, 1, 4)  # the slowest input of the group
        first_stage = manager.tasks[(keyed, 0)].orderer  # type: ignore[attr-defined]
        first_stage.offer(Envelope(MARK, 50, 0, 9, 0, 1), offset=0)
        first_stage.offer(Envelope(MARK, 20, 1, 4, 1, 1), offset=1)
        first_stage.offer(Envelope(MARK, 70, 2, 5, 2, 1), offset=2)
        last = manager.tasks[(out, 0)].orderer  # type: ignore[attr-defined]
        last.offer(Envelope(MARK, 20, 1, 4, 0, 1), offset=0)  # keyed task 0: this process
        last.offer(Envelope(HOLD, 10, 1, 2, 1, 1), offset=1)  # another, over its bounds
        last.offer(Envelope(MARK, 15, 0, 3, 2, 1), offset=2)
        manager.backpressure()
        assert manager.paused == {(first, 0)} and not manager.pressing
    finally:
        consumer.close()


def _through_the_stages(
    settings: Settings,
    engine: Engine,
    amounts: list[float],
    pad: int = 0,
    header: int = 0,
) -> tuple[dict[int, float], list[list[Envelope]], list[Envelope], list[bytes]]:
    """Payments of these amounts (payee PAY1, shop SHOP1; a field of `pad` bytes of notes
    each, a header of `header` bytes) through the input task and each keyed task in turn (one
    partition, marks at the end): the envelopes sent to each stage after the input, in stage
    order (what the output read, by whichever path), the output's order of them (`Chain`),
    and the input records' values."""
    topology = Topology(settings, engine.stage_keys(), 1, 0)
    ensure_topics(settings, [s.topic for s in topology.stages[1:]])
    txn = _coordinator(settings)
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 2**42)
    produce_raw(
        settings,
        [
            (
                b"ACC1",
                f'{{"id": "tx-{n}", "timestamp": "2026-11-02T10:00:0{n}Z", "source": "ACC1", '
                f'"target": "PAY1", "merchant": "SHOP1", "amount": {amount}, '
                f'"currency": "EUR", "notes": "{"n" * pad}"}}'.encode(),
                [("trace", b"h" * header)] if header else None,
            )
            for n, amount in enumerate(amounts)
        ],
    )
    inputs = read_to_end(settings, settings.transactions_topic)
    source = topology.stages[0]
    task = InputTask(ctx, source, 0, engine.for_stage(source.key), Meta())
    txn.begin()
    task.read(inputs)
    task.idle = True  # read to its end: its first records go (`first_run`)
    task.settle()
    ctx.collector.flush()
    txn.commit([], None)
    sent: list[list[Envelope]] = []
    output = Chain(1, Meta())
    for stage in topology.stages[1:]:  # each fed only by those before it, all done by now
        no_open_transaction(settings, [stage.topic])  # the markers of the commit before
        records = [r.value() for r in read_to_end(settings, stage.topic)]
        sent.append([e for r in records for e in decode_block(r)])  # (as sent: not changed)
        blocks = [decode_block(r) for r in records]
        if stage is topology.output:
            for block in blocks:
                output.offer_block(block, offset=0)
            continue
        keyed = KeyedTask(ctx, stage, 0, engine.for_stage(stage.key), Meta())
        for offset, block in enumerate(blocks):
            keyed.orderer.offer_block(block, offset=offset)
        keyed.orderer.offer(Envelope(MARK, INF, 0, 9, 0, 1), offset=len(blocks))
        txn.begin()
        keyed.release()
        ctx.collector.flush()
        txn.commit([], None)
    return ctx.lean_below, sent, output.release(), [m.value() for m in inputs]


def test_payments_under_the_payee_stages_floor_skip_it_bundled_without_their_transaction(
    make_settings: SettingsFactory,
) -> None:
    """With rules/default.yaml the payee stage's only rule (mule_fan_in) ignores payments
    under 500: those go from the input stage straight to the output, without their decoded
    transaction, consecutive ones of a partition as one bundle (the first's envelope, the
    others in its `more`), and the output writes them from their input bytes; the others go
    through the payee stage with it (and on to the output with the bytes alone). The input
    task numbers them all in input order, and the output puts them back in that order."""
    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    lean, (by_target, ordered), out, values = _through_the_stages(
        settings, engine, [12.5, 499.99, 500.0, 20.0, 900.0, 1.0, 2.0, 3.0]
    )
    assert lean == {1: 500.0}
    assert [(e.o, e.c, e.tx is not None) for e in by_target] == [(2, 2, True), (4, 4, True)]
    assert sorted((e.o, e.c, len(e.more)) for e in ordered) == [
        (0, 1, 1),
        (2, 2, 0),
        (3, 3, 0),
        (4, 4, 0),
        (5, 5, 2),
    ]
    assert all(e.tx is None for e in ordered)  # the output writes each from its bytes
    assert [e.c for e in out] == [1, 2, 3, 4, 5]
    assert [v for e in out for v in [e.value, *(m.value for m in e.more)]] == values


@pytest.mark.parametrize("padded", ["pad", "header"], ids=["values", "headers"])
def test_a_bundle_stops_taking_payments_once_their_bytes_reach_its_limit(
    make_settings: SettingsFactory, padded: str
) -> None:
    """Large records (30 KB each here, in their values or in a header) make smaller bundles:
    one stops taking payments once their records reach BUNDLE_BYTES (64 KiB), so a bundle
    stays far under a block whatever the input's records hold."""
    from fraudstream.stream.tasks import BUNDLE_BYTES

    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    _, (by_target, _), out, values = _through_the_stages(
        settings,
        engine,
        [1.0, 2.0, 3.0, 4.0, 5.0],
        pad=30_000 if padded == "pad" else 0,
        header=30_000 if padded == "header" else 0,
    )
    assert BUNDLE_BYTES == 64 * 1024
    assert not by_target
    assert [(e.o, len(e.more)) for e in out] == [(0, 2), (3, 1)]
    assert [v for e in out for v in [e.value, *(m.value for m in e.more)]] == values
    if padded == "header":  # the headers reach the output with their payments
        got = [h for e in out for h in [e.headers, *(m.headers for m in e.more)]]
        assert got == [[("trace", b"h" * 30_000)]] * 5


def test_a_payment_skips_only_the_last_keyed_stage(
    make_settings: SettingsFactory,
) -> None:
    """Payee then shop stage: the payee stage needs every payment's shop to route it, so
    only the shop stage, the last, is skipped (under its floor): the payee stage sends those
    straight to the output, without the transaction."""
    from fraudstream.detection.rules import Velocity

    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    rules = load_ruleset(DEFAULT_RULES)
    big_shop = Velocity("shop_big", "merchant", 3_600_000, max_count=5, min_amount=300.0)
    engine = Engine([*rules.rules, big_shop], threshold=rules.threshold, version="t")
    assert engine.stage_keys() == ["source", "target", "merchant"]
    lean, (by_target, by_merchant, ordered), out, values = _through_the_stages(
        settings, engine, [12.5, 299.0, 300.0, 900.0]
    )
    assert lean == {2: 300.0}
    assert [(e.c, e.tx is not None) for e in by_target] == [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
    ]
    assert [(e.c, e.tx is not None) for e in by_merchant] == [(3, True), (4, True)]
    assert sorted(e.c for e in ordered) == [1, 2, 3, 4]
    assert all(e.tx is None for e in ordered)
    assert [e.value for e in out] == values


def test_records_on_another_clock_are_decided_at_their_partitions_time_a_quiet_hour_is_not(
    make_settings: SettingsFactory,
) -> None:
    """Two payments on the wall clock at the start of a fresh partition, then a replay of
    January's history (as when the README's kcat example goes in just before `make run`'s
    generator writes): the first two are held until a record shows they run ahead, then
    decided at its time (flagged), so the partition's stream time is January's, not
    December's. A run of RUN records on one clock goes at its own time, and so do records
    after a quiet two hours (the partition's clock moved) once a record far ahead of them
    ends their run; that one, followed by records back at the partition's time, is decided
    at its stream time (flagged). One record alone goes at its own time once its partition
    is idle. Held records keep the committed offset at the first of them, and a rollback
    forgets them (they are read again)."""
    from fraudstream.stream.tasks import RUN

    settings = make_settings(topic_partitions=3)
    ensure_topics(settings)
    topology = Topology(settings, ["source", "target"], 3, 0)
    ensure_topics(settings, [s.topic for s in topology.stages[1:]])
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    txn = _coordinator(settings)
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 2**42)

    def pay(i: int, when: str) -> bytes:
        return (
            f'{{"id": "t{i}", "timestamp": "{when}", "source": "A{i}", "target": "P{i}", '
            f'"amount": 600.5, "currency": "EUR"}}'  # (no bundles)
        ).encode()

    clock = [pay(i, f"2026-12-05T01:0{i}:00Z") for i in range(2)]
    history = [pay(10 + i, f"2026-01-05T10:{i:02d}:00Z") for i in range(RUN + 1)]
    later = [pay(50 + i, f"2026-01-05T12:3{i}:00Z") for i in range(5)]  # after a quiet 2 h
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})
    one = history + later[:3] + clock[:1] + later[3:]
    for partition, values in ((0, clock + history[:3]), (1, one), (2, clock[:1])):
        for v in values:
            producer.produce(settings.transactions_topic, v, partition=partition)
    assert producer.flush(30) == 0
    inputs: dict[int, list[object]] = {0: [], 1: [], 2: []}
    for m in read_to_end(settings, settings.transactions_topic):
        inputs[m.partition()].append(m)
    source = topology.stages[0]
    seen: set[tuple[int, int]] = set()  # the repartition records read before

    def step(task: InputTask, msgs: list[object], settle: bool = False) -> list[Envelope]:
        """`task` reads `msgs` (or settles) in one committed transaction: what it sent."""
        txn.begin()
        if not settle:  # (as the processor marks a task that read)
            task.dirty = True
        task.settle() if settle else task.read(msgs)
        ctx.collector.flush()
        txn.commit([], None)
        no_open_transaction(settings, [topology.stages[1].topic])
        new = []
        for m in read_to_end(settings, topology.stages[1].topic):
            if (m.partition(), m.offset()) not in seen:
                seen.add((m.partition(), m.offset()))
                new += decode_block(m.value())
        return sorted((e for e in new if e.kind == DATA), key=lambda e: e.o)

    jan5 = 1_767_607_200_000  # 2026-01-05T10:00:00Z
    task = InputTask(ctx, source, 0, engine.for_stage("source"), Meta())
    assert step(task, inputs[0][:1]) == [] and step(task, inputs[0][1:2]) == []
    assert task.commit_offset(7) == 0 and task.meta.stream_time == 0  # held: read again
    task.rollback()
    assert task.held_run == []  # a rollback forgets them: the rewind reads them again
    assert step(task, inputs[0][:2]) == []
    sent = step(task, inputs[0][2:])
    assert [(e.o, e.t) for e in sent] == [
        (0, jan5),
        (1, jan5),
        (2, jan5),
        (3, jan5 + 60_000),
        (4, jan5 + 120_000),
    ]
    assert ["decided at 2026-01-05T10:00:00Z" in e.note for e in sent] == [True] * 2 + [False] * 3
    assert task.meta.stream_time == jan5 + 120_000 and task.held_run == []
    assert task.commit_offset(7) == 7

    one_clock = InputTask(ctx, source, 1, engine.for_stage("source"), Meta())
    assert step(one_clock, inputs[1][:RUN]) == []  # not known yet: the run goes on
    sent = step(one_clock, inputs[1][RUN : RUN + 1])
    assert [e.t for e in sent] == [jan5 + i * 60_000 for i in range(RUN + 1)]
    assert not any(e.note for e in sent)
    quiet = jan5 + 150 * 60_000  # 12:30, 2 h 14 min after the last
    assert step(one_clock, inputs[1][RUN + 1 : RUN + 4]) == []  # a jump: not known yet
    sent = step(one_clock, inputs[1][RUN + 4 : RUN + 5])  # one far ahead: the clock moved
    assert [(e.t, e.note) for e in sent] == [(quiet + i * 60_000, "") for i in range(3)]
    sent = step(one_clock, inputs[1][RUN + 5 :])  # and back: it was on another clock
    assert [e.t for e in sent] == [quiet + 120_000, quiet + 180_000, quiet + 240_000]
    assert "ahead of its partition's stream time 2026-01-05T12:32:00Z" in sent[0].note
    assert "decided at 2026-01-05T12:32:00Z" in sent[0].note
    assert not sent[1].note and not sent[2].note

    alone = InputTask(ctx, source, 2, engine.for_stage("source"), Meta())
    assert step(alone, inputs[2]) == []
    assert alone.commit_offset(1) == 0  # held: committed at it, read again after a restart
    alone.commit()
    assert alone.commit_offset(1) is None  # nothing read since: that commit stands
    alone.idle = True
    (env,) = step(alone, [], settle=True)
    assert env.t == 1_796_432_400_000 and not env.note  # 2026-12-05T01:00:00Z, its own
    assert alone.meta.stream_time == env.t and alone.held_run == []
    assert alone.commit_offset(1) == 1  # decided: its transaction commits the input past it


def test_a_task_rolls_back_to_its_committed_bookkeeping(settings: Settings) -> None:
    topology = Topology(settings, ["source", "target"], 3, 0)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    txn = TransactionCoordinator(settings, f"parts-{uuid.uuid4().hex[:8]}")
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 0)
    task = InputTask(ctx, topology.stages[0], 1, engine.for_stage("source"), Meta())
    assert task.commit_offset(42) is None  # read nothing: nothing to commit
    assert task.changes(None) == [] and not task.wrote
    task.commit()
    assert not task.wrote  # (a handover has nothing of it to wait for: `hand_over`)
    task.dirty = True
    task.meta.stream_time, task.meta.last_offset = 5_000, 41
    assert task.bound() == (5_000, 1, 41)
    assert task.commit_offset(42) == 42
    changes = task.changes(42)
    assert not task.wrote  # not before that transaction commits
    task.commit()
    assert [k for k, _ in changes] == [b"m"]  # the bookkeeping moved
    assert task.wrote
    assert task.changes(42) == []  # and is not written again unchanged
    task.meta.stream_time, task.idle = 9_000, True
    assert task.bound() == (INF, 1, 41)  # idle: it holds nothing back
    task.rollback()
    assert task.meta.stream_time == 5_000 and not task.idle and not task.dirty
    fresh = InputTask(ctx, topology.stages[0], 2, engine.for_stage("source"), Meta())
    fresh.meta.last_offset = 7
    assert fresh.changes(8) != []
    fresh.rollback()  # aborted: it wrote nothing
    fresh.commit()
    assert not fresh.wrote


def test_a_commit_in_a_rebalance_covers_what_the_tasks_read_not_what_was_delivered(
    settings: Settings,
) -> None:
    """librdkafka runs the rebalance callbacks inside `poll` and `consume`, when records are
    already delivered (the consumer's position is past them) that no task has read: the
    record `poll` returned just before, those `consume` had gathered. A commit there covered
    them by the position, and the partition's new owner started after them: lost. Such a
    commit (`settled=False`) goes no further than what each task read; between steps (every
    delivered record read) it commits the position, past transaction markers."""
    from fraudstream.detection import tutorial_rules

    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})
    for i in range(30):
        producer.produce(settings.transactions_topic, _tx(i), partition=0)
    assert producer.flush(30) == 0
    engine = Engine(tutorial_rules(), version="tutorial-1")
    topology = prepare_topology(settings, engine.stage_keys(), labels=False)
    txn = _coordinator(settings)
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 0)
    consumer = Consumer(consumer_config(settings, "parts", group_id=settings.detector_group))
    tp = (settings.transactions_topic, 0)
    try:
        consumer.assign([TopicPartition(*tp, 0)])
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: 0.0, name="parts")
        manager.assign([tp])
        delivered: list[Any] = []
        while len(delivered) < 30:
            delivered += [m for m in consumer.consume(30, timeout=1) if m.error() is None]
        assert {m.partition() for m in delivered} == {0}
        txn.begin()
        manager.begin()
        task = manager.tasks[tp]
        task.take(delivered[:20])  # the step had read 20 when the callback ran
        ctx.collector.flush()
        assert [o.offset for o in manager.prepare_commit(settled=False)] == [20]
        assert [o.offset for o in manager.prepare_commit()] == [30]  # (all read: the position)
        txn.abort()
        task.rollback()  # an abort: what it read is not done any more
        assert manager.prepare_commit(settled=False) == []  # nothing read: nothing committed
    finally:
        consumer.close()


def test_progress_is_readable_while_a_transaction_holds_offsets_pending(
    settings: Settings,
) -> None:
    """A detector killed between sending its offsets and committing leaves them pending for
    up to the transaction timeout (20 s); `committed_progress` reads the last committed
    ones meanwhile instead of waiting (a chaos test once timed out on it)."""
    from fraudstream.stream import committed_progress

    group = Consumer(consumer_config(settings, "parts", group_id=settings.detector_group))
    txn = _coordinator(settings)
    try:
        txn.begin()
        txn.commit(
            [TopicPartition(settings.transactions_topic, 0, 5)], group.consumer_group_metadata()
        )
        txn.begin()
        offsets = [TopicPartition(settings.transactions_topic, 0, 9)]
        txn.producer.send_offsets_to_transaction(offsets, group.consumer_group_metadata(), 30)
        # ... and never commits, as a process killed here
        assert committed_progress(settings) == 5
        txn.abort()
    finally:
        group.close()


def test_a_hold_from_another_process_pauses_the_inputs_here_that_run_ahead(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The task manager's half of holding back, on real tasks and a real consumer: a keyed
    task here heard a HOLD mark from an input task of another process; this process's
    inputs ahead of the lowest mark heard pause, and read on once that input's next mark is
    a plain one. Over its own bounds, its own input tasks' marks become HOLD; without keyed
    tasks any more, it resumes all."""
    settings = make_settings(state_dir=str(tmp_path), topic_partitions=3)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    topology = prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    txn = TransactionCoordinator(settings, f"parts-{uuid.uuid4().hex[:8]}")
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 0)
    consumer = Consumer(consumer_config(settings, "parts", group_id=settings.detector_group))
    now = [0.0]
    first, keyed = topology.stages[0].topic, topology.stages[1].topic
    ours = [(first, 0), (first, 1)]  # input partition 2 belongs to another process
    try:
        consumer.assign([TopicPartition(t, p) for t, p in [*ours, (keyed, 0)]])
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: now[0], name="parts")
        manager.assign([*ours, (keyed, 0)])
        manager.tasks[(first, 0)].meta.sent = (50, 0, 9)
        manager.tasks[(first, 1)].meta.sent = (70, 1, 4)
        orderer = manager.tasks[(keyed, 0)].orderer  # type: ignore[attr-defined]
        orderer.offer(Envelope(MARK, 50, 0, 9, 0, 1), offset=0)
        orderer.offer(Envelope(MARK, 70, 1, 4, 1, 1), offset=1)
        orderer.offer(Envelope(HOLD, 10, 2, 3, 2, 1), offset=2)  # from the other process
        manager.backpressure()
        assert manager.paused == set(ours) and not manager.pressing
        orderer.offer(Envelope(MARK, 60, 2, 8, 2, 2), offset=3)  # it drained
        now[0] += 1
        manager.backpressure()
        assert manager.paused == set()
        # over its own bounds: all but its laggard pause, and its input marks ask to hold
        for i in range(settings.max_buffered_records + 1):
            orderer.offer(Envelope(DATA, 80, 0, 10 + i, 0, 2 + i), offset=4 + i)
        now[0] += 1
        manager.backpressure()
        assert manager.pressing and manager.paused == {(first, 1)}
        assert manager.marks_due()
        txn.init(30)
        txn.begin()
        manager.send_marks()
        # every task that sends marks asks, the keyed one too (its marks go downstream)
        assert all(manager.tasks[tp].held for tp in [*ours, (keyed, 0)])
        # its keyed task goes to another process (a rebalance): nothing waits here any more,
        # so what it paused reads again and its marks stop asking (it once stayed paused, and
        # three detectors with it)
        manager.drop([TopicPartition(keyed, 0)])
        now[0] += 1
        manager.backpressure()
        assert manager.paused == set() and not manager.pressing
        # a process holding keyed partitions only, over its bounds, asks too: nothing of its
        # own to pause, its marks to the output stage are the only way to the inputs' readers
        only_keyed = TaskManager(ctx, consumer, engine, None, clock=lambda: now[0], name="k")
        only_keyed.assign([(keyed, 1)])
        buffer = only_keyed.tasks[(keyed, 1)].orderer  # type: ignore[attr-defined]
        for u in range(3):
            buffer.offer(Envelope(MARK, 5, u, 0, u, 1), offset=u)
        for i in range(settings.max_buffered_records + 1):
            buffer.offer(Envelope(DATA, 80, 0, 10 + i, 0, 1 + i), offset=3 + i)
        only_keyed.backpressure()
        assert only_keyed.pressing and only_keyed.paused == set()
        assert only_keyed.marks_due()
        only_keyed.send_marks()
        assert only_keyed.tasks[(keyed, 1)].held
        txn.abort()
    finally:
        consumer.close()


def _live_input(
    make_settings: SettingsFactory, tmp_path: Path, **kw: Any
) -> tuple[Settings, Engine, Topology, TaskContext, Consumer, Producer]:
    """The default rules' stages on 2 partitions, and a consumer (fetches wait 10 ms for
    records: one in flight is soon over) and a producer for them; 5 records in input
    partition 0."""
    settings = make_settings(state_dir=str(tmp_path), topic_partitions=2, **kw)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    topology = prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    txn = _coordinator(settings)
    ctx = TaskContext(settings, topology, engine, RecordCollector(settings, txn), lambda: 0)
    config = consumer_config(settings, "parts", group_id=settings.detector_group)
    consumer = Consumer(config | {"fetch.wait.max.ms": 10})
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})
    _write(producer, topology.stages[0].topic, range(5))
    return settings, engine, topology, ctx, consumer, producer


def _write(producer: Producer, topic: str, numbers: range) -> None:
    for i in numbers:
        producer.produce(topic, _tx(i), partition=0)
    assert producer.flush(30) == 0


def _read(consumer: Consumer, n: int) -> None:
    """Consume `n` records (as a step of the loop would)."""
    read: list[Any] = []
    deadline = time.monotonic() + 30
    while len(read) < n and time.monotonic() < deadline:
        read += [m for m in consumer.consume(10, timeout=0.5) if m.error() is None]
    assert len(read) == n


def test_a_paused_input_never_goes_idle_however_it_looked_at_its_end(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """An input read as it is written sits at its high watermark as its last fetch saw it.
    Paused there by back-pressure, no fetch asks for it any more: it looked at its end for
    good, went idle once PARTITION_IDLE_MS passed, and its mark said nothing more would come
    from it while records waited there, so the stages released the other partitions' later
    records before them (decisions other than a run without the pause). A paused partition
    is never at its end now, and an idle one is not paused (it has nothing to read, and what
    comes there must not wait behind its mark)."""
    settings, engine, topology, ctx, consumer, producer = _live_input(
        make_settings, tmp_path, max_buffered_records=50, partition_idle_ms=0
    )
    now = [0.0]
    first, keyed = topology.stages[0].topic, topology.stages[1].topic
    ahead, laggard = (first, 0), (first, 1)
    try:
        consumer.assign([TopicPartition(t, p, 0) for t, p in [ahead, laggard, (keyed, 0)]])
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: now[0], name="parts")
        manager.assign([ahead, laggard, (keyed, 0)])
        _read(consumer, 5)  # read as written: at its end
        task = manager.tasks[ahead]
        manager.ends_by_watermarks()
        assert task.at_end is not None  # (it is at its end: the check sees it)
        task.at_end = None
        manager.tasks[ahead].meta.sent = (70, 0, 4)
        manager.tasks[laggard].meta.sent = (50, 1, 9)
        orderer = manager.tasks[(keyed, 0)].orderer  # type: ignore[attr-defined]
        for i in range(settings.max_buffered_records + 1):  # over the bounds
            orderer.offer(Envelope(DATA, 80, 0, 10 + i, 0, 1 + i), offset=i)
        manager.backpressure()
        assert manager.pressing and manager.paused == {ahead}
        consumer.consume(10, timeout=0.5)  # (the fetch in flight at the pause ends)
        _write(producer, first, range(5, 10))  # written while it is paused: nobody fetches
        for _ in range(3):
            now[0] += 1
            consumer.consume(10, timeout=0.2)
            # its end as the last fetch saw it, with 5 records after it: it looks at its end
            assert consumer.get_watermark_offsets(TopicPartition(*ahead), cached=True)[1] == 5
            manager.ends_by_watermarks()
            manager.reached_end([ahead])  # (an end-of-partition event still queued)
            manager.marks_due()
            assert task.at_end is None and not task.idle
            assert task.bound() == (task.meta.stream_time, 0, task.meta.last_offset)
        # an input gone idle (read to its end, silent) is resumed, and never paused
        task.idle = True
        now[0] += 1
        manager.backpressure()
        assert manager.pressing and manager.paused == set()
    finally:
        consumer.close()


def test_an_input_goes_idle_only_if_nothing_was_fetched_for_it_since_it_was_at_its_end(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """An input read to its end goes idle once PARTITION_IDLE_MS passes, but a step can take
    longer than that (a slow commit, a restore in a rebalance) while the consumer fetches
    what came meanwhile: it went idle with those records waiting, its mark let the stages
    release the other partitions' later records first. Now it goes idle only if its position
    is still at the high watermark of the last fetch, and never in a commit made inside a
    rebalance callback (records delivered there, past the position, are not read yet)."""
    _, engine, topology, ctx, consumer, producer = _live_input(
        make_settings, tmp_path, partition_idle_ms=1000
    )
    now = [0.0]
    tp = (topology.stages[0].topic, 0)
    try:
        consumer.assign([TopicPartition(*tp, 0)])
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: now[0], name="parts")
        manager.assign([tp])
        task = manager.tasks[tp]
        _read(consumer, 5)
        manager.ends_by_watermarks()
        assert task.at_end == 0.0
        # a long step: five more records written, and fetched, not yet read
        _write(producer, tp[0], range(5, 10))
        deadline = time.monotonic() + 30
        while consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)[1] < 10:
            assert time.monotonic() < deadline, "the consumer never fetched the new records"
            time.sleep(0.01)
        now[0] += 2
        manager.marks_due(settled=False)  # (in a rebalance: never)
        assert task.at_end == 0.0 and not task.idle
        manager.marks_due()
        assert not task.idle and task.at_end is None  # records wait: not idle
        _read(consumer, 5)  # read to its end again and silent: idle
        manager.ends_by_watermarks()
        now[0] += 2
        manager.marks_due()
        assert task.idle and task.bound()[0] == INF  # type: ignore[index]
    finally:
        consumer.close()


def test_an_input_at_its_end_with_nothing_delivered_since_it_was_assigned_goes_idle(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A partition assigned at its end (a restart after everything was decided) delivers no
    record, so the consumer's position says nothing (-1001): its end-of-partition event is
    what says it is at its end, and it goes idle once nothing more is fetched. (A check of
    the position against the watermark, reviewed before it landed, would have held it back
    for good, and with it every keyed stage.)"""
    _, engine, topology, ctx, consumer, _ = _live_input(
        make_settings, tmp_path, partition_idle_ms=1000
    )
    now = [0.0]
    tp = (topology.stages[0].topic, 0)
    try:
        consumer.assign([TopicPartition(*tp, 5)])  # at its end: nothing to deliver
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: now[0], name="parts")
        manager.assign([tp])
        task = manager.tasks[tp]
        deadline = time.monotonic() + 30
        while consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)[1] < 5:
            assert time.monotonic() < deadline, "the consumer never fetched"
            assert not [m for m in consumer.consume(10, timeout=0.1) if m.error() is None]
        assert consumer.position([TopicPartition(*tp)])[0].offset < 0
        manager.reached_end([tp])  # (its end-of-partition event)
        now[0] += 2
        manager.marks_due()
        assert task.idle
    finally:
        consumer.close()


def test_what_the_open_transaction_forwarded_counts_against_the_bounds(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Payments forwarded in the open transaction reach a stage's buffer only once it commits;
    uncounted meanwhile, an input that back-pressure left reading forwarded a whole
    transaction past MAX_BUFFERED_RECORDS (up to 6.6 times it with 1 s transactions). They
    count now, until the transaction commits or aborts; those for another process's tasks
    count there, once it can read them."""
    settings = make_settings(state_dir=str(tmp_path), topic_partitions=2, max_buffered_records=50)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    topology = prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    txn = TransactionCoordinator(settings, f"parts-{uuid.uuid4().hex[:8]}")
    collector = RecordCollector(settings, txn)
    ctx = TaskContext(settings, topology, engine, collector, lambda: 0)
    consumer = Consumer(consumer_config(settings, "parts", group_id=settings.detector_group))
    now = [0.0]  # (back-pressure looks again once its clock moved)
    first, keyed = topology.stages[0].topic, topology.stages[1].topic
    ours = [(first, 0), (first, 1), (keyed, 0)]
    try:
        consumer.assign([TopicPartition(t, p) for t, p in ours])
        manager = TaskManager(ctx, consumer, engine, None, clock=lambda: now[0], name="parts")
        manager.assign(ours)
        manager.tasks[(first, 0)].meta.sent = (50, 0, 9)
        manager.tasks[(first, 1)].meta.sent = (70, 1, 4)
        orderer = manager.tasks[(keyed, 0)].orderer  # type: ignore[attr-defined]
        orderer.offer(Envelope(MARK, 50, 0, 9, 0, 1), offset=0)
        orderer.offer(Envelope(MARK, 70, 1, 4, 1, 1), offset=1)
        txn.init(30)
        txn.begin()
        sent = [Envelope(DATA, 80, 0, 10 + i, 0, 1 + i, value=b"{}") for i in range(51)]
        collector.forward((keyed, 1), sent)  # another process's to buffer: not counted here
        collector.flush()
        manager.backpressure()
        assert not manager.pressing and manager.paused == set()
        collector.forward((keyed, 0), sent)
        collector.flush()
        now[0] += 1
        assert collector.in_flight == {(keyed, 0): 51, (keyed, 1): 51} and len(orderer) == 0
        manager.backpressure()  # nothing buffered yet, but over the bound: the laggard reads on
        assert manager.pressing and manager.paused == {(first, 1)}
        txn.abort()
        collector.discard()  # aborted: they never arrive
        assert not collector.in_flight
        txn.begin()
        collector.forward((keyed, 0), sent[:3])
        collector.flush()
        assert collector.in_flight == {(keyed, 0): 3}
        txn.abort()
        collector.settle()  # (as after a commit: from now on they are the stage's to read)
        assert not collector.in_flight
    finally:
        consumer.close()


def test_a_group_recorded_in_format_6_is_refused(
    make_settings: SettingsFactory,
) -> None:
    """A group built by the version before the output's own order (format 6) is refused with
    the next step named, and its record is left as it was."""
    import msgspec

    from fraudstream.stream.layout import Shape, _read_shape, _write_shape

    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    engine = Engine.from_ruleset(load_ruleset(DEFAULT_RULES))
    topology = prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    seven = _read_shape(settings, topology.shape_topic)
    assert seven is not None and seven.format == 7 and Shape.of(topology) == seven
    six = msgspec.structs.replace(seven, format=6)
    _write_shape(settings, topology.shape_topic, six)
    with pytest.raises(GroupMismatchError, match="repartition record format 6 → 7") as failed:
        prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    assert "fraudstream reset --group" in str(failed.value)
    assert _read_shape(settings, topology.shape_topic) == six


def test_a_start_on_one_client_records_the_shape_and_a_restart_checks_it(
    make_settings: SettingsFactory,
) -> None:
    """`prepare_topology` on the detector's one admin client: the first start creates the
    internal topics and records the group's shape without reading it back; a restart of the
    same topology finds everything in one listing and reads the shape; one with other stages
    is refused, saying what changed, and creates nothing."""
    from fraudstream.stream.clients import admin_client
    from fraudstream.stream.layout import Shape, _read_shape, group_topics

    settings = make_settings(topic_partitions=2)
    ensure_topics(settings)
    admin = admin_client(settings)
    first = prepare_topology(settings, ["source", "target"], labels=False, admin=admin)
    repartition, changelogs = first.internal()
    created = group_topics(settings, settings.detector_group)
    assert {t for t, _ in repartition + changelogs} | {first.shape_topic} <= set(created)
    assert _read_shape(settings, first.shape_topic) == Shape.of(first)
    again = prepare_topology(settings, ["source", "target"], labels=False, admin=admin)
    assert Shape.of(again) == Shape.of(first)
    with pytest.raises(GroupMismatchError, match=r"stages \(state keys of the rules\)"):
        prepare_topology(settings, ["source", "target", "merchant"], labels=False, admin=admin)
    assert group_topics(settings, settings.detector_group) == created
    assert _read_shape(settings, first.shape_topic) == Shape.of(first)


def test_creating_a_topic_another_client_made_reports_it_as_not_created(
    make_settings: SettingsFactory,
) -> None:
    """`create_missing` returns only what its own request created: a topic that exists but
    was not in the caller's listing (another detector made it meanwhile) is left out, so
    `prepare_topology` reads it instead of taking it for empty."""
    from fraudstream.stream.admin import create_missing
    from fraudstream.stream.clients import admin_client

    settings = make_settings()
    admin = admin_client(settings)
    topic = f"made-{uuid.uuid4().hex[:8]}"
    try:
        assert create_missing(settings, {topic: (1, True)}, admin=admin) == [topic]
        assert create_missing(settings, {topic: (1, True)}, admin=admin, listed={}) == []
        assert create_missing(settings, {topic: (1, True)}, admin=admin) == []
    finally:  # the session's broker keeps no topic of a test's own
        for future in admin.delete_topics([topic]).values():
            future.result(30)


def test_a_shape_recorded_by_another_detector_is_refused_before_anything_is_created(
    make_settings: SettingsFactory,
) -> None:
    """A group whose shape topic another detector created and wrote with other stages, its
    other internal topics not there yet: the start reads that shape and refuses, naming
    the difference, and creates none of its own topics."""
    from fraudstream.stream.admin import create_missing
    from fraudstream.stream.layout import Shape, _read_shape, _write_shape, group_topics

    settings = make_settings(topic_partitions=2)
    ensure_topics(settings)
    other = Topology(settings, ["source", "target", "merchant"], 2, 0)
    assert create_missing(settings, {other.shape_topic: (1, True)}) == [other.shape_topic]
    _write_shape(settings, other.shape_topic, Shape.of(other))
    before = group_topics(settings, settings.detector_group)
    with pytest.raises(GroupMismatchError, match=r"stages \(state keys of the rules\)"):
        prepare_topology(settings, ["source", "target"], labels=False)
    after = set(group_topics(settings, settings.detector_group))
    assert after - {other.status_topic} == set(before)  # (made with the shape topic: aside)
    assert _read_shape(settings, other.shape_topic) == Shape.of(other)


@pytest.mark.parametrize("workers", [1, 2])
def test_run_calls_on_start_in_its_thread_with_the_topics_ready_before_the_first_step(
    settings: Settings, workers: int
) -> None:
    """`Processor.run(on_start=…)`: called once, in the run's thread, once the internal
    topics exist and the task manager is built, before any record is decided or any
    transaction begun; the run goes on after it. With `workers` > 1 it comes before the
    process asks to join the group (the workers of `--workers N` wait for each other there,
    so that they join together): the group has no member yet."""
    from fraudstream.stream import Processor
    from fraudstream.stream.layout import group_members, group_topics

    n = 20
    produce_raw(
        settings, [(f"ACC{i % 3}".encode(), _tx(i, account=f"ACC{i % 3}")) for i in range(n)]
    )
    processor = Processor(settings, Engine.from_ruleset(load_ruleset(DEFAULT_RULES)))
    seen: list[tuple[str, int, bool, bool]] = []

    def on_start() -> None:
        assert processor.topology is not None and processor.manager is not None
        repartition, changelogs = processor.topology.internal()
        internal = {t for t, _ in repartition + changelogs}
        seen.append(
            (
                threading.current_thread().name,
                processor.stats.total,
                internal <= set(group_topics(settings, settings.detector_group)),
                processor.txn.in_txn,
            )
        )
        if workers > 1:  # (with one, joining has begun: its outcome is a race)
            members.append(len(group_members(settings, settings.detector_group)))

    members: list[int] = []
    stop = threading.Event()
    guard = threading.Timer(120, stop.set)  # a bug fails the test instead of hanging it
    guard.start()
    try:
        stats = processor.run(stop, stop_after=n, on_start=on_start, workers=workers)
    finally:
        guard.cancel()
    assert seen == [(threading.current_thread().name, 0, True, False)]
    assert members == ([0] if workers > 1 else [])
    # (alone with `workers` 2, it is given every partition and joins again: it goes on)
    assert stats.total == n
