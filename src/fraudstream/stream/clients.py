"""Kafka client configurations, in one place, so every app talks to Kafka the same way."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from dotenv import dotenv_values

from fraudstream.config import (
    Settings,
    consumer_protocol,
    group_protocol_problem,
    is_kafka_tool_variable,
)
from fraudstream.errors import ConfigError, KafkaUnavailableError
from fraudstream.schema import MAX_RECORD_BYTES

log = logging.getLogger(__name__)

__all__ = [
    "admin_client",
    "admin_result",
    "base_config",
    "check_connection",
    "consumer_config",
    "consumer_failure",
    "failed_fatally",
    "passthrough",
    "producer_config",
    "transaction_problems",
    "transaction_timeout_ms",
    "wait_for_broker",
]


def passthrough(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Any librdkafka setting from `KAFKA_<NAME>` variables (the environment, then `.env`):
    KAFKA_SECURITY_PROTOCOL=SASL_SSL becomes security.protocol (KAFKA_BROKER_URL excepted).
    Values are never logged."""
    if environ is None:
        env: Mapping[str, str] = {
            **{k: v for k, v in dotenv_values(".env").items() if v is not None},
            **os.environ,
        }
    else:
        env = environ
    return {
        k[6:].lower().replace("_", "."): v
        for k, v in env.items()
        if k.startswith("KAFKA_")
        and k != "KAFKA_BROKER_URL"
        and v
        and not is_kafka_tool_variable(k)
    }


# What librdkafka 2.16 calls consumer properties (a producer made with each logs "… is a
# consumer property and will be ignored")
_CONSUMER_ONLY = frozenset(
    {
        "auto.commit.interval.ms",
        "auto.offset.reset",
        "auto.commit.enable",
        "check.crcs",
        "consume.callback.max.messages",
        "coordinator.query.interval.ms",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "fetch.error.backoff.ms",
        "fetch.max.bytes",
        "fetch.message.max.bytes",
        "fetch.min.bytes",
        "fetch.queue.backoff.ms",
        "fetch.wait.max.ms",
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "heartbeat.interval.ms",
        "isolation.level",
        "max.partition.fetch.bytes",
        "max.poll.interval.ms",
        "offset.store.method",
        "offset.store.path",
        "offset.store.sync.interval.ms",
        "partition.assignment.strategy",
        "queued.max.messages.kbytes",
        "queued.min.messages",
        "session.timeout.ms",
        "share.acknowledgement.mode",
    }
)


def base_config(settings: Settings, client_id: str, *, consumer: bool = False) -> dict[str, Any]:
    """What every client shares: the broker, a name, the `KAFKA_*` settings. A consumer's
    settings (`KAFKA_SESSION_TIMEOUT_MS`, `KAFKA_GROUP_PROTOCOL`, `KAFKA_FETCH_MAX_BYTES`, …)
    only for a `consumer`: librdkafka would warn about each of them at every producer's and
    admin client's start."""
    extra = passthrough()
    return {
        "bootstrap.servers": settings.kafka_broker_url,
        "client.id": client_id,
        **(extra if consumer else {k: v for k, v in extra.items() if k not in _CONSUMER_ONLY}),
    }


def admin_client(settings: Settings, client_id: str = "fraudstream-admin") -> AdminClient:
    """An admin client. Its first request waits about 50 ms (the connection's set-up): a
    caller with several requests makes them on one. Its informational log lines are left out
    (KAFKA_LOG_LEVEL=6 shows them): closing it printed librdkafka's "Purging 1 unserved events
    from background queue" into the commands' output."""
    return AdminClient({"log_level": 5} | base_config(settings, client_id))


def admin_result(future: Any, request_timeout: float) -> Any:
    """An admin request's result, awaited 5 s past the `request_timeout` it was made with:
    librdkafka's own timeout comes first, as a KafkaException. No answer even then is the same
    KafkaException (_TIMED_OUT), never a bare TimeoutError: on a broker still starting, an
    answer once came after the 30 s a request of 30 s was awaited (CI, 2026-12-07)."""
    try:
        return future.result(timeout=request_timeout + 5)
    except TimeoutError:
        waited = f"no answer in {request_timeout + 5:.0f} s"
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, waited)) from None


# A transaction still open this long is aborted by the broker (`transaction.timeout.ms`;
# librdkafka's default is 60 s, Kafka Streams sets 10 s for exactly-once). A process killed
# in the middle of one leaves it open: until the broker aborts it, no read_committed reader
# gets past it on any partition it wrote (outputs, repartition topics, changelogs), and a
# new owner's commits on those changelog partitions are unreadable. With the broker's sweep
# after it, it is over before a session timeout (45 s by default) moves the partitions. Not
# shorter: a transaction the broker aborted fences its producer for good (librdkafka raises
# _FENCED, as for a zombie), which stops the detector; 20 s rides out a broker restart.
TRANSACTION_TIMEOUT_MS = 20_000

# How often the broker looks for transactions past their timeout
# (`transaction.abort.timed.out.transaction.cleanup.interval.ms`, Kafka's default).
BROKER_ABORT_SWEEP_MS = 10_000


def transaction_timeout_ms(settings: Settings) -> int:
    """The detector's transaction timeout: TRANSACTION_TIMEOUT_MS unless
    KAFKA_TRANSACTION_TIMEOUT_MS says otherwise."""
    return int(producer_config(settings, "-", transactional_id="-")["transaction.timeout.ms"])


def transaction_problems(settings: Settings) -> list[str]:
    """What in the configuration conflicts with the detector's transaction timeout, one line
    each. librdkafka refuses the first two only when the detector's producer is made (after
    the broker is found), naming its properties; a commit interval too close to the timeout
    would have the broker abort transactions of a quiet input, which stops the detector."""
    config = producer_config(settings, "-", transactional_id="-")
    timeout = int(config["transaction.timeout.ms"])
    said = f"the detector's transaction timeout, {timeout:,} ms (KAFKA_TRANSACTION_TIMEOUT_MS)"
    problems = []
    limits = (
        ("message.timeout.ms", "KAFKA_MESSAGE_TIMEOUT_MS", timeout),
        ("delivery.timeout.ms", "KAFKA_DELIVERY_TIMEOUT_MS", timeout),
        ("socket.timeout.ms", "KAFKA_SOCKET_TIMEOUT_MS", timeout + 100),
    )
    for prop, var, limit in limits:
        if prop in config and int(config[prop]) > limit:
            problems.append(f"{var}: at most {limit:,} ms with {said} — lower it, or raise that")
    for var, value in (
        ("COMMIT_INTERVAL_MS", settings.commit_interval_ms),
        ("COMMIT_INTERVAL_BACKLOG_MS", settings.commit_interval_backlog_ms),
    ):
        if value > timeout // 2:
            problems.append(
                f"{var}: at most {timeout // 2:,} ms, half {said}, or the broker aborts "
                "transactions and the detector stops — lower it, or raise that"
            )
    return problems


def producer_config(
    settings: Settings, client_id: str, *, transactional_id: str | None = None
) -> dict[str, Any]:
    """Idempotent always (no duplicates on retry); transactional when an id is given.

    The batching and compression settings are defaults a `KAFKA_*` variable overrides
    (`KAFKA_LINGER_MS`, `KAFKA_COMPRESSION_TYPE=none`). A transactional producer (the
    detector's) compresses with lz4: it writes every transaction about three times more bytes
    than it reads (the repartition topics carry the input record to the output), and writing
    them was most of the broker's work (docs/performance.md, "The broker's work is bytes"),
    and its transactions time out after `TRANSACTION_TIMEOUT_MS`
    (`KAFKA_TRANSACTION_TIMEOUT_MS`)."""
    tuning: dict[str, Any] = {
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }
    fixed: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        # An oversized bad record is forwarded unchanged to the dead-letter topic; the
        # broker's message.max.bytes must allow it too (the local broker's is 4 MiB).
        "message.max.bytes": MAX_RECORD_BYTES,
    }
    if transactional_id is not None:
        tuning |= {"compression.type": "lz4", "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS}
        fixed |= {"transactional.id": transactional_id}
    return tuning | base_config(settings, client_id) | fixed


def consumer_config(
    settings: Settings, client_id: str, *, group_id: str, from_beginning: bool = True
) -> dict[str, Any]:
    """Manual commits, committed data only (read_committed), cooperative rebalancing.

    Read-ahead is bounded: the consumer stops fetching once its one queue holds 20,000
    records or 4 MB (librdkafka's defaults: 100,000 records, 64 MB), repartition blocks (up
    to 256 KB each) included; a fetch under way can overshoot it (8.5 MB seen). librdkafka
    documents the kbytes bound for that one queue but `queued.min.messages` per partition;
    a group consumer forwards every partition's queue into its one queue, though, and its
    fetch decision compares that queue's length with it too (its fetch debug log shows every
    partition with the same totals). A partition not fetched because the queue is full is
    fetched again after `fetch.queue.backoff.ms`, 1 s by default: with a small queue that
    idles the consumer (throughput fell threefold), so 10 ms. `KAFKA_QUEUED_MIN_MESSAGES`,
    `KAFKA_QUEUED_MAX_MESSAGES_KBYTES` and `KAFKA_FETCH_QUEUE_BACKOFF_MS` override them
    (benchmarks/backlog.py --variant measures them).

    A member learns that its group rebalances from its next heartbeat, and a cooperative
    rebalance takes two rounds: with librdkafka's 3 s interval, a detector joining a running
    group (`--workers N` starting, a restart, scaling out) got its partitions about 6 s later.
    Heartbeats every 500 ms (`KAFKA_HEARTBEAT_INTERVAL_MS` overrides it) cost a few small
    requests a second per consumer (docs/performance.md, "A rebalance at the start of
    `--workers 2`").

    With `KAFKA_GROUP_PROTOCOL=consumer` (KIP-848) the broker assigns partitions and sets the
    session and heartbeat: no heartbeat default and no client-side assignor then, and the
    broker's `range` assignor by default, which gives each member the same partition numbers
    of every topic, so each process holds its share of every stage whenever the group changes
    (docs/scaling.md)."""
    base = base_config(settings, client_id, consumer=True)
    if consumer_protocol(base):
        # KIP-848: the broker assigns partitions and times sessions and heartbeats
        problem = group_protocol_problem(base)
        if problem:
            raise ConfigError(problem)
        defaults: dict[str, Any] = {"group.remote.assignor": "range"}
        assignment: dict[str, Any] = {}
    else:
        defaults = {"heartbeat.interval.ms": 500}
        assignment = {"partition.assignment.strategy": "cooperative-sticky"}
    return (
        {
            "queued.min.messages": 20_000,
            "queued.max.messages.kbytes": 4_096,
            "fetch.queue.backoff.ms": 10,
        }
        | defaults
        | base
        | {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }
        | assignment
    )


def failed_fatally(err: KafkaError) -> bool:
    """The client is in its fatal state: it does nothing more. `_FATAL` is what a call or a
    consumed event says once it is (the error itself came with an earlier request), without
    the fatal flag: seen from `produce` after a broker restart (the detector stopped instead of
    replacing its producer), and from a consumer whose broker refused KIP-848's heartbeat
    (the detector ran on, deciding nothing). A producer's callers first ask
    `TransactionCoordinator.cause` for the error behind it: it may be a fencing."""
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def consumer_failure(err: KafkaError, config: Mapping[str, Any]) -> str:
    """What a user reads when a group's consumer (made from `config`) failed fatally: it reads
    nothing more, so its process stops instead of running on, silent. (A consumer's event
    says `_FATAL`; the reason is only in its text.)"""
    text = str(err)
    if consumer_protocol(config) and "API version not supported" in text:
        return (
            f"the broker does not take Kafka's new group protocol ({err}): "
            "KAFKA_GROUP_PROTOCOL=consumer needs Kafka 4.0 or later with the feature "
            "group.version at 1 or more (`fraudstream broker tool features --bootstrap-server "
            "HOST:PORT describe` shows it) — unset KAFKA_GROUP_PROTOCOL to use the classic "
            "protocol"
        )
    if "instance ID is still used" in text:  # KIP-848: UNRELEASED_INSTANCE_ID
        return (
            f"another member of the group still uses this group.instance.id ({err}): a "
            "killed predecessor holds it until its session times out (the broker's "
            "group.consumer.session.timeout.ms, 45 s by default) — start this one again after "
            "that, or stop the other instance"
        )
    if "group.instance.id" in text:  # classic: a static member fenced by another
        return (
            f"this consumer was fenced: another member with the same group.instance.id took "
            f"over ({err}). Do not run two instances with the same --instance; restart this "
            "one only if the other is gone"
        )
    return (
        f"the Kafka consumer failed fatally ({err}); stopping without committing what is "
        "open — restart to resume from the last commit"
    )


# librdkafka's word that no bootstrap server could be reached (refused, no such host)
_UNREACHABLE = (KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE)
SURE_DOWN_S = 3.0  # refused for this long: not a broker restarting, say so


def check_connection(settings: Settings, timeout: float = 10.0) -> None:
    """Raise `KafkaUnavailableError` (with what to do) unless a broker answers within
    `timeout`; when every bootstrap server refuses the connection (or its name does not
    resolve), after `SURE_DOWN_S` already: nothing listens there."""
    down: list[str] = []
    why: list[str] = []  # the connection's own error ("Connection refused"), to show

    def on_error(err: KafkaError) -> None:
        if err.code() in _UNREACHABLE:
            down.append(err.str())
        if err.code() in (KafkaError._TRANSPORT, KafkaError._RESOLVE):
            why.append(err.str())

    admin = AdminClient(
        base_config(settings, "fraudstream-probe") | {"log_level": 0, "error_cb": on_error}
    )
    start = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - start)
        try:
            md = admin.list_topics(timeout=max(0.05, min(0.5, left)))
            break
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            waited = time.monotonic() - start
            if waited >= timeout or (down and waited >= min(SURE_DOWN_S, timeout)):
                detail = (why or down or [str(exc.args[0] if exc.args else exc)])[-1]
                raise KafkaUnavailableError(settings.kafka_broker_url, detail) from None
    if not md.brokers:
        raise KafkaUnavailableError(settings.kafka_broker_url, "metadata lists no brokers")


def wait_for_broker(settings: Settings, timeout: float) -> None:
    """Wait up to `timeout` seconds for a broker to answer, saying once what it waits for."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            check_connection(settings, timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except KafkaUnavailableError:
            if time.monotonic() >= deadline:
                raise
            if not said:
                log.info(
                    "waiting up to %.0fs for a Kafka broker at %s",
                    timeout,
                    settings.kafka_broker_url,
                )
                said = True
            time.sleep(0.5)
