"""What a stalled detector says, and when (pure: an injected clock)."""

from __future__ import annotations

from fraudstream.stream.health import StallWatch, TaskStatus, describe_key, waits
from fraudstream.stream.ordering import INF


def test_a_stall_is_pending_input_without_decisions_for_the_warning_time() -> None:
    watch = StallWatch(30_000)
    watch.progress(0, now=0.0)
    assert not watch.should_warn(29.0, pending=True)
    assert watch.should_warn(30.0, pending=True)
    assert not watch.should_warn(45.0, pending=True)  # once per warning time
    assert watch.should_warn(60.0, pending=True)
    watch.progress(10, now=61.0)  # decisions moved: the clock starts again
    assert not watch.stalled(90.0, pending=True)
    assert watch.stalled(91.0, pending=True)
    assert not watch.stalled(200.0, pending=False)  # nothing to do is no stall
    assert not watch.stalled(229.0, pending=True)


def test_waits_name_the_stage_partition_and_upstream() -> None:
    tasks = [
        TaskStatus(
            "g.by-target",
            1,
            "by-target",
            buffered=5,
            upstream=3,
            heard=3,
            lowest=2,
            lowest_mark="2026-01-01T00:00:00Z (partition 2, offset 9)",
        ),
        TaskStatus("g.ordered", 0, "ordered", buffered=7, upstream=3, heard=1),
        TaskStatus("in", 0, "input"),
    ]
    assert waits(tasks) == [
        "g.ordered[0] buffers 7 records, waiting for marks from 2 of its 3 upstream tasks, "
        "unheard yet",
        "g.by-target[1] buffers 5 records, waiting for upstream task 2's mark to pass its "
        "records (at 2026-01-01T00:00:00Z (partition 2, offset 9))",
    ]


def test_marks_read_as_times() -> None:
    assert describe_key(None) == ""
    assert describe_key((1_767_225_600_000, 1, 5)) == "2026-01-01T00:00:00Z (partition 1, offset 5)"
    assert describe_key((INF, 2, 7)) == "idle (partition 2, offset 7)"
