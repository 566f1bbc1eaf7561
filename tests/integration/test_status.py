"""Never stuck in silence: a stalled group says what it waits for, in its log and in
`fraudstream status`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from fraudstream.broker import free_port
from fraudstream.config import Settings
from fraudstream.stream import committed_progress, group_lag
from tests.chaos.test_faults import Detectors
from tests.conftest import REPO, env_for, wait_for

pytestmark = pytest.mark.kafka
DEFAULT_RULES = str(REPO / "rules" / "default.yaml")
T0 = 1_767_225_600_000  # 2026-01-01


def _status(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", "status"],
        env=env_for(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_stalled_group_says_what_it_waits_for(settings: Settings, tmp_path: Path) -> None:
    """Partition 2 of the input stays empty and never idles (PARTITION_IDLE_MS=10 min), so the
    payee stage cannot release anything: a stall, which must be named."""
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})
    n = 200
    for i in range(n):
        tx = {
            "id": f"st-{i}",
            "source": f"a{i % 7}",
            "target": f"b{i % 5}",
            "amount": 600.0,  # (under 500 it would skip the payee stage)
            "currency": "EUR",
            "timestamp": T0 + i * 1000,
        }
        producer.produce(settings.transactions_topic, json.dumps(tx).encode(), partition=i % 2)
    assert producer.flush(30) == 0

    port = free_port()
    readyz = f"http://127.0.0.1:{port}/readyz"
    stalling = _stalling(settings, tmp_path, METRICS_PORT=str(port))
    try:
        proc = stalling.start()
        log = proc.log  # type: ignore[attr-defined]
        warning = _warned(log, "no decision committed for")
        assert "by-target[" in warning and "waiting for upstream task 2's mark" in warning, warning
        # its readiness probe says so too, with what it waits for
        wait_for(
            lambda: _ready(readyz)[1].get("why", "").startswith("stalled: "),
            timeout=30,
            what="/readyz to say stalled",
        )
        code, body = _ready(readyz)
        assert code == 503 and body["ready"] is False, body
        assert "waiting for upstream task 2's mark" in body["why"], body

        def reported_stalled() -> bool:
            done = _status(settings)
            return done.returncode == 1 and "STALLED" in done.stdout

        wait_for(reported_stalled, timeout=60, what="status to report the stall")
        shown = _status(settings).stdout
        assert "instance 0" in shown and "by-target" in shown and "input" in shown, shown
        stalling.stop(proc)
    finally:
        stalling.cleanup()

    flowing = Detectors(
        settings, tmp_path, rules=DEFAULT_RULES, STATUS_INTERVAL_MS="500", METRICS_PORT=str(port)
    )
    try:
        proc = flowing.start()
        wait_for(
            lambda: committed_progress(settings) >= n and group_lag(settings) == 0,
            timeout=60,
            what="the group to drain",
        )
        wait_for(lambda: _ready(readyz)[0] == 200, timeout=30, what="/readyz to say ready")
        assert _ready(readyz)[1] == {"ready": True, "why": ""}
        wait_for(lambda: _status(settings).returncode == 0, timeout=60, what="status ok")
        assert "ok: nothing is stuck" in _status(settings).stdout
        flowing.stop(proc)
        # stopped cleanly, it says so (its last report lingered as if it ran)
        after = _status(settings)
        assert after.returncode == 0 and "instance 0: stopped" in after.stdout, after.stdout
    finally:
        flowing.cleanup()


def test_a_partition_held_back_while_the_others_flow_is_a_stall(
    settings: Settings, tmp_path: Path
) -> None:
    """Partition 0 jumps 59 minutes ahead (within MAX_EVENT_TIME_SKEW_MS, so believed) while
    partitions 1 and 2 go on at a few seconds of event time per second: partition 0's records
    wait in the payee stage until the others get there, the buffer passes its bound and
    partition 0 is paused. Decisions of the others keep coming, so nothing looked stuck
    before; now a partition paused for STALL_WARNING_MS is a stall, named with its mark."""
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url, "linger.ms": 5})
    topic = settings.transactions_topic

    def tx(i: int, p: int, ts: int) -> bytes:
        return json.dumps(
            {
                "id": f"p{p}-{i}",
                "source": f"a{p}-{i % 7}",
                "target": f"b{i % 5}",
                "amount": 600.0,  # (under 500 it would skip the payee stage)
                "currency": "EUR",
                "timestamp": ts,
            }
        ).encode()

    ahead = T0 + 59 * 60_000
    for i in range(3_000):
        producer.produce(topic, tx(i, 0, T0 + i if i < 20 else ahead), partition=0)
    assert producer.flush(30) == 0
    stop = threading.Event()

    def others() -> None:  # partitions 1 and 2, 100 records a second, 5 s of event time each
        i = 0
        while not stop.wait(0.01):
            i += 1
            producer.produce(topic, tx(i, 1 + i % 2, T0 + i * 5_000), partition=1 + i % 2)
            producer.poll(0)
        producer.flush(30)

    writer = threading.Thread(target=others)
    writer.start()
    d = _stalling(settings, tmp_path, MAX_BUFFERED_RECORDS="500")
    try:
        proc = d.start()
        log = proc.log  # type: ignore[attr-defined]
        warning = _warned(log, "paused for back-pressure for")
        assert f"{topic}[0] (mark 2026-01-01T00:59:00Z" in warning, warning
        assert "no decision committed" not in log.read_text()  # the others flow
        before = committed_progress(settings)
        done = _status(settings)
        assert done.returncode == 1 and "STALLED" in done.stdout, done.stdout
        assert f"{topic}[0] (mark 2026-01-01T00:59:00Z" in done.stdout, done.stdout
        wait_for(lambda: committed_progress(settings) > before, timeout=30, what="decisions")
        d.stop(proc)
    finally:
        stop.set()
        writer.join()
        d.cleanup()


def test_the_status_topic_is_compacted_a_minute_at_a_time(settings: Settings) -> None:
    """`status` reads it whole, and the dashboard every 5 s: with Kafka's defaults it would
    keep a week of reports (a segment is only compacted once closed)."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    from fraudstream.stream.topology import TopicNames
    from tests.conftest import produce_raw, run_detector

    produce_raw(settings, [(b"k", b'{"id": "s1", "source": "a", "amount": 1.0}')])
    run_detector(settings, 1)
    admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})
    topic = TopicNames(settings.detector_group).status
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["segment.ms"].value == "60000"
    assert configs["min.cleanable.dirty.ratio"].value == "0.1"


def _ready(url: str) -> tuple[int, dict[str, Any]]:
    """A `/readyz` answer: its status and body (0 and {} while nothing answers)."""
    try:
        answer = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return 0, {}
    return answer.status_code, answer.json()


def _stalling(settings: Settings, tmp_path: Path, **env: str) -> Detectors:
    """A detector that never lets a partition go idle and calls 2 s without progress a stall,
    reporting its status every 0.5 s."""
    return Detectors(
        settings,
        tmp_path,
        rules=DEFAULT_RULES,
        PARTITION_IDLE_MS="600000",
        STALL_WARNING_MS="2000",
        STATUS_INTERVAL_MS="500",
        **env,
    )


def _warned(log: Path, phrase: str) -> str:
    """The first line of the detector's log with `phrase`, once there is one."""
    wait_for(lambda: phrase in log.read_text(), timeout=60, what=f"a warning ({phrase!r})")
    return next(x for x in log.read_text().splitlines() if phrase in x)
