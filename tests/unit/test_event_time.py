"""Where a partition's records go in time (`place_in_time`, `run_ahead`): the outcome depends
on the records alone, never on where the reads are cut, and every record is either placed or
refused, once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.schema import Decoded, InvalidTransaction, Transaction
from fraudstream.stream.tasks import RUN, place_in_time

HOUR = 3_600_000
SKEW = HOUR
NOW = 1_796_432_400_000  # 2026-12-05T01:00:00Z: the wall clock
LATEST = NOW + SKEW  # no event time beyond it is believed
JAN = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a replay of older history

Record = Decoded | InvalidTransaction


def _tx(i: int, ts: int) -> Decoded:
    return Decoded(Transaction(f"A{i}", f"P{i}", 10.0, "EUR", id=f"t{i}", timestamp=ts), b"")


@st.composite
def streams(draw: st.DrawFn) -> list[Record]:
    """A partition's records: a clock walking on in small steps (sometimes back a little),
    with quiet hours, records from another clock (the wall clock in a replay of January, or
    January after the wall clock), bursts of them (up to past RUN), records from beyond the
    wall clock, and bad ones."""
    clock = draw(st.sampled_from([JAN, NOW - 2 * HOUR]))
    out: list[Record] = []
    for i in range(draw(st.integers(0, 3 * RUN))):
        what = draw(
            st.sampled_from(["step"] * 6 + ["back", "quiet", "other", "burst", "future", "bad"])
        )
        if what == "bad":
            out.append(InvalidTransaction("schema", f"record {i} is not JSON"))
            continue
        if what == "future":
            out.append(_tx(i, LATEST + draw(st.integers(1, 10 * HOUR))))
            continue
        if what in ("other", "burst"):
            there = NOW if clock < NOW - 30 * 24 * HOUR else JAN
            for j in range(1 if what == "other" else draw(st.integers(2, RUN + 2))):
                out.append(_tx(i * 100 + j, there + j * 60_000))
            continue
        step = {"step": draw(st.integers(0, 10 * 60_000)), "back": -draw(st.integers(1, 2 * HOUR))}
        clock += step.get(what, draw(st.integers(SKEW + 1, 5 * HOUR)))  # quiet: a jump on
        out.append(_tx(i, clock))
    return out


Outcome = tuple[int, list[tuple[int, object, int]], dict[int, str], list[int]]


def _all_at_once(every: list[Record], stream_time: int, staged: bool) -> Outcome:
    stop, stream_time, placed, notes, refused = place_in_time(
        every, stream_time, LATEST, SKEW, staged, final=True
    )
    assert stop == len(every)  # idle at the end: nothing is held
    return stream_time, [(i, d.tx.timestamp, t) for i, d, t in placed], notes, refused


def _in_reads(every: list[Record], stream_time: int, staged: bool, cuts: list[int]) -> Outcome:
    """As a task reads them: in the reads `cuts` make, what `run_ahead` cannot tell yet held
    and read again with the next, the rest settled once the partition goes idle."""
    placed: list[tuple[int, object, int]] = []
    notes: dict[int, str] = {}
    refused: list[int] = []
    held = 0  # the first record held (`InputTask.held_run`)
    bounds = sorted(set(cuts) | {len(every)})
    for end, final in [(b, False) for b in bounds] + [(len(every), True)]:
        if held >= end and not final:
            continue  # nothing new to read
        if held == len(every):
            break  # nothing held: idle has nothing to settle
        stop, stream_time, p, n, r = place_in_time(
            every[held:end], stream_time, LATEST, SKEW, staged, final
        )
        placed += [(held + i, d.tx.timestamp, t) for i, d, t in p]
        notes |= {held + i: note for i, note in n.items()}
        refused += [held + i for i in r]
        held += stop
    return stream_time, placed, notes, refused


@settings(max_examples=400, deadline=None)
@given(
    every=streams(),
    start=st.sampled_from([0, JAN, NOW - 3 * HOUR]),
    staged=st.booleans(),
    data=st.data(),
)
def test_where_the_reads_are_cut_changes_nothing(
    every: list[Record], start: int, staged: bool, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(every)), max_size=8))
    once = _all_at_once(every, start, staged)
    assert _in_reads(every, start, staged, cuts) == once
    # one record at a time, the way a slow trickle reads them
    assert _in_reads(every, start, staged, list(range(len(every)))) == once
    stream_time, placed, notes, refused = once
    # every record placed or refused, once, in offset order
    assert sorted([i for i, _, _ in placed] + refused) == list(range(len(every)))
    assert [i for i, _, _ in placed] == sorted(i for i, _, _ in placed)
    # refused: the bad ones and those from beyond the wall clock, nothing else
    assert refused == [
        i for i, r in enumerate(every) if isinstance(r, InvalidTransaction) or r.tx.ts_ms > LATEST
    ]
    # order times never go back, and a record decided at another time than its own says so
    times = [t for _, _, t in placed]
    assert times == sorted(times) and (not times or times[-1] == stream_time)
    for i, decided, _ in placed:
        own = every[i]
        assert isinstance(own, Decoded)
        assert decided == own.tx.timestamp or i in notes
    if not staged:  # one stage orders nothing across partitions: each at its own time
        assert not notes


def test_a_replay_after_the_wall_clocks_first_records_flags_those_alone() -> None:
    """The README's case: two records on the wall clock, then January: the two are decided at
    January's first time and flagged; January goes at its own."""
    every: list[Record] = [_tx(0, NOW - 60_000), _tx(1, NOW)]
    every += [_tx(10 + j, JAN + j * 60_000) for j in range(3)]
    stream_time, placed, notes, refused = _all_at_once(every, 0, staged=True)
    assert [(i, t) for i, _, t in placed] == [
        (0, JAN),
        (1, JAN),
        (2, JAN),
        (3, JAN + 60_000),
        (4, JAN + 120_000),
    ]
    assert sorted(notes) == [0, 1] and "one of its partition's first" in notes[0]
    assert not refused and stream_time == JAN + 120_000
