"""Generator rate: the achieved rate of `generate` at a few targets, on the wall clock.

    python benchmarks/generator_rate.py [--seconds 5] [--rates 10,1000,10000,50000]

Starts its own broker on a free port (or uses BENCH_KAFKA_BROKER_URL), then for each target
runs the tutorial generator for about `--seconds` seconds (`count = rate * seconds`) into a
fresh topic and prints the achieved rate (records / time until the last one was handed to the
producer), its deviation from the target, and the process's CPU seconds. Not a test: whether
a machine keeps up with a target depends on the machine (the pacing logic itself is tested on
simulated time in tests/integration/test_generator.py); the figures go in the README with the
machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid

from benchkit import kafka

from fraudstream.config import load_settings
from fraudstream.generator import generate
from fraudstream.stream import ensure_topics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="run time per target")
    parser.add_argument("--rates", default="10,1000,10000,50000", help="targets in tx/s")
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    with kafka() as url:
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; {args.seconds:g} s per target"
        )
        print(f"{'target':>10} {'sent':>9} {'achieved':>12} {'deviation':>10} {'CPU':>7}")
        for rate in rates:
            tag = uuid.uuid4().hex[:8]
            settings = load_settings(
                _env_file=None,
                kafka_broker_url=url,
                transactions_topic=f"bench-{tag}.transactions",
                topic_partitions=args.partitions,
            )
            ensure_topics(settings, [settings.transactions_topic])
            count = max(2, round(rate * args.seconds))
            cpu0 = time.process_time()
            stats = generate(settings, rate=rate, count=count, seed=1, progress=None)
            cpu = time.process_time() - cpu0
            assert (stats.sent, stats.failed) == (count, 0), stats
            deviation = (stats.rate - rate) / rate
            print(
                f"{rate:>10,.0f} {stats.sent:>9,} {stats.rate:>10,.1f}/s "
                f"{deviation:>+9.2%} {cpu:>6.2f}s"
            )


if __name__ == "__main__":
    main()
