"""Starting up: a detector launched with a fresh broker, and a group with a crashed past.

A detector once read a just-created topic's metadata before its partitions were known, built
its stages with 0 partitions and crashed on its first record; the marks it had committed in
that shape then kept every later run of its group silent. These scenarios keep that from
coming back: start races, a crash in the first batch, restarts with another input topic,
partition count or rule set, and `fraudstream reset --group`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from fraudstream.broker import LocalBroker, free_port
from fraudstream.config import Settings
from fraudstream.generator import generate
from fraudstream.stream import ensure_topics, group_lag
from tests.chaos.test_faults import Detectors, log_of, settings_on, wait_done
from tests.chaos.verify import verify
from tests.conftest import REPO, SettingsFactory, env_for, read_to_end, wait_for

pytestmark = pytest.mark.chaos
DEFAULT_RULES = str(REPO / "rules" / "default.yaml")
TUTORIAL_RULES = str(REPO / "rules" / "tutorial.yaml")


def _decided_once(settings: Settings, n: int) -> None:
    """Every input decided exactly once (legit or fraud), nothing dead-lettered."""
    ids = [
        json.loads(m.value())["id"]
        for topic in (settings.legit_topic, settings.fraud_topic)
        for m in read_to_end(settings, topic)
    ]
    assert len(ids) == n, f"{len(ids)} decisions for {n} inputs"
    assert len(set(ids)) == n, "a transaction was decided twice"
    assert read_to_end(settings, settings.dlq_topic) == []


def test_detector_started_with_a_fresh_broker_decides_everything(tmp_path: Path) -> None:
    """Three fresh brokers; each time the detector (staged default rules) and the generator
    start while the broker is still starting and no topic exists."""
    n = 3_000
    for run in range(3):
        broker = LocalBroker(port=free_port(), data_dir=tmp_path / f"kafka-{run}")
        settings = settings_on(broker, topic_partitions=3)
        d = Detectors(settings, tmp_path, rules=DEFAULT_RULES)
        starting = threading.Thread(target=broker.start)
        starting.start()
        try:
            proc = d.start(f"run{run}")
            starting.join()
            generated = generate(settings, rate=20_000, count=n, seed=run, progress=None)
            assert generated.sent == n
            wait_done(settings, n, timeout=120, d=d)
            d.stop(proc)
            d.check_logs()
            _decided_once(settings, n)
        finally:
            d.cleanup()
            starting.join()
            broker.stop()


def _reset(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", "reset", "--group", settings.detector_group, "--yes"],
        env=env_for(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_a_group_with_a_crashed_past(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """Crash in the first batch; restart with another input topic and partition count (refused,
    saying what differs), with another rule set (refused), with the same (decides all); then
    `reset --group` lets the group start over on the other topic."""
    a = make_settings(topic_partitions=3)
    ensure_topics(a)
    n = 2_000
    generate(a, rate=20_000, count=n, seed=31, profile="sim", fraud_rate=0.05, progress=None)

    crashing = Detectors(a, tmp_path, rules=DEFAULT_RULES, FAULT_CRASH_AT_BATCH="1")
    proc = crashing.start("crash")
    assert proc.wait(120) != 0
    assert "fault injection: crash in batch 1" in proc.log.read_text()  # type: ignore[attr-defined]

    b = a.model_copy(update={"transactions_topic": a.transactions_topic + "-b"})
    ensure_topics(b, [b.transactions_topic], partitions=1)
    generate(b, rate=20_000, count=n, seed=32, progress=None)
    other = Detectors(b, tmp_path, rules=DEFAULT_RULES)
    try:
        proc = other.start("b")
        assert proc.wait(120) == 2
        text = proc.log.read_text()  # type: ignore[attr-defined]
        assert f"input topic {a.transactions_topic} → {b.transactions_topic}" in text
        assert "input partitions 3 → 1" in text
        assert f"fraudstream reset --group {a.detector_group}" in text
        assert "Traceback" not in text

        tutorial = Detectors(a, tmp_path, rules=TUTORIAL_RULES)
        proc = tutorial.start("tutorial")
        assert proc.wait(120) == 2
        assert "stages (state keys of the rules)" in proc.log.read_text()  # type: ignore[attr-defined]

        same = Detectors(a, tmp_path, rules=DEFAULT_RULES)
        proc = same.start("again")
        wait_done(a, n, timeout=120, d=same)
        same.stop(proc)
        _decided_once(a, n)

        done = _reset(b)
        assert done.returncode == 0, done.stderr
        assert "offsets deleted" in done.stdout
        proc = other.start("b-after-reset")
        wait_for(lambda: group_lag(b) == 0 and _committed(b) >= n, timeout=120, what="b decided")
        other.stop(proc)
        _decided_once_on(b, a, n)
    finally:
        other.cleanup()


def _committed(settings: Settings) -> int:
    from fraudstream.stream import committed_progress

    return committed_progress(settings)


def _decided_once_on(b: Settings, a: Settings, n: int) -> None:
    """After the reset, b's n inputs are decided once, besides a's n from before."""
    ids = [
        json.loads(m.value())["id"]
        for topic in (b.legit_topic, b.fraud_topic)
        for m in read_to_end(b, topic)
    ]
    assert len(ids) == 2 * n and len(set(ids)) == 2 * n, (len(ids), len(set(ids)))


def test_reset_refuses_while_the_group_runs(settings: Settings, tmp_path: Path) -> None:
    d = Detectors(settings, tmp_path, rules=DEFAULT_RULES)
    try:
        proc = d.ready(d.start())
        admin = AdminClient({"bootstrap.servers": settings.kafka_broker_url})

        def joined() -> bool:
            group = settings.detector_group
            described = admin.describe_consumer_groups([group])[group].result(timeout=10)
            return bool(described.members)

        wait_for(joined, timeout=60, what="the detector to join its group")
        done = _reset(settings)
        assert done.returncode == 2
        assert "running member" in done.stderr and "Traceback" not in done.stderr
        d.stop(proc)
    finally:
        d.cleanup()


def test_the_new_group_protocol_on_a_broker_without_it_stops_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    """KAFKA_GROUP_PROTOCOL=consumer against a broker without KIP-848 (feature group.version
    disabled on Kafka 4.x): the consumer fails fatally at its first heartbeat. The detector
    once logged one warning and ran on, deciding nothing; now it and `fraudstream alerts`
    stop (exit 2) and say what to do, without a traceback."""
    broker = LocalBroker(port=free_port(), data_dir=tmp_path / "kafka")
    broker.start()
    try:
        settings = settings_on(broker)
        env = env_for(settings, RULES_FILE=TUTORIAL_RULES, STATE_DIR=str(tmp_path / "state"))
        features = [sys.executable, "-m", "fraudstream", "broker", "tool", "features"]
        off = subprocess.run(
            [
                *features,
                "--bootstrap-server",
                broker.bootstrap,
                "disable",
                "--feature",
                "group.version",
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert off.returncode == 0, off.stdout + off.stderr
        for command in (["detect"], ["alerts"]):  # each a group's member
            done = subprocess.run(
                [sys.executable, "-m", "fraudstream", *command],
                env=env | {"KAFKA_GROUP_PROTOCOL": "consumer"},
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
            out = done.stdout + done.stderr
            assert done.returncode == 2, f"{command}: {out[-5000:]}"
            assert "the broker does not take Kafka's new group protocol" in out, out[-5000:]
            assert "unset KAFKA_GROUP_PROTOCOL" in out and "Traceback" not in out, out[-5000:]
    finally:
        broker.stop()


def test_a_detector_given_no_partitions_yet_says_what_it_waits_for(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A detector that joins while a killed member's session still runs gets nothing until
    that session ends (the classic group waits for every member it knows). It said nothing
    meanwhile; now it says what it waits for every STALL_WARNING_MS, then decides
    everything once it has its partitions."""
    settings = make_settings(topic_partitions=3)
    ensure_topics(settings)
    # (the session outlasts the restart's start-up with room for the first warning)
    d = Detectors(settings, tmp_path, KAFKA_SESSION_TIMEOUT_MS="25000", STALL_WARNING_MS="2000")
    n = 2_000
    try:
        first = d.ready(d.start("a"))
        wait_for(lambda: "; holds " in log_of(first), timeout=60, what="a to be assigned")
        d.kill(first)  # its session runs on for 25 s
        # restarted under its name: its transaction is aborted at once, its place in the
        # group is not (a dynamic member)
        second = d.ready(d.start("a"))
        generate(settings, rate=math.inf, count=n, seed=61, progress=None)
        wait_done(settings, n, d=d)
        d.stop(second)
    finally:
        d.cleanup()
    d.check_logs()
    text = log_of(second)
    said, came = text.find("no partitions from group"), text.find("; holds ")
    assert 0 <= said < came, f"not said before the assignment came:\n{text[-5000:]}"
    assert "KAFKA_SESSION_TIMEOUT_MS" in text[said : said + 400], text[-5000:]
    v = verify(settings)
    assert (v.valid, v.decided) == (n, n)
