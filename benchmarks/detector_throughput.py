"""Detector throughput: preload N transactions, time the detector draining them.

    python benchmarks/detector_throughput.py [--count 200000] [--partitions 6]

Starts its own broker on a free port (or uses BENCH_KAFKA_BROKER_URL), writes N tutorial
transactions to a fresh topic, then runs one detector instance (one process) until every
record is committed. Prints wall-clock tx/s and the process's CPU seconds (all threads,
librdkafka's included). Not a test: the figures go in the README with the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import threading
import time
import uuid
from pathlib import Path

from benchkit import kafka

from fraudstream.config import load_settings
from fraudstream.detection import Engine, load_ruleset, tutorial_rules
from fraudstream.generator import generate
from fraudstream.stream import Processor, ensure_topics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rules", type=Path, help="a rules file (default: the tutorial rule)")
    args = parser.parse_args()

    with kafka() as url:
        tag = uuid.uuid4().hex[:8]
        settings = load_settings(
            _env_file=None,
            kafka_broker_url=url,
            transactions_topic=f"bench-{tag}.transactions",
            legit_topic=f"bench-{tag}.legit",
            fraud_topic=f"bench-{tag}.fraud",
            dlq_topic=f"bench-{tag}.dlq",
            detector_group=f"bench-{tag}",
            topic_partitions=args.partitions,
            # the input is all there: an input partition at its end is done, not late
            partition_idle_ms=0,
        )
        ensure_topics(settings)
        t0 = time.perf_counter()
        gen = generate(settings, rate=math.inf, count=args.count, seed=1, progress=None)
        print(f"preloaded {gen.sent:,} transactions in {time.perf_counter() - t0:.1f}s")

        engine = (
            Engine.from_ruleset(load_ruleset(args.rules))
            if args.rules
            else Engine(tutorial_rules(), version="tutorial-1")
        )
        print(f"rules: {args.rules or 'the tutorial rule'}")
        processor = Processor(settings, engine)
        stop = threading.Event()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stats = processor.run(stop, stop_after=args.count)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        assert stats.total == args.count, stats
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        )
        print(
            f"detector drained {stats.total:,} (legit {stats.legit:,}, fraud {stats.fraud:,}, "
            f"dead-letter {stats.dead_letter:,}) in {stats.commits} transactions"
        )
        print(f"wall {wall:.2f}s  -> {stats.total / wall:,.0f} tx/s")
        print(
            f"CPU  {cpu:.2f}s  -> {cpu / stats.total * 1e6:.1f} µs CPU per transaction "
            "(all threads of the detector process)"
        )


if __name__ == "__main__":
    main()
