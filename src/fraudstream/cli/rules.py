"""`fraudstream rules check FILE...`: every problem of each rule file, with the rule id."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.cli._common import Exit, command, load

if TYPE_CHECKING:
    from fraudstream.cli._common import Subparsers

_PROBLEM = "a file has a problem (each one is listed, with its rule id)"


def add_parser(sub: Subparsers) -> None:
    rules = command(
        sub,
        "rules",
        help="work with rule files",
        examples=[
            (
                "check two of the shipped rule files",
                "fraudstream rules check rules/default.yaml rules/tutorial.yaml",
            )
        ],
        problem=_PROBLEM,
    )
    rsub = rules.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = command(
        rsub,
        "check",
        help="validate rule files; report each problem",
        handler=check_files,
        description="Validate rule files: every problem of each file, with the id of the rule "
        "it is in (or file, lists_file, model), in one pass. Needs no broker.",
        examples=[
            ("one file", "fraudstream rules check rules/default.yaml"),
            (
                "several files: each one's problems, exit 1 if any has one",
                "fraudstream rules check rules/default.yaml rules/tutorial.yaml",
            ),
        ],
        problem=_PROBLEM,
    )
    check.add_argument("files", nargs="+", type=Path, help="the rule files (YAML)")


def check_files(args: argparse.Namespace) -> int:
    load(args)  # unused, but as in every command a bad KAFKA_* variable is named here too
    from fraudstream.detection import check_rules_file

    bad = 0
    for path in args.files:
        problems = check_rules_file(path)
        if not problems:
            print(f"{path}: ok")
            continue
        bad += 1
        print(f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}")
        for rule_id, message in problems:
            print(f"  {rule_id}: {message}")
    return Exit.PROBLEM if bad else Exit.OK
