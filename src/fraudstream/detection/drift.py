"""Is the model running on the world it was trained on? A simple, documented test.

`train` keeps a reference from the test days (the days after the model's training days,
which it never saw, scored by it): the score's deciles, and the alert rate of every run of
`WINDOW` consecutive transactions there. Live, the detector compares
each window of `WINDOW` decisions with it and says the model drifts when

- the alert rate leaves [half the lowest, twice the highest] of the reference windows' rates;
- or the scores' population stability index over the reference deciles exceeds `PSI_LIMIT`
  (0.25, the usual line for "the population has shifted": sum over the ten bins of
  (live share - reference share) x ln(live share / reference share)).

    ref = drift_reference(probabilities, flagged)     # in train, on the test days
    monitor = DriftMonitor(ref)
    monitor.observe(scores, flagged)                   # each batch decided (pending)
    monitor.commit()                                   # ... with the transaction (or rollback)
    monitor.message                                    # "" while it holds, else what left it
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["PSI_LIMIT", "WINDOW", "DriftMonitor", "drift_reference", "psi"]

WINDOW = 20_000  # decisions per comparison
PSI_LIMIT = 0.25
_FLOOR = 1e-4  # an empty bin's share, so that its logarithm stays finite


def psi(expected: np.ndarray[Any, Any], actual: np.ndarray[Any, Any]) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(expected, _FLOOR)
    a = np.maximum(actual, _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_reference(
    scores: np.ndarray[Any, Any], flagged: np.ndarray[Any, Any], window: int = WINDOW
) -> dict[str, Any]:
    """What the reference days looked like (scores in time order): the inner decile edges of
    the score, each bin's share, and the alert rate of each run of `window`."""
    edges: np.ndarray[Any, Any] = np.unique(np.quantile(scores, np.linspace(0.1, 0.9, 9)))
    shares = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
    runs = [
        float(flagged[i : i + window].mean())
        for i in range(0, max(len(flagged) - window + 1, 1), window)
        if len(flagged[i : i + window])
    ]
    return {
        "window": window,
        "edges": [float(x) for x in edges],
        "shares": [float(x) for x in shares / max(len(scores), 1)],
        "alert_rate_low": min(runs) if runs else 0.0,
        "alert_rate_high": max(runs) if runs else 0.0,
    }


class DriftMonitor:
    """Windows of live decisions against a `drift_reference` (see the module's doc)."""

    def __init__(self, reference: dict[str, Any]) -> None:
        self.window = int(reference["window"])
        self.edges = np.asarray(reference["edges"], dtype=np.float64)
        self.shares = np.asarray(reference["shares"], dtype=np.float64)
        self.low = float(reference["alert_rate_low"]) / 2
        self.high = float(reference["alert_rate_high"]) * 2
        self._bins = np.zeros(len(self.shares), dtype=np.int64)
        self._n = self._fraud = 0
        self._pending: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []
        self.message = ""  # why the last full window left the reference ("" when it did not)
        self.windows = 0  # full windows compared
        self.last: dict[str, float] = {}  # the last window's alert rate and PSI

    def observe(self, scores: Any, flagged: Any) -> None:
        """A batch of decisions (their scores, whether each was fraud), until commit."""
        self._pending.append(
            (np.asarray(scores, dtype=np.float64), np.asarray(flagged, dtype=np.bool_))
        )

    def rollback(self) -> None:
        self._pending.clear()

    def commit(self) -> None:
        """The pending batches count: every full window is compared."""
        for scores, flagged in self._pending:
            start = 0
            while start < len(scores):
                take = min(self.window - self._n, len(scores) - start)
                part = scores[start : start + take]
                self._bins += np.bincount(
                    np.searchsorted(self.edges, part, side="right"), minlength=len(self._bins)
                )
                self._fraud += int(flagged[start : start + take].sum())
                self._n += take
                start += take
                if self._n >= self.window:
                    self._compare()
        self._pending.clear()

    def _compare(self) -> None:
        rate = self._fraud / self._n
        index = psi(self.shares, self._bins / self._n)
        self.windows += 1
        self.last = {"alert_rate": rate, "psi": index}
        why = []
        if not self.low <= rate <= self.high:
            why.append(
                f"alert rate {rate:.2%} in the last {self._n:,} decisions, outside "
                f"{self.low:.2%}-{self.high:.2%} (half the lowest to twice the highest seen "
                "on its test days)"
            )
        if index > PSI_LIMIT or math.isnan(index):
            why.append(
                f"score distribution shifted (PSI {index:.2f} over its test days' "
                f"deciles, limit {PSI_LIMIT})"
            )
        self.message = "; ".join(why)
        self._bins[:] = 0
        self._n = self._fraud = 0
