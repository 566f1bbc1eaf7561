"""`fraudstream detect`: decide legit or fraud for each transaction, in one process or N."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import (
    Exit,
    StopOnSignal,
    command,
    hold,
    load,
    processes,
    settings_flags,
)
from fraudstream.config import Settings
from fraudstream.errors import ConfigError

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

    from fraudstream.cli._common import Subparsers

log = logging.getLogger("fraudstream")


def add_parser(sub: Subparsers) -> None:
    det = command(
        sub,
        "detect",
        help="decide legit or fraud for each transaction",
        handler=run,
        clean_stop=True,
        parents=[settings_flags()],
        examples=[
            ("with rules/default.yaml, until Ctrl-C", "fraudstream detect"),
            (
                "with the model's rules (once `make model` trained it), two processes in one group",
                "fraudstream detect --rules rules/with-model.yaml --workers 2",
            ),
            (
                "a second instance of the default group (on this or another machine)",
                "fraudstream detect --instance 1",
            ),
        ],
        description="Decide legit or fraud for each transaction, until Ctrl-C or SIGTERM (exit "
        "0 once the last decisions are committed). With --workers N it exits with the highest "
        "exit code of its N processes.",
    )
    det.add_argument("--group", dest="detector_group", help="consumer group id")
    det.add_argument("--instance", dest="detector_instance", help="this instance's name")
    det.add_argument(
        "--batch-size", type=int, help="records per consume call (BATCH_SIZE, default 4000)"
    )
    det.add_argument(
        "--commit-interval-ms",
        type=int,
        help="commit a transaction at least this often (COMMIT_INTERVAL_MS, default 50)",
    )
    det.add_argument(
        "--commit-records",
        type=int,
        help="or after this many records (COMMIT_RECORDS, default 20000)",
    )
    det.add_argument("--rules", dest="rules_file", help="rules file (default rules/default.yaml)")
    det.add_argument(
        "--workers",
        type=processes,
        default=1,
        help="run N detector processes in one consumer group (instances 0..N-1)",
    )


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    if args.workers > 1:
        return _workers(args.workers, without_option(args.argv, "--workers"), settings)
    return _detect(settings)


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` without `option` and its value, given as `--option N` or `--option=N` (or as an
    abbreviation argparse accepted, like `--work N`), as often as it is given."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":  # what follows is no option
            out += [word, *words]
            break
        name, eq, _ = word.partition("=")
        if len(name) > 2 and name.startswith("--") and option.startswith(name):
            if not eq:
                next(words, None)  # its value, the next word
            continue
        out.append(word)
    return out


def _workers(n: int, argv: list[str], settings: Settings) -> int:
    """N detector processes, one per core, each run with `argv` (the command line without
    --workers) and its own --instance; SIGTERM/Ctrl-C stops them all cleanly."""
    from fraudstream.detection import load_ruleset

    load_ruleset(Path(settings.rules_file or "rules/default.yaml"))  # fail once, here
    base = settings.detector_instance
    port = settings.metrics_port

    # the workers join the group together (`_join_together`): in one generation, the group
    # spreads each stage's partitions over them (docs/scaling.md, "How partitions are spread")
    together = tempfile.mkdtemp(prefix="fraudstream-workers-")

    def env(i: int) -> dict[str, str]:  # worker i serves its metrics on METRICS_PORT + i
        metrics = {"METRICS_PORT": str(port + i)} if port else {}
        return os.environ | metrics | {JOIN_TOGETHER: f"{n}:{i}:{together}"}

    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "fraudstream", *argv, "--instance", f"{base}-{i}"],
                start_new_session=True,
                env=env(i),
            )
            for i in range(n)
        ]
        stop = StopOnSignal().install()
        while not stop.wait(0.5):
            if all(p.poll() is not None for p in procs):
                break
            for i, p in enumerate(procs):  # one that ended at start keeps nobody waiting
                if p.poll() is not None:
                    (Path(together) / str(i)).touch()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait() for p in procs]
    finally:
        shutil.rmtree(together, ignore_errors=True)
    return max(codes)


# Set by `--workers N` for its workers: "N:<worker index>:<directory>" (`_join_together`).
JOIN_TOGETHER = "FRAUDSTREAM_JOIN_TOGETHER"
JOIN_TOGETHER_S = 30.0  # the longest a worker waits for the others before joining alone


def _join_together(spec: str, stop: threading.Event | None = None) -> None:
    """A worker of `--workers N`: wait, before joining the group, until the N workers are all
    ready to join (each leaves a file named by its index in the directory; the parent leaves
    one for a worker that ended), so that they join at once. A group formed by the first
    alone gives it every partition, and the others then get what the cooperative-sticky
    assignor moves off it, a stage's partitions at a time: one worker would decode every input
    while another ran the other stages (docs/scaling.md). After JOIN_TOGETHER_S it joins
    anyway, saying so; `stop` set: it returns at once."""
    count, index, directory = spec.split(":", 2)
    n, folder = int(count), Path(directory)
    stop = stop or threading.Event()
    try:
        (folder / str(int(index))).touch()
    except OSError:  # (the parent's directory is gone: it is stopping)
        return
    started = time.monotonic()
    said = False
    while not stop.is_set():
        try:
            ready = len(os.listdir(folder))
        except OSError:
            return
        if ready >= n:
            return
        waited = time.monotonic() - started
        if waited >= JOIN_TOGETHER_S:
            log.warning(
                "joining the group without the other workers: %d of %d ready after %.0fs",
                ready,
                n,
                waited,
            )
            return
        if not said and waited >= 1.0:
            log.info("waiting for the other workers to be ready to join (%d of %d)", ready, n)
            said = True
        stop.wait(0.01)


def _stable_hashing(settings: Settings) -> None:
    """Hash state keys with this installation's secret (`STATE_DIR/hashseed`), so that a
    local state snapshot (whose key index holds the keys' hashes) stays valid for the next
    process. Before any engine holds a key."""
    if not settings.snapshot_interval_ms:
        return
    from fraudstream.detection import keyhash
    from fraudstream.locks import hash_seed

    keyhash.use_seed(hash_seed(Path(settings.state_dir)))


def _one_detector(settings: Settings) -> None:
    """Refuse a second detector of the same group and instance on this machine (it would
    fence the running one into a shutdown)."""
    from fraudstream.locks import ProcessLock

    key = (settings.kafka_broker_url, settings.detector_group, settings.detector_instance)
    name = f"{settings.detector_group}-{settings.detector_instance}"
    lock = ProcessLock.acquire("detector", *key, directory=settings.lock_dir, info=name)
    if lock is None:
        holder = ProcessLock.holder("detector", *key, directory=settings.lock_dir)
        pid = holder.split()[0] if holder else "?"
        raise ConfigError(
            f"detector {name} already runs on this machine (pid {pid}, group "
            f"{settings.detector_group}, broker {settings.kafka_broker_url}); to add another, "
            f"start it with `--instance 1` (or any other name), or run several with "
            "`fraudstream detect --workers N`; to replace it, stop that one first"
        )
    hold(lock)


def _not_elsewhere(settings: Settings, admin: AdminClient) -> None:
    """Refuse to start when the same group and instance runs on another machine (the lock
    above sees only this one); a stopped one leaves the group within its session timeout."""
    from fraudstream.stream.layout import running_elsewhere

    name = f"{settings.detector_group}-{settings.detector_instance}"
    host = running_elsewhere(settings, name, admin)
    if host is not None:
        raise ConfigError(
            f"detector {name} already runs on {host} (a member of group "
            f"{settings.detector_group} on {settings.kafka_broker_url}); to add another, start "
            "it with `--instance 1` (or any other name unused in the group); if that one has "
            "stopped, it leaves the group when its session times out (KAFKA_SESSION_TIMEOUT_MS, "
            "45 s by default): try again then"
        )


def _detect(settings: Settings) -> int:
    from fraudstream.detection import Engine, load_ruleset
    from fraudstream.detection.model import limit_native_threads, load_kernels_in_background
    from fraudstream.stream import Processor, ensure_topics
    from fraudstream.stream.clients import admin_client, transaction_problems, wait_for_broker
    from fraudstream.stream.metrics import serve as serve_metrics

    if problems := transaction_problems(settings):
        raise ConfigError("; ".join(problems))
    path = Path(settings.rules_file or "rules/default.yaml")
    ruleset = load_ruleset(path)  # an invalid file stops the detector here, saying why
    # scikit-learn and scipy only if the model needs them (`FraudModel.load` caps them then)
    limit_native_threads(settings.model_threads, model=False)
    _stable_hashing(settings)
    _one_detector(settings)
    # numba's first call, while the start below waits on the broker; after the refusals
    # above, so that none of them exits while the thread is inside numba's compiler
    kernels = load_kernels_in_background()
    wait_for_broker(settings, settings.startup_timeout_ms / 1000)
    # every request of the start on one client: a new client's first request waits about
    # 50 ms (docs/performance.md, "The start's requests")
    admin = admin_client(settings)
    _not_elsewhere(settings, admin)
    ensure_topics(settings, admin=admin)
    engine = Engine.from_ruleset(ruleset)
    log.info(
        "rules %s version %s: %d rules%s",
        path,
        engine.version,
        len(engine.rules),
        ", with model" if engine.model else "",
    )
    processor = Processor(settings, engine, admin=admin)
    del admin  # (the processor lets go of it once the topology is prepared)
    serve_metrics(processor.metrics.registry, settings, ready=processor.readiness)
    stop = StopOnSignal().install()

    def report() -> None:
        while not stop.wait(5):
            s = processor.stats
            log.info(
                "decided %d: legit %d, fraud %d, dead-letter %d",
                s.total,
                s.legit,
                s.fraud,
                s.dead_letter,
            )

    threading.Thread(target=report, daemon=True).start()
    log.info(
        "detector %s-%s reading %s",
        settings.detector_group,
        settings.detector_instance,
        settings.transactions_topic,
    )

    together = os.environ.get(JOIN_TOGETHER)

    def before_joining() -> None:
        kernels.join()  # then cap what it loaded (scipy's OpenBLAS), from the computing thread
        limit_native_threads(settings.model_threads, model=False)
        if together:
            _join_together(together, stop)

    workers = int(together.split(":", 1)[0]) if together else 1
    stats = processor.run(stop, on_start=before_joining, workers=workers)
    log.info(
        "stopped after %d: legit %d, fraud %d, dead-letter %d",
        stats.total,
        stats.legit,
        stats.fraud,
        stats.dead_letter,
    )
    return Exit.OK
