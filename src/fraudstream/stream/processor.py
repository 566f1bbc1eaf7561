"""The detector's consume-decide-produce loop, with Kafka transactions.

Outputs (legit, fraud, dead-letter) and the input offsets are committed in one transaction
every `commit_records` records or `commit_interval_ms`, whichever comes first: a crash before the
commit replays the batch, and `read_committed` readers never see its half-written outputs.

    processor = Processor(settings, engine)
    processor.run(stop_event)
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from fraudstream.config import Settings
from fraudstream.detection import Engine
from fraudstream.errors import ProcessingError
from fraudstream.schema import (
    Decoded,
    InvalidTransaction,
    decode_label,
    decode_transaction,
    encode_decided,
)
from fraudstream.stream.admin import ensure_topics
from fraudstream.stream.changelog import changelog_topic, read_changelog
from fraudstream.stream.clients import consumer_config, producer_config
from fraudstream.stream.dlq import dlq_headers

__all__ = ["Processor", "ProcessorStats"]


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


log = logging.getLogger(__name__)


@dataclass
class ProcessorStats:
    legit: int = 0
    fraud: int = 0
    dead_letter: int = 0
    commits: int = 0
    aborts: int = 0
    restored_keys: int = 0

    @property
    def total(self) -> int:
        return self.legit + self.fraud + self.dead_letter


class Processor:
    """One detector instance: a consumer in the group and a transactional producer."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.stats = ProcessorStats()
        instance = instance or settings.detector_instance
        name = f"{settings.detector_group}-{instance}"
        self.consumer = Consumer(consumer_config(settings, name, group_id=settings.detector_group))
        self.producer = Producer(producer_config(settings, name, transactional_id=name))
        self._in_txn = False
        self._offsets: dict[tuple[str, int], int] = {}
        self._txn_started = 0.0
        self._txn_records = 0
        self._pending = ProcessorStats()
        self._changelog = changelog_topic(settings)
        self._commit_deadline: float | None = None
        # Fault tests only: abort about this share of transactions (FRAUDSTREAM_CHAOS_ABORT_RATE).
        self._chaos_abort_rate = float(os.environ.get("FRAUDSTREAM_CHAOS_ABORT_RATE") or 0)
        self._chaos = random.Random()

    # --- lifecycle -------------------------------------------------------------------------

    def run(
        self, stop: threading.Event | None = None, *, stop_after: int | None = None
    ) -> ProcessorStats:
        """Process until `stop` is set (or `stop_after` records are committed), then commit."""
        stop = stop or threading.Event()
        threading.Thread(
            target=self._watchdog, args=(stop,), name="commit-watchdog", daemon=True
        ).start()
        ensure_topics(self.settings, [self._changelog], compacted=[self._changelog])
        self.producer.init_transactions(30)
        topics = [self.settings.transactions_topic]
        if self.engine.features is not None:  # confirmed verdicts feed the features
            topics.append(self.settings.labels_topic)
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
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
                self._process(msgs)
            if self._in_txn and (
                self._txn_records >= self.settings.commit_records
                or self.clock() - self._txn_started >= interval
            ):
                self._commit()
            if stop_after is not None and self.stats.total >= stop_after:
                break
        if self._in_txn:
            self._commit()

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

    # --- processing ------------------------------------------------------------------------

    def _process(self, msgs: list[Any]) -> None:  # Any: no Optional checks on the hot path
        if not self._in_txn:
            self.producer.begin_transaction()
            self.engine.begin()
            self._in_txn = True
            self._txn_started = self.clock()
            self._txn_records = 0
        valid: list[tuple[Any, Decoded]] = []
        offsets = self._offsets
        labels_topic = self.settings.labels_topic
        labels = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise ProcessingError(f"consumer failed: {err}")
                log.warning("consumer error: %s", err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            offsets[(topic, partition)] = offset + 1
            if topic == labels_topic:
                try:
                    labels.append(decode_label(msg.value()))
                except InvalidTransaction as exc:
                    self._dead_letter(msg, exc.kind, str(exc), "label")
                continue
            try:
                decoded = decode_transaction(
                    msg.value(),
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    record_ts_ms=msg.timestamp()[1],
                )
            except InvalidTransaction as exc:
                self._dead_letter(msg, exc.kind, str(exc), "decode")
                continue
            valid.append((msg, decoded))
        self._txn_records += len(msgs)
        if labels:
            self.engine.observe_labels(labels)
        if not valid:
            return
        decisions = self.engine.decide([d.tx for _, d in valid])
        legit, fraud = self.settings.legit_topic, self.settings.fraud_topic
        for (msg, decoded), decision in zip(valid, decisions, strict=True):
            value = encode_decided(msg.value(), decoded, decision)
            if decision.outcome == "fraud":
                self._produce(fraud, msg.key(), value, msg.headers())
                self._pending.fraud += 1
            else:
                self._produce(legit, msg.key(), value, msg.headers())
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
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
        try:
            for key, value in self.engine.changes():  # state, in the same transaction
                self._produce_to(self._changelog, 0, key, value)
            if offsets:
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), 30
                )
            self._commit_with_retry()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.txn_requires_abort():
                log.warning("transaction aborted, rewinding to committed offsets: %s", err)
                self._abort()
                return
            raise ProcessingError(_fatal_message(err)) from None
        self._in_txn = False
        self.engine.commit()
        self._offsets.clear()
        s, p = self.stats, self._pending
        s.legit, s.fraud, s.dead_letter = (
            s.legit + p.legit,
            s.fraud + p.fraud,
            s.dead_letter + p.dead_letter,
        )
        s.commits += 1
        self._pending = ProcessorStats()

    def _commit_with_retry(self, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                self.producer.commit_transaction(30)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and attempt + 1 < attempts:
                    log.warning("commit failed (%s), retrying", err)
                    continue
                raise

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
        self.engine.rollback()  # the state goes back with the outputs
        self._offsets.clear()
        self._pending = ProcessorStats()
        self.stats.aborts += 1
        assigned = self.consumer.assignment()
        if assigned:
            for tp in self.consumer.committed(assigned, timeout=30):
                if tp.offset >= 0:
                    self.consumer.seek(tp)
                else:  # nothing committed yet: start over from the beginning
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition, -2))

    def _produce_to(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Restore before any record of the new partitions is processed: commit what is open,
        # then load every key's latest committed state.
        if self._in_txn:
            self._commit()
        started = time.monotonic()
        n = self.engine.restore(read_changelog(self.settings))
        self.stats.restored_keys = n
        if n:
            log.info("restored %d state records in %.2fs", n, time.monotonic() - started)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what we did for these partitions before another instance takes them over.
        if self._in_txn:
            self._commit()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._in_txn:
            self._abort()
