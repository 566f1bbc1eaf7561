"""`fraudstream run`: broker, generator, detector, alerts and dashboard, until Ctrl-C."""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import (
    Exit,
    StopOnSignal,
    command,
    hold,
    is_local,
    load,
    rate,
    settings_flags,
)
from fraudstream.errors import FraudstreamError, PortInUseError

if TYPE_CHECKING:
    import threading

    from fraudstream.broker import LocalBroker
    from fraudstream.cli._common import Subparsers
    from fraudstream.config import Settings


PAGE_WAIT_SAY_S = 10.0  # how often `run` says that it still waits for the dashboard


def _reachable(host: str) -> str:
    """The address to open for a dashboard bound to `host` (all interfaces: this machine)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _wait_until(
    ready: Callable[[], bool],
    waiting: str,
    procs: Sequence[subprocess.Popen[bytes]],
    stop: threading.Event,
) -> bool:
    """Wait until `ready()`, saying `waiting` every PAGE_WAIT_SAY_S. False if a component
    exited meanwhile or Ctrl-C came (the caller's loop handles both)."""
    started = time.monotonic()
    next_say = started + PAGE_WAIT_SAY_S
    while not stop.is_set() and all(p.poll() is None for p in procs):
        if ready():
            return True
        if time.monotonic() >= next_say:
            print(
                f"{waiting} ({time.monotonic() - started:.0f} s so far; its log is above)",
                file=sys.stderr,
            )
            next_say += PAGE_WAIT_SAY_S
        stop.wait(0.1)
    return False


def _page_answers(
    host: str,
    port: int,
    url: str,
    procs: Sequence[subprocess.Popen[bytes]],
    stop: threading.Event,
) -> bool:
    """Wait until the dashboard accepts connections at `host` (a `_reachable` one), so that
    the address `run` prints then opens at once (it printed it a second after starting the
    dashboard, which had not always bound its port by then)."""
    from fraudstream.broker import answers

    waiting = f"waiting for the dashboard to answer at {url}"
    return _wait_until(lambda: answers(port, host), waiting, procs, stop)


def _detector_joined(
    settings: Settings,
    detector: subprocess.Popen[bytes],
    procs: Sequence[subprocess.Popen[bytes]],
    stop: threading.Event,
) -> bool:
    """Wait until the detector is a member of its group: past its start's checks (a group
    built for other rules refuses it), so that `run` does not say it runs just before the
    detector stops."""
    from fraudstream.stream.clients import admin_client
    from fraudstream.stream.layout import group_members

    group = settings.detector_group
    admin = admin_client(settings)

    def joined() -> bool:
        try:
            return bool(group_members(settings, group, admin))
        except FraudstreamError:
            return False  # (the broker busy: asked again)

    waiting = f"waiting for the detector (pid {detector.pid}) to join group {group}"
    return _wait_until(joined, waiting, procs, stop)


def add_parser(sub: Subparsers) -> None:
    p = command(
        sub,
        "run",
        help="broker + generator + detector + alerts + dashboard, until Ctrl-C",
        handler=run,
        clean_stop=True,
        parents=[settings_flags()],
        examples=[
            ("everything, the page on http://127.0.0.1:5000/ (as `make run`)", "fraudstream run"),
            (
                "200 tx/s, the page on port 8080, the model's rules (once `make model` trained it)",
                "fraudstream run --rate 200 --port 8080 --rules rules/with-model.yaml",
            ),
        ],
        problem="a component exited by itself (the others were stopped)",
    )
    p.add_argument("--rate", type=rate, help="generator tx/s (default TRANSACTIONS_PER_SECOND)")
    p.add_argument("--port", dest="dashboard_port", type=int, help="dashboard port")
    p.add_argument(
        "--rules", dest="rules_file", help="the detector's rules file (default rules/default.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    """Everything at once, each app in its own process; Ctrl-C stops all of them cleanly."""
    settings = load(args)
    from fraudstream.broker import LocalBroker
    from fraudstream.detection import load_ruleset
    from fraudstream.locks import ProcessLock
    from fraudstream.stream import check_connection, ensure_topics

    load_ruleset(Path(settings.rules_file or "rules/default.yaml"))  # a bad file stops here
    page_host, page_port = _reachable(settings.dashboard_host), settings.dashboard_port
    shown = f"[{page_host}]" if ":" in page_host else page_host  # an IPv6 address in a URL
    url = f"http://{shown}:{page_port}/"
    lock = ProcessLock.acquire(
        "run", settings.kafka_broker_url, directory=settings.lock_dir, info=url
    )
    if lock is None:
        holder = ProcessLock.holder("run", settings.kafka_broker_url, directory=settings.lock_dir)
        pid, _, page = holder.partition(" ")
        raise FraudstreamError(
            f"fraudstream is already running here (pid {pid or '?'}, dashboard {page or '?'}) "
            f"on {settings.kafka_broker_url}; open its page, or stop it with Ctrl-C in its "
            "terminal first. Nothing was started"
        )
    hold(lock)
    from fraudstream.broker import answers

    if answers(page_port, page_host):  # else the page printed below could be another's
        raise PortInUseError(page_port, "Nothing was started")
    local, port = is_local(settings.kafka_broker_url)
    broker: LocalBroker | None = None  # set only when we start it, so we stop it after
    if local and not LocalBroker(port=port).status():
        try:
            check_connection(settings, timeout=2)  # somebody else's broker answers: use it
        except FraudstreamError:
            broker = LocalBroker(port=port)
            print(f"starting Kafka at {broker.bootstrap} …", file=sys.stderr)
            broker.start()
    ensure_topics(settings)
    env = (
        os.environ
        | {
            "KAFKA_BROKER_URL": settings.kafka_broker_url,
            "TRANSACTIONS_TOPIC": settings.transactions_topic,
            "LEGIT_TOPIC": settings.legit_topic,
            "FRAUD_TOPIC": settings.fraud_topic,
            "DLQ_TOPIC": settings.dlq_topic,
            "LABELS_TOPIC": settings.labels_topic,
            "DASHBOARD_PORT": str(settings.dashboard_port),
        }
        | ({"RULES_FILE": settings.rules_file} if settings.rules_file else {})
    )
    me = [sys.executable, "-m", "fraudstream"]
    rate_flag = (
        [] if args.rate is None else ["--rate", "max" if math.isinf(args.rate) else str(args.rate)]
    )
    procs = [
        subprocess.Popen([*me, "dashboard"], env=env, start_new_session=True),
        # stopped in reverse: the generator, the detector, then alerts sends what it decided
        subprocess.Popen([*me, "alerts"], env=env, start_new_session=True),
        detector := subprocess.Popen([*me, "detect"], env=env, start_new_session=True),
        subprocess.Popen(
            [*me, "generate", "--profile", "sim", *rate_flag], env=env, start_new_session=True
        ),
    ]
    stop = StopOnSignal().install()
    code = Exit.OK
    try:
        if _page_answers(page_host, page_port, url, procs, stop) and _detector_joined(
            settings, detector, procs, stop
        ):
            print(
                f"\n  fraudstream is running: open {url}   (Ctrl-C stops everything)\n",
                file=sys.stderr,
            )
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in procs):
                code = Exit.PROBLEM
                print("a component exited; stopping the others", file=sys.stderr)
                break
    finally:
        print("stopping … (Ctrl-C again to stop at once)", file=sys.stderr)
        try:
            for p in reversed(procs):  # generator first, so the detector sees its last records
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(20)
                    except subprocess.TimeoutExpired:
                        p.kill()
        except BaseException:  # a second Ctrl-C: at once, but nothing left running
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            if broker is not None:
                broker.stop(timeout=5)
            raise
        if broker is not None:
            print("stopping Kafka …", file=sys.stderr)
            broker.stop()
    print("stopped", file=sys.stderr)
    return code
