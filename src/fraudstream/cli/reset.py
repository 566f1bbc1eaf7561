"""`fraudstream reset`: start over, a detector group (--group) or the local broker's data."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import Exit, command, is_local, load, settings_flags
from fraudstream.errors import ConfigError, FraudstreamError

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    reset = command(
        sub,
        "reset",
        help="start over: a detector group's internal topics and offsets (--group), or the "
        "local broker's data (no --group)",
        handler=run,
        parents=[settings_flags()],
        examples=[
            (
                "wipe the local broker's data and state snapshots (stop the broker first)",
                "fraudstream reset",
            ),
            (
                "the default detector group re-reads its input from the beginning (its "
                "detectors stopped), without asking",
                "fraudstream reset --group fraudstream-detector --yes",
            ),
        ],
        problem="not confirmed: nothing deleted",
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


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} — confirm with --yes (no terminal to ask on)")
    answer = input(f"{question} Type 'yes' to go on: ")
    return answer.strip().lower() == "yes"


def run(args: argparse.Namespace) -> int:
    settings = load(args)
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
            return Exit.PROBLEM
        deleted, existed = reset_group(settings, args.group)

        from fraudstream.stream.snapshot import SnapshotStore

        snapshots = SnapshotStore(Path(settings.state_dir), args.group).dir
        shutil.rmtree(snapshots, ignore_errors=True)  # stale now: its changelogs are gone
        print(
            f"group {args.group}: {'offsets deleted' if existed else 'no offsets'}, "
            f"{len(deleted)} topic(s) deleted, local snapshots in {snapshots} removed"
        )
        return Exit.OK
    from fraudstream.broker import LocalBroker

    local, port = is_local(settings.kafka_broker_url)
    if not local:
        raise ConfigError(
            f"KAFKA_BROKER_URL is {settings.kafka_broker_url}: `fraudstream reset` without "
            "--group wipes only a local broker's data; reset a detector group on that cluster "
            "with --group G"
        )
    from fraudstream.broker import answers

    broker = LocalBroker(port=port, data_dir=args.data_dir)
    if answers(port):  # ours, or one started with another --data-dir: anything listening
        raise FraudstreamError(
            f"a broker is running at {broker.bootstrap}; stop it first "
            "(Ctrl-C in `make run`, or `fraudstream broker stop`), then reset"
        )
    state = Path(settings.state_dir)
    there = [p for p in (args.data_dir, state) if p.exists()]
    if not there:
        print(f"nothing to reset: neither {args.data_dir} nor {state} exists")
        return Exit.OK
    wiped = [
        f"every topic, record and offset of the local broker ({args.data_dir})"
        if args.data_dir.exists()
        else "",
        f"the detectors' local state snapshots ({state})" if state.exists() else "",
    ]
    if not _confirm(f"This deletes {' and '.join(filter(None, wiped))}.", args.yes):
        print("nothing deleted", file=sys.stderr)
        return Exit.PROBLEM
    for path in there:
        shutil.rmtree(path)
    print(
        f"deleted {', '.join(map(str, there))}"
        + ("; the next `make run` starts on an empty broker" if args.data_dir in there else "")
    )
    return Exit.OK
