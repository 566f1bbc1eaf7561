from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fraudstream.generator import Pacer, TutorialSource


def test_records_fall_due_on_an_absolute_schedule() -> None:
    pacer = Pacer(rate=10, start=100.0)
    assert pacer.due(100.0) == 0
    assert pacer.due(100.099) == 0
    assert pacer.due(100.1) == 1
    assert pacer.due(101.0) == 10
    assert pacer.time_of(10) == 101.0


@given(rate=st.floats(min_value=1, max_value=100_000), seconds=st.floats(min_value=1, max_value=60))
def test_due_count_tracks_rate_times_elapsed(rate: float, seconds: float) -> None:
    pacer = Pacer(rate=rate, start=0.0)
    assert abs(pacer.due(seconds) - rate * seconds) <= 1


def test_unpaced_means_everything_is_due() -> None:
    assert Pacer(rate=math.inf, start=0.0).due(0.0) > 10**12


def test_same_seed_same_stream() -> None:
    a, b = TutorialSource(7), TutorialSource(7)
    first = [a.next(1_790_000_000_000) for _ in range(100)]
    assert first == [b.next(1_790_000_000_000) for _ in range(100)]
    assert len({t.id for t in first}) == 100
    assert all(1.0 <= t.amount <= 1000.0 and len(t.source) == 12 for t in first)


@given(
    rate=st.floats(min_value=0.1, max_value=200_000),
    start=st.floats(min_value=0, max_value=10**7),
    k=st.integers(min_value=1, max_value=10**7),
)
def test_a_record_is_due_exactly_at_its_time_not_a_tick_before(
    rate: float, start: float, k: int
) -> None:
    """`due` and `time_of` agree to the last bit, so a loop sleeping until `time_of(sent + 1)`
    always wakes up to a due record (it never sleeps 0 s and spins)."""
    pacer = Pacer(rate=rate, start=start)
    at = pacer.time_of(k)
    assert pacer.due(at) == k
    assert pacer.due(math.nextafter(at, -math.inf)) == k - 1
