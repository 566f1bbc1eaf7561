"""The tutorials' detector loop, as they wrote it, for `benchmarks/bench.py` (runs in
.venv-bench: kafka-python).

One message at a time: kafka-python's consumer decodes each value with `json.loads`, the
tutorials' rule (`amount >= 900`) picks the topic, and kafka-python's producer sends the
transaction re-encoded with `json.dumps`, with the client's default settings throughout
(offsets auto-committed every 5 s, sends neither awaited nor flushed). Two changes, both
needed to benchmark it: a consumer group (BENCH_GROUP) reading from the earliest offset (the
tutorials' consumer had no group and started at the end), and no `print` of each transaction
(that would measure the terminal). Configured by the tutorials' environment variables.
"""

import json
import os

from kafka import KafkaConsumer, KafkaProducer

KAFKA_BROKER_URL = os.environ["KAFKA_BROKER_URL"]
TRANSACTIONS_TOPIC = os.environ["TRANSACTIONS_TOPIC"]
LEGIT_TOPIC = os.environ["LEGIT_TOPIC"]
FRAUD_TOPIC = os.environ["FRAUD_TOPIC"]


def is_suspicious(transaction: dict) -> bool:
    return transaction["amount"] >= 900


def main() -> None:
    consumer = KafkaConsumer(
        TRANSACTIONS_TOPIC,
        bootstrap_servers=KAFKA_BROKER_URL,
        group_id=os.environ["BENCH_GROUP"],
        auto_offset_reset="earliest",
        value_deserializer=json.loads,
    )
    producer = KafkaProducer(
        bootstrap_servers=KAFKA_BROKER_URL,
        value_serializer=lambda value: json.dumps(value).encode(),
    )
    for message in consumer:
        transaction: dict = message.value
        topic = FRAUD_TOPIC if is_suspicious(transaction) else LEGIT_TOPIC
        producer.send(topic, value=transaction)


if __name__ == "__main__":
    main()
