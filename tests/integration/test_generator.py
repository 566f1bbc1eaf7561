"""The generator against the real broker: its pacing loop on simulated time (no wall-clock
rates here: `benchmarks/generator_rate.py` measures those), and Ctrl-C."""

from __future__ import annotations

import bisect
import io
import math
import re
import signal
import threading
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from fraudstream.config import Settings
from fraudstream.detection import Engine, load_ruleset
from fraudstream.generator import Pacer, generate
from fraudstream.stream import Processor, ensure_topics
from tests.conftest import (
    REPO,
    SettingsFactory,
    env_for,
    produce_raw,
    read_all,
    run_detector,
    spawn,
    wait_for,
)


class SimulatedClock:
    """A monotonic clock that moves only when the generator sleeps (by exactly the time asked,
    plus `oversleep` seconds on every `every`-th sleep, as a busy machine would)."""

    def __init__(self, start: float = 1000.0, oversleep: float = 0.0, every: int = 0) -> None:
        self.now, self.oversleep, self.every, self.sleeps = start, oversleep, every, 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"asked to sleep {seconds} s: the loop would spin"
        self.sleeps += 1
        late = self.oversleep if self.every and self.sleeps % self.every == 0 else 0.0
        self.now += seconds + late


@pytest.mark.parametrize(
    ("rate", "count", "oversleep"),
    [(10, 40, 0.0), (1_000, 4_000, 0.0), (1_000, 4_000, 0.25), (50_000, 20_000, 0.01)],
)
def test_records_are_sent_when_due_and_a_late_wake_up_is_made_up(
    settings: Settings, rate: int, count: int, oversleep: float
) -> None:
    """The pacing loop itself, on simulated time: at every instant it sends, the total sent is
    exactly the number due by then (never early, never left behind after oversleeping)."""
    clock = SimulatedClock(oversleep=oversleep, every=7)
    start = clock.now
    sent_at: list[float] = []  # the simulated instant each transaction was made

    def wall_ms() -> int:
        sent_at.append(clock.now)
        return 1_790_000_000_000 + round((clock.now - start) * 1000)

    stats = generate(
        settings,
        rate=rate,
        count=count,
        seed=1,
        progress=None,
        clock=clock,
        sleep=clock.sleep,
        wall_ms=wall_ms,
    )
    assert (stats.sent, stats.failed) == (count, 0)
    assert len(sent_at) == count
    pacer = Pacer(rate, start)
    for k, t in enumerate(sent_at, 1):
        assert t >= pacer.time_of(k), f"record {k} sent {pacer.time_of(k) - t:.6f} s early"
    for t in sorted(set(sent_at)):
        assert bisect.bisect_right(sent_at, t) == min(count, pacer.due(t)), f"behind at {t}"
    if oversleep:  # late wake-ups happened, and the records due meanwhile went out at once
        assert max(Counter(sent_at).values()) >= rate * oversleep - 1
    else:  # on time: the last one goes out when due, so the run takes count / rate exactly
        assert stats.elapsed == pytest.approx(count / rate, rel=1e-9)
        assert stats.rate == pytest.approx(rate, rel=1e-9)
    msgs = read_all(settings, settings.transactions_topic, expect=count)
    assert len(msgs) == count  # every record landed, keyed by its source account
    assert all(m.key() is not None and m.key().decode() in m.value().decode() for m in msgs)


def test_max_rate_never_sleeps(settings: Settings) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s at rate max")

    stats = generate(
        settings,
        rate=math.inf,
        count=3_000,
        seed=2,
        progress=None,
        clock=lambda: 0.0,
        sleep=no_sleep,
    )
    assert (stats.sent, stats.failed) == (3_000, 0)


def test_ctrl_c_stops_the_generator_with_everything_flushed(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "generate.log"
    proc = spawn(["generate", "--rate", "2000", "--seed", "5"], env_for(settings), log)
    wait_for(lambda: "generated" in log.read_text(), timeout=30, what="a progress line")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, log.read_text()
    final = re.findall(r"generated ([\d,]+) tx", log.read_text())[-1]  # the closing report
    sent = int(final.replace(",", ""))
    assert sent > 0
    assert len(read_all(settings, settings.transactions_topic, expect=sent)) == sent


def test_a_simulation_goes_on_where_the_one_on_its_topic_left_off(settings: Settings) -> None:
    """A second `generate --profile sim` into the same topic (a second `make run`) goes on
    from the latest event time of the simulator's records there, with ids numbered on: none
    is reused, the labels' keys neither, and its traffic is its own, not the first run's
    replayed later. What others wrote in between (a transaction on the wall clock, one not
    even JSON) changes nothing."""
    n = 300
    generate(settings, rate=math.inf, count=n, seed=4, profile="sim", progress=None)
    produce_raw(
        settings,
        [
            (b"me", b'{"id":"by-hand","source":"me","target":"shop","amount":9.5}'),
            (b"x", b"not json"),
        ],
    )
    log = io.StringIO()
    generate(settings, rate=math.inf, count=n, seed=4, profile="sim", progress=log)
    assert "going on from there, with ids from s4-301" in log.getvalue()

    txs = [
        msgspec.json.decode(m.value()) if m.value() != b"not json" else {}
        for m in read_all(settings, settings.transactions_topic, expect=2 * n + 2)
    ]
    sim = [t for t in txs if str(t.get("id", "")).startswith("s4-")]
    first = sorted((t for t in sim if int(t["id"][3:]) <= n), key=lambda t: t["timestamp"])
    second = sorted((t for t in sim if int(t["id"][3:]) > n), key=lambda t: t["timestamp"])
    assert len({t["id"] for t in sim}) == len(sim) == 2 * n
    assert {t["id"] for t in second} == {f"s4-{i}" for i in range(n + 1, 2 * n + 1)}
    assert second[0]["timestamp"] > first[-1]["timestamp"]
    replayed = [
        (a["source"], a["amount"]) == (b["source"], b["amount"])
        for a, b in zip(first, second, strict=True)
    ]
    assert sum(replayed) < n // 10
    labels = read_all(settings, settings.labels_topic, expect=2 * n)
    assert len({m.key() for m in labels}) == 2 * n


def test_a_second_run_of_the_simulation_is_decided_as_it_arrives(
    make_settings: SettingsFactory,
) -> None:
    """The detector's input partitions keep their stream time across runs. A second run of
    the simulation that started at its first day again was history older than that: the
    payee stage held all but the partition with the lowest stream time until the new clock
    passed the old one, or until the partitions went idle. Here they never go idle in the
    second run (`PARTITION_IDLE_MS` 10 min), and all but the last few transactions of each
    partition (those beyond the lowest stream time of all) are decided."""
    settings = make_settings(topic_partitions=6)
    ensure_topics(settings)
    engine = lambda: Engine.from_ruleset(load_ruleset(REPO / "rules/default.yaml"))  # noqa: E731
    n = 3_000
    generate(settings, rate=math.inf, count=n, seed=8, profile="sim", progress=None)
    run_detector(settings, n, engine=engine())
    generate(settings, rate=math.inf, count=n, seed=8, profile="sim", progress=None)
    never_idle = settings.model_copy(update={"partition_idle_ms": 600_000})
    stop = threading.Event()
    guard = threading.Timer(60, stop.set)  # before the fix: never more than about n / 6
    guard.start()
    try:
        stats = Processor(never_idle, engine()).run(stop, stop_after=n - 20)
    finally:
        guard.cancel()
    assert stats.total >= n - 20, f"{stats.total} of the second run's {n} decided in 60 s"
