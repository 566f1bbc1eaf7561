"""The engine's batch path (each rule over the whole batch, the stateful ones as compiled
kernels) against the plain statement of it (`score_each`, one transaction at a time):
byte-identical decisions and changelogs, for random streams with every rule type,
out-of-order times, late labels, evictions and any cut into batches."""

from __future__ import annotations

import unittest.mock
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.detection import DAY, HOUR, MINUTE, Engine, Label, Velocity, load_ruleset, state
from fraudstream.detection.engine import EACH_BELOW
from fraudstream.detection.geo import km_between
from fraudstream.detection.kernels import _km
from fraudstream.detection.rules import (
    DormantAccount,
    ImpossibleTravel,
    ListMatch,
    SmallThenLarge,
    ThresholdRule,
)
from fraudstream.schema import Transaction

REPO = Path(__file__).resolve().parents[2]
DEFAULT = load_ruleset(REPO / "rules" / "default.yaml")
T0 = 1_780_000_000_000

# every rule type of the shipped set, plus velocity windows that wrap and overflow quickly,
# and rules sharing columns with another (these run one transaction at a time)
RULES = [
    *DEFAULT.rules,
    DormantAccount("dormant_2", key="source", idle_ms=2 * DAY, min_amount=1.0, weight=0.1),
    DormantAccount("dormant_m", key="merchant", idle_ms=HOUR, min_amount=0.0, weight=0.1),
    ImpossibleTravel("travel_2", key="source", max_speed_kmh=50, min_distance_km=5, weight=0.1),
    ImpossibleTravel("travel_t", key="target", max_speed_kmh=300, weight=0.1),
    SmallThenLarge(
        "testing_t", key="target", small_max=1.0, large_min=50.0, within_ms=HOUR, weight=0.1
    ),
    Velocity("v_fast", key="source", window_ms=10_000, max_count=2, buckets=2, weight=0.1),
    Velocity("v_sum", key="target", window_ms=HOUR, max_sum=700.0, weight=0.2),
    Velocity(
        "v_band",
        key="merchant",
        window_ms=6 * MINUTE,
        max_count=1,
        max_sum=50.0,
        min_amount=1.0,
        max_amount=300.0,
        buckets=3,
        weight=0.3,
    ),
]

steps = st.sampled_from(
    # HOUR and DAY: payments exactly when a verdict becomes known, a shop's payment exactly a
    # day old (the boundaries of the features' comparisons)
    [
        0,
        0,
        1,
        999,
        5_000,
        5 * MINUTE,
        20 * MINUTE,
        HOUR,
        3 * HOUR,
        DAY,
        2 * DAY,
        61 * DAY,
        -7_000,
        -HOUR,
    ]
)
amounts = st.sampled_from(
    [0.01, 0.5, 1.0, 1.99, 49.995, 50.0, 200.0, 250.0, 299.99, 500.0, 600.0, 9500.0, 1e7]
)
places = st.sampled_from(  # -0.0: a signed zero is stored as it came
    [(48.857, 2.352), (6.524, 3.379), (52.52, 13.405), (-0.0, -0.0), (None, None)]
)


@st.composite
def streams(
    draw: st.DrawFn,
    sources: tuple[str, ...] = ("a", "b", "c"),
    targets: tuple[str, ...] = ("x", "y", "z", "w", "v", "u"),
) -> tuple[list[Transaction], list[tuple[int, Label]]]:
    """Transactions (times mostly growing, some late) and labels to hand over before the
    transaction at a given index (known now, later, or long before)."""
    n = draw(st.integers(min_value=1, max_value=80))
    t = T0
    txs, labels = [], []
    for i in range(n):
        t += draw(steps)
        lat, lon = draw(places)
        merchant = draw(st.sampled_from(["m1", "m2", None]))
        txs.append(
            Transaction(
                id=f"t{i}",
                timestamp=t,
                source=draw(st.sampled_from(sources)),
                target=draw(st.sampled_from(targets)),
                merchant=merchant,
                amount=draw(amounts),
                currency="EUR",
                lat=lat,
                lon=lon,
                device=draw(st.sampled_from(["d1", "d2", None])),
            )
        )
        if i and draw(st.integers(0, 4)) == 0:  # a verdict on an earlier one
            j = draw(st.integers(0, i - 1))
            known = txs[j].ts_ms + draw(st.sampled_from([-DAY, 0, HOUR, 3 * DAY]))
            labels.append(
                (
                    i,
                    Label(
                        id=txs[j].id or "",
                        is_fraud=draw(st.booleans()),
                        known_ms=known,
                        target=txs[j].target,
                        merchant=txs[j].merchant,
                        published_ms=txs[j].ts_ms,
                    ),
                )
            )
    return txs, labels


def _engine(compiled: bool, retention_ms: int, part: str | None, each_below: int = 0) -> Engine:
    """`each_below` 0: every call takes the batch path, however few its transactions."""
    engine = Engine(
        RULES,
        threshold=0.6,
        version="t",
        features=True,
        compiled=compiled,
        each_below=each_below,
    )
    if part is not None:
        engine = engine.for_stage(part)
    for table in engine.tables.tables.values():
        table.retention_ms = retention_ms
    return engine


def _run(
    engine: Engine,
    txs: list[Transaction],
    labels: list[tuple[int, Label]],
    cuts: list[int],
    aborted: frozenset[int] = frozenset(),
    packed: bool = False,
) -> tuple[list[bytes], list[list[tuple[bytes, bytes | None]]]]:
    """Decisions and changelogs, segment by segment; the segments numbered in `aborted` are
    first scored and rolled back (an aborted transaction), then redone. `packed`: scored by
    `score_packed` (the stages' path), its rows read back from their bytes."""
    scored, changelogs = [], []
    bounds = sorted({c for c in cuts if 0 < c < len(txs)} | {i for i, _ in labels})
    start = 0
    for n, end in enumerate([*bounds, len(txs)]):
        if n in aborted:
            engine.begin()
            engine.observe_labels([lab for i, lab in labels if i == start])
            engine.score(txs[start:end])
            engine.rollback()
        engine.begin()
        engine.observe_labels([lab for i, lab in labels if i == start])
        batch = txs[start:end]
        rows = (
            [(np.frombuffer(r).tolist(), h) for r, h in engine.score_packed(batch)]
            if packed
            else engine.score(batch)
        )
        for row, hits in rows:
            decision = engine.combine(hits, None)
            scored.append(msgspec.msgpack.encode((row, decision)))
        changelogs.append(sorted(engine.changes(), key=lambda kv: kv[0]))
        engine.commit()
        start = end
    return scored, changelogs


@settings(max_examples=300, deadline=None)
@given(
    case=streams(),
    cuts=st.lists(st.integers(min_value=1, max_value=80), max_size=8),
    retention=st.sampled_from([400 * DAY, 3 * DAY, HOUR]),
    part=st.sampled_from([None, "source", "target", "merchant"]),
)
def test_the_batch_path_decides_and_logs_exactly_as_one_at_a_time(
    case: tuple[list[Transaction], list[tuple[int, Label]]],
    cuts: list[int],
    retention: int,
    part: str | None,
) -> None:
    txs, labels = case
    fast = _run(_engine(True, retention, part), txs, labels, cuts)
    plain = _run(_engine(False, retention, part), txs, labels, cuts)
    assert fast == plain
    assert _run(_engine(True, retention, part), txs, labels, cuts, packed=True) == plain
    # as the detector runs it: calls of fewer than EACH_BELOW one at a time, the rest batched
    mixed = _engine(True, retention, part, each_below=EACH_BELOW)
    assert _run(mixed, txs, labels, cuts, packed=True) == plain


@settings(max_examples=100, deadline=None)
@given(
    case=streams(
        sources=tuple(f"s{i}" for i in range(40)), targets=tuple(f"t{i}" for i in range(60))
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=80), max_size=8),
    retention=st.sampled_from([400 * DAY, HOUR]),
    part=st.sampled_from([None, "source", "target", "merchant"]),
)
def test_the_batch_path_equals_one_at_a_time_while_the_tables_grow(
    case: tuple[list[Transaction], list[tuple[int, Label]]],
    cuts: list[int],
    retention: int,
    part: str | None,
) -> None:
    """The same with many keys and tables that grow every two rows (`GROW_ROWS`), so that
    columns grow in the middle of batches, between the calls that keep their views."""
    txs, labels = case
    with unittest.mock.patch.object(state, "GROW_ROWS", 2):
        plain = _run(_engine(False, retention, part), txs, labels, cuts)
        assert _run(_engine(True, retention, part), txs, labels, cuts) == plain
        mixed = _engine(True, retention, part, each_below=EACH_BELOW)
        assert _run(mixed, txs, labels, cuts, packed=True) == plain


@settings(max_examples=200, deadline=None)
@given(
    case=streams(),
    cuts=st.lists(st.integers(min_value=1, max_value=80), max_size=8),
    aborted=st.frozensets(st.integers(min_value=0, max_value=8)),
    retention=st.sampled_from([400 * DAY, 3 * DAY, HOUR]),
    compiled=st.booleans(),
)
def test_a_rolled_back_segment_leaves_no_trace(
    case: tuple[list[Transaction], list[tuple[int, Label]]],
    cuts: list[int],
    aborted: frozenset[int],
    retention: int,
    compiled: bool,
) -> None:
    """The journal (before-images of the rows a transaction touches) puts the state back
    exactly: redoing aborted segments decides and logs as if they never ran."""
    txs, labels = case
    redone = _run(_engine(compiled, retention, None), txs, labels, cuts, aborted)
    plain = _run(_engine(False, retention, None), txs, labels, cuts)
    assert redone == plain


@pytest.mark.parametrize("part", [None, "target", "merchant"])
def test_a_verdict_known_exactly_at_a_payment_inside_a_batch_counts_for_it(
    part: str | None,
) -> None:
    """The feature kernels cut a batch where a queued verdict becomes known: a payment at
    exactly that time already sees it, as one at a time (a boundary random streams rarely
    hit)."""
    txs = [
        Transaction(
            id=f"t{i}",
            timestamp=T0 + i * 20 * MINUTE,
            source="a",
            target="x",
            merchant="m1",
            amount=10.0,
            currency="EUR",
        )
        for i in range(5)
    ]
    verdict = Label(
        id="t0", is_fraud=True, known_ms=T0 + HOUR, target="x", merchant="m1", published_ms=T0
    )
    fast = _run(_engine(True, 400 * DAY, part), txs, [(1, verdict)], [])
    plain = _run(_engine(False, 400 * DAY, part), txs, [(1, verdict)], [])
    assert fast == plain
    unaware = _run(_engine(True, 400 * DAY, part), txs, [], [])
    # the verdict counts from the payment at its known time (the fourth) on, not before
    assert fast[0][:3] == unaware[0][:3]
    assert fast[0][3] != unaware[0][3]


def test_the_batch_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `compiled`, no rule with a batch path runs one transaction at a time (but the
    ones sharing columns: a second dormant or travel rule on one key)."""

    def one_at_a_time(*_: object) -> None:
        raise AssertionError("apply called on the batch path")

    for rule_type in (Velocity, SmallThenLarge, ListMatch, ThresholdRule):
        monkeypatch.setattr(rule_type, "apply", one_at_a_time)
    engine = _engine(True, 400 * DAY, None)
    assert {r.id for _, r in engine._single} == {
        "dormant_reactivated",
        "dormant_2",
        "impossible_travel",
        "travel_2",
    }
    txs = [
        Transaction(
            id=f"t{i}", timestamp=T0 + i, source="a", target="x", amount=10.0, currency="EUR"
        )
        for i in range(10)
    ]
    hits = [h.rule for _, hs in engine.score(txs) for h in hs]
    assert hits.count("v_fast") == 8 and hits.count("burst_1h") == 5


@settings(max_examples=500, deadline=None)
@given(
    points=st.lists(
        st.floats(min_value=-90, max_value=90, allow_nan=False), min_size=2, max_size=2
    ),
    lons=st.lists(
        st.floats(min_value=-180, max_value=180, allow_nan=False), min_size=2, max_size=2
    ),
)
def test_the_compiled_distance_is_the_same_number(points: list[float], lons: list[float]) -> None:
    """The travel kernel's distance (numba) is bit for bit the Python one's."""
    (lat1, lat2), (lon1, lon2) = points, lons
    assert _km(lat1, lon1, lat2, lon2) == km_between(lat1, lon1, lat2, lon2)


def _scored_across_verdicts(
    engine: Engine, txs: list[Transaction], labels: list[tuple[int, Label]], merge: bool
) -> tuple[list[bytes], list[tuple[bytes, bytes | None]]]:
    """Payments and verdicts in one transaction as a keyed stage releases them (each verdict
    before the payment at its index): a run of payments scored as one batch. Without `merge`
    every verdict cuts the run (queued between the payments before and after it); with it,
    as `KeyedTask.release` does, only one known at or before a payment of the run so far."""
    engine.begin()
    scored: list[bytes] = []
    run: list[Transaction] = []

    def score() -> None:
        for row, hits in engine.score_packed(run):
            decision = engine.combine(hits, None)
            scored.append(msgspec.msgpack.encode((row, decision)))
        run.clear()

    at: dict[int, list[Label]] = {}
    for i, label in labels:
        at.setdefault(i, []).append(label)
    for i, tx in enumerate(txs):
        for label in at.get(i, []):
            assert label.known_ms is not None
            if run and (not merge or label.known_ms <= max(t.ts_ms for t in run)):
                score()
            engine.observe_labels([label])
        run.append(tx)
    score()
    changes = sorted(engine.changes(), key=lambda kv: kv[0])
    engine.commit()
    return scored, changes


@settings(max_examples=300, deadline=None)
@given(
    case=streams(),
    retention=st.sampled_from([400 * DAY, 3 * DAY, HOUR]),
    part=st.sampled_from([None, "target", "merchant"]),
)
def test_a_verdict_known_after_the_payments_before_it_need_not_cut_their_batch(
    case: tuple[list[Transaction], list[tuple[int, Label]]], retention: int, part: str | None
) -> None:
    """A keyed stage scores the payments before and after a verdict as one batch when the
    verdict is known after every payment before it (`KeyedTask.release`): the same feature
    rows, decisions and changelog records as cutting the batch at every verdict."""
    txs, labels = case
    merged = _scored_across_verdicts(_engine(True, retention, part), txs, labels, merge=True)
    cut = _scored_across_verdicts(_engine(True, retention, part), txs, labels, merge=False)
    assert merged == cut
