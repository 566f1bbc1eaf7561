"""`fraudstream train`: fit the model on labelled history, split in time, never at random.

Features come from the engine itself (the same stateful code the detector runs live), in one
pass over the history in event time: train on the first days, skip a gap, test on the days
after. The model file records the split and the test figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from fraudstream.detection import DAY, FEATURE_NAMES, Engine, FraudModel, Label, RuleSet
from fraudstream.errors import ConfigError, FraudstreamError
from fraudstream.evaluation.backtest import CHUNK, outcomes
from fraudstream.evaluation.metrics import Report, report
from fraudstream.evaluation.sources import complete_labels
from fraudstream.schema import Decision, Transaction

__all__ = ["TrainResult", "features_of", "make_estimator", "train"]


@dataclass
class TrainResult:
    model: FraudModel
    report: Report  # rules + model together, on the test days
    split: dict[str, Any]


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


# The model's size: trees x leaves per tree. Scoring cost grows with both (the compiled
# kernel walks every tree); benchmarks/model_size.py measures both against average precision
# (2026-12-01, 600,000 simulated, one thread): 300x31 AP 0.944, AUC 0.991, 7.95 µs/tx;
# 100x15 0.943, 0.988, 1.48 µs; 50x31 0.942, 0.993, 0.74 µs; 20x7 0.904, 0.990, 0.17 µs.
TREES = 50
LEAVES = 31


LEARNING_RATE = 0.08


def make_estimator(
    *,
    trees: int = TREES,
    leaves: int = LEAVES,
    learning_rate: float = LEARNING_RATE,
    seed: int = 0,
) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        max_iter=trees,
        learning_rate=learning_rate,
        max_leaf_nodes=leaves,
        l2_regularization=1.0,
        early_stopping=False,
        random_state=seed,
    )


def features_of(
    ruleset: RuleSet, transactions: Sequence[Transaction], labels: dict[str, Label]
) -> tuple[Engine, list[Any], np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """One pass of the live engine over the history (labels known from their own time):
    the engine, its (row, hits) per transaction, the model's input rows, fraud flags and
    event times."""
    engine = Engine(
        ruleset.rules, threshold=ruleset.threshold, version=ruleset.version, features=True
    )
    engine.observe_labels(labels.values())
    scored = []
    for i in range(0, len(transactions), CHUNK):
        scored += engine.score(transactions[i : i + CHUNK])
    rows = np.asarray(engine.model_rows(scored), dtype=np.float32)
    y = np.fromiter(
        (bool((lab := labels.get(t.id or "")) and lab.is_fraud) for t in transactions),
        dtype=bool,
        count=len(transactions),
    )
    ts = np.fromiter((t.ts_ms for t in transactions), dtype=np.int64, count=len(transactions))
    return engine, scored, rows, y, ts


def train(
    ruleset: RuleSet,
    transactions: Sequence[Transaction],
    labels: dict[str, Label],
    *,
    test_share: float = 0.3,
    gap_days: float = 7,
    seed: int = 0,
) -> TrainResult:
    """Fit on the first (1 - test_share) of the time span, test after a gap of `gap_days`."""
    if not 0 < test_share < 1:
        raise ConfigError(f"--test-share must be between 0 and 1 (got {test_share}), like 0.3")
    if not gap_days >= 0:
        raise ConfigError(f"--gap-days must be 0 or more (got {gap_days}), like 7")
    if not transactions:
        raise FraudstreamError(
            "no valid transactions to train on — point --input at a file or topic of "
            "transactions (see `fraudstream generate --profile sim --output`)"
        )
    labels = complete_labels(labels, transactions)[0]  # defaults, when not done yet
    engine, scored, rows, y, ts = features_of(ruleset, transactions, labels)
    first, last = int(ts.min()), int(ts.max())
    train_end = first + int((last - first) * (1 - test_share))
    test_start = train_end + int(gap_days * DAY)
    train_mask, test_mask = ts < train_end, ts >= test_start
    if not y[train_mask].any() or train_mask.sum() < 100:
        raise FraudstreamError(
            f"the training days ({_day(first)} to {_day(train_end)}) hold "
            f"{int(train_mask.sum()):,} transactions and {int(y[train_mask].sum()):,} labelled "
            "fraud; training needs at least 100 and some fraud — give labels for those days "
            "(--labels), a longer history (--input) or a smaller --test-share"
        )
    estimator = make_estimator(seed=seed)
    estimator.fit(rows[train_mask], y[train_mask])
    split = {
        "train": [_day(first), _day(train_end)],
        "gap_days": gap_days,
        "test": [_day(test_start), _day(last)],
        "train_transactions": int(train_mask.sum()),
        "test_transactions": int(test_mask.sum()),
    }
    version = f"gbt-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
    model = FraudModel(estimator, FEATURE_NAMES, engine.rule_ids, version, {"split": split})
    # rules and model together on the test days, exactly as the live engine combines them
    live = Engine(
        ruleset.rules,
        threshold=ruleset.threshold,
        version=ruleset.version,
        model=model,
        model_weight=ruleset.model.weight if ruleset.model else 1.0,
    )
    probs = model.score(rows[test_mask].tolist()) if test_mask.any() else np.zeros(0)
    test_idx = [int(i) for i in np.flatnonzero(test_mask)]
    decisions: list[Decision] = [
        live.combine(scored[i][1], float(p)) for i, p in zip(test_idx, probs, strict=True)
    ]
    test_txs = [transactions[i] for i in test_idx]
    result = report(outcomes(test_txs, decisions, labels))
    model.info["test_report"] = {
        k: result[k] for k in ("precision", "recall", "f1", "roc_auc", "average_precision")
    }
    return TrainResult(model, result, split)
