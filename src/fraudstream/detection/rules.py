"""The rule interface and the tutorials' rule, expressed through it.

A rule looks at one transaction and either stays silent (None) or returns a `Hit`: how much it
adds to the score and a one-line reason. Stateful rules (velocity, fan-in, ...) implement the
same interface over keyed event-time state.

    rule = ThresholdRule("amount_ge_900", "amount", ">=", 900, weight=1.0)
    rule.evaluate(tx)  # Hit(rule="amount_ge_900", weight=1.0, reason="amount 950.0 >= 900")
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Protocol

from fraudstream.schema import Transaction

__all__ = ["OPERATORS", "Hit", "Rule", "ThresholdRule", "tutorial_rules"]


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    weight: float
    reason: str


class Rule(Protocol):
    """What the engine needs of a rule."""

    @property
    def id(self) -> str: ...

    def evaluate(self, tx: Transaction) -> Hit | None: ...


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """Fires when ``tx.<field> <op> <value>`` holds (a missing optional field never fires)."""

    id: str
    field: str
    op: str
    value: Any
    weight: float = 1.0
    description: str = ""
    _compare: Callable[[Any, Any], bool] = dc_field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(
                f"rule {self.id}: unknown operator {self.op!r}; use one of {list(OPERATORS)}"
            )
        if self.field not in Transaction.__struct_fields__:
            raise ValueError(f"rule {self.id}: transactions have no field {self.field!r}")
        object.__setattr__(self, "_compare", OPERATORS[self.op])

    def evaluate(self, tx: Transaction) -> Hit | None:
        actual = getattr(tx, self.field)
        if actual is None or not self._compare(actual, self.value):
            return None
        return Hit(self.id, self.weight, f"{self.field} {actual} {self.op} {self.value}")


def tutorial_rules() -> list[Rule]:
    """The tutorials' single rule: an amount of 900 or more is fraud."""
    return [
        ThresholdRule(
            "amount_ge_900",
            "amount",
            ">=",
            900,
            weight=1.0,
            description="the tutorials' rule: an amount of 900 or more",
        )
    ]
