from __future__ import annotations

import pytest

from fraudstream.detection import Engine, ThresholdRule, tutorial_rules
from fraudstream.schema import Transaction


def tx(amount: float, currency: str = "EUR") -> Transaction:
    return Transaction(
        source="a",
        target="b",
        amount=amount,
        currency=currency,
        id="1",
        timestamp=1_790_000_000_000,
    )


@pytest.mark.parametrize(
    ("amount", "outcome"), [(1.0, "legit"), (899.99, "legit"), (900.0, "fraud"), (900.01, "fraud")]
)
def test_tutorial_rule_flags_amounts_of_900_and_more(amount: float, outcome: str) -> None:
    engine = Engine(tutorial_rules(), threshold=0.5, version="tutorial-1")
    (decision,) = engine.decide([tx(amount)])
    assert decision.outcome == outcome
    assert decision.rules_version == "tutorial-1"
    if outcome == "fraud":
        assert decision.score == 1.0
        assert [r.rule for r in decision.reasons] == ["amount_ge_900"]
        assert decision.reasons[0].reason == f"amount {amount} >= 900"
    else:
        assert decision.score == 0.0 and decision.reasons == []


def test_scores_add_up_and_cap_at_one() -> None:
    rules = [
        ThresholdRule("big", "amount", ">=", 500, weight=0.3),
        ThresholdRule("foreign", "currency", "not in", ["EUR"], weight=0.3),
        ThresholdRule("huge", "amount", ">=", 5000, weight=0.9),
    ]
    engine = Engine(rules, threshold=0.5, version="v")
    small, big_foreign, huge_foreign = engine.decide([tx(10), tx(600, "USD"), tx(6000, "USD")])
    assert (small.outcome, small.score) == ("legit", 0.0)
    assert (big_foreign.outcome, big_foreign.score) == ("fraud", 0.6)
    assert (huge_foreign.outcome, huge_foreign.score) == ("fraud", 1.0)
    assert [r.rule for r in huge_foreign.reasons] == ["big", "foreign", "huge"]


def test_missing_optional_field_never_fires() -> None:
    rule = ThresholdRule("fr", "country", "==", "FR")
    assert rule.apply(tx(10), 1_790_000_000_000) is None


@pytest.mark.parametrize(
    ("field", "op", "message"),
    [("amount", "=~", "unknown operator"), ("colour", ">=", "no field 'colour'")],
)
def test_bad_rule_definitions_say_what_is_wrong(field: str, op: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdRule("r1", field, op, 1)
