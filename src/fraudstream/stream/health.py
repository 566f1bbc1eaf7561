"""Never stuck in silence: what a detector waits for, said in its log and on `<group>.status`.

Every few seconds a detector takes a snapshot of its tasks (per stage and partition: records
buffered, the last mark sent, its stream time) and publishes it, with the age of its last
commit, to the compacted topic `<group>.status` (key: the instance), which
`fraudstream status` reads. When input is pending and no decision has been committed for
`STALL_WARNING_MS`, it logs a warning naming what holds the records back: which stage and
partition, how many records it buffers, which upstream's mark it waits for.

    watch = StallWatch(30_000)
    watch.progress(decided_total, now)          # after each commit
    if watch.stalled(now, pending=True): ...
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from fraudstream.config import Settings
from fraudstream.errors import FraudstreamError
from fraudstream.stream.changelog import end_offsets
from fraudstream.stream.clients import base_config
from fraudstream.stream.ordering import INF, Key
from fraudstream.stream.topology import TopicNames, Topology

__all__ = [
    "GroupStatus",
    "StallWatch",
    "Status",
    "TaskStatus",
    "describe_key",
    "format_status",
    "paused_too_long",
    "read_status",
    "running",
    "stall",
    "waits",
]


class TaskStatus(msgspec.Struct, frozen=True):
    topic: str
    partition: int
    stage: str  # "input", "labels", "by-target", …, "ordered"
    buffered: int = 0  # records held until the upstream marks (output: the next one) allow
    mark: str = ""  # the last mark this task sent downstream
    upstream: int = 0  # how many upstream tasks it needs marks from
    heard: int = 0  # how many of them it has heard
    lowest: int = -1  # the upstream whose mark holds it back (the lowest), -1: none
    lowest_mark: str = ""
    paused_s: float = 0.0  # inputs: how long it has been paused for back-pressure
    # output tasks (they write in input order, not by marks): the record they wait for
    next_record: str = ""


class Status(msgspec.Struct, frozen=True):
    """One detector instance's report."""

    instance: str
    at_ms: int  # wall clock when reported
    last_commit_ms: int  # wall clock of its last commit (0: none yet)
    decided: int  # records decided (legit + fraud + dead letters) since it started
    stalled: bool
    tasks: list[TaskStatus]
    drift: str = ""  # why its model's last window of decisions left the training range
    why: str = ""  # what it waits for, when stalled
    stopped: bool = False  # its last report: it stopped cleanly (left the group, holds nothing)


def running(reports: list[Status], now: int, fresh: int) -> list[Status]:
    """The instances that run: reported within `fresh` ms, and not to say they stopped."""
    return [r for r in reports if now - r.at_ms <= fresh and not r.stopped]


def describe_key(key: Key | None) -> str:
    if key is None:
        return ""
    t, q, o = key
    if t >= INF:
        return f"idle (partition {q}, offset {o})"
    when = datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{when} (partition {q}, offset {o})"


def waits(tasks: list[TaskStatus]) -> list[str]:
    """What the tasks that buffer records wait for, one line each, most buffered first."""
    out = []
    for t in sorted(tasks, key=lambda t: -t.buffered):
        if not t.buffered:
            continue
        if t.next_record:
            why = f"{t.next_record}, to write its records in input order"
        elif t.heard < t.upstream:
            why = (
                f"marks from {t.upstream - t.heard} of its {t.upstream} upstream tasks, unheard yet"
            )
        elif t.lowest >= 0:
            why = f"upstream task {t.lowest}'s mark to pass its records (at {t.lowest_mark})"
        else:
            why = "its next release"
        out.append(f"{t.topic}[{t.partition}] buffers {t.buffered} records, waiting for {why}")
    return out


def paused_too_long(tasks: list[TaskStatus], limit_s: float) -> str:
    """The input partitions paused for back-pressure for `limit_s` or more, and why: what
    they read waits in the stages for the other partitions' event time to reach theirs (one
    runs ahead of the others, e.g. a record on another clock, up to MAX_EVENT_TIME_SKEW_MS
    ahead of its partition). The other partitions' decisions may still flow: without this,
    no stall would show."""
    long = [t for t in tasks if t.paused_s >= limit_s]
    if not long:
        return ""
    held = waits(tasks)
    return (
        "input partition(s) "
        + ", ".join(f"{t.topic}[{t.partition}] (mark {t.mark or '-'})" for t in long)
        + f" paused for back-pressure for {max(t.paused_s for t in long):.0f}s: what they read "
        "waits in the stages for the other partitions' event time to reach theirs"
        + ("; " + "; ".join(held[:3]) if held else "")
        + ". One partition may run ahead of the others (a record on another clock, within "
        "MAX_EVENT_TIME_SKEW_MS of its partition's time): it goes on once they get there, "
        "or once they go idle"
    )


class StallWatch:
    """Decides when 'no decision for a while, input pending' deserves a warning."""

    def __init__(self, warn_after_ms: int) -> None:
        self.warn_after = warn_after_ms / 1000
        self._decided = -1
        self._since: float | None = None  # when decisions last moved
        self._warned_at: float | None = None

    def progress(self, decided: int, now: float) -> None:
        if decided != self._decided:
            self._decided = decided
            self._since = now
            self._warned_at = None

    def stalled(self, now: float, *, pending: bool) -> bool:
        """Pending input and no decision for `warn_after` seconds."""
        if self._since is None:
            self._since = now
        if not pending:
            self._since = now
            return False
        return now - self._since >= self.warn_after

    def should_warn(self, now: float, *, pending: bool) -> bool:
        """`stalled`, at most once per `warn_after` seconds."""
        if not self.stalled(now, pending=pending):
            return False
        if self._warned_at is not None and now - self._warned_at < self.warn_after:
            return False
        self._warned_at = now
        return True


# --- reading it back: `fraudstream status` -----------------------------------------------


class Row(msgspec.Struct):
    stage: str
    topic: str
    partition: int
    committed: int  # -1: nothing committed yet
    end: int
    buffered: int = 0
    mark: str = ""
    instance: str = ""
    lag: int = -1  # records after the committed offset (`of` fills it in)

    @classmethod
    def of(
        cls, stage: str, topic: str, partition: int, committed: int, end: int, **more: Any
    ) -> Row:
        """A row whose lag is counted, "nothing committed" (librdkafka's -1001) read as -1.
        (A field, not a property, so `status --json` has it.)"""
        committed = max(committed, -1)
        lag = max(0, end - max(committed, 0))
        return cls(stage, topic, partition, committed, end, lag=lag, **more)


class GroupStatus(msgspec.Struct):
    group: str
    rows: list[Row]
    reports: list[Status]  # the latest of each instance
    now_ms: int
    stalled: bool
    why: str


def read_status(
    settings: Settings, *, now_ms: int | None = None, fresh_ms: int | None = None
) -> GroupStatus:
    """Per stage and partition: committed and end offsets, lag; from the instances' reports:
    records buffered, the last mark, the last commit's age. Stalled when an instance says so,
    or when records wait and no instance has committed (or reported) for STALL_WARNING_MS."""
    group = settings.detector_group
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    fresh = fresh_ms if fresh_ms is not None else 3 * settings.status_interval_ms
    # read_uncommitted: committed offsets without waiting on a crashed member's pending ones
    consumer = Consumer(
        base_config(settings, "fraudstream-status", consumer=True)
        | {"group.id": group, "isolation.level": "read_uncommitted"}
    )
    try:
        listed = consumer.list_topics(timeout=10).topics
        internal = sorted(t for t in listed if Topology.is_repartition(group, t))
        stage_topics = [settings.transactions_topic, *internal]
        tps = [
            TopicPartition(t, p)
            for t in stage_topics
            if t in listed
            for p in sorted(listed[t].partitions)
        ]
        committed = {(tp.topic, tp.partition): tp.offset for tp in _committed(consumer, tps, group)}
        reports = _latest_reports(settings, consumer, TopicNames(group).status, listed)
    finally:
        consumer.close()
    by_task = {
        (t.topic, t.partition): (t, r.instance)
        for r in running(reports, now, fresh)
        for t in r.tasks
    }
    ends = {
        (topic, p): end
        for topic in stage_topics
        if topic in listed
        for p, end in end_offsets(settings, topic, sorted(listed[topic].partitions)).items()
    }
    rows = []
    for tp in tps:
        end = ends[(tp.topic, tp.partition)]
        task, instance = by_task.get((tp.topic, tp.partition), (None, ""))
        stage = "input" if tp.topic == settings.transactions_topic else tp.topic.rsplit(".", 1)[-1]
        rows.append(
            Row.of(
                stage,
                tp.topic,
                tp.partition,
                committed[(tp.topic, tp.partition)],
                end,
                buffered=task.buffered if task else 0,
                mark=task.mark if task else "",
                instance=instance,
            )
        )
    stalled, why = stall(rows, reports, now, fresh, group, settings.stall_warning_ms)
    return GroupStatus(group, rows, reports, now, stalled, why)


def stall(
    rows: list[Row], reports: list[Status], now: int, fresh: int, group: str, warn_ms: int
) -> tuple[bool, str]:
    """Whether the group is stuck, and why: an instance says so; records wait and no
    instance has reported lately; partitions with records waiting are held by an instance
    that has stopped reporting (killed: the group gives them to another once its session
    times out; the live ones' commits say nothing of them); or records wait and no commit
    came for `warn_ms`. An instance that has not committed yet is starting, not stalled."""
    live = running(reports, now, fresh)
    waiting = sum(r.lag for r in rows) + sum(r.buffered for r in rows)
    if any(r.stalled for r in live):
        why = "instance(s) " + ", ".join(r.instance for r in live if r.stalled) + " report a stall"
        said = [f"{r.instance}: {r.why}" for r in live if r.stalled and r.why]
        if said:
            why += " (" + "; ".join(said) + ")"
        return True, why
    if not waiting:
        return False, ""
    if not live:
        stopped = [r for r in reports if r.stopped]
        if stopped and max(r.at_ms for r in stopped) >= max(r.at_ms for r in reports):
            last = max(stopped, key=lambda r: r.at_ms)
            return True, (
                f"{waiting} records wait and no detector of group {group} runs (instance "
                f"{last.instance} stopped {(now - last.at_ms) / 1000:.0f}s ago): start one"
            )
        return True, f"{waiting} records wait and no detector of group {group} has reported lately"
    held_live = {(t.topic, t.partition) for r in live for t in r.tasks}
    lagging = {(r.topic, r.partition): r.lag for r in rows if r.lag}
    for r in reports:
        if r in live or r.stopped:  # (one that stopped gave its partitions back)
            continue
        orphans = [
            (t.topic, t.partition)
            for t in r.tasks
            if (t.topic, t.partition) in lagging and (t.topic, t.partition) not in held_live
        ]
        if orphans:
            shown = ", ".join(f"{topic}[{p}]" for topic, p in orphans[:4])
            more = f" and {len(orphans) - 4} more" if len(orphans) > 4 else ""
            return True, (
                f"instance {r.instance} last reported {(now - r.at_ms) / 1000:.0f}s ago and held "
                f"{shown}{more}, where {sum(lagging[tp] for tp in orphans)} records wait: if it "
                "was killed, the group gives them to another instance once its session times "
                "out (KAFKA_SESSION_TIMEOUT_MS, 45 s by default); else start a detector"
            )
    commits = [r.last_commit_ms for r in live if r.last_commit_ms]  # (0: none yet: starting)
    if commits and now - max(commits) > warn_ms:
        return True, (
            f"{waiting} records wait and the last commit was {(now - max(commits)) / 1000:.0f}s ago"
        )
    return False, ""


def _committed(consumer: Consumer, tps: list[TopicPartition], group: str) -> list[TopicPartition]:
    """The group's committed offsets, riding out a coordinator still loading or busy (just
    after a member crashed mid-transaction)."""
    for attempt in range(3):
        try:
            return list(consumer.committed(tps, 15))
        except KafkaException as exc:
            err = exc.args[0]
            if attempt == 2 or not (err.retriable() or err.code() == KafkaError._TIMED_OUT):
                raise FraudstreamError(
                    f"could not read group {group}'s committed offsets ({err}); its coordinator "
                    "may still be loading (a broker just started) or recovering from a crashed "
                    "member: try again in a few seconds"
                ) from None
    raise AssertionError("unreachable")


def _latest_reports(
    settings: Settings, consumer: Consumer, topic: str, listed: dict[str, Any]
) -> list[Status]:
    if topic not in listed:
        return []
    tp = TopicPartition(topic, 0)
    end = end_offsets(settings, topic, [0])[0]
    if end <= 0:
        return []
    consumer.assign([TopicPartition(topic, 0, -2)])
    latest: dict[bytes, Status] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            key, value = msg.key(), msg.value()
            if msg.error() is None and key is not None and value:
                try:
                    latest[key] = msgspec.json.decode(value, type=Status)
                except msgspec.DecodeError:
                    continue
        if consumer.position([tp])[0].offset >= end:
            break
    return sorted(latest.values(), key=lambda r: r.instance)


def format_status(status: GroupStatus) -> str:
    """The table `fraudstream status` prints."""
    lines = [f"group {status.group}"]
    for r in status.reports:
        # a report written after `now_ms` was taken is "0 s ago", not "-0.1 s ago"
        age = max(status.now_ms - r.last_commit_ms, 0) / 1000 if r.last_commit_ms else None
        seen = max(status.now_ms - r.at_ms, 0) / 1000
        if r.stopped:
            lines.append(
                f"  instance {r.instance}: stopped {seen:.0f}s ago, having decided {r.decided}"
            )
            continue
        lines.append(
            f"  instance {r.instance}: decided {r.decided}, last commit "
            + (f"{age:.1f}s ago" if age is not None else "none yet")
            + f", reported {seen:.0f}s ago{' — STALLED' if r.stalled else ''}"
        )
        if r.drift:
            lines.append(f"    MODEL DRIFT: {r.drift}")
    header = ("stage", "partition", "committed", "end", "lag", "buffered", "last mark")
    table = [header] + [
        (
            r.stage,
            str(r.partition),
            str(r.committed) if r.committed >= 0 else "-",
            str(r.end),
            str(r.lag),
            str(r.buffered),
            r.mark or "-",
        )
        for r in status.rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    lines.append(f"STALLED: {status.why}" if status.stalled else "ok: nothing is stuck")
    return "\n".join(lines)
