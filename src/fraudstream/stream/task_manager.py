"""The task manager: which tasks this process runs, and what they need from outside.

It creates a task when its partition is assigned (restoring its state from a local snapshot
and its changelog), drops it when revoked or lost, sends the tasks' marks, gathers their part
of each commit (changelog records and input offsets), takes state snapshots, deletes consumed
repartition records, pauses input partitions while too much waits between the stages, and
reports each task's buffer and marks for `fraudstream status`.

    manager = TaskManager(ctx, consumer, engine, snapshots, clock)
    manager.assign([("transactions", 0), ...])
    offsets = manager.prepare_commit()     # changelog records produced, offsets to commit
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from fraudstream.detection import Engine
from fraudstream.stream.changelog import end_offsets, read_changelog, topic_id, wait_readable
from fraudstream.stream.clients import (
    BROKER_ABORT_SWEEP_MS,
    admin_client,
    transaction_timeout_ms,
)
from fraudstream.stream.health import TaskStatus, describe_key
from fraudstream.stream.ordering import (
    HOLD,
    MARK,
    Chain,
    Envelope,
    Key,
    Meta,
    decode_meta,
    encode_block,
)
from fraudstream.stream.snapshot import Snapshot, SnapshotStore
from fraudstream.stream.tasks import (
    META_KEY,
    KeyedTask,
    OutputTask,
    Task,
    TaskContext,
    new_task,
)
from fraudstream.stream.topology import INPUT, KEYED, LABELS

__all__ = ["PURGE_EVERY_S", "TaskManager", "choose_paused"]

log = logging.getLogger(__name__)

PURGE_EVERY_S = 10.0  # how often consumed repartition records are deleted
BACKPRESSURE_EVERY_S = 0.05


def choose_paused(
    inputs: list[tuple[tuple[str, int], Key]],
    waiting_records: int,
    waiting_bytes: int,
    pressing: bool,
    max_records: int,
    max_bytes: int,
    held: Key | None = None,
    floor: Key | None = None,
) -> tuple[set[tuple[str, int]], bool]:
    """Which input partitions to pause, given each input task's mark and what waits between
    this process's stages; and whether this process is now over its bounds (`pressing`: it
    was). Past either bound, all but the laggard (the lowest mark: it must go on for anything
    to be released), until both are below half. Within them, while another process asks to
    hold back (`held`: the lowest mark the keyed stages here have heard), every input ahead
    of that mark: the other's stages are fed by these inputs too, and only its own can it
    pause.

    Never the input the whole group waits for, though: `floor`, the lowest mark the first
    keyed stage here heard from all inputs. `held` may come from a later stage, whose marks
    trail the first's: pausing every input ahead of it would pause that input too, and then
    no stage anywhere could release anything. Without a first-stage task here (`floor`
    None), its own laggard reads on."""
    over = waiting_records > max_records or waiting_bytes > max_bytes
    under = waiting_records <= max_records // 2 and waiting_bytes <= max_bytes // 2
    pressing = over or (pressing and not under)
    if not inputs:
        return set(), pressing
    if pressing:
        # the laggard can change while paused (it reached its end and went idle, or passed
        # another): always keep the current one reading, or nothing drains
        laggard = min(inputs, key=lambda t: t[1])[0]
        return {tp for tp, _ in inputs if tp != laggard}, True
    if held is not None:
        if floor is None:
            floor = min(mark for _, mark in inputs)
        return {tp for tp, mark in inputs if mark > held and mark > floor}, False
    return set(), False


class TaskManager:
    def __init__(
        self,
        ctx: TaskContext,
        consumer: Consumer,
        engine: Engine,
        snapshots: SnapshotStore | None,
        *,
        clock: Callable[[], float],
        name: str,
    ) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.topology = ctx.topology
        self.consumer = consumer
        self.engine = engine  # the whole rule set: each stateful task gets its stage's part
        self.snapshots = snapshots
        self.clock = clock
        self.name = name
        self.tasks: dict[tuple[str, int], Task] = {}
        self.restored_keys = 0
        # input partitions paused for back-pressure, and when each was (clock)
        self.paused_since: dict[tuple[str, int], float] = {}
        self.pressing = False  # over MAX_BUFFERED_*: its marks ask the others to hold back
        self._held_by: set[tuple[str, int]] = set()  # the partitions paused by others' HOLD
        self._next_backpressure = 0.0
        self._next_purge = 0.0
        self._committing: list[TopicPartition] = []  # the offsets of the open commit
        # per repartition partition of its own: the offset the group committed last, and the
        # one a purge was last sent for
        self.committed: dict[tuple[str, int], int] = {}
        self._purged: dict[tuple[str, int], int] = {}
        self._next_snapshot = clock() + self.settings.snapshot_interval_ms / 1000
        self._admin: AdminClient | None = None
        self._topic_ids: dict[str, str] = {}
        self._idle_s = self.settings.partition_idle_ms / 1000

    @property
    def paused(self) -> set[tuple[str, int]]:
        """The input partitions paused for back-pressure."""
        return set(self.paused_since)

    # --- assignment ------------------------------------------------------------------------

    def assign(self, partitions: list[tuple[str, int]]) -> None:
        """(Re)create these partitions' tasks: from a local snapshot and the changelog's tail
        after it where a snapshot matches, else from the whole changelog partition."""
        topology = self.topology
        started = time.monotonic()
        by_stage: dict[str, list[int]] = {}
        for topic, partition in partitions:
            by_stage.setdefault(topic, []).append(partition)
        n = tail = 0
        from_snapshot = 0
        restarted: dict[str, str] = {}  # rule id -> why its state starts empty
        for topic, parts in by_stage.items():
            stage = topology.by_topic[topic]
            stateful = stage.role in (INPUT, KEYED)
            snaps = self._usable_snapshots(stage.changelog, parts) if stateful else {}
            engines: dict[int, Engine] = {}
            metas: dict[int, Meta] = {}
            for p, snap in list(snaps.items()):
                loaded_engine = self.engine.for_stage(stage.key)
                if loaded_engine.load_snapshot(snap.state):
                    engines[p], metas[p] = loaded_engine, decode_meta(snap.meta)
                else:
                    assert self.snapshots is not None
                    self.snapshots.discard(stage.changelog, p, "was made for other rules")
                    del snaps[p]
            start = {p: snap.offset for p, snap in snaps.items()}
            records = read_changelog(self.settings, stage.changelog, parts, start=start)
            from_snapshot += len(snaps)
            for p in parts:
                engine: Engine | None = engines.get(p)
                if engine is None and stateful:
                    engine = self.engine.for_stage(stage.key)
                meta = metas.get(p, Meta())
                state = []
                for key, value in records[p]:
                    if key == META_KEY:
                        meta = decode_meta(value) if value is not None else Meta()
                    else:
                        state.append((key, value))
                if engine is not None:
                    loaded = engine.restore(state)
                    restarted.update(engine.restarted)
                    n += loaded
                    tail += loaded if p in snaps else 0
                self.tasks[(topic, p)] = new_task(self.ctx, stage, p, engine, meta)
        self.restored_keys += n
        for rule_id, why in sorted(restarted.items()):
            log.warning("rule %s: %s", rule_id, why)
        if n or from_snapshot:
            log.info(
                "restored %d tasks from local snapshots (+%d changelog records after them) "
                "and %d changelog records in all, in %.2fs",
                from_snapshot,
                tail,
                n,
                time.monotonic() - started,
            )

    def holding(self) -> str:
        """What this process holds, per stage: "input 0,2,4 of 6; by-target 1,3,5 of 6; …"
        (a group spreads partitions by their count, not per stage: this shows the spread)."""
        topology = self.topology
        held: dict[str, list[int]] = {}
        for topic, partition in self.tasks:
            held.setdefault(topic, []).append(partition)
        return "; ".join(
            f"{topology.stage_name(stage)} "
            + (",".join(map(str, sorted(held[stage.topic]))) if stage.topic in held else "none")
            + f" of {stage.partitions}"
            for stage in topology.by_topic.values()  # (the stages in order, then the labels)
        )

    def reload(self) -> None:
        """Every task again from its changelog (after a producer was replaced)."""
        if self.engine.drift is not None:  # the lost transaction's decisions are redone
            self.engine.drift.rollback()
        self.assign(list(self.tasks))

    def hand_over(self, partitions: list[TopicPartition]) -> None:
        """Before these tasks go to another instance: wait until their changelogs can be
        read to the end. The commit before returned once its transaction was decided, not
        once its markers were written; a new owner restoring in between would stop before
        that transaction and run on without its state and marks (a lower mark number than
        the one its downstream tasks have read, so they ignored its later marks and waited
        for good: CI, 2026-12-07, docs/delivery.md). A transaction left open by a process
        killed in the middle of it holds them back as well, until the broker aborts it: that
        is waited for too (the transaction timeout, then the broker's sweep), or the next
        owner would restore without this process's commits."""
        changelogs = [
            TopicPartition(task.stage.changelog, tp.partition)
            for tp in partitions
            if (task := self.tasks.get((tp.topic, tp.partition))) is not None and task.wrote
        ]
        if not changelogs:
            return
        try:
            behind = wait_readable(
                self._admin_client(),
                changelogs,
                (transaction_timeout_ms(self.settings) + BROKER_ABORT_SWEEP_MS) / 1000 + 5,
                name=self.name,
            )
        except KafkaException as exc:  # (the broker is what failed: its restart ends it)
            log.warning("could not check that the changelogs handed over are readable: %s", exc)
            return
        if behind:
            log.warning(
                "the last commit on %s is still not readable (its transaction markers not "
                "written, or a transaction of another producer still open before it): "
                "whoever takes these partitions next may restore them without it; check the "
                "broker's health",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in behind[:5]),
            )

    def _admin_client(self) -> AdminClient:
        """The admin client this manager's requests share (made on first use)."""
        if self._admin is None:
            self._admin = admin_client(self.settings, f"{self.name}-admin")
        return self._admin

    def drop(self, partitions: list[TopicPartition]) -> None:
        """Revoked or lost: these tasks are another instance's now."""
        for tp in partitions:
            self.tasks.pop((tp.topic, tp.partition), None)
            self.paused_since.pop((tp.topic, tp.partition), None)
            self.committed.pop((tp.topic, tp.partition), None)
            self._purged.pop((tp.topic, tp.partition), None)

    def _usable_snapshots(self, changelog: str, parts: list[int]) -> dict[int, Snapshot]:
        """The local snapshots of these changelog partitions that can be trusted."""
        if self.snapshots is None:
            return {}
        found = {p: s for p in parts if (s := self.snapshots.read(changelog, p)) is not None}
        if not found:
            return {}
        current = topic_id(self.settings, changelog)
        ends = end_offsets(self.settings, changelog, list(found))
        usable = {}
        for p, snap in found.items():
            if snap.topic_id != current:
                self.snapshots.discard(changelog, p, "belongs to another changelog topic")
            elif snap.offset > ends[p]:
                self.snapshots.discard(
                    changelog, p, f"is ahead of the changelog ({snap.offset} > {ends[p]})"
                )
            else:
                usable[p] = snap
        return usable

    # --- idleness ---------------------------------------------------------------------------

    def reached_end(self, partitions: Iterable[tuple[str, int]]) -> None:
        """The consumer said these partitions were read to their end (end-of-partition
        events): from now, an input or labels task there goes idle once PARTITION_IDLE_MS
        passes with nothing more (`marks_due`). Not a paused one: see `ends_by_watermarks`."""
        now = self.clock()
        for tp in partitions:
            task = self.tasks.get(tp)
            if task is not None and task.at_end is None and tp not in self.paused_since:
                task.at_end, task.end_high = now, self._high(tp)

    def ends_by_watermarks(self) -> None:
        """An input or labels partition read to its end goes idle (its mark then holds no
        stage back) when the consumer says so with an end-of-partition event, which
        librdkafka sends once per offset: one missed leaves the stages waiting for it for good
        (a group's last records held in the output). So, every PARTITION_IDLE_MS, a partition
        not known to be at its end is taken to be there when its position (or, with nothing
        read since it was assigned, where it resumes) has reached its high watermark as the
        last fetch saw it (no request to the broker).

        Never a paused partition (back-pressure): no fetch asks for it, so the watermark it
        is compared with is the one seen before the pause, and a partition that was read
        up to it then looks at its end however much came since. Taken for idle, its mark
        said "nothing more from here" while records were waiting there, and the stages
        released later records of the other partitions before them: decisions other than a
        run without the pause (a live input, its partitions read as they are written, then
        paused for longer than PARTITION_IDLE_MS)."""
        waiting = [
            (tp, task)
            for tp, task in self.tasks.items()
            if not task.buffers
            and task.at_end is None
            and not task.idle
            and tp not in self.paused_since
        ]
        if not waiting:
            return
        consumer = self.consumer
        try:
            positions = consumer.position([TopicPartition(t, p) for (t, p), _ in waiting])
        except KafkaException:
            return  # (asked again next time)
        now = self.clock()
        for (_, task), at in zip(waiting, positions, strict=True):
            try:
                low, high = consumer.get_watermark_offsets(at, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue  # not fetched yet
            # where it reads: its position, or with nothing read since it was assigned, where
            # it resumes (its changelog's place), or an empty partition's start
            here = at.offset
            if here < 0:
                resume = task.resume_offset()
                here = resume if resume is not None else (high if low == high else -1)
            if here >= high:
                task.at_end, task.end_high = now, high

    def _high(self, tp: tuple[str, int]) -> int:
        """The partition's high watermark as the last fetch saw it (-1: not known)."""
        try:
            return int(self.consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)[1])
        except KafkaException:
            return -1

    # --- marks -----------------------------------------------------------------------------

    def marks_due(self, *, settled: bool = True) -> bool:
        """Whether some task has a mark to send (an input gone idle, a bound that moved).

        An input or labels partition read to its end PARTITION_IDLE_MS ago goes idle only if
        the consumer fetched nothing for it since: the high watermark its fetches saw has not
        moved since it was at its end (compared with itself, not with the position, which
        says nothing before a first record is delivered, and stops at a transaction still
        open upstream). Else a step that took longer than that (a slow commit, a restore in a
        rebalance) made it idle with records fetched and waiting, and the stages released
        the other partitions' later records before them. Never between the records of a
        step (`settled` False: a rebalance callback, with records delivered that no task has
        read yet)."""
        if not self.topology.staged:
            return False
        now = self.clock()
        due = False
        quiet = [
            (tp, task)
            for tp, task in self.tasks.items()
            if not task.buffers  # input and labels tasks go idle
            and not task.idle
            and task.at_end is not None
            and now - task.at_end >= self._idle_s
        ]
        if quiet and settled:
            for tp, task in quiet:
                high = self._high(tp)
                if high <= task.end_high:
                    task.idle = True
                else:  # records came: read next (it is at its end again once they are)
                    task.at_end = None
        for task in self.tasks.values():
            if task.sends_marks:
                bound = task.bound()
                due = due or (
                    bound is not None
                    and (bound != task.meta.sent or self._holds(task) != task.held)
                )
        return due

    def _holds(self, task: Task) -> bool:
        """Whether `task`'s marks ask to hold back (HOLD): this process is over its bounds.
        Every task that sends marks says so, keyed ones too: a process may hold keyed
        partitions only, and then only its marks downstream can reach the processes that
        read the inputs."""
        return self.pressing

    def send_marks(self) -> None:
        """Each task's mark to every partition of the next stage, if it moved."""
        topology = self.topology
        collector = self.ctx.collector
        tasks = self.tasks.values()
        for task in tasks:
            if task.idle:
                task.settle()  # an input gone idle: what it held goes before its mark
        collector.flush()
        for task in tasks:
            if not task.sends_marks:
                continue
            bound = task.bound()
            meta = task.meta
            hold = self._holds(task)
            if bound is None or (bound == meta.sent and hold == task.held):
                continue
            meta.sent = bound
            meta.mark_seq += 1
            task.held = hold
            to = topology.next(task.stage)
            kind = HOLD if hold else MARK
            value = encode_block([Envelope(kind, *bound, task.origin, meta.mark_seq)])
            collector.broadcast(to.topic, to.partitions, value)

    # --- the transaction -------------------------------------------------------------------

    def begin(self) -> None:
        for task in self.tasks.values():
            task.begin()

    def prepare_commit(self, *, settled: bool = True) -> list[TopicPartition]:
        """Each task's changelog records, produced into the transaction, and the input
        offsets to commit with it. `settled`: the tasks have read every record the consumer
        delivered (else a task's offsets go no further than what it read, `Task.read_to`)."""
        collector = self.ctx.collector
        offsets = []
        # where each partition's reading stands (past transaction markers, unlike the last
        # record's offset + 1, so a finished group shows no lag)
        positions = {
            (tp.topic, tp.partition): tp.offset
            for tp in self.consumer.position([TopicPartition(t, p) for t, p in self.tasks])
        }
        for (topic, partition), task in self.tasks.items():
            position = positions.get((topic, partition), -1)
            if not settled:  # (-1: it read nothing, so nothing delivered is known to be done)
                position = min(position, task.read_to)
            offset = task.commit_offset(position)
            # the state, in the same transaction
            collector.send_keyed(task.stage.changelog, partition, task.changes(offset))
            if offset is not None:
                # an input's offset names its topic's id: one committed for a topic of that
                # name deleted since is known as such (`InputCheck.resumed`)
                if task.source:
                    offsets.append(TopicPartition(topic, partition, offset, metadata=task.source))
                else:
                    offsets.append(TopicPartition(topic, partition, offset))
        self._committing = offsets
        return offsets

    def commit(self) -> None:
        for task in self.tasks.values():
            task.commit()
        if self.engine.drift is not None:  # the decisions committed count for drift
            self.engine.drift.commit()
        internal = {s.topic for s in self.topology.buffered}  # the repartition topics
        for tp in self._committing:
            if tp.topic in internal:
                self.committed[(tp.topic, tp.partition)] = tp.offset
        self._committing = []

    def rollback(self) -> None:
        self._committing = []
        for task in self.tasks.values():
            task.rollback()  # the state goes back with the outputs
        if self.engine.drift is not None:
            self.engine.drift.rollback()

    # --- after a commit --------------------------------------------------------------------

    def snapshot_due(self) -> bool:
        return self.snapshots is not None and self.clock() >= self._next_snapshot

    def snapshot(self) -> None:
        """Right after a commit: each stateful task's state, as of the changelog's end."""
        assert self.snapshots is not None
        self._next_snapshot = self.clock() + self.settings.snapshot_interval_ms / 1000
        started = time.monotonic()
        by_changelog: dict[str, list[Task]] = {}
        for task in self.tasks.values():
            if task.engine is not None:
                by_changelog.setdefault(task.stage.changelog, []).append(task)
        for changelog, tasks in by_changelog.items():
            ids = self._topic_ids
            if changelog not in ids:
                ids[changelog] = topic_id(self.settings, changelog)
            ends = end_offsets(self.settings, changelog, [t.partition for t in tasks])
            for task in tasks:
                assert task.engine is not None
                self.snapshots.write(
                    Snapshot(
                        changelog,
                        task.partition,
                        ids[changelog],
                        ends[task.partition],
                        task.saved_meta,
                        task.engine.snapshot(),
                    )
                )
        log.info(
            "state snapshot of %d tasks taken in %.2fs (written in the background)",
            sum(len(t) for t in by_changelog.values()),
            time.monotonic() - started,
        )

    def purge_due(self) -> bool:
        return self.topology.staged and self.clock() >= self._next_purge

    def purge(self, wait: float = 0) -> None:
        """Delete what the group has committed past on this process's repartition partitions
        (as Kafka Streams does): nobody reads those records again. Each partition's latest
        committed offset, whichever commit it came with (a commit of marks alone carries
        none), unless already sent. Waited for only on a clean stop."""
        self._next_purge = self.clock() + PURGE_EVERY_S
        purged = self._purged
        done = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in self.committed.items()
            if offset > 0 and purged.get((topic, partition)) != offset
        ]
        if not done:
            return
        for tp in done:
            purged[(tp.topic, tp.partition)] = tp.offset
        futures = self._admin_client().delete_records(done)
        for tp, future in futures.items():
            future.add_done_callback(_log_purge_failure(tp))
        if wait:
            concurrent.futures.wait(list(futures.values()), timeout=wait)

    # --- back-pressure ---------------------------------------------------------------------

    def backpressure(self) -> None:
        """Keep what waits between the stages under MAX_BUFFERED_RECORDS / _BYTES: the records
        the keyed stages buffer (until the upstream marks let them out) and those not read
        yet from this process's repartition partitions (where a backlog on the input would
        otherwise pile up, far ahead of the decisions). Past either bound, pause every input
        and labels partition of this process but the one holding the stages back
        (`choose_paused`): a backlog of verdicts would otherwise pile up in the first keyed
        stage, waiting there for the transactions' event time.

        With several processes, a keyed stage is fed by every process's inputs, and a
        process can pause only its own. So while over its bounds, every task of a process
        that sends marks (input, labels, keyed) sends them as HOLD, and every process whose
        keyed or output tasks hear one from another pauses its own inputs that are ahead of
        the lowest mark they have heard, until the marks say otherwise; never the input the
        whole group waits for (the lowest its first keyed stage heard). Pausing only delays
        reading, so order, marks and exactly-once are untouched: a paused partition never
        counts as read to its end (`ends_by_watermarks`), and one gone idle is not paused."""
        now = self.clock()
        if now < self._next_backpressure:
            return
        self._next_backpressure = now + BACKPRESSURE_EVERY_S
        records = nbytes = 0
        inputs: list[tuple[tuple[str, int], Key]] = []
        internal = []
        held: Key | None = None
        floor: Key | None = None  # the lowest input mark the first keyed stage here heard
        topology = self.topology
        own: dict[int, set[int]] = {}  # per stage: the upstream tasks of this process there
        for task in self.tasks.values():
            if task.sends_marks:
                own.setdefault(topology.next(task.stage).index, set()).add(task.origin)
        for (topic, partition), task in self.tasks.items():
            if isinstance(task, KeyedTask):
                orderer = task.orderer
                records += len(orderer)
                nbytes += orderer.bytes
                internal.append(TopicPartition(topic, partition))
                if task.stage.index == 1:
                    heard = orderer.bound() or (-1, -1, -1)  # an input unheard yet: lowest
                    floor = heard if floor is None else min(floor, heard)
                if orderer.holding - own.get(task.stage.index, set()):  # another process
                    low = orderer.bound()
                    if low is not None and (held is None or low < held):
                        held = low
            elif task.stage.role in (INPUT, LABELS) and not task.idle:  # what feeds the stages
                # (one gone idle has nothing to read: paused, what comes there would wait
                # behind its mark that says nothing more comes)
                # its mark as sent, as the stages know it (compared with what they heard)
                mark = task.meta.sent or task.bound()
                inputs.append(((topic, partition), mark if mark is not None else (-1, -1, -1)))
        if not internal and not self.paused and not self.pressing:
            return  # no keyed task here (one stage, or all elsewhere): nothing waits here
        # (a process that lost its keyed tasks in a rebalance goes on below: it hears no HOLD
        # and holds nothing any more, so it must resume what it paused, and stop asking)
        per_record = self.ctx.collector.envelopes_per_record
        for tp, high in self._behind(internal):
            records += round((high - tp.offset) * per_record)  # blocks of records
        records += sum(n for dest, n in self.ctx.collector.in_flight.items() if dest in self.tasks)
        s = self.settings
        want, pressing = choose_paused(
            inputs,
            records,
            nbytes,
            self.pressing,
            s.max_buffered_records,
            s.max_buffered_bytes,
            held,
            floor,
        )
        if pressing and not self.pressing:
            log.info(
                "%d records wait between the stages (%.0f MB buffered): pausing %d of %d "
                "input and labels partitions until they drain, and asking the other "
                "detectors of the group to hold back (MAX_BUFFERED_RECORDS / "
                "MAX_BUFFERED_BYTES)",
                records,
                nbytes / 1e6,
                len(want),
                len(inputs),
            )
        elif not pressing and want and not self._held_by:
            log.info(
                "another detector of the group holds too much between the stages: pausing "
                "%d of %d input and labels partitions that run ahead of the lowest mark "
                "(%s) until it drains",
                len(want),
                len(inputs),
                describe_key(held),
            )
        self.pressing = pressing
        self._held_by = set() if pressing else want
        paused = self.paused
        if want == paused:
            return
        resume, pause = paused - want, want - paused
        if resume:
            self.consumer.resume([TopicPartition(t, p) for t, p in resume])
        if pause:
            self.consumer.pause([TopicPartition(t, p) for t, p in pause])
        for part in resume:
            del self.paused_since[part]
        for part in pause:
            self.paused_since[part] = now
            # not at its end while paused, however it looked (`ends_by_watermarks`)
            self.tasks[part].at_end = None

    def gaps_due(self) -> list[OutputTask]:
        """The output tasks to write on without a record that never came
        (`OutputTask.gap_due`)."""
        now, timeout = self.clock(), self.settings.output_gap_timeout_ms / 1000
        return [
            t for t in self.tasks.values() if isinstance(t, OutputTask) and t.gap_due(now, timeout)
        ]

    # --- health ----------------------------------------------------------------------------

    def task_status(self) -> list[TaskStatus]:
        """Each task's buffer and marks, as `fraudstream status` shows them."""
        out = []
        now = self.clock()
        for (topic, partition), task in sorted(self.tasks.items()):
            since = self.paused_since.get((topic, partition))
            marks = task.meta.marks
            lowest, lowest_mark, next_record = -1, "", ""
            keyed = isinstance(task, KeyedTask)
            if isinstance(task, KeyedTask) and isinstance(task.orderer, Chain):  # input order
                n, after = task.orderer.next_number(), task.orderer.held_from()
                next_record = f"the record numbered {n} from input partition {partition}"
                if after is not None:  # (what an operator can look up in the input)
                    next_record += f", before input offset {after}"
            elif keyed and marks and len(marks) >= task.stage.upstream:
                lowest = min(marks, key=lambda u: marks[u])
                lowest_mark = describe_key(marks[lowest])
            out.append(
                TaskStatus(
                    topic,
                    partition,
                    self.topology.stage_name(task.stage),
                    buffered=len(task.orderer) if isinstance(task, KeyedTask) else 0,
                    mark=describe_key(task.meta.sent),
                    upstream=task.stage.upstream if keyed else 0,
                    heard=len(marks),
                    lowest=lowest,
                    lowest_mark=lowest_mark,
                    paused_s=0.0 if since is None else round(now - since, 1),
                    next_record=next_record,
                )
            )
        return out

    def unread(self) -> list[str]:
        """Assigned partitions with records not read yet (from the consumer's cached
        watermarks: no request to the broker)."""
        tps = [TopicPartition(t, p) for t, p in self.tasks]
        return [
            f"{tp.topic}[{tp.partition}] at {tp.offset} of {high}" for tp, high in self._behind(tps)
        ]

    def lag(self) -> dict[tuple[str, int], int]:
        """Records not read yet per assigned partition (cached watermarks: no request)."""
        tps = [TopicPartition(t, p) for t, p in self.tasks]
        out = {(t, p): 0 for t, p in self.tasks}
        for tp, high in self._behind(tps):
            out[(tp.topic, tp.partition)] = high - tp.offset
        return out

    def state_bytes(self) -> int:
        """Detection state the tasks hold in memory."""
        engines = {id(t.engine): t.engine for t in self.tasks.values() if t.engine is not None}
        return sum(e.state_bytes() for e in engines.values())

    def _behind(self, tps: list[TopicPartition]) -> list[tuple[TopicPartition, int]]:
        """Those of `tps` whose reading position is below their end, with that end (the
        consumer's cached watermarks: no request to the broker)."""
        out = []
        for tp in self.consumer.position(tps) if tps else []:
            try:
                high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
            except KafkaException:
                continue
            if tp.offset >= 0 and high > tp.offset:
                out.append((tp, high))
        return out


def _log_purge_failure(tp: TopicPartition) -> Callable[[Any], None]:
    def done(future: Any) -> None:
        if future.exception() is not None:
            log.warning(
                "could not delete old records of %s[%d]: %s",
                tp.topic,
                tp.partition,
                future.exception(),
            )

    return done
