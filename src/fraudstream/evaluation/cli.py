"""The `backtest`, `train` and `evaluate` commands (called by `fraudstream.cli`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from fraudstream.config import Settings
from fraudstream.detection import load_ruleset
from fraudstream.errors import ConfigError, FraudstreamError
from fraudstream.evaluation.backtest import backtest, write_decisions
from fraudstream.evaluation.metrics import Outcome, Report, format_report, report
from fraudstream.evaluation.sources import (
    complete_labels,
    read_decisions,
    read_labels,
    read_transactions,
)
from fraudstream.evaluation.train import train
from fraudstream.schema import Transaction, event_time_ms

__all__ = ["run"]

_FIELDS = sorted(f.name for f in msgspec.structs.fields(Transaction) if f.name != "decision")


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    out: dict[str, str] = {}
    for part in text.split(","):
        field, eq, column = (x.strip() for x in part.partition("="))
        if not eq or not field or not column:
            raise ConfigError(
                f"--columns: {part!r} is not field=column; give pairs like id=tx_id,source=from"
            )
        if field not in _FIELDS:
            raise ConfigError(
                f"--columns: {field!r} is not a transaction field; fields are "
                f"{', '.join(_FIELDS)} (field=column, e.g. id=tx_id)"
            )
        out[field] = column
    return out


def _since(text: str | None) -> int | None:
    """--since as epoch ms: a date (or date and time) in UTC unless it names its zone."""
    if not text:
        return None
    try:
        day = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since: {text!r} is not a date; give YYYY-MM-DD, like 2026-01-31"
        ) from None
    return int(day.replace(tzinfo=day.tzinfo or UTC).timestamp() * 1000)


def _check_writable(out: Path, flag: str = "--out", example: str = "default.model") -> None:
    """Fail before a long run, not after, when its file cannot be written."""
    if out.is_dir():
        raise ConfigError(f"{flag}: {out} is a directory; give a file, like {out / example}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{flag}: cannot create {out.parent} ({exc.strerror or exc}); give another path"
        ) from None
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"{flag}: {out.parent} is not writable; give another path")


def _event_ms(value: Any) -> int | None:
    """A decided record's `timestamp` (epoch ms or RFC 3339) as epoch ms; None if neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return event_time_ms(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


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
                    _event_ms(record.get("timestamp")),
                    record.get("source"),
                )
            )
        _print(report(rows, args.top_k), args.json)
        return 0
    # Every argument is checked before the history is read (which may take long, or connect).
    columns = _columns(args.columns)
    if args.command == "backtest":
        since = _since(args.since)
        ruleset = load_ruleset(rules)
        if args.output is not None:
            _check_writable(args.output, "--output", "decisions.jsonl")
    else:
        ruleset = load_ruleset(rules, require_model=False)
        _check_writable(args.out)
    txs, invalid = read_transactions(args.input or settings.transactions_topic, settings, columns)
    labels, label_counts = complete_labels(
        read_labels(args.labels or settings.labels_topic, settings), txs
    )
    if invalid:
        print(
            f"skipped {sum(invalid.values()):,} invalid records: {_by_class(invalid)}",
            file=sys.stderr,
        )
    if label_counts["label_without_transaction"]:
        print(
            f"skipped {label_counts['label_without_transaction']:,} labels whose id is no "
            "transaction of the input (label_without_transaction)",
            file=sys.stderr,
        )
    if label_counts["known_when_published"]:
        print(
            f"{label_counts['known_when_published']:,} labels without known_ms: taken as known "
            "when published (published_ms, else the transaction's time)",
            file=sys.stderr,
        )
    if args.command == "backtest":
        result = backtest(ruleset, txs, labels, since_ms=since, k=args.top_k)
        if args.output is not None:
            try:
                n = write_decisions(args.output, txs, result.decisions, labels, since_ms=since)
            except OSError as exc:
                raise FraudstreamError(
                    f"cannot write the decisions to {args.output} ({exc.strerror or exc}); "
                    "free space or give another --output"
                ) from None
            print(f"wrote {n:,} decisions to {args.output}", file=sys.stderr)
        _print(result.report, args.json)
        return 0
    trained = train(
        ruleset,
        txs,
        labels,
        test_share=args.test_share,
        gap_days=args.gap_days,
        target_precision=args.target_precision,
        alert_rate=args.alert_rate,
    )
    try:
        trained.model.save(args.out)
    except OSError as exc:
        raise FraudstreamError(
            f"cannot write the model to {args.out} ({exc.strerror or exc}); "
            "free space or give another --out"
        ) from None
    split, chosen = trained.split, trained.model.info["threshold"]
    print(
        f"model {trained.model.version} saved to {args.out}: fitted on {split['fit'][0]} to "
        f"{split['fit'][1]}, threshold chosen on {split['validation'][0]} to "
        f"{split['validation'][1]}, tested on {split['test'][0]} to {split['test'][1]} "
        f"({args.gap_days:g}-day gaps)\n"
        f"fraud threshold {trained.model.threshold:.4f} ({chosen['target']}; on the "
        f"validation days: {_chosen(chosen)})",
        file=sys.stderr,
    )
    _print(trained.report, args.json)
    return 0


def _chosen(chosen: dict[str, Any]) -> str:
    if not chosen.get("flagged", 1):
        return "flags nothing"
    return (
        f"precision {chosen['precision']:.3f}, recall {chosen['recall']:.3f}, "
        f"alert rate {chosen['alert_rate']:.2%}"
    )


def _by_class(counts: Counter[str]) -> str:
    """`schema 3, invalid_amount 2`: most first, as the dead-letter headers name them."""
    return ", ".join(f"{k} {v:,}" for k, v in counts.most_common())
