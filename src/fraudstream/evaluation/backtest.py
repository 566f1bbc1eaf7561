"""Run a rule set (and its model) over recorded history in event time, and judge it.

Nothing is written to any topic: a candidate rule change is judged before it is deployed.

    result = backtest(ruleset, transactions, labels)
    print(format_report(result.report))
    write_decisions(Path("decisions.jsonl"), transactions, result.decisions, labels)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from fraudstream.detection import Engine, Label, RuleSet
from fraudstream.evaluation.metrics import TOP_K, Outcome, Report, report
from fraudstream.evaluation.sources import complete_labels
from fraudstream.progress import Progress, no_progress
from fraudstream.schema import Decision, Transaction

__all__ = ["BacktestResult", "backtest", "outcomes", "write_decisions"]

CHUNK = 5_000  # the engine decides in batches, as live


@dataclass
class BacktestResult:
    decisions: list[Decision]
    report: Report


def outcomes(
    transactions: Sequence[Transaction],
    decisions: Sequence[Decision],
    labels: dict[str, Label],
    *,
    since_ms: int | None = None,
) -> list[Outcome]:
    """Join decisions with labels (unlabelled transactions count as legit)."""
    out = []
    for tx, d in zip(transactions, decisions, strict=True):
        if since_ms is not None and tx.ts_ms < since_ms:
            continue
        label = labels.get(tx.id or "")
        out.append(
            Outcome(
                is_fraud=bool(label and label.is_fraud),
                scenario=label.scenario if label else None,
                flagged=d.outcome == "fraud",
                score=d.score,
                rules=tuple(r.rule for r in d.reasons if r.rule != "model"),
                ts_ms=tx.ts_ms,
                card=tx.source,
            )
        )
    return out


def backtest(
    ruleset: RuleSet,
    transactions: Sequence[Transaction],
    labels: dict[str, Label],
    *,
    since_ms: int | None = None,
    k: int = TOP_K,
    progress: Progress = no_progress,
) -> BacktestResult:
    """Decide every transaction in order; labels feed back from their `known_ms` on."""
    labels = complete_labels(labels, transactions)[0]  # defaults, when not done yet
    engine = Engine.from_ruleset(ruleset)
    engine.observe_labels(labels.values())
    decisions: list[Decision] = []
    for i in range(0, len(transactions), CHUNK):
        decisions += engine.decide(transactions[i : i + CHUNK])
        progress("deciding", len(decisions), len(transactions))
    return BacktestResult(
        decisions, report(outcomes(transactions, decisions, labels, since_ms=since_ms), k)
    )


def write_decisions(
    path: Path,
    transactions: Sequence[Transaction],
    decisions: Sequence[Decision],
    labels: dict[str, Label],
    *,
    since_ms: int | None = None,
) -> int:
    """Every decision, one row per transaction (from `since_ms` on), to JSON lines or, for a
    `.parquet` path, Parquet: id, event time (epoch ms), source, target, amount, currency,
    score, outcome, reasons, rules version, and the label (`is_fraud`, `scenario`; null when
    there is none). Returns how many rows were written."""
    rows: list[dict[str, Any]] = []
    for tx, d in zip(transactions, decisions, strict=True):
        ts = tx.ts_ms
        if since_ms is not None and ts < since_ms:
            continue
        label = labels.get(tx.id or "")
        rows.append(
            {
                "id": tx.id,
                "timestamp": ts,
                "source": tx.source,
                "target": tx.target,
                "amount": tx.amount,
                "currency": tx.currency,
                "score": d.score,
                "outcome": d.outcome,
                "reasons": [{"rule": r.rule, "reason": r.reason} for r in d.reasons],
                "rules_version": d.rules_version,
                "is_fraud": label.is_fraud if label else None,
                "scenario": label.scenario if label else None,
            }
        )
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        encode = msgspec.json.Encoder().encode
        with open(tmp, "wb") as f:
            for row in rows:
                f.write(encode(row) + b"\n")
    tmp.replace(path)
    return len(rows)
