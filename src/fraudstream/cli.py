"""The `fraudstream` command: parses flags, builds `Settings` once, calls one app."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from fraudstream.config import Settings, load_settings
from fraudstream.errors import ConfigError, FraudstreamError

__all__ = ["main"]

log = logging.getLogger("fraudstream")

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


_TOPIC_FLAGS = {
    "transactions": ("--transactions-topic", "input topic (TRANSACTIONS_TOPIC)"),
    "legit": ("--legit-topic", "decided-legit topic (LEGIT_TOPIC)"),
    "fraud": ("--fraud-topic", "decided-fraud topic (FRAUD_TOPIC)"),
    "dlq": ("--dlq-topic", "dead-letter topic (DLQ_TOPIC)"),
}
_ALL_TOPICS = ("transactions", "legit", "fraud", "dlq")


def _settings_flags(
    topics: Sequence[str] = _ALL_TOPICS, *, partitions: bool = True
) -> argparse.ArgumentParser:
    """The Kafka flags a command uses: the broker, and only the topics it reads or writes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("Kafka (override the environment and .env)")
    g.add_argument(
        "--broker-url",
        dest="kafka_broker_url",
        metavar="HOST:PORT",
        help="bootstrap servers (KAFKA_BROKER_URL, default localhost:9092)",
    )
    for name in topics:
        flag, text = _TOPIC_FLAGS[name]
        g.add_argument(flag, metavar="TOPIC", help=text)
    if partitions:
        g.add_argument(
            "--partitions",
            dest="topic_partitions",
            type=int,
            metavar="N",
            help="partitions of topics created when missing (TOPIC_PARTITIONS, default 6)",
        )
    return p


def _parser() -> argparse.ArgumentParser:
    common = _settings_flags()
    broker_only = _settings_flags((), partitions=False)
    parser = argparse.ArgumentParser(
        prog="fraudstream", description="Real-time fraud detection on Apache Kafka."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser("broker", help="run a local Apache Kafka broker (KRaft)")
    bsub = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in [
        ("start", "fetch Kafka if needed and start it; returns when it answers"),
        ("stop", "stop the local broker cleanly"),
        ("status", "exit 0 when the local broker runs"),
        ("fetch", "only fetch the Kafka artifacts from Maven Central"),
    ]:
        a = bsub.add_parser(action, help=text, parents=[broker_only])
        a.add_argument("--port", type=int, help="broker port (default: from KAFKA_BROKER_URL)")
        a.add_argument(
            "--data-dir",
            type=Path,
            default=Path(".fraudstream/broker"),
            help="where the broker keeps its logs and metadata (default .fraudstream/broker)",
        )
    tool = bsub.add_parser(
        "tool", help="run an official Kafka tool from the fetched jars, e.g. console-consumer"
    )
    tool.add_argument("name", choices=sorted(_TOOLS), help="the tool")
    tool.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")

    sub.add_parser("topics", help="create the pipeline's topics if missing", parents=[common])

    st = sub.add_parser(
        "status",
        help="per stage and partition: committed, end, lag, buffered, last mark; exit 1 when "
        "the group is stalled",
        parents=[_settings_flags(("transactions",), partitions=False)],
    )
    st.add_argument(
        "--group", dest="detector_group", help="the detector group (default: DETECTOR_GROUP)"
    )
    st.add_argument("--json", action="store_true", help="print it as JSON")

    reset = sub.add_parser(
        "reset",
        help="start over: a detector group's internal topics and offsets (--group), or the "
        "local broker's data (no --group)",
        parents=[common],
    )
    reset.add_argument(
        "--group",
        help="delete this detector group's internal topics and committed offsets "
        "(its detectors must be stopped); it then starts from the input's beginning",
    )
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    reset.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".fraudstream/broker"),
        help="without --group: the local broker's data directory to wipe",
    )

    gen = sub.add_parser(
        "generate", help="stream random transactions", parents=[_settings_flags(("transactions",))]
    )
    gen.add_argument("--rate", type=_rate, help="tx/s, or 'max' (default TRANSACTIONS_PER_SECOND)")
    gen.add_argument("--count", type=_count, help="stop after N transactions (default: run on)")
    gen.add_argument("--seed", type=int, help="random seed, for a reproducible stream")
    gen.add_argument(
        "--profile",
        choices=["tutorial", "sim"],
        default="tutorial",
        help="tutorial: uniform random payments; sim: a simulated world with "
        "labelled fraud (labels go to LABELS_TOPIC)",
    )
    gen.add_argument(
        "--fraud-rate",
        type=_share_incl,
        default=0.01,
        help="sim: share of transactions that are fraud (default 0.01)",
    )
    gen.add_argument(
        "--label-delay",
        default="2d",
        help="sim: mean delay before a fraud verdict is known, like a chargeback "
        "(default 2d; each label's known_ms is 0.25x to 1.75x of it)",
    )
    gen.add_argument("--output", type=Path, help="write JSON lines to this file, not Kafka")
    gen.add_argument("--labels-output", type=Path, help="with --output: the labels file")
    gen.add_argument("--quiet", action="store_true", help="no progress line")

    det = sub.add_parser(
        "detect", help="decide legit or fraud for each transaction", parents=[common]
    )
    det.add_argument("--group", dest="detector_group", help="consumer group id")
    det.add_argument("--instance", dest="detector_instance", help="this instance's name")
    det.add_argument(
        "--batch-size", type=int, help="records per consume call (BATCH_SIZE, default 1000)"
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
        type=_processes,
        default=1,
        help="run N detector processes in one consumer group (instances 0..N-1)",
    )

    rules = sub.add_parser("rules", help="work with rule files")
    rsub = rules.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = rsub.add_parser("check", help="validate rule files; report each problem")
    check.add_argument("files", nargs="+", type=Path)

    history = argparse.ArgumentParser(add_help=False)
    history.add_argument(
        "--input",
        help="transactions: a .jsonl/.csv/.parquet file or a topic (default TRANSACTIONS_TOPIC)",
    )
    history.add_argument("--labels", help="labels: a file or a topic (default LABELS_TOPIC)")
    history.add_argument("--columns", help="CSV/Parquet renames, e.g. id=tx_id,source=from")
    history.add_argument("--json", action="store_true", help="print the report as JSON")

    bt = sub.add_parser(
        "backtest",
        help="run a rule set over recorded history and judge it",
        parents=[common, history],
    )
    bt.add_argument("--rules", dest="rules_file", help="candidate rules file")
    bt.add_argument("--since", help="score only transactions from this date (YYYY-MM-DD) on")
    bt.add_argument(
        "--output",
        type=Path,
        help="write every decision (id, time, score, outcome, reasons, label) to this file: "
        "JSON lines, or Parquet if it ends in .parquet",
    )
    bt.add_argument("--top-k", type=_top_k, default=100, help=TOP_K_HELP)

    tr = sub.add_parser(
        "train", help="fit the model on labelled history (split in time)", parents=[common, history]
    )
    tr.add_argument("--rules", dest="rules_file", help="rules whose hits join the features")
    tr.add_argument(
        "--out",
        type=Path,
        default=Path("models/default.model"),
        help="where to write the model (default models/default.model)",
    )
    tr.add_argument(
        "--test-share",
        type=_share_excl,
        help="test on the last share of the history (default 0.3), or give --train-until",
    )
    tr.add_argument("--train-until", help="train on the days before this date (YYYY-MM-DD, UTC)")
    tr.add_argument(
        "--test-from",
        help="test from this date (default: --delay-days after the training days)",
    )
    tr.add_argument("--test-until", help="test on the days before this date (default: to the end)")
    tr.add_argument(
        "--delay-days",
        "--gap-days",
        dest="gap_days",
        type=_days,
        default=7,
        help="how long labels take to arrive: the gap before each validation and test window "
        "(default 7)",
    )
    tr.add_argument(
        "--folds",
        type=_folds,
        default=3,
        help="consecutive validation windows the model size is chosen on (default 3)",
    )
    target = tr.add_mutually_exclusive_group()
    target.add_argument(
        "--target-precision",
        type=_fraction,
        help="fraud from the lowest score whose precision on the validation days reaches "
        "this (default 0.9)",
    )
    target.add_argument(
        "--alert-rate",
        type=_fraction,
        help="fraud from the score that flags this share of the validation days' "
        "transactions, e.g. 0.01",
    )

    ev = sub.add_parser(
        "evaluate", help="join decisions with labels; precision, recall, ...", parents=[common]
    )
    ev.add_argument("--decisions", nargs="+", help="files or topics (default legit + fraud)")
    ev.add_argument("--labels", help="a file or a topic (default LABELS_TOPIC)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--top-k", type=_top_k, default=100, help=TOP_K_HELP)

    dash = sub.add_parser(
        "dashboard",
        help="serve the live web page",
        parents=[_settings_flags(("legit", "fraud"), partitions=False)],
    )
    dash.add_argument(
        "--host", dest="dashboard_host", help="address to listen on (DASHBOARD_HOST, 127.0.0.1)"
    )
    dash.add_argument(
        "--port", dest="dashboard_port", type=int, help="port (DASHBOARD_PORT, default 5000)"
    )

    al = sub.add_parser(
        "alerts",
        help="notify people of fraud (log, webhook, Slack, email), until Ctrl-C",
        parents=[_settings_flags(("fraud",))],
        description="Read the fraud topic and send one alert per account per "
        "ALERT_GROUP_WINDOW seconds to the log and every sink configured: ALERT_WEBHOOK_URL, "
        "ALERT_SLACK_WEBHOOK_URL, ALERT_SMTP_URL with ALERT_EMAIL_FROM and ALERT_EMAIL_TO. "
        "At least once, with a stable alert_id receivers de-duplicate on.",
        epilog="example: ALERT_WEBHOOK_URL=https://example.org/hook fraudstream alerts",
    )
    al.add_argument(
        "--group", dest="alerts_group", metavar="NAME", help="its consumer group (ALERTS_GROUP)"
    )

    run = sub.add_parser(
        "run",
        help="broker + generator + detector + alerts + dashboard, until Ctrl-C",
        parents=[common],
    )
    run.add_argument("--rate", type=_rate, help="generator tx/s (default TRANSACTIONS_PER_SECOND)")
    run.add_argument("--port", dest="dashboard_port", type=int, help="dashboard port")
    run.add_argument(
        "--rules", dest="rules_file", help="the detector's rules file (default rules/default.yaml)"
    )
    return parser


# Official tools in the kafka-tools / kafka_2.13 jars (what bin/kafka-*.sh run).
_TOOLS = {
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "transactions": "org.apache.kafka.tools.TransactionsCommand",
}


def _rate(text: str) -> float:
    if text == "max":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; give tx/s like 500, or 'max'"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0; give tx/s like 500, or 'max'")
    return value


def _whole(text: str, low: int, high: int | None, refusal: str) -> int:
    """`text` as a whole number from `low` to `high` (None: no limit), else `refusal`."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r} {refusal}")
    return value


def _count(text: str) -> int:
    return _whole(text, 1, None, "is not a count; give a whole number of transactions, like 1000")


TOP_K_HELP = "cards an investigation team checks a day: card precision@k per day (default 100)"


def _top_k(text: str) -> int:
    return _whole(text, 1, None, "is not a number of cards; give a whole number, like 100")


def _folds(text: str) -> int:
    return _whole(text, 1, 20, "is not a number of folds; give 1 to 20, like 3")


def _processes(text: str) -> int:
    return _whole(
        text, 1, 64, "is not a number of processes; give 1 to 64, like the machine's cores"
    )


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give {what}")
    return value


def _share_incl(text: str) -> float:
    value = _number(text, "a share from 0 to 1, like 0.01 for 1%")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share; give a number from 0 to 1, like 0.01 for 1%"
        )
    return value


def _fraction(text: str) -> float:
    value = _number(text, "a number between 0 and 1, like 0.9")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not between 0 and 1 (both excluded); give e.g. 0.9 for 90%"
        )
    return value


def _share_excl(text: str) -> float:
    value = _number(text, "a share between 0 and 1, like 0.3 for the last 30%")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share between 0 and 1 (both excluded: each side needs days); "
            "give e.g. 0.3 to test on the last 30% of the history"
        )
    return value


def _days(text: str) -> float:
    value = _number(text, "days, like 7 (0 for no gap)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; give days, like 7 (0 for no gap)")
    return value


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    names = set(Settings.model_fields)
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _is_local(url: str) -> tuple[bool, int]:
    first = url.split(",")[0].strip()
    parts = urlsplit("//" + first.split("://")[-1])
    return (parts.hostname or "") in _LOCAL_HOSTS, parts.port or 9092


class _StopOnSignal:
    """SIGINT/SIGTERM set an event so loops finish cleanly; a second signal exits at once."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> threading.Event:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self.event

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise SystemExit(130)
        self.event.set()


def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args = _parser().parse_args(argv)
    global _CLI_ARGS
    _CLI_ARGS = list(sys.argv[1:]) if argv is None else None
    try:
        return _dispatch(args)
    except FraudstreamError as exc:
        print(f"fraudstream: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "broker" and args.action == "tool":
        return _tool(args.name, args.args)
    settings = load_settings(**_overrides(args))
    if args.command == "broker":
        return _broker(args, settings)
    if args.command == "topics":
        from fraudstream.stream import ensure_topics

        created = ensure_topics(settings)
        print("created: " + ", ".join(created) if created else "all topics exist")
        return 0
    if args.command == "reset":
        return _reset(args, settings)
    if args.command == "status":
        import msgspec

        from fraudstream.stream import check_connection
        from fraudstream.stream.health import format_status, read_status

        check_connection(settings)
        status = read_status(settings)
        if args.json:
            print(msgspec.json.encode(status).decode())
        else:
            print(format_status(status))
        return 1 if status.stalled else 0
    if args.command == "generate":
        from fraudstream.detection import parse_duration

        try:
            parse_duration(args.label_delay)
        except ValueError as exc:
            raise ConfigError(f"--label-delay: {exc}") from None
        from fraudstream.generator import generate

        if args.output is not None:
            from fraudstream.generator.app import write_files

            if args.count is None:
                raise ConfigError("--output needs --count")
            write_files(
                args.output,
                args.labels_output,
                count=args.count,
                seed=args.seed,
                profile=args.profile,
                fraud_rate=args.fraud_rate,
                label_delay_ms=parse_duration(args.label_delay),
            )
            print(f"wrote {args.count:,} transactions to {args.output}", file=sys.stderr)
            return 0
        stop = _StopOnSignal().install()
        stats = generate(
            settings,
            rate=args.rate,
            count=args.count,
            seed=args.seed,
            stop=stop,
            profile=args.profile,
            fraud_rate=args.fraud_rate,
            label_delay_ms=parse_duration(args.label_delay),
            progress=None if args.quiet else sys.stderr,
        )
        return 1 if stats.failed else 0
    if args.command == "rules":
        return _rules_check(args.files)
    if args.command in ("backtest", "train", "evaluate"):
        from fraudstream.detection.model import limit_native_threads
        from fraudstream.evaluation import cli as evaluation_cli

        limit_native_threads(settings.model_threads)

        return evaluation_cli.run(args, settings)
    if args.command == "detect":
        if args.workers > 1:
            return _workers(args.workers, settings)
        return _detect(settings)
    if args.command == "dashboard":
        from fraudstream.dashboard import listen, serve
        from fraudstream.stream import check_connection

        sock = listen(settings)  # a port in use stops here, before the URL is announced
        check_connection(settings)  # and so does a broker that does not answer
        print(
            f"dashboard on http://{settings.dashboard_host}:{sock.getsockname()[1]}/",
            file=sys.stderr,
        )
        serve(settings, sock)
        return 0
    if args.command == "run":
        return _run(args, settings)
    if args.command == "alerts":
        return _alerts(settings)
    raise AssertionError(args.command)


def _alerts(settings: Settings) -> int:
    from fraudstream.alerts.service import AlertService
    from fraudstream.alerts.sinks import build_sinks
    from fraudstream.stream import ensure_topics
    from fraudstream.stream.clients import wait_for_broker
    from fraudstream.stream.metrics import serve as serve_metrics

    dashboard = settings.alert_dashboard_url or (
        f"http://{settings.dashboard_host}:{settings.dashboard_port}"
    )
    try:
        sinks = build_sinks(
            webhook_url=settings.alert_webhook_url,
            slack_webhook_url=_secret(settings.alert_slack_webhook_url),
            smtp_url=_secret(settings.alert_smtp_url),
            email_from=settings.alert_email_from,
            email_to=settings.alert_email_to,
            dashboard_url=dashboard.rstrip("/"),
            logger=logging.getLogger("fraudstream.alerts"),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    wait_for_broker(settings, settings.startup_timeout_ms / 1000)
    ensure_topics(settings)
    stop = _StopOnSignal().install()
    service = AlertService(settings, sinks)
    serve_metrics(service.registry, settings)
    n = service.run(stop)
    log.info("alerts: stopped after %d alerts from %d fraud records", n, service.records)
    return 0


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from fraudstream.broker import LocalBroker, ensure_kafka

    if args.action == "fetch":
        print(ensure_kafka())
        return 0
    local, url_port = _is_local(settings.kafka_broker_url)
    if not local and args.port is None:
        print(
            f"KAFKA_BROKER_URL is {settings.kafka_broker_url}: using that cluster, "
            "no local broker is managed",
            file=sys.stderr,
        )
        return 0 if args.action != "status" else _probe(settings)
    broker = LocalBroker(port=args.port or url_port, data_dir=args.data_dir)
    if args.action == "start":
        running = broker.status()
        broker.start()
        print(
            f"Kafka {'already running' if running else 'started'} at {broker.bootstrap} "
            f"(data {broker.data_dir}, log {broker.log_file})"
        )
        return 0
    if args.action == "stop":
        print("Kafka stopped" if broker.stop() else "no local Kafka was running")
        return 0
    up = broker.status()
    print(f"Kafka {'running' if up else 'not running'} at {broker.bootstrap}")
    return 0 if up else 1


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} — confirm with --yes (no terminal to ask on)")
    answer = input(f"{question} Type 'yes' to go on: ")
    return answer.strip().lower() == "yes"


def _reset(args: argparse.Namespace, settings: Settings) -> int:
    if args.group:
        from fraudstream.stream.layout import group_topics, reset_group

        topics = group_topics(settings, args.group)
        what = f"{len(topics)} internal topic(s) ({', '.join(topics)})" if topics else "no topics"
        if not _confirm(
            f"This deletes group {args.group}'s committed offsets and {what} at "
            f"{settings.kafka_broker_url}; its next detector starts from the input's beginning.",
            args.yes,
        ):
            print("nothing deleted", file=sys.stderr)
            return 1
        deleted, existed = reset_group(settings, args.group)
        import shutil

        from fraudstream.stream.snapshot import SnapshotStore

        snapshots = SnapshotStore(Path(settings.state_dir), args.group).dir
        shutil.rmtree(snapshots, ignore_errors=True)  # stale now: its changelogs are gone
        print(
            f"group {args.group}: {'offsets deleted' if existed else 'no offsets'}, "
            f"{len(deleted)} topic(s) deleted, local snapshots in {snapshots} removed"
        )
        return 0
    from fraudstream.broker import LocalBroker

    local, port = _is_local(settings.kafka_broker_url)
    if not local:
        raise ConfigError(
            f"KAFKA_BROKER_URL is {settings.kafka_broker_url}: `fraudstream reset` without "
            "--group wipes only a local broker's data; reset a detector group on that cluster "
            "with --group G"
        )
    broker = LocalBroker(port=port, data_dir=args.data_dir)
    if broker.status():
        raise FraudstreamError(
            f"the local broker at {broker.bootstrap} is running; stop it first "
            "(Ctrl-C in `make run`, or `fraudstream broker stop`), then reset"
        )
    state = Path(settings.state_dir)
    there = [p for p in (args.data_dir, state) if p.exists()]
    if not there:
        print(f"nothing to reset: neither {args.data_dir} nor {state} exists")
        return 0
    if not _confirm(
        f"This deletes every topic, record and offset of the local broker ({args.data_dir}) "
        f"and the detectors' local state snapshots ({state}).",
        args.yes,
    ):
        print("nothing deleted", file=sys.stderr)
        return 1
    import shutil

    for path in there:
        shutil.rmtree(path)
    print(f"deleted {', '.join(map(str, there))}; the next `make run` starts on an empty broker")
    return 0


def _probe(settings: Settings) -> int:
    from fraudstream.stream import check_connection

    check_connection(settings)
    return 0


def _tool(name: str, tool_args: list[str]) -> int:
    from fraudstream.broker import ensure_kafka
    from fraudstream.broker.artifacts import java_executable

    lib = ensure_kafka()
    os.execv(
        java_executable(),
        [
            "java",
            "-Dlog4j2.level=WARN",
            "-cp",
            f"{lib}/*",
            _TOOLS[name],
            *[a for a in tool_args if a != "--"],
        ],
    )


def _rules_check(files: list[Path]) -> int:
    from fraudstream.detection import check_rules_file

    bad = 0
    for path in files:
        problems = check_rules_file(path)
        if not problems:
            print(f"{path}: ok")
            continue
        bad += 1
        print(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}")
        for rule_id, message in problems:
            print(f"  {rule_id}: {message}")
    return 1 if bad else 0


def _workers(n: int, settings: Settings) -> int:
    """N detector processes, one per core; SIGTERM/Ctrl-C stops them all cleanly."""
    from fraudstream.detection import load_ruleset

    load_ruleset(Path(settings.rules_file or "rules/default.yaml"))  # fail once, here
    argv = [a for a in sys.argv[1:] if not a.startswith("--workers")]
    if "--workers" in sys.argv[1:]:  # "--workers N" as two words
        i = sys.argv[1:].index("--workers")
        argv = sys.argv[1:][:i] + sys.argv[1:][i + 2 :]
    base = settings.detector_instance
    port = settings.metrics_port

    def env(i: int) -> dict[str, str]:  # worker i serves its metrics on METRICS_PORT + i
        return os.environ | ({"METRICS_PORT": str(port + i)} if port else {})

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fraudstream", *argv, "--instance", f"{base}-{i}"],
            start_new_session=True,
            env=env(i),
        )
        for i in range(n)
    ]
    stop = _StopOnSignal().install()
    while not stop.wait(0.5):
        if all(p.poll() is not None for p in procs):
            break
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = [p.wait() for p in procs]
    return max(codes)


_held: list[object] = []  # locks kept for the life of the process
_CLI_ARGS: list[str] | None = None  # the command line, when run as a command (not in-process)


def _stable_hashing(settings: Settings) -> None:
    """Run with this installation's string-hash seed, so that a local state snapshot (whose
    key index holds `hash(key)`) stays valid for the next process: re-execute if needed."""
    if not settings.snapshot_interval_ms:
        return
    from fraudstream.locks import hash_seed

    seed = hash_seed(Path(settings.state_dir))
    if os.environ.get("PYTHONHASHSEED") != seed and _CLI_ARGS is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        argv = [sys.executable, "-m", "fraudstream", *_CLI_ARGS]
        os.execve(sys.executable, argv, os.environ | {"PYTHONHASHSEED": seed})


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
    _held.append(lock)


def _not_elsewhere(settings: Settings) -> None:
    """Refuse to start when the same group and instance runs on another machine (the lock
    above sees only this one); a stopped one leaves the group within its session timeout."""
    from fraudstream.stream.layout import running_elsewhere

    name = f"{settings.detector_group}-{settings.detector_instance}"
    host = running_elsewhere(settings, name)
    if host is not None:
        raise ConfigError(
            f"detector {name} already runs on {host} (a member of group "
            f"{settings.detector_group} on {settings.kafka_broker_url}); to add another, start "
            "it with `--instance 1` (or any other name unused in the group); if that one has "
            "stopped, it leaves the group when its session times out (KAFKA_SESSION_TIMEOUT_MS, "
            "45 s by default): try again then"
        )


def _detect(settings: Settings) -> int:
    _stable_hashing(settings)  # may re-execute: before the heavy imports
    from fraudstream.detection import Engine, load_ruleset
    from fraudstream.detection.model import limit_native_threads
    from fraudstream.stream import Processor, ensure_topics
    from fraudstream.stream.clients import wait_for_broker
    from fraudstream.stream.metrics import serve as serve_metrics

    path = Path(settings.rules_file or "rules/default.yaml")
    ruleset = load_ruleset(path)  # an invalid file stops the detector here, saying why
    limit_native_threads(settings.model_threads, model=ruleset.model is not None)
    _one_detector(settings)
    wait_for_broker(settings, settings.startup_timeout_ms / 1000)
    _not_elsewhere(settings)
    ensure_topics(settings)
    engine = Engine.from_ruleset(ruleset)
    log.info(
        "rules %s version %s: %d rules%s",
        path,
        engine.version,
        len(engine.rules),
        ", with model" if engine.model else "",
    )
    processor = Processor(settings, engine)
    serve_metrics(processor.metrics.registry, settings)
    stop = _StopOnSignal().install()

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
    stats = processor.run(stop)
    log.info(
        "stopped after %d: legit %d, fraud %d, dead-letter %d",
        stats.total,
        stats.legit,
        stats.fraud,
        stats.dead_letter,
    )
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    """Everything at once, each app in its own process; Ctrl-C stops all of them cleanly."""
    from fraudstream.broker import LocalBroker
    from fraudstream.detection import load_ruleset
    from fraudstream.locks import ProcessLock
    from fraudstream.stream import check_connection, ensure_topics

    load_ruleset(Path(settings.rules_file or "rules/default.yaml"))  # a bad file stops here
    url = f"http://{settings.dashboard_host}:{settings.dashboard_port}/"
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
    _held.append(lock)
    local, port = _is_local(settings.kafka_broker_url)
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
    rate = (
        [] if args.rate is None else ["--rate", "max" if math.isinf(args.rate) else str(args.rate)]
    )
    procs = [
        subprocess.Popen([*me, "dashboard"], env=env, start_new_session=True),
        # stopped in reverse: the generator, the detector, then alerts sends what it decided
        subprocess.Popen([*me, "alerts"], env=env, start_new_session=True),
        subprocess.Popen([*me, "detect"], env=env, start_new_session=True),
        subprocess.Popen(
            [*me, "generate", "--profile", "sim", *rate], env=env, start_new_session=True
        ),
    ]
    stop = _StopOnSignal().install()
    time.sleep(1)
    print(
        f"\n  fraudstream is running: open http://{settings.dashboard_host}:"
        f"{settings.dashboard_port}/   (Ctrl-C stops everything)\n",
        file=sys.stderr,
    )
    code = 0
    try:
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in procs):
                code = 1
                print("a component exited; stopping the others", file=sys.stderr)
                break
    finally:
        for p in reversed(procs):  # generator first, so the detector sees its last records
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        if broker is not None:
            print("stopping Kafka …", file=sys.stderr)
            broker.stop()
    print("stopped", file=sys.stderr)
    return code
