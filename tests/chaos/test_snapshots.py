"""Restart from a local snapshot plus the changelog's tail: killed at random moments, often
while a snapshot is half written, the detector still decides exactly as a clean run would."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from fraudstream.generator import generate
from fraudstream.stream import ensure_topics
from tests.chaos.test_faults import (
    Detectors,
    log_of,
    sim_on_one_partition,
    wait_committed,
    wait_done,
)
from tests.chaos.verify import verify
from tests.conftest import REPO, SettingsFactory

pytestmark = pytest.mark.chaos
DEFAULT_RULES = REPO / "rules" / "default.yaml"


def test_killed_while_writing_snapshots(
    make_settings: SettingsFactory, tmp_path: Path, fault_rng: random.Random
) -> None:
    n = 60_000
    settings = sim_on_one_partition(make_settings, n, seed=29)
    d = Detectors(
        settings,
        tmp_path,
        rules=str(DEFAULT_RULES),
        rng=fault_rng,
        STATE_DIR=str(tmp_path / "state"),
        SNAPSHOT_INTERVAL_MS="200",  # snapshots all the time
        FAULT_SNAPSHOT_WRITE_DELAY_MS="150",  # each half written for 150 ms
        COMMIT_RECORDS="2000",
    )
    logs = []
    try:
        proc = d.start()
        for moment in sorted(fault_rng.sample(range(n // 10, n * 9 // 10), 4)):
            wait_committed(settings, moment, d=d)
            d.kill(proc)
            logs.append(log_of(proc))
            proc = d.start()
        wait_done(settings, n, d=d)
        d.stop(proc)
        logs.append(log_of(proc))
    finally:
        d.cleanup()
    restarts = logs[1:]
    assert any("from local snapshots" in text for text in restarts), restarts[-1]
    assert list((tmp_path / "state").rglob("*.snapshot")), "no snapshot was ever completed"
    v = verify(settings, rules=DEFAULT_RULES)
    assert (v.valid, v.decided) == (n, n)


def test_a_snapshot_of_a_reset_group_is_discarded(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """After `reset --group`, the changelog topics are new: old snapshots must not be used.
    (And the snapshots' and purges' admin clients say nothing on their way out: librdkafka's
    "Purging 1 unserved events from background queue" was in `make run`'s output.)"""
    import subprocess
    import sys

    from tests.conftest import env_for

    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    n = 5_000
    generate(settings, rate=math.inf, count=n, seed=30, profile="sim", progress=None)
    env = {"STATE_DIR": str(tmp_path / "state"), "SNAPSHOT_INTERVAL_MS": "100"}
    d = Detectors(settings, tmp_path, rules=str(DEFAULT_RULES), **env)
    try:
        proc = d.start()
        wait_done(settings, n, d=d)
        d.stop(proc)
        assert list((tmp_path / "state").rglob("*.snapshot"))
        first = log_of(proc)
        assert "state snapshot of" in first and "%6|" not in first, first[-3000:]
        reset = ["reset", "--group", settings.detector_group, "--yes"]
        done = subprocess.run(
            [sys.executable, "-m", "fraudstream", *reset],
            env=env_for(settings),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        proc = d.start()
        wait_done(settings, n, d=d)
        d.stop(proc)
        assert "belongs to another changelog topic: discarded" in log_of(proc)
    finally:
        d.cleanup()
