"""Bounded buffers: with a tiny MAX_BUFFERED_RECORDS the detector keeps pausing the input
partitions that run ahead, and still decides byte for byte what an unbounded run decides;
with two processes, the one over its bounds makes the other hold back too."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest

from fraudstream.config import Settings
from fraudstream.generator import generate
from fraudstream.stream import ensure_topics
from tests.chaos.test_faults import Detectors, wait_done
from tests.conftest import REPO, SettingsFactory, model_rules, read_to_end

pytestmark = pytest.mark.chaos
DEFAULT_RULES = str(REPO / "rules" / "default.yaml")


@pytest.mark.parametrize("with_model", [False, True], ids=["rules", "model-and-labels"])
def test_paused_inputs_decide_what_an_unbounded_run_decides(
    make_settings: SettingsFactory, tmp_path: Path, with_model: bool
) -> None:
    """With the model, the verdicts on the labels topic feed the stages too: their partitions
    are paused with the input's (a backlog of verdicts would otherwise wait in the first keyed
    stage), and the decisions are still those of an unbounded run."""
    rules = DEFAULT_RULES
    if with_model:
        rules = str(model_rules(tmp_path, count=8_000, seed=12, fraud_rate=0.08, gap_days=0.2))
    n = 30_000
    bounded, free = _backlog(make_settings(topic_partitions=3), tmp_path, n, seed=51)
    small = Detectors(
        bounded, tmp_path / "b", rules=rules, MAX_BUFFERED_RECORDS="300", BATCH_SIZE="200"
    )
    unbounded = Detectors(free, tmp_path / "f", rules=rules)
    try:
        proc = small.start()
        wait_done(bounded, n, d=small)
        small.stop(proc)
        log = proc.log.read_text()  # type: ignore[attr-defined]
        assert "pausing" in log
        if with_model:  # 3 input and 3 labels partitions
            assert "of 6 input and labels partitions" in log
        proc = unbounded.start()
        wait_done(free, n, d=unbounded)
        unbounded.stop(proc)
    finally:
        small.cleanup()
        unbounded.cleanup()
    paused, reference = _decisions(bounded), _decisions(free)
    assert len(reference) == n and read_to_end(bounded, bounded.dlq_topic) == []
    assert paused == reference  # every id once, each decision byte for byte the same


def test_two_processes_one_over_its_bounds_decide_what_one_unbounded_decides(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Two processes of one group: each one's keyed stages are fed by both's inputs, and a
    process can pause only its own. The one with a tiny bound pauses its inputs and sends
    its marks as HOLD, the other (whose bound is out of reach) holds back its inputs that
    run ahead when its keyed stages hear them; the decisions are still those of one
    unbounded process. Which process reads which partitions, and when, is the assignor's
    and the scheduler's choice, so the holding itself is checked in `test_runtime_parts.py`
    (on real tasks), not here."""
    n = 12_000
    bounded, free = _backlog(make_settings(topic_partitions=4), tmp_path, n, seed=52)
    two = Detectors(bounded, tmp_path / "b", rules=DEFAULT_RULES, BATCH_SIZE="200")
    unbounded = Detectors(free, tmp_path / "f", rules=DEFAULT_RULES)
    try:
        tight = two.start("0", MAX_BUFFERED_RECORDS="300")
        loose = two.start("1", MAX_BUFFERED_RECORDS=str(10**9), MAX_BUFFERED_BYTES=str(10**12))
        wait_done(bounded, n, d=two)
        two.stop(tight)
        two.stop(loose)
        proc = unbounded.start()
        wait_done(free, n, d=unbounded)
        unbounded.stop(proc)
    finally:
        two.cleanup()
        unbounded.cleanup()
    held, reference = _decisions(bounded), _decisions(free)
    assert len(reference) == n and read_to_end(bounded, bounded.dlq_topic) == []
    assert held == reference


def _backlog(bounded: Settings, tmp_path: Path, n: int, seed: int) -> tuple[Settings, Settings]:
    """`n` simulated transactions preloaded into `bounded`'s input; and the settings of an
    unbounded reference group on the same input, with its own outputs (logs in b/ and f/)."""
    ensure_topics(bounded)
    generate(
        bounded, rate=math.inf, count=n, seed=seed, profile="sim", fraud_rate=0.05, progress=None
    )
    tag = uuid.uuid4().hex[:8]
    free = bounded.model_copy(
        update={
            "detector_group": f"free-{tag}",
            "legit_topic": f"f-{tag}.legit",
            "fraud_topic": f"f-{tag}.fraud",
            "dlq_topic": f"f-{tag}.dlq",
        }
    )
    ensure_topics(free)
    (tmp_path / "b").mkdir()
    (tmp_path / "f").mkdir()
    return bounded, free


def _decisions(settings: Settings) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for topic in (settings.legit_topic, settings.fraud_topic):
        for m in read_to_end(settings, topic):
            tx_id = json.loads(m.value())["id"]
            assert tx_id not in out, f"{tx_id} decided twice"
            out[tx_id] = m.value()
    return out
