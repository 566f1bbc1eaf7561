"""A local Apache Kafka (KRaft) for the embedded default and for tests."""

from fraudstream.broker.artifacts import KAFKA_VERSION, default_cache_dir, ensure_kafka
from fraudstream.broker.server import LocalBroker, answers, free_port

__all__ = [
    "KAFKA_VERSION",
    "LocalBroker",
    "answers",
    "default_cache_dir",
    "ensure_kafka",
    "free_port",
]
