"""Stream runtime: Kafka clients, topics, the transactional detector loop, dead letters."""

from fraudstream.stream.admin import committed_progress, ensure_topics, group_lag, read_topic
from fraudstream.stream.clients import (
    base_config,
    check_connection,
    consumer_config,
    consumer_failure,
    failed_fatally,
    producer_config,
)
from fraudstream.stream.processor import Processor, ProcessorStats

__all__ = [
    "Processor",
    "ProcessorStats",
    "base_config",
    "check_connection",
    "committed_progress",
    "consumer_config",
    "consumer_failure",
    "ensure_topics",
    "failed_fatally",
    "group_lag",
    "producer_config",
    "read_topic",
]
