"""The cost of one `Producer.produce` call by the form of the call (no broker: the records
only enter librdkafka's queue, which is what the detector's loop pays for each record).

    python benchmarks/produce_call.py [--records 1000] [--runs 7]

Writes the same simulated-size records (300 bytes, a key each) with the call forms the
record collector can use: `headers=None` passed, or left out (what `RecordCollector.outputs`
and `send` do since 2026-12-04 when a record has no headers), and with an explicit
partition. The forms interleaved, best of `--runs`; prints ns per record and the ratio to the
first. Not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from confluent_kafka import Producer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    # nothing listens there: produce() only queues (purged after each run)
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:9",
            "linger.ms": 60_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_000_000,
            "log_level": 0,
        }
    )
    values = [b"x" * 300 + str(i).encode() for i in range(args.records)]
    keys = [b"ACC%d" % i for i in range(args.records)]
    produce = producer.produce

    def headers_none() -> None:
        for key, value in zip(keys, values, strict=True):
            produce("t", value, key, headers=None)

    def no_headers() -> None:
        for key, value in zip(keys, values, strict=True):
            produce("t", value, key)

    def partition_given() -> None:
        for key, value in zip(keys, values, strict=True):
            produce("t", value, key, partition=0)

    forms: dict[str, Callable[[], None]] = {
        "produce(topic, value, key, headers=None)": headers_none,
        "produce(topic, value, key)": no_headers,
        "produce(topic, value, key, partition=0)": partition_given,
    }
    best = dict.fromkeys(forms, float("inf"))
    for _ in range(args.runs):
        for name, form in forms.items():
            started = time.perf_counter()
            for _ in range(20):
                form()
            best[name] = min(best[name], (time.perf_counter() - started) / (20 * args.records))
            producer.purge()
    first = next(iter(best.values()))
    for name, seconds in best.items():
        print(f"{name:45s} {seconds * 1e9:7.0f} ns per record  {seconds / first:.2f}x")


if __name__ == "__main__":
    main()
