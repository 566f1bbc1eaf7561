"""`fraudstream train`: fit the model on labelled history (split in time)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import (
    command,
    days,
    folds,
    fraction,
    history_flags,
    load_for_analysis,
    settings_flags,
    share_excl,
)

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    tr = command(
        sub,
        "train",
        help="fit the model on labelled history (split in time)",
        handler=run,
        parents=[settings_flags(), history_flags()],
        examples=[
            (
                "the model of rules/with-model.yaml, on files from `fraudstream generate "
                "--output` (as `make model`)",
                "fraudstream train --rules rules/with-model.yaml --input data/sim.jsonl "
                "--labels data/sim-labels.jsonl --out models/default.model",
            ),
            (
                "the same, its threshold flagging 1% of the transactions",
                "fraudstream train --rules rules/with-model.yaml --input data/sim.jsonl "
                "--labels data/sim-labels.jsonl --out models/default.model --alert-rate 0.01",
            ),
        ],
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
        type=share_excl,
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
        type=days,
        default=7,
        help="how long labels take to arrive: the gap before each validation and test window "
        "(default 7)",
    )
    tr.add_argument(
        "--folds",
        type=folds,
        default=3,
        help="consecutive validation windows the model size is chosen on (default 3)",
    )
    target = tr.add_mutually_exclusive_group()
    target.add_argument(
        "--target-precision",
        type=fraction,
        help="fraud from the score that catches the most fraud while its precision reaches "
        "this in each validation window (default 0.9)",
    )
    target.add_argument(
        "--alert-rate",
        type=fraction,
        help="fraud from the score that flags this share of the validation days' "
        "transactions, e.g. 0.01",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_for_analysis(args)
    from fraudstream.evaluation.cli import run_train

    return run_train(args, settings)
