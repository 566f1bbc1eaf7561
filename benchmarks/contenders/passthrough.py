"""The floor under any detector, for `benchmarks/bench.py`: confluent-kafka reading batches
(`consume(num_messages=1000)`) and producing each record's key and value unchanged to one
output topic, no decoding. At-least-once: every 100 ms or 20,000 records (fraudstream's commit
cadence) the producer is flushed, then the input offsets are committed.

Environment: KAFKA_BROKER_URL, TRANSACTIONS_TOPIC, OUTPUT_TOPIC, BENCH_GROUP. SIGTERM: flush,
commit, leave the group.
"""

import os
import signal
import time

from confluent_kafka import Consumer, Producer

COMMIT_S, COMMIT_RECORDS = 0.1, 20_000


def main() -> None:
    url, output = os.environ["KAFKA_BROKER_URL"], os.environ["OUTPUT_TOPIC"]
    consumer = Consumer(
        {
            "bootstrap.servers": url,
            "group.id": os.environ["BENCH_GROUP"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": url, "linger.ms": 5})
    consumer.subscribe([os.environ["TRANSACTIONS_TOPIC"]])
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    pending, last_commit = 0, time.monotonic()
    while not stopping:
        for msg in consumer.consume(num_messages=1000, timeout=0.1):
            if msg.error() is not None:
                continue
            while True:
                try:
                    producer.produce(output, msg.value(), msg.key())
                    break
                except BufferError:
                    producer.poll(0.05)
            pending += 1
        producer.poll(0)
        if pending and (pending >= COMMIT_RECORDS or time.monotonic() - last_commit >= COMMIT_S):
            producer.flush()
            consumer.commit(asynchronous=False)
            pending, last_commit = 0, time.monotonic()
    producer.flush()
    if pending:
        consumer.commit(asynchronous=False)
    consumer.close()


if __name__ == "__main__":
    main()
