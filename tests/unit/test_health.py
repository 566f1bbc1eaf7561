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
        TaskStatus("g.by-target", 0, "by-target", buffered=7, upstream=3, heard=1),
        TaskStatus(
            "g.ordered",
            2,
            "ordered",
            buffered=6,
            upstream=3,
            heard=1,
            next_record="the record numbered 41 from input partition 2",
        ),
        TaskStatus("in", 0, "input"),
    ]
    assert waits(tasks) == [
        "g.by-target[0] buffers 7 records, waiting for marks from 2 of its 3 upstream tasks, "
        "unheard yet",
        "g.ordered[2] buffers 6 records, waiting for the record numbered 41 from input "
        "partition 2, to write its records in input order",
        "g.by-target[1] buffers 5 records, waiting for upstream task 2's mark to pass its "
        "records (at 2026-01-01T00:00:00Z (partition 2, offset 9))",
    ]


def test_marks_read_as_times() -> None:
    assert describe_key(None) == ""
    assert describe_key((1_767_225_600_000, 1, 5)) == "2026-01-01T00:00:00Z (partition 1, offset 5)"
    assert describe_key((INF, 2, 7)) == "idle (partition 2, offset 7)"


def test_the_group_is_stuck_when_and_only_when_something_holds_records_back() -> None:
    """(Found by an operator's review: `status` said a stall "the last commit was
    1796527080s ago" for a detector just starting, and "ok" while a killed instance still
    held partitions where records piled up, because the live one's commits were fresh.)"""
    from fraudstream.stream.health import Row, Status, stall

    now, fresh = 1_000_000, 6_000

    def report(name: str, at: int, commit: int, *held: int, stalled: bool = False) -> Status:
        tasks = [TaskStatus("g.by-target", p, "by-target") for p in held]
        return Status(name, at, commit, 10, stalled, tasks, why="waits" if stalled else "")

    rows = [Row.of("by-target", "g.by-target", p, 100, 100 + 50 * p) for p in range(3)]
    assert [r.lag for r in rows] == [0, 50, 100]
    assert Row.of("input", "in", 0, -1001, 7).committed == -1  # librdkafka's "none"
    ok = report("0", now - 1_000, now - 500, 0, 1, 2)
    assert stall(rows, [ok], now, fresh, "g", 30_000) == (False, "")
    starting = report("0", now - 1_000, 0)  # no commit yet
    assert stall(rows, [starting], now, fresh, "g", 30_000) == (False, "")
    late = report("0", now - 1_000, now - 40_000, 0, 1, 2)
    assert stall(rows, [late], now, fresh, "g", 30_000) == (
        True,
        "150 records wait and the last commit was 40s ago",
    )
    killed = report("1", now - 20_000, now - 21_000, 1, 2)
    survivor = report("0", now - 1_000, now - 500, 0)
    stuck, why = stall(rows, [survivor, killed], now, fresh, "g", 30_000)
    assert stuck and why.startswith(
        "instance 1 last reported 20s ago and held g.by-target[1], g.by-target[2], where 150 "
        "records wait"
    ), why
    assert "KAFKA_SESSION_TIMEOUT_MS" in why
    taken_over = report("0", now - 1_000, now - 500, 0, 1, 2)  # the group moved them
    assert stall(rows, [taken_over, killed], now, fresh, "g", 30_000) == (False, "")
    assert stall(rows, [killed], now, fresh, "g", 30_000)[1].startswith("150 records wait and no")
    said = report("0", now - 1_000, now - 500, 0, 1, 2, stalled=True)
    assert stall(rows, [said], now, fresh, "g", 30_000) == (
        True,
        "instance(s) 0 report a stall (0: waits)",
    )
    # One that stopped cleanly said so: not running, holding nothing, not a lost member
    # (its last report lingered as if it ran, until it was no longer fresh).
    stopped = Status("1", now - 2_000, now - 2_100, 10, False, [], stopped=True)
    assert stall(rows, [taken_over, stopped], now, fresh, "g", 30_000) == (False, "")
    assert stall(rows, [stopped], now, fresh, "g", 30_000) == (
        True,
        "150 records wait and no detector of group g runs (instance 1 stopped 2s ago): start one",
    )
    assert stall(rows[:1], [stopped], now, fresh, "g", 30_000) == (False, "")  # nothing waits


def test_a_stopped_instance_is_listed_as_stopped() -> None:
    from fraudstream.stream.health import GroupStatus, Status, format_status, running

    now = 1_000_000
    up = Status("0", now - 1_000, now - 900, 42, False, [])
    down = Status("1", now - 5_000, now - 5_100, 7, False, [], stopped=True)
    assert running([up, down], now, 6_000) == [up]
    text = format_status(GroupStatus("g", [], [up, down], now, False, ""))
    assert "  instance 1: stopped 5s ago, having decided 7" in text.splitlines()
