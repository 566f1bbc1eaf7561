"""The detector's stream thread: the poll loop and the commit cycle, with Kafka transactions.

One consumer reads every topic of the topology (`stream/topology.py`): the input, and, when the
rule set keeps state by payee or merchant, the repartition topics between the stages. Each
assigned partition is a task (`tasks.py`) with its own state. Everything a step produces —
outputs, dead letters, repartition records, marks, changelog records — and every task's input
offset commit in one Kafka transaction every `commit_records` records or `commit_interval_ms`
(`commit_interval_backlog_ms` while steps read full batches: a backlog): a crash before the
commit replays the step, and `read_committed` readers never see it.

The parts, as in Kafka Streams (StreamThread / TaskManager / StreamTask / RecordCollector /
StreamsProducer):

    Processor               the loop: consume a batch, hand each partition's run to its task,
                            release the buffering tasks upstream first, commit when due
    TaskManager             tasks: assign / restore, revoke, marks, commit offsets,
                            snapshots, purging, back-pressure, status (task_manager.py)
    Task and its roles      read / release / bound / changes (tasks.py)
    RecordCollector         every record written, one block per destination (collector.py)
    TransactionCoordinator  the producer: begin, commit with retries, abort, renew, watchdog
                            (transactions.py)
    InputCheck              where each input partition resumes (its changelog's place, its
                            topic's id), and the input topics still those read (inputs.py)

    processor = Processor(settings, engine)
    processor.run(stop_event)
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings, consumer_protocol
from fraudstream.detection import Engine
from fraudstream.errors import ProcessingError
from fraudstream.stream.clients import (
    base_config,
    consumer_config,
    consumer_failure,
    failed_fatally,
)
from fraudstream.stream.collector import ProcessorStats, RecordCollector
from fraudstream.stream.health import StallWatch, Status, TaskStatus, paused_too_long, waits
from fraudstream.stream.inputs import InputCheck, foreign
from fraudstream.stream.layout import member_name, prepare_topology
from fraudstream.stream.metrics import RuntimeMetrics
from fraudstream.stream.snapshot import SnapshotStore
from fraudstream.stream.task_manager import TaskManager
from fraudstream.stream.tasks import TaskContext
from fraudstream.stream.topology import Topology
from fraudstream.stream.transactions import (
    TransactionCoordinator,
    abortable,
    fatal_message,
    renewable,
)

__all__ = ["Processor", "ProcessorStats", "commit_interval_s"]

log = logging.getLogger(__name__)

RENEWALS_IN_A_ROW = 10  # producers replaced without a commit between before it gives up


def commit_interval_s(settings: Settings, backlog: bool) -> float:
    """How long a transaction runs before it commits (unless `COMMIT_RECORDS` comes first):
    `COMMIT_INTERVAL_MS`, or while the input has a backlog (the last step read a full batch)
    `COMMIT_INTERVAL_BACKLOG_MS`, never shorter."""
    interval = settings.commit_interval_ms
    if backlog:
        interval = max(interval, settings.commit_interval_backlog_ms)
    return interval / 1000


class Processor:
    """One detector instance: a consumer in the group and a transactional producer."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        metrics: RuntimeMetrics | None = None,
        admin: AdminClient | None = None,
    ) -> None:
        self.settings = settings
        # a client whose broker the caller knows answers, for the start's requests
        # (`prepare_topology`); None: its own, after waiting for the broker
        self._admin = admin
        self.metrics = metrics or RuntimeMetrics()  # served by the caller (METRICS_PORT)
        self.engine = engine
        self.clock = clock
        self.wall_ms = wall_ms  # only to refuse event times from the future
        self.stats = ProcessorStats()
        self.metrics.attach(lambda: self.stats)
        instance = instance or settings.detector_instance
        name = f"{settings.detector_group}-{instance}"
        static = {"group.instance.id": name} if settings.detector_static_membership else {}
        config = (
            consumer_config(settings, member_name(name), group_id=settings.detector_group)
            | {"enable.partition.eof": True}  # an input read to its end may go idle
            | static
        )
        self._consumer_config = config
        self._new_protocol = consumer_protocol(config)  # KIP-848
        # KIP-848's `range` assignor spreads every stage whenever the group changes
        self._spread_by_stage = self._new_protocol and (
            config.get("group.remote.assignor") == "range"
        )
        self.consumer = Consumer(config)
        self._name = name
        self._instance = instance
        self.txn = TransactionCoordinator(settings, name, clock=clock)
        self.inputs = InputCheck(settings, self.consumer, name, clock, self._skipped)
        self.collector = RecordCollector(settings, self.txn)
        self.topology: Topology | None = None
        self.manager: TaskManager | None = None  # once the topology is known (run)
        self._batches = 0
        self._snapshots = (
            SnapshotStore(
                Path(settings.state_dir),
                settings.detector_group,
                write_delay_s=settings.fault_snapshot_write_delay_ms / 1000,
            )
            if settings.snapshot_interval_ms
            else None
        )
        self._skipped_said: dict[str, int] = {}
        self._drift_said = ""  # the model drift last logged ("" = none)
        self._next_health = 0.0
        self._next_status = 0.0
        self._stall = StallWatch(settings.stall_warning_ms)
        self._paused_said = 0.0  # when a partition paused too long was last logged
        self._last_commit_ms = 0
        self._status_producer: Producer | None = None
        self._stopped_cleanly = False  # `run` returned without an error: its last report says so
        self._renewals = 0  # producers replaced since the last commit
        self._workers = 1  # processes of `--workers N` started together (`run`)
        self._assigned = False  # a first assignment came
        self._joined_at = 0.0  # clock() when it subscribed (the group's join under way)
        self._unassigned_said = 0.0  # when waiting for a first assignment was last logged
        self._rejoin = False  # leave and join again before processing (`_on_assign`)
        self._next_end_check = 0.0  # when `TaskManager.ends_by_watermarks` looks next

    @property
    def tasks(self) -> dict[tuple[str, int], Any]:
        return self.manager.tasks if self.manager is not None else {}

    # --- lifecycle -------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        stop_after: int | None = None,
        on_start: Callable[[], None] | None = None,
        workers: int = 1,
    ) -> ProcessorStats:
        """Process until `stop` is set (or `stop_after` records are committed), then commit.
        `on_start`: called in this thread once the topics are ready and the producer
        initialised, before the first step: just after asking to join the group, or with
        `workers` > 1 just before (the detector caps there what its kernels' warm-up
        loaded, late in the start so as not to wait for it, and the workers of `--workers N`
        wait there for each other). `workers`: how many processes were started together
        (`_on_assign`)."""
        self._workers = workers
        stop = stop or threading.Event()
        self.txn.watch(stop)
        try:
            self.topology = prepare_topology(
                self.settings,
                self.engine.stage_keys(),
                labels=self.engine.has_features,
                admin=self._admin,
            )
            input_ids = self.inputs.read_ids(self.topology, self._admin)  # (the start's client)
        except BaseException:
            self.consumer.close()
            raise
        finally:
            # the start's client is not kept for the run (its threads, its connection's
            # errors while a broker restarts); a purge makes its own when it needs one
            self._admin = None
        ctx = TaskContext(self.settings, self.topology, self.engine, self.collector, self.wall_ms)
        ctx.input_ids = input_ids
        self.manager = TaskManager(
            ctx, self.consumer, self.engine, self._snapshots, clock=self.clock, name=self._name
        )
        # Each record allocates short-lived objects (decoded values, envelopes); with the
        # default thresholds the collector keeps rescanning the long-lived state. A step holds
        # tens of thousands of them at once: at 100,000 young collections of about 14 ms
        # still came every 60,000 transactions or so, at 1,000,000 none in 3,000,000; almost
        # everything is freed by reference counting anyway (docs/performance.md).
        gc.set_threshold(1_000_000, 50, 100)
        self.txn.init(30)
        try:
            if workers > 1:
                # the group's coordinator found and connected now (a committed-offsets
                # request needs it), so that joining is one request away once subscribed:
                # workers that subscribe together then join together (`on_start` waits)
                first = TopicPartition(self.settings.transactions_topic, 0)
                self.consumer.committed([first], 30)
                if on_start is not None:
                    on_start()
                self._subscribe()
            else:  # joining while `on_start` runs (the detector's waits for its kernels)
                self._subscribe()
                if on_start is not None:
                    on_start()
            self._loop(stop, stop_after)
            self._stopped_cleanly = True
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            raise ProcessingError(fatal_message(err)) from None
        finally:
            self.close()
        return self.stats

    def _subscribe(self) -> None:
        assert self.topology is not None
        self._joined_at = self.clock()
        self.consumer.subscribe(
            self.topology.topics(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _loop(self, stop: threading.Event, stop_after: int | None) -> None:
        assert self.manager is not None and self.topology is not None
        manager, txn, s = self.manager, self.txn, self.settings
        staged = self.topology.staged
        interval, backlog_interval = commit_interval_s(s, False), commit_interval_s(s, True)
        consumer, batch = self.consumer, s.batch_size
        # over the buffers' bounds, a transaction commits once it read this many (see below)
        pressing_records = min(s.commit_records, max(1, s.max_buffered_records // 4))
        while not stop.is_set():
            # As soon as anything is there (consume() would wait for a whole batch, up to its
            # timeout), then whatever else is already fetched, up to a batch: small steps when
            # the input is slow, full ones under load.
            # `is not None`: a Message's truth is its value's length, so a null or empty
            # record (a dead letter to be) would read as "nothing there" and be skipped
            first = consumer.poll(0.05)
            msgs = [first] if first is not None else []
            if first is not None and batch > 1:
                msgs += consumer.consume(num_messages=batch - 1, timeout=0)
            if self._rejoin:  # (set by the first assignment, in this poll: nothing was done)
                self._rejoin = False
                # what this poll read is dropped: each of its partitions goes back to its
                # first record (should the group be rebalancing already, librdkafka folds the
                # unsubscribe and the subscribe into nothing and the partitions stay ours)
                dropped: dict[tuple[Any, Any], Any] = {}
                for msg in msgs:
                    err = msg.error()
                    if err is None:
                        dropped.setdefault((msg.topic(), msg.partition()), msg.offset())
                    elif failed_fatally(err):  # (said once: not to be dropped)
                        raise ProcessingError(consumer_failure(err, self._consumer_config))
                for (topic, partition), offset in dropped.items():
                    consumer.seek(TopicPartition(topic, partition, offset))
                consumer.unsubscribe()
                self._subscribe()
                continue
            full = len(msgs) >= batch  # more is waiting: a backlog
            if msgs:
                started = time.perf_counter()
                try:
                    self._process(msgs)
                except KafkaException as exc:
                    if self._produce_failed(exc):
                        continue
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
            if staged:
                manager.backpressure()
                if self.clock() >= self._next_end_check:
                    self._next_end_check = self.clock() + max(s.partition_idle_ms, 100) / 1000
                    manager.ends_by_watermarks()
                    try:
                        self._skip_gaps()
                    except KafkaException as exc:
                        if self._produce_failed(exc):
                            continue
            if not txn.in_txn and manager.marks_due():
                self._begin()
            # Over the buffers' bounds, the input that is not paused (the laggard, which
            # must go on for the stages to release anything) reads on, and what it forwards
            # reaches the stages only once this transaction commits: committing as soon as
            # it read a quarter of MAX_BUFFERED_RECORDS adds at most that before the stages
            # see it, not one whole transaction (COMMIT_RECORDS; docs/performance.md has the
            # peaks measured, 1.5 to 1.7 times the bound)
            records = pressing_records if manager.pressing else s.commit_records
            if txn.due(records, backlog_interval if full else interval):
                self._commit()
            if stop_after is not None and self.stats.total >= stop_after:
                break
            if self.clock() >= self._next_health:
                self._health()
        if txn.in_txn:
            self._commit()
        if self._snapshots is not None and not txn.in_txn and self.stats.commits:
            manager.snapshot()  # a clean stop leaves the freshest snapshot for the restart
        if staged:
            manager.purge(wait=10)

    def readiness(self) -> tuple[bool, str]:
        """Whether this process holds its partitions, restored, and nothing is stalled (its
        health loop's view, once a second); else why not (`/readyz`)."""
        h = self.metrics.health
        return h.ready, h.why

    def close(self) -> None:
        """Abort what is uncommitted (a fenced producer cannot: the broker aborts it) and
        leave the group."""
        self.metrics.health.ready, self.metrics.health.why = False, "stopping"
        self.txn.close()
        self.consumer.close()
        if self._status_producer is not None:
            if self._stopped_cleanly:  # `fraudstream status` then shows it stopped, not lost
                self._publish_status([], stalled=False, why="", stopped=True)
            self._status_producer.flush(5)
        if self._snapshots is not None:
            self._snapshots.flush()

    # --- one step --------------------------------------------------------------------------

    def _begin(self) -> None:
        assert self.manager is not None
        self.txn.begin()
        self.manager.begin()

    def _process(self, msgs: list[Any]) -> None:  # Any: no Optional checks on the hot path
        self._batches += 1
        if self._batches == self.settings.fault_crash_at_batch:
            raise RuntimeError(f"fault injection: crash in batch {self._batches}")
        if not self.txn.in_txn:
            self._begin()
        runs: dict[tuple[str, int], list[Any]] = {}
        ends: dict[tuple[str, int], bool] = {}  # whether a partition's last event was its end
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if not self.settings.fault_drop_partition_eof:
                        ends[(msg.topic(), msg.partition())] = True
                    continue
                if failed_fatally(err):
                    raise ProcessingError(consumer_failure(err, self._consumer_config))
                log.warning("consumer error: %s", err)
                continue
            tp = (msg.topic(), msg.partition())
            run = runs.get(tp)
            if run is None:
                runs[tp] = [msg]
            else:
                run.append(msg)
            if ends:
                ends.pop(tp, None)
        self.txn.records += len(msgs)
        tasks = self.tasks
        buffering = []  # tasks that read into their buffer in this step
        known = self.inputs.committed_first(tasks, runs)
        for tp, run in runs.items():
            task = tasks.get(tp)
            if task is None:  # not ours (any more): the new owner reads it again (the commit
                continue  # that gave it up covered only what was read: `_on_revoke`)
            if (task.check_resume or task.check_source) and not self.inputs.resumed(
                task, run[0].offset(), known.get(tp)
            ):
                ends.pop(tp, None)  # (sent back: not at its end)
                continue
            task.take(run)
            if task.buffers:
                buffering.append(task)
        if ends:
            assert self.manager is not None
            self.manager.reached_end(ends)
        assert self.topology is not None
        for stage in self.topology.buffered:  # upstream first: their output is read later
            for task in buffering:
                if task.stage is stage:
                    task.release()
        self.collector.flush()

    def _produce_failed(self, exc: KafkaException) -> bool:
        """Producing in the open transaction failed: e.g. the producer lost its epoch
        mid-transaction (librdkafka refuses to produce until the transaction is aborted):
        abort and redo; or it failed fatally (not fenced): replace it and redo (returns True:
        the step is over). Anything else is fatal."""
        txn = self.txn
        err = txn.cause(exc.args[0])
        if renewable(err):
            self._renew(err)
            return True
        if not txn.in_txn or not abortable(err):
            raise KafkaException(err) from None
        log.warning("producing failed, aborting and rewinding: %s", err)
        self._abort()
        return False

    def _skip_gaps(self) -> None:
        """Output partitions waiting for good for a record that never came (checked with
        the ends, every PARTITION_IDLE_MS) write on without it, in a transaction."""
        assert self.manager is not None
        due = self.manager.gaps_due()
        if not due:
            return
        if not self.txn.in_txn:
            self._begin()
        for task in due:
            task.skip_gap()
        self.collector.flush()

    def _skipped(self, topic: str, partition: int, n: int) -> None:
        """`n` input offsets this partition resumed past that its state never read: counted
        for the metrics (a new dict, so a scrape never iterates one that changes)."""
        h = self.metrics.health
        tp = (topic, partition)
        h.skipped_offsets = h.skipped_offsets | {tp: h.skipped_offsets.get(tp, 0) + n}

    # --- the commit cycle ------------------------------------------------------------------

    def _commit(self, *, settled: bool = True) -> None:
        """Commit the open transaction. `settled`: every record the consumer has delivered
        was read by its task (between steps); not so in a rebalance callback, which librdkafka
        runs inside `poll` or `consume`, with records already delivered (their offsets past
        the consumer's position) that no task has read yet."""
        # the input topics' ids asked for now, answered while the commit is prepared
        asked = self.inputs.ask() if settled else None
        started = time.perf_counter()
        with self.txn.watched():
            self._commit_once(settled, asked)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)

    def _commit_once(self, settled: bool = True, asked: dict[str, Any] | None = None) -> None:
        assert self.manager is not None and self.topology is not None
        manager, txn = self.manager, self.txn
        if txn.chaos_abort():
            self._abort()
            return
        try:
            if self.topology.staged:
                manager.marks_due(settled=settled)
                manager.send_marks()
            offsets = manager.prepare_commit(settled=settled)
            if asked is not None:
                self.inputs.same(asked)
            txn.commit(offsets, self.consumer.consumer_group_metadata())
        except KafkaException as exc:
            err: KafkaError = txn.cause(exc.args[0])
            if renewable(err):  # the producer failed fatally (not fenced): replace it
                self._renew(err)
                return
            if abortable(err):
                log.warning("transaction aborted, rewinding to committed offsets: %s", err)
                self._abort()
                return
            if err.retriable():  # still failing after the retry budget: renew the producer
                self._renew(err)
                return
            raise ProcessingError(fatal_message(err)) from None
        manager.commit()
        self._renewals = 0
        done, s = self.collector.settle(), self.stats
        s.legit, s.fraud, s.dead_letter = (
            s.legit + done.legit,
            s.fraud + done.fraud,
            s.dead_letter + done.dead_letter,
        )
        s.dead_letters.update(done.dead_letters)
        s.rule_hits.update(done.rule_hits)
        s.gap_numbers += done.gap_numbers
        s.late_numbers += done.late_numbers
        s.commits += 1
        self._last_commit_ms = self.wall_ms()
        if manager.snapshot_due():
            manager.snapshot()
        if manager.purge_due():
            manager.purge()

    def _abort(self) -> None:
        """Abort the open transaction and rewind every assigned partition to its commit."""
        assert self.manager is not None
        self.txn.abort()
        self.manager.rollback()  # the state goes back with the outputs
        self.collector.discard()
        self.stats.aborts += 1
        self._rewind()

    def _renew(self, err: KafkaError) -> None:
        """A commit that kept timing out, or a producer failed fatally: a new producer
        (fencing the old one), every task reloaded from its changelog, the input rewound to
        the committed offsets. Replaced RENEWALS_IN_A_ROW times without a commit between,
        it stops: something else is wrong."""
        assert self.manager is not None
        self._renewals += 1
        if self._renewals > RENEWALS_IN_A_ROW:
            raise ProcessingError(
                f"the producer was replaced {RENEWALS_IN_A_ROW} times without a commit "
                f"between; last: {fatal_message(err)}"
            )
        self.txn.renew(err)
        self.collector.discard()
        self.stats.renewed += 1
        self.manager.reload()
        self.stats.restored_keys = self.manager.restored_keys
        self._rewind()

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset."""
        self.collector.discard()  # forwarded in the aborted step: redone from the offsets
        assigned = self.consumer.assignment()
        if assigned:
            assert self.manager is not None
            for tp in self.consumer.committed(assigned, timeout=30):
                task = self.manager.tasks.get((tp.topic, tp.partition))
                if tp.offset >= 0 and (task is None or not foreign(task, tp)):
                    self.consumer.seek(tp)
                else:  # nothing committed: where its changelog says, else from the beginning
                    # (a group whose offsets the broker forgot: `InputCheck.resumed`; one
                    # committed in a topic of this name deleted since)
                    resume = task.resume_offset() if task is not None else None
                    start = -2 if resume is None else resume
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition, start))

    # --- assignment ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Restore before any record of the new partitions is processed: commit what is open,
        # then load each new task's latest committed state from its changelog partition.
        assert self.manager is not None
        if self.txn.in_txn:
            self._commit(settled=False)
        h = self.metrics.health
        if partitions:
            h.ready, h.why = False, f"restoring the state of {len(partitions)} partitions"
        self.manager.assign([(tp.topic, tp.partition) for tp in partitions])
        if partitions:  # (the next health check, within a second, says whether it is ready)
            h.why = "restored, not checked yet"
        self.stats.restored_keys = self.manager.restored_keys
        if partitions:
            log.info("assigned %d partitions; holds %s", len(partitions), self.manager.holding())
        first, self._assigned = not self._assigned, True
        if (
            first
            and self._workers > 1
            and not self._spread_by_stage
            and len(self.manager.tasks) == self._partitions()
        ):
            # The group formed before the other workers joined. Kept, these partitions would
            # be spread by the cooperative-sticky assignor moving some off this process, a
            # stage's partitions at a time (one process would read every input); given up
            # before anything is processed, the group spreads them afresh over all workers.
            log.info(
                "given every partition before the other workers joined (%d started "
                "together): joining again, so that the group spreads each stage over all",
                self._workers,
            )
            self._rejoin = True

    def _unassigned(self, now: float) -> str:
        """What the detector waits for while its group gives it nothing, not even an empty
        assignment (under KIP-848 a member with no partition gets no assignment at all)."""
        group, waited_s = self.settings.detector_group, now - self._joined_at
        waited = f"no partitions from group {group} after {waited_s:.0f}s"
        if self._new_protocol:
            return (
                f"{waited}: the group may have more members than partitions, or a member that "
                "stopped without leaving holds them until its session times out (the broker's "
                "group.consumer.session.timeout.ms, 45 s by default), or the broker does not "
                "have Kafka's new group protocol (KAFKA_GROUP_PROTOCOL="
                "consumer needs Kafka 4.0 or later; `fraudstream broker tool features "
                "--bootstrap-server HOST:PORT describe` shows group.version) — then unset "
                "KAFKA_GROUP_PROTOCOL"
            )
        return (
            f"{waited}: the group waits for a member that stopped without leaving until its "
            "session times out (KAFKA_SESSION_TIMEOUT_MS, 45 s by default; with static "
            "membership, until it comes back)"
        )

    def _partitions(self) -> int:
        """How many partitions the group's topology has (every stage's, the labels')."""
        assert self.topology is not None
        return sum(stage.partitions for stage in self.topology.by_topic.values())

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what we did for these partitions before another instance takes them over:
        # what the tasks read, not what the consumer delivered (a record `poll` returned
        # just before, or one `consume` had gathered when it ran this callback, is not done)
        assert self.manager is not None
        if self.txn.in_txn:
            self._commit(settled=False)
        # the commits readable before the next owner restores (`TaskManager.hand_over`)
        if partitions:
            h = self.metrics.health
            h.ready, h.why = False, f"handing {len(partitions)} partitions over"
        self.manager.hand_over(partitions)
        self.manager.drop(partitions)
        if partitions:
            log.info("gave up %d partitions; holds %s", len(partitions), self.manager.holding())

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self.manager is not None
        if self.txn.in_txn:
            self._abort()
        self.manager.drop(partitions)
        if partitions:
            log.info("lost %d partitions; holds %s", len(partitions), self.manager.holding())

    # --- health ----------------------------------------------------------------------------

    def task_status(self) -> list[TaskStatus]:
        """Each task's buffer and marks, as `fraudstream status` shows them."""
        return self.manager.task_status() if self.manager is not None else []

    def _health(self) -> None:
        """Once a second: warn when stalled; every STATUS_INTERVAL_MS: publish the status."""
        now = self.clock()
        self._next_health = now + 1.0
        if self.manager is None:
            return
        self._stall.progress(self.stats.total, now)
        tasks = self.manager.task_status()
        held = waits(tasks)
        unread = self.manager.unread() if not held else []
        pending = bool(held or unread)
        waiting = "; ".join(held) if held else "unread: " + ", ".join(unread[:10])
        if self._stall.should_warn(now, pending=pending):
            log.warning(
                "no decision committed for %.0fs while input is pending (STALL_WARNING_MS); %s",
                self.settings.stall_warning_ms / 1000,
                waiting,
            )
        warn_s = self.settings.stall_warning_ms / 1000
        if (
            not self._assigned
            and now - max(self._joined_at, self._unassigned_said) >= warn_s
            # under KIP-848 a member given nothing hears nothing (no empty assignment): once
            and not (self._unassigned_said and self._new_protocol)
        ):
            self._unassigned_said = now
            log.warning("%s (STALL_WARNING_MS)", self._unassigned(now))
        paused = paused_too_long(tasks, warn_s)
        if paused and now - self._paused_said >= warn_s:
            self._paused_said = now
            log.warning("%s (STALL_WARNING_MS)", paused)
        skipped = self.manager.ctx.skipped_labels
        if skipped != self._skipped_said and now >= self._next_status:
            self._skipped_said = dict(skipped)
            log.warning(
                "skipped %d label records (dead-letter topic, error.stage=label): %s",
                sum(skipped.values()),
                ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())),
            )
        drift = self.engine.drift.message if self.engine.drift is not None else ""
        if drift != self._drift_said:
            self._drift_said = drift
            if drift:
                log.warning(
                    "the model runs on another world than its training days: %s; judge it "
                    "with `fraudstream backtest` on recent labelled days and retrain it "
                    "(`fraudstream train`) if it no longer holds",
                    drift,
                )
            else:
                log.info("the model's decisions are back within their training days' range")
        stalled = self._stall.stalled(now, pending=pending)
        why = waiting if stalled else paused
        stalled = stalled or bool(paused)
        h = self.metrics.health
        h.buffered = {(t.stage, t.partition): t.buffered for t in tasks if t.upstream}
        h.lag = self.manager.lag()
        h.state_bytes = self.manager.state_bytes()
        h.last_commit_age_s = (
            (self.wall_ms() - self._last_commit_ms) / 1000 if self._last_commit_ms else 0.0
        )
        h.stalled, h.drift, h.dead_letters = stalled, self._drift_said, dict(skipped)
        if not self.manager.tasks:  # (`/readyz`: none yet, none left, or a spare member)
            h.ready = False
            h.why = (
                self._unassigned(now)
                if now - self._joined_at >= warn_s
                else f"joining group {self.settings.detector_group}: no partitions yet"
            )
        else:
            h.ready, h.why = not stalled, f"stalled: {why}" if stalled else ""
        if now >= self._next_status:
            self._next_status = now + self.settings.status_interval_ms / 1000
            self._publish_status(tasks, stalled=stalled, why=why)

    def _publish_status(
        self, tasks: list[TaskStatus], *, stalled: bool, why: str, stopped: bool = False
    ) -> None:
        assert self.topology is not None
        if self._status_producer is None:
            self._status_producer = Producer(base_config(self.settings, f"{self._name}-status"))
        status = Status(
            self._instance,
            self.wall_ms(),
            self._last_commit_ms,
            self.stats.total,
            stalled,
            tasks,
            self._drift_said,
            why if stalled else "",
            stopped,
        )
        try:
            self._status_producer.produce(
                self.topology.status_topic,
                msgspec.json.encode(status),
                self._instance.encode(),
                partition=0,
            )
            self._status_producer.poll(0)
        except (BufferError, KafkaException) as exc:  # health reports never stop the work
            log.debug("status not published: %s", exc)
