"""The detector on the last Apache Kafka before 4.0 (3.9, KRaft): its transactions there are
Kafka's first protocol (no KIP-890), and a SIGKILL in the middle of a run still leaves every
record decided exactly once. The rest of the suite runs on such a broker with
`FRAUDSTREAM_TEST_KAFKA_VERSION=3.9.2` (docs/scaling.md has the last run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraudstream.broker import LocalBroker, free_port
from fraudstream.broker.artifacts import OLDER_KAFKA_VERSION
from fraudstream.generator import generate
from fraudstream.stream import ensure_topics
from tests.chaos.test_faults import (
    DEFAULT_RULES,
    Detectors,
    settings_on,
    wait_committed,
    wait_done,
)
from tests.chaos.verify import verify

pytestmark = pytest.mark.chaos


def test_kafka_3_9_decides_everything_once_through_a_kill(tmp_path: Path) -> None:
    broker = LocalBroker(port=free_port(), data_dir=tmp_path / "kafka", version=OLDER_KAFKA_VERSION)
    broker.start()
    settings = settings_on(broker, topic_partitions=1)  # (the oracle: one input order)
    d = Detectors(settings, tmp_path, rules=str(DEFAULT_RULES))
    try:
        ensure_topics(settings)
        n = 20_000
        generate(
            settings,
            rate=float("inf"),
            count=n,
            seed=39,
            profile="sim",
            fraud_rate=0.05,
            progress=None,
        )
        proc = d.start()
        wait_committed(settings, n // 3, d=d)
        d.kill(proc)  # mid-run, a transaction open: the restart's init_transactions ends it
        proc = d.start()
        wait_done(settings, n, d=d)
        d.stop(proc)
        d.check_logs()
        v = verify(settings, rules=DEFAULT_RULES)
        assert (v.valid, v.decided) == (n, n)
    finally:
        d.cleanup()
        broker.kill()
