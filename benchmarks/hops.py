"""Where a decision's latency goes, hop by hop: at a steady rate, for every transaction, when
each stage wrote it (the Kafka timestamp of the block or output record that carries it) and
when a read_committed reader could see it (its transaction committed).

    python benchmarks/hops.py [--rate 1000] [--seconds 20] [--variant NAME:VAR=VALUE,...]

Its own broker (or BENCH_KAFKA_BROKER_URL); `fraudstream detect` with rules/default.yaml as its
own process on fresh topics, fed by the paced sender of `latency.py`; then each --variant the
same way on its own topics (a setting such as COMMIT_INTERVAL_MS=100, or PYTHONPATH of another
checkout). Per hop it prints p50/p90/p99 of

  written      from the previous visibility (the input: its produce call) to the stage
               writing the record (reading, buffering until the marks let it out, its rules)
  visible      from that write until a read_committed reader saw it (the rest of the
               transaction: the commit interval, the produce requests, the commit)

and the detector's transactions in that window (from its /metrics): how many per second and
their mean commit time. The reader decodes every repartition block, about 2 µs per record
per hop on the same cores. Not a test: figures depend on the machine and what else runs.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import latency
from benchkit import REPO, VARIANT_HELP, env_for, kafka, parse_variant
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings
from fraudstream.stream import consumer_config, ensure_topics
from fraudstream.stream.ordering import DATA, decode_block
from fraudstream.stream.topology import TopicNames

SENT = latency.HEADER


def sent_ns(headers: Any) -> int | None:
    return next((int(v) for k, v in headers or () if k == SENT), None)


class HopReader:
    """read_committed reader of the repartition and output topics: per transaction (by its
    sent time) and hop, (written ms, seen ns)."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.seen: dict[tuple[str, int], tuple[int, int]] = {}
        self._stop = threading.Event()
        self._consumer = Consumer(
            consumer_config(settings, "bench-hops-reader", group_id=f"hops-{uuid.uuid4().hex}")
        )
        self._consumer.subscribe(topics)
        self._outputs = set(settings.output_topics)
        self._thread = threading.Thread(target=self._run, name="hops-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        consumer, seen = self._consumer, self.seen
        while not self._stop.is_set():
            first = consumer.poll(0.05)
            if first is None:
                continue
            now = time.time_ns()
            for msg in [first, *consumer.consume(num_messages=10_000, timeout=0)]:
                if msg.error() is not None:
                    continue
                written, topic = msg.timestamp()[1], msg.topic() or ""
                if topic in self._outputs:
                    sent = sent_ns(msg.headers())
                    if sent is not None:
                        seen[("output", sent)] = (written, now)
                    continue
                hop = topic.rsplit(".", 1)[-1]
                for env in decode_block(msg.value()):
                    if env.kind == DATA and (sent := sent_ns(env.headers)) is not None:
                        seen[(hop, sent)] = (written, now)
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def commit_totals(port: int) -> tuple[float, float]:
    """(sum of commit seconds, commits) from the detector's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for name in ("fraudstream_commit_seconds_sum", "fraudstream_commit_seconds_count"):
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        values[name] = float(found.group(1)) if found else 0.0
    return values["fraudstream_commit_seconds_sum"], values["fraudstream_commit_seconds_count"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(url: str, rate: float, seconds: float, env: dict[str, str], work: Path) -> None:
    tag = f"hops-{uuid.uuid4().hex[:6]}"
    port = free_port()
    settings = latency.fresh_settings(
        Settings(kafka_broker_url=url), tag, work / f"{tag}-state", metrics_port=port
    )
    ensure_topics(settings)
    log = work / f"{tag}-detect.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "detect"],
            env=env_for(settings, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        sender = latency.PacedSender(settings, 11)
        decided = latency.Collector(settings)
        # a trickle until the detector decides: its internal topics exist from then on
        sender.run(latency.WARMUP_RATE, 180, until=lambda: bool(decided.samples))
        decided.close()
        if not decided.samples:
            raise SystemExit(f"the detector decided nothing in 180 s; see {log}")
        names = TopicNames(tag)
        listed = AdminClient({"bootstrap.servers": url}).list_topics(timeout=10).topics
        internal = sorted(
            t
            for t in listed
            if (t.startswith(names.by("")) or t == names.ordered) and not t.endswith(".changelog")
        )
        reader = HopReader(settings, internal + list(settings.output_topics))
        time.sleep(3)  # the reader's partitions assigned, the trickle's records behind
        commits_before = commit_totals(port)
        begin = time.time_ns()
        sent, achieved = sender.run(rate, seconds)
        end = time.time_ns()
        commits_after = commit_totals(port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            # list(): the reader's thread adds to `seen` meanwhile
            sum(1 for hop, at in list(reader.seen) if hop == "output" and begin <= at < end) < sent
        ):
            time.sleep(0.2)
        reader.close()
    finally:
        proc.terminate()
        proc.wait(30)
    hops = [t.rsplit(".", 1)[-1] for t in internal] + ["output"]
    if "ordered" in hops:  # the last repartition hop comes last
        hops.remove("ordered")
        hops.insert(-1, "ordered")
    rows = []
    for (hop, at), _ in list(reader.seen.items()):
        if hop != "output" or not begin <= at < end:
            continue
        marks = [reader.seen.get((h, at)) for h in hops]
        if None in marks:
            continue
        row, before = [], at / 1e6
        for written, seen_ns in marks:  # type: ignore[misc]
            row += [written - before, seen_ns / 1e6 - written]
            before = seen_ns / 1e6
        rows.append([*row, before - at / 1e6])
    took = commits_after[0] - commits_before[0]
    count = commits_after[1] - commits_before[1]
    print(
        f"  sent {sent:,} at {achieved:,.0f} tx/s; {len(rows):,} followed through every hop; "
        f"{count / (seconds or 1):.1f} commits/s, mean commit {1000 * took / max(count, 1):.1f} ms"
    )
    labels = [f"{h} {part}" for h in hops for part in ("written", "visible")] + ["total"]
    for i, label in enumerate(labels):
        col = sorted(r[i] for r in rows)
        if col:
            p = [col[min(len(col) - 1, int(q * len(col)))] for q in (0.5, 0.9, 0.99)]
            print(f"    {label:<22} p50 {p[0]:7.1f}  p90 {p[1]:7.1f}  p99 {p[2]:7.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--variant", action="append", default=[], help=VARIANT_HELP)
    args = p.parse_args()
    runs = [("default settings", {})] + [parse_variant(v) for v in args.variant]
    work = Path(tempfile.mkdtemp(prefix="bench-hops-"))
    with kafka() as url:
        for name, env in runs:
            print(f"{name} ({', '.join(f'{k}={v}' for k, v in env.items()) or 'as shipped'}):")
            measure(url, args.rate, args.seconds, env, work)
    print(f"logs in {work}")


if __name__ == "__main__":
    main()
