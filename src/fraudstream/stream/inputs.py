"""Where each input partition resumes, and whether the input topics are still those read.

A task made at an assignment knows from its restored `Meta` the offset after the last record
it decided, and the id of the topic that was in; the group's committed offset says where the
consumer starts. `InputCheck` compares them at each task's first records (`resumed`: a group
whose offsets the broker forgot resumes where the changelog says; an offset committed in a
topic of the same name deleted since is not followed; records the state never read, past
its place, are named: `undecided`), and before each commit asks whether an input topic was
deleted and made again under its name meanwhile (`ask`, then `same`), which librdkafka's
consumer does not tell.

    check = InputCheck(settings, consumer, name, clock)
    ctx.input_ids = check.read_ids(topology, admin)      # at the start
    known = check.committed_first(tasks, runs)           # a step's first records
    if check.resumed(task, run[0].offset(), known.get(tp)): ...
    asked = check.ask(); ...; check.same(asked)           # around each commit
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings
from fraudstream.errors import ProcessingError
from fraudstream.stream.changelog import FIRST_RECORD_TIMEOUT_S, first_record, topic_ids
from fraudstream.stream.clients import admin_client
from fraudstream.stream.tasks import Task
from fraudstream.stream.topology import INPUT, LABELS, Topology

__all__ = ["InputCheck", "foreign"]

log = logging.getLogger(__name__)


class InputCheck:
    """The checks of one detector process's input partitions and topics."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        name: str,
        clock: Callable[[], float],
        on_skipped: Callable[[str, int, int], None] = lambda topic, partition, n: None,
    ) -> None:
        self.settings = settings
        self.on_skipped = on_skipped  # (topic, partition, offsets its state never read)
        self.consumer = consumer
        self._name = name
        self.clock = clock
        self.ids: dict[str, str] = {}  # the input and labels topics' ids (`read_ids`)
        self._admin: AdminClient | None = None  # `ask`'s client, made at its first
        self._gone_said = -60.0  # when an input topic gone was last logged (`_say_gone`)

    def read_ids(self, topology: Topology, admin: AdminClient | None) -> dict[str, str]:
        """The input and labels topics' ids (`Meta.source`); none when the broker does not
        say (their tasks then resume only where the group's committed offsets say), kept in
        `ids`; `admin`: the client to ask with (None: one of its own)."""
        inputs = [s.topic for s in topology.by_topic.values() if s.role in (INPUT, LABELS)]
        try:
            self.ids = topic_ids(self.settings, inputs, admin=admin)
            return self.ids
        except KafkaException as exc:
            log.warning("could not read the ids of %s (%s)", ", ".join(inputs), exc.args[0])
            return {}

    def committed_first(
        self, tasks: dict[tuple[str, int], Task], runs: dict[tuple[str, int], list[Any]]
    ) -> dict[tuple[str, int], TopicPartition]:
        """The group's committed offsets of the partitions whose tasks read their first
        records in this step and check where they were committed (`Task.check_source`), in
        one request; none when they cannot be read (`resumed` asks again)."""
        first = [tp for tp in runs if (task := tasks.get(tp)) is not None and task.check_source]
        if not first:
            return {}
        try:
            committed = self.consumer.committed([TopicPartition(*tp) for tp in first], timeout=30)
        except KafkaException:
            return {}
        return {(tp.topic, tp.partition): tp for tp in committed}

    def resumed(self, task: Task, first: int, known: TopicPartition | None = None) -> bool:
        """An input task's first records since it was made: whether they come where its
        changelog says it was (the offset after the last one it decided, committed in the
        same transaction as its offset; `Task.resume_offset`). Before it, while the group has
        no committed offset for the partition: the broker forgot an empty group's offsets
        (`offsets.retention.minutes` after it emptied, 7 days by default) and the consumer
        started at the earliest offset, which would decide everything retained again; it
        is sent back there instead (False: these records are dropped). A committed offset
        before it, moved there on purpose, is followed. Not known (the offsets unreadable):
        sent back to `first` and asked again at the next step.
        An offset committed for another topic of this name (its metadata names that topic's
        id: one deleted since, whose offset a broker kept or a commit raced its deletion) is
        not this topic's: it is read from its first record. `known`: the partition's
        committed offset, when already asked for (`committed_first`)."""
        resume = task.resume_offset()
        if not task.check_source and (resume is None or first >= resume):
            task.check_resume = False
            return True
        tp = TopicPartition(task.stage.topic, task.partition)
        try:
            (committed,) = [known] if known is not None else self.consumer.committed([tp], 30)
            failed = committed.error
        except KafkaException as exc:
            failed = exc.args[0]
        if failed is not None:
            log.warning(
                "%s [%d]: read from offset %d%s, and the group's committed offset could not "
                "be read (%s): asking again",
                tp.topic,
                tp.partition,
                first,
                "" if resume is None else f", before the {resume} its changelog resumes at",
                failed,
            )
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, first))
            return False
        task.check_source = False
        if foreign(task, committed):
            log.warning(
                "%s [%d]: group %s's committed offset %d was committed in another topic of "
                "this name (id %s, deleted since; this one's is %s): reading it from its "
                "first record",
                tp.topic,
                tp.partition,
                self.settings.detector_group,
                committed.offset,
                committed.metadata,
                task.source,
            )
            task.check_resume = False
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, -2))  # the beginning
            return False
        if resume is None or first >= resume:
            task.check_resume = False
            if resume is not None and first > resume:
                found = self.undecided(task, resume, first, committed.offset)
                if found is not None and self.settings.resume_past_state == "rewind":
                    self.consumer.seek(TopicPartition(tp.topic, tp.partition, found))
                    return False  # (these records dropped: read again after the gap's)
            return True
        task.check_resume = False
        if committed.offset >= 0:
            return True
        _, end = self.consumer.get_watermark_offsets(tp, timeout=30, cached=False)
        if resume > end:  # not this topic's place (one deleted and made again, before ids)
            log.warning(
                "%s [%d]: group %s has no committed offset and its changelog's place (offset "
                "%d) is past the partition's end (%d): deciding it from offset %d",
                tp.topic,
                tp.partition,
                self.settings.detector_group,
                resume - 1,
                end,
                first,
            )
            return True
        log.warning(
            "%s [%d]: group %s has no committed offset (a broker forgets an empty group's "
            "offsets after its offsets.retention.minutes, 7 days by default, or the group "
            "was deleted), but its changelog says it decided up to offset %d: resuming at "
            "%d, not at %d",
            tp.topic,
            tp.partition,
            self.settings.detector_group,
            resume - 1,
            resume,
            first,
        )
        self.consumer.seek(TopicPartition(tp.topic, tp.partition, resume))
        return False

    def undecided(self, task: Task, resume: int, first: int, committed: int) -> int | None:
        """An input task resumed past where its state stands (its first record `first`, its
        changelog's place `resume`, the group's committed offset `committed`): the offset of
        the first committed record between them, which its state never read (said, counted),
        or None. Transaction markers and aborted records there are no such records (they are
        passed over: `first_record`); the rest were skipped on purpose (the group's offsets
        moved forward) or lost with a committed transaction whose records the broker dropped
        (docs/delivery.md). `RESUME_PAST_STATE` says whether they are skipped (`follow`, the
        committed offset) or decided now (`rewind`: the caller goes back to them). Offsets
        the topic no longer keeps are said too: counted when the group had not passed them
        either (its committed offset below the first kept), else only noted (whether they
        were records or transaction markers cannot be told)."""
        topic, partition = task.stage.topic, task.partition
        group = self.settings.detector_group
        try:
            low, found = first_record(self.settings, topic, partition, resume)
        except KafkaException as exc:
            log.warning(
                "%s [%d]: resumed at offset %d, past its state's place (%d), and the records "
                "between could not be checked (%s)",
                topic,
                partition,
                first,
                resume,
                exc.args[0],
            )
            return None
        if low > resume:
            gone = (
                "%s [%d]: offsets %d to %d, past the place of group %s's state, were deleted "
                "(the topic's retention, or records deleted) before it read them"
            )
            if committed < low:  # nor did the group pass them: records lost to this group
                self.on_skipped(topic, partition, low - resume)
                log.warning(gone, topic, partition, resume, low - 1, group)
            else:
                log.info(
                    gone + ": records or transaction markers",
                    topic,
                    partition,
                    resume,
                    low - 1,
                    group,
                )
        if found is None:
            log.warning(
                "%s [%d]: resumed at offset %d, past its state's place (%d), and nothing was "
                "read from there within %.0f s: the records between were not checked",
                topic,
                partition,
                first,
                resume,
                FIRST_RECORD_TIMEOUT_S,
            )
            return None
        if found >= first:
            log.debug(
                "%s [%d]: offsets %d to %d, between its state's place and where it resumed, "
                "hold no committed record",
                topic,
                partition,
                max(resume, low),
                first - 1,
            )
            return None
        self.on_skipped(topic, partition, first - found)
        rewind = self.settings.resume_past_state == "rewind"
        log.warning(
            "%s [%d]: group %s's committed offset is past its state: the state read up to "
            "offset %d, and the records from offset %d to %d were never read by it. They were "
            "skipped on purpose if the group's offsets were moved forward; else they were lost "
            "with a commit the broker dropped (a single-node broker killed during a commit: "
            "Kafka's KAFKA-20734, docs/delivery.md). %s",
            topic,
            partition,
            group,
            resume - 1,
            found,
            first - 1,
            "Deciding them now (RESUME_PAST_STATE=rewind; where a commit of theirs reached "
            "the output before it was lost, some of their outputs may be written twice, or "
            "not again)."
            if rewind
            else "They are skipped: the group's committed offset is followed. A group whose "
            "offsets are never moved by hand can set RESUME_PAST_STATE=rewind, and its "
            "detectors decide such records when they find them.",
        )
        return found

    def ask(self) -> dict[str, Any] | None:
        """The input topics' descriptions asked for (futures; `same` reads them);
        None when their ids are not known (the start could not read them)."""
        ids = self.ids
        if not ids:
            return None
        if self._admin is None:
            self._admin = admin_client(self.settings, f"{self._name}-topic-ids")
        asked: dict[str, Any] = self._admin.describe_topics(TopicCollection(list(ids)))
        return asked

    def same(self, asked: dict[str, Any]) -> None:
        """Before a commit, once its records are produced: the input topics are still the
        ones read since the start (`asked`: `ask` after the step's reads). A topic
        deleted and created again under its name has another id, and librdkafka's consumer
        does not tell it apart (confluentinc/librdkafka#3255): it reads on at its old position
        in the new topic, so the new topic's first records would be skipped for good and its
        offsets committed past them. Then nothing open is committed: the detector stops and
        says so; started again, it reads the new topic from its first record. A topic gone
        (nothing can be read from it meanwhile) or a broker not answering in time (2 s): the
        commit goes on (it needs the broker too), the next one asks again."""
        ids = self.ids
        try:
            now = {t: str(asked[t].result(timeout=2).topic_id) for t in ids}
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                self._say_gone(list(ids))
            return
        except TimeoutError:
            return
        moved = [t for t in ids if now[t] != ids[t]]
        if moved:
            raise ProcessingError(
                f"input topic {', '.join(moved)} was deleted and created again while this "
                "detector ran; nothing it read since its last commit was committed. Start it "
                "again: it reads the new topic from its first record"
            )

    def _say_gone(self, topics: list[str]) -> None:
        """An input topic is gone (deleted, not made again yet): said once a minute."""
        if self.clock() - self._gone_said >= 60:
            self._gone_said = self.clock()
            log.warning(
                "input topic %s is gone (deleted?): waiting for it to be created again",
                " or ".join(topics),
            )


def foreign(task: Task, committed: TopicPartition) -> bool:
    """Whether the group's committed offset of an input task's partition was committed in
    another topic of its name (its metadata names that topic's id)."""
    return (
        committed.offset >= 0
        and bool(task.source)
        and committed.metadata
        not in (
            None,
            "",
            task.source,
        )
    )
