"""The stages' shape: never built on unknown partitions; what differs between two shapes."""

from __future__ import annotations

import pytest

from fraudstream.config import load_settings
from fraudstream.stream.layout import Shape
from fraudstream.stream.topology import Topology

SETTINGS = load_settings(_env_file=None, detector_group="g", transactions_topic="in")


def test_a_topology_of_zero_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="needs partitions"):
        Topology(SETTINGS, ["source", "target"], 0, 0)


def test_internal_topic_names_come_from_one_place() -> None:
    t = Topology(SETTINGS, ["source", "target", "merchant"], 3, 2)
    repartition, changelogs = t.internal()
    names = [n for n, _ in repartition + changelogs] + [t.shape_topic]
    assert all(Topology.is_internal("g", n) for n in names)
    assert [n for n in names if Topology.is_repartition("g", n)] == [n for n, _ in repartition]
    assert not Topology.is_internal("g", "in")
    assert not Topology.is_internal("g2", "g2x.changelog")


def test_shape_differences_name_what_changed() -> None:
    before = Shape.of(Topology(SETTINGS, ["source", "target"], 3, 0))
    assert before.differences(before) == []
    other = SETTINGS.model_copy(update={"transactions_topic": "in2"})
    now = Shape.of(Topology(other, ["source"], 1, 0))
    assert before.differences(now) == [
        "input topic in → in2",
        "input partitions 3 → 1",
        "stages (state keys of the rules) ['source', 'target'] → ['source']",
    ]
    with_labels = Shape.of(Topology(SETTINGS, ["source", "target"], 3, 4))
    assert before.differences(with_labels) == [
        "labels topic none → streaming.transactions.labels (4)"
    ]


def test_a_group_recorded_in_another_repartition_format_is_told_apart() -> None:
    """A shape recorded by a version writing one envelope per repartition record (no
    `format` field), or blocks of transactions as maps (format 2), differs from today's, by
    its format, and says so."""
    import msgspec

    from fraudstream.stream.layout import REPARTITION_FORMAT, Shape

    old = msgspec.json.decode(
        b'{"input":"tx","partitions":3,"stages":["target"],"labels":"","label_partitions":0}',
        type=Shape,
    )
    now = msgspec.structs.replace(old, format=REPARTITION_FORMAT, changelog=old.changelog)
    assert old.differences(now) == [
        f"repartition record format 1 → {REPARTITION_FORMAT} (written by another version of "
        "fraudstream)"
    ]
    maps = msgspec.structs.replace(old, format=2)
    assert maps.differences(now) == [
        f"repartition record format 2 → {REPARTITION_FORMAT} (written by another version of "
        "fraudstream)"
    ]
    assert now.differences(now) == []


def test_a_group_whose_changelogs_hold_untagged_rows_is_told_apart() -> None:
    """Before 2026-12-02 a changelog row was bare columns (no layout id): a shape recorded
    then (no `changelog` field) differs from today's by its changelog format, and says so."""
    import msgspec

    from fraudstream.stream.layout import CHANGELOG_FORMAT, REPARTITION_FORMAT, Shape

    old = msgspec.json.decode(
        b'{"input":"tx","partitions":3,"stages":["target"],"labels":"","label_partitions":0,'
        b'"format":%d}' % REPARTITION_FORMAT,
        type=Shape,
    )
    now = msgspec.structs.replace(old, changelog=CHANGELOG_FORMAT)
    assert old.differences(now) == [
        f"state changelog format 1 → {CHANGELOG_FORMAT} (written by another version of fraudstream)"
    ]


def test_a_group_of_format_6_is_refused_by_format_7() -> None:
    """Format 7 orders the output by the input tasks' numbers (`Envelope.c`), which what a
    detector of format 6 left in flight does not carry: such a group is told apart and
    refused (the message names both formats), not moved on in place."""
    import msgspec

    from fraudstream.stream.layout import REPARTITION_FORMAT, Shape

    now = Shape.of(Topology(SETTINGS, ["source", "target"], 3, 0))
    assert REPARTITION_FORMAT == now.format == 7
    six = msgspec.structs.replace(now, format=6)
    assert six != now
    assert six.differences(now) == [
        "repartition record format 6 → 7 (written by another version of fraudstream)"
    ]
