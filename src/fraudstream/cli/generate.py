"""`fraudstream generate`: random transactions to Kafka, or to files with --output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import (
    Exit,
    StopOnSignal,
    command,
    count,
    load,
    rate,
    settings_flags,
    share_incl,
)
from fraudstream.errors import ConfigError

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    gen = command(
        sub,
        "generate",
        help="stream random transactions",
        handler=run,
        clean_stop=True,
        parents=[settings_flags(("transactions",))],
        examples=[
            (
                "500 tx/s of the simulated world (labels to LABELS_TOPIC) until Ctrl-C",
                "fraudstream generate --profile sim --rate 500",
            ),
            (
                "1,000 transactions as fast as the broker takes them, the same ones each run",
                "fraudstream generate --rate max --count 1000 --seed 7",
            ),
            (
                "a million labelled transactions (141 days) to files, not Kafka, to backtest "
                "and train on (as `make eval`)",
                "fraudstream generate --profile sim --seed 7 --count 1000000 "
                "--output data/sim.jsonl --labels-output data/sim-labels.jsonl",
            ),
        ],
        problem="some transactions could not be delivered to Kafka",
    )
    gen.add_argument("--rate", type=rate, help="tx/s, or 'max' (default TRANSACTIONS_PER_SECOND)")
    gen.add_argument("--count", type=count, help="stop after N transactions (default: run on)")
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
        type=share_incl,
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


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    from fraudstream.detection import parse_duration

    try:
        parse_duration(args.label_delay)
    except ValueError as exc:
        raise ConfigError(f"--label-delay: {exc}") from None
    from fraudstream.generator import generate

    if args.labels_output is not None and args.output is None:  # (to Kafka, labels go there)
        raise ConfigError(
            "--labels-output goes with --output (files); to Kafka the labels go to the labels "
            "topic (LABELS_TOPIC)"
        )
    if args.output is not None:
        from fraudstream.generator.app import write_files

        if args.count is None:
            raise ConfigError("--output needs --count")
        from fraudstream.progress import no_progress, progress_bars

        with progress_bars() as progress:
            write_files(
                args.output,
                args.labels_output,
                count=args.count,
                seed=args.seed,
                profile=args.profile,
                fraud_rate=args.fraud_rate,
                label_delay_ms=parse_duration(args.label_delay),
                progress=progress or no_progress,
            )
        print(f"wrote {args.count:,} transactions to {args.output}", file=sys.stderr)
        return Exit.OK
    stop = StopOnSignal().install()
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
    return Exit.PROBLEM if stats.failed else Exit.OK
