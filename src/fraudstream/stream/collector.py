"""The record collector: everything the detector writes goes through here.

Decisions to legit / fraud, dead letters, envelopes to the repartition topics (gathered into
one block per destination partition and step), marks and changelog records: all into the open
transaction of the coordinator's producer, through one loop that waits for deliveries when the
producer's queue is full (so a slow broker slows the reading, not the memory).

    collector = RecordCollector(settings, txn)
    collector.output(key, value, headers, "fraud")
    collector.forward(("g.by-target", 3), [envelope, ...])
    collector.flush()        # the step's blocks, before anything else goes to those partitions
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fraudstream.config import Settings
from fraudstream.schema import MAX_INPUT_BYTES
from fraudstream.stream.dlq import dlq_headers
from fraudstream.stream.ordering import (
    BLOCK_BYTES,
    Envelope,
    encode_block,
    extra_bytes,
    payments,
)
from fraudstream.stream.transactions import TransactionCoordinator

__all__ = ["ProcessorStats", "RecordCollector"]

_value = operator.attrgetter("value")
_key = operator.attrgetter("key")
_headers = operator.attrgetter("headers")


@dataclass
class ProcessorStats:
    legit: int = 0
    fraud: int = 0
    dead_letter: int = 0
    commits: int = 0
    aborts: int = 0
    renewed: int = 0  # producers replaced after a commit that kept timing out
    restored_keys: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)  # by error class
    rule_hits: Counter[str] = field(default_factory=Counter)  # decided records a rule fired on
    # numbers (a record on `ordered`: a payment, or a bundle of them) an output task wrote on
    # without after OUTPUT_GAP_TIMEOUT_MS, and those of them written when they came after all
    gap_numbers: int = 0
    late_numbers: int = 0

    @property
    def total(self) -> int:
        return self.legit + self.fraud + self.dead_letter


class RecordCollector:
    def __init__(self, settings: Settings, txn: TransactionCoordinator) -> None:
        self.txn = txn  # its producer can be replaced (renew): always read it from there
        self.legit_topic = settings.legit_topic
        self.fraud_topic = settings.fraud_topic
        self.dlq_topic = settings.dlq_topic
        self.pending = ProcessorStats()  # written in the open transaction
        # envelopes forwarded in this step, per (repartition topic, partition), and their
        # approximate size: sent as one block per destination at the end of the step
        self._outbox: dict[tuple[str, int], list[Envelope]] = {}
        self._outbox_bytes: dict[tuple[str, int], int] = {}
        # envelopes per repartition record, over those recently sent and read, weighted by
        # records (marks are records of one envelope, many and small; a mean of per-batch
        # ratios would let them hide the blocks of hundreds): how back-pressure counts what
        # is not read yet. Sent ones count from the start, before anything is read back.
        self._block_envelopes = self._block_records = 1.0
        # payments forwarded to the stages in the open transaction, per (repartition topic,
        # partition): they reach a stage's buffer only once it commits, and back-pressure
        # counts those bound for this process's tasks meanwhile
        self.in_flight: Counter[tuple[str, int]] = Counter()

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: Any = None,
        headers: Any = None,
        partition: int = -1,  # -1: the producer's partitioner (by key)
    ) -> None:
        """Produce one record, waiting for deliveries while the producer's queue is full."""
        while True:
            producer = self.txn.producer
            try:
                if headers is None:  # (`headers=None` costs confluent-kafka a third more)
                    producer.produce(topic, value, key, partition=partition)
                else:
                    producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                producer.poll(0.05)

    def send_keyed(
        self, topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None]]
    ) -> None:
        """`send` of each (key, value) to one partition, in order (a task's changelog
        records): one produce call each, the waiting loop only when the queue is full."""
        produce = self.txn.producer.produce
        for key, value in records:
            try:
                produce(topic, value, key, partition=partition)
            except BufferError:
                self.send(topic, value, key, partition=partition)
                produce = self.txn.producer.produce

    def count_reasons(self, reasons: Sequence[Any]) -> None:
        """The rules that fired on one decided record (call only when there are some)."""
        hits = self.pending.rule_hits
        for reason in reasons:
            hits[reason.rule] += 1

    def output(self, key: Any, value: bytes, headers: Any, outcome: str) -> None:
        """A decided record, to the fraud or the legit topic."""
        if outcome == "fraud":
            self.send(self.fraud_topic, value, key, headers)
            self.pending.fraud += 1
        else:
            self.send(self.legit_topic, value, key, headers)
            self.pending.legit += 1

    def outputs(self, records: Sequence[tuple[Any, bytes, Any, str]]) -> None:
        """`output` of each (key, value, headers, outcome), in order."""
        produce = self.txn.producer.produce
        topics = {"fraud": self.fraud_topic, "legit": self.legit_topic}
        fraud = 0
        for key, value, headers, outcome in records:
            topic = topics[outcome]
            try:
                if headers is None:  # nearly always; `headers=None` costs a third more
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, headers=headers)
            except BufferError:  # queue full: the waiting loop, then on
                self.send(topic, value, key, headers)
                produce = self.txn.producer.produce
            fraud += outcome == "fraud"
        self.pending.fraud += fraud
        self.pending.legit += len(records) - fraud

    def dead_letter(self, msg: Any, error_class: str, message: str, stage: str) -> None:
        """The record `msg` unchanged, with headers saying why and where it came from; one too
        large to be written with them goes without its value and its own headers (it stays
        in its topic, where `source.*` point), saying how large it was."""
        headers = dlq_headers(msg, error_class, message, stage)
        value, key = msg.value(), msg.key()
        size = len(value or b"") + len(key or b"") + extra_bytes(None, headers)
        if size > MAX_INPUT_BYTES:
            headers = dlq_headers(msg, error_class, message, stage, original=False)
            headers.append(("source.bytes", str(size).encode()))
            value, key = None, key if key is None or len(key) <= 65_536 else None
        self.send(self.dlq_topic, value, key, headers)
        self.pending.dead_letter += 1
        self.pending.dead_letters[error_class] += 1

    def forward(self, dest: tuple[str, int], envs: list[Envelope]) -> None:
        """Envelopes for a repartition partition, in order: into that destination's block
        (sent as soon as it is full)."""
        outbox = self._outbox
        out = outbox.get(dest)
        size = self._outbox_bytes.get(dest, 0)
        for env in envs:
            if out and len(env.value) > BLOCK_BYTES:  # a large one goes in a block alone:
                self._outbox_bytes[dest] = size  # (with others it could pass the record limit)
                self._send_block(dest)
                out, size = None, 0
            if out is None:
                out = outbox[dest] = []
            out.append(env)
            # its encoded size, estimated: the value twice (the transaction decoded from it
            # is shorter), the key and headers, a margin for the rest
            size += 2 * len(env.value) + 128
            if env.key or env.headers:
                size += extra_bytes(env.key, env.headers)
            if env.more:  # a bundle: the same for each of its payments, in C-level passes
                more = env.more
                size += 2 * sum(map(len, map(_value, more))) + 64 * len(more)
                size += sum(map(len, filter(None, map(_key, more))))
                if any(map(_headers, more)):
                    size += sum(map(extra_bytes, itertools.repeat(None), map(_headers, more)))
            if size >= BLOCK_BYTES:
                self._outbox_bytes[dest] = size
                self._send_block(dest)
                out, size = None, 0
        if out is not None:
            self._outbox_bytes[dest] = size

    def flush(self) -> None:
        """Every envelope forwarded in this step, a block per destination partition, before
        anything else goes to those partitions (marks must follow the data they cover)."""
        for dest in list(self._outbox):
            self._send_block(dest)

    def _send_block(self, dest: tuple[str, int]) -> None:
        block = self._outbox.pop(dest)
        del self._outbox_bytes[dest]
        self.send(dest[0], encode_block(block), partition=dest[1])
        sent = payments(block)
        self.in_flight[dest] += sent
        self.count_blocks(sent, 1)

    def broadcast(self, topic: str, partitions: int, value: bytes) -> None:
        """One record (a mark) to every partition of `topic`."""
        for p in range(partitions):
            self.send(topic, value, partition=p)
        self.count_blocks(partitions, partitions)

    def count_blocks(self, envelopes: int, records: int) -> None:
        """Envelopes (payments: a bundle's all) seen in `records` repartition records (sent
        or read)."""
        self._block_envelopes = 0.99 * self._block_envelopes + envelopes
        self._block_records = 0.99 * self._block_records + records

    @property
    def envelopes_per_record(self) -> float:
        return self._block_envelopes / self._block_records

    def settle(self) -> ProcessorStats:
        """The open transaction committed: what it wrote, counted from now on as done."""
        done, self.pending = self.pending, ProcessorStats()
        self.in_flight.clear()
        return done

    def discard(self) -> None:
        """The open transaction aborted: nothing it wrote or gathered counts."""
        self._outbox.clear()
        self._outbox_bytes.clear()
        self.pending = ProcessorStats()
        self.in_flight.clear()
