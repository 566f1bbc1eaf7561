"""The model sees live what it was trained on: "features computed by the detector's own
stateful code" (README). On one stream (the simulator's transactions and labels on Kafka),
`train` (as `fraudstream train --rules rules/with-model.yaml` runs it, on the topics) and the
live detector with the model it trained compute, transaction by transaction, the same model
row (features plus rule flags) and the same decision (score, outcome, reasons).

The live rows are not in the detector's output (only the score and reasons are), so the
detector runs in this process and the rows are taken on their way to the model
(`Engine.model_rows`, called once per batch the last stage decides) and paired with the
decisions as the runtime encodes them (`fraudstream.stream.tasks.encode_decided`, called
for each of that batch's transactions, in the same order). Those two names are what this
test needs from the runtime; the scores and reasons are also compared from the output topics.
"""

from __future__ import annotations

import importlib
import json
import math
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fraudstream.config import Settings
from fraudstream.detection import FEATURE_NAMES, Engine, load_ruleset
from fraudstream.evaluation import read_labels, read_transactions
from fraudstream.evaluation.sources import complete_labels
from fraudstream.generator import generate
from fraudstream.schema import Decision
from fraudstream.stream import Processor, ensure_topics
from tests.conftest import REPO, SettingsFactory, read_to_end, settled

WITH_MODEL = REPO / "rules" / "with-model.yaml"


def _rules_file(tmp_path: Path, model: Path) -> Path:
    """rules/with-model.yaml with its model file in tmp_path."""
    text = WITH_MODEL.read_text()
    assert "lists_file: lists.yaml" in text and "file: ../models/default.model" in text
    path = tmp_path / "with-model.yaml"
    path.write_text(
        text.replace(
            "lists_file: lists.yaml", f"lists_file: {REPO / 'rules' / 'lists.yaml'}"
        ).replace("file: ../models/default.model", f"file: {model}")
    )
    return path


def _decision(d: Decision | dict[str, Any]) -> tuple[str, float, list[tuple[str, str]]]:
    """What is compared of a decision: outcome, score, reasons (not rules_version, which
    names the model only live)."""
    if isinstance(d, dict):
        return d["outcome"], d["score"], [(r["rule"], r["reason"]) for r in d["reasons"]]
    return d.outcome, d.score, [(r.rule, r.reason) for r in d.reasons]


@pytest.mark.parametrize("partitions", [1, 3])
def test_live_feature_rows_and_scores_equal_trains_decision_by_decision(
    make_settings: SettingsFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    partitions: int,
) -> None:
    """On one input partition, and on three (the payee and merchant stages then merge
    partitions in event-time order, where train reads the history sorted by event time)."""
    settings: Settings = make_settings(topic_partitions=partitions)
    ensure_topics(settings)
    n = 30_000
    generate(
        settings, rate=math.inf, count=n, seed=61, profile="sim", fraud_rate=0.05, progress=None
    )
    model_file = tmp_path / "m.model"
    rules = _rules_file(tmp_path, model_file)

    # --- train, as `fraudstream train --rules with-model.yaml` does, on the topics ---------
    train_module = importlib.import_module("fraudstream.evaluation.train")
    txs, invalid = read_transactions(settings.transactions_topic, settings)
    assert (len(txs), sum(invalid.values())) == (n, 0)
    labels, _ = complete_labels(read_labels(settings.labels_topic, settings), txs)
    ruleset = load_ruleset(rules, require_model=False)
    trained_rows: list[list[list[float]]] = []
    trained_scored: list[Sequence[Any]] = []
    test_decisions: dict[str, Decision] = {}
    model_rows = Engine.model_rows
    outcomes = train_module.outcomes

    def train_model_rows(self: Engine, scored: Sequence[Any]) -> Any:
        rows = model_rows(self, scored)
        trained_rows.append(rows.tolist())
        trained_scored.append(scored)
        return rows

    def train_outcomes(test_txs: Any, decisions: Any, *args: Any, **kwargs: Any) -> Any:
        test_decisions.update(
            {t.id or "": d for t, d in zip(test_txs, decisions, strict=True)}  # train's own
        )
        return outcomes(test_txs, decisions, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Engine, "model_rows", train_model_rows)
        m.setattr(train_module, "outcomes", train_outcomes)
        result = train_module.train(ruleset, txs, labels, gap_days=1)
    result.model.save(model_file)
    (rows,), (scored,) = trained_rows, trained_scored
    assert len(rows) == n and len(test_decisions) > 100  # train's test days
    # train's decision for every transaction, made as it makes those of its test days
    offline = Engine(
        ruleset.rules, threshold=ruleset.threshold, version=ruleset.version, model=result.model
    )
    probs = result.model.score(rows)
    train_rows = {t.id or "": r for t, r in zip(txs, rows, strict=True)}
    train_decisions = {
        t.id or "": offline.combine(hits, float(p))
        for t, (_, hits), p in zip(txs, scored, probs, strict=True)
    }
    for tx_id, d in test_decisions.items():
        assert _decision(train_decisions[tx_id]) == _decision(d), tx_id

    # --- live, with the model train made ---------------------------------------------------
    tasks_module = importlib.import_module("fraudstream.stream.tasks")
    pending: deque[list[float]] = deque()
    live_rows: dict[str, list[float]] = {}
    live_decisions: dict[str, Decision] = {}
    encode_decided = tasks_module.encode_decided

    def live_model_rows(self: Engine, scored: Sequence[Any]) -> Any:
        rows = model_rows(self, scored)
        if self.model is not None:
            pending.extend(rows.tolist())
        return rows

    def live_encode(raw: bytes, added: bytes, decision: Decision, tx: Any = None) -> bytes:
        out: bytes = encode_decided(raw, added, decision, tx)
        tx_id = msgspec.json.decode(out)["id"]
        assert tx_id not in live_rows, f"{tx_id} decided twice"
        live_rows[tx_id] = pending.popleft()
        live_decisions[tx_id] = decision
        return out

    monkeypatch.setattr(Engine, "model_rows", live_model_rows)
    monkeypatch.setattr(tasks_module, "encode_decided", live_encode)
    engine = Engine.from_ruleset(load_ruleset(rules))
    processor = Processor(settings, engine)
    stop = threading.Event()
    guard = threading.Timer(240, stop.set)  # a bug fails the test instead of hanging it
    guard.start()
    try:
        stats = processor.run(stop, stop_after=n)
    finally:
        guard.cancel()
    assert stats.total == n, f"the detector stopped at {stats.total} of {n}"
    assert not pending, f"{len(pending)} model rows with no decision"
    assert set(live_rows) == set(train_rows)

    differ = [i for i in train_rows if live_rows[i] != train_rows[i]]
    if differ:
        first = differ[0]
        columns = [
            (j, a, b)
            for j, (a, b) in enumerate(zip(live_rows[first], train_rows[first], strict=True))
            if a != b
        ]
        pytest.fail(
            f"{len(differ)} of {n} live model rows differ from train's, e.g. {first}: "
            f"(column, live, train) {columns[:10]}"
        )
    wrong = [i for i in train_rows if _decision(live_decisions[i]) != _decision(train_decisions[i])]
    assert not wrong, (
        f"{len(wrong)} live decisions differ from train's, e.g. {wrong[0]}: live "
        f"{_decision(live_decisions[wrong[0]])}, train {_decision(train_decisions[wrong[0]])}"
    )
    # and what the detector wrote is what it decided (once its last commit's markers are)
    settled(settings)
    written = {
        json.loads(m.value())["id"]: json.loads(m.value())["decision"]
        for topic in (settings.legit_topic, settings.fraud_topic)
        for m in read_to_end(settings, topic)
    }
    assert set(written) == set(train_rows)
    assert all(_decision(written[i]) == _decision(train_decisions[i]) for i in written)
    assert sum(d.outcome == "fraud" for d in train_decisions.values()) > n // 100
    # the verdicts fed back: payee and merchant risk from labels known before a payment
    for name in ("target_missed_fraud_30d", "merchant_missed_fraud_30d"):
        j = FEATURE_NAMES.index(name)
        assert sum(r[j] > 0 for r in train_rows.values()) > 10, f"{name} never set"
