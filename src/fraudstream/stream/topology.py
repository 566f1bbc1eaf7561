"""The detector's stages and the topics between them, derived from the rule set.

Rules keyed by the input key (the paying account) run where the input is read. Each other key
a rule set keeps state by (payee, merchant, …) is a stage of its own, fed by a repartition
topic partitioned by that key, so one task holds all of a key's state whatever the number of
processes. A last stage, partitioned like the input, puts the decisions back in input order
and writes them out. Without such keys there is one stage, as in the tutorials.

    transactions ─► [source] ─► <group>.by-target ─► [target] ─► … ─► <group>.ordered ─► [out]
    labels ────────────────────┘ (verdicts, for the payee/merchant features)         ▲
                        └─ payments no keyed stage needs (under its floor) ──────────┘

A payment that no keyed stage acts on (the only keyed stage's rules ignore payments under
its floor, `Engine.floor`, and it keeps no model features) goes from the input stage
straight to the last. The last stage reads one input partition's records only, and puts them
back in input order by the number the input task gave each (`ordering.Chain`), whatever
path each took.

Every stage has a compacted changelog topic with one partition per stage partition. Every
internal topic's name is made by `TopicNames`, here and nowhere else.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from fraudstream.config import Settings

__all__ = ["INPUT", "KEYED", "LABELS", "OUTPUT", "Stage", "TopicNames", "Topology"]

# What a stage's tasks do (stream/tasks.py has a task class for each)
INPUT = "input"  # decode and validate the input, run the account rules (and decide, if alone)
LABELS = "labels"  # read verdicts and send them where the features learn from them
KEYED = "keyed"  # buffer, release in event-time order, run the rules keyed by its key
OUTPUT = "output"  # buffer, release in input order, decide, write legit / fraud


class TopicNames:
    """The names of a group's internal topics."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.shape = f"{group}.topology"  # what the group's internal topics were made for
        self.status = f"{group}.status"  # each instance's latest health report
        self.input_changelog = f"{group}.changelog"
        self.ordered = f"{group}.ordered"
        self.labels_changelog = f"{group}.labels.changelog"

    def by(self, key: str) -> str:
        return f"{self.group}.by-{key}"

    @staticmethod
    def changelog(topic: str) -> str:
        return f"{topic}.changelog"


@dataclass(frozen=True)
class Stage:
    index: int  # its place in the flow: 0 the input, then the keyed stages, the output last
    key: str  # the field it is partitioned by ("source", "target", …; "" for the output)
    topic: str  # what it reads
    partitions: int
    changelog: str
    upstream: int  # how many upstream tasks send it marks (0 for the input)
    role: str  # INPUT, LABELS, KEYED or OUTPUT


class Topology:
    def __init__(
        self, settings: Settings, keys: list[str], input_partitions: int, label_partitions: int
    ) -> None:
        names = self.names = TopicNames(settings.detector_group)
        p = input_partitions
        if p < 1 or label_partitions < 0:  # a topic's metadata read too early: never build on it
            raise ValueError(f"a topology needs partitions (input {p}, labels {label_partitions})")
        self.shape_topic = names.shape
        self.status_topic = names.status
        self.staged = len(keys) > 1
        self.labels = label_partitions if self.staged and label_partitions else 0
        input_topic = settings.transactions_topic
        stages = [Stage(0, keys[0], input_topic, p, names.input_changelog, 0, INPUT)]
        if self.staged:
            upstream = p + self.labels
            for i, key in enumerate(keys[1:], 1):
                topic = names.by(key)
                stages.append(Stage(i, key, topic, p, names.changelog(topic), upstream, KEYED))
                upstream = p
            n = len(stages)
            ordered = names.ordered
            stages.append(Stage(n, "", ordered, p, names.changelog(ordered), p, OUTPUT))
        self.stages = stages
        self.by_topic = {s.topic: s for s in stages}
        # Label verdicts enter the first keyed stage; their tasks number q after the input's.
        self.label_stage = Stage(
            -1, "", settings.labels_topic, self.labels, names.labels_changelog, 0, LABELS
        )
        if self.labels:
            self.by_topic[self.label_stage.topic] = self.label_stage

    @staticmethod
    def is_repartition(group: str, topic: str) -> bool:
        """A topic between two stages of `group` (`<group>.by-<key>`, `<group>.ordered`)."""
        names = TopicNames(group)
        return (
            topic.startswith(names.by("")) and not topic.endswith(names.changelog(""))
        ) or topic == names.ordered

    @staticmethod
    def is_internal(group: str, topic: str) -> bool:
        """Any topic a detector of `group` made for itself: repartition topics, changelogs,
        the record of its shape."""
        n = TopicNames(group)
        own = (n.input_changelog, n.shape, n.ordered, n.changelog(n.ordered), n.labels_changelog)
        return topic in own or topic.startswith(n.by(""))

    def stage_name(self, stage: Stage) -> str:
        """How logs and `fraudstream status` call a stage."""
        if stage.role in (INPUT, LABELS):
            return stage.role
        return stage.topic.rsplit(".", 1)[-1]

    @property
    def buffered(self) -> list[Stage]:
        """The stages whose tasks buffer and release, upstream first."""
        return self.stages[1:]

    def origin(self, stage: Stage, partition: int) -> int:
        """A task's id downstream: its partition (label tasks number after the input's)."""
        return partition + (self.stages[0].partitions if stage.role == LABELS else 0)

    def topics(self) -> list[str]:
        """What the detector subscribes to."""
        return list(self.by_topic)

    def internal(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(repartition topics, changelog topics) to create, with their partition counts."""
        stages = [*self.stages, self.label_stage] if self.labels else self.stages
        return (
            [(s.topic, s.partitions) for s in self.buffered],
            [(s.changelog, s.partitions) for s in stages],
        )

    def next(self, stage: Stage) -> Stage:
        """Where a task of `stage` sends (label tasks: the first keyed stage)."""
        return self.stages[max(stage.index, 0) + 1]

    @property
    def output(self) -> Stage:
        """The last stage (of a staged topology: it decides and writes legit/fraud)."""
        return self.stages[-1]

    def is_output(self, stage: Stage) -> bool:
        """The last stage of a staged topology: it decides and writes legit/fraud."""
        return stage.role == OUTPUT

    def route(self, to: Stage, value: str | None, origin: int) -> int:
        """The partition of `to` for a record whose key field holds `value` (records without
        one stay spread by their origin partition)."""
        if not to.key:
            return origin  # the output stage is partitioned like the input
        if value is None:
            return origin % to.partitions
        return zlib.crc32(value.encode()) % to.partitions
