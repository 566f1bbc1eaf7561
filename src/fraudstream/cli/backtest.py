"""`fraudstream backtest`: run a rule set over recorded history and judge it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import (
    TOP_K_HELP,
    command,
    history_flags,
    load_for_analysis,
    settings_flags,
    top_k,
)

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    bt = command(
        sub,
        "backtest",
        help="run a rule set over recorded history and judge it",
        handler=run,
        parents=[settings_flags(), history_flags()],
        examples=[
            (
                "the default rules on files from `fraudstream generate --output`",
                "fraudstream backtest --rules rules/default.yaml --input data/sim.jsonl "
                "--labels data/sim-labels.jsonl",
            ),
            (
                "the same, every decision written to Parquet, the report as JSON",
                "fraudstream backtest --rules rules/default.yaml --input data/sim.jsonl "
                "--labels data/sim-labels.jsonl --output data/decisions.parquet --json",
            ),
            (
                "the tutorial rules on the input and labels topics (TRANSACTIONS_TOPIC, "
                "LABELS_TOPIC)",
                "fraudstream backtest --rules rules/tutorial.yaml",
            ),
        ],
    )
    bt.add_argument("--rules", dest="rules_file", help="candidate rules file")
    bt.add_argument("--since", help="score only transactions from this date (YYYY-MM-DD) on")
    bt.add_argument(
        "--output",
        type=Path,
        help="write every decision (id, time, score, outcome, reasons, label) to this file: "
        "JSON lines, or Parquet if it ends in .parquet",
    )
    bt.add_argument("--top-k", type=top_k, default=100, help=TOP_K_HELP)


def run(args: argparse.Namespace) -> int:
    settings = load_for_analysis(args)
    from fraudstream.evaluation.cli import run_backtest

    return run_backtest(args, settings)
