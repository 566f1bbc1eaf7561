"""`backtest --output`: every decision written, and the card precision@k per day."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score

from fraudstream.detection import load_ruleset
from fraudstream.evaluation import read_labels, read_transactions
from fraudstream.evaluation.backtest import backtest, write_decisions
from fraudstream.evaluation.metrics import DAY_MS, Outcome, card_precision_at_k
from fraudstream.generator.app import write_files

REPO = Path(__file__).resolve().parents[2]


def test_every_decision_is_written_with_its_label_and_the_file_gives_the_report(
    tmp_path: Path,
) -> None:
    txs_file, labels_file = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    write_files(txs_file, labels_file, count=20_000, seed=5, profile="sim", fraud_rate=0.03)
    txs, _ = read_transactions(str(txs_file))
    labels = read_labels(str(labels_file))
    since = txs[len(txs) // 2].ts_ms
    result = backtest(load_ruleset(REPO / "rules" / "default.yaml"), txs, labels, since_ms=since)
    jsonl, parquet = tmp_path / "d.jsonl", tmp_path / "d.parquet"
    n = write_decisions(jsonl, txs, result.decisions, labels, since_ms=since)
    assert write_decisions(parquet, txs, result.decisions, labels, since_ms=since) == n
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert rows == pq.read_table(parquet).to_pylist()
    assert n == len(rows) == result.report["transactions"] == sum(t.ts_ms >= since for t in txs)
    later = [(t, d) for t, d in zip(txs, result.decisions, strict=True) if t.ts_ms >= since]
    for row, (tx, d) in zip(rows, later, strict=True):
        assert (row["id"], row["timestamp"], row["source"]) == (tx.id, tx.ts_ms, tx.source)
        assert (row["score"], row["outcome"]) == (d.score, d.outcome)
        assert row["reasons"] == [{"rule": r.rule, "reason": r.reason} for r in d.reasons]
        assert row["is_fraud"] == labels[row["id"]].is_fraud
    # what a user computes from the file is what the report says
    ap = average_precision_score([r["is_fraud"] for r in rows], [r["score"] for r in rows])
    assert round(ap, 4) == result.report["average_precision"]
    flagged = [r for r in rows if r["outcome"] == "fraud"]
    assert (
        round(sum(r["is_fraud"] for r in flagged) / len(flagged), 4) == (result.report["precision"])
    )


def test_card_precision_at_k_ranks_each_days_cards_by_their_highest_score() -> None:
    def o(day: int, card: str, score: float, fraud: bool) -> Outcome:
        return Outcome(fraud, None, False, score, (), day * DAY_MS + 1000, card)

    rows = [
        # day 0: card a's best score 0.9 (one of its payments fraud), b 0.8 legit, c 0.1 fraud
        o(0, "a", 0.2, True),
        o(0, "a", 0.9, False),
        o(0, "b", 0.8, False),
        o(0, "c", 0.1, True),
        # day 1: two cards, both fraud; fewer than k: the share of all of them
        o(1, "a", 0.5, True),
        o(1, "d", 0.4, True),
    ]
    assert card_precision_at_k(rows, k=2) == {"k": 2, "mean": 0.75, "std": 0.25, "days": 2}
    assert card_precision_at_k(rows, k=3)["mean"] == round((2 / 3 + 1) / 2, 4)  # type: ignore[index]
    assert card_precision_at_k([Outcome(True, None, True, 1.0, ())]) is None  # no times, cards
