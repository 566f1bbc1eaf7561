"""State restore speed, and the time a detector takes to resume after a SIGKILL.

    python benchmarks/restore.py [--accounts 1000000]

Starts its own broker. (1) Builds the state of N accounts (one simulated-style payment each)
with the default rules, writing every state change to the changelog topic in Kafka
transactions, as the detector does; then times reading the changelog back and loading it into
a fresh engine (keys per second). (2) Runs `fraudstream detect` on that group, SIGKILLs it
while it works, restarts it at once, and times from the kill to the first new commit of the
restarted process (group rejoin + restore + first transaction).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

from benchkit import REPO, kafka
from confluent_kafka import Producer
from synthetic import one_payment_per_account

from fraudstream.config import Settings, load_settings
from fraudstream.detection import Engine, load_ruleset
from fraudstream.generator import generate
from fraudstream.stream import committed_progress, ensure_topics, producer_config
from fraudstream.stream.changelog import read_changelog


def kill_and_restart(settings: Settings, env: dict[str, str], state: Path | None) -> float:
    """Start a detector, SIGKILL it while it works (after its first snapshot, with `state`),
    restart it at once: seconds from the kill to the restarted process's first new commit."""
    cmd = [sys.executable, "-m", "fraudstream", "detect"]
    log = Path(tempfile.mkdtemp()) / "detect.log"
    out = open(log, "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if state is not None:
        while not list(state.rglob("*.snapshot")):
            time.sleep(0.2)
    start = committed_progress(settings)
    while committed_progress(settings) < start + 30_000:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at, before = time.perf_counter(), committed_progress(settings)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    while committed_progress(settings) <= before:
        time.sleep(0.05)
    resumed = time.perf_counter() - killed_at
    print(f"  (detector log: {log})")
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return resumed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.accounts
    with kafka() as url:
        tag = uuid.uuid4().hex[:8]
        settings = load_settings(
            _env_file=None,
            kafka_broker_url=url,
            topic_partitions=3,
            transactions_topic=f"r-{tag}.in",
            legit_topic=f"r-{tag}.legit",
            fraud_topic=f"r-{tag}.fraud",
            dlq_topic=f"r-{tag}.dlq",
            labels_topic=f"r-{tag}.labels",
            detector_group=f"r-{tag}",
        )
        ensure_topics(settings)
        # the input stage's changelog, one partition per input partition (the accounts'
        # state; payee state lives in the next stage's changelog)
        log_topic = f"{settings.detector_group}.changelog"
        parts = settings.topic_partitions
        ensure_topics(settings, [log_topic], partitions=parts, compacted=[log_topic])
        ruleset = load_ruleset(REPO / "rules" / "default.yaml")
        engine = Engine.from_ruleset(ruleset).for_stage("source")
        producer = Producer(producer_config(settings, "bench", transactional_id=f"bench-{tag}"))
        producer.init_transactions(30)
        t = time.perf_counter()
        for start in range(0, n, 20_000):
            batch = one_payment_per_account(n, start, start + 20_000)
            producer.begin_transaction()
            engine.begin()
            engine.decide(batch)
            for key, value in engine.changes():
                while True:
                    try:
                        producer.produce(log_topic, value, key, partition=zlib.crc32(key) % parts)
                        break
                    except BufferError:
                        producer.poll(0.05)
            engine.commit()
            producer.commit_transaction(60)
        print(f"built and wrote the state of {n:,} accounts in {time.perf_counter() - t:.1f}s")

        t = time.perf_counter()
        by_partition = read_changelog(settings, log_topic, list(range(parts)))
        records = [r for p in range(parts) for r in by_partition[p]]
        read = time.perf_counter() - t
        fresh = Engine.from_ruleset(ruleset).for_stage("source")
        t = time.perf_counter()
        loaded = fresh.restore(records)
        load = time.perf_counter() - t
        print(
            f"restore: {len(records):,} changelog records read in {read:.1f}s, loaded in "
            f"{load:.1f}s -> {len(records) / (read + load):,.0f} keys/s "
            f"({loaded:,} loaded, {len(fresh.tables['source']):,} accounts)"
        )

        generate(settings, rate=math.inf, count=600_000, seed=3, profile="sim", progress=None)
        env = dict(
            os.environ,
            KAFKA_BROKER_URL=settings.kafka_broker_url,
            TRANSACTIONS_TOPIC=settings.transactions_topic,
            LEGIT_TOPIC=settings.legit_topic,
            FRAUD_TOPIC=settings.fraud_topic,
            DLQ_TOPIC=settings.dlq_topic,
            LABELS_TOPIC=settings.labels_topic,
            DETECTOR_GROUP=settings.detector_group,
            RULES_FILE=str(REPO / "rules" / "default.yaml"),
            KAFKA_SESSION_TIMEOUT_MS=os.environ.get("KAFKA_SESSION_TIMEOUT_MS", "10000"),
        )
        state = Path(tempfile.mkdtemp()) / "state"
        for name, extra in (
            ("dynamic membership, no snapshot (before)", {"SNAPSHOT_INTERVAL_MS": "0"}),
            (
                "static membership, no snapshot",
                {"DETECTOR_STATIC_MEMBERSHIP": "true", "SNAPSHOT_INTERVAL_MS": "0"},
            ),
            (
                "static membership + local snapshot (the defaults' snapshot, static on)",
                {
                    "DETECTOR_STATIC_MEMBERSHIP": "true",
                    "SNAPSHOT_INTERVAL_MS": "5000",
                    "STATE_DIR": str(state),
                },
            ),
        ):
            resumed = kill_and_restart(
                settings, dict(env, **extra), state if "STATE_DIR" in extra else None
            )
            print(
                f"resume after SIGKILL with {n:,} accounts in state, {name}: first new commit "
                f"{resumed:.1f}s after the kill (session.timeout.ms "
                f"{env['KAFKA_SESSION_TIMEOUT_MS']})",
                flush=True,
            )


if __name__ == "__main__":
    main()
