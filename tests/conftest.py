"""Fixtures: one real Kafka broker per test run, unique topics per test, app launchers."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from fraudstream.broker import LocalBroker, free_port
from fraudstream.broker.artifacts import KAFKA_VERSION
from fraudstream.config import Settings, load_settings
from fraudstream.errors import BrokerError
from fraudstream.stream import consumer_config, ensure_topics
from fraudstream.stream.layout import group_topics

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """One thread per native pool (OpenMP, BLAS) in the test processes, as `detect`, `train`
    and `backtest` cap theirs (MODEL_THREADS): beside the other xdist worker, a pool of a
    thread per core spins against it, and the tests that train a model in-process took
    twice as long (57 s against 29 s for one, measured with two busy cores). Processes
    the tests start make their own cap (tests/unit/test_trees.py checks it)."""
    from fraudstream.detection.model import limit_native_threads

    limit_native_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`), each with a
    broker of its own: the fault scenarios one after another on one worker (two of them at
    once on two cores would time each other out), everything else beside them. First of
    this hook's implementations: xdist's own turns the group into the test's id, and it ran
    before this one (registered later). Until 2026-12-07 the fault scenarios were spread
    over both workers: that, and pytest 9.2, on which xdist 3.8 groups nothing
    (pytest-dev/pytest-xdist#1386; requirements.lock pins pytest 9.1.1). Two at once, with
    an 8 s stall of a broker, failed CI."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(pytest.mark.xdist_group("chaos"))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The real broker: the same code as `fraudstream broker start`, on a free port
    (`FRAUDSTREAM_TEST_KAFKA_VERSION`: another Apache Kafka version than the default)."""
    version = os.environ.get("FRAUDSTREAM_TEST_KAFKA_VERSION") or KAFKA_VERSION
    broker = LocalBroker(
        port=free_port(), data_dir=tmp_path_factory.mktemp("kafka"), version=version
    )
    try:
        broker.start()
    except BrokerError:
        # A free port can be taken by another program between our probe and Kafka's bind;
        # that (and only that) earns a second try on fresh ports.
        if "Address already in use" not in broker.log_file.read_text(errors="replace"):
            raise
        broker = LocalBroker(
            port=free_port(), data_dir=tmp_path_factory.mktemp("kafka"), version=version
        )
        broker.start()
    yield broker
    # killed, not stopped: its data is thrown away, and a clean stop of a broker holding every
    # test's topics took 12 s (`broker stop` itself is tested on brokers of its own)
    broker.kill()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def fault_rng(request: pytest.FixtureRequest) -> random.Random:
    """The source of a fault test's random choices (kill points, the seeds of the faults a
    detector injects): seeded from FAULT_SEED when it is set, to replay a failure, else at
    random. The seed is printed (pytest shows it with a failure's output) and kept in the
    test's report."""
    given = os.environ.get("FAULT_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"FAULT_SEED={seed} ({request.node.nodeid}); replay with FAULT_SEED={seed}")
    request.node.user_properties.append(("FAULT_SEED", seed))
    return random.Random(seed)


@pytest.fixture
def make_settings(kafka: LocalBroker) -> SettingsFactory:
    """Settings on the test broker, with topic and group names no other test uses."""

    def factory(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:10]
        values: dict[str, Any] = {
            "kafka_broker_url": kafka.bootstrap,
            "transactions_topic": f"t-{tag}.transactions",
            "legit_topic": f"t-{tag}.legit",
            "fraud_topic": f"t-{tag}.fraud",
            "dlq_topic": f"t-{tag}.dlq",
            "labels_topic": f"t-{tag}.labels",
            "detector_group": f"detector-{tag}",
            "topic_partitions": 3,
            "_env_file": None,
        }
        values.update(overrides)
        return load_settings(**values)

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    s = make_settings()
    ensure_topics(s)
    return s


Record = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, list[Any]]


def produce_raw(settings: Settings, records: list[Record]) -> None:
    """Write (key, value[, headers]) records to the input topic, as any third-party producer
    would."""
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url, "linger.ms": 5})
    for key, value, *headers in records:
        producer.produce(
            settings.transactions_topic, value, key, headers=headers[0] if headers else None
        )
    assert producer.flush(30) == 0


def read_all(settings: Settings, topic: str, *, expect: int, timeout: float = 60) -> list[Any]:
    """Every committed record of `topic` from the beginning to its end, read once it holds
    `expect` records (or when `timeout` has passed): to the end as it stands then, never for
    a fixed window of time."""
    deadline = time.monotonic() + timeout
    while True:
        out = read_to_end(settings, topic)
        if len(out) >= expect or time.monotonic() >= deadline:
            return out
        time.sleep(0.2)


def topic_ends(settings: Settings, topic: str, isolation: str) -> dict[int, int]:
    """Each partition's end as a reader with this isolation level sees it: read_committed
    stops at the first open transaction, read_uncommitted at the high watermark."""
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_broker_url,
            "group.id": f"wm-{uuid.uuid4().hex}",
            "isolation.level": isolation,
        }
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in parts
        }
    finally:
        c.close()


def no_open_transaction(settings: Settings, topics: list[str], timeout: float = 10) -> None:
    """read_committed end == read_uncommitted end on every partition of `topics`. A
    transaction's markers are written just after its commit returns, so a difference may
    last a moment; one that lasts `timeout` seconds is a transaction left open."""
    deadline = time.monotonic() + timeout
    for topic in topics:
        while True:
            committed = topic_ends(settings, topic, "read_committed")
            uncommitted = topic_ends(settings, topic, "read_uncommitted")
            if committed == uncommitted:
                break
            assert time.monotonic() < deadline, (
                f"a transaction hangs open on {topic}: read_committed ends {committed}, "
                f"read_uncommitted ends {uncommitted}"
            )
            time.sleep(0.2)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a `fraudstream` subprocess use `settings`."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():  # every setting, by its env name
        if value is not None:
            env[name.upper()] = str(value)
    env.update(extra)
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `fraudstream ARGS` as its own process, output into `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fraudstream", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def scrape(url: str) -> dict[str, float]:
    """A Prometheus endpoint's samples, `name{labels}` -> value ({} while it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def sum_of(samples: dict[str, float], name: str) -> float:
    """The sum of a metric's samples over all its labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_detector(
    settings: Settings, expect: int, timeout: float = 120, engine: Any = None, metrics: Any = None
) -> Any:
    """Run the detector in this process (`engine`: the tutorial rule unless given; `metrics`:
    its `RuntimeMetrics`, to read after) until `expect` records are committed."""
    import threading

    from fraudstream.detection import Engine, tutorial_rules
    from fraudstream.stream import Processor

    if engine is None:
        engine = Engine(tutorial_rules(), version="tutorial-1")
    processor = Processor(settings, engine, metrics=metrics)
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)  # a guard, so a bug fails instead of hanging
    timer.start()
    try:
        stats = processor.run(stop, stop_after=expect)
    finally:
        timer.cancel()
    assert stats.total == expect, f"detector stopped at {stats.total} of {expect}"
    settled(settings)
    return stats


def settled(settings: Settings) -> None:
    """Wait until what a detector committed is visible to read_committed readers: its last
    commit returned before the broker wrote the transaction's markers, and until then a
    reader's end (`read_to_end`) can stop short of it (outputs, dead letters, and the
    group's internal topics: repartition, changelogs)."""
    internal = group_topics(settings, settings.detector_group)
    no_open_transaction(settings, [*settings.output_topics, *internal])


@contextlib.contextmanager
def running_dashboard(settings: Settings, log: Path, **env: str) -> Iterator[str]:
    """`fraudstream dashboard` as its own process on a free port (more settings in `env`),
    ready to serve; yields its base URL, stops it after."""
    import httpx

    port = free_port()
    proc = spawn(["dashboard"], env_for(settings, DASHBOARD_PORT=str(port), **env), log)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return bool(httpx.get(url + "/healthz", timeout=1).json()["ready"])
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=30, what="the dashboard to answer")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def dashboard(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """`fraudstream dashboard` as its own process on a free port; yields its base URL."""
    with running_dashboard(settings, tmp_path / "dashboard.log") as url:
        yield url


def read_to_end(settings: Settings, topic: str, timeout: float = 120) -> list[Any]:
    """Every committed record of `topic`, from the beginning to its current end."""
    consumer = Consumer(
        consumer_config(settings, "test-reader", group_id=f"reader-{uuid.uuid4().hex}")
    )
    out: list[Any] = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in parts
        }
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, -2) for p in todo])
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= ends[tp.partition]:
                    todo.discard(tp.partition)
    finally:
        consumer.close()
    return out


def model_rules(
    tmp_path: Path,
    *,
    count: int,
    seed: int,
    fraud_rate: float,
    gap_days: float,
    drift_window: int | None = None,
) -> Path:
    """rules/default.yaml plus a model trained here on `count` simulated transactions (its
    drift test over windows of `drift_window` decisions, when given)."""
    from fraudstream.detection import load_ruleset
    from fraudstream.evaluation import read_labels, read_transactions, train
    from fraudstream.generator.app import write_files

    default = REPO / "rules" / "default.yaml"
    history, verdicts = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    write_files(history, verdicts, count=count, seed=seed, profile="sim", fraud_rate=fraud_rate)
    txs, _ = read_transactions(str(history))
    extra = {} if drift_window is None else {"drift_window": drift_window}
    result = train(
        load_ruleset(default), txs, read_labels(str(verdicts)), gap_days=gap_days, **extra
    )
    model_file = tmp_path / "m.model"
    result.model.save(model_file)
    rules = tmp_path / "with-model.yaml"
    rules.write_text(
        default.read_text().replace(
            "lists_file: lists.yaml",
            f"lists_file: {REPO / 'rules' / 'lists.yaml'}\nmodel: {{file: {model_file}}}",
        )
    )
    return rules


def decided_records(settings: Settings, n: int, *, fraud_every: int, prefix: str) -> int:
    """Write `n` decided records straight to the legit and fraud topics, as a detector would
    (every `fraud_every`-th one fraud), as fast as the producer goes; returns the fraud count."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_broker_url,
            "linger.ms": 20,
            "enable.idempotence": True,
        }
    )
    fraud = 0
    for i in range(n):
        is_fraud = i % fraud_every == 0
        fraud += is_fraud
        value = msgspec.json.encode(
            {
                "id": f"{prefix}-{i}",
                "timestamp": 1_790_000_000_000 + i,
                "source": f"acct-{i % 500}",
                "target": f"shop-{i % 40}",
                "amount": 12.5,
                "currency": "EUR",
                "decision": {
                    "outcome": "fraud" if is_fraud else "legit",
                    "score": 0.95 if is_fraud else 0.01,
                    "reasons": [{"rule": "burst_1h", "reason": "7 payments in 1 h"}]
                    if is_fraud
                    else [],
                    "rules_version": "test",
                },
            }
        )
        topic = settings.fraud_topic if is_fraud else settings.legit_topic
        while True:
            try:
                producer.produce(topic, value, f"acct-{i % 500}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return fraud
