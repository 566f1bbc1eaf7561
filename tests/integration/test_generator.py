"""The generator's pacing, measured against the real broker."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from fraudstream.config import Settings
from fraudstream.generator import generate
from tests.conftest import env_for, read_all, spawn, wait_for


@pytest.mark.parametrize(("rate", "count"), [(10, 40), (1_000, 4_000), (50_000, 150_000)])
def test_achieved_rate_is_within_two_percent_of_target(
    settings: Settings, rate: int, count: int
) -> None:
    stats = generate(settings, rate=rate, count=count, seed=1, progress=None)
    assert (stats.sent, stats.failed) == (count, 0)
    assert abs(stats.rate - rate) / rate < 0.02, f"achieved {stats.rate:.1f} tx/s"
    if count <= 4_000:  # every record landed, keyed by its source account
        msgs = read_all(settings, settings.transactions_topic, expect=count)
        assert len(msgs) == count
        assert all(m.key() is not None and m.key().decode() in m.value().decode() for m in msgs)


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
