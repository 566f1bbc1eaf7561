"""Which Kafka errors the transaction coordinator gets past by replacing its producer, and
how long a transaction runs."""

from __future__ import annotations

from confluent_kafka import KafkaError

from fraudstream.config import Settings
from fraudstream.stream import consumer_failure, failed_fatally
from fraudstream.stream.processor import commit_interval_s
from fraudstream.stream.transactions import fenced, renewable


def test_a_producer_in_fatal_state_is_replaced_however_the_error_says_so() -> None:
    # the fatal error itself, as a failed request reports it
    assert renewable(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "desync", fatal=True))
    # what produce() raises afterwards: code _FATAL, without the fatal flag (seen in a fault
    # test after a broker restart: the detector stopped instead of replacing its producer)
    after = KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error")
    assert not after.fatal() and renewable(after)


def test_a_fenced_producer_or_a_passing_error_is_not_replaced() -> None:
    fenced_now = KafkaError(KafkaError._FENCED, "another instance took over", fatal=True)
    assert fenced(fenced_now) and not renewable(fenced_now)
    assert not renewable(KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True))
    assert not renewable(KafkaError(KafkaError.UNKNOWN_MEMBER_ID, "rebalanced"))


def test_a_consumer_in_its_fatal_state_is_told_apart_and_explained() -> None:
    """A consumer's event says `_FATAL` without the flag; the reason is only in its text."""
    new = {"group.protocol": "consumer"}
    old_broker = KafkaError(
        KafkaError._FATAL,
        "Fatal error: Broker: API version not supported: ConsumerGroupHeartbeat fatal error: "
        "Broker: API version not supported",
    )
    assert failed_fatally(old_broker) and not old_broker.fatal()
    assert "unset KAFKA_GROUP_PROTOCOL" in consumer_failure(old_broker, new)
    # another fatal heartbeat error is not blamed on the protocol
    denied = KafkaError(
        KafkaError._FATAL, "ConsumerGroupHeartbeat fatal error: Group authorization failed"
    )
    assert "KAFKA_GROUP_PROTOCOL" not in consumer_failure(denied, new)
    assert "restart to resume" in consumer_failure(denied, new)
    taken = KafkaError(  # classic, as librdkafka says it
        KafkaError._FATAL,
        "Fatal error: Broker: Static consumer fenced by other consumer with same "
        "group.instance.id: Fatal consumer error",
    )
    assert "Do not run two instances" in consumer_failure(taken, {})
    held = KafkaError(  # KIP-848: a killed predecessor's session still runs
        KafkaError._FATAL,
        "ConsumerGroupHeartbeat fatal error: Broker: The instance ID is still used by another "
        "member in the consumer group",
    )
    assert "start this one again after" in consumer_failure(held, new)
    assert not failed_fatally(KafkaError(KafkaError._TRANSPORT, "broker down", retriable=True))


def test_a_backlog_stretches_the_commit_interval_never_shortens_it() -> None:
    """While steps read full batches (a backlog) a transaction runs for
    COMMIT_INTERVAL_BACKLOG_MS; otherwise, or were that shorter, for COMMIT_INTERVAL_MS."""
    s = Settings(commit_interval_ms=50, commit_interval_backlog_ms=200)
    assert (commit_interval_s(s, False), commit_interval_s(s, True)) == (0.05, 0.2)
    s = Settings(commit_interval_ms=300, commit_interval_backlog_ms=200)
    assert (commit_interval_s(s, False), commit_interval_s(s, True)) == (0.3, 0.3)
