"""What the `backtest`, `train` and `evaluate` commands do (their flags: `fraudstream.cli`)."""

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
from fraudstream.detection import FraudModel, Label, load_ruleset
from fraudstream.detection.model import MIN_LEAF
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
from fraudstream.progress import no_progress, progress_bars
from fraudstream.schema import Transaction, event_time_ms

__all__ = ["parse_columns", "run_backtest", "run_evaluate", "run_train"]

_FIELDS = sorted(f.name for f in msgspec.structs.fields(Transaction) if f.name != "decision")


def parse_columns(text: str | None) -> dict[str, str] | None:
    """`--columns id=tx_id,source=from` as {field: column}; ConfigError for anything else."""
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


def _since(text: str | None, flag: str = "--since") -> int | None:
    """A date flag as epoch ms: a date (or date and time) in UTC unless it names its zone."""
    if not text:
        return None
    try:
        day = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is not a date; give YYYY-MM-DD, like 2026-01-31"
        ) from None
    return int(day.replace(tzinfo=day.tzinfo or UTC).timestamp() * 1000)


def _check_dates(dates: dict[str, int | None], delay_days: float) -> None:
    """The date flags that are given, in an order that can work (before reading history)."""
    until, start, end = dates["train_until"], dates["test_from"], dates["test_until"]

    def day(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")

    if until is not None and start is not None and start < until + delay_days * 86_400_000:
        raise ConfigError(
            f"--test-from {day(start)} is less than {delay_days:g} days (--delay-days, the "
            f"time labels take) after --train-until {day(until)}; give a later --test-from"
        )
    first = start if start is not None else until
    if end is not None and first is not None and end <= first:
        raise ConfigError(f"--test-until {day(end)} must come after {day(first)}")


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


def _rules(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.rules_file or settings.rules_file or "rules/default.yaml")


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """`fraudstream evaluate`: decisions joined with their labels, reported."""
    with progress_bars() as progress:
        if progress is not None:
            progress("reading the decisions and labels", 0, None)
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


def _history(
    args: argparse.Namespace, settings: Settings, columns: dict[str, str] | None
) -> tuple[list[Transaction], dict[str, Label]]:
    """The labelled history of `backtest` and `train`, saying on stderr what was skipped."""
    with progress_bars() as progress:
        if progress is not None:
            progress("reading the history", 0, None)
        txs, invalid = read_transactions(
            args.input or settings.transactions_topic, settings, columns
        )
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
    return txs, labels


def run_backtest(args: argparse.Namespace, settings: Settings) -> int:
    """`fraudstream backtest`: a rule set over recorded history, judged against its labels."""
    # Every argument is checked before the history is read (which may take long, or connect).
    columns = parse_columns(args.columns)
    since = _since(args.since)
    ruleset = load_ruleset(_rules(args, settings))
    if args.output is not None:
        _check_writable(args.output, "--output", "decisions.jsonl")
    txs, labels = _history(args, settings, columns)
    with progress_bars() as progress:
        result = backtest(
            ruleset, txs, labels, since_ms=since, k=args.top_k, progress=progress or no_progress
        )
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


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    """`fraudstream train`: fit the model on labelled history, split in time, and save it."""
    # Every argument is checked before the history is read (which may take long, or connect).
    columns = parse_columns(args.columns)
    ruleset = load_ruleset(_rules(args, settings), require_model=False)
    _check_writable(args.out)
    if args.test_share is not None and args.train_until:
        raise ConfigError("give --test-share or --train-until, not both")
    dates = {
        name: _since(getattr(args, name), f"--{name.replace('_', '-')}")
        for name in ("train_until", "test_from", "test_until")
    }
    _check_dates(dates, args.gap_days)
    txs, labels = _history(args, settings, columns)
    with progress_bars() as progress:
        trained = train(
            ruleset,
            txs,
            labels,
            test_share=0.3 if args.test_share is None else args.test_share,
            gap_days=args.gap_days,
            train_until_ms=dates["train_until"],
            test_from_ms=dates["test_from"],
            test_until_ms=dates["test_until"],
            folds=args.folds,
            target_precision=args.target_precision,
            alert_rate=args.alert_rate,
            progress=progress or no_progress,
        )
    try:
        trained.model.save(args.out)
    except OSError as exc:
        raise FraudstreamError(
            f"cannot write the model to {args.out} ({exc.strerror or exc}); "
            "free space or give another --out"
        ) from None
    split, chosen = trained.split, trained.model.info["threshold"]
    print(_selection(trained.selection, args.gap_days), file=sys.stderr)
    print(
        f"model {trained.model.version} ({trained.selection['chosen']}) saved to {args.out}: "
        f"trained on {split['train'][0]} to {split['train'][1]}, tested on "
        f"{split['test'][0]} to {split['test'][1]} after a {args.gap_days:g}-day delay\n"
        f"fraud threshold {trained.model.threshold:.4f} ({chosen['target']}; on the "
        f"validation windows: {_chosen(chosen)})\n{_unlearned(trained.model)}",
        file=sys.stderr,
    )
    _print(trained.report, args.json)
    return 0


def _unlearned(model: FraudModel) -> str:
    """The rules too rare on the training days for the model to learn, which decide by their
    weights (a line, or nothing)."""
    rare = sorted(model.unlearned(model.rule_ids))
    if not rare:
        return ""
    hits = model.info.get("rule_hits", {})
    counts = {r: hits.get(r, 0) for r in rare}
    listed = ", ".join(f"{r} ({n} hit{'' if n == 1 else 's'})" for r, n in counts.items())
    return (
        f"rules with fewer than {MIN_LEAF} hits on the training days, which the model cannot "
        f"have learned and which decide by their weights against the rules' threshold: "
        f"{listed}\n"
    )


def _selection(selection: dict[str, Any], delay: float) -> str:
    """Each candidate model on each fold (AUC, AP, card precision@k), mean and spread."""
    folds = selection["folds"]
    lines = [
        f"model selection on {len(folds)} time folds (fit on the days before each validation "
        f"window, less a {delay:g}-day delay):"
    ]
    for c in selection["candidates"]:
        mark = "  <- chosen" if c["model"] == selection["chosen"] else ""
        lines.append(
            f"  {c['model']}: average precision {c['average_precision_mean']:.4f} "
            f"± {c['average_precision_std']:.4f}{mark}"
        )
        for f, m in zip(folds, c["folds"], strict=True):
            lines.append(
                f"    fit to {f['fit'][1]}, validate {f['validation'][0]} to "
                f"{f['validation'][1]}: AUC {_fmt(m['roc_auc'])}  AP "
                f"{_fmt(m['average_precision'])}  card precision@100/day "
                f"{_fmt(m['card_precision_at_k'])}  ({m['fraud']:,} fraud of "
                f"{m['transactions']:,})"
            )
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _chosen(chosen: dict[str, Any]) -> str:
    if not chosen.get("flagged", 1):
        return "flags nothing"
    worst = chosen.get("lowest_window_precision")
    return (
        f"precision {chosen['precision']:.3f}"
        + (f" (lowest window {worst:.3f})" if worst is not None else "")
        + f", recall {chosen['recall']:.3f}, alert rate {chosen['alert_rate']:.2%}"
    )


def _by_class(counts: Counter[str]) -> str:
    """`schema 3, invalid_amount 2`: most first, as the dead-letter headers name them."""
    return ", ".join(f"{k} {v:,}" for k, v in counts.most_common())
