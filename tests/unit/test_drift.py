"""The drift test: live windows of decisions against what the validation days looked like."""

from __future__ import annotations

import numpy as np

from fraudstream.detection.drift import PSI_LIMIT, DriftMonitor, drift_reference, psi
from fraudstream.stream.health import GroupStatus, Status, format_status


def _world(rng: np.random.Generator, n: int, fraud_share: float) -> np.ndarray:
    """Scores: most near 0, a fraud share near 1."""
    fraud = rng.random(n) < fraud_share
    return np.where(fraud, rng.beta(8, 2, n), rng.beta(1, 60, n))


def test_the_same_world_holds_and_another_one_is_named() -> None:
    rng = np.random.default_rng(3)
    reference_scores = _world(rng, 100_000, 0.01)
    ref = drift_reference(reference_scores, reference_scores >= 0.5, window=10_000)
    assert 0.005 < ref["alert_rate_low"] <= ref["alert_rate_high"] < 0.02
    assert len(ref["edges"]) == 9 and abs(sum(ref["shares"]) - 1) < 1e-9

    monitor = DriftMonitor(ref)
    for _ in range(6):  # batches of 4,000: windows of 10,000 are cut across batches
        scores = _world(rng, 4000, 0.01)
        monitor.observe(scores, scores >= 0.5)
        monitor.commit()
    assert monitor.windows == 2 and monitor.message == ""
    assert monitor.last["psi"] < 0.05

    # an aborted transaction's decisions never count
    monitor.observe(np.ones(9000), np.ones(9000, dtype=bool))
    monitor.rollback()
    monitor.commit()
    assert monitor.windows == 2 and monitor.message == ""

    # ten times the fraud: the alert rate leaves its range and the scores shift
    for _ in range(5):
        scores = _world(rng, 4000, 0.10)
        monitor.observe(scores, scores >= 0.5)
        monitor.commit()
    assert monitor.windows == 4
    assert "alert rate" in monitor.message and "outside" in monitor.message
    # scores of another scale entirely, at a normal alert rate: only the distribution says it
    monitor = DriftMonitor(ref)
    scores = rng.uniform(0.1, 0.4, 10_000)
    monitor.observe(scores, rng.random(10_000) < 0.01)
    monitor.commit()
    assert monitor.last["psi"] > PSI_LIMIT
    assert monitor.message.startswith("score distribution shifted (PSI")


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift() -> None:
    even = np.full(10, 0.1)
    assert psi(even, even) == 0
    tilted = np.array([0.05] * 5 + [0.15] * 5)
    assert 0 < psi(even, tilted) < psi(even, np.array([0.0] * 5 + [0.2] * 5))


def test_status_shows_a_drifting_model() -> None:
    report = Status("0", 1000, 900, 42, False, [], "alert rate 9.00% in the last 20,000 decisions")
    text = format_status(GroupStatus("g", [], [report], 1000, False, ""))
    assert "MODEL DRIFT: alert rate 9.00%" in text
