"""`fraudstream broker start | status | stop`, the real command on a second broker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from fraudstream.broker import LocalBroker, free_port
from tests.conftest import wait_for


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if env is None:  # the default KAFKA_BROKER_URL (local), whatever the caller's shell says
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BROKER_URL"}
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_session_broker_runs_with_transactions_ready(kafka: LocalBroker) -> None:
    assert kafka.status()
    props = (kafka.data_dir / "server.properties").read_text()
    assert "transaction.state.log.replication.factor=1" in props
    assert "transaction.state.log.min.isr=1" in props
    assert "process.roles=broker,controller" in props  # KRaft, no ZooKeeper


def test_start_is_idempotent_status_reports_and_stop_is_clean(tmp_path: Path) -> None:
    port, data = str(free_port()), str(tmp_path / "b")
    opts = ["--port", port, "--data-dir", data]
    assert cli("broker", "status", *opts).returncode == 1
    first = cli("broker", "start", *opts)
    assert first.returncode == 0, first.stderr
    assert "started" in first.stdout
    try:
        _coordinators_answer_at_once(f"127.0.0.1:{port}")
        again = cli("broker", "start", *opts)
        assert again.returncode == 0 and "already running" in again.stdout
        assert cli("broker", "status", *opts).returncode == 0
        # asked with another data dir: not "not running" while it answers on the port
        other = cli("broker", "status", "--port", port, "--data-dir", str(tmp_path / "other"))
        assert other.returncode == 1
        assert f"but something answers on port {port}" in other.stdout, other.stdout
    finally:
        stop = cli("broker", "stop", *opts)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert cli("broker", "status", *opts).returncode == 1
    assert "App info kafka.server for 1 unregistered" in (tmp_path / "b" / "broker.log").read_text()
    # started again on its data, it loads its coordinators again: ready once start returns
    again = cli("broker", "start", *opts)
    assert again.returncode == 0 and "started" in again.stdout, again.stderr
    try:
        _coordinators_answer_at_once(f"127.0.0.1:{port}")
    finally:
        assert cli("broker", "stop", *opts).returncode == 0


def test_nothing_local_is_started_for_a_remote_cluster(tmp_path: Path) -> None:
    env = dict(os.environ, KAFKA_BROKER_URL="kafka.example.internal:9092")
    out = cli("broker", "start", "--data-dir", str(tmp_path / "none"), env=env)
    assert out.returncode == 0 and "no local broker" in out.stderr
    assert not (tmp_path / "none").exists()


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _coordinators_answer_at_once(bootstrap: str) -> None:
    """A fresh broker's first clients found its coordinators still loading, and librdkafka
    printed its retries (`%4|GETPID| ... Coordinator load in progress`) over `make run`'s
    first start: `broker start` returns once both answer."""
    kept = _Kept()
    log = logging.getLogger("tests.broker.librdkafka")
    log.addHandler(kept)
    log.propagate = False
    eos: dict[str, Any] = {}
    idempotent = Producer(  # the generator's kind: its producer id comes at once
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "statistics.interval.ms": 50,
            "stats_cb": lambda stats: eos.update(json.loads(stats).get("eos", {})),
        },
        logger=log,
    )
    wait_for(
        lambda: idempotent.poll(0.05) >= 0 and eos.get("idemp_state") == "Assigned",
        timeout=30,
        what="an idempotent producer's id",
    )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": "tests.broker.first"}, logger=log
    )
    producer.init_transactions(30)
    producer.flush(1)  # (librdkafka's log lines reach the logger here)
    assert [r.getMessage() for r in kept.records] == []
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests.broker.first"})
    try:  # the group coordinator: no NOT_COORDINATOR for a first request
        [committed] = consumer.committed([TopicPartition("tests.broker.first", 0)], timeout=10)
    finally:
        consumer.close()
    assert committed.error is None and committed.offset < 0  # nothing committed yet
