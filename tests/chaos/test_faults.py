"""Fault scenarios, each ending with the one verifier (tests/chaos/verify.py).

The detector runs as its own process (`fraudstream detect`) with the tutorial rule, which needs
no state, so "equals a clean run" is exact per record. Kills happen when the group's committed
progress passes random points, not after fixed sleeps. Every random choice (kill points, and
the seeds of the aborts and commit timeouts a detector injects) comes from the test's
`fault_rng`, whose seed is printed; FAULT_SEED=<seed> replays it.
"""

from __future__ import annotations

import math
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from fraudstream.broker import LocalBroker, free_port
from fraudstream.config import Settings, load_settings
from fraudstream.generator import TutorialSource, generate
from fraudstream.stream import committed_progress, ensure_topics, group_lag
from fraudstream.stream.health import format_status, read_status
from tests.chaos.verify import decided, verify
from tests.conftest import (
    REPO,
    Record,
    SettingsFactory,
    env_for,
    model_rules,
    produce_raw,
    read_to_end,
    spawn,
    topic_ends,
    wait_for,
)

pytestmark = pytest.mark.chaos
TUTORIAL_RULES = str(REPO / "rules" / "tutorial.yaml")
# On a started detector's PYTHONPATH: seeds its injected faults (see its docstring).


class Detectors:
    """Start, kill, stop detector processes of one group; logs under tmp_path. With `rng`,
    each process's injected faults are seeded from it (and the seed is in its log)."""

    def __init__(
        self,
        settings: Settings,
        tmp_path: Path,
        rules: str = TUTORIAL_RULES,
        rng: random.Random | None = None,
        **env: str,
    ) -> None:
        self.settings, self.tmp_path, self.env, self.rules = settings, tmp_path, env, rules
        self.rng = rng
        self.procs: list[subprocess.Popen[bytes]] = []
        self.expected_exits: set[int] = set()  # pids stopped, killed or expected to exit

    def start(self, instance: str = "0", **extra: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"detect-{instance}-{len(self.procs)}.log"
        seeded: dict[str, str] = {}
        if self.rng is not None:
            seeded = {"FAULT_INJECTION_SEED": str(self.rng.randrange(2**32))}
        defaults = {
            "RULES_FILE": self.rules,
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        }
        env = env_for(self.settings, **(defaults | self.env | seeded | extra))
        proc = spawn(["detect", "--instance", instance], env, log)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def ready(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Wait until the process runs its loop (its signal handlers are in place)."""
        log: Path = proc.log  # type: ignore[attr-defined]
        wait_for(lambda: " reading " in log.read_text(), timeout=60, what=f"{log.name} to start")
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        self.expect_exit(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.log.read_text()  # type: ignore[attr-defined]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.expect_exit(proc)
        proc.kill()
        proc.wait(30)

    def expect_exit(self, proc: subprocess.Popen[bytes]) -> None:
        """`proc` is about to end on purpose: `check_alive` stops asking for it."""
        self.expected_exits.add(proc.pid)

    def check_alive(self) -> None:
        """Every process not stopped or killed on purpose still runs (a crash fails the test
        at once, with its log, instead of a wait timing out)."""
        for p in self.procs:
            if p.pid not in self.expected_exits and p.poll() is not None:
                raise AssertionError(
                    f"{p.log.name} exited {p.returncode}:\n{log_of(p)[-5000:]}"  # type: ignore[attr-defined]
                )

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)

    def logs(self) -> list[tuple[str, str]]:
        """(name, text) of every process's log, in start order."""
        return [(p.log.name, p.log.read_text()) for p in self.procs]  # type: ignore[attr-defined]

    def check_logs(self, allowed_errors: tuple[str, ...] = ()) -> None:
        """No process logged a traceback, or an error but those expected."""
        for name, text in self.logs():
            assert "Traceback" not in text, f"{name}:\n{text[-5000:]}"
            for line in text.splitlines():
                if re.search(r" (ERROR|CRITICAL) ", line):
                    assert any(a in line for a in allowed_errors), f"{name}: {line}"


def log_of(proc: subprocess.Popen[bytes]) -> str:
    return proc.log.read_text()  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def detectors(settings: Settings, tmp_path: Path) -> Iterator[Detectors]:
    d = Detectors(settings, tmp_path)
    yield d
    d.cleanup()


# The errors of a request that may answer when asked again: a timeout, or the broker's
# connection lost for a moment
_NOT_NOW = (KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)


def committed(settings: Settings) -> int:
    """Input records the group has committed; -1 while its offsets cannot be read. A detector
    killed inside a transaction that had sent its offsets leaves them pending until a new
    producer of its transactional.id (or the transaction timeout) aborts it, and a
    read_committed offset fetch waits for that (KIP-447) until it times out. A broker that
    stops answering for a while (seen in CI on 2026-12-07: both test brokers' JVMs silent for
    19 s at once, one fenced by its own controller) breaks the connection: asked again too,
    and the wait's own timeout still bounds it."""
    try:
        return committed_progress(settings)
    except KafkaException as exc:
        if exc.args[0].code() in _NOT_NOW:
            return -1
        raise


def wait_committed(
    settings: Settings, at_least: int, timeout: float = 180, d: Detectors | None = None
) -> None:
    """The group has committed `at_least` input records (while `d`'s processes run)."""
    _wait_running(
        lambda: committed(settings) >= at_least, timeout, f"{at_least} records committed", d
    )


def _wait_running(
    condition: Callable[[], bool], timeout: float, what: str, d: Detectors | None
) -> None:
    """`wait_for`, and with `d`: a process of `d`'s that exits unasked fails it at once
    (`check_alive`), and a timeout shows the end of each of their logs."""
    if d is None:
        wait_for(condition, timeout=timeout, what=what)
        return
    running = d

    def done() -> bool:
        running.check_alive()
        return condition()

    try:
        wait_for(done, timeout=timeout, what=what)
    except AssertionError as exc:
        if not str(exc).startswith("timed out"):
            raise
        tails = "".join(f"\n--- {name}:\n{_told(text)}" for name, text in running.logs())
        try:  # every task's last mark sent, by instance: who holds whom back
            status = "\n--- fraudstream status:\n" + format_status(read_status(running.settings))
        except Exception as status_exc:  # (the broker may be what failed)
            status = f"\n--- fraudstream status failed: {status_exc!r}"
        raise AssertionError(f"{exc}{tails}{status}") from None


def _told(text: str, limit: int = 6000) -> str:
    """The end of a detector's log without its progress lines but the last: what it said
    about its assignments, restores, marks and stalls."""
    lines = text.splitlines()
    told = [line for line in lines if " INFO fraudstream: decided " not in line]
    progress = [line for line in lines if " INFO fraudstream: decided " in line]
    return "\n".join(told + progress[-1:])[-limit:]


def wait_done(
    settings: Settings,
    n: int,
    timeout: float = 180,
    settle: float = 2.0,
    d: Detectors | None = None,
) -> None:
    """All `n` inputs read, and every later stage (if the rules have any) drained, and still
    so `settle` seconds later. An input partition at its end sends one more mark once it has
    been idle for PARTITION_IDLE_MS (1 s unless a test sets it): a detector stopped before
    that mark is read leaves it on the repartition topic, unread until its next run, which
    the verifier would count as lag. `settle` must exceed PARTITION_IDLE_MS."""
    wait_committed(settings, n, timeout, d)
    _wait_running(lambda: group_lag(settings) == 0, timeout, "the group to drain", d)
    time.sleep(settle)
    _wait_running(lambda: group_lag(settings) == 0, timeout, "the group to settle", d)


def settings_on(broker: LocalBroker, **extra: Any) -> Settings:
    """Settings for a broker of the test's own, with topics and a group of their own."""
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        _env_file=None,
        kafka_broker_url=broker.bootstrap,
        transactions_topic=f"s-{tag}.in",
        legit_topic=f"s-{tag}.legit",
        fraud_topic=f"s-{tag}.fraud",
        dlq_topic=f"s-{tag}.dlq",
        labels_topic=f"s-{tag}.labels",
        detector_group=f"s-{tag}",
        **extra,
    )


def sim_on_one_partition(make_settings: SettingsFactory, n: int, seed: int) -> Settings:
    """Settings whose input is one partition of `n` simulated transactions (5% fraud), so
    that the stateful oracle's order is the live one."""
    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    generate(
        settings, rate=math.inf, count=n, seed=seed, profile="sim", fraud_rate=0.05, progress=None
    )
    return settings


def one_run(d: Detectors, settings: Settings, n: int) -> subprocess.Popen[bytes]:
    """One detector of `d`, from its start until all `n` inputs are done, stopped cleanly."""
    try:
        proc = d.start()
        wait_done(settings, n, d=d)
        d.stop(proc)
    finally:
        d.cleanup()
    return proc


def test_sigkill_at_five_random_moments(
    settings: Settings, detectors: Detectors, fault_rng: random.Random
) -> None:
    n = 200_000
    assert generate(settings, rate=math.inf, count=n, seed=21, progress=None).sent == n
    moments = sorted(fault_rng.sample(range(n // 10, n * 9 // 10), 5))
    proc = detectors.start()
    for moment in moments:
        wait_committed(settings, moment, d=detectors)
        detectors.kill(proc)
        proc = detectors.start()
    wait_done(settings, n, d=detectors)
    detectors.stop(proc)
    detectors.check_logs()
    v = verify(settings)
    assert (v.valid, v.decided, v.dead) == (n, n, 0)


def test_random_aborts(settings: Settings, tmp_path: Path, fault_rng: random.Random) -> None:
    n = 50_000
    generate(settings, rate=math.inf, count=n, seed=22, progress=None)
    # Small transactions (500 records): about a hundred of them, a third aborted.
    d = Detectors(
        settings,
        tmp_path,
        rng=fault_rng,
        FAULT_ABORT_RATE="0.33",
        COMMIT_RECORDS="500",
    )
    proc = one_run(d, settings, n)
    assert "chaos: aborting" in log_of(proc)
    d.check_logs()
    v = verify(settings)
    assert (v.valid, v.decided) == (n, n)


RENEWED = "replacing the producer"  # the ERROR line of a producer replaced (renew)


def test_a_fatal_producer_error_replaces_the_producer(
    make_settings: SettingsFactory, tmp_path: Path, fault_rng: random.Random
) -> None:
    """A producer that fails fatally (as librdkafka's idempotence does when a restarted broker
    lost its sequence numbers: OUT_OF_ORDER_SEQUENCE_NUMBER) is replaced in-process, the
    state reloaded from the changelog and the input rewound, as Kafka Streams replaces its
    producer: the detector goes on (it used to exit), and the decisions of the stateful
    default rules equal a clean run's. Every eighth commit fails so (about 30 commits)."""
    n = 30_000
    settings = sim_on_one_partition(make_settings, n, seed=29)
    d = Detectors(
        settings,
        tmp_path,
        rules=str(DEFAULT_RULES),
        rng=fault_rng,
        FAULT_FATAL_EVERY="8",
        COMMIT_RECORDS="1000",
    )
    proc = one_run(d, settings, n)
    assert "the producer failed fatally" in log_of(proc)
    d.check_logs(allowed_errors=(RENEWED,))
    v = verify(settings, rules=DEFAULT_RULES)
    assert (v.valid, v.decided) == (n, n)


def open_transactions(settings: Settings, topics: list[str]) -> dict[tuple[str, int], range]:
    """Per partition of `topics`, the offsets written by a transaction still open (between
    the read_committed end and the high watermark)."""
    out = {}
    for topic in topics:
        committed = topic_ends(settings, topic, "read_committed")
        for p, end in topic_ends(settings, topic, "read_uncommitted").items():
            if end > committed[p]:
                out[(topic, p)] = range(committed[p], end)
    return out


def test_zombie_is_fenced_and_its_late_writes_never_appear(
    settings: Settings, tmp_path: Path, fault_rng: random.Random
) -> None:
    n, rate = 60_000, 4_000
    # Input keeps arriving while the zombie works, so it always has a transaction going.
    feeder = threading.Thread(
        target=generate,
        args=(settings,),
        kwargs={"rate": rate, "count": n, "seed": 23, "progress": None},
    )
    # A commit cut by SIGSTOP must not end in the commit watchdog's exit 3 after SIGCONT
    # (its deadline runs on while the process is stopped): this test is about fencing.
    d = Detectors(settings, tmp_path, rng=fault_rng, COMMIT_STUCK_TIMEOUT_MS="600000")
    outputs = [settings.legit_topic, settings.fraud_topic]
    try:
        zombie = d.ready(d.start("z"))
        feeder.start()
        wait_committed(settings, n // 10, d=d)
        # Writes in flight when stopped, proven rather than hoped for: stop the zombie at a
        # random moment, give the broker a second to write the markers of a commit that
        # had already completed (the stopped process can neither commit nor write), and
        # keep it stopped only if an output partition then still holds records of an open
        # transaction: records the zombie wrote and had not committed. Otherwise let it
        # run a little and try again. (Committed progress still moving would show a
        # transaction going on, not that it had written anything yet.)
        in_flight: dict[tuple[str, int], range] = {}
        for _ in range(40):
            time.sleep(fault_rng.uniform(0.05, 0.5))
            zombie.send_signal(signal.SIGSTOP)
            time.sleep(1.0)
            in_flight = open_transactions(settings, outputs)
            if in_flight:
                break
            zombie.send_signal(signal.SIGCONT)
        assert in_flight, "never caught the zombie with an open transaction in 40 tries"
        print(f"zombie stopped with writes in flight: {in_flight}")
        # As if on another machine (the lock that refuses a second "z" here is per machine):
        d.env["LOCK_DIR"] = str(tmp_path / "other-machine")
        replacement = d.start("z")  # same transactional.id: fences the zombie
        feeder.join(120)
        wait_done(settings, n, d=d)
        d.expect_exit(zombie)  # it wakes up fenced, and exits
        zombie.send_signal(signal.SIGCONT)
        more = 3_000  # work for whoever holds partitions after the zombie rejoins
        generate(settings, rate=math.inf, count=more, seed=24, progress=None)
        code = zombie.wait(90)
        assert code == 2, f"zombie exited {code}, not 2:\n{log_of(zombie)[-5000:]}"
        assert "fenced" in log_of(zombie)
        # it never took its transactional.id back from the replacement
        assert "replacing the producer" not in log_of(zombie)
        wait_done(settings, n + more, d=d)
        d.stop(replacement)
    finally:
        if feeder.ident is not None:
            feeder.join(120)
        d.cleanup()
    # The zombie's open transaction was aborted: none of the records it had in flight is
    # visible to a read_committed reader.
    for (topic, partition), offsets in in_flight.items():
        visible = [
            m.offset()
            for m in read_to_end(settings, topic)
            if m.partition() == partition and m.offset() in offsets
        ]
        assert not visible, f"the zombie's writes {topic}[{partition}] {visible} were committed"
    d.check_logs(allowed_errors=("fenced",))
    v = verify(settings)
    assert (v.valid, v.decided) == (n + more, n + more)


FUTURE = (
    b'{"source":"f","target":"g","amount":5.00,"currency":"EUR","timestamp":"2090-01-01T00:00:00Z"}'
)


def test_poison_pills_go_to_the_dead_letter_topic(settings: Settings, detectors: Detectors) -> None:
    source, rng = TutorialSource(25), random.Random(25)
    garbage = [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b'{"source":1}',
        b"[]",
        None,
        b'{"source":"a","target":"b","amount":-1,"currency":"EUR"}',
        b'{"source":"a","target":"b","amount":1,"currency":"XXZ"}',
        b'{"source":"a","target":"b","amount":NaN,"currency":"EUR"}',
        b'{"source":"a","target":"b","amount":1,"currency":"EUR","lat":1}',
        b'{"source":"a","target":"b","amount":1,"currency":"EUR","timestamp":"2026-01-01T00:00:00"}',
        FUTURE,  # valid, but beyond the wall clock: event_time_skew
    ]
    # Every partition starts with a null or an empty value, so the detector's first read
    # returns one: a Message's truth is its value's length, and such a record, first of its
    # batch, was once taken for "nothing read" and skipped, its offset committed past.
    records: list[Record] = [
        (f"junk-head-{j}".encode(), None if j % 2 else b"", []) for j in range(6)
    ]
    for i in range(30_000):
        # the producer's own headers, on some good and some bad records: kept either way
        headers = [("trace-id", f"t{i}".encode()), ("origin", b"test")] if i % 3 == 0 else []
        if rng.random() < 0.01:
            records.append((f"junk-{i}".encode(), rng.choice(garbage), headers))
        else:
            tx = source.next(1_790_000_000_000 + i)
            records.append((tx.source.encode(), msgspec.json.encode(tx), headers))
    produce_raw(settings, records)
    firsts = [
        m.value() for m in read_to_end(settings, settings.transactions_topic) if m.offset() == 0
    ]
    assert len(firsts) == settings.topic_partitions and set(firsts) <= {None, b""}, firsts
    proc = detectors.start()
    wait_committed(settings, len(records), d=detectors)
    detectors.stop(proc)
    detectors.check_logs()
    v = verify(settings)
    bad = sum(1 for k, *_ in records if k is not None and k.startswith(b"junk-"))
    assert v.decided + v.dead == v.inputs == len(records)
    assert v.dead == bad > 200
    classes = {dict(m.headers())["error.class"] for m in read_to_end(settings, settings.dlq_topic)}
    assert {b"not_json", b"schema", b"null_value", b"event_time_skew"} <= classes, classes


def test_rebalance_add_stop_kill_restart(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(topic_partitions=6)
    ensure_topics(settings)
    n = 150_000
    # Input keeps arriving while instances come and go, so every change moves live work.
    feeder = threading.Thread(
        target=generate,
        args=(settings,),
        kwargs={"rate": 15_000, "count": n, "seed": 26, "progress": None},
    )
    d = Detectors(settings, tmp_path)
    try:
        first = d.ready(d.start("w0"))
        feeder.start()
        wait_committed(settings, n // 10, d=d)
        second, third = d.ready(d.start("w1")), d.ready(d.start("w2"))
        wait_committed(settings, 3 * n // 10, d=d)
        d.stop(second)  # clean leave
        wait_committed(settings, n // 2, d=d)
        d.kill(third)  # crash
        wait_committed(settings, 6 * n // 10, d=d)
        third = d.ready(d.start("w2"))
        feeder.join(60)
        wait_done(settings, n, d=d)
        d.stop(first)
        d.stop(third)
    finally:
        feeder.join(60)
        d.cleanup()
    v = verify(settings)
    assert (v.valid, v.decided) == (n, n)


DEFAULT_RULES = REPO / "rules" / "default.yaml"


# Kills alone (rates 0 and 0) were a third variant: both below SIGKILL three times too, so it
# proved nothing they do not, for 41 s of the suite's budget.
@pytest.mark.parametrize(("abort_rate", "timeout_rate"), [("0.33", "0"), ("0", "0.03")])
def test_stateful_rules_survive_kills_and_aborts_through_the_changelog(
    make_settings: SettingsFactory,
    tmp_path: Path,
    abort_rate: str,
    timeout_rate: str,
    fault_rng: random.Random,
) -> None:
    """The default rules keep per-account and per-target state; it is written to the
    changelog in each transaction and restored after every SIGKILL (three, at random
    moments), so the decisions equal a clean run's exactly: nothing counted twice, nothing
    forgotten. With, on top: one transaction in three aborted; or one commit in 33 "timing
    out" past its retries (committed or not, at random), which replaces the producer and
    reloads the state in-process."""
    n = 60_000
    settings = sim_on_one_partition(make_settings, n, seed=28)
    d = Detectors(
        settings,
        tmp_path,
        rules=str(DEFAULT_RULES),
        rng=fault_rng,
        FAULT_ABORT_RATE=abort_rate,
        FAULT_COMMIT_TIMEOUT_RATE=timeout_rate,
        COMMIT_RECORDS="1000",
    )
    # Per process, the group's committed progress when it started and when it ended, if
    # known: one that started with state committed and committed more itself must have
    # restored that state first.
    spans: list[tuple[int, int]] = []
    try:
        if timeout_rate != "0":
            # At least one timeout, forced: a first detector whose every commit times out
            # (committing first or not, at random), SIGKILLed once it has replaced its
            # producer; the others time out at the scenario's rate.
            first = d.start(FAULT_COMMIT_TIMEOUT_RATE="1")
            wait_for(
                lambda: first.poll() is not None or RENEWED in log_of(first),
                timeout=120,
                what="the first detector to replace its producer",
            )
            assert first.poll() is None, log_of(first)
            d.kill(first)
            spans.append((0, 0))  # (whether it committed is unknown: not checked)
        start = -1 if spans else 0  # unknown after the forced timeouts: not checked
        proc = d.start()
        for moment in sorted(fault_rng.sample(range(n // 10, n * 9 // 10), 3)):
            wait_committed(settings, moment, d=d)
            at = committed(settings)  # the process runs: its offsets settle at each commit
            d.kill(proc)
            spans.append((start, at))
            start = at
            proc = d.start()
        wait_done(settings, n, d=d)
        d.stop(proc)
        spans.append((start, n))
    finally:
        d.cleanup()
    logs = d.logs()
    for (name, text), (began, _ended) in zip(logs, spans, strict=True):
        # a process that started with state and committed decisions of its own (its log
        # says so: the group's offsets alone cannot, as the killed one's last commit may
        # still land after the kill) must have restored that state first
        if began > 0 and re.search(r"(decided|stopped after) [1-9]", text):
            assert "restored" in text, f"{name} did not restore the state:\n{text[-3000:]}"
    if abort_rate != "0":
        assert any("chaos: aborting" in text for _, text in logs), "no transaction aborted"
    if timeout_rate != "0":
        assert RENEWED in logs[0][1]
        renewals = sum(text.count(RENEWED) for _, text in logs)
        print(f"commits timed out past their retries: {renewals}")
    d.check_logs(allowed_errors=(RENEWED,) if timeout_rate != "0" else ())
    v = verify(settings, rules=DEFAULT_RULES)
    assert (v.valid, v.decided) == (n, n)


STUCK = "a Kafka transaction commit has been stuck"  # the commit watchdog's ERROR line


def test_broker_killed_and_restarted_mid_run(tmp_path: Path) -> None:
    """With the stateful default rules (account and payee stages, changelogs), on one input
    partition so that the oracle's order is the live one. The only errors allowed are the
    commit watchdog's and a fatally failed producer's replacement."""
    broker = LocalBroker(port=free_port(), data_dir=tmp_path / "kafka")
    broker.start()
    settings = settings_on(broker, topic_partitions=1)
    # (a commit whose records the broker lost, below, leaves the output a gap it writes on
    # without once idle: sooner than by default, within this test's wait)
    d = Detectors(
        settings,
        tmp_path,
        rules=str(DEFAULT_RULES),
        COMMIT_STUCK_TIMEOUT_MS="15000",
        OUTPUT_GAP_TIMEOUT_MS="10000",
    )
    try:
        ensure_topics(settings)
        n = 100_000
        generate(
            settings, rate=math.inf, count=n, seed=27, profile="sim", fraud_rate=0.05, progress=None
        )
        proc = d.start()
        wait_committed(settings, n // 4, d=d)
        broker.kill()
        broker.start()

        # The detector rides it out, or exits with code 3 saying a commit is stuck in
        # librdkafka past COMMIT_STUCK_TIMEOUT_MS (the README's promise); then, and only
        # then, it is restarted, as an orchestrator would. Any other exit fails the test.
        def progressed() -> bool:
            nonlocal proc
            code = proc.poll()
            if code is not None:
                text = log_of(proc)
                assert code == 3 and STUCK in text, (
                    f"the detector exited {code} after the broker restart, not 3 with the "
                    f"commit watchdog's message:\n{text[-5000:]}"
                )
                proc = d.start()
            return committed(settings) >= n and group_lag(settings) == 0

        wait_for(progressed, timeout=240, what="all records committed after the broker restart")
        # and the input's idle mark read too, as in every other scenario (see wait_done): a
        # stop before it is read leaves it on `by-target`, which the verifier counts as lag
        wait_done(settings, n)
        d.stop(proc)
        # A restarted broker may have lost the producer's sequence numbers: librdkafka then
        # fails it fatally (OUT_OF_ORDER_SEQUENCE_NUMBER) and the detector replaces it, as in
        # test_a_fatal_producer_error_replaces_the_producer (seen in CI on 2026-12-03: the
        # replacement's ERROR line, then all 100,000 decided)
        d.check_logs(allowed_errors=(STUCK, RENEWED))
        try:
            v = verify(settings, rules=DEFAULT_RULES)
            assert (v.valid, v.decided) == (n, n)
        except AssertionError:
            if _commit_markers_skipped(broker.log_file, f"{settings.detector_group}-0"):
                # (the restarted detector says which inputs it never decided when the lost
                # commit's offsets stayed committed: noted, not required, as the markers the
                # broker skipped may have been the offsets' too)
                said = [
                    line
                    for _, text in d.logs()
                    for line in text.splitlines()
                    if "committed offset is past its state" in line
                ]
                pytest.xfail(
                    "the restarted broker's transaction coordinator completed a commit "
                    "without writing its markers (\"Couldn't find leader endpoint ... likely "
                    "deleted already\"): Kafka's defect KAFKA-20734, docs/delivery.md; the "
                    f"detector said: {said or 'nothing'}"
                )
            raise
    finally:
        d.cleanup()
        broker.stop()


def _commit_markers_skipped(broker_log: Path, transactional_id: str) -> bool:
    """Whether the broker's transaction coordinator, after its restart, completed a commit of
    `transactional_id` without writing the commit markers: it found no leader for the
    transaction's partitions (a single node killed and restarted leaves them leaderless for
    seconds) and took them for deleted topics. The records of that committed transaction are
    then aborted with the next one, while its offsets (whose marker was written before the
    kill) stay committed: those inputs are never decided (docs/delivery.md, 2026-12-07)."""
    text = broker_log.read_text(errors="replace")
    committing = f"transactionalId={transactional_id}, coordinatorEpoch="
    sending = [ln for ln in text.splitlines() if "Sending txn markers for" in ln]
    return any(committing in ln and "result=COMMIT" in ln for ln in sending) and (
        f"while trying to send transaction markers for {transactional_id}," in text
    )


def _three_then_one(
    three: Settings,
    tmp_path: Path,
    rules: str,
    *,
    n: int,
    rate: int,
    seed: int,
    rng: random.Random,
) -> dict[str, bytes]:
    """Three detector processes decide `n` simulated transactions while they arrive (they
    join, one is SIGKILLed at a random point and restarted); then one clean process decides
    the same input into other topics. Verifies the three's output against the clean one's and
    returns the clean one's decisions."""
    feeder = threading.Thread(
        target=generate,
        args=(three,),
        kwargs={
            "rate": rate,
            "count": n,
            "seed": seed,
            "profile": "sim",
            "fraud_rate": 0.05,
            "progress": None,
        },
    )
    (tmp_path / "three").mkdir()
    # a partition counts as idle only after 5 s at its end: never while the feeder runs
    d = Detectors(
        three, tmp_path / "three", rules=rules, COMMIT_RECORDS="2000", PARTITION_IDLE_MS="5000"
    )
    try:
        feeder.start()
        workers = [d.ready(d.start("w0"))]
        wait_committed(three, n // 10, d=d)
        workers += [d.ready(d.start("w1")), d.ready(d.start("w2"))]
        wait_committed(three, rng.randrange(n // 4, n * 3 // 4), d=d)
        d.kill(workers.pop(1))  # a crash mid-run: its tasks move, their state is restored
        workers.append(d.ready(d.start("w1")))
        feeder.join(120)
        wait_done(three, n, settle=6.0, d=d)  # PARTITION_IDLE_MS is 5 s here
        for w in workers:
            d.stop(w)
    finally:
        feeder.join(120)
        d.cleanup()
    d.check_logs()
    reference = _decided_alone(three, tmp_path, rules, n)
    # what the group has committed past on the repartition topic is deleted as it goes
    assert _low_watermarks(three, f"{three.detector_group}.by-target") > 0
    return reference


def _decided_alone(settings: Settings, tmp_path: Path, rules: str, n: int) -> dict[str, bytes]:
    """One clean process decides the `n` inputs of `settings` into other topics; checks that
    `settings`' outputs equal them and returns them."""
    tag = uuid.uuid4().hex[:8]
    one = settings.model_copy(
        update={
            "detector_group": f"one-{tag}",
            "legit_topic": f"t1-{tag}.legit",
            "fraud_topic": f"t1-{tag}.fraud",
            "dlq_topic": f"t1-{tag}.dlq",
        }
    )
    ensure_topics(one)
    (tmp_path / "one").mkdir()
    clean = Detectors(one, tmp_path / "one", rules=rules)
    try:
        proc = clean.start()
        wait_done(one, n, d=clean)
        clean.stop(proc)
    finally:
        clean.cleanup()
    clean.check_logs()
    reference = decided(one)
    assert len(reference) == n
    v = verify(settings, reference=reference)
    assert (v.valid, v.decided) == (n, n)
    return reference


def _low_watermarks(settings: Settings, topic: str) -> int:
    c = Consumer({"bootstrap.servers": settings.kafka_broker_url, "group.id": "low-watermarks"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[0]
            for p in parts
        )
    finally:
        c.close()


def test_decisions_are_the_same_with_one_or_three_processes(
    make_settings: SettingsFactory, tmp_path: Path, fault_rng: random.Random
) -> None:
    """State keyed by payee (mule fan-in) lives in a stage fed by a repartition topic and
    released in event-time order, so three processes that join, crash and rejoin while the
    input arrives decide every transaction exactly as one clean process does later, byte for
    byte, on the same input."""
    three = make_settings(topic_partitions=6)
    ensure_topics(three)
    reference = _three_then_one(
        three, tmp_path, str(DEFAULT_RULES), n=80_000, rate=8_000, seed=30, rng=fault_rng
    )
    assert any(b'"rule":"mule_fan_in"' in v for v in reference.values())


def _holds(proc: subprocess.Popen[bytes], d: Detectors) -> dict[str, str]:
    """The partitions of each stage the process holds ("0,1,2"), from its last such log
    line."""
    d.check_alive()
    lines = [line for line in log_of(proc).splitlines() if "; holds " in line]
    if not lines:
        return {}
    held = lines[-1].split("; holds ", 1)[1].split("; ")
    stages: dict[str, str] = {}
    for h in held:
        name, parts = h.rsplit(" of ", 1)[0].split(" ", 1)
        stages[name] = parts
    return stages


def test_kafkas_new_group_protocol_spreads_every_stage_whenever_the_group_changes(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """With KAFKA_GROUP_PROTOCOL=consumer (KIP-848) the broker's `range` assignor gives each
    process the same share of every stage: when a second detector joins, and again when it
    is restarted alone (the classic group's cooperative-sticky assignor moved partitions by
    count there, whole stages at a time: docs/scaling.md). The decisions equal one clean
    process's, byte for byte."""
    settings = make_settings(topic_partitions=6)
    ensure_topics(settings)
    n = 40_000
    feeder = threading.Thread(
        target=generate,
        args=(settings,),
        kwargs={
            "rate": 8_000,
            "count": n,
            "seed": 31,
            "profile": "sim",
            "fraud_rate": 0.05,
            "progress": None,
        },
    )
    rules = str(DEFAULT_RULES)
    d = Detectors(
        settings,
        tmp_path,
        rules=rules,
        KAFKA_GROUP_PROTOCOL="consumer",
        # the broker's settings under this protocol (librdkafka refuses them): unset
        KAFKA_SESSION_TIMEOUT_MS="",
        KAFKA_HEARTBEAT_INTERVAL_MS="",
        COMMIT_RECORDS="2000",
        PARTITION_IDLE_MS="5000",
    )
    stages = ("input", "by-target", "ordered")
    every = {k: "0,1,2,3,4,5" for k in stages}
    # `range`: the same partition numbers of every stage to each member
    halves = sorted([{k: "0,1,2" for k in stages}, {k: "3,4,5" for k in stages}], key=str)
    try:
        feeder.start()
        first = d.ready(d.start("w0"))
        wait_for(
            lambda: _holds(first, d) == every,
            timeout=30,
            what="w0 to hold every partition",
        )
        wait_committed(settings, n // 10, d=d)
        second = d.ready(d.start("w1"))
        both = (first, second)
        wait_for(
            lambda: sorted((_holds(p, d) for p in both), key=str) == halves,
            timeout=60,
            what="w0 and w1 to hold 0-2 and 3-5 of every stage",
        )
        wait_committed(settings, n // 3, d=d)
        d.stop(second)
        wait_for(
            lambda: _holds(first, d) == every,
            timeout=60,
            what="w0 to take every partition back",
        )
        second = d.ready(d.start("w1"))  # restarted alone
        both = (first, second)
        wait_for(
            lambda: sorted((_holds(p, d) for p in both), key=str) == halves,
            timeout=60,
            what="w0 and w1 to hold 0-2 and 3-5 of every stage again",
        )
        feeder.join(120)
        wait_done(settings, n, settle=6.0, d=d)  # PARTITION_IDLE_MS is 5 s here
        d.stop(first)
        d.stop(second)
    finally:
        feeder.join(120)
        d.cleanup()
    d.check_logs()
    _decided_alone(settings, tmp_path, rules, n)


def test_with_the_model_and_label_feedback_too(
    make_settings: SettingsFactory, tmp_path: Path, fault_rng: random.Random
) -> None:
    """With the model on, payee and merchant features and the label verdicts that feed them
    go through two keyed stages (by payee, by merchant): still byte for byte one process's."""
    rules = model_rules(tmp_path, count=30_000, seed=12, fraud_rate=0.05, gap_days=1)
    three = make_settings(topic_partitions=6)
    ensure_topics(three)
    reference = _three_then_one(
        three, tmp_path, str(rules), n=30_000, rate=4_000, seed=31, rng=fault_rng
    )
    assert any(b'"rule":"model"' in v for v in reference.values())
