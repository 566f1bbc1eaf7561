"""The verifier's own judgement of what a group left unread on a repartition topic."""

from __future__ import annotations

from confluent_kafka import Producer

from fraudstream.stream import ensure_topics
from fraudstream.stream.ordering import DATA, LABEL, MARK, Envelope, encode_block
from tests.chaos.verify import unread_work
from tests.conftest import SettingsFactory


def test_unread_marks_are_no_work_left_but_a_transaction_or_verdict_is(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    topic = settings.transactions_topic  # any topic: blocks as a stage writes them
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})
    mark = Envelope(kind=MARK, t=1, q=0, o=0, u=0, s=1)
    data = Envelope(kind=DATA, t=1, q=0, o=1, u=0, s=1)
    label = Envelope(kind=LABEL, t=2, q=0, o=2, u=0, s=2)
    for block in ([mark, mark], [mark, data], [mark], [label]):
        producer.produce(topic, encode_block(block), partition=0)
    assert producer.flush(10) == 0
    assert unread_work(settings, topic, 0, 0, 1) == []
    assert unread_work(settings, topic, 0, 2, 3) == []
    assert unread_work(settings, topic, 0, 0, 3) == [f"{topic}[0]@1: kind {DATA}"]
    assert unread_work(settings, topic, 0, 2, 4) == [f"{topic}[0]@3: kind {LABEL}"]
