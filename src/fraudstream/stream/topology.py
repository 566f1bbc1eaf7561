"""The detector's stages and the topics between them, derived from the rule set.

Rules keyed by the input key (the paying account) run where the input is read. Each other key
a rule set keeps state by (payee, merchant, …) is a stage of its own, fed by a repartition
topic partitioned by that key, so one task holds all of a key's state whatever the number of
processes. A last stage, partitioned like the input, puts the decisions back in input order
and writes them out. Without such keys there is one stage, as in the tutorials.

    transactions ─► [source] ─► <group>.by-target ─► [target] ─► … ─► <group>.ordered ─► [out]
    labels ────────────────────┘ (verdicts, for the payee/merchant features)

Every stage has a compacted changelog topic with one partition per stage partition.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from fraudstream.config import Settings

__all__ = ["Stage", "Topology"]


@dataclass(frozen=True)
class Stage:
    index: int  # 0: the input; last: the ordered output (when there are keyed stages)
    key: str  # the field it is partitioned by ("source", "target", …; "" for the output)
    topic: str  # what it reads
    partitions: int
    changelog: str
    upstream: int  # how many upstream tasks send it marks (0 for the input)


class Topology:
    def __init__(
        self, settings: Settings, keys: list[str], input_partitions: int, label_partitions: int
    ) -> None:
        group = settings.detector_group
        p = input_partitions
        if p < 1 or label_partitions < 0:  # a topic's metadata read too early: never build on it
            raise ValueError(f"a topology needs partitions (input {p}, labels {label_partitions})")
        self.shape_topic = f"{group}.topology"  # what the group's internal topics were made for
        self.status_topic = f"{group}.status"  # each instance's latest health report
        self.staged = len(keys) > 1
        self.labels = label_partitions if self.staged and label_partitions else 0
        stages = [Stage(0, keys[0], settings.transactions_topic, p, f"{group}.changelog", 0)]
        if self.staged:
            upstream = p + self.labels
            for i, key in enumerate(keys[1:], 1):
                stages.append(
                    Stage(i, key, f"{group}.by-{key}", p, f"{group}.by-{key}.changelog", upstream)
                )
                upstream = p
            n = len(stages)
            stages.append(Stage(n, "", f"{group}.ordered", p, f"{group}.ordered.changelog", p))
        self.stages = stages
        self.by_topic = {s.topic: s for s in stages}
        # Label verdicts enter the first keyed stage; their tasks number q after the input's.
        self.label_stage = Stage(
            -1, "", settings.labels_topic, self.labels, f"{group}.labels.changelog", 0
        )
        if self.labels:
            self.by_topic[self.label_stage.topic] = self.label_stage

    @staticmethod
    def is_repartition(group: str, topic: str) -> bool:
        """A topic between two stages of `group` (`<group>.by-<key>`, `<group>.ordered`)."""
        return (
            topic.startswith(group + ".by-") and not topic.endswith(".changelog")
        ) or topic == group + ".ordered"

    @staticmethod
    def is_internal(group: str, topic: str) -> bool:
        """Any topic a detector of `group` made for itself: repartition topics, changelogs,
        the record of its shape. These names are made here and nowhere else."""
        if not topic.startswith(group + "."):
            return False
        rest = topic[len(group) + 1 :]
        return rest in (
            "changelog",
            "topology",
            "ordered",
            "ordered.changelog",
            "labels.changelog",
        ) or rest.startswith("by-")

    def stage_name(self, stage: Stage) -> str:
        """How logs and `fraudstream status` call a stage."""
        if stage.index == 0:
            return "input"
        if stage.index < 0:
            return "labels"
        return stage.topic.rsplit(".", 1)[-1]

    def topics(self) -> list[str]:
        """What the detector subscribes to."""
        return list(self.by_topic)

    def internal(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(repartition topics, changelog topics) to create, with their partition counts."""
        stages = [*self.stages, self.label_stage] if self.labels else self.stages
        return (
            [(s.topic, s.partitions) for s in self.stages[1:]],
            [(s.changelog, s.partitions) for s in stages],
        )

    def next(self, stage: Stage) -> Stage:
        """Where a task of `stage` sends (label tasks: the first keyed stage)."""
        return self.stages[max(stage.index, 0) + 1]

    def is_output(self, stage: Stage) -> bool:
        """The last stage of a staged topology: it decides and writes legit/fraud."""
        return self.staged and stage.index == len(self.stages) - 1

    def route(self, to: Stage, value: str | None, origin: int) -> int:
        """The partition of `to` for a record whose key field holds `value` (records without
        one stay spread by their origin partition)."""
        if not to.key:
            return origin  # the output stage is partitioned like the input
        if value is None:
            return origin % to.partitions
        return zlib.crc32(value.encode()) % to.partitions
