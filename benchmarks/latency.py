"""Latency of a running detector: from the produce call to the decision being visible to a
read_committed consumer, at steady input rates (a part of `benchmarks/bench.py`).

One `fraudstream detect` process (rules/default.yaml, default settings) on fresh topics; a
paced producer in this process sends simulated transactions (and their labels), each
stamped with its wall-clock produce time in a `bench-sent-ns` header, which the detector
copies to its output; a read_committed consumer thread on the outputs takes
receive time - produce time for every decision. The rates run one after the other, lowest
first, each starting once the previous one's records are all decided. Each rate's p99 is also
given for the records sent in its first `STEP_S` seconds (right after the rate rose) and for
the rest.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchkit import REPO, ProcessTree, drop_topics, env_for
from confluent_kafka import Consumer, Producer

from fraudstream.config import Settings
from fraudstream.generator import Pacer
from fraudstream.generator.app import records
from fraudstream.stream import consumer_config, ensure_topics, producer_config

__all__ = ["measure"]

HEADER = "bench-sent-ns"
WARMUP_RATE = 100.0
DRAIN_S = 60.0  # after a rate's last record was sent, how long its records may take
# The p99 of a rate is also given apart for the records sent in its first seconds and for the
# rest: a round's tail came from one or two seconds right after the rate rose, when the
# broker was slow to complete transactions (docs/performance.md, "The tail at 10,000 tx/s")
STEP_S = 5.0


class Collector:
    """Reads the outputs (read_committed) in a thread: (sent_ns, latency_ns) per decision."""

    def __init__(self, settings: Settings) -> None:
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._consumer = Consumer(
            consumer_config(settings, "bench-latency-reader", group_id=f"lat-{uuid.uuid4().hex}")
        )
        self._consumer.subscribe(list(settings.output_topics))
        self._thread = threading.Thread(target=self._run, name="latency-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            first = consumer.poll(0.1)  # returns as soon as a record is there
            if first is None:
                continue
            now = time.time_ns()
            for msg in [first, *consumer.consume(num_messages=10_000, timeout=0)]:
                if msg.error() is None:
                    sent = next((int(v) for k, v in msg.headers() or () if k == HEADER), None)
                    if sent is not None:
                        self.samples.append((sent, now - sent))
        consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _split(row: dict[str, Any]) -> str:
    """`(p99 first 5 s …, after …)` when both parts hold records."""
    first, after = row.get("first_p99_ms"), row.get("after_p99_ms")
    if first is None or after is None:
        return ""
    return f"  (p99 first {row['step_s']:g} s {first:.1f} ms, after {after:.1f} ms)"


def percentile(ordered: list[int], q: float) -> int:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class PacedSender:
    """Sends simulated transactions (and their labels) at a rate, stamped with the wall time of
    each produce call."""

    def __init__(self, settings: Settings, seed: int) -> None:
        self.settings = settings
        self.producer = Producer(producer_config(settings, "bench-latency-producer"))
        self.source: Iterator[Any] = records("sim", seed, lambda: time.time_ns() // 1_000_000)
        self.sent = 0

    def _produce(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def run(
        self, rate: float, seconds: float, until: Callable[[], bool] = lambda: False
    ) -> tuple[int, float]:
        """Send at `rate` for `seconds` or until `until()`; return how many were sent and the
        rate achieved (up to the last one handed to the producer)."""
        total = max(1, round(rate * seconds))
        # made before the clock starts: the simulator's own work (about 9 µs a record, a
        # tenth of a core at 10,000 tx/s) would otherwise compete with what is measured for
        # cores the broker and the detector already fill at that rate
        ready = list(itertools.islice(self.source, total))
        start = time.monotonic()
        pacer, done = Pacer(rate, start), 0
        while done < total and not until():
            now = time.monotonic()
            due = min(pacer.due(now), total) - done
            if due <= 0:
                time.sleep(min(pacer.time_of(done + 1) - now, 0.05))
                continue
            for key, value, (label_key, label) in ready[done : done + due]:
                headers = [(HEADER, str(time.time_ns()).encode())]
                self._produce(self.settings.transactions_topic, value, key, headers)
                self._produce(self.settings.labels_topic, label, label_key)
            done += due
            self.producer.poll(0)
        elapsed = time.monotonic() - start
        self.producer.flush(30)
        self.sent += done
        return done, done / elapsed if elapsed > 0 else math.inf


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def fresh_settings(base: Settings, tag: str, state_dir: Path, **more: Any) -> Settings:
    """`base` with topics and a group of its own, named after `tag`, and the default rules."""
    return base.model_copy(
        update={
            "transactions_topic": f"{tag}.transactions",
            "labels_topic": f"{tag}.labels",
            "legit_topic": f"{tag}.legit",
            "fraud_topic": f"{tag}.fraud",
            "dlq_topic": f"{tag}.dlq",
            "detector_group": tag,
            "rules_file": str(REPO / "rules" / "default.yaml"),
            "state_dir": str(state_dir),
            **more,
        }
    )


def measure(
    base: Settings,
    rates: list[float],
    seconds: float,
    workdir: Path,
    seed: int,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per rate: records sent and decided, the achieved rate, p50/p99/p99.9/max in ms and the
    detector's CPU µs per record sent.
    `env`: extra environment of the detector (a setting such as COMMIT_INTERVAL_MS)."""
    tag = f"bench-lat-{uuid.uuid4().hex[:6]}"
    settings = fresh_settings(base, tag, workdir / "latency-state")
    ensure_topics(settings)
    collector = Collector(settings)
    sender = PacedSender(settings, seed)
    log = workdir / "latency-detect.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "detect"],
            env=env_for(settings, **(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    tree = ProcessTree(proc.pid)
    results = []
    try:
        # a trickle until the detector decides (it starts, joins its group, restores)
        sender.run(WARMUP_RATE, 180, until=lambda: bool(collector.samples))
        if not collector.samples:
            raise RuntimeError(f"the detector decided nothing in 180 s; see {log}")
        _wait(lambda: len(collector.samples) >= sender.sent, DRAIN_S)
        for rate in sorted(rates):
            tree.sample()
            cpu_before = tree.cpu_s
            begin = time.time_ns()
            sent, achieved = sender.run(rate, seconds)
            end = time.time_ns()
            _wait(lambda: len(collector.samples) >= sender.sent, DRAIN_S)
            tree.sample()
            window = [(at, lat) for at, lat in collector.samples if begin <= at < end]
            lat = sorted(lat for _, lat in window)
            # from the first send: the rate's records are made after `begin`, before sending
            cut = min((at for at, _ in window), default=begin) + int(STEP_S * 1e9)
            first = sorted(lat for at, lat in window if at < cut)
            after = sorted(lat for at, lat in window if at >= cut)
            row: dict[str, Any] = {
                "rate": rate,
                "achieved_rate": achieved,
                "sent": sent,
                "decided": len(lat),
                "seconds": seconds,
                # the detector's CPU while this rate was sent and drained, per record sent:
                # a step's and a commit's fixed costs show at low rates
                "detector_cpu_us_per_tx": (tree.cpu_s - cpu_before) / sent * 1e6 if sent else None,
            }
            if lat:
                for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
                    row[name] = percentile(lat, q) / 1e6
                row["max_ms"] = lat[-1] / 1e6
            # the same p99, of the records sent in the first STEP_S seconds and of the rest
            row["step_s"] = STEP_S
            row["first_p99_ms"] = percentile(first, 0.99) / 1e6 if first else None
            row["after_p99_ms"] = percentile(after, 0.99) / 1e6 if after else None
            results.append(row)
            print(
                f"  {rate:>9,.0f} tx/s (sent at {achieved:,.0f}): "
                + (
                    f"p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms  "
                    f"p99.9 {row['p999_ms']:.1f} ms  max {row['max_ms']:.1f} ms  "
                    f"detector CPU {row['detector_cpu_us_per_tx']:.1f} µs/tx" + _split(row)
                    if lat
                    else "nothing decided"
                )
                + (
                    f"  ({sent - len(lat):,} of {sent:,} not decided in time)"
                    if len(lat) < sent
                    else ""
                ),
                flush=True,
            )
        if proc.poll() is not None:
            raise RuntimeError(f"the detector exited ({proc.returncode}); see {log}")
    finally:
        tree.stop(proc)
        collector.close()
        # its topics go, as each throughput contender's do: a later measurement on this
        # broker (another variant's) is not slowed by their logs
        try:
            drop_topics(settings.kafka_broker_url, tag)
        except Exception as exc:  # (never hide why the round itself failed)
            print(f"  (its topics were not deleted: {exc})")
    return results
