"""A big backlog: resident memory and the time to the first committed decision.

    python benchmarks/backlog.py [--count 2000000] [--partitions 6] [--window 120]

Starts its own broker on a free port, preloads N simulated transactions, then runs
`fraudstream detect` (default rules: account and payee stages) as its own process, once per
contender, one after the other on the same input (each in its own group and output topics):

- bounded: the defaults (MAX_BUFFERED_RECORDS / MAX_BUFFERED_BYTES: inputs that run ahead
  are paused while the keyed stages hold too much);
- unbounded: the same with both limits out of reach (what the detector did before).

For each: the time from launch to the first committed decision (read_committed), the peak
resident memory (VmHWM, read every 0.25 s; the README's figures of 2026-11-27 sampled
VmRSS) and the peak anonymous part of it (RssAnon, sampled: without shared libraries' pages),
and how many decisions were committed when the window closed (or when everything
was decided). Not a test: the figures go in the README.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchkit import REPO, VARIANT_HELP, ProcessTree, env_for, kafka, parse_variant
from confluent_kafka import Consumer

from fraudstream.config import Settings, load_settings
from fraudstream.generator import generate
from fraudstream.stream import consumer_config, ensure_topics


def run(
    settings: Settings, env_extra: dict[str, str], count: int, window: float, workers: int = 1
) -> dict[str, float]:
    env = env_for(settings, **{"RULES_FILE": str(REPO / "rules" / "default.yaml"), **env_extra})
    reader = Consumer(
        consumer_config(settings, "bench-reader", group_id=f"reader-{uuid.uuid4().hex}")
    )
    reader.subscribe([settings.legit_topic, settings.fraud_topic])
    log = open(Path(tempfile.mkdtemp()) / "detect.log", "wb")  # noqa: SIM115
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "detect", "--workers", str(workers)],
        env=env,
        stdout=log,
        stderr=log,
    )
    tree = ProcessTree(proc.pid)
    first = math.nan
    decided = 0
    try:
        while time.monotonic() - start < window and decided < count:
            tree.sample()
            for msg in reader.consume(num_messages=100_000, timeout=0.25):
                if msg.error() is None:
                    decided += 1
            if decided and math.isnan(first):
                first = time.monotonic() - start
            if proc.poll() is not None:
                raise SystemExit(f"the detector exited ({proc.returncode}); see {log.name}")
        elapsed = time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(60)
        reader.close()
    return {
        "first_s": first,
        "peak_mb": tree.peak_rss_mb,
        "anon_mb": tree.peak_anon_mb,
        "decided": decided,
        "elapsed_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--window", type=float, default=120, help="seconds per contender")
    parser.add_argument("--bounded-only", action="store_true", help="skip the unbounded run")
    parser.add_argument(
        "--workers", type=int, default=1, help="detector processes per contender (its --workers)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,...",
        help=VARIANT_HELP,
    )
    args = parser.parse_args()

    with kafka() as url:
        tag = uuid.uuid4().hex[:8]
        base = load_settings(
            _env_file=None,
            kafka_broker_url=url,
            transactions_topic=f"backlog-{tag}.transactions",
            labels_topic=f"backlog-{tag}.labels",
            topic_partitions=args.partitions,
        )
        ensure_topics(base, [base.transactions_topic, base.labels_topic])
        t0 = time.perf_counter()
        gen = generate(base, rate=math.inf, count=args.count, seed=1, profile="sim", progress=None)
        print(f"preloaded {gen.sent:,} simulated transactions in {time.perf_counter() - t0:.0f}s")
        contenders = {
            "bounded (defaults)": {},
            "unbounded (before)": {
                "MAX_BUFFERED_RECORDS": str(10**12),
                "MAX_BUFFERED_BYTES": str(10**15),
            },
        }
        if args.bounded_only:
            del contenders["unbounded (before)"]
        for variant in args.variant:
            name, extra = parse_variant(variant)
            contenders[name] = extra
        print(
            f"{'contender':<22} {'first decision':>15} {'peak RSS':>10} {'anon':>8} {'decided':>12}"
        )
        for name, extra in contenders.items():
            run_tag = uuid.uuid4().hex[:6]
            settings = base.model_copy(
                update={
                    "detector_group": f"backlog-{run_tag}",
                    "legit_topic": f"backlog-{run_tag}.legit",
                    "fraud_topic": f"backlog-{run_tag}.fraud",
                    "dlq_topic": f"backlog-{run_tag}.dlq",
                }
            )
            ensure_topics(
                settings, [settings.legit_topic, settings.fraud_topic, settings.dlq_topic]
            )
            r = run(settings, extra, args.count, args.window, args.workers)
            print(
                f"{name:<22} {r['first_s']:>14.1f}s {r['peak_mb']:>8.0f}MB {r['anon_mb']:>6.0f}MB "
                f"{r['decided']:>12,.0f} in {r['elapsed_s']:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
