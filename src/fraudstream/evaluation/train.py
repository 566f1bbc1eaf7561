"""`fraudstream train`: fit the model on labelled history, split in time, never at random.

Features come from the engine itself (the same stateful code the detector runs live), in one
pass over the history in event time. The span is cut in time, with a delay as long as labels
take to arrive (`gap_days`) before every window a model is judged on (the prequential
protocol): a model in production learns only from days whose verdicts are known.

    training days ......................................| delay | test days
    fold 1: fit ........| delay | validate |
    fold 2: fit ...................| delay | validate |
    fold 3: fit ..............................| delay | validate |

The validation windows are the last `VALIDATION_SHARE` of the training days, cut in `folds`.
Each candidate (size, learning rate, L2) is fitted and judged on every fold; the best mean
average precision wins. Its predictions of the windows choose the fraud threshold from a target:
a precision, reached in every window (a quiet window must not hide a bad one), or an alert rate
over them all. The model saved is that candidate fitted on all training days,
with that threshold; the test days judge it, untouched by any choice, and its scores there
become the reference live decisions are compared with (`detection/drift.py`). The model file
records the days, the folds' figures, the threshold, the target, the drift reference and the
test figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudstream.detection import DAY, FEATURE_NAMES, Engine, FraudModel, Label, RuleSet
from fraudstream.detection.drift import WINDOW, drift_reference
from fraudstream.detection.model import MIN_LEAF
from fraudstream.errors import ConfigError, FraudstreamError
from fraudstream.evaluation.backtest import CHUNK, outcomes
from fraudstream.evaluation.metrics import Outcome, Report, card_precision_at_k, report
from fraudstream.evaluation.sources import complete_labels
from fraudstream.progress import Progress, no_progress
from fraudstream.schema import Decision, Transaction

__all__ = [
    "CANDIDATES",
    "TARGET_PRECISION",
    "Candidate",
    "TrainResult",
    "choose_threshold",
    "choose_threshold_in_windows",
    "features_of",
    "make_estimator",
    "train",
]


@dataclass
class TrainResult:
    model: FraudModel
    report: Report  # rules + model together, on the test days
    split: dict[str, Any]
    selection: dict[str, Any]  # the folds, each candidate model's figures on them, the chosen


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


# The model's size: trees x leaves per tree. Scoring cost grows with both (the compiled
# kernel walks every tree); benchmarks/model_size.py measures both against average precision
# (2026-12-01, 600,000 simulated, one thread): 300x31 AP 0.944, AUC 0.991, 7.95 µs/tx;
# 100x15 0.943, 0.988, 1.48 µs; 50x31 0.942, 0.993, 0.74 µs; 20x7 0.904, 0.990, 0.17 µs.
TREES = 50
LEAVES = 31


LEARNING_RATE = 0.08
L2 = 1.0

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
    flags at most that share; else, of those whose precision reaches `target_precision`, the
    one that catches the most fraud, and of those the highest (no alert that catches nothing
    more), or, when none reaches it, the one of the best F1.
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
        pick = -1
        if fits.size:  # the most fraud caught at that precision, with the fewest alerts
            pick = int(fits[np.argmax(recall[fits] >= recall[fits[-1]])])
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


def choose_threshold_in_windows(
    probs: Sequence[np.ndarray[Any, Any]],
    is_fraud: Sequence[np.ndarray[Any, Any]],
    *,
    target_precision: float | None = None,
    alert_rate: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """The fraud threshold on validation windows (each window's scores and labels): with a
    precision target, of the thresholds whose precision reaches it in every window that they
    flag anything in, the one that catches the most fraud, and of those the highest (no alert
    that catches nothing more), with its figures over all windows and
    the lowest window's precision; with `alert_rate`, or when no threshold reaches the
    target in every window, `choose_threshold` on all windows pooled.

    Pooled, a window with little fraud and clean scores lifts the precision of a window
    where alerts pile up: on the simulator three weekly windows pooled chose 0.039 while each
    window alone needed 0.064 to 0.118 (`make eval`, 2026-12-02)."""
    pooled_p, pooled_y = np.concatenate(list(probs)), np.concatenate(list(is_fraud))
    if alert_rate is not None or not len(probs):
        return choose_threshold(
            pooled_p, pooled_y, target_precision=target_precision, alert_rate=alert_rate
        )
    target = TARGET_PRECISION if target_precision is None else target_precision
    candidates = np.unique(pooled_p)  # ascending: the first that fits catches the most
    ok = np.ones(len(candidates), dtype=bool)
    worst = np.ones(len(candidates))
    for p, y in zip(probs, is_fraud, strict=True):
        order = np.sort(p)
        flagged = len(p) - np.searchsorted(order, candidates, side="left")
        fraud_sorted = np.sort(p[y.astype(bool)])
        caught = len(fraud_sorted) - np.searchsorted(fraud_sorted, candidates, side="left")
        precision = np.where(flagged > 0, caught / np.maximum(flagged, 1), 1.0)
        ok &= precision >= target
        worst = np.minimum(worst, precision)
    fits = np.flatnonzero(ok)  # every candidate is a score: each flags something
    if fits.size:
        fraud_all = np.sort(pooled_p[pooled_y.astype(bool)])
        caught_all = len(fraud_all) - np.searchsorted(fraud_all, candidates[fits], side="left")
        fits = fits[caught_all == caught_all.max()][-1:]  # the most caught; the highest
    if not fits.size:
        threshold, info = choose_threshold(pooled_p, pooled_y, target_precision=target)
        info["target"] += f" (no threshold reaches it in each of the {len(probs)} windows)"
        return threshold, info
    t = float(candidates[fits[0]])
    flagged_all = pooled_p >= t
    return t, {
        "target": f"precision at least {target:.2f} in each of {len(probs)} windows",
        "precision": round(float(pooled_y[flagged_all].mean()), 4),
        "lowest_window_precision": round(float(worst[fits[0]]), 4),
        "recall": round(float(pooled_y[flagged_all].sum() / max(int(pooled_y.sum()), 1)), 4),
        "alert_rate": round(float(flagged_all.mean()), 5),
    }


def make_estimator(
    *,
    trees: int = TREES,
    leaves: int = LEAVES,
    learning_rate: float = LEARNING_RATE,
    l2: float = L2,
    seed: int = 0,
) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(
        max_iter=trees,
        learning_rate=learning_rate,
        max_leaf_nodes=leaves,
        l2_regularization=l2,
        min_samples_leaf=MIN_LEAF,
        early_stopping=False,
        random_state=seed,
    )


def features_of(
    ruleset: RuleSet,
    transactions: Sequence[Transaction],
    labels: dict[str, Label],
    progress: Progress = no_progress,
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
        progress("features", len(scored), len(transactions))
    rows = np.asarray(engine.model_rows(scored), dtype=np.float32)
    y = np.fromiter(
        (bool((lab := labels.get(t.id or "")) and lab.is_fraud) for t in transactions),
        dtype=bool,
        count=len(transactions),
    )
    ts = np.fromiter((t.ts_ms for t in transactions), dtype=np.int64, count=len(transactions))
    return engine, scored, rows, y, ts


@dataclass(frozen=True)
class Candidate:
    """One model to try: its size (trees x leaves per tree) and how it learns (the learning
    rate; L2 regularisation of the leaf values)."""

    trees: int
    leaves: int
    learning_rate: float = LEARNING_RATE
    l2: float = L2

    def __str__(self) -> str:
        return (
            f"{self.trees} trees x {self.leaves} leaves, learning rate {self.learning_rate:g}, "
            f"L2 {self.l2:g}"
        )


# The models tried, cheapest to score first (a tie goes to the earlier): five sizes, each
# scoring in under 2 µs per transaction compiled (the throughput issue's bound;
# benchmarks/model_size.py measured 30x15 0.32, 50x31 0.74 and 100x15 1.48 µs on 2026-12-01),
# each with a slow and a fast learning rate (the fast one with more L2 regularisation: a few
# trees taking big steps overfit first).
CANDIDATES = tuple(
    Candidate(trees, leaves, rate, l2)
    for trees, leaves in ((30, 15), (50, 15), (30, 31), (100, 15), (TREES, LEAVES))
    for rate, l2 in ((LEARNING_RATE, L2), (0.2, 10.0))
)


def _by_fit(candidates: Sequence[Candidate]) -> dict[tuple[int, float, float], list[Candidate]]:
    """Candidates by what one fit serves: (leaves, learning rate, L2); trees are its stages."""
    out: dict[tuple[int, float, float], list[Candidate]] = {}
    for c in candidates:
        out.setdefault((c.leaves, c.learning_rate, c.l2), []).append(c)
    return out


FOLDS = 3


def _fold_metrics(
    probs: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    txs: Sequence[Transaction],
) -> dict[str, Any]:
    both = 0 < int(y.sum()) < len(y)
    rows = [
        Outcome(bool(f), None, False, float(p), (), t.ts_ms, t.source)
        for p, f, t in zip(probs, y, txs, strict=True)
    ]
    cp = card_precision_at_k(rows)
    return {
        "transactions": len(y),
        "fraud": int(y.sum()),
        "roc_auc": round(float(roc_auc_score(y, probs)), 4) if both else None,
        "average_precision": round(float(average_precision_score(y, probs)), 4) if both else None,
        "card_precision_at_k": cp["mean"] if cp else None,
    }


def train(
    ruleset: RuleSet,
    transactions: Sequence[Transaction],
    labels: dict[str, Label],
    *,
    test_share: float = 0.3,
    gap_days: float = 7,
    train_until_ms: int | None = None,
    test_from_ms: int | None = None,
    test_until_ms: int | None = None,
    folds: int = FOLDS,
    candidates: Sequence[Candidate] = CANDIDATES,
    target_precision: float | None = None,
    alert_rate: float | None = None,
    drift_window: int = WINDOW,
    seed: int = 0,
    progress: Progress = no_progress,
) -> TrainResult:
    """Choose the model (size, learning rate) on prequential folds, the threshold on their
    validation windows, fit on every training day, test after (see the module's doc)."""
    if not 0 < test_share < 1:
        raise ConfigError(f"--test-share must be between 0 and 1 (got {test_share}), like 0.3")
    if not gap_days >= 0:
        raise ConfigError(f"--delay-days must be 0 or more (got {gap_days}), like 7")
    if not 1 <= folds <= 20:
        raise ConfigError(f"--folds must be 1 to 20 (got {folds}), like 3")
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
    ts_all = [t.ts_ms for t in transactions]
    first, last = min(ts_all), max(ts_all)
    gap = int(gap_days * DAY)
    span = f"the history runs from {_day(first)} to {_day(last)}"
    train_end = (
        train_until_ms
        if train_until_ms is not None
        else first + int((last - first) * (1 - test_share))
    )
    test_start = test_from_ms if test_from_ms is not None else train_end + gap
    test_end = test_until_ms if test_until_ms is not None else last + 1
    if train_end <= first:
        if train_until_ms is None:  # (not given: the share left nothing before the test)
            raise ConfigError(
                f"the history is too short to hold out --test-share {test_share:g} for the "
                f"test: {span}; give a longer history, or --train-until and --test-from"
            )
        raise ConfigError(f"--train-until {_day(train_end)} leaves no training days: {span}")
    if test_start < train_end + gap:
        raise ConfigError(
            f"the test days must begin at least {gap_days:g} days (--delay-days, the time "
            f"labels take) after the training days end ({_day(train_end)}): give --test-from "
            f"{_day(train_end + gap)} or later"
        )
    if test_until_ms is not None and test_end <= test_start:
        raise ConfigError(
            f"--test-until {_day(test_end)} is not after the test days' start "
            f"({_day(test_start)}); give a later date"
        )
    val_start = first + int((train_end - first) * (1 - VALIDATION_SHARE))
    windows = [
        (
            val_start + (train_end - val_start) * i // folds,
            val_start + (train_end - val_start) * (i + 1) // folds,
        )
        for i in range(folds)
    ]
    if windows[0][0] - gap <= first or test_start > last:
        raise FraudstreamError(
            f"{span} ({(last - first) / DAY:.1f} days): too short to fit on, validate on "
            f"({folds} folds) and test on, with {gap_days:g}-day gaps between — give a longer "
            "history (--input), a smaller --delay-days or fewer --folds"
        )
    engine, scored, rows, y, ts = features_of(ruleset, transactions, labels, progress)
    fold_masks = []
    for a, b in windows:
        fit, val = ts < a - gap, (ts >= a) & (ts < b)
        if not y[fit].any() or fit.sum() < 100 or not y[val].any():
            raise FraudstreamError(
                f"the fold validating on {_day(a)} to {_day(b)} fits on {int(fit.sum()):,} "
                f"transactions with {int(y[fit].sum()):,} labelled fraud and validates on "
                f"{int(y[val].sum()):,} fraud; each fold needs at least 100 transactions and "
                "some fraud on both sides — give labels for those days (--labels), a longer "
                "history (--input), a smaller --delay-days or fewer --folds"
            )
        fold_masks.append((fit, val))

    test_mask = (ts >= test_start) & (ts < test_end)
    if not test_mask.any():
        raise FraudstreamError(
            f"no transaction falls in the test days ({_day(test_start)} to {_day(test_end)}); "
            f"{span} — give other --test-from / --test-until dates"
        )

    # model selection: each candidate on each fold, judged by average precision. Candidates
    # that differ only in their number of trees share one fit: boosting adds trees one after
    # the other, so the first 30 trees of a 100-tree fit are the 30-tree model (staged).
    staged_probs: dict[Candidate, list[np.ndarray[Any, Any]]] = {c: [] for c in candidates}
    fits, done = len(_by_fit(candidates)) * len(fold_masks), 0
    progress("model selection (fits)", done, fits)
    for (leaves, rate, l2), group in _by_fit(candidates).items():
        stages = {c.trees: c for c in group}
        for fit, val in fold_masks:
            est = make_estimator(
                trees=max(stages), leaves=leaves, learning_rate=rate, l2=l2, seed=seed
            )
            est.fit(rows[fit], y[fit])
            for n, staged in enumerate(est.staged_predict_proba(rows[val]), start=1):
                if n in stages:
                    staged_probs[stages[n]].append(staged[:, 1])
            done += 1
            progress("model selection (fits)", done, fits)
    trials: list[dict[str, Any]] = []
    for c in candidates:
        per_fold = [
            _fold_metrics(p, y[val], [transactions[i] for i in np.flatnonzero(val).tolist()])
            for p, (_, val) in zip(staged_probs[c], fold_masks, strict=True)
        ]
        aps = np.array([f["average_precision"] for f in per_fold], dtype=float)
        trials.append(
            {
                "candidate": c,
                "folds": per_fold,
                "ap_mean": float(aps.mean()),
                "ap_std": float(aps.std()),
                "oof": staged_probs[c],
            }
        )
    best = max(trials, key=lambda t: round(t["ap_mean"], 3))  # first (smaller) wins a tie
    winner: Candidate = best["candidate"]
    val_any = np.zeros(len(y), dtype=bool)
    for _, val in fold_masks:
        val_any |= val
    threshold, chosen = choose_threshold_in_windows(
        best["oof"],  # the windows, in time order
        [y[val] for _, val in fold_masks],
        target_precision=target_precision,
        alert_rate=alert_rate,
    )
    # the model saved: the chosen candidate on every training day, with that threshold (the fold
    # models minimise the same log loss on the same features: one probability scale)
    train_mask = ts < train_end
    progress("fitting the chosen model", 0, 1)
    estimator = make_estimator(
        trees=winner.trees,
        leaves=winner.leaves,
        learning_rate=winner.learning_rate,
        l2=winner.l2,
        seed=seed,
    )
    estimator.fit(rows[train_mask], y[train_mask])
    progress("fitting the chosen model", 1, 1)
    version = f"gbt-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
    model = FraudModel(estimator, FEATURE_NAMES, engine.rule_ids, version, threshold)
    # each rule's hits on the training days: too few, and the model cannot have learned it
    flags = rows[train_mask][:, len(FEATURE_NAMES) :].sum(axis=0)
    model.info["rule_hits"] = {r: int(n) for r, n in zip(engine.rule_ids, flags, strict=True)}
    split = {
        "train": [_day(first), _day(train_end)],
        "validation": [_day(windows[0][0]), _day(train_end)],
        "gap_days": gap_days,
        "test": [_day(test_start), _day(min(test_end, last + 1) - 1)],
        "train_transactions": int(train_mask.sum()),
        "validation_transactions": int(val_any.sum()),
        "test_transactions": int(test_mask.sum()),
    }
    selection = {
        "folds": [
            {"fit": [_day(first), _day(a - gap)], "validation": [_day(a), _day(b)]}
            for a, b in windows
        ],
        "candidates": [
            {
                "model": str(t["candidate"]),
                "folds": t["folds"],
                "average_precision_mean": round(t["ap_mean"], 4),
                "average_precision_std": round(t["ap_std"], 4),
            }
            for t in trials
        ],
        "chosen": str(winner),
    }
    model.info.update(
        split=split,
        threshold=chosen,
        selection=selection,
    )
    # the test days, decided exactly as the live engine decides (rules, model, threshold)
    live = Engine(ruleset.rules, threshold=ruleset.threshold, version=ruleset.version, model=model)
    probs = model.score(rows[test_mask].tolist()) if test_mask.any() else np.zeros(0)
    test_idx = [int(i) for i in np.flatnonzero(test_mask)]
    decisions: list[Decision] = [
        live.combine(scored[i][1], float(p)) for i, p in zip(test_idx, probs, strict=True)
    ]
    test_txs = [transactions[i] for i in test_idx]
    result = report(outcomes(test_txs, decisions, labels))
    # what live windows of decisions are held against (detection/drift.py): this model's
    # scores on the test days, the days after its training it never saw
    model.info["drift"] = drift_reference(probs, probs >= threshold, drift_window)
    if test_mask.any():  # calibration: does the probability say how much fraud there is?
        result["calibration"] = {
            "mean_probability": round(float(probs.mean()), 5),
            "fraud_rate": round(float(y[test_mask].mean()), 5),
            "brier": round(float(np.mean((probs - y[test_mask]) ** 2)), 5),
        }
    model.info["test_report"] = {
        k: result[k] for k in ("precision", "recall", "f1", "roc_auc", "average_precision")
    }
    return TrainResult(model, result, split, selection)
