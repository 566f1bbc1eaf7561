"""`fraudstream broker start|stop|status|fetch|tool`: a local Apache Kafka broker (KRaft)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import Exit, command, is_local, load, settings_flags
from fraudstream.config import Settings

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers

# Official tools in the kafka-tools / kafka_2.13 jars (what bin/kafka-*.sh run).
TOOLS = {
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "transactions": "org.apache.kafka.tools.TransactionsCommand",
    "features": "org.apache.kafka.tools.FeatureCommand",
}

_EXAMPLES = {
    "start": [
        ("start the local broker on localhost:9092 (fetching Kafka first if needed)", ""),
        ("another one on port 9093, with its own data", " --port 9093 --data-dir /tmp/kafka"),
    ],
    "stop": [("stop the local broker", "")],
    "status": [("exit 0 when the local broker runs, 1 when not", "")],
    "fetch": [("only download the Kafka jars (printing where they are)", "")],
}


def add_parser(sub: Subparsers) -> None:
    broker_only = settings_flags((), partitions=False)
    broker = command(
        sub,
        "broker",
        help="run a local Apache Kafka broker (KRaft)",
        examples=[
            ("start it; returns when it answers, coordinators ready", "fraudstream broker start"),
            ("is it running?", "fraudstream broker status"),
            (
                "read the fraud topic with Kafka's own console consumer",
                "fraudstream broker tool console-consumer --bootstrap-server localhost:9092 "
                "--topic streaming.transactions.fraud --from-beginning",
            ),
        ],
        problem="`broker status`: the local broker is not running",
    )
    bsub = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in [
        ("start", "fetch Kafka if needed and start it; returns when it is ready"),
        ("stop", "stop the local broker cleanly"),
        ("status", "exit 0 when the local broker runs"),
        ("fetch", "only fetch the Kafka artifacts from Maven Central"),
    ]:
        a = command(
            bsub,
            action,
            help=text,
            handler=run,
            parents=[broker_only],
            examples=[
                (what, f"fraudstream broker {action}{flags}") for what, flags in _EXAMPLES[action]
            ],
            problem="the local broker is not running" if action == "status" else None,
        )
        a.add_argument("--port", type=int, help="broker port (default: from KAFKA_BROKER_URL)")
        a.add_argument(
            "--data-dir",
            type=Path,
            default=Path(".fraudstream/broker"),
            help="where the broker keeps its logs and metadata (default .fraudstream/broker)",
        )
    tool = command(
        bsub,
        "tool",
        help="run an official Kafka tool from the fetched jars, e.g. console-consumer",
        handler=run_tool,
        examples=[
            (
                "the decided-legit topic from the start, committed records only",
                "fraudstream broker tool console-consumer --bootstrap-server localhost:9092 "
                "--topic streaming.transactions.legit --from-beginning "
                "--isolation-level read_committed",
            ),
            (
                "the detector group's lag per partition",
                "fraudstream broker tool consumer-groups --bootstrap-server localhost:9092 "
                "--describe --group fraudstream-detector",
            ),
        ],
        description="Run an official Kafka tool from the fetched jars, e.g. console-consumer, "
        "with its own arguments (its --help lists them). Once it starts, the exit code is the "
        "tool's.",
    )
    tool.add_argument("name", choices=sorted(TOOLS), help="the tool")
    tool.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    from fraudstream.broker import LocalBroker, ensure_kafka

    if args.action == "fetch":
        print(ensure_kafka())
        return Exit.OK
    local, url_port = is_local(settings.kafka_broker_url)
    if not local and args.port is None:
        print(
            f"KAFKA_BROKER_URL is {settings.kafka_broker_url}: using that cluster, "
            "no local broker is managed",
            file=sys.stderr,
        )
        return Exit.OK if args.action != "status" else _probe(settings)
    broker = LocalBroker(port=args.port or url_port, data_dir=args.data_dir)
    if args.action == "start":
        running = broker.status()
        if not running:  # (a fresh one takes several seconds: say what is waited for)
            print(f"starting Kafka at {broker.bootstrap} …", file=sys.stderr)
        broker.start()
        print(
            f"Kafka {'already running' if running else 'started'} at {broker.bootstrap} "
            f"(data {broker.data_dir}, log {broker.log_file})"
        )
        return Exit.OK
    if args.action == "stop":
        print("Kafka stopped" if broker.stop() else "no local Kafka was running")
        return Exit.OK
    up = broker.status()
    if not up:
        from fraudstream.broker import answers

        if answers(broker.port):  # not this data dir's, but something listens there
            print(
                f"Kafka not running at {broker.bootstrap} from {broker.data_dir}, but something "
                f"answers on port {broker.port}: a broker started with another --data-dir, or "
                "another program (`fraudstream topics` checks that it is Kafka)"
            )
            return Exit.PROBLEM
    print(f"Kafka {'running' if up else 'not running'} at {broker.bootstrap}")
    return Exit.OK if up else Exit.PROBLEM


def _probe(settings: Settings) -> int:
    from fraudstream.stream import check_connection

    check_connection(settings)
    return Exit.OK


def run_tool(args: argparse.Namespace) -> int:
    """Replace this process with the tool (no settings read: the tool takes its own flags)."""
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
            TOOLS[args.name],
            *[a for a in args.args if a != "--"],
        ],
    )
