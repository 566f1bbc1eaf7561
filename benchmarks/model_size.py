"""Model size against ranking quality and scoring cost: trees x leaves per tree.

    python benchmarks/model_size.py [--count 600000] [--grid 50x15,100x15,...]

Simulates a labelled history (seed 7, like `make eval`), computes the features once with the
live engine (rules/default.yaml, labels known with their delay), trains on the first 70% of
the time span and tests after a 7-day gap, as `fraudstream train` does. For each size it
fits a model and reports the test days' average precision and ROC AUC, and the compiled
kernel's scoring cost in µs per transaction (batches of 1,000, best of 5, one thread), with
scikit-learn's own predict_proba beside it for the same batches. Not a test: the figures
choose `TREES` / `LEAVES` in evaluation/train.py and go in the README with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudstream.detection import DAY, load_ruleset
from fraudstream.detection.model import limit_native_threads
from fraudstream.detection.trees import CompiledTrees
from fraudstream.evaluation.sources import complete_labels, read_labels, read_transactions
from fraudstream.evaluation.train import LEARNING_RATE, features_of, make_estimator
from fraudstream.generator.app import write_files

BATCH = 1000


def _cost(score: Any, x: np.ndarray[Any, Any], repeats: int = 5) -> float:
    """Best-of-`repeats` µs per row, scoring `x` in batches of BATCH."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(x), BATCH):
            score(x[i : i + BATCH])
        best = min(best, time.perf_counter() - t0)
    return best / len(x) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=600_000)
    parser.add_argument(
        "--grid",
        default="300x31,200x31,100x31,100x15,50x31,50x15,30x15,20x7",
        help="sizes as TREESxLEAVES, comma-separated",
    )
    parser.add_argument("--data-dir", type=Path, help="reuse sim.jsonl / sim-labels.jsonl here")
    args = parser.parse_args()
    limit_native_threads(1)

    data = args.data_dir or Path(tempfile.mkdtemp())
    txs_path, labels_path = data / "sim.jsonl", data / "sim-labels.jsonl"
    if not txs_path.exists():
        t0 = time.perf_counter()
        write_files(txs_path, labels_path, count=args.count, seed=7, profile="sim")
        print(f"simulated {args.count:,} transactions in {time.perf_counter() - t0:.0f}s")
    txs, _ = read_transactions(str(txs_path))
    labels, _ = complete_labels(read_labels(str(labels_path)), txs)
    t0 = time.perf_counter()
    _, _, rows, y, ts = features_of(load_ruleset(Path("rules/default.yaml")), txs, labels)
    print(f"features of {len(txs):,} transactions in {time.perf_counter() - t0:.0f}s")
    first, last = int(ts.min()), int(ts.max())
    train_end = first + int((last - first) * 0.7)
    train, test = ts < train_end, ts >= train_end + 7 * DAY
    x_test = rows[test].astype(np.float64)
    print(
        f"train {int(train.sum()):,} ({int(y[train].sum()):,} fraud), "
        f"test {int(test.sum()):,} ({int(y[test].sum()):,} fraud)"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"learning rate {LEARNING_RATE}, one thread"
    )
    print(f"{'trees':>5} {'leaves':>6} {'AP':>6} {'AUC':>6} {'µs/tx':>7} {'sklearn µs/tx':>14}")
    for size in args.grid.split(","):
        trees, leaves = (int(v) for v in size.lower().split("x"))
        est = make_estimator(trees=trees, leaves=leaves).fit(rows[train], y[train])
        compiled = CompiledTrees.of(est)
        assert compiled is not None
        p = compiled.predict_proba(x_test)
        ap, auc = average_precision_score(y[test], p), roc_auc_score(y[test], p)
        ours = _cost(compiled.predict_proba, x_test)
        theirs = _cost(est.predict_proba, rows[test][: 20 * BATCH], repeats=2)
        print(f"{trees:>5} {leaves:>6} {ap:>6.3f} {auc:>6.3f} {ours:>7.2f} {theirs:>14.2f}")


if __name__ == "__main__":
    main()
