"""Each rule type, and rule files, as plain code."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraudstream.detection import (
    DAY,
    HOUR,
    MINUTE,
    DormantAccount,
    Engine,
    FanIn,
    ImpossibleTravel,
    ListMatch,
    SmallThenLarge,
    Tables,
    Velocity,
    check_rules_file,
    load_ruleset,
)
from fraudstream.detection.rules import Rule
from fraudstream.schema import Transaction

T0 = 1_780_000_000_000
REPO = Path(__file__).resolve().parents[2]


def tx(
    t: int, amount: float = 10.0, source: str = "acct-000001", target: str = "shop", **kw: object
) -> Transaction:
    return Transaction(
        source=source,
        target=target,
        amount=amount,
        currency="EUR",
        id=f"{source}-{t}",
        timestamp=t,
        **kw,
    )  # type: ignore[arg-type]


def run(rule: Rule, txs: list[Transaction]) -> list[str | None]:
    rule.bind(Tables())
    out = []
    for t in txs:
        hit = rule.apply(t, t.ts_ms)
        out.append(hit.reason if hit else None)
    return out


def test_velocity_counts_payments_per_key_in_the_window() -> None:
    rule = Velocity("burst", "source", HOUR, max_count=3)
    reasons = run(rule, [tx(T0 + i * 5 * MINUTE) for i in range(5)] + [tx(T0 + 3 * HOUR)])
    assert reasons[:3] == [None, None, None]
    assert reasons[3] == "4 payments in 1 h from source acct-0…, limit 3"
    assert reasons[4] is not None and reasons[5] is None  # the window slid past


def test_velocity_sum_and_amount_band() -> None:
    spend = Velocity("spend", "source", DAY, max_sum=1000)
    assert run(spend, [tx(T0, 600), tx(T0 + HOUR, 500)]) == [
        None,
        "1,100.00 EUR in 1 d from source acct-0…, limit 1,000.00",
    ]
    band = Velocity("struct", "source", 2 * DAY, max_count=1, min_amount=9000, max_amount=10000)
    got = run(band, [tx(T0, 9500), tx(T0 + HOUR, 50), tx(T0 + 2 * HOUR, 9900)])
    assert got[:2] == [None, None]
    assert got[2] == "2 payments of 9,000.00 to 10,000.00 in 2 d from source acct-0…, limit 1"


def test_fan_in_same_amount_from_distinct_sources() -> None:
    rule = FanIn("mule", "target", "source", DAY, min_distinct=3, same_amount=True, min_amount=500)
    txs = [tx(T0 + i * HOUR, 1000, source=f"src-{i}", target="mule-1") for i in range(4)]
    txs.insert(2, tx(T0 + 90 * MINUTE, 999, source="other", target="mule-1"))
    got = run(rule, txs)
    assert got[:4] == [
        None,
        None,
        None,
        "3 distinct sources paying target mule-1 of 1,000.00 EUR in 1 d, limit 2",
    ]


def test_fan_out_to_distinct_targets() -> None:
    rule = FanIn("spray", "source", "target", HOUR, min_distinct=3, min_amount=200)
    got = run(rule, [tx(T0 + i * MINUTE, 300, target=f"new-{i}") for i in range(3)])
    assert got[2] == "3 distinct targets paid by source acct-0… in 1 h, limit 2"


def test_dormant_account_waking_up() -> None:
    rule = DormantAccount("dormant", "source", 60 * DAY, min_amount=300)
    got = run(
        rule,
        [tx(T0, 20), tx(T0 + 90 * DAY, 500), tx(T0 + 90 * DAY + HOUR, 800), tx(T0 + 92 * DAY, 800)],
    )
    assert got[0] is None
    assert got[1] == "500.00 EUR from source acct-0…, active again after 90 days without activity"
    assert got[2] is not None and got[3] is None  # within a day of waking; not two days later


def test_small_then_large_card_testing() -> None:
    rule = SmallThenLarge("testing", "source", small_max=2, large_min=250, within_ms=30 * MINUTE)
    got = run(rule, [tx(T0, 0.5), tx(T0 + 10 * MINUTE, 400), tx(T0 + 2 * HOUR, 400)])
    assert got == [
        None,
        "400.00 EUR 10 min after a test payment of at most 2.00 from source acct-0…",
        None,
    ]


def test_impossible_travel() -> None:
    rule = ImpossibleTravel("travel", "source", max_speed_kmh=900, min_distance_km=300)
    paris, lagos, lyon = (48.857, 2.352), (6.524, 3.379), (45.764, 4.836)
    got = run(
        rule,
        [
            tx(T0, lat=paris[0], lon=paris[1]),
            tx(T0 + HOUR, lat=lyon[0], lon=lyon[1]),
            tx(T0 + 2 * HOUR, lat=lagos[0], lon=lagos[1]),
        ],
    )
    assert got[:2] == [None, None]  # Paris to Lyon in an hour: a fast train, not impossible
    assert got[2] is not None and got[2].startswith("4,3") and "limit 900" in got[2]


def test_lists_block_and_allow_with_dates() -> None:
    closed = ListMatch("closed", "merchant", {"m-1"}, "closed", from_ms=T0, until_ms=T0 + DAY)
    assert run(
        closed,
        [tx(T0 - 1, merchant="m-1"), tx(T0 + 1, merchant="m-1"), tx(T0 + DAY, merchant="m-1")],
    ) == [None, "merchant m-1 is on the list closed", None]
    listed = ListMatch("listed", "source", {"bad"}, "watch", weight=1.0)
    allow = ListMatch("vip", "source", {"bad"}, "allowed_accounts", weight=0.0, allow=True)
    engine = Engine([listed, allow], version="v", threshold=0.5)
    (d,) = engine.decide([tx(T0, source="bad")])
    assert d.outcome == "legit" and {r.rule for r in d.reasons} == {"listed", "vip"}
    # a block list wins over the score (even one of 0) and over an allow-list
    block = ListMatch("blocked", "source", {"bad"}, "blocked_accounts", weight=0.0, block=True)
    engine = Engine([block, allow], version="v", threshold=0.5)
    (d,) = engine.decide([tx(T0, source="bad")])
    assert (d.outcome, d.score) == ("fraud", 0.0)
    assert d.reasons[0].reason == (
        "source bad is on the list blocked_accounts (blocked: fraud whatever the score)"
    )


def test_shipped_rule_files_are_valid() -> None:
    for name in ("default.yaml", "tutorial.yaml"):
        assert check_rules_file(REPO / "rules" / name) == [], name
    assert len(load_ruleset(REPO / "rules" / "default.yaml").rules) >= 10


def test_rules_check_reports_each_problem_with_the_rule_id(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
version: "1"
rules:
  - {id: v1, type: velocity, params: {key: account, window: 1h, max_count: 3}}
  - {id: f1, type: fan_in, params: {window: 24h}}
  - {id: w1, type: threshold, weight: heavy, params: {field: amount, op: ">=", value: 1}}
  - {id: l1, type: list, params: {field: source, list: nope}}
  - {id: x1, type: magic}
  - {id: d1, type: dormant, params: {idle: soon, min_amount: 1}}
  - {id: a1, type: list, params: {field: source, list: blocked, action: deny}}
lists: {blocked: [x]}
model: {file: m.model, weight: 2.5}
""")
    problems = dict(check_rules_file(bad))
    assert set(problems) == {"v1", "f1", "w1", "l1", "x1", "d1", "a1", "model"}
    assert "action: 'deny' is not flag" in problems["a1"]
    assert "model.weight is no longer used" in problems["model"]
    assert "--target-precision" in problems["model"]
    assert "key must be one of" in problems["v1"]
    assert "missing parameter 'min_distinct'" in problems["f1"]
    assert "weight" in problems["w1"]
    assert "no list named 'nope'" in problems["l1"]
    assert "unknown type 'magic'" in problems["x1"]
    assert "not a duration" in problems["d1"]


def test_rules_check_refuses_threshold_values_that_do_not_fit_their_field_or_operator(
    tmp_path: Path,
) -> None:
    """Each of these passed the check before: the first and the fifth then stopped the
    detector on its first payment (a TypeError), the second flagged every payment in euros
    (`not in` a text: its letters E, U, R), the fourth compared countries with false."""
    from fraudstream.detection import RulesError

    bad = tmp_path / "bad.yaml"
    bad.write_text("""
version: "1"
rules:
  - {id: t1, type: threshold, params: {field: amount, op: ">=", value: "abc"}}
  - {id: t2, type: threshold, params: {field: currency, op: not in, value: EUR}}
  - {id: t3, type: threshold, params: {field: amount, op: in, value: 5}}
  - {id: t4, type: threshold, params: {field: country, op: "==", value: NO}}
  - {id: t5, type: threshold, params: {field: currency, op: ">=", value: 5}}
  - {id: t6, type: threshold, params: {field: timestamp, op: ">=", value: 5}}
  - {id: t7, type: threshold, params: {field: amount, op: ">=", value: null}}
  - {id: t8, type: threshold, params: {field: country, op: in, value: [FR, 3]}}
  - {id: fine1, type: threshold, params: {field: country, op: in, value: [FR, DE]}}
  - {id: fine2, type: threshold, params: {field: lat, op: "<", value: -10.5}}
""")
    problems = dict(check_rules_file(bad))
    assert set(problems) == {f"t{i}" for i in range(1, 9)}
    assert problems["t1"] == "value: amount >= takes a number, got 'abc'"
    assert problems["t2"] == "value: not in takes a list, e.g. [EUR, USD], got 'EUR'"
    assert problems["t3"] == "value: in takes a list, e.g. [100, 200], got 5"
    assert "quote it" in problems["t4"]
    assert problems["t5"] == "currency is text: compare it with ==, !=, in or not in, not >="
    assert "field 'timestamp' cannot be compared" in problems["t6"]
    assert problems["t7"] == "value: amount >= takes a number, got None"
    assert problems["t8"] == "value: each item must be text, got 3"
    with pytest.raises(RulesError):
        load_ruleset(bad)


def test_rules_check_refuses_parameters_that_are_no_number_of_their_kind(tmp_path: Path) -> None:
    """Each of these passed the check before: a limit in text stopped the detector at its
    first batch (numpy compared the counts with a string), a negative limit or window made
    the rule fire on every payment or on none, `true` counted as 1, `"no"` as true."""
    from fraudstream.detection import RulesError

    bad = tmp_path / "bad.yaml"
    bad.write_text("""
version: "1"
rules:
  - {id: v1, type: velocity, params: {key: source, window: 1h, max_count: "abc"}}
  - {id: v2, type: velocity, params: {key: source, window: 1h, max_count: -1}}
  - {id: v3, type: velocity, params: {key: source, window: 1h, max_count: 2.5}}
  - {id: v4, type: velocity, params: {key: source, window: 1h, max_sum: true}}
  - {id: v5, type: velocity, params: {key: source, window: 0h, max_count: 3}}
  - {id: v6, type: velocity, params: {key: source, window: -3600000, max_count: 3}}
  - {id: v7, type: velocity, params: {key: source, window: 1h, max_count: 3, buckets: 0}}
  - {id: v8, type: velocity, params: {key: source, window: 1h, max_sum: 9, max_amount: 0}}
  - {id: f1, type: fan_in, params: {window: 1d, min_distinct: 0}}
  - {id: f2, type: fan_in, params: {window: 1d, min_distinct: 3, same_amount: "no"}}
  - {id: d1, type: dormant, params: {idle: 30d, min_amount: -5}}
  - {id: s1, type: small_then_large, params: {small_max: 0, large_min: 500, within: 1h}}
  - {id: i1, type: impossible_travel, params: {max_speed_kmh: .nan}}
  - {id: fine1, type: velocity, params: {key: source, window: 1h, max_count: 0, max_sum: 2.5}}
  - {id: fine2, type: fan_in, params: {window: 1d, min_distinct: 2, same_amount: true}}
""")
    problems = dict(check_rules_file(bad))
    assert set(problems) == {
        "v1",
        "v2",
        "v3",
        "v4",
        "v5",
        "v6",
        "v7",
        "v8",
        "f1",
        "f2",
        "d1",
        "s1",
        "i1",
    }
    assert problems["v1"] == "max_count: must be a whole number, 0 or more, got 'abc'"
    assert problems["v2"] == "max_count: must be a whole number, 0 or more, got -1"
    assert problems["v3"] == "max_count: must be a whole number, 0 or more, got 2.5"
    assert problems["v4"].startswith("max_sum: must be a number, 0 or more, got True")
    assert problems["v5"] == "window: must be longer than zero, got '0h'"
    assert problems["v6"] == "window: must be longer than zero, got -3600000"
    assert problems["v7"].startswith("buckets: must be a whole number, 1 or more, got 0")
    assert problems["v8"] == "max_amount: must be a number, above 0, got 0"
    assert problems["f1"] == "min_distinct: must be a whole number, 1 or more, got 0"
    assert problems["f2"] == "same_amount: must be true or false, got 'no'"
    assert problems["d1"] == "min_amount: must be a number, 0 or more, got -5"
    assert problems["s1"] == "small_max: must be a number, above 0, got 0"
    assert problems["i1"] == "max_speed_kmh: must be a number, above 0, got nan"
    with pytest.raises(RulesError):
        load_ruleset(bad)


def test_rules_check_refuses_a_threshold_above_one_and_a_file_that_is_not_utf8(
    tmp_path: Path,
) -> None:
    """A rule's score is at most 1, so a threshold above it (60, meant as per cent) would
    never flag anything; a file saved as Latin-1 stopped the check with a traceback."""
    per_cent = tmp_path / "per-cent.yaml"
    per_cent.write_text("version: '1'\nthreshold: 60\nrules: []\n")
    assert check_rules_file(per_cent) == [
        ("file", "threshold: Input should be less than or equal to 1")
    ]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("version: '1'\n# paiement à l'étranger\nrules: []\n".encode("latin-1"))
    assert check_rules_file(latin) == [
        ("file", "not UTF-8 text (byte 0xe0 at offset 24): save the file as UTF-8")
    ]
    lists = tmp_path / "lists.yaml"
    lists.write_bytes("blocked: [café]\n".encode("latin-1"))
    with_lists = tmp_path / "with-lists.yaml"
    with_lists.write_text("version: '1'\nlists_file: lists.yaml\nrules: []\n")
    assert check_rules_file(with_lists) == [
        (
            "lists_file",
            "cannot read lists.yaml: not UTF-8 text (byte 0xe9 at offset 13): save "
            "the file as UTF-8",
        )
    ]


def test_an_invalid_rules_file_stops_loading_with_what_to_do(tmp_path: Path) -> None:
    from fraudstream.detection import RulesError

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: '1'\nrules:\n  - {id: x1, type: magic}\n")
    with pytest.raises(RulesError, match="fraudstream rules check"):
        load_ruleset(bad)


def test_rules_check_loads_the_model_file(tmp_path: Path) -> None:
    """A model file that exists but is no model passed the check, and the detector then
    failed at its start."""
    (tmp_path / "history.model").write_text('{"id": "t1", "amount": 5}\n')
    rules = tmp_path / "with-model.yaml"
    rules.write_text("version: '1'\nrules: []\nmodel: {file: history.model}\n")
    [(where, what)] = check_rules_file(rules)
    assert where == "model" and what.startswith(f"cannot load model {tmp_path}/history.model")
    assert "fraudstream train" in what
