"""A rules file changed between runs, the state written by the old rules restored into the new
ones: a rule's state is kept only where it means, for the new rule, what the new rule would
have built over the same history; any other rule's state starts over, and says so."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.detection import (
    DAY,
    HOUR,
    MINUTE,
    DormantAccount,
    Engine,
    FanIn,
    ImpossibleTravel,
    Rule,
    SmallThenLarge,
    Velocity,
)
from fraudstream.detection.rules import state_id
from fraudstream.schema import Transaction

T0 = 1_780_000_000_000

# every stateful rule type, two dormant rules sharing the last-activity column
OLD: list[Rule] = [
    Velocity("count", key="source", window_ms=HOUR, max_count=2, weight=0.1),
    Velocity("spend", key="source", window_ms=DAY, max_sum=700.0, weight=0.1),
    Velocity(
        "band",
        key="target",
        window_ms=6 * MINUTE,
        max_count=1,
        max_sum=400.0,
        min_amount=1.0,
        max_amount=300.0,
        buckets=3,
        weight=0.1,
    ),
    DormantAccount("dormant", key="source", idle_ms=2 * DAY, min_amount=1.0, weight=0.1),
    DormantAccount("dormant_2", key="source", idle_ms=30 * DAY, min_amount=300.0, weight=0.1),
    SmallThenLarge(
        "testing", key="source", small_max=2.0, large_min=250.0, within_ms=30 * MINUTE, weight=0.1
    ),
    ImpossibleTravel("travel", key="source", max_speed_kmh=900, min_distance_km=300, weight=0.1),
    FanIn(
        "fan_in",
        key="target",
        by="source",
        window_ms=DAY,
        min_distinct=2,
        same_amount=True,
        min_amount=500.0,
        weight=0.1,
    ),
    FanIn("fan_out", key="source", by="target", window_ms=HOUR, min_distinct=3, weight=0.1),
]

# the other values each parameter may take in the new rules file
OTHER: dict[str, dict[str, list[object]]] = {
    "count": {
        "window_ms": [2 * HOUR, 30 * MINUTE],
        "buckets": [3, 4],
        "max_count": [1, 4],
        "max_sum": [300.0],
        "min_amount": [1.0],
        "max_amount": [300.0],
        "weight": [0.5],
    },
    "spend": {
        "window_ms": [HOUR, 2 * DAY],
        "buckets": [4],
        "max_sum": [300.0, 2000.0],
        "max_count": [3],
        "min_amount": [100.0],
    },
    "band": {
        "window_ms": [12 * MINUTE, 3 * MINUTE],
        "buckets": [6],
        "max_count": [2],
        "max_sum": [None, 200.0],
        "min_amount": [0.0, 50.0],
        "max_amount": [math.inf, 600.0],
    },
    "dormant": {"idle_ms": [DAY, 3 * DAY], "min_amount": [300.0], "awake_ms": [HOUR, 3 * DAY]},
    "dormant_2": {"idle_ms": [2 * DAY], "min_amount": [1.0]},
    "testing": {
        "small_max": [1.0, 50.0],
        "large_min": [50.0, 600.0],
        "within_ms": [5 * MINUTE, 3 * HOUR],
    },
    "travel": {"max_speed_kmh": [50.0, 5000.0], "min_distance_km": [5.0, 1000.0]},
    "fan_in": {
        "window_ms": [HOUR, 2 * DAY],
        "min_distinct": [3, 1],
        "same_amount": [False],
        "min_amount": [0.0, 1000.0],
        "by": ["merchant"],
    },
    "fan_out": {
        "window_ms": [20 * MINUTE, DAY],
        "min_distinct": [2, 4],
        "same_amount": [True],
        "min_amount": [200.0],
    },
}

steps = st.sampled_from(
    [0, 1000, 5 * MINUTE, 20 * MINUTE, 40 * MINUTE, 3 * HOUR, 2 * DAY, 31 * DAY]
)
places = st.sampled_from([(48.857, 2.352), (6.524, 3.379), (52.52, 13.405), (None, None)])


@st.composite
def streams(draw: st.DrawFn) -> list[Transaction]:
    """Times never going back (a fan-in/out rule's set drops what fell out of its window: a
    late payment may find it gone, restored or not)."""
    t, out = T0, []
    for i in range(draw(st.integers(min_value=2, max_value=60))):
        t += draw(steps)
        lat, lon = draw(places)
        out.append(
            Transaction(
                id=f"t{i}",
                timestamp=t,
                source=draw(st.sampled_from(["a", "b", "c"])),
                target=draw(st.sampled_from(["x", "y", "z", "w"])),
                merchant=draw(st.sampled_from(["m1", "m2", "m3", "m4"])),
                amount=draw(st.sampled_from([0.5, 1.5, 2.0, 50.0, 250.0, 299.99, 600.0, 1000.0])),
                currency="EUR",
                lat=lat,
                lon=lon,
            )
        )
    return out


@st.composite
def changed_rules(draw: st.DrawFn) -> list[Rule]:
    """The old rules, each with one of its parameters changed, or none."""
    new = []
    for rule in OLD:
        name = draw(st.sampled_from([None, *OTHER[rule.id]]))
        if name is not None:
            rule = dataclasses.replace(rule, **{name: draw(st.sampled_from(OTHER[rule.id][name]))})
        new.append(rule)
    return new


def _engine(rules: list[Rule]) -> Engine:
    engine = Engine(rules, threshold=0.5, version="v", features=True)
    for table in engine.tables.tables.values():  # no eviction: a stream spans up to 5 years
        table.retention_ms = 10_000 * DAY
    return engine


def _state(engine: Engine, rule: Rule, keys: set[str], now: int) -> dict[str, object]:
    """A rule's own state, by key: its columns' values (a key without a row reads the
    defaults), or its fan-in/out sets, without the members out of the window at `now` (the
    time of the last payment seen; they never count again, whenever they are dropped)."""
    if isinstance(rule, FanIn):
        (fan,) = [r for r in engine._fan_rules if r.id == rule.id]
        horizon = now - rule.window_ms
        live = {g: {m: t for m, t in ms.items() if t > horizon} for g, ms in fan._seen.items()}
        return {g: ms for g, ms in live.items() if ms}
    table = engine.tables[rule.key]
    columns = [c for name, c in table.columns.items() if name.startswith(state_id(rule) + ".")]
    assert columns
    out: dict[str, object] = {}
    for key in keys:
        row = table.find(key)
        out[key] = [c.default if row is None else c.data[row] for c in columns]
    return out


def _shared(engine: Engine, keys: set[str]) -> dict[str, object]:
    """The columns no rule owns (last activity, last place, the model's features), by key;
    not the payments the rules caught (`f.caught*`): those record what the rules of the time
    decided, which new rules do not rewrite."""
    out: dict[str, object] = {}
    for name, table in engine.tables.tables.items():
        for column, c in table.columns.items():
            if "@" not in column and column != "_seen" and not column.startswith("f.caught"):
                rows = {k: table.find(k) for k in keys}
                out[f"{name}.{column}"] = {
                    k: c.default if r is None else c.data[r] for k, r in rows.items()
                }
    return out


def _hits(scored: list[tuple[list[float], list]], rule_id: str) -> list[tuple[int, str]]:  # type: ignore[type-arg]
    return [(i, h.reason) for i, (_, hits) in enumerate(scored) for h in hits if h.rule == rule_id]


@settings(max_examples=200, deadline=None)
@given(txs=streams(), new=changed_rules(), cut=st.integers(min_value=1, max_value=59))
def test_restored_state_means_what_the_new_rules_would_have_built_or_restarts(
    txs: list[Transaction], new: list[Rule], cut: int
) -> None:
    cut = min(cut, len(txs) - 1)
    history, tail = txs[:cut], txs[cut:]
    old = _engine(OLD)
    log: list[tuple[bytes, bytes | None]] = []
    for i in range(0, len(history), 7):  # committed transactions, as the detector writes them
        old.begin()
        old.score(history[i : i + 7])
        log += old.changes()
        old.commit()
    before = {r.id: state_id(r) for r in OLD}
    changed = {r.id for r in new if state_id(r) != before[r.id]}

    fresh = _engine(new)  # the new rules over the whole history: what their state would be
    fresh.score(history)
    restored = _engine(new)
    restored.restore(log)
    keys = {k for t in txs for k in (t.source, t.target, t.merchant) if k is not None}
    now = history[-1].ts_ms
    assert _shared(restored, keys) == _shared(fresh, keys)  # last activity, place, features
    for rule in new:
        if isinstance(rule, ImpossibleTravel):
            continue  # no state of its own
        got_state = _state(restored, rule, keys, now)
        if rule.id in changed:  # starts empty
            assert got_state == _state(_engine(new), rule, keys, now), rule
        else:  # means what the new rule would have built over the same history
            assert got_state == _state(fresh, rule, keys, now), rule
    expected = fresh.score(tail)
    got = restored.score(tail)
    # the same rules under new ids: a changed rule's state restarted, the rest restored
    renamed = _engine(
        [dataclasses.replace(r, id=r.id + "_new") if r.id in changed else r for r in new]
    )
    renamed.restore(log)
    restarted = renamed.score(tail)

    assert [row for row, _ in got] == [row for row, _ in expected]  # model features: kept
    for rule in new:
        if rule.id in changed:
            assert _hits(got, rule.id) == _hits(restarted, rule.id + "_new"), rule
        else:
            assert _hits(got, rule.id) == _hits(expected, rule.id), rule

    # a restart is reported, for the rules that had state stored, and for those only
    tables = {k.split(b"\x00")[1].decode() for k, _ in log if k.startswith(b"L\x00")}
    fans = {k.split(b"\x00")[1].decode() for k, _ in log if k.startswith(b"f\x00")}
    stored = {
        r.id
        for r in new
        if r.id in changed
        and (before[r.id] in fans if isinstance(r, FanIn) else getattr(r, "key", "") in tables)
    }
    assert set(restored.restarted) == stored
    assert not renamed.restarted

    # a local snapshot of the old rules serves the new ones only if no rule's state changed
    snapshot = _engine(new)
    if snapshot.load_snapshot(old.snapshot()):
        assert not changed
        assert snapshot.score(tail) == expected
    else:
        assert changed
