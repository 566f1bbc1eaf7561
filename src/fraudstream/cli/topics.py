"""`fraudstream topics`: create the pipeline's topics if missing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fraudstream.cli._common import Exit, command, load, settings_flags

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers


def add_parser(sub: Subparsers) -> None:
    command(
        sub,
        "topics",
        help="create the pipeline's topics if missing",
        handler=run,
        parents=[settings_flags()],
        examples=[
            (
                "the topics of the settings (environment, .env), on localhost:9092",
                "fraudstream topics",
            ),
            (
                "with 12 partitions each, on the broker of `fraudstream broker start --port 9093`",
                "fraudstream topics --broker-url localhost:9093 --partitions 12",
            ),
        ],
    )


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    from fraudstream.stream import ensure_topics

    created = ensure_topics(settings)
    print("created: " + ", ".join(created) if created else "all topics exist")
    return Exit.OK
