"""The simulator, the default rules with label feedback, and `evaluate`, on the real broker."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from fraudstream.detection import Engine, load_ruleset
from fraudstream.generator import generate
from fraudstream.stream import ensure_topics
from tests.conftest import REPO, SettingsFactory, env_for, read_all, run_detector


def test_simulated_stream_is_decided_by_the_default_rules_and_evaluated(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    # One partition: the live order is the event-time order, as in a backtest.
    settings = make_settings(topic_partitions=1)
    ensure_topics(settings)
    count = 20_000
    stats = generate(
        settings, rate=math.inf, count=count, seed=3, profile="sim", fraud_rate=0.05, progress=None
    )
    assert (stats.sent, stats.failed) == (count, 0)
    inputs = read_all(settings, settings.transactions_topic, expect=count)
    labels = read_all(settings, settings.labels_topic, expect=count)
    assert len(labels) == count
    for m in inputs[:200]:  # the ground truth never travels with the transaction
        tx = json.loads(m.value())
        assert "is_fraud" not in tx and "scenario" not in tx
    assert {json.loads(m.value())["id"] for m in labels} == {
        json.loads(m.value())["id"] for m in inputs
    }
    assert all(m.key().decode() == json.loads(m.value())["id"] for m in labels[:200])

    engine = Engine.from_ruleset(load_ruleset(REPO / "rules" / "default.yaml"), features=True)
    # the detector also reads the labels topic (verdicts feed its features)
    done = run_detector(settings, count, engine=engine)
    assert done.legit + done.fraud == count and done.dead_letter == 0

    def cli(*args: str) -> dict:  # type: ignore[type-arg]
        out = subprocess.run(
            [sys.executable, "-m", "fraudstream", *args, "--json"],
            env=env_for(settings),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    live = cli("evaluate")
    assert live["transactions"] == count
    assert live["fraud"] > 300
    assert set(live["per_scenario"]) >= {"mule_fan_in", "stolen_card_spree", "card_testing"}
    assert live["per_rule"]["mule_fan_in"]["precision"] == 1.0
    assert live["precision"] >= 0.95
    # The same rules over the recorded input, offline, decide exactly as the live detector did.
    assert cli("backtest", "--rules", str(REPO / "rules" / "default.yaml")) == live
