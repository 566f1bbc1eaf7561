"""The pure detection core: a batch of transactions in, a decision for each out.

No Kafka, no wall clock: the same code runs live, in tests and in backtests.

    engine = Engine(tutorial_rules(), threshold=0.5, version="tutorial-1")
    decisions = engine.decide([tx1, tx2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from fraudstream.detection.rules import Rule
from fraudstream.schema import Decision, Reason, Transaction

__all__ = ["Engine"]


class Engine:
    """Scores each transaction as the capped sum of the weights of the rules that fire."""

    def __init__(self, rules: Sequence[Rule], *, threshold: float = 0.5, version: str) -> None:
        self.rules = tuple(rules)
        self.threshold = threshold
        self.version = version

    def decide(self, batch: Sequence[Transaction]) -> list[Decision]:
        return [self._decide_one(tx) for tx in batch]

    def _decide_one(self, tx: Transaction) -> Decision:
        score = 0.0
        reasons: list[Reason] = []
        for rule in self.rules:
            hit = rule.evaluate(tx)
            if hit is not None:
                score += hit.weight
                reasons.append(Reason(hit.rule, hit.reason))
        score = min(score, 1.0)
        outcome: Literal["legit", "fraud"] = "fraud" if score >= self.threshold else "legit"
        return Decision(outcome, round(score, 4), reasons, self.version)
