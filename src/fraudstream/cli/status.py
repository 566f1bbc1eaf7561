"""`fraudstream status`: is the detector group keeping up, per stage and partition."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fraudstream.cli._common import Exit, command, load, settings_flags

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    st = command(
        sub,
        "status",
        help="per stage and partition: committed, end, lag, buffered, last mark; exit 1 when "
        "the group is stalled",
        handler=run,
        parents=[settings_flags(("transactions",), partitions=False)],
        examples=[
            ("the default detector group, as a table", "fraudstream status"),
            ("a group named, as JSON", "fraudstream status --group fraudstream-detector --json"),
        ],
        problem="the group is stalled: records wait and nothing was committed for "
        "STALL_WARNING_MS, or no detector of the group reports",
    )
    st.add_argument(
        "--group", dest="detector_group", help="the detector group (default: DETECTOR_GROUP)"
    )
    st.add_argument("--json", action="store_true", help="print it as JSON")


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    import msgspec

    from fraudstream.stream import check_connection
    from fraudstream.stream.health import format_status, read_status

    check_connection(settings)
    status = read_status(settings)
    if args.json:
        print(msgspec.json.encode(status).decode())
    else:
        print(format_status(status))
    return Exit.PROBLEM if status.stalled else Exit.OK
