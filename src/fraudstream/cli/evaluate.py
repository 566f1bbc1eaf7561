"""`fraudstream evaluate`: the detector's decisions joined with the labels, reported."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fraudstream.cli._common import TOP_K_HELP, command, load_for_analysis, settings_flags, top_k

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    ev = command(
        sub,
        "evaluate",
        help="join decisions with labels; precision, recall, ...",
        handler=run,
        parents=[settings_flags()],
        examples=[
            (
                "the live decisions (LEGIT_TOPIC, FRAUD_TOPIC) with LABELS_TOPIC",
                "fraudstream evaluate",
            ),
            (
                "the same as JSON, card precision@50 per day",
                "fraudstream evaluate --json --top-k 50",
            ),
            (
                "the topics named",
                "fraudstream evaluate --decisions streaming.transactions.legit "
                "streaming.transactions.fraud --labels streaming.transactions.labels",
            ),
        ],
    )
    ev.add_argument("--decisions", nargs="+", help="files or topics (default legit + fraud)")
    ev.add_argument("--labels", help="a file or a topic (default LABELS_TOPIC)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--top-k", type=top_k, default=100, help=TOP_K_HELP)


def run(args: argparse.Namespace) -> int:
    settings = load_for_analysis(args)
    from fraudstream.evaluation.cli import run_evaluate

    return run_evaluate(args, settings)
