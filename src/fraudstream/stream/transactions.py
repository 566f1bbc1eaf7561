"""The transaction coordinator: the detector's transactional producer and its life.

It begins, commits (with retries and the offsets of the input), aborts and, when a commit keeps
timing out, replaces the producer; a watchdog thread ends the process when a commit stays stuck.
What to do with the tasks after an abort or a renewal (roll back, reload, rewind) is the
processor's part: this module knows producers, not tasks.

    txn = TransactionCoordinator(settings, name)
    txn.init()
    txn.begin()
    ... txn.producer.produce(...)
    txn.commit(offsets, consumer.consumer_group_metadata())   # raises KafkaException
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from fraudstream.config import Settings
from fraudstream.errors import ProcessingError
from fraudstream.stream.clients import failed_fatally, producer_config

__all__ = [
    "PRODUCE_QUEUE_KBYTES",
    "TransactionCoordinator",
    "abortable",
    "fatal_message",
    "fenced",
    "renewable",
]

log = logging.getLogger(__name__)

PRODUCE_QUEUE_KBYTES = 65_536  # the most this process's producer holds unsent
COMMIT_ATTEMPTS = 5


def fenced(err: KafkaError) -> bool:
    """Another producer with this transactional.id took over: this one must stop."""
    return err.code() in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
    )


def renewable(err: KafkaError) -> bool:
    """A fatal error of this producer alone (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after a broker
    lost its idempotence state in a restart): a fresh producer with the same transactional.id
    gets past it, as Kafka Streams replaces its producer. Fencing is not: another instance
    holds the id."""
    return failed_fatally(err) and not fenced(err)


def fatal_message(err: KafkaError) -> str:
    """What a user reads when the detector stops on a Kafka error."""
    if fenced(err):
        return (
            f"this detector was fenced ({err}): another instance with the same "
            "transactional.id took over, or the broker aborted a transaction of this one "
            "that stayed open past the transaction timeout (KAFKA_TRANSACTION_TIMEOUT_MS, "
            "20 s by default: a broker outage or a stall); its uncommitted work was aborted. "
            "Do not run two instances with the same --instance; restart this one if no other "
            "runs"
        )
    return (
        f"unrecoverable Kafka error ({err}); the detector stops without committing the open "
        "transaction — restart it to resume from the last commit"
    )


def abortable(err: KafkaError) -> bool:
    """An error that aborting the transaction (and redoing it) gets past."""
    if err.fatal():
        return False
    return bool(err.txn_requires_abort()) or err.code() == KafkaError._STATE


def _exit_stuck() -> None:
    sys.stderr.flush()
    os._exit(3)


class TransactionCoordinator:
    """One transactional producer (`transactional.id` = `name`) and its open transaction.

    Fault injection (tests only) comes from `Settings.fault_*`: abort about
    `fault_abort_rate` of the commits, make `fault_commit_timeout_rate` of them "time out" past
    their retries (having committed or not), drawn from a generator seeded by
    `fault_injection_seed` so that a failing run can be replayed."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_stuck: Callable[[], None] = _exit_stuck,
        watch_every_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.name = name
        self.clock = clock
        self.producer = self._new_producer()
        self.in_txn = False
        self.started = 0.0  # clock() when the open transaction began
        self.records = 0  # records read in the open transaction
        self._deadline: float | None = None  # a commit under way must end before this
        self._on_stuck = on_stuck
        self._watch_every_s = watch_every_s
        self.abort_rate = settings.fault_abort_rate
        self.commit_timeout_rate = settings.fault_commit_timeout_rate
        self.fatal_every = settings.fault_fatal_every
        self._commits = 0  # commit attempts, for fatal_every
        seed = settings.fault_injection_seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        self._chaos = random.Random(seed)
        if self.abort_rate or self.commit_timeout_rate or self.fatal_every:
            log.warning(
                "fault injection: aborting %.0f%% of transactions, timing out %.0f%% of "
                "commits, failing every %sth fatally (FAULT_INJECTION_SEED=%d)",
                100 * self.abort_rate,
                100 * self.commit_timeout_rate,
                self.fatal_every or "no",
                seed,
            )

    def _new_producer(self) -> Producer:
        # What waits to be sent is bounded (64 MB, not the 1 GB of producer_config): past it
        # produce() refuses and the collector waits for deliveries, so a broker slower than
        # our reading slows the reading instead of growing the queue.
        conf = producer_config(self.settings, self.name, transactional_id=self.name)
        return Producer(conf | {"queue.buffering.max.kbytes": PRODUCE_QUEUE_KBYTES})

    def init(self, timeout: float = 30) -> None:
        """Register the transactional.id (fencing an older producer with the same id)."""
        self.producer.init_transactions(timeout)

    def cause(self, err: KafkaError) -> KafkaError:
        """The error behind `err`. Once the producer has failed fatally, `produce` raises only
        `_FATAL`; the reason (fenced by another instance, or a fault of this producer alone)
        is what the transactional API raises from then on. Deciding on `_FATAL` alone let a
        fenced zombie replace its producer, which fenced the instance that had taken over
        (seen in the zombie fault test)."""
        if err.code() != KafkaError._FATAL:
            return err
        try:
            # In the fatal state this answers at once with the fatal error (no flush first:
            # what is queued may never be delivered); otherwise it aborts the open
            # transaction, and the caller, given `_FATAL`, replaces the producer and redoes
            # the work anyway.
            self.producer.abort_transaction(10)
            self.in_txn = False
        except KafkaException as exc:
            reason: KafkaError = exc.args[0]
            if reason.fatal():
                return reason
        return err

    def begin(self) -> None:
        self.producer.begin_transaction()
        self.in_txn = True
        self.started = self.clock()
        self.records = 0

    def due(self, commit_records: int, interval_s: float) -> bool:
        """Whether the open transaction has run long enough to commit."""
        return self.in_txn and (
            self.records >= commit_records or self.clock() - self.started >= interval_s
        )

    def chaos_abort(self) -> bool:
        """Fault tests: whether to abort this transaction on purpose."""
        if self.abort_rate and self._chaos.random() < self.abort_rate:
            log.warning("chaos: aborting this transaction on purpose")
            return True
        return False

    @contextmanager
    def watched(self) -> Iterator[None]:
        """A commit in this block that stays unfinished past COMMIT_STUCK_TIMEOUT_MS ends the
        process (see `watch`)."""
        self._deadline = time.monotonic() + self.settings.commit_stuck_timeout_ms / 1000
        try:
            yield
        finally:
            self._deadline = None

    def watch(self, stop: threading.Event) -> threading.Thread:
        """Start the watchdog thread: librdkafka's `send_offsets_to_transaction` can block
        past its timeout when the coordinator moves; exiting (code 3) lets a restart resume
        from the last commit, and nothing uncommitted is visible to readers."""

        def run() -> None:
            while not stop.wait(self._watch_every_s):
                deadline = self._deadline
                if deadline is not None and time.monotonic() > deadline:
                    log.error(
                        "a Kafka transaction commit has been stuck for %.0fs (librdkafka can "
                        "block past its timeout when the coordinator moves); exiting so that a "
                        "restart resumes from the last commit — nothing uncommitted is visible "
                        "to readers",
                        self.settings.commit_stuck_timeout_ms / 1000,
                    )
                    self._on_stuck()
                    return

        thread = threading.Thread(target=run, name="commit-watchdog", daemon=True)
        thread.start()
        return thread

    def commit(self, offsets: list[TopicPartition], group: Any) -> None:
        """Add the input offsets to the transaction and commit it, retrying a retriable error
        up to 5 times. Raises KafkaException (see `abortable`, `retriable`, `fatal_message`)."""
        if offsets:
            self.producer.send_offsets_to_transaction(offsets, group, 30)
        self._commits += 1
        if self.fatal_every and not self._commits % self.fatal_every:
            # Fault tests only: the producer fails fatally before its commit (as librdkafka's
            # idempotence does when a restarted broker lost its sequence numbers)
            raise KafkaException(
                KafkaError(
                    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                    "chaos: a fatal producer error before the commit",
                    fatal=True,
                )
            )
        # Fault tests only: a commit that keeps timing out, having committed or not.
        chaos = bool(self.commit_timeout_rate) and (self._chaos.random() < self.commit_timeout_rate)
        if chaos and self._chaos.random() < 0.5:
            self.producer.commit_transaction(30)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                if chaos:
                    raise KafkaException(
                        KafkaError(KafkaError._TIMED_OUT, "chaos: commit timed out", retriable=True)
                    )
                self.producer.commit_transaction(30)
                break
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.retriable() and attempt + 1 < COMMIT_ATTEMPTS:
                    log.warning("commit failed (%s), retrying", err)
                    continue
                raise
        self.in_txn = False

    def abort(self) -> None:
        """Abort the open transaction. A producer that cannot because it failed fatally is
        replaced (`renew`: the new one's registration aborts the open transaction); a fenced
        one is fatal (ProcessingError)."""
        try:
            # Let in-flight requests settle first: librdkafka can fail an abort racing them
            # with a fatal INVALID_TXN_STATE (librdkafka issue 4849).
            self.producer.flush(30)
            self.producer.abort_transaction(30)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not renewable(err):
                raise ProcessingError(fatal_message(err)) from None
            self.renew(err)
        self.in_txn = False

    def renew(self, err: KafkaError) -> None:
        """Replace the producer. A commit that still times out after its retries is fatal
        for this producer: whether it committed is unknown, and librdkafka lacks the client
        side of KIP-890 to find out; so is a fatal error of the producer itself (`renewable`).
        A fresh producer with the same transactional.id fences the old one (the coordinator
        completes or aborts its transaction). The caller then reloads the state and rewinds
        the input to the committed offsets, which agree whatever the old transaction's
        fate."""
        log.error(
            "%s (%s); replacing the producer and redoing the work since the last commit",
            "the producer failed fatally"
            if failed_fatally(err)
            else "a transaction commit failed after its retries",
            err,
        )
        self.producer.purge()
        self.producer = self._new_producer()
        self.init(60)
        self.in_txn = False

    def close(self) -> None:
        """Abort what is uncommitted (a fenced producer cannot: the broker aborts it)."""
        if self.in_txn:
            try:
                self.producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("could not abort the open transaction: %s", exc.args[0])
            self.in_txn = False
