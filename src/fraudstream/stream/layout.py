"""The detector's topics at start: awaited, created, checked against the group's past.

A detector builds its topology (`topology.py`) from the partition counts of the input and
labels topics. Those counts are read only once the broker reports every partition with a
leader (a topic just created can show none for a moment, and a topology of 0 partitions is
never built). The group's internal topics must match the topology: a group started with one
input topic, partition count or rule set keeps changelogs, marks and offsets that mean
nothing to another one. The shape each group was built for is recorded in
`<group>.topology`; a detector whose shape differs stops at start, saying what differs and
how to go on (a new `--group`, or `fraudstream reset --group G`).

    topology = prepare_topology(settings, engine.stage_keys(), labels=engine.has_features)
    reset_group(settings, "fraudstream-detector")   # delete its internal topics and offsets
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from fraudstream.config import Settings
from fraudstream.errors import ConfigError, FraudstreamError
from fraudstream.stream.admin import create_missing
from fraudstream.stream.changelog import end_offset
from fraudstream.stream.clients import admin_client, admin_result, base_config, wait_for_broker
from fraudstream.stream.topology import TopicNames, Topology

__all__ = [
    "GroupMismatchError",
    "Shape",
    "group_members",
    "group_topics",
    "member_name",
    "prepare_topology",
    "reset_group",
    "wait_for_partitions",
]

log = logging.getLogger(__name__)

SHAPE_KEY = b"shape"


STATUS_TOPIC_CONFIG = {"segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1"}
REPARTITION_TOPIC_CONFIG = {"retention.ms": "-1"}  # kept until purged (`prepare_topology`)
# ordering.encode_block; 3: HopTx arrays, HOLD marks; 4: block hits; 5: feature rows as bytes;
# 6: bundles (Envelope.more); 7: payments skip the last keyed stage under its floor, and the
# output orders by the input task's numbers (Envelope.c, `Chain`): what an earlier version
# left in flight carries none, so a group of format 6 is refused, not moved on in place
REPARTITION_FORMAT = 7
CHANGELOG_FORMAT = 2  # 2: a table row starts with its layout id, layouts described (2026-12-02)


class GroupMismatchError(ConfigError):
    """The group's internal topics were made for another topology."""


class Shape(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What a group's internal topics were made for."""

    input: str
    partitions: int
    stages: list[str]
    labels: str = ""
    label_partitions: int = 0
    # how records on the repartition topics are written: 1 one envelope per record (before
    # 2026-11-27, recorded without this field), 2 blocks of envelopes
    format: int = 1
    # how state is written on the changelogs: 1 rows of bare columns (before 2026-12-02,
    # recorded without this field), 2 rows tagged with their layout (rules may change)
    changelog: int = 1

    @classmethod
    def of(cls, topology: Topology) -> Shape:
        first = topology.stages[0]
        return cls(
            input=first.topic,
            partitions=first.partitions,
            stages=[s.key for s in topology.stages if s.key],
            labels=topology.label_stage.topic if topology.labels else "",
            label_partitions=topology.labels,
            format=REPARTITION_FORMAT,
            changelog=CHANGELOG_FORMAT,
        )

    def differences(self, now: Shape) -> list[str]:
        out = []
        if self.input != now.input:
            out.append(f"input topic {self.input} → {now.input}")
        if self.partitions != now.partitions:
            out.append(f"input partitions {self.partitions} → {now.partitions}")
        if self.stages != now.stages:
            out.append(f"stages (state keys of the rules) {self.stages} → {now.stages}")
        if (self.labels, self.label_partitions) != (now.labels, now.label_partitions):
            before = f"{self.labels} ({self.label_partitions})" if self.labels else "none"
            after = f"{now.labels} ({now.label_partitions})" if now.labels else "none"
            out.append(f"labels topic {before} → {after}")
        if self.format != now.format:
            out.append(
                f"repartition record format {self.format} → {now.format} (written by another "
                "version of fraudstream)"
            )
        if self.changelog != now.changelog:
            out.append(
                f"state changelog format {self.changelog} → {now.changelog} (written by another "
                "version of fraudstream)"
            )
        return out


def wait_for_partitions(
    settings: Settings,
    topic: str,
    *,
    timeout: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    admin: AdminClient | None = None,
) -> int:
    """The topic's partition count, once the broker reports every partition with a leader.
    Raises a `FraudstreamError` naming the topic when that takes longer than `timeout`."""
    admin = admin or admin_client(settings, "fraudstream-metadata")
    deadline = clock() + timeout
    said = False
    while True:
        detail = "not known to the broker"
        try:
            md = admin.list_topics(topic, timeout=5).topics.get(topic)
        except KafkaException as exc:
            md, detail = None, str(exc.args[0])
        if md is not None:
            if md.error is not None:
                detail = str(md.error)
            elif not md.partitions:
                detail = "no partitions reported yet"
            elif any(p.leader < 0 for p in md.partitions.values()):
                detail = "partitions without a leader yet"
            else:
                return len(md.partitions)
        if clock() > deadline:
            raise FraudstreamError(
                f"topic {topic} has no usable partitions after {timeout:.0f}s ({detail}); "
                "is the broker healthy? Check `fraudstream broker status` and try again"
            )
        if not said:
            log.info("waiting for topic %s: %s", topic, detail)
            said = True
        time.sleep(0.1)


def _existing_partitions(listed: Mapping[str, Any], topics: list[str]) -> dict[str, int]:
    return {t: len(listed[t].partitions) for t in topics if t in listed and listed[t].partitions}


def _usable_partitions(listed: Mapping[str, Any], topic: str) -> int | None:
    """The topic's partition count if the listing shows every partition with a leader."""
    md = listed.get(topic)
    if md is None or md.error is not None or not md.partitions:
        return None
    if any(p.leader < 0 for p in md.partitions.values()):
        return None
    return len(md.partitions)


def _read_shape(settings: Settings, topic: str) -> Shape | None:
    # fetch.wait.max.ms: the broker answers a fetch at the end at once instead of after
    # its 500 ms (a restart read this one record in about 0.6 s)
    consumer = Consumer(
        base_config(settings, "fraudstream-shape", consumer=True)
        | {"group.id": "fraudstream-shape", "enable.auto.commit": False}
        | {"fetch.wait.max.ms": 10}
    )
    try:
        tp = TopicPartition(topic, 0)
        end = end_offset(consumer, tp)  # waits out a new topic's leader election
        if end <= 0:
            return None
        consumer.assign([TopicPartition(topic, 0, -2)])
        shape: Shape | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=100, timeout=0.02):
                value = msg.value()
                if msg.error() is None and msg.key() == SHAPE_KEY and value:
                    try:
                        shape = msgspec.json.decode(value, type=Shape)
                    except msgspec.DecodeError:
                        shape = None
            if consumer.position([tp])[0].offset >= end:
                return shape
        raise FraudstreamError(f"could not read {topic} within 30s; is the broker overloaded?")
    finally:
        consumer.close()


def _write_shape(settings: Settings, topic: str, shape: Shape) -> None:
    producer = Producer(base_config(settings, "fraudstream-shape") | {"acks": "all"})
    producer.produce(topic, msgspec.json.encode(shape), SHAPE_KEY, partition=0)
    if producer.flush(30):
        raise FraudstreamError(f"could not write {topic}; is the broker healthy?")


def _next_step(group: str) -> str:
    return (
        f"start it with a new group (`fraudstream detect --group {group}-2`; for "
        f"`fraudstream run`, DETECTOR_GROUP={group}-2), or delete "
        f"this group's internal topics and offsets with `fraudstream reset --group {group}` "
        "(its detectors stopped) to start it over from the input's beginning"
    )


def prepare_topology(
    settings: Settings, keys: list[str], *, labels: bool, admin: AdminClient | None = None
) -> Topology:
    """Await the input (and labels) topic, build the topology, create its internal topics,
    and check them against what the group was built for (recording it the first time).
    `admin`: a client whose broker the caller knows answers (the detector's start makes all
    its requests on one); without it, this waits for the broker first."""
    s = settings
    if admin is None:
        wait_for_broker(s, s.startup_timeout_ms / 1000)
        # one client for every request below: a new client's first request waits about
        # 50 ms, ten of them half a second of each start
        admin = admin_client(s)
    # One listing answers every question below about topics that exist already (on a
    # restart, all of them); only what is created here is asked about again.
    listed = admin.list_topics(timeout=10).topics
    inputs = [s.transactions_topic]
    if len(keys) > 1 and labels:
        inputs.append(s.labels_topic)
    create_missing(s, {t: (s.topic_partitions, False) for t in inputs}, admin=admin, listed=listed)

    def partitions_of(topic: str) -> int:
        known = _usable_partitions(listed, topic)
        return known if known is not None else wait_for_partitions(s, topic, admin=admin)

    label_partitions = partitions_of(s.labels_topic) if len(inputs) > 1 else 0
    topology = Topology(s, keys, partitions_of(s.transactions_topic), label_partitions)
    group = s.detector_group
    now = Shape.of(topology)
    repartition, changelogs = topology.internal()
    wanted = dict(repartition + changelogs)
    have = _existing_partitions(listed, list(wanted))
    wrong = [f"{t} has {have[t]} (needs {n})" for t, n in wanted.items() if have.get(t, n) != n]
    own = [topology.shape_topic, topology.status_topic]
    # the status topic gets a report every STATUS_INTERVAL_MS from each instance and is read
    # whole by `status` and every 5 s by the dashboard: a segment a minute, compacted soon,
    # keeps it at about the latest reports (Kafka's defaults: a week of them)
    created = create_missing(
        s,
        {t: (1, True) for t in own},
        {topology.status_topic: STATUS_TOPIC_CONFIG},
        admin=admin,
        listed=listed,
    )
    if created or _leaderless(listed, own):
        _wait_for_leaders(admin, own)
    # a shape topic this start created is empty (one another detector created meanwhile
    # is not in `created`: it is read)
    before = None if topology.shape_topic in created else _read_shape(s, topology.shape_topic)
    if before is not None and before != now:
        raise GroupMismatchError(
            f"group {group} was built for another topology: "
            + "; ".join(before.differences(now))
            + f". Its internal topics, state and offsets belong to that one: {_next_step(group)}"
        )
    if wrong:
        raise GroupMismatchError(
            f"group {group}'s internal topics do not match its topology: "
            + "; ".join(wrong)
            + f". {_next_step(group)}"
        )
    # the other internal topics in one request, then one wait for all their leaders; the
    # repartition topics keep their records until the group has committed past them and
    # deletes them (`TaskManager.purge`), however long a detector stops (as Kafka Streams'
    # do): with the broker's 7 days, a stop that long lost what the stages still held
    created = create_missing(
        s,
        {t: (n, False) for t, n in repartition} | {t: (n, True) for t, n in changelogs},
        {t: REPARTITION_TOPIC_CONFIG for t, _ in repartition},
        admin=admin,
        listed=listed,
    )
    if created or _leaderless(listed, list(wanted)):
        _wait_for_leaders(admin, list(wanted))
    if before is None:
        _write_shape(s, topology.shape_topic, now)
    return topology


def _leaderless(listed: Mapping[str, Any], topics: list[str]) -> list[str]:
    """The topics of `topics` the listing shows without a leader for every partition."""
    return [t for t in topics if _usable_partitions(listed, t) is None]


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float = 30.0) -> None:
    """Until every partition of these topics has a leader (one metadata request a round)."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = _leaderless(admin.list_topics(timeout=10).topics, topics)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise FraudstreamError(
                f"topics without usable partitions after {timeout:.0f}s: {', '.join(waiting)}; "
                "is the broker healthy? Check `fraudstream broker status` and try again"
            )
        time.sleep(0.05)


def member_name(name: str, host: str | None = None) -> str:
    """A detector's client id in its group: `<group>-<instance>@<host>` (the host tells a
    dead predecessor on this machine from a live detector on another)."""
    return f"{name}@{host or socket.gethostname()}"


def group_members(settings: Settings, group: str, admin: AdminClient | None = None) -> list[Any]:
    """The group's current members (`MemberDescription`s: client_id, host, ...), [] if none."""
    admin = admin or admin_client(settings)
    deadline = time.monotonic() + settings.startup_timeout_ms / 1000
    said = False
    while True:
        # requests of at most 10 s, asked again until the deadline (a timeout is taken for a
        # coordinator still starting)
        wait = min(10.0, max(1.0, deadline - time.monotonic()))
        described = admin.describe_consumer_groups([group], request_timeout=wait)[group]
        try:
            return list(admin_result(described, wait).members)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return []
            if code not in _COORDINATOR_STARTING or time.monotonic() > deadline:
                raise FraudstreamError(
                    f"could not describe group {group}: {exc} — is the broker "
                    f"{settings.kafka_broker_url} healthy? Check `fraudstream broker status` "
                    "and try again"
                ) from None
            if not said:  # a fresh broker elects the group coordinator in a few seconds
                log.info("waiting for the broker's group coordinator (%s)", exc.args[0].name())
                said = True
            time.sleep(0.2)


_COORDINATOR_STARTING = {
    KafkaError._TIMED_OUT,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


def running_elsewhere(
    settings: Settings, name: str, admin: AdminClient | None = None
) -> str | None:
    """The host on which detector `name` (`<group>-<instance>`) is a member of its group
    from another machine, or None. A member of the same name from this machine is a dead
    predecessor (the local lock is ours), not a rival: its partitions come back to us."""
    mine = member_name(name)
    for m in group_members(settings, settings.detector_group, admin):
        cid = m.client_id or ""
        if cid.startswith(f"{name}@") and cid != mine:
            return cid.partition("@")[2]
    return None


def group_topics(settings: Settings, group: str) -> list[str]:
    """The topics of a detector group: its internal ones (repartition, changelogs, its shape)
    and its instances' status reports (which `reset --group` deletes too: the status of a
    group started over listed the instances of before)."""
    admin = admin_client(settings)
    listed = admin.list_topics(timeout=10).topics
    status = TopicNames(group).status
    return sorted(t for t in listed if Topology.is_internal(group, t) or t == status)


def reset_group(settings: Settings, group: str) -> tuple[list[str], bool]:
    """Delete a group's internal topics and its committed offsets; returns (topics deleted,
    whether the group's offsets existed). Refused while members of the group are running."""
    admin = admin_client(settings)
    members = group_members(settings, group, admin)
    if members:
        names = ", ".join(sorted({m.client_id for m in members}))
        static = any(getattr(m, "group_instance_id", None) for m in members)
        raise FraudstreamError(
            f"group {group} has {len(members)} running member(s) ({names}); stop its "
            "detectors first (Ctrl-C or SIGTERM), then reset"
            + (
                " — stopped static members (DETECTOR_STATIC_MEMBERSHIP) stay until their "
                "session times out (KAFKA_SESSION_TIMEOUT_MS, 45 s by default): try again then"
                if static
                else ""
            )
        )
    existed = True
    try:
        admin_result(admin.delete_consumer_groups([group], request_timeout=20)[group], 20)
    except KafkaException as exc:
        code = exc.args[0].code()
        if code == KafkaError.GROUP_ID_NOT_FOUND:
            existed = False
        else:
            raise FraudstreamError(f"could not delete group {group}'s offsets: {exc}") from None
    topics = group_topics(settings, group)
    if topics:
        for topic, future in admin.delete_topics(topics, operation_timeout=30).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise FraudstreamError(f"could not delete {topic}: {exc}") from None
        _await_deleted(admin, topics)
    return topics, existed


def _await_deleted(admin: AdminClient, topics: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = admin.list_topics(timeout=10).topics
        if not any(t in listed for t in topics):
            return
        time.sleep(0.2)
    raise FraudstreamError(f"topics still listed {timeout:.0f}s after deletion: {topics}")
