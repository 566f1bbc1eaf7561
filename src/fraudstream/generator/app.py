"""`fraudstream generate`: stream transactions into the input topic (or a file) at a steady rate.

Two profiles: `tutorial` (the tutorials' uniform random payments) and `sim` (a simulated world
with labelled fraud; the ground truth goes to the labels topic keyed by transaction id, never
inside the transaction).
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec
from confluent_kafka import KafkaError, Producer

from fraudstream.config import Settings
from fraudstream.errors import FraudstreamError
from fraudstream.generator.pacing import Pacer
from fraudstream.generator.sim import Simulator
from fraudstream.generator.tutorial import TutorialSource
from fraudstream.progress import Progress, no_progress
from fraudstream.schema import InvalidTransaction, decode_transaction
from fraudstream.stream import ensure_topics, producer_config, read_topic

__all__ = ["GeneratorStats", "generate", "records", "resume_point"]

RESUME_TAIL = 64  # each partition's last records read for where a simulation left off
_SIM_ID = re.compile(r"s(\d+)-(\d+)")

# key, transaction JSON, and for the simulator (label key = transaction id, label JSON)
Record = tuple[bytes, bytes, tuple[bytes, bytes] | None]


@dataclass
class GeneratorStats:
    sent: int = 0
    failed: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


def records(
    profile: str,
    seed: int | None,
    wall_ms: Callable[[], int],
    *,
    fraud_rate: float = 0.01,
    label_delay_ms: int = 2 * 86_400_000,
    resume: tuple[int, int] | None = None,
) -> Iterator[Record]:
    """Endless (key, value, label) records of a profile (`resume`: the simulation's start and
    first id number, from `resume_point`)."""
    encode = msgspec.json.Encoder().encode
    if profile == "tutorial":
        source = TutorialSource(seed)
        while True:
            t = source.next(wall_ms())
            yield t.source.encode(), encode(t), None
    elif profile == "sim":
        start_ms, first = resume if resume is not None else (None, 1)
        for tx, label in Simulator(
            seed=seed or 0,
            fraud_rate=fraud_rate,
            label_delay_ms=label_delay_ms,
            start_ms=start_ms,
            first=first,
        ):
            yield tx["source"].encode(), encode(tx), (tx["id"].encode(), encode(label))
    else:
        raise ValueError(f"unknown profile {profile!r}; use tutorial or sim")


def resume_point(settings: Settings, topic: str, seed: int) -> tuple[int, int] | None:
    """Where a simulation written to `topic` goes on from: the latest event time of the
    simulator's transactions among each partition's last `RESUME_TAIL` records, and the number
    after the highest of `seed`'s ids there (1 if none); None when there are none.

    A detector's input partitions keep their stream time across runs: a simulation starting
    again at its first day would write history older than that, which the stages keyed by
    payee hold back until the new clock passes the old one (docs/delivery.md). Only the
    simulator's own records (ids `s<seed>-<n>`) count: a transaction sent by hand on the wall
    clock is decided at the stream's time and moves no partition's clock."""
    latest, number = None, 0
    for value, partition, offset, ts in read_topic(settings, topic, last=RESUME_TAIL, created=True):
        try:
            tx = decode_transaction(
                value, topic=topic, partition=partition, offset=offset, record_ts_ms=ts
            ).tx
        except InvalidTransaction:
            continue  # the detector dead-letters it
        found = _SIM_ID.fullmatch(tx.id or "")
        if found is None or tx.timestamp is None:
            continue
        latest = max(latest or 0, tx.ts_ms)
        if int(found[1]) == seed:
            number = max(number, int(found[2]))
    return None if latest is None else (latest, number + 1)


def generate(
    settings: Settings,
    *,
    rate: float | None = None,
    count: int | None = None,
    seed: int | None = None,
    profile: str = "tutorial",
    fraud_rate: float = 0.01,
    label_delay_ms: int = 2 * 86_400_000,
    stop: threading.Event | None = None,
    progress: TextIO | None = sys.stderr,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> GeneratorStats:
    """Produce `count` transactions (or until `stop`) at `rate` per second (inf: no pacing).
    The `sim` profile goes on where the simulation on the topic left off (`resume_point`).

    `clock` and `sleep` pace the output (a test passes a simulated clock and a `sleep` that
    advances it); `wall_ms` stamps the tutorial profile's transactions."""
    stop = stop or threading.Event()
    rate = settings.transactions_per_second if rate is None else rate
    topics = [settings.transactions_topic] + ([settings.labels_topic] if profile == "sim" else [])
    ensure_topics(settings, topics)
    producer = Producer(producer_config(settings, "fraudstream-generator"))
    stats = GeneratorStats()
    topic, labels_topic = settings.transactions_topic, settings.labels_topic

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            stats.failed += 1

    def send(topic: str, value: bytes, key: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                return
            except BufferError:
                producer.poll(0.05)

    resume = resume_point(settings, topic, seed or 0) if profile == "sim" else None
    if resume is not None and progress is not None:
        when = datetime.fromtimestamp(resume[0] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        progress.write(
            f"{topic} holds a simulation up to {when}: going on from there, with ids from "
            f"s{seed or 0}-{resume[1]}\n"
        )
    source = records(
        profile,
        seed,
        wall_ms,
        fraud_rate=fraud_rate,
        label_delay_ms=label_delay_ms,
        resume=resume,
    )
    limit = count if count is not None else 2**62
    chunk = 1 if math.isinf(rate) else max(1, min(10_000, int(rate / 200)))
    start = clock()
    pacer = Pacer(rate, start)
    next_report = start + 0.5
    while stats.sent < limit and not stop.is_set():
        now = clock()
        n = min(pacer.due(now), limit) - stats.sent
        if n <= 0:
            sleep(min(pacer.time_of(stats.sent + 1) - now, 0.05))  # > 0: none is due
            continue
        n = min(n, chunk * 20) if math.isinf(rate) else n
        for _ in range(n):
            key, value, label = next(source)
            send(topic, value, key)
            if label is not None:
                send(labels_topic, label[1], label[0])
        stats.sent += n
        producer.poll(0)
        if progress is not None and now >= next_report:
            stats.elapsed = now - start
            _report(progress, stats, rate)
            next_report = now + 0.5
    stats.elapsed = clock() - start
    stats.failed += producer.flush(30)
    if progress is not None:
        _report(progress, stats, rate)
        progress.write("\n")
        progress.flush()
    return stats


def write_files(
    path: Path,
    labels_path: Path | None,
    *,
    count: int,
    seed: int | None,
    profile: str,
    fraud_rate: float = 0.01,
    label_delay_ms: int = 2 * 86_400_000,
    progress: Progress = no_progress,
) -> int:
    """Write `count` transactions as JSON lines (and their labels to `labels_path`)."""
    source = records(
        profile,
        seed,
        lambda: time.time_ns() // 1_000_000,
        fraud_rate=fraud_rate,
        label_delay_ms=label_delay_ms,
    )
    try:
        for target in (path, labels_path):
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            labels = open(labels_path, "wb") if labels_path is not None else None  # noqa: SIM115
            try:
                for i in range(1, count + 1):
                    _, value, label = next(source)
                    out.write(value + b"\n")
                    if labels is not None and label is not None:
                        labels.write(label[1] + b"\n")
                    if not i % 10_000 or i == count:
                        progress("generating", i, count)
            finally:
                if labels is not None:
                    labels.close()
    except OSError as exc:
        where = exc.filename or path
        raise FraudstreamError(
            f"cannot write {where} ({exc.strerror or exc}) — give another --output or "
            "--labels-output path"
        ) from None
    return count


def _report(out: TextIO, stats: GeneratorStats, target: float) -> None:
    goal = "max" if math.isinf(target) else f"{target:,.0f}"
    failed = f" | {stats.failed:,} failed" if stats.failed else ""
    out.write(f"\rgenerated {stats.sent:,} tx | {stats.rate:,.1f} tx/s (target {goal}){failed}   ")
    out.flush()
