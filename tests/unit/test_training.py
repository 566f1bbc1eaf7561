"""Training on simulated history, the model in the live engine, and history from CSV/Parquet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fraudstream.detection import Engine, FraudModel, load_ruleset
from fraudstream.evaluation import read_labels, read_transactions, train
from fraudstream.generator.app import write_files

REPO = Path(__file__).resolve().parents[2]


def test_train_split_in_time_save_load_and_score_live(tmp_path: Path) -> None:
    txs_file, labels_file = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    write_files(txs_file, labels_file, count=60_000, seed=11, profile="sim", fraud_rate=0.03)
    txs, invalid = read_transactions(str(txs_file))
    labels = read_labels(str(labels_file))
    assert not invalid and len(txs) == len(labels) == 60_000
    ruleset = load_ruleset(REPO / "rules" / "default.yaml")
    result = train(ruleset, txs, labels, test_share=0.3, gap_days=1)
    train_days, test_days = result.split["train"], result.split["test"]
    assert train_days[1] < test_days[0]  # the test days come after the training days
    assert result.report["roc_auc"] > 0.9
    model_file = tmp_path / "m.model"
    result.model.save(model_file)
    loaded = FraudModel.load(model_file)
    assert loaded.version == result.model.version

    rules = tmp_path / "rules.yaml"
    text = (REPO / "rules" / "default.yaml").read_text()
    text = text.replace(
        "lists_file: lists.yaml",
        f"lists_file: {REPO / 'rules' / 'lists.yaml'}\nmodel: {{file: {model_file}, weight: 2.5}}",
    )
    rules.write_text(text)
    engine = Engine.from_ruleset(load_ruleset(rules))
    assert engine.model is not None and engine.version.endswith(result.model.version)
    decisions = engine.decide(txs[:5000])
    assert any(r.rule == "model" for d in decisions for r in d.reasons)


def test_history_from_csv_and_parquet_with_a_column_mapping(tmp_path: Path) -> None:
    rows = [
        {
            "tx_id": "a1",
            "ts": 1_780_000_000_000,
            "from_account": "acc1",
            "to": "shop",
            "amount": "12.50",
            "currency": "EUR",
        },
        {
            "tx_id": "a2",
            "ts": 1_780_000_060_000,
            "from_account": "acc1",
            "to": "shop",
            "amount": "950.00",
            "currency": "EUR",
        },
    ]
    columns = {"id": "tx_id", "timestamp": "ts", "source": "from_account", "target": "to"}
    with open(tmp_path / "h.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pq.write_table(
        pa.Table.from_pylist([r | {"amount": float(r["amount"])} for r in rows]),
        tmp_path / "h.parquet",
    )
    for name in ("h.csv", "h.parquet"):
        txs, invalid = read_transactions(str(tmp_path / name), columns=columns)
        assert not invalid
        assert [(t.id, t.source, t.target, t.amount) for t in txs] == [
            ("a1", "acc1", "shop", 12.5),
            ("a2", "acc1", "shop", 950.0),
        ], name
    (tmp_path / "labels.csv").write_text("id,is_fraud\na1,0\na2,1\n")
    labels = read_labels(str(tmp_path / "labels.csv"))
    assert {k: v.is_fraud for k, v in labels.items()} == {"a1": False, "a2": True}
    (tmp_path / "labels.jsonl").write_text(json.dumps({"id": "a2", "is_fraud": True}) + "\n")
    assert read_labels(str(tmp_path / "labels.jsonl"))["a2"].is_fraud
