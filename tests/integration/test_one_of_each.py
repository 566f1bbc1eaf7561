"""One of each: a second detector of the same group and instance, or a second `run`, is
refused at start with a message, and the running one carries on unharmed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fraudstream.broker import free_port
from fraudstream.config import Settings
from fraudstream.generator import generate
from fraudstream.stream import committed_progress
from fraudstream.stream.layout import group_members
from tests.chaos.test_faults import Detectors
from tests.conftest import REPO, alive, children_of, env_for, spawn, wait_for

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


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="another machine is played by a UTS namespace (unshare -u), which needs root",
)
def test_the_same_instance_on_another_machine_is_refused(
    settings: Settings, tmp_path: Path
) -> None:
    """The lock sees one machine; the group sees all: a detector whose group already has a
    member of its name from another host is refused, and that one is left alone."""
    d = Detectors(settings, tmp_path)
    try:
        first = d.ready(d.start())
        wait_for(
            lambda: len(group_members(settings, settings.detector_group)) == 1,
            timeout=60,
            what="the first detector to join its group",
        )
        env = env_for(settings, RULES_FILE=d.rules, LOCK_DIR=str(tmp_path / "other-locks"))
        log = tmp_path / "other-machine.log"
        with open(log, "wb") as out:
            other = subprocess.Popen(
                [
                    *("unshare", "-u", "sh", "-c", 'hostname other-box && exec "$@"', "sh"),
                    *(sys.executable, "-m", "fraudstream", "detect", "--instance", "0"),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        assert other.wait(60) == 2
        said = log.read_text()
        assert f"already runs on {os.uname().nodename}" in said, said
        assert "--instance 1" in said and "Traceback" not in said, said
        generate(settings, rate=50_000, count=500, seed=4, progress=None)
        wait_for(lambda: committed_progress(settings) >= 500, what="the first to decide")
        assert first.poll() is None
        d.stop(first)
        assert "fenced" not in first.log.read_text()  # type: ignore[attr-defined]
    finally:
        d.cleanup()


def test_a_second_run_says_one_is_running_and_leaves_it_alone(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    env = env_for(settings, DASHBOARD_PORT=str(port), TRANSACTIONS_PER_SECOND="200")
    first = spawn(["run"], env, tmp_path / "run-1.log")
    try:
        wait_for(
            lambda: "fraudstream is running" in (tmp_path / "run-1.log").read_text(),
            timeout=90,
            what="the first run to start",
        )
        # the address it prints opens at once: it says so only once the page answers
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        second = spawn(["run"], env, tmp_path / "run-2.log")
        assert second.wait(60) == 2
        said = (tmp_path / "run-2.log").read_text()
        assert "already running here" in said and "Traceback" not in said, said
        wait_for(lambda: committed_progress(settings) > 0, timeout=60, what="decisions")
        assert first.poll() is None, (tmp_path / "run-1.log").read_text()
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(90) == 0, (tmp_path / "run-1.log").read_text()


def test_a_run_whose_page_port_is_taken_says_so_and_starts_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """Another program on the dashboard's port: `run` would print an address that opens
    that program's page, and its own dashboard would fail a moment later; it refuses first."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        env = env_for(settings, DASHBOARD_PORT=str(port))
        run = spawn(["run"], env, tmp_path / "run.log")
        assert run.wait(60) == 2
    said = (tmp_path / "run.log").read_text()
    assert f"port {port} is in use" in said and "Nothing was started" in said, said
    assert "Traceback" not in said and "fraudstream is running" not in said, said


def test_a_run_whose_detector_refuses_its_group_never_says_it_runs(
    settings: Settings, tmp_path: Path
) -> None:
    """The group was built for other rules (a payee stage): the detector refuses it a moment
    after it starts. `run` said "fraudstream is running" when its page answered first, then
    that a component exited; it now says so only once the detector is in its group."""
    from fraudstream.detection import Engine, load_ruleset
    from tests.conftest import produce_raw, run_detector

    produce_raw(settings, [(b"a", b'{"source":"a","target":"b","amount":5,"currency":"EUR"}')])
    run_detector(settings, 1, engine=Engine.from_ruleset(load_ruleset(REPO / "rules/default.yaml")))
    env = env_for(
        settings,
        DASHBOARD_PORT=str(free_port()),
        TRANSACTIONS_PER_SECOND="200",
        RULES_FILE=str(REPO / "rules" / "tutorial.yaml"),  # one stage: not this group's shape
    )
    run = spawn(["run"], env, tmp_path / "run.log")
    assert run.wait(90) == 1
    said = (tmp_path / "run.log").read_text()
    assert "was built for another topology" in said and "a component exited" in said, said
    assert "fraudstream is running" not in said and "Traceback" not in said, said


def test_a_run_stopped_by_one_signal_delivered_twice_stops_every_component(
    settings: Settings, tmp_path: Path
) -> None:
    """`timeout make run` (or a supervisor) delivers one stop twice within moments: `timeout`
    signals its process group and `make` passes SIGTERM on to `run`. `run` took the second as
    "stop at once" and left its dashboard, alerts and detector running, orphaned. Two signals
    together are now one stop, done cleanly."""
    env = env_for(settings, DASHBOARD_PORT=str(free_port()), TRANSACTIONS_PER_SECOND="200")
    log = tmp_path / "run.log"
    run = spawn(["run"], env, log)
    try:
        wait_for(
            lambda: "fraudstream is running" in log.read_text(), timeout=90, what="run to start"
        )
        children = children_of(run.pid)
        assert len(children) == 4, children  # dashboard, alerts, detector, generator
        run.send_signal(signal.SIGTERM)
        # the second once the first was taken (two sent at once would be merged by the OS)
        wait_for(lambda: "stopping" in log.read_text(), timeout=30, what="run to start stopping")
        run.send_signal(signal.SIGTERM)
        assert run.wait(90) == 0, log.read_text()
    finally:
        if run.poll() is None:
            run.kill()
    said = log.read_text()
    assert "stopped" in said and "Traceback" not in said, said
    assert [pid for pid in children if alive(pid)] == []
