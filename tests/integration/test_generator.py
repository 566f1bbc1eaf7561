"""The generator against the real broker: its pacing loop on simulated time (no wall-clock
rates here: `benchmarks/generator_rate.py` measures those), and Ctrl-C."""

from __future__ import annotations

import bisect
import math
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from fraudstream.config import Settings
from fraudstream.generator import Pacer, generate
from tests.conftest import env_for, read_all, spawn, wait_for


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
