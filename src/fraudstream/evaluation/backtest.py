"""Run a rule set (and its model) over recorded history in event time, and judge it.

Nothing is written to any topic: a candidate rule change is judged before it is deployed.

    result = backtest(ruleset, transactions, labels)
    print(format_report(result.report))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fraudstream.detection import Engine, Label, RuleSet
from fraudstream.evaluation.metrics import Outcome, Report, report
from fraudstream.evaluation.sources import complete_labels
from fraudstream.schema import Decision, Transaction

__all__ = ["BacktestResult", "backtest", "outcomes"]

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
            )
        )
    return out


def backtest(
    ruleset: RuleSet,
    transactions: Sequence[Transaction],
    labels: dict[str, Label],
    *,
    since_ms: int | None = None,
) -> BacktestResult:
    """Decide every transaction in order; labels feed back from their `known_ms` on."""
    labels = complete_labels(labels, transactions)[0]  # defaults, when not done yet
    engine = Engine.from_ruleset(ruleset)
    engine.observe_labels(labels.values())
    decisions: list[Decision] = []
    for i in range(0, len(transactions), CHUNK):
        decisions += engine.decide(transactions[i : i + CHUNK])
    return BacktestResult(
        decisions, report(outcomes(transactions, decisions, labels, since_ms=since_ms))
    )
