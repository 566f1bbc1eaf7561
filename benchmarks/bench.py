"""`make bench`: fraudstream against the tutorials' loop, Quix Streams and a bare passthrough,
on the same input, then fraudstream's latency at steady rates.

    python benchmarks/bench.py [--count 1000000] [--only default,quix,...] [--skip-latency]
        [--latency-seconds 25] [--latency-rates 1000,10000,half] [--out FILE.json]
        [--variant NAME:VAR=VALUE,...]

`--variant` adds a fraudstream contender with extra environment (a setting such as
BATCH_SIZE=5000, or PYTHONPATH=<an older checkout>/src for before/after figures in one run).
BENCH_PROFILE=1 records each fraudstream contender with py-spy (BENCH_PROFILE=native: with the
C frames too; BENCH_PROFILE=idle: waiting threads too, where the wall time goes; collapsed
stacks, <logs>/<name>-profile.txt), which slows it down: figures of such a run are not
comparable.

Starts its own broker (or uses BENCH_KAFKA_BROKER_URL), preloads N simulated transactions
(the `sim` profile, labels included) into one 6-partition topic, copies it once through the
broker and decides it twice with the default rules, all unmeasured (a broker just started is
slower for a while, its transaction paths too, which held back whichever contender ran
first), then runs each contender as its own process, one after
the other, each reading that topic in its own consumer group and writing to its own output
topics:

  default      fraudstream detect, rules/default.yaml
  model        fraudstream detect, rules/with-model.yaml with a model trained here first
  workers2     fraudstream detect --workers 2, rules/default.yaml
  tutorial     the tutorials' loop (kafka-python, one message at a time; contenders/)
  quix         Quix Streams, the default rules' account velocity rules, exactly-once
  passthrough  confluent-kafka batches copied to one topic, no decoding, at-least-once

For each: tx/s (launch until all N records are visible to a read_committed reader of its
outputs), CPU µs per transaction (user+system of its process tree at that moment), the broker's
CPU µs per transaction meanwhile (its JVM, when the broker is ours; the benchmark's own reader
of the outputs loads it too, alike for every contender) and peak resident memory (VmHWM of its
largest process), and from the outputs seen over time (`timeline` in the results) the seconds
until its first output and its steady rate (from 10% to 90% of the outputs: the start and the
end left out). Each contender's topics are deleted once it is measured (a broker holding earlier
contenders' logs slowed the later ones). Then the latency of `fraudstream detect` (default
rules) from produce to read_committed visibility at 1,000 and 10,000 tx/s and half the default
contender's throughput (`latency.py`). Results go to a JSON file and a chart (PNG, drawn by
`bench_chart.py` with .venv-bench's matplotlib). tutorial and quix run with .venv-bench's python
(BENCH_PYTHON), which `make bench` builds from benchmarks/requirements.lock. Not a test:
figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import latency
import yaml
from benchkit import REPO, VARIANT_HELP, ProcessTree, broker, drop_topics, env_for, parse_variant
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from fraudstream.config import Settings, load_settings
from fraudstream.generator import generate
from fraudstream.stream import consumer_config, ensure_topics, producer_config

CONTENDERS = {
    "default": "fraudstream, default rules",
    "model": "fraudstream, rules + model",
    "workers2": "fraudstream, default rules, 2 workers",
    "tutorial": "tutorial loop (kafka-python)",
    "quix": "Quix Streams, velocity rules, exactly-once",
    "passthrough": "passthrough (confluent-kafka)",
}
DETECTORS = ("default", "model", "workers2")  # the contenders that run fraudstream
SEED = 1
BENCH_PYTHON = Path(os.environ.get("BENCH_PYTHON", REPO / ".venv-bench" / "bin" / "python"))
HERE = Path(__file__).resolve().parent


@dataclass
class Contender:
    name: str
    argv: list[str]
    env: dict[str, str]
    outputs: list[str]


def main() -> None:
    args = parse_args()
    today = datetime.date.today().isoformat()
    out = args.out or HERE / "results" / f"bench-{today}.json"
    work = Path(tempfile.mkdtemp(prefix="fraudstream-bench-"))
    report: dict[str, Any] = {
        "date": today,
        "command": "python benchmarks/bench.py " + shlex.join(sys.argv[1:]),
        "machine": machine(),
        "commit": commit(),
        "count": args.count,
        "partitions": args.partitions,
        "train_count": args.train_count if "model" in args.only else None,
        "latency_seconds": None if args.skip_latency else args.latency_seconds,
        "contenders": [],
        "latency": [],
    }
    print(
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores; commit "
        f"{report['commit']}; load average {report['machine']['load_average']}; logs in {work}"
    )
    with broker() as kafka_broker:
        url = kafka_broker.url
        tag = f"bench-{uuid.uuid4().hex[:6]}"
        base = load_settings(
            _env_file=None,
            kafka_broker_url=url,
            transactions_topic=f"{tag}.transactions",
            labels_topic=f"{tag}.labels",
            topic_partitions=args.partitions,
        )
        ensure_topics(base, [base.transactions_topic, base.labels_topic])
        t0 = time.perf_counter()
        gen = generate(
            base, rate=math.inf, count=args.count, seed=SEED, profile="sim", progress=None
        )
        if gen.failed:
            raise SystemExit(f"preloading failed: {gen.failed:,} transactions not delivered")
        print(f"preloaded {args.count:,} simulated transactions in {time.perf_counter() - t0:.1f}s")

        warm_up(base)
        # The broker gets faster for a while after it starts (its JVM compiles the hot paths),
        # which slowed whichever contender ran first (fraudstream, default rules) against the
        # same code run later: copy the input through it once first, not measured.
        t0 = time.perf_counter()
        run(
            prepare("passthrough", base, work, f"{tag}-warm", None, {}), base, args.count, 600, work
        )
        drop_topics(url, f"{tag}-warm-passthrough")
        # The passthrough is not transactional: the broker's transaction paths (and the
        # detector's own first start on this machine) stayed cold for the first fraudstream
        # contender, which still came out slower than the same code run after it. The
        # detector with the default rules decides the input twice too, not measured: after
        # one pass the broker's JIT compiler still took 2.6 s of CPU during the first
        # contender (1.3 s in the second, 0.5 s in the third; docs/performance.md).
        # (only when a fraudstream contender runs; its state directory removed after, for
        # tidiness: its snapshots are under its own group, which no contender shares)
        passes = 2 if any(n in DETECTORS for n in args.only) or args.variants else 0
        for i in range(passes):
            warm = prepare("default", base, work, f"{tag}-warm{i}", None, {})
            try:
                run(warm, base, args.count, 600, work)
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                print(f"(the detector's warm-up run failed, going on: {exc})")
            shutil.rmtree(work / "default-state", ignore_errors=True)
            drop_topics(url, f"{tag}-warm{i}-default")
        warmed = time.perf_counter() - t0
        print(
            f"(warmed the broker up: the passthrough's copy and {passes} passes of the "
            f"detector, not measured, {warmed:.0f}s)"
        )
        model_rules = None
        if "model" in args.only or any(
            v.get("RULES_FILE") == "model" for v in args.variants.values()
        ):
            try:
                model_rules = train_model(base, work, args.train_count)
            except subprocess.CalledProcessError:
                print(f"training the model failed; see {work / 'train.log'}")

        print(
            f"{'contender':<44} {'tx/s':>9} {'CPU µs/tx':>10} {'broker µs':>10} "
            f"{'peak RSS':>9} {'wall':>8} {'1st out':>7} {'steady':>9}"
        )
        for name in args.only:
            try:
                contender = prepare(name, base, work, tag, model_rules, args.variants)
                result = run(contender, base, args.count, args.timeout, work, kafka_broker.cpu_s)
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                result = {"name": name, "error": str(exc)}
            # Its topics go once it is measured: a broker holding the logs of the contenders
            # before ran the later ones up to 1.5 times slower (docs/performance.md)
            drop_topics(url, f"{tag}-{name}")
            result["label"] = CONTENDERS[name]
            report["contenders"].append(result)
            print(row(result), flush=True)
        report["ratios"] = ratios(report["contenders"])
        for line in report["ratios"]["lines"]:
            print(line)

        if not args.skip_latency:
            rates = latency_rates(args.latency_rates, report["contenders"])
            if rates:
                print(f"latency, fraudstream default rules, {args.latency_seconds:g} s per rate:")
                try:
                    report["latency"] = latency.measure(
                        base, rates, args.latency_seconds, work, SEED + 1
                    )
                except RuntimeError as exc:
                    report["latency_error"] = str(exc)
                    print(f"latency: {exc}")
                report["latency_variants"] = {}
                for variant in args.latency_variant:
                    name, env = parse_variant(variant)
                    print(f"latency, {name} ({', '.join(f'{k}={v}' for k, v in env.items())}):")
                    try:
                        report["latency_variants"][name] = latency.measure(
                            base, rates, args.latency_seconds, work, SEED + 1, env
                        )
                    except RuntimeError as exc:
                        print(f"latency, {name}: {exc}")
        for state in work.glob("*-state"):
            shutil.rmtree(state, ignore_errors=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out}")
    chart(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=1_000_000, help="transactions to preload")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument(
        "--only",
        default=",".join(CONTENDERS),
        type=lambda s: [n.strip() for n in s.split(",") if n.strip()],
        help=f"contenders to run, comma-separated (default: all of {', '.join(CONTENDERS)})",
    )
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--latency-seconds", type=float, default=25.0, help="per rate")
    p.add_argument(
        "--latency-rates",
        default="1000,10000,half",
        help="tx/s, comma-separated; 'half' is half the default contender's throughput",
    )
    p.add_argument(
        "--train-count", type=int, default=200_000, help="simulated history the model learns"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per contender at most")
    p.add_argument(
        "--variant", action="append", default=[], metavar="NAME:VAR=VALUE,...", help=VARIANT_HELP
    )
    p.add_argument(
        "--latency-variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,...",
        help="latency measured again with these environment variables (e.g. "
        "'interval50:COMMIT_INTERVAL_MS=50'); repeatable",
    )
    p.add_argument(
        "--out", type=Path, help="results JSON (default benchmarks/results/bench-DATE.json)"
    )
    args = p.parse_args()
    if args.count < 1:
        p.error("--count must be at least 1")
    args.variants = dict(parse_variant(v) for v in args.variant)
    for name in args.variants:
        if name in CONTENDERS:
            p.error(f"--variant {name}: pick a name that is not a contender's")
        wanted = args.variants[name].get("RULES_FILE", "")
        rules = {"model": "model", "": "default rules"}.get(wanted, Path(wanted).name)
        CONTENDERS[name] = f"fraudstream, {rules}, {name}"
        if name not in args.only:  # runs after the others, unless --only places it
            args.only.append(name)
    if len(set(args.only)) < len(args.only):  # its group would find its work done
        p.error("--only names a contender twice; to repeat one, give it --variant names")
    unknown = set(args.only) - set(CONTENDERS)
    if unknown:
        p.error(
            f"unknown contender(s) {', '.join(sorted(unknown))}; pick from {', '.join(CONTENDERS)}"
        )
    return args


def prepare(
    name: str,
    base: Settings,
    work: Path,
    tag: str,
    model_rules: Path | None,
    variants: dict[str, dict[str, str]],
) -> Contender:
    """The command, environment and output topics of contender `name` (its topics created);
    `model_rules`: the rules file with the trained model; `variants`: extra environment of the
    --variant contenders (default rules)."""
    run_tag = f"{tag}-{name}"
    topics = {t: f"{run_tag}.{t}" for t in ("legit", "fraud", "dlq")}
    if name in (*DETECTORS, *variants):
        rules = REPO / "rules" / "default.yaml"
        extra = dict(variants.get(name, {}))
        wanted = extra.pop("RULES_FILE", "")
        workers = extra.pop("WORKERS", "2" if name == "workers2" else "")
        python = extra.pop("PYTHON", sys.executable)  # another interpreter's virtualenv
        if name == "model" or wanted == "model":
            if model_rules is None:
                raise RuntimeError(f"no model (see {work / 'train.log'})")
            rules = model_rules
        elif wanted:  # a rules file of the variant's own
            rules = Path(wanted).resolve()
        settings = base.model_copy(
            update={
                "legit_topic": topics["legit"],
                "fraud_topic": topics["fraud"],
                "dlq_topic": topics["dlq"],
                "detector_group": run_tag,
                "rules_file": str(rules),
                "partition_idle_ms": 0,  # the input is all there: a partition at its end is done
                "state_dir": str(work / f"{name}-state"),
            }
        )
        ensure_topics(settings, list(settings.output_topics))
        argv = [python, "-m", "fraudstream", "detect"]
        if workers:
            argv += ["--workers", workers]
        env = env_for(settings, **extra)
        if os.environ.get("BENCH_PROFILE"):  # py-spy's collapsed stacks of the detector
            spy = str(Path(sys.executable).parent / "py-spy")
            out = str(work / f"{name}-profile.txt")
            how = os.environ["BENCH_PROFILE"]
            native = ["--native"] if how == "native" else []  # C frames too
            native += ["--idle"] if how == "idle" else []  # threads that wait, too
            argv = [spy, "record", "-s", "-r", "200", *native, "-f", "raw", "-o", out, "--", *argv]
        return Contender(name, argv, env, list(settings.output_topics))

    env = dict(
        os.environ,
        KAFKA_BROKER_URL=base.kafka_broker_url,
        TRANSACTIONS_TOPIC=base.transactions_topic,
        BENCH_GROUP=run_tag,
    )
    if name == "passthrough":
        out = f"{run_tag}.out"
        ensure_topics(base, [out])
        script = HERE / "contenders" / "passthrough.py"
        return Contender(name, [sys.executable, str(script)], dict(env, OUTPUT_TOPIC=out), [out])
    if not BENCH_PYTHON.exists():
        raise RuntimeError(f"{BENCH_PYTHON} is missing: `make bench` builds .venv-bench")
    outputs = [topics["legit"], topics["fraud"]]
    ensure_topics(base, outputs)
    env.update(LEGIT_TOPIC=outputs[0], FRAUD_TOPIC=outputs[1])
    script = {"tutorial": "tutorial_loop.py", "quix": "quix_velocity.py"}[name]
    if name == "quix":
        env["BENCH_STATE_DIR"] = str(work / "quix-state")
    return Contender(name, [str(BENCH_PYTHON), str(HERE / "contenders" / script)], env, outputs)


def warm_up(settings: Settings) -> None:
    """Have the broker set up its group and transaction coordinators now (their internal
    topics), so that the first contender does not wait for them."""
    producer = Producer(
        producer_config(settings, "bench-warm-up", transactional_id=f"warm-up-{uuid.uuid4()}")
    )
    producer.init_transactions(60)
    consumer = Consumer(consumer_config(settings, "bench-warm-up", group_id="bench-warm-up"))
    deadline = time.monotonic() + 60
    while True:  # the group coordinator answers "not coordinator" while it loads
        try:
            consumer.commit(
                offsets=[TopicPartition(settings.transactions_topic, 0, 0)], asynchronous=False
            )
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    consumer.close()


def train_model(base: Settings, work: Path, count: int) -> Path:
    """A model trained on `count` transactions of the same simulated world (not timed), and
    rules/with-model.yaml pointing at it: the rules file's path."""
    t0 = time.perf_counter()
    history, labels, model = work / "train.jsonl", work / "train-labels.jsonl", work / "bench.model"
    spec = yaml.safe_load((REPO / "rules" / "with-model.yaml").read_text())
    spec["lists_file"] = str(REPO / "rules" / spec["lists_file"])
    spec["model"]["file"] = str(model)
    rules = work / "with-model.yaml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    generate_history = ["generate", "--profile", "sim", "--seed", str(SEED), "--count", str(count)]
    generate_history += ["--output", str(history), "--labels-output", str(labels), "--quiet"]
    train = ["train", "--rules", str(rules), "--input", str(history), "--labels", str(labels)]
    train += ["--out", str(model)]
    with open(work / "train.log", "wb") as log:
        for step in (generate_history, train):
            subprocess.run(
                [sys.executable, "-m", "fraudstream", *step],
                env=env_for(base),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                check=True,
            )
    history.unlink()
    labels.unlink()
    print(
        f"(trained a model on {count:,} simulated transactions in {time.perf_counter() - t0:.0f}s)"
    )
    return rules


def run(
    contender: Contender,
    base: Settings,
    count: int,
    timeout: float,
    work: Path,
    broker_cpu: Callable[[], float | None] = lambda: None,
) -> dict[str, Any]:
    """Launch the contender and time it until `count` records are visible in its outputs;
    `broker_cpu`: the broker's CPU seconds so far (None: not known)."""
    reader = Consumer(
        consumer_config(base, "bench-counter", group_id=f"bench-counter-{uuid.uuid4().hex}")
    )
    reader.assign(
        [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in contender.outputs
            for p in range(partitions(reader, t))
        ]
    )
    log = work / f"{contender.name}.log"
    seen, error = 0, None
    timeline: list[tuple[float, int]] = []  # (seconds since launch, outputs seen): the ramp
    with open(log, "wb") as out:
        broker_at_start = broker_cpu()
        free_mb = mem_free_mb()  # the page cache's share of memory changed the broker's speed
        start = time.monotonic()
        proc = subprocess.Popen(
            contender.argv, env=contender.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    tree = ProcessTree(proc.pid)
    try:
        while seen < count:
            # returns as soon as the last record arrives, else after 0.1 s with what came
            for msg in reader.consume(num_messages=min(count - seen, 100_000), timeout=0.1):
                seen += msg.error() is None
            now = time.monotonic()
            if not timeline or now - start - timeline[-1][0] >= 0.25 or seen == count:
                timeline.append((round(now - start, 3), seen))
            tree.sample()
            if proc.poll() is not None:
                error = f"exited with code {proc.returncode}; see {log}"
                break
            if now - start > timeout:
                error = f"timed out after {timeout:g} s with {seen:,} of {count:,}; see {log}"
                break
        wall = now - start
        broker_at_end = broker_cpu()
    finally:
        # py-spy writes its profile on SIGINT (Ctrl-C), not on SIGTERM
        tree.stop(proc, sig=signal.SIGINT if os.environ.get("BENCH_PROFILE") else signal.SIGTERM)
        reader.close()
    return {
        "name": contender.name,
        "records": seen,
        "wall_s": wall,
        "tx_per_s": seen / wall,
        "cpu_s": tree.cpu_s,
        "cpu_us_per_tx": tree.cpu_s / seen * 1e6 if seen else None,
        "broker_cpu_us_per_tx": (
            (broker_at_end - broker_at_start) / seen * 1e6
            if seen and broker_at_start is not None and broker_at_end is not None
            else None
        ),
        "peak_rss_mb": tree.peak_rss_mb,
        "peak_rss_sum_mb": tree.peak_rss_sum_mb,
        "processes": len(tree.pids),
        "log": str(log),
        "error": error,
        "timeline": timeline,
        "mem_free_mb_at_start": free_mb,
        **ramp(timeline, count),
    }


def mem_free_mb() -> float | None:
    """The machine's free memory now (MemFree: not counting the page cache), MB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemFree:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def ramp(timeline: list[tuple[float, int]], count: int) -> dict[str, float | None]:
    """From a contender's timeline: seconds from launch to its first output visible, and its
    rate from 10% to 90% of the outputs (the start and the end left out)."""
    first = next((t for t, seen in timeline if seen), None)
    at10 = next(((t, seen) for t, seen in timeline if seen >= count * 0.1), None)
    at90 = next(((t, seen) for t, seen in timeline if seen >= count * 0.9), None)
    steady = None
    if at10 and at90 and at90[0] > at10[0]:
        steady = (at90[1] - at10[1]) / (at90[0] - at10[0])
    return {"first_output_s": first, "steady_tx_per_s": steady}


def partitions(client: Consumer, topic: str, timeout: float = 10) -> int:
    """How many partitions `topic` has, once the metadata knows it (just created)."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.list_topics(topic, timeout=timeout).topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return len(found.partitions)
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no partitions after {timeout:g} s")
        time.sleep(0.2)


def row(r: dict[str, Any]) -> str:
    if "tx_per_s" not in r:
        return f"{r['label']:<44} failed: {r['error']}"
    cpu = f"{r['cpu_us_per_tx']:.1f}" if r["cpu_us_per_tx"] is not None else "-"
    broker_cpu = r.get("broker_cpu_us_per_tx")
    on_broker = f"{broker_cpu:.1f}" if broker_cpu is not None else "-"
    steady = f"{r['steady_tx_per_s']:,.0f}" if r.get("steady_tx_per_s") else "-"
    first = f"{r['first_output_s']:.1f}s" if r.get("first_output_s") is not None else "-"
    line = (
        f"{r['label']:<44} {r['tx_per_s']:>9,.0f} {cpu:>10} {on_broker:>10} "
        f"{r['peak_rss_mb']:>6,.0f} MB {r['wall_s']:>7.1f}s {first:>7} {steady:>9}"
    )
    if r["processes"] > 1:
        line += f"  ({r['processes']} processes, {r['peak_rss_sum_mb']:,.0f} MB together)"
    return line + (f"  — {r['error']}" if r["error"] else "")


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    """fraudstream's default rules against the tutorial loop, Quix and the passthrough."""
    by = {r["name"]: r for r in results if r.get("tx_per_s") and not r.get("error")}
    out: dict[str, Any] = {"lines": []}
    if "default" not in by:
        return out
    d = by["default"]
    for other in ("tutorial", "quix", "passthrough"):
        if other in by:
            o = by[other]
            tput, cpu = d["tx_per_s"] / o["tx_per_s"], d["cpu_us_per_tx"] / o["cpu_us_per_tx"]
            out[other] = {"throughput": tput, "cpu_per_tx": cpu}
            out["lines"].append(
                f"fraudstream default vs {CONTENDERS[other]}: {tput:.2f}x the throughput, "
                f"{cpu:.2f}x the CPU per transaction"
            )
    return out


def latency_rates(spec: str, results: list[dict[str, Any]]) -> list[float]:
    default = next((r for r in results if r["name"] == "default" and not r.get("error")), None)
    rates = []
    for item in spec.split(","):
        if item.strip() == "half":
            if default is None:
                print("latency: no measured default throughput, so no 'half' rate")
            else:
                rates.append(round(default["tx_per_s"] / 2))
        elif item.strip():
            rates.append(float(item))
    return sorted(rates)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def chart(results: Path) -> None:
    png = results.with_suffix(".png")
    if not BENCH_PYTHON.exists():
        print(f"no chart: {BENCH_PYTHON} is missing (`make bench` builds .venv-bench)")
        return
    done = subprocess.run([str(BENCH_PYTHON), str(HERE / "bench_chart.py"), str(results), str(png)])
    if done.returncode == 0:
        print(f"chart: {png}")


if __name__ == "__main__":
    main()
