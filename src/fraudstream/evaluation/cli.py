"""The `backtest`, `train` and `evaluate` commands (called by `fraudstream.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from fraudstream.config import Settings
from fraudstream.detection import load_ruleset
from fraudstream.errors import ConfigError
from fraudstream.evaluation.backtest import backtest
from fraudstream.evaluation.metrics import Outcome, Report, format_report, report
from fraudstream.evaluation.sources import read_decisions, read_labels, read_transactions
from fraudstream.evaluation.train import train

__all__ = ["run"]


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        return dict(tuple(part.split("=", 1)) for part in text.split(","))  # type: ignore[misc]
    except ValueError:
        raise ConfigError("--columns takes name=column pairs: id=tx_id,source=from") from None


def _print(r: Report, as_json: bool) -> None:
    print(json.dumps(r, indent=2) if as_json else format_report(r))


def run(args: argparse.Namespace, settings: Settings) -> int:
    rules = Path(getattr(args, "rules_file", None) or settings.rules_file or "rules/default.yaml")
    if args.command == "evaluate":
        decisions = read_decisions(
            args.decisions or [settings.legit_topic, settings.fraud_topic], settings
        )
        labels = read_labels(args.labels or settings.labels_topic, settings)
        rows = []
        for tx_id, record in decisions.items():
            label = labels.get(tx_id)
            d = record["decision"]
            rows.append(
                Outcome(
                    bool(label and label.is_fraud),
                    label.scenario if label else None,
                    d.get("outcome") == "fraud",
                    float(d.get("score", 0.0)),
                    tuple(r["rule"] for r in d.get("reasons", []) if r.get("rule") != "model"),
                )
            )
        _print(report(rows), args.json)
        return 0
    columns = _columns(args.columns)
    txs, invalid = read_transactions(args.input or settings.transactions_topic, settings, columns)
    labels = read_labels(args.labels or settings.labels_topic, settings)
    if invalid:
        print(f"skipped {invalid:,} invalid records", file=sys.stderr)
    if args.command == "backtest":
        ruleset = load_ruleset(rules)
        since = None
        if args.since:
            since = int(datetime.fromisoformat(args.since).replace(tzinfo=UTC).timestamp() * 1000)
        result = backtest(ruleset, txs, labels, since_ms=since)
        _print(result.report, args.json)
        return 0
    ruleset = load_ruleset(rules, require_model=False)
    trained = train(ruleset, txs, labels, test_share=args.test_share, gap_days=args.gap_days)
    trained.model.save(args.out)
    print(
        f"model {trained.model.version} saved to {args.out}; trained on "
        f"{trained.split['train']}, tested on {trained.split['test']} after a "
        f"{args.gap_days:g}-day gap",
        file=sys.stderr,
    )
    _print(trained.report, args.json)
    return 0
