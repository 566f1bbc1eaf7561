"""The detector's consume-decide-produce loop, with Kafka transactions.

One consumer reads every topic of the topology (`stream/topology.py`): the input, and, when the
rule set keeps state by payee or merchant, the repartition topics between the stages. Each
assigned partition is a *task* with its own state. Everything a batch produces — outputs,
dead letters, repartition records, marks, changelog records — and every task's input offset
commit in one Kafka transaction every `commit_records` records or `commit_interval_ms`: a
crash before the commit replays the batch, and `read_committed` readers never see it.

    processor = Processor(settings, engine)
    processor.run(stop_event)
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings
from fraudstream.detection import Engine, Hit
from fraudstream.errors import ProcessingError
from fraudstream.schema import (
    Decision,
    Decoded,
    InvalidTransaction,
    Reason,
    complete_label,
    decode_label,
    decode_transaction,
    encode_decided,
)
from fraudstream.stream.changelog import end_offsets, read_changelog, topic_id
from fraudstream.stream.clients import base_config, consumer_config, producer_config
from fraudstream.stream.dlq import dlq_headers
from fraudstream.stream.health import StallWatch, Status, TaskStatus, describe_key, waits
from fraudstream.stream.layout import member_name, prepare_topology
from fraudstream.stream.ordering import (
    BLOCK_BYTES,
    DATA,
    INF,
    LABEL,
    MARK,
    Envelope,
    Key,
    Meta,
    Orderer,
    decode_block,
    decode_meta,
    encode_block,
    encode_meta,
)
from fraudstream.stream.snapshot import Snapshot, SnapshotStore
from fraudstream.stream.topology import Stage, Topology

__all__ = ["Processor", "ProcessorStats"]

log = logging.getLogger(__name__)

META_KEY = b"m"
PURGE_EVERY_S = 10.0  # how often consumed repartition records are deleted
PRODUCE_QUEUE_KBYTES = 65_536  # the most this process's producer holds unsent


def _fatal_message(err: KafkaError) -> str:
    if err.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    ):
        return (
            f"this detector was fenced: another instance with the same transactional.id "
            f"took over ({err}); its uncommitted work was aborted. Do not run two instances "
            "with the same --instance; restart this one only if the other is gone"
        )
    return (
        f"unrecoverable Kafka error ({err}); the detector stops without committing the open "
        "transaction — restart it to resume from the last commit"
    )


def _log_purge_failure(tp: TopicPartition) -> Callable[[Any], None]:
    def done(future: Any) -> None:
        if future.exception() is not None:
            log.warning(
                "could not delete old records of %s[%d]: %s",
                tp.topic,
                tp.partition,
                future.exception(),
            )

    return done


def _bound_of(task: Task) -> Key:
    bound = task.bound()
    return bound if bound is not None else (-1, -1, -1)


def _flag(decision: Decision, note: str) -> Decision:
    """The decision of a record decided at its partition's stream time, saying so."""
    return msgspec.structs.replace(
        decision, reasons=[*decision.reasons, Reason("event_time_skew", note)]
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(ms: int) -> str:
    s = ms / 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


def _abortable(err: KafkaError) -> bool:
    """An error that aborting the transaction (and redoing it) gets past."""
    if err.fatal():
        return False
    return bool(err.txn_requires_abort()) or err.code() == KafkaError._STATE


@dataclass
class ProcessorStats:
    legit: int = 0
    fraud: int = 0
    dead_letter: int = 0
    commits: int = 0
    aborts: int = 0
    renewed: int = 0  # producers replaced after a commit that kept timing out
    restored_keys: int = 0

    @property
    def total(self) -> int:
        return self.legit + self.fraud + self.dead_letter


class Task:
    """One assigned partition of one stage: its state engine, bookkeeping and buffer."""

    def __init__(
        self,
        stage: Stage,
        partition: int,
        origin: int,
        engine: Engine | None,
        meta: Meta,
        *,
        keep_meta: bool = True,  # False in a one-stage topology: no marks, nothing to keep
    ) -> None:
        self.keep_meta = keep_meta
        self.stage = stage
        self.partition = partition
        self.origin = origin  # its id downstream: the partition (labels: after the input's)
        self.engine = engine
        self.meta = meta
        self._saved = encode_meta(meta)
        self._committing = self._saved
        self.orderer = Orderer(stage.upstream, meta) if stage.upstream else None
        self.dirty = False  # read something since the last commit
        self.at_end: float | None = None  # input tasks: when the partition was read to its end
        self.idle = self._was_idle()

    def begin(self) -> None:
        if self.engine is not None:
            self.engine.begin()

    def changes(self, resume: int | None) -> list[tuple[bytes, bytes | None]]:
        """Changelog records of this transaction; `resume`: the input offset it commits."""
        out = self.engine.changes() if self.engine is not None else []
        if self.keep_meta:
            meta = self.meta
            if self.orderer is not None and resume is not None:
                meta = self.orderer.committed_meta(resume)
            blob = encode_meta(meta)
            if blob != self._saved:
                out.append((META_KEY, blob))
            self._committing = blob
        return out

    def commit(self) -> None:
        if self.engine is not None:
            self.engine.commit()
        if self.keep_meta:
            self._saved = self._committing
        self.dirty = False

    def rollback(self) -> None:
        if self.engine is not None:
            self.engine.rollback()
        self.meta = decode_meta(self._saved)
        if self.orderer is not None:
            self.orderer.reset(self.meta)
        self.dirty = False
        self.at_end = None
        self.idle = self._was_idle()

    def _was_idle(self) -> bool:
        """An input whose last committed mark said idle (it stays so until a record comes)."""
        sent = self.meta.sent
        return self.orderer is None and sent is not None and sent[0] == INF

    def bound(self) -> Key | None:
        """This task's mark: nothing it sends later is at or below it."""
        if self.orderer is not None:
            # After a restart the marks read past the resume offset are read again; the mark
            # sent before stays true meanwhile (the upstream promises hold), so never resend
            # a lower one.
            bound, sent = self.orderer.bound(), self.meta.sent
            if bound is None or (sent is not None and sent > bound):
                return sent
            return bound
        m = self.meta
        return (INF if self.idle else m.stream_time, self.origin, m.last_offset)

    def commit_offset(self, position: int) -> int | None:
        """The input offset to commit: the oldest record still buffered, else the reading
        position (`position` < 0: nothing read yet)."""
        if self.orderer is not None:
            buffered = self.orderer.oldest()
            if buffered is not None:
                return buffered
        elif not self.dirty:
            return None
        return position if position >= 0 else None


class Processor:
    """One detector instance: a consumer in the group and a transactional producer."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.wall_ms = wall_ms  # only to refuse event times from the future
        self.stats = ProcessorStats()
        instance = instance or settings.detector_instance
        name = f"{settings.detector_group}-{instance}"
        static = {"group.instance.id": name} if settings.detector_static_membership else {}
        self.consumer = Consumer(
            consumer_config(settings, member_name(name), group_id=settings.detector_group)
            | {"enable.partition.eof": True}  # an input read to its end may go idle
            | static
        )
        self._name = name
        self._instance = instance
        self.producer = self._new_producer()
        self.topology: Topology | None = None
        self.tasks: dict[tuple[str, int], Task] = {}
        self._in_txn = False
        self._txn_started = 0.0
        self._txn_records = 0
        self._pending = ProcessorStats()
        self._commit_deadline: float | None = None
        self._idle_s = settings.partition_idle_ms / 1000
        self._admin: AdminClient | None = None
        self._next_purge = 0.0
        self._committed: list[TopicPartition] = []  # the offsets of the last commit
        self._batches = 0
        self._snapshots = (
            SnapshotStore(
                Path(settings.state_dir),
                settings.detector_group,
                write_delay_s=settings.fault_snapshot_write_delay_ms / 1000,
            )
            if settings.snapshot_interval_ms
            else None
        )
        self._next_snapshot = clock() + settings.snapshot_interval_ms / 1000
        self._topic_ids: dict[str, str] = {}
        self._keyed = False  # a staged topology: keyed stages buffer, inputs may be paused
        self._paused: set[tuple[str, int]] = set()  # input partitions paused for back-pressure
        # envelopes forwarded in this step, per (repartition topic, partition), and their
        # approximate size: sent as one block per destination at the end of the step
        self._outbox: dict[tuple[str, int], list[Envelope]] = {}
        self._outbox_bytes: dict[tuple[str, int], int] = {}
        # envelopes per repartition record, over those recently sent and read, weighted by
        # records (marks are records of one envelope, many and small; a mean of per-batch
        # ratios would let them hide the blocks of hundreds): how back-pressure counts what
        # is not read yet. Sent ones count from the start, before anything is read back.
        self._block_envelopes = self._block_records = 1.0
        self._next_backpressure = 0.0
        self._skipped_labels: Counter[str] = Counter()  # label records dead-lettered, by class
        self._skipped_said: dict[str, int] = {}
        self._next_health = 0.0
        self._next_status = 0.0
        self._stall = StallWatch(settings.stall_warning_ms)
        self._last_commit_ms = 0
        self._status_producer: Producer | None = None
        # Fault tests only (Settings.fault_*): abort about this share of transactions, and
        # make this share of commits "time out" past their retries, drawn from a seeded
        # generator so that a failing run can be replayed.
        self._chaos_abort_rate = settings.fault_abort_rate
        self._chaos_commit_timeout_rate = settings.fault_commit_timeout_rate
        seed = settings.fault_injection_seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        self._chaos = random.Random(seed)
        if self._chaos_abort_rate or self._chaos_commit_timeout_rate:
            log.warning(
                "fault injection: aborting %.0f%% of transactions, timing out %.0f%% of "
                "commits (FAULT_INJECTION_SEED=%d)",
                100 * self._chaos_abort_rate,
                100 * self._chaos_commit_timeout_rate,
                seed,
            )

    # --- lifecycle -------------------------------------------------------------------------

    def run(
        self, stop: threading.Event | None = None, *, stop_after: int | None = None
    ) -> ProcessorStats:
        """Process until `stop` is set (or `stop_after` records are committed), then commit."""
        stop = stop or threading.Event()
        threading.Thread(
            target=self._watchdog, args=(stop,), name="commit-watchdog", daemon=True
        ).start()
        try:
            self.topology = prepare_topology(
                self.settings, self.engine.stage_keys(), labels=self.engine.has_features
            )
        except BaseException:
            self.consumer.close()
            raise
        # Each record allocates short-lived objects (decoded values, envelopes); with the
        # default thresholds the collector keeps rescanning the long-lived state. Collect
        # young objects less often (benchmarks/detector_throughput.py: before and after).
        gc.set_threshold(100_000, 50, 100)
        self.producer.init_transactions(30)
        self.consumer.subscribe(
            self.topology.topics(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._keyed = self.topology.staged
        interval = self.settings.commit_interval_ms / 1000
        try:
            self._loop(stop, stop_after, interval)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            raise ProcessingError(_fatal_message(err)) from None
        finally:
            self.close()
        return self.stats

    def _loop(self, stop: threading.Event, stop_after: int | None, interval: float) -> None:
        while not stop.is_set():
            msgs = self.consumer.consume(num_messages=self.settings.batch_size, timeout=0.05)
            if msgs:
                try:
                    self._process(msgs)
                except KafkaException as exc:
                    # e.g. the producer lost its epoch mid-transaction (librdkafka refuses
                    # to produce until the transaction is aborted): abort and redo
                    if not self._in_txn or not _abortable(exc.args[0]):
                        raise
                    log.warning("producing failed, aborting and rewinding: %s", exc.args[0])
                    self._abort()
            if self._keyed:
                self._backpressure()
            if not self._in_txn and self._marks_due():
                self._begin()
            if self._in_txn and (
                self._txn_records >= self.settings.commit_records
                or self.clock() - self._txn_started >= interval
            ):
                self._commit()
            if stop_after is not None and self.stats.total >= stop_after:
                break
            if self.clock() >= self._next_health:
                self._health()
        if self._in_txn:
            self._commit()
        if self._snapshots is not None and not self._in_txn and self.stats.commits:
            self._snapshot()  # a clean stop leaves the freshest snapshot for the restart
        if self.topology is not None and self.topology.staged and self._committed:
            self._purge(self._committed, wait=10)

    def close(self) -> None:
        """Abort what is uncommitted (a fenced producer cannot: the broker aborts it) and
        leave the group."""
        if self._in_txn:
            try:
                self.producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("could not abort the open transaction: %s", exc.args[0])
            self._in_txn = False
        self.consumer.close()
        if self._status_producer is not None:
            self._status_producer.flush(5)
        if self._snapshots is not None:
            self._snapshots.flush()

    # --- processing ------------------------------------------------------------------------

    def _begin(self) -> None:
        self.producer.begin_transaction()
        for task in self.tasks.values():
            task.begin()
        self._in_txn = True
        self._txn_started = self.clock()
        self._txn_records = 0

    def _process(self, msgs: list[Any]) -> None:  # Any: no Optional checks on the hot path
        self._batches += 1
        if self._batches == self.settings.fault_crash_at_batch:
            raise RuntimeError(f"fault injection: crash in batch {self._batches}")
        if not self._in_txn:
            self._begin()
        runs: dict[tuple[str, int], list[Any]] = {}
        ends: dict[tuple[str, int], bool] = {}  # whether a partition's last event was its end
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    ends[(msg.topic(), msg.partition())] = True
                    continue
                if err.fatal():
                    raise ProcessingError(f"consumer failed: {err}")
                log.warning("consumer error: %s", err)
                continue
            tp = (msg.topic(), msg.partition())
            run = runs.get(tp)
            if run is None:
                runs[tp] = [msg]
            else:
                run.append(msg)
            if ends:
                ends.pop(tp, None)
        self._txn_records += len(msgs)
        keyed = []
        for tp, run in runs.items():
            task = self.tasks.get(tp)
            if task is None:  # not ours (any more): the new owner reads it again
                continue
            task.dirty = True
            task.at_end = None
            task.idle = False
            index = task.stage.index
            if index == 0:
                self._read_input(task, run)
            elif index < 0:
                self._read_labels(task, run)
            else:
                self._offer(task, run)
                keyed.append(task)
        for tp, _ in ends.items():
            task = self.tasks.get(tp)
            if task is not None and task.at_end is None:
                task.at_end = self.clock()
        assert self.topology is not None
        for stage in self.topology.stages[1:]:  # upstream first: their output is read later
            for task in keyed:
                if task.stage is stage:
                    self._release(task)
        self._send_blocks()

    def _read_input(self, task: Task, msgs: list[Any]) -> None:
        valid: list[tuple[Any, Decoded, int]] = []
        meta = task.meta
        stream_time = meta.stream_time
        skew = self.settings.max_event_time_skew_ms
        latest = self.wall_ms() + skew  # no event time beyond this is believed
        flagged: dict[int, str] = {}  # offset -> why a record was decided at stream time
        for msg in msgs:
            offset = msg.offset()
            try:
                decoded = decode_transaction(
                    msg.value(),
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=offset,
                    record_ts_ms=msg.timestamp()[1],
                )
            except InvalidTransaction as exc:
                self._dead_letter(msg, exc.kind, str(exc), "decode")
                continue
            ts = decoded.tx.ts_ms
            if ts > latest:
                self._dead_letter(
                    msg,
                    "event_time_skew",
                    f"event time {_iso(ts)} is {_span(ts - latest + skew)} ahead of the wall "
                    f"clock, more than MAX_EVENT_TIME_SKEW_MS ({_span(skew)}); fix the "
                    "producer's clock or the record's timestamp",
                    "decode",
                )
                continue
            if stream_time and ts > stream_time + skew:
                # Far ahead of its partition's time (another clock, e.g. a record without
                # timestamp in a replay): decided and ordered at the stream's time, so one
                # record cannot hold every other partition's records back in the stages.
                at = stream_time + skew
                flagged[offset] = (
                    f"event time {_iso(ts)} is {_span(ts - stream_time)} ahead of its "
                    f"partition's stream time {_iso(stream_time)}; decided at {_iso(at)}"
                )
                decoded = Decoded(msgspec.structs.replace(decoded.tx, timestamp=at), decoded.added)
                ts = at
            if ts > stream_time:
                stream_time = ts
            valid.append((msg, decoded, stream_time))
        meta.stream_time = stream_time
        meta.last_offset = msgs[-1].offset()
        if not valid:
            return
        assert task.engine is not None and self.topology is not None
        scored = task.engine.score([d.tx for _, d, _ in valid])
        if not self.topology.staged:  # one stage: decide here
            combine = self.engine.combine
            for (msg, decoded, _), (_, hits) in zip(valid, scored, strict=True):
                decision = combine(hits, None)
                if flagged and msg.offset() in flagged:
                    decision = _flag(decision, flagged[msg.offset()])
                value = encode_decided(msg.value(), decoded, decision)
                self._output(msg.key(), value, msg.headers(), decision.outcome)
            return
        to = self.topology.next(task.stage)
        q = task.partition
        key = to.key
        for (msg, decoded, order_time), (row, hits) in zip(valid, scored, strict=True):
            tx = decoded.tx
            env = Envelope(
                DATA,
                order_time,
                q,
                msg.offset(),
                q,
                0,
                tx,
                msg.value(),
                decoded.added,
                msg.key(),
                msg.headers(),
                {"source": row},
                [(h.rule, h.weight, h.reason, h.allow) for h in hits],
            )
            if flagged and msg.offset() in flagged:
                env.note = flagged[msg.offset()]
            self._forward(task, to, self.topology.route(to, getattr(tx, key), q), env)

    def _read_labels(self, task: Task, msgs: list[Any]) -> None:
        assert self.topology is not None
        meta = task.meta
        to = self.topology.next(task.stage)
        q = task.origin
        for msg in msgs:
            meta.last_offset = msg.offset()
            try:
                label = decode_label(msg.value())
            except InvalidTransaction as exc:
                self._skip_label(msg, exc.kind, str(exc))
                continue
            if label.is_fraud and label.target is None:
                self._skip_label(
                    msg,
                    "label_incomplete",
                    f"fraud label {label.id} names no target: the payee-risk features need "
                    "the labelled payment's target (and its merchant, when it had one)",
                )
                continue
            # a verdict takes its place in time when it was published, and is known from
            # then on unless it says when (known_ms)
            published = label.published_ms
            if published is None:
                published = msg.timestamp()[1]
            label = complete_label(label, published_ms=published)
            meta.stream_time = max(meta.stream_time, published)
            env = Envelope(LABEL, meta.stream_time, q, msg.offset(), q, 0, label=label)
            self._forward(task, to, self.topology.route(to, getattr(label, to.key, None), q), env)

    def _skip_label(self, msg: Any, error_class: str, message: str) -> None:
        self._dead_letter(msg, error_class, message, "label")
        self._skipped_labels[error_class] += 1

    def _offer(self, task: Task, msgs: list[Any]) -> None:
        orderer = task.orderer
        assert orderer is not None
        envelopes = 0
        for msg in msgs:
            value = msg.value()
            try:
                block = decode_block(value)
            except Exception as exc:  # not written by a detector: keep it, never stop
                self._dead_letter(msg, type(exc).__name__, str(exc), "repartition")
                continue
            if not block:
                continue
            offset, size = msg.offset(), len(value) // len(block)
            for env in block:  # a block shares its record's offset: committed as one
                orderer.offer(env, offset, size)
            envelopes += len(block)
        self._count_blocks(envelopes, len(msgs))

    def _count_blocks(self, envelopes: int, records: int) -> None:
        self._block_envelopes = 0.99 * self._block_envelopes + envelopes
        self._block_records = 0.99 * self._block_records + records

    def _release(self, task: Task) -> None:
        assert task.orderer is not None and self.topology is not None
        released = task.orderer.release()
        if not released:
            return
        stage = task.stage
        if self.topology.is_output(stage):
            self._decide(released)
            return
        engine = task.engine
        assert engine is not None
        to = self.topology.next(stage)
        last = self.topology.is_output(to)
        run: list[Envelope] = []
        for env in released:
            if env.kind == DATA:
                run.append(env)
                continue
            self._score_run(task, engine, to, run)
            run = []
            assert env.label is not None
            engine.observe_labels([env.label])
            if not last:  # the next keyed stage wants the verdict too
                value = getattr(env.label, to.key, None)
                self._forward(task, to, self.topology.route(to, value, env.q), env)
        self._score_run(task, engine, to, run)

    def _score_run(self, task: Task, engine: Engine, to: Stage, run: list[Envelope]) -> None:
        if not run:
            return
        assert self.topology is not None
        key = task.stage.key
        for env, (row, hits) in zip(run, engine.score([e.tx for e in run]), strict=True):  # type: ignore[misc]
            env.parts[key] = row
            env.hits += [(h.rule, h.weight, h.reason, h.allow) for h in hits]
            value = getattr(env.tx, to.key) if to.key else None
            self._forward(task, to, self.topology.route(to, value, env.q), env)

    def _decide(self, released: list[Envelope]) -> None:
        data = [e for e in released if e.kind == DATA]
        decisions = self.engine.finish(
            [e.parts for e in data], [[Hit(*h) for h in e.hits] for e in data]
        )
        for env, decision in zip(data, decisions, strict=True):
            assert env.tx is not None
            if env.note:
                decision = _flag(decision, env.note)
            value = encode_decided(env.value, Decoded(env.tx, env.added), decision)
            self._output(env.key, value, env.headers, decision.outcome)

    def _forward(self, task: Task, to: Stage, partition: int, env: Envelope) -> None:
        seq = task.meta.seq
        n = seq[partition] = seq.get(partition, 0) + 1
        env.u, env.s = task.origin, n
        dest = (to.topic, partition)
        out = self._outbox.get(dest)
        if out is None:
            out = self._outbox[dest] = []
            self._outbox_bytes[dest] = 0
        out.append(env)
        size = self._outbox_bytes[dest] = self._outbox_bytes[dest] + 2 * len(env.value) + 128
        if size >= BLOCK_BYTES:
            self._send_block(dest)

    def _send_blocks(self) -> None:
        """Every envelope forwarded in this step, a block per destination partition, before
        anything else goes to those partitions (marks must follow the data they cover)."""
        for dest in list(self._outbox):
            self._send_block(dest)

    def _send_block(self, dest: tuple[str, int]) -> None:
        block = self._outbox.pop(dest)
        del self._outbox_bytes[dest]
        self._produce_to(dest[0], dest[1], None, encode_block(block))
        self._count_blocks(len(block), 1)

    def _output(self, key: Any, value: bytes, headers: Any, outcome: str) -> None:
        if outcome == "fraud":
            self._produce(self.settings.fraud_topic, key, value, headers)
            self._pending.fraud += 1
        else:
            self._produce(self.settings.legit_topic, key, value, headers)
            self._pending.legit += 1

    def _dead_letter(self, msg: Any, error_class: str, message: str, stage: str) -> None:
        headers = dlq_headers(msg, error_class, message, stage)
        self._produce(self.settings.dlq_topic, msg.key(), msg.value(), headers)
        self._pending.dead_letter += 1

    def _produce(self, topic: str, key: Any, value: Any, headers: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.05)

    def _produce_to(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None
    ) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

    # --- back-pressure ---------------------------------------------------------------------

    def _backpressure(self) -> None:
        """Keep what waits between the stages under MAX_BUFFERED_RECORDS / _BYTES: the records
        the keyed stages buffer (until the upstream marks let them out) and those not read
        yet from this process's repartition partitions (where a backlog on the input would
        otherwise pile up, far ahead of the decisions). Past either bound, pause every input
        partition of this process but the one holding the stages back (the lowest mark: it
        must go on for anything to be released); resume all below half. Pausing only delays
        reading, so order, marks and exactly-once are untouched."""
        now = self.clock()
        if now < self._next_backpressure:
            return
        self._next_backpressure = now + 0.05
        records = nbytes = 0
        inputs = []
        internal = []
        for (topic, partition), task in self.tasks.items():
            orderer = task.orderer
            if orderer is not None:
                records += len(orderer)
                nbytes += orderer.bytes
                internal.append(TopicPartition(topic, partition))
            elif task.stage.index == 0:
                inputs.append(task)
        if not inputs:
            return
        per_record = self._block_envelopes / self._block_records
        for tp in self.consumer.position(internal) if internal else []:
            try:
                high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
            except KafkaException:
                continue
            if tp.offset >= 0 and high > tp.offset:
                records += round((high - tp.offset) * per_record)  # blocks of records
        s = self.settings
        over = records > s.max_buffered_records or nbytes > s.max_buffered_bytes
        under = records <= s.max_buffered_records // 2 and nbytes <= s.max_buffered_bytes // 2
        if over or (self._paused and not under):
            # the laggard can change while paused (it reached its end and went idle, or
            # passed another): always keep the current one reading, or nothing drains
            laggard = min(inputs, key=_bound_of)
            want = {(t.stage.topic, t.partition) for t in inputs if t is not laggard}
        elif self._paused:
            want = set()
        else:
            return
        if want == self._paused:
            return
        resume, pause = self._paused - want, want - self._paused
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        if pause:
            self.consumer.pause([TopicPartition(t, p) for t, p in pause])
        if not self._paused and want:
            log.info(
                "%d records wait between the stages (%.0f MB buffered): pausing %d input "
                "partitions until they drain (MAX_BUFFERED_RECORDS / MAX_BUFFERED_BYTES)",
                records,
                nbytes / 1e6,
                len(want),
            )
        self._paused = want

    # --- health ----------------------------------------------------------------------------

    def task_status(self) -> list[TaskStatus]:
        """Each task's buffer and marks, as `fraudstream status` shows them."""
        assert self.topology is not None
        out = []
        for (topic, partition), task in sorted(self.tasks.items()):
            marks = task.meta.marks
            lowest, lowest_mark = -1, ""
            if task.orderer is not None and marks and len(marks) >= task.stage.upstream:
                lowest = min(marks, key=lambda u: marks[u])
                lowest_mark = describe_key(marks[lowest])
            out.append(
                TaskStatus(
                    topic,
                    partition,
                    self.topology.stage_name(task.stage),
                    buffered=len(task.orderer) if task.orderer is not None else 0,
                    mark=describe_key(task.meta.sent),
                    upstream=task.stage.upstream if task.orderer is not None else 0,
                    heard=len(marks),
                    lowest=lowest,
                    lowest_mark=lowest_mark,
                )
            )
        return out

    def _unread(self) -> list[str]:
        """Assigned partitions with records not read yet (from the consumer's cached
        watermarks: no request to the broker)."""
        tps = [TopicPartition(t, p) for t, p in self.tasks]
        out = []
        for tp in self.consumer.position(tps) if tps else []:
            try:
                high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
            except KafkaException:
                continue
            if tp.offset >= 0 and high > tp.offset:
                out.append(f"{tp.topic}[{tp.partition}] at {tp.offset} of {high}")
        return out

    def _health(self) -> None:
        """Once a second: warn when stalled; every STATUS_INTERVAL_MS: publish the status."""
        now = self.clock()
        self._next_health = now + 1.0
        if self.topology is None:
            return
        self._stall.progress(self.stats.total, now)
        tasks = self.task_status()
        held = waits(tasks)
        unread = self._unread() if not held else []
        pending = bool(held or unread)
        if self._stall.should_warn(now, pending=pending):
            log.warning(
                "no decision committed for %.0fs while input is pending (STALL_WARNING_MS); %s",
                self.settings.stall_warning_ms / 1000,
                "; ".join(held) if held else "unread: " + ", ".join(unread[:10]),
            )
        if self._skipped_labels != self._skipped_said and now >= self._next_status:
            self._skipped_said = dict(self._skipped_labels)
            log.warning(
                "skipped %d label records (dead-letter topic, error.stage=label): %s",
                sum(self._skipped_labels.values()),
                ", ".join(f"{k} {v}" for k, v in sorted(self._skipped_labels.items())),
            )
        if now >= self._next_status:
            self._next_status = now + self.settings.status_interval_ms / 1000
            self._publish_status(tasks, stalled=self._stall.stalled(now, pending=pending))

    def _publish_status(self, tasks: list[TaskStatus], *, stalled: bool) -> None:
        assert self.topology is not None
        if self._status_producer is None:
            self._status_producer = Producer(base_config(self.settings, f"{self._name}-status"))
        status = Status(
            self._instance,
            self.wall_ms(),
            self._last_commit_ms,
            self.stats.total,
            stalled,
            tasks,
        )
        try:
            self._status_producer.produce(
                self.topology.status_topic,
                msgspec.json.encode(status),
                self._instance.encode(),
                partition=0,
            )
            self._status_producer.poll(0)
        except (BufferError, KafkaException) as exc:  # health reports never stop the work
            log.debug("status not published: %s", exc)

    # --- marks -----------------------------------------------------------------------------

    def _marks_due(self) -> bool:
        """Whether some task has a mark to send (an input gone idle, a bound that moved)."""
        if self.topology is None or not self.topology.staged:
            return False
        now = self.clock()
        due = False
        for task in self.tasks.values():
            at_end = task.at_end
            if task.orderer is None and at_end is not None and now - at_end >= self._idle_s:
                task.idle = True
            if not self.topology.is_output(task.stage):
                bound = task.bound()
                due = due or (bound is not None and bound != task.meta.sent)
        return due

    def _send_marks(self) -> None:
        """Each task's mark to every partition of the next stage, if it moved."""
        assert self.topology is not None
        for task in self.tasks.values():
            if self.topology.is_output(task.stage):
                continue
            bound = task.bound()
            meta = task.meta
            if bound is None or bound == meta.sent:
                continue
            meta.sent = bound
            meta.mark_seq += 1
            to = self.topology.next(task.stage)
            value = encode_block([Envelope(MARK, *bound, task.origin, meta.mark_seq)])
            for p in range(to.partitions):
                self._produce_to(to.topic, p, None, value)
            self._count_blocks(to.partitions, to.partitions)

    # --- transactions ----------------------------------------------------------------------

    def _watchdog(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            deadline = self._commit_deadline
            if deadline is not None and time.monotonic() > deadline:
                log.error(
                    "a Kafka transaction commit has been stuck for %.0fs (librdkafka can block "
                    "past its timeout when the coordinator moves); exiting so that a restart "
                    "resumes from the last commit — nothing uncommitted is visible to readers",
                    self.settings.commit_stuck_timeout_ms / 1000,
                )
                sys.stderr.flush()
                os._exit(3)

    def _commit(self) -> None:
        self._commit_deadline = time.monotonic() + self.settings.commit_stuck_timeout_ms / 1000
        try:
            self._commit_once()
        finally:
            self._commit_deadline = None

    def _commit_once(self) -> None:
        if self._chaos_abort_rate and self._chaos.random() < self._chaos_abort_rate:
            log.warning("chaos: aborting this transaction on purpose")
            self._abort()
            return
        try:
            if self.topology is not None and self.topology.staged:
                self._marks_due()
                self._send_marks()
            offsets = []
            # where each partition's reading stands (past transaction markers, unlike the
            # last record's offset + 1, so a finished group shows no lag)
            positions = {
                (tp.topic, tp.partition): tp.offset
                for tp in self.consumer.position([TopicPartition(t, p) for t, p in self.tasks])
            }
            for (topic, partition), task in self.tasks.items():
                offset = task.commit_offset(positions.get((topic, partition), -1))
                for key, value in task.changes(offset):  # state, in the same transaction
                    self._produce_to(task.stage.changelog, partition, key, value)
                if offset is not None:
                    offsets.append(TopicPartition(topic, partition, offset))
            if offsets:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), 30
                )
            self._commit_with_retry()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if _abortable(err):
                log.warning("transaction aborted, rewinding to committed offsets: %s", err)
                self._abort()
                return
            if err.retriable():  # still failing after the retry budget: see _renew_producer
                self._renew_producer(err)
                return
            raise ProcessingError(_fatal_message(err)) from None
        self._in_txn = False
        for task in self.tasks.values():
            task.commit()
        s, p = self.stats, self._pending
        s.legit, s.fraud, s.dead_letter = (
            s.legit + p.legit,
            s.fraud + p.fraud,
            s.dead_letter + p.dead_letter,
        )
        s.commits += 1
        self._last_commit_ms = self.wall_ms()
        if self._snapshots is not None and self.clock() >= self._next_snapshot:
            self._snapshot()
        self._pending = ProcessorStats()
        self._committed = offsets
        if self.topology is not None and self.topology.staged and self.clock() >= self._next_purge:
            self._purge(offsets)

    def _purge(self, offsets: list[TopicPartition], wait: float = 0) -> None:
        """Delete what the group has committed past on the repartition topics (as Kafka
        Streams does): nobody reads those records again. Waited for only on a clean stop."""
        assert self.topology is not None
        self._next_purge = self.clock() + PURGE_EVERY_S
        internal = {s.topic for s in self.topology.stages[1:]}
        done = [tp for tp in offsets if tp.topic in internal and tp.offset > 0]
        if not done:
            return
        if self._admin is None:
            self._admin = AdminClient(base_config(self.settings, f"{self._name}-purge"))
        futures = self._admin.delete_records(done)
        for tp, future in futures.items():
            future.add_done_callback(_log_purge_failure(tp))
        if wait:
            concurrent.futures.wait(list(futures.values()), timeout=wait)

    def _commit_with_retry(self, attempts: int = 5) -> None:
        # Fault tests only: a commit that keeps timing out, having committed or not.
        chaos = bool(self._chaos_commit_timeout_rate) and (
            self._chaos.random() < self._chaos_commit_timeout_rate
        )
        if chaos and self._chaos.random() < 0.5:
            self.producer.commit_transaction(30)
        for attempt in range(attempts):
            try:
                if chaos:
                    raise KafkaException(
                        KafkaError(KafkaError._TIMED_OUT, "chaos: commit timed out", retriable=True)
                    )
                self.producer.commit_transaction(30)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and attempt + 1 < attempts:
                    log.warning("commit failed (%s), retrying", err)
                    continue
                raise

    def _new_producer(self) -> Producer:
        # What waits to be sent is bounded (64 MB, not the 1 GB of producer_config): past it
        # produce() refuses and _produce waits for deliveries, so a broker slower than our
        # reading slows the reading instead of growing the queue.
        conf = producer_config(self.settings, self._name, transactional_id=self._name)
        return Producer(conf | {"queue.buffering.max.kbytes": PRODUCE_QUEUE_KBYTES})

    def _renew_producer(self, err: KafkaError) -> None:
        """A commit that still times out after its retries is fatal for this producer:
        whether it committed is unknown, and librdkafka lacks the client side of KIP-890 to
        find out. A fresh producer with the same transactional.id fences the old one (the
        coordinator completes or aborts its transaction); then every task reloads its state
        from its changelog and the input rewinds to the committed offsets, which agree
        whatever the old transaction's fate."""
        log.error(
            "a transaction commit failed after its retries (%s); replacing the producer and "
            "redoing the work since the last commit",
            err,
        )
        self.producer.purge()
        self.producer = self._new_producer()
        self.producer.init_transactions(60)
        self._in_txn = False
        self._pending = ProcessorStats()
        self.stats.renewed += 1
        self._restore(list(self.tasks))
        self._rewind()

    def _abort(self) -> None:
        """Abort the open transaction and rewind every assigned partition to its commit."""
        try:
            # Let in-flight requests settle first: librdkafka can fail an abort racing them
            # with a fatal INVALID_TXN_STATE (librdkafka issue 4849).
            self.producer.flush(30)
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            raise ProcessingError(_fatal_message(exc.args[0])) from None
        self._in_txn = False
        for task in self.tasks.values():
            task.rollback()  # the state goes back with the outputs
        self._pending = ProcessorStats()
        self.stats.aborts += 1
        self._rewind()

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""
        self._outbox.clear()  # forwarded in the aborted step: redone from the offsets
        self._outbox_bytes.clear()
        assigned = self.consumer.assignment()
        if assigned:
            for tp in self.consumer.committed(assigned, timeout=30):
                if tp.offset >= 0:
                    self.consumer.seek(tp)
                else:  # nothing committed yet: start over from the beginning
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition, -2))

    # --- assignment ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Restore before any record of the new partitions is processed: commit what is open,
        # then load each new task's latest committed state from its changelog partition.
        if self._in_txn:
            self._commit()
        self._restore([(tp.topic, tp.partition) for tp in partitions])

    def _restore(self, partitions: list[tuple[str, int]]) -> None:
        """(Re)create these partitions' tasks: from a local snapshot and the changelog's tail
        after it where a snapshot matches, else from the whole changelog partition."""
        assert self.topology is not None
        started = time.monotonic()
        by_stage: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_stage.setdefault(topic, []).append(partition)
        n = tail = 0
        from_snapshot = 0
        for topic, parts in by_stage.items():
            stage = self.topology.by_topic[topic]
            stateful = stage.index >= 0 and not self.topology.is_output(stage)
            snaps = self._usable_snapshots(stage.changelog, parts) if stateful else {}
            engines: dict[int, Engine] = {}
            metas: dict[int, Meta] = {}
            for p, snap in list(snaps.items()):
                loaded_engine = self.engine.for_stage(stage.key)
                if loaded_engine.load_snapshot(snap.state):
                    engines[p], metas[p] = loaded_engine, decode_meta(snap.meta)
                else:
                    assert self._snapshots is not None
                    self._snapshots.discard(stage.changelog, p, "was made for other rules")
                    del snaps[p]
            start = {p: snap.offset for p, snap in snaps.items()}
            records = read_changelog(self.settings, stage.changelog, parts, start=start)
            from_snapshot += len(snaps)
            for p in parts:
                engine: Engine | None = engines.get(p)
                if engine is None and stateful:
                    engine = self.engine.for_stage(stage.key)
                meta = metas.get(p, Meta())
                state = []
                for key, value in records[p]:
                    if key == META_KEY:
                        meta = decode_meta(value) if value is not None else Meta()
                    else:
                        state.append((key, value))
                if engine is not None:
                    loaded = engine.restore(state)
                    n += loaded
                    tail += loaded if p in snaps else 0
                origin = p + (self.topology.stages[0].partitions if stage.index < 0 else 0)
                self.tasks[(topic, p)] = Task(
                    stage, p, origin, engine, meta, keep_meta=self.topology.staged
                )
        self.stats.restored_keys += n
        if n or from_snapshot:
            log.info(
                "restored %d tasks from local snapshots (+%d changelog records after them) "
                "and %d changelog records in all, in %.2fs",
                from_snapshot,
                tail,
                n,
                time.monotonic() - started,
            )

    def _usable_snapshots(self, changelog: str, parts: list[int]) -> dict[int, Snapshot]:
        """The local snapshots of these changelog partitions that can be trusted."""
        if self._snapshots is None:
            return {}
        found = {p: s for p in parts if (s := self._snapshots.read(changelog, p)) is not None}
        if not found:
            return {}
        current = topic_id(self.settings, changelog)
        ends = end_offsets(self.settings, changelog, list(found))
        usable = {}
        for p, snap in found.items():
            if snap.topic_id != current:
                self._snapshots.discard(changelog, p, "belongs to another changelog topic")
            elif snap.offset > ends[p]:
                self._snapshots.discard(
                    changelog, p, f"is ahead of the changelog ({snap.offset} > {ends[p]})"
                )
            else:
                usable[p] = snap
        return usable

    def _snapshot(self) -> None:
        """Right after a commit: each stateful task's state, as of the changelog's end."""
        assert self.topology is not None and self._snapshots is not None
        self._next_snapshot = self.clock() + self.settings.snapshot_interval_ms / 1000
        started = time.monotonic()
        by_changelog: dict[str, list[Task]] = {}
        for task in self.tasks.values():
            if task.engine is not None:
                by_changelog.setdefault(task.stage.changelog, []).append(task)
        for changelog, tasks in by_changelog.items():
            ids = self._topic_ids
            if changelog not in ids:
                ids[changelog] = topic_id(self.settings, changelog)
            ends = end_offsets(self.settings, changelog, [t.partition for t in tasks])
            for task in tasks:
                assert task.engine is not None
                self._snapshots.write(
                    Snapshot(
                        changelog,
                        task.partition,
                        ids[changelog],
                        ends[task.partition],
                        task._saved,
                        task.engine.snapshot(),
                    )
                )
        log.info(
            "state snapshot of %d tasks taken in %.2fs (written in the background)",
            sum(len(t) for t in by_changelog.values()),
            time.monotonic() - started,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what we did for these partitions before another instance takes them over.
        if self._in_txn:
            self._commit()
        for tp in partitions:
            self.tasks.pop((tp.topic, tp.partition), None)
            self._paused.discard((tp.topic, tp.partition))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._in_txn:
            self._abort()
        for tp in partitions:
            self.tasks.pop((tp.topic, tp.partition), None)
            self._paused.discard((tp.topic, tp.partition))
