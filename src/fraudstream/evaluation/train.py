"""`fraudstream train`: fit the model on labelled history, split in time, never at random.

Features come from the engine itself (the same stateful code the detector runs live), in one
pass over the history in event time. The span is cut in time:

    fit days | gap | validation days | gap | test days
    ----------- training (1 - test_share) --|

A model fitted on the fit days chooses the fraud threshold on the validation days from a
target (a precision, or an alert rate); the model saved is then fitted on all training days
and keeps that threshold; the test days judge both, untouched by either choice. Each gap is
as long as labels take to arrive (`gap_days`): a model in production is trained only on days
whose verdicts are known. The model file records the split, the threshold, the target and
the test figures.
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

__all__ = [
    "TARGET_PRECISION",
    "TrainResult",
    "choose_threshold",
    "features_of",
    "make_estimator",
    "train",
]


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

TARGET_PRECISION = 0.9  # the default target: fraud where 9 alerts in 10 were fraud
VALIDATION_SHARE = 0.2  # of the training days, the last ones: where the threshold is chosen


def choose_threshold(
    probs: np.ndarray[Any, Any],
    is_fraud: np.ndarray[Any, Any],
    *,
    target_precision: float | None = None,
    alert_rate: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """The fraud threshold on these (validation) scores: with `alert_rate`, the lowest that
    flags at most that share; else the lowest whose precision reaches `target_precision`
    (the most fraud caught at that precision), or, when none does, the one of the best F1.
    Scores that tie fall on the same side. Returns it and what it gives here."""
    n = len(probs)
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], is_fraud[order].astype(np.int64)
    tp = np.cumsum(y)
    flagged = np.arange(1, n + 1)
    ends = np.flatnonzero(np.r_[p[1:] != p[:-1], True])  # last index of each run of ties
    precision = tp[ends] / flagged[ends]
    recall = tp[ends] / max(int(y.sum()), 1)
    if alert_rate is not None:
        fits = np.flatnonzero(flagged[ends] <= alert_rate * n)
        pick = int(fits[-1]) if fits.size else -1
        met = f"alert rate at most {alert_rate:.2%}"
    else:
        target = TARGET_PRECISION if target_precision is None else target_precision
        fits = np.flatnonzero(precision >= target)
        pick = int(fits[-1]) if fits.size else -1
        met = f"precision at least {target:.2f}"
        if pick < 0 and ends.size:
            f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
            pick = int(np.argmax(f1))
            met = f"best F1 (no threshold reaches precision {target:.2f})"
    if pick < 0:  # nothing may be flagged: above every score seen
        return float(np.nextafter(p[0], np.inf)) if n else 0.5, {"target": met, "flagged": 0}
    at = int(ends[pick])
    return float(p[at]), {
        "target": met,
        "precision": round(float(precision[pick]), 4),
        "recall": round(float(recall[pick]), 4),
        "alert_rate": round((at + 1) / n, 5),
    }


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
    target_precision: float | None = None,
    alert_rate: float | None = None,
    seed: int = 0,
) -> TrainResult:
    """Fit on the fit days, choose the threshold on the validation days, test on the last
    `test_share` of the span (see the module's doc)."""
    if not 0 < test_share < 1:
        raise ConfigError(f"--test-share must be between 0 and 1 (got {test_share}), like 0.3")
    if not gap_days >= 0:
        raise ConfigError(f"--gap-days must be 0 or more (got {gap_days}), like 7")
    if target_precision is not None and alert_rate is not None:
        raise ConfigError("give --target-precision or --alert-rate, not both")
    if target_precision is not None and not 0 < target_precision < 1:
        raise ConfigError(f"--target-precision must be between 0 and 1 (got {target_precision})")
    if alert_rate is not None and not 0 < alert_rate < 1:
        raise ConfigError(f"--alert-rate must be between 0 and 1 (got {alert_rate}), like 0.01")
    if not transactions:
        raise FraudstreamError(
            "no valid transactions to train on — point --input at a file or topic of "
            "transactions (see `fraudstream generate --profile sim --output`)"
        )
    labels = complete_labels(labels, transactions)[0]  # defaults, when not done yet
    engine, scored, rows, y, ts = features_of(ruleset, transactions, labels)
    first, last = int(ts.min()), int(ts.max())
    gap = int(gap_days * DAY)
    train_end = first + int((last - first) * (1 - test_share))
    val_start = first + int((train_end - first) * (1 - VALIDATION_SHARE))
    fit_end = val_start - gap
    test_start = train_end + gap
    if fit_end <= first or test_start > last:
        raise FraudstreamError(
            f"the history spans {(last - first) / DAY:.1f} days ({_day(first)} to "
            f"{_day(last)}): too short to fit on, choose a threshold on and test on, with "
            f"{gap_days:g}-day gaps between — give a longer history (--input) or a smaller "
            "--gap-days"
        )
    fit_mask, test_mask = ts < fit_end, ts >= test_start
    val_mask = (ts >= val_start) & (ts < train_end)
    if not y[fit_mask].any() or fit_mask.sum() < 100:
        raise FraudstreamError(
            f"the fit days ({_day(first)} to {_day(fit_end)}, before the validation days and "
            f"a {gap_days:g}-day gap) hold {int(fit_mask.sum()):,} transactions and "
            f"{int(y[fit_mask].sum()):,} labelled fraud; training needs at least 100 and some "
            "fraud — give labels for those days (--labels), a longer history (--input), a "
            "smaller --test-share or --gap-days"
        )
    if not y[val_mask].any():
        raise FraudstreamError(
            f"the validation days ({_day(val_start)} to {_day(train_end)}) hold no labelled "
            "fraud to choose the threshold on — give a longer history (--input) or labels for "
            "those days (--labels)"
        )
    estimator = make_estimator(seed=seed)
    estimator.fit(rows[fit_mask], y[fit_mask])
    version = f"gbt-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
    model = FraudModel(estimator, FEATURE_NAMES, engine.rule_ids, version, 0.5)
    threshold, chosen = choose_threshold(
        model.score(rows[val_mask].tolist()),
        y[val_mask],
        target_precision=target_precision,
        alert_rate=alert_rate,
    )
    # then fitted again on every training day, validation days included (the most recent
    # verdicts matter most), keeping that threshold: both fits minimise the same log loss on
    # the same features, so their probabilities are on one scale
    estimator = make_estimator(seed=seed)
    train_mask = ts < train_end
    estimator.fit(rows[train_mask], y[train_mask])
    model = FraudModel(estimator, FEATURE_NAMES, engine.rule_ids, version, threshold)
    split = {
        "fit": [_day(first), _day(fit_end)],
        "validation": [_day(val_start), _day(train_end)],
        "gap_days": gap_days,
        "test": [_day(test_start), _day(last)],
        "train": [_day(first), _day(train_end)],
        "fit_transactions": int(fit_mask.sum()),
        "validation_transactions": int(val_mask.sum()),
        "test_transactions": int(test_mask.sum()),
    }
    model.info.update(split=split, threshold=chosen)
    # the test days, decided exactly as the live engine decides (rules, model, threshold)
    live = Engine(ruleset.rules, threshold=ruleset.threshold, version=ruleset.version, model=model)
    probs = model.score(rows[test_mask].tolist()) if test_mask.any() else np.zeros(0)
    test_idx = [int(i) for i in np.flatnonzero(test_mask)]
    decisions: list[Decision] = [
        live.combine(scored[i][1], float(p)) for i, p in zip(test_idx, probs, strict=True)
    ]
    test_txs = [transactions[i] for i in test_idx]
    result = report(outcomes(test_txs, decisions, labels))
    if test_mask.any():  # calibration: does the probability say how much fraud there is?
        result["calibration"] = {
            "mean_probability": round(float(probs.mean()), 5),
            "fraud_rate": round(float(y[test_mask].mean()), 5),
            "brier": round(float(np.mean((probs - y[test_mask]) ** 2)), 5),
        }
    model.info["test_report"] = {
        k: result[k] for k in ("precision", "recall", "f1", "roc_auc", "average_precision")
    }
    return TrainResult(model, result, split)
