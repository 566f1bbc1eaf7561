"""The `fraudstream` command: parses flags, builds `Settings` once, calls one app.

Each command is a module here: `add_parser` adds its subparser (flags, help, examples, exit
codes) and sets its handler, which `main` calls; `_common` holds what they share.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Sequence

from fraudstream.cli import (
    alerts,
    backtest,
    broker,
    dashboard,
    detect,
    evaluate,
    generate,
    reset,
    rules,
    run,
    status,
    topics,
    train,
)
from fraudstream.cli._common import (
    TOP_LEVEL_INTERRUPTED,
    TOP_LEVEL_PROBLEM,
    Exit,
    HelpFormatter,
    call,
    epilog,
)

__all__ = ["Exit", "main"]

# In the order `fraudstream --help` lists them.
_COMMANDS = (
    broker,
    topics,
    status,
    reset,
    generate,
    detect,
    rules,
    backtest,
    train,
    evaluate,
    dashboard,
    alerts,
    run,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudstream",
        description="Real-time fraud detection on Apache Kafka.",
        epilog=epilog(
            [
                ("broker, generator, detector, alerts and dashboard at once", "fraudstream run"),
                (
                    "every problem of a rule file, with the rule id",
                    "fraudstream rules check rules/default.yaml",
                ),
                ("a command's flags, examples and exit codes", "fraudstream generate --help"),
            ],
            TOP_LEVEL_PROBLEM,
            TOP_LEVEL_INTERRUPTED,
        ),
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv` (default: this process's arguments); its exit code."""
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request's whole URL at INFO, and a webhook's path is its secret (a
    # Slack URL's always): none of its lines below WARNING, whatever LOG_LEVEL says
    logging.getLogger("httpx").setLevel(max(logging.getLogger().level, logging.WARNING))
    words = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(words)
    args.argv = words  # what `detect --workers N` runs its N processes with (less --workers)
    return call(args)
