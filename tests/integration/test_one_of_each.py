"""One of each: a second detector of the same group and instance, or a second `run`, is
refused at start with a message, and the running one carries on unharmed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fraudstream.broker import free_port
from fraudstream.config import Settings
from fraudstream.generator import generate
from fraudstream.stream import committed_progress
from tests.chaos.test_faults import Detectors
from tests.conftest import env_for, spawn, wait_for

pytestmark = pytest.mark.kafka


def test_a_second_detector_of_the_same_instance_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    d = Detectors(settings, tmp_path)
    try:
        first = d.ready(d.start())
        second = d.start()
        assert second.wait(60) == 2
        said = second.log.read_text()  # type: ignore[attr-defined]
        assert "already runs on this machine" in said and "--instance 1" in said, said
        assert "Traceback" not in said
        generate(settings, rate=50_000, count=500, seed=3, progress=None)
        wait_for(lambda: committed_progress(settings) >= 500, what="the first to decide")
        assert first.poll() is None
        d.stop(first)
        assert "fenced" not in first.log.read_text()  # type: ignore[attr-defined]
    finally:
        d.cleanup()


def test_a_second_run_says_one_is_running_and_leaves_it_alone(
    settings: Settings, tmp_path: Path
) -> None:
    env = env_for(settings, DASHBOARD_PORT=str(free_port()), TRANSACTIONS_PER_SECOND="200")
    first = spawn(["run"], env, tmp_path / "run-1.log")
    try:
        wait_for(
            lambda: "fraudstream is running" in (tmp_path / "run-1.log").read_text(),
            timeout=90,
            what="the first run to start",
        )
        second = spawn(["run"], env, tmp_path / "run-2.log")
        assert second.wait(60) == 2
        said = (tmp_path / "run-2.log").read_text()
        assert "already running here" in said and "Traceback" not in said, said
        wait_for(lambda: committed_progress(settings) > 0, timeout=60, what="decisions")
        assert first.poll() is None, (tmp_path / "run-1.log").read_text()
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(90) == 0, (tmp_path / "run-1.log").read_text()
