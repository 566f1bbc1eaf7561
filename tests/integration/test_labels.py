"""Labels that are understood or refused: the defaults applied, the rest dead-lettered with a
reason and counted, live and in `train`/`backtest`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from fraudstream.config import Settings
from fraudstream.evaluation import read_labels, read_transactions
from fraudstream.evaluation.sources import complete_labels
from fraudstream.generator import generate
from fraudstream.generator.app import write_files
from tests.chaos.test_faults import Detectors, wait_done
from tests.conftest import REPO, SettingsFactory, model_rules, read_to_end

pytestmark = pytest.mark.kafka
DEFAULT_RULES = REPO / "rules" / "default.yaml"


def test_labels_the_detector_cannot_use_are_dead_lettered_and_counted(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings: Settings = make_settings(topic_partitions=1)
    rules = model_rules(tmp_path, count=8_000, seed=12, fraud_rate=0.08, gap_days=0.2)
    n = 300
    generate(settings, rate=50_000, count=n, seed=5, profile="sim", fraud_rate=0.05, progress=None)
    producer = Producer({"bootstrap.servers": settings.kafka_broker_url})
    for value in (
        b'{"id": "x1", "is_fraud": true}',  # fraud, but no payee: the features cannot use it
        b"not json",
        b'{"id": "x2", "is_fraud": true, "target": "b-1"}',  # no known_ms: known when published
        b'{"id": "x3", "is_fraud": false}',  # legit needs nothing more
    ):
        producer.produce(settings.labels_topic, value, b"k")
    assert producer.flush(30) == 0
    d = Detectors(settings, tmp_path, rules=str(rules), STATUS_INTERVAL_MS="200")
    try:
        proc = d.start()
        wait_done(settings, n, d=d)
        d.stop(proc)
    finally:
        d.cleanup()
    dead = read_to_end(settings, settings.dlq_topic)
    headers = [dict(m.headers()) for m in dead]
    assert sorted(h["error.class"] for h in headers) == [b"label_incomplete", b"not_json"]
    assert all(h["error.stage"] == b"label" for h in headers)
    assert {m.value() for m in dead} == {b'{"id": "x1", "is_fraud": true}', b"not json"}
    said = proc.log.read_text()  # type: ignore[attr-defined]
    assert "skipped 2 label records" in said and "label_incomplete 1" in said, said


def test_backtest_reports_what_it_skipped_by_class(tmp_path: Path) -> None:
    history, verdicts = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    write_files(history, verdicts, count=500, seed=3, profile="sim")
    with open(history, "ab") as f:
        f.write(b"not json\n")
        f.write(b'{"source":"a","target":"b","amount":-1,"currency":"EUR"}\n')
        f.write(b'{"source":"a","target":"b","amount":1,"currency":"EUR"}\n')  # no time: valid
    with open(verdicts, "ab") as f:
        f.write(b'{"id": "nobody", "is_fraud": true}\n')
    args = ["backtest", "--input", str(history), "--labels", str(verdicts)]
    done = subprocess.run(
        [sys.executable, "-m", "fraudstream", *args, "--rules", str(DEFAULT_RULES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "skipped 2 invalid records: " in done.stderr
    assert "not_json 1" in done.stderr and "invalid_amount 1" in done.stderr
    assert "skipped 1 labels whose id is no transaction" in done.stderr


def test_label_defaults_come_from_the_transaction(tmp_path: Path) -> None:
    history, verdicts = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    write_files(history, verdicts, count=50, seed=4, profile="sim")
    txs, _ = read_transactions(str(history))
    t = txs[10]
    raw = {t.id or "": read_labels(str(verdicts))[t.id or ""]}
    bare = {k: type(v)(v.id, v.is_fraud) for k, v in raw.items()}  # id and verdict only
    done, counts = complete_labels(bare, txs)
    label = done[t.id or ""]
    assert (label.known_ms, label.target, label.merchant) == (t.ts_ms, t.target, t.merchant)
    assert counts == {"known_when_published": 1}
    kept, _ = complete_labels(raw, txs)  # what a label says is kept
    assert kept[t.id or ""].known_ms == raw[t.id or ""].known_ms
