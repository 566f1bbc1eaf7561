"""Settings, read once from flags, the environment or a `.env` file.

Names are the tutorials' (`KAFKA_BROKER_URL`, `TRANSACTIONS_TOPIC`, ...). A bad value fails at
start with a message naming the key::

    settings = load_settings(transactions_per_second=500)

Other `KAFKA_<NAME>` variables are librdkafka settings (`stream.clients.passthrough`); one that
librdkafka does not know (a typo such as `KAFKA_BROKER_ULR`) or whose value it refuses also
fails at start, naming the variable and, for a typo, the nearest setting.
"""

from __future__ import annotations

import difflib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fraudstream.errors import ConfigError, not_utf8

__all__ = [
    "Settings",
    "consumer_protocol",
    "group_protocol_problem",
    "is_kafka_tool_variable",
    "kafka_variable_problems",
    "load_settings",
]


class Settings(BaseSettings):
    """Everything configurable, with the tutorials' environment names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    kafka_broker_url: str = "localhost:9092"
    """Kafka bootstrap servers (host:port, comma-separated); a non-local address means no
    local broker is started."""
    transactions_topic: str = "queueing.transactions"
    """Input topic: the transactions the generator writes and the detector reads."""
    legit_topic: str = "streaming.transactions.legit"
    """Output topic of the transactions decided legitimate."""
    fraud_topic: str = "streaming.transactions.fraud"
    """Output topic of the transactions decided fraudulent (read by `fraudstream alerts`)."""
    dlq_topic: str = "streaming.transactions.dlq"
    """Dead-letter topic: records that cannot be decided (malformed, or an event time too far
    ahead), with the reason in their headers."""
    labels_topic: str = "streaming.transactions.labels"
    """Ground truth / confirmed verdicts, keyed by transaction id (written by the simulator or a
    review; read by the detector, whose model features learn from them, and by `evaluate`)."""
    rules_file: str | None = None
    """The detector's rule set (`--rules`); unset: the shipped `rules/default.yaml`."""
    transactions_per_second: float = Field(default=1000.0, gt=0)
    """Generator rate in transactions a second (`--rate` overrides it, `max` for unpaced)."""
    topic_partitions: int = Field(default=6, ge=1, le=10_000)
    """Partitions of the topics created when missing (existing topics are left alone)."""
    topic_replication_factor: int = Field(default=1, ge=1)
    """Replication factor of the topics created when missing."""

    detector_group: str = "fraudstream-detector"
    """The detectors' consumer group id; `transactional.id` is `<group>-<instance>`."""
    detector_instance: str = "0"
    """This detector's instance name within its group (`--instance`); `detect --workers N`
    names its workers `<instance>-<i>`."""
    detector_static_membership: bool = False
    """Static membership (`group.instance.id` = `<group>-<instance>`): a restarted instance
    reclaims its partitions at once; a stopped one holds them until its session times out."""
    batch_size: int = Field(default=4000, ge=1, le=100_000)
    """Records per consume call, at most (fewer when the input is slow): under load, a
    larger step spreads each step's fixed costs over more records."""
    commit_interval_ms: int = Field(default=50, ge=1)
    """A transaction commits after this many ms or `COMMIT_RECORDS` records, whichever comes
    first; with the default rules a decision crosses three transactions (input, payee stage,
    output), or two for a payment that skips the payee stage (it may still wait for an
    earlier one of its partition that did), so its latency is two or three intervals plus
    polling."""
    commit_interval_backlog_ms: int = Field(default=200, ge=1)
    """The commit interval while the input has a backlog (a step read a full `BATCH_SIZE`):
    fewer, larger transactions while catching up, where records wait longer in the backlog
    anyway; back to `COMMIT_INTERVAL_MS` as soon as a step is not full. Never shorter than
    `COMMIT_INTERVAL_MS` (set it equal to keep one interval)."""
    commit_records: int = Field(default=20_000, ge=1)
    """A transaction commits after this many records or `COMMIT_INTERVAL_MS`, whichever comes
    first (raise both for fewer, larger transactions)."""
    commit_stuck_timeout_ms: int = Field(default=60_000, ge=1000)
    """A commit still unfinished after this many ms is fatal: the process exits (code 3) so a
    restart resumes from the last commit."""
    partition_idle_ms: int = Field(default=1000, ge=0)
    """An input partition read to its end and silent this many ms stops holding back the
    stages keyed by payee or merchant."""
    max_event_time_skew_ms: int = Field(default=3_600_000, ge=0)
    """An event time this many ms ahead of the wall clock is dead-lettered (`event_time_skew`).
    This far ahead of its partition's stream time (or a partition's first records), records
    are held until those after them tell: back behind them by this much, they ran on another
    clock and are decided at the stream's time, with an `event_time_skew` reason; else the
    partition's clock moved, and they go at their own time."""
    resume_past_state: Literal["follow", "rewind"] = "follow"
    """An input partition resumed past records its state never read (the group's committed
    offset ahead of its changelog's place): `follow` skips them (as the offset says: the
    group's offsets were moved forward on purpose), `rewind` decides them first (a group
    whose offsets are never moved by hand: they were lost with a commit the broker
    dropped). Either way they are logged and counted (docs/delivery.md)."""
    output_gap_timeout_ms: int = Field(default=300_000, ge=1000)
    """An output partition that holds records but not the one numbered before them waits
    this long for it, and then, once the marks of the stage before say it is idle, writes on
    without it (a broker lost that record's transaction after it committed:
    docs/delivery.md) and logs which; one that comes later is written then, out of order.
    Longer than a rebalance after a process dies, a restore and a stuck commit, as marks may
    say idle from before."""
    stall_warning_ms: int = Field(default=30_000, ge=1000)
    """Input pending and no decision committed for this many ms, or an input partition
    paused for back-pressure this long: the detector logs what it waits for, and
    `fraudstream status` says stalled (exit 1). No partitions from the group yet after this
    long: the detector logs why that may be."""
    status_interval_ms: int = Field(default=5_000, ge=100)
    """How often, in ms, each detector publishes its health to `<group>.status`."""
    max_buffered_records: int = Field(default=50_000, ge=1)
    """Records the keyed stages of one process may buffer while waiting for upstream marks
    (those forwarded to them in the open transaction count too); past it, the input
    partitions that are ahead are paused until it halves, and meanwhile each transaction
    commits once it has read a quarter of this many records, so the input left reading adds
    no more than that before the stages see it. A soft bound: the buffers peaked at 1.5 to 1.7
    times it in the runs of docs/performance.md."""
    max_buffered_bytes: int = Field(default=128 * 1024 * 1024, ge=1)
    """Bytes the keyed stages of one process may buffer while waiting for upstream marks;
    past it, the input partitions that are ahead are paused until it halves."""
    snapshot_interval_ms: int = Field(default=30_000, ge=0)
    """How often, in ms, local state is snapshotted, right after a commit (0: never): a
    restart loads one and reads only the changelog after it."""
    state_dir: str = ".fraudstream/state"
    """Directory of the local state snapshots."""
    lock_dir: str | None = None
    """Directory of the lock files that keep one detector per group and instance, and one
    `run`, per machine; unset: `<tmp>/fraudstream-locks`."""
    startup_timeout_ms: int = Field(default=60_000, ge=0)
    """How long, in ms, a starting detector waits for the broker and its topics' partitions
    before giving up (it says what it waits for)."""
    model_threads: int = Field(default=1, ge=1, le=256)
    """Threads of the native pools (OpenMP, BLAS, via threadpoolctl) per detector, `train` or
    `backtest` process: one, so that N processes on N cores do not fight over them."""
    fault_abort_rate: float = Field(default=0.0, ge=0, le=1)
    """Fault tests only: the share of transactions the detector aborts on purpose."""
    fault_commit_timeout_rate: float = Field(default=0.0, ge=0, le=1)
    """Fault tests only: the share of commits made to "time out" past their retries (having
    committed or not)."""
    fault_fatal_every: int = Field(default=0, ge=0)
    """Fault tests only: every Nth commit is preceded by a fatal producer error (the producer
    is replaced and the work since the last commit redone) (0: never)."""
    fault_injection_seed: int | None = None
    """Fault tests only: the seed of the fault draws, to replay a failing run; unset: random,
    and logged."""
    fault_crash_at_batch: int = Field(default=0, ge=0)
    """Fault tests only: raise in the Nth batch read, as a bug would (0: never)."""
    fault_snapshot_write_delay_ms: int = Field(default=0, ge=0)
    """Fault tests only: pause this many ms halfway through writing each state snapshot."""
    fault_drop_partition_eof: bool = False
    """Fault tests only: ignore the consumer's end-of-partition events, as if librdkafka never
    sent them (an input then goes idle by its position and high watermark alone)."""

    dashboard_host: str = "127.0.0.1"
    """Address the dashboard listens on."""
    dashboard_port: int = Field(default=5000, ge=0, le=65535)
    """Port the dashboard listens on (0: any free port)."""
    dashboard_history: int = Field(default=200, ge=1, le=10_000)
    """Rows kept on the dashboard page and sent to a new browser."""
    dashboard_token: SecretStr | None = None
    """When set, the dashboard's `/` and `/stream` require it (`?token=` or
    `Authorization: Bearer`); a secret, never logged."""

    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the Prometheus metrics of `detect` and `alerts` at `/metrics` (unset: none),
    and of `detect`'s readiness at `/readyz`; `detect --workers N` gives worker i the port
    + i."""
    metrics_host: str = "127.0.0.1"
    """Address the Prometheus metrics endpoint listens on."""

    alerts_group: str = "fraudstream-alerts"
    """The consumer group of `fraudstream alerts`."""
    alert_group_window: float = Field(default=60.0, ge=0, le=86_400)
    """Fraud on one account within this many seconds is one alert."""
    alert_rate_limit: int = Field(default=30, ge=1, le=100_000)
    """Alerts a minute per sink, at most; past it, summaries."""
    alert_webhook_url: str | None = None
    """Alert sink: an HTTP POST of each alert as JSON to this URL (unset: none)."""
    alert_slack_webhook_url: SecretStr | None = None
    """Alert sink: a Slack incoming-webhook URL (unset: none); the URL is the credential, a
    secret, never logged."""
    alert_smtp_url: SecretStr | None = None
    """Alert sink: email through `smtp://user:pass@host:port` or `smtps://...` (unset: none;
    needs `ALERT_EMAIL_FROM` and `ALERT_EMAIL_TO`); a secret, never logged."""
    alert_email_from: str | None = None
    """Sender address of the alert emails."""
    alert_email_to: str | None = None
    """Recipients of the alert emails, comma-separated."""
    alert_dashboard_url: str | None = None
    """The page the Slack and email alerts link to; unset:
    `http://DASHBOARD_HOST:DASHBOARD_PORT`."""

    @field_validator(
        "kafka_broker_url",
        "transactions_topic",
        "legit_topic",
        "fraud_topic",
        "dlq_topic",
        "labels_topic",
    )
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("kafka_broker_url")
    @classmethod
    def _ports(cls, value: str) -> str:
        # librdkafka would take port 99999 as 34463 (modulo 65536) without a word
        for server in value.split(","):
            try:
                port = urlsplit("//" + server.strip().split("://")[-1]).port
            except ValueError as exc:
                raise ValueError(
                    f"{server.strip()!r}: {exc}; write host:port, e.g. localhost:9092"
                ) from None
            if port == 0:
                raise ValueError(
                    f"{server.strip()!r}: port 0; write host:port, e.g. localhost:9092"
                )
        return value

    @property
    def output_topics(self) -> tuple[str, str, str]:
        return (self.legit_topic, self.fraud_topic, self.dlq_topic)

    @property
    def all_topics(self) -> tuple[str, ...]:
        return (self.transactions_topic, *self.output_topics, self.labels_topic)


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings`; flags given as overrides win over the environment and `.env`.

    `_env_file` (default `.env`; None for none) is also where `KAFKA_<NAME>` variables are
    checked, besides the environment."""
    given = {k: v for k, v in overrides.items() if v is not None or k == "_env_file"}
    env_file = given.get("_env_file", ".env")
    if problems := _env_file_problems(env_file):  # (unreadable, it would stop what follows)
        raise ConfigError(f"{env_file} cannot be used — " + "; ".join(problems))
    problems = kafka_variable_problems(_kafka_environment(env_file))
    settings = None
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            secret = any(w in key for w in ("TOKEN", "PASSWORD", "SECRET", "KEY"))
            shown = "***" if secret else repr(err.get("input"))
            problems.append(f"{key}: {err['msg']} (got {shown})")
    if problems or settings is None:
        raise ConfigError(
            "invalid configuration — fix these settings in the environment, .env or flags:\n  "
            + "\n  ".join(problems)
        ) from None
    return settings


def _env_file_problems(env_file: str | Path | None) -> list[str]:
    """What makes the env file unusable: not UTF-8, or lines that are not NAME=value (which
    python-dotenv skips, with a warning each time it reads the file, so a setting there would
    be ignored). The lines are named by number only: one may hold a secret."""
    if env_file is None or not Path(env_file).is_file():
        return []
    try:
        text = Path(env_file).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [not_utf8(exc)]
    except OSError as exc:
        return [f"cannot read it ({exc.strerror or exc})"]
    bad = [b.original.line for b in parse_stream(io.StringIO(text)) if b.error]
    if not bad:
        return []
    lines = ", ".join(map(str, bad))
    return [f"line{'s' if len(bad) > 1 else ''} {lines}: not NAME=value (fix or remove)"]


def _kafka_environment(env_file: str | Path | None) -> dict[str, str]:
    """`KAFKA_*` variables from the env file, then the environment (which wins), as the
    Kafka clients read them."""
    found: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        found.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    found.update(os.environ)
    return {k: v for k, v in found.items() if k.startswith("KAFKA_")}


# Variables of Kafka's own scripts and images (the JVM's, not a client's): neither passed to
# librdkafka nor an error, so a machine with a Kafka installation keeps working.
_KAFKA_TOOL_VARIABLES = frozenset(
    {"KAFKA_HOME", "KAFKA_DEBUG", "KAFKA_LOG_DIR", "KAFKA_CLUSTER_ID", "KAFKA_VERSION"}
)


def is_kafka_tool_variable(var: str) -> bool:
    """KAFKA_HOME, KAFKA_OPTS, KAFKA_HEAP_OPTS, …: for Kafka's scripts, not for clients."""
    return var in _KAFKA_TOOL_VARIABLES or var.endswith("_OPTS") or var.startswith("KAFKA_CFG_")


def _env_names() -> list[str]:
    return [name.upper() for name in Settings.model_fields]


def kafka_variable_problems(environ: Mapping[str, str]) -> list[str]:
    """What is wrong with the `KAFKA_<NAME>` variables in `environ`, one line each.

    Besides the settings above (`KAFKA_BROKER_URL`), a `KAFKA_<NAME>` variable is passed to
    librdkafka as `<name>` with dots (`KAFKA_SECURITY_PROTOCOL` -> `security.protocol`). A name
    librdkafka does not have is a mistake either way: named with the nearest setting when it
    looks like a typo of one, else named alone (the client would refuse it later). Values
    are never shown (they may be secrets)."""
    names = _env_names()
    problems = []
    props: dict[str, str] = {}  # the librdkafka settings given, for the check across them
    for var, value in sorted(environ.items()):
        if not var.startswith("KAFKA_") or var in names or not value:
            continue
        if is_kafka_tool_variable(var):
            continue
        prop = var[6:].lower().replace("_", ".")
        props[prop] = value
        verdict = _librdkafka_verdict(prop, value)
        if verdict == "unknown":
            near = difflib.get_close_matches(var, names, n=1, cutoff=0.75)
            if near:
                problems.append(
                    f"{var}: not a setting — did you mean {near[0]}? (rename it; librdkafka "
                    f"has no setting {prop!r} either)"
                )
            else:
                problems.append(
                    f"{var}: librdkafka has no setting {prop!r} (KAFKA_<NAME> variables are "
                    "passed to it as <name> with dots, e.g. KAFKA_SECURITY_PROTOCOL -> "
                    "security.protocol) — correct the name or unset the variable"
                )
        elif verdict == "invalid":
            problems.append(
                f"{var}: librdkafka refuses this value for {prop!r} — see its CONFIGURATION.md"
            )
    conflict = group_protocol_problem(props)
    return problems + ([conflict] if conflict else [])


# librdkafka refuses these with group.protocol=consumer; the variables that set them
_CLASSIC_GROUP_ONLY = {
    "group.protocol.type": "KAFKA_GROUP_PROTOCOL_TYPE",
    "heartbeat.interval.ms": "KAFKA_HEARTBEAT_INTERVAL_MS",
    "partition.assignment.strategy": "KAFKA_PARTITION_ASSIGNMENT_STRATEGY",
    "session.timeout.ms": "KAFKA_SESSION_TIMEOUT_MS",
}


def consumer_protocol(config: Mapping[str, Any]) -> bool:
    """Whether a librdkafka configuration asks for Kafka's new group protocol (KIP-848,
    `KAFKA_GROUP_PROTOCOL=consumer`, brokers from 4.0) instead of the classic one."""
    return str(config.get("group.protocol", "classic")).lower() == "consumer"


def group_protocol_problem(config: Mapping[str, Any]) -> str | None:
    """What is wrong with a librdkafka configuration that asks for Kafka's new group protocol
    (KIP-848, `group.protocol=consumer`) and also sets what only the classic one has."""
    if not consumer_protocol(config):
        return None
    refused = sorted(_CLASSIC_GROUP_ONLY.keys() & config.keys())
    if not refused:
        return None
    return (
        f"{', '.join(_CLASSIC_GROUP_ONLY[k] for k in refused)}: not used with "
        "KAFKA_GROUP_PROTOCOL=consumer, where the broker sets the session and heartbeat "
        "(group.consumer.session.timeout.ms, group.consumer.heartbeat.interval.ms) and "
        "KAFKA_GROUP_REMOTE_ASSIGNOR picks the assignor — unset them, or set "
        "KAFKA_GROUP_PROTOCOL=classic"
    )


_SENTINEL = "fraudstream.no.such.setting"


def _librdkafka_verdict(prop: str, value: str) -> str:
    """'known', 'unknown' or 'invalid' (a known setting with a value librdkafka refuses).

    Asks librdkafka itself, without creating a client: the configuration is applied in order
    and a final setting that cannot exist fails it before any client starts."""
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({prop: value, _SENTINEL: "x"})
    except KafkaException as exc:
        message = str(exc.args[0].str() if exc.args else exc)
        if f'property: "{prop}"' in message:
            return "unknown"
        if f'property "{prop}"' in message:
            return "invalid"
        return "known"
    except Exception:  # anything else: leave it to the client, which reports it in full
        return "known"
    return "known"  # created without complaint (cannot happen with the sentinel)
