"""The fraud-detection literature's standard baselines, on the days `fraudstream train` uses.

    python benchmarks/baselines.py --input data/sim.jsonl --labels data/sim-labels.jsonl \\
        [--columns id=tx_id,...] [--test-share 0.3] [--gap-days 7] [--json FILE] \\
        [--trees 100] [--max-depth 20] [--fraudstream-model models/default.model]

The baselines of "Reproducible Machine Learning for Credit Card Fraud Detection" (Le Borgne
et al.): 15 aggregates per transaction, computed in event-time order with no look-ahead —

- the amount, whether it falls on a weekend, whether at night (before 06:00 UTC);
- the customer (`source`) over the last 1, 7 and 30 days, this transaction included: the
  number of transactions and their mean amount;
- the terminal (`target`) over 1, 7 and 30 days that end `--gap-days` (the label delay)
  before the transaction: the number of transactions and the share of them known to be
  fraud (a fraud counts once its label's `known_ms` is at or before the transaction's time)

— fed to a logistic regression (standardised features) and a random forest (scikit-learn,
one native thread). The history is cut as `fraudstream train` cuts it (evaluation/train.py):
training days are the first (1 - test share) of the span, the test days start `--gap-days`
after they end and run to the end of the history. Both models fit on every training-day
transaction and are judged on the test days.

It prints the days and counts of each side, then one row per model: ROC AUC, average
precision, card precision@100 per day (fraudstream.evaluation.metrics) and the seconds to
fit; `--json` writes the same figures. With `--fraudstream-model` (and the rules it was
trained with, `--rules`) it adds that model's row, scored as `fraudstream train` scores its
test days; without it, compare with `fraudstream train`'s own report. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fraudstream.detection import DAY, Label
from fraudstream.detection.model import limit_native_threads
from fraudstream.errors import ConfigError
from fraudstream.evaluation.cli import parse_columns
from fraudstream.evaluation.metrics import TOP_K, Outcome, card_precision_at_k
from fraudstream.evaluation.sources import complete_labels, read_labels, read_transactions
from fraudstream.schema import Transaction

Array = np.ndarray[Any, Any]

WINDOWS_DAYS = (1, 7, 30)
HOUR_MS = 3_600_000
NIGHT_BEFORE_HOUR = 6
FEATURES = (
    "amount",
    "weekend",
    "night",
    *(f"customer_{s}_{w}d" for w in WINDOWS_DAYS for s in ("count", "mean_amount")),
    *(f"terminal_{s}_{w}d" for w in WINDOWS_DAYS for s in ("count", "fraud_share")),
)


@dataclass
class History:
    """The transactions (event-time order) as arrays, with the labels' verdicts."""

    transactions: list[Transaction]
    labels: dict[str, Label]
    ts: Array  # event time, epoch ms
    amount: Array
    customer: Array  # integer code of `source`
    terminal: Array  # integer code of `target`
    is_fraud: Array
    known_ms: Array  # when a fraud verdict became known (int64 max: never, or not fraud)


@dataclass(frozen=True)
class Split:
    """The days as `fraudstream train` cuts them (its defaults: no dates given)."""

    first: int
    train_end: int
    test_start: int
    last: int


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _codes(values: Sequence[str]) -> Array:
    """A small integer per distinct value, in order of first appearance."""
    index: dict[str, int] = {}
    return np.fromiter(
        (index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values)
    )


def load_history(source: str, labels_source: str, columns: dict[str, str] | None) -> History:
    txs, invalid = read_transactions(source, columns=columns)
    if invalid:
        print(f"skipped {sum(invalid.values()):,} invalid records: {dict(invalid)}")
    if not txs:
        sys.exit(f"{source}: no valid transactions")
    labels = complete_labels(read_labels(labels_source), txs)[0]  # as `train`: no renames
    never = np.iinfo(np.int64).max
    verdicts = [labels.get(t.id or "") for t in txs]
    n = len(txs)
    return History(
        transactions=txs,
        labels=labels,
        ts=np.fromiter((t.ts_ms for t in txs), dtype=np.int64, count=n),
        amount=np.fromiter((t.amount for t in txs), dtype=np.float64, count=n),
        customer=_codes([t.source for t in txs]),
        terminal=_codes([t.target for t in txs]),
        is_fraud=np.fromiter((bool(v and v.is_fraud) for v in verdicts), dtype=bool, count=n),
        known_ms=np.fromiter(
            (
                v.known_ms if v and v.is_fraud and v.known_ms is not None else never
                for v in verdicts
            ),
            dtype=np.int64,
            count=n,
        ),
    )


def _keys(codes: Array, offsets: Array, stride: int) -> Array:
    """One sortable int64 per (key, time): the key's block, then the time within it."""
    if (int(codes.max(initial=0)) + 1) * stride >= 2**62:
        sys.exit("history too long or too many keys for int64 window keys")
    return codes * stride + offsets


def calendar_features(ts: Array) -> tuple[Array, Array]:
    """Weekend (Saturday, Sunday) and night (before 06:00), both in UTC."""
    days = ts // DAY
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    hour = (ts % DAY) // HOUR_MS
    return (weekday >= 5).astype(np.float64), (hour < NIGHT_BEFORE_HOUR).astype(np.float64)


def customer_features(ts: Array, customer: Array, amount: Array) -> list[Array]:
    """Per window: the customer's transactions in (t - w, t] up to this one in event order,
    their number and their mean amount."""
    pad = max(WINDOWS_DAYS) * DAY
    order = np.lexsort((np.arange(len(ts)), ts, customer))  # by customer, time, arrival
    offsets = ts[order] - int(ts.min()) + pad  # never below a window: keys stay in the block
    keys = _keys(customer[order], offsets, int(offsets.max()) + 1)
    cum = np.concatenate(([0.0], np.cumsum(amount[order])))
    pos = np.arange(len(ts))
    out: list[Array] = []
    for w in WINDOWS_DAYS:
        start = np.searchsorted(keys, keys - w * DAY, side="right")
        count = pos - start + 1
        mean = (cum[pos + 1] - cum[start]) / count
        for values in (count.astype(np.float64), mean):
            back = np.empty(len(ts))
            back[order] = values
            out.append(back)
    return out


def _covering(starts: Array, ends: Array, queries: Array) -> Array:
    """How many of the intervals [start, end) hold each query (all keys of one layout)."""
    return np.searchsorted(np.sort(starts), queries, side="right") - np.searchsorted(
        np.sort(ends), queries, side="right"
    )


def terminal_features(
    ts: Array, terminal: Array, is_fraud: Array, known_ms: Array, delay_ms: int
) -> list[Array]:
    """Per window: the terminal's transactions in (t - delay - w, t - delay], their number
    and the share known to be fraud at t. A transaction at time s is in the window of every
    t in [s + delay, s + delay + w), a fraud known at k of every t in [max(s + delay, k),
    s + delay + w): both counts are intervals holding t."""
    longest = max(WINDOWS_DAYS) * DAY
    base = int(ts.min())
    stride = int(ts.max()) - base + delay_ms + longest + 1
    queries = _keys(terminal, ts - base, stride)
    fraud = is_fraud & (known_ms < np.iinfo(np.int64).max)
    out: list[Array] = []
    for w in WINDOWS_DAYS:
        starts = queries + delay_ms
        count = _covering(starts, starts + w * DAY, queries)
        f_start = np.maximum(ts[fraud] + delay_ms, known_ms[fraud]) - base
        f_end = ts[fraud] + delay_ms + w * DAY - base
        held = f_start < f_end
        f_keys = terminal[fraud][held] * stride
        frauds = _covering(f_keys + f_start[held], f_keys + f_end[held], queries)
        share = np.divide(frauds, count, out=np.zeros(len(ts)), where=count > 0)
        out += [count.astype(np.float64), share]
    return out


def features(history: History, delay_ms: int) -> Array:
    """The 15 features, one row per transaction, in the order of FEATURES."""
    weekend, night = calendar_features(history.ts)
    columns = [
        history.amount,
        weekend,
        night,
        *customer_features(history.ts, history.customer, history.amount),
        *terminal_features(
            history.ts, history.terminal, history.is_fraud, history.known_ms, delay_ms
        ),
    ]
    return np.column_stack(columns)


def split_days(ts: Array, test_share: float, gap_days: float) -> Split:
    """`fraudstream train`'s cut (evaluation/train.py), its arithmetic unchanged."""
    first, last = int(ts.min()), int(ts.max())
    train_end = first + int((last - first) * (1 - test_share))
    return Split(first, train_end, train_end + int(gap_days * DAY), last)


def make_models(trees: int, max_depth: int) -> dict[str, Any]:
    return {
        "logistic regression": make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=1000, random_state=0)
        ),
        f"random forest ({trees} trees, depth {max_depth})": RandomForestClassifier(
            n_estimators=trees, max_depth=max_depth, n_jobs=1, random_state=0
        ),
    }


def judge(
    scores: Array, y: Array, ts: Array, cards: Sequence[str], k: int = TOP_K
) -> dict[str, Any]:
    """ROC AUC, average precision and card precision@k per day, on these scores."""
    rows = [
        Outcome(bool(f), None, False, float(s), (), int(t), c)
        for s, f, t, c in zip(scores, y, ts, cards, strict=True)
    ]
    both = 0 < int(y.sum()) < len(y)
    cp = card_precision_at_k(rows, k)
    return {
        "roc_auc": round(float(roc_auc_score(y, scores)), 4) if both else None,
        "average_precision": round(float(average_precision_score(y, scores)), 4) if both else None,
        "card_precision_at_k": cp["mean"] if cp else None,
        "card_precision_std": cp["std"] if cp else None,
    }


def fit_and_judge(
    model: Any, x: Array, y: Array, train: Array, test: Array, cards: Sequence[str], ts: Array
) -> dict[str, Any]:
    t0 = time.perf_counter()
    model.fit(x[train], y[train])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = model.predict_proba(x[test])[:, 1]
    score_s = time.perf_counter() - t0
    return {
        **judge(scores, y[test], ts[test], cards),
        "fit_seconds": round(fit_s, 1),
        "score_seconds": round(score_s, 1),
    }


def fraudstream_row(
    model_path: Path, rules_path: Path, history: History, test: Array, cards: Sequence[str]
) -> dict[str, Any]:
    """A fraudstream model's figures on the test days, decided as `fraudstream train` decides
    them there: the live engine's features over the whole history, rules and model combined."""
    from fraudstream.detection import Engine, FraudModel, load_ruleset
    from fraudstream.evaluation.train import features_of

    ruleset = load_ruleset(rules_path, require_model=False)
    model = FraudModel.load(model_path)
    engine, scored, rows, _, _ = features_of(ruleset, history.transactions, history.labels)
    if engine.rule_ids != model.rule_ids:
        sys.exit(f"{model_path} was trained with other rules than {rules_path}; give --rules")
    live = Engine(ruleset.rules, threshold=ruleset.threshold, version=ruleset.version, model=model)
    idx = np.flatnonzero(test)
    probs = model.score(rows[test].tolist())
    scores = np.array(
        [live.combine(scored[i][1], float(p)).score for i, p in zip(idx, probs, strict=True)]
    )
    return {
        **judge(scores, history.is_fraud[test], history.ts[test], cards),
        "model": model.version,
    }


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'model':<38}{'ROC AUC':>9}{'AP':>8}{'CP@100':>8}{'fit s':>8}{'score s':>9}"]
    for name, r in results.items():
        lines.append(
            f"{name:<38}{_fmt(r['roc_auc']):>9}{_fmt(r['average_precision']):>8}"
            f"{_fmt(r['card_precision_at_k']):>8}{_fmt(r.get('fit_seconds'), '.1f'):>8}"
            f"{_fmt(r.get('score_seconds'), '.1f'):>9}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="transactions: .jsonl, .csv or .parquet")
    p.add_argument("--labels", required=True, help="labels: .jsonl, .csv or .parquet")
    p.add_argument("--columns", help="transactions field=column renames, like id=tx_id")
    p.add_argument("--test-share", type=float, default=0.3)
    p.add_argument("--gap-days", type=float, default=7.0, help="the label delay")
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--max-depth", type=int, default=20)
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--fraudstream-model", type=Path, help="also score this fraudstream model")
    p.add_argument("--rules", type=Path, default=Path("rules/default.yaml"))
    args = p.parse_args(argv)
    if not 0 < args.test_share < 1 or args.gap_days < 0:
        p.error("--test-share must be between 0 and 1, --gap-days 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    limit_native_threads(1)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        columns = parse_columns(args.columns)
    except ConfigError as exc:
        sys.exit(str(exc))
    history = load_history(args.input, args.labels, columns)
    timings["read_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    x = features(history, int(args.gap_days * DAY))
    timings["features_seconds"] = round(time.perf_counter() - t0, 1)

    cut = split_days(history.ts, args.test_share, args.gap_days)
    train = history.ts < cut.train_end
    test = history.ts >= cut.test_start
    y = history.is_fraud
    if not train.any() or not test.any() or not y[train].any():
        sys.exit("too short a history: no training fraud or no test days")
    cards = [history.transactions[i].source for i in np.flatnonzero(test)]
    split = {
        "train": [_day(cut.first), _day(cut.train_end)],
        "gap_days": args.gap_days,
        "test": [_day(cut.test_start), _day(cut.last)],
        "train_transactions": int(train.sum()),
        "train_fraud": int(y[train].sum()),
        "test_transactions": int(test.sum()),
        "test_fraud": int(y[test].sum()),
    }
    print(
        f"{len(history.ts):,} transactions; read in {timings['read_seconds']:.1f}s, "
        f"15 features in {timings['features_seconds']:.1f}s (one thread)\n"
        f"train {split['train'][0]} to {split['train'][1]}: {split['train_transactions']:,} "
        f"({split['train_fraud']:,} fraud); test {split['test'][0]} to {split['test'][1]} "
        f"after {args.gap_days:g} days: {split['test_transactions']:,} "
        f"({split['test_fraud']:,} fraud)\n"
    )
    results: dict[str, dict[str, Any]] = {}
    for name, model in make_models(args.trees, args.max_depth).items():
        results[name] = fit_and_judge(model, x, y, train, test, cards, history.ts)
    if args.fraudstream_model:
        t0 = time.perf_counter()
        row = fraudstream_row(args.fraudstream_model, args.rules, history, test, cards)
        row["score_seconds"] = round(time.perf_counter() - t0, 1)  # its features included
        results[f"fraudstream {row.pop('model')}"] = row
    print(table(results))
    if args.fraudstream_model:
        print("(fraudstream's score s includes its engine's features over the whole history)")
    if args.json:
        out = {"split": split, "features": FEATURES, "timings": timings, "models": results}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
