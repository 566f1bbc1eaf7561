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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fraudstream.errors import ConfigError

__all__ = ["Settings", "is_kafka_tool_variable", "kafka_variable_problems", "load_settings"]


class Settings(BaseSettings):
    """Everything configurable, with the tutorials' environment names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    kafka_broker_url: str = "localhost:9092"
    transactions_topic: str = "queueing.transactions"
    legit_topic: str = "streaming.transactions.legit"
    fraud_topic: str = "streaming.transactions.fraud"
    dlq_topic: str = "streaming.transactions.dlq"
    labels_topic: str = "streaming.transactions.labels"
    rules_file: str | None = None  # None: the shipped rules/default.yaml
    transactions_per_second: float = Field(default=1000.0, gt=0)
    topic_partitions: int = Field(default=6, ge=1, le=10_000)
    topic_replication_factor: int = Field(default=1, ge=1)

    detector_group: str = "fraudstream-detector"
    detector_instance: str = "0"
    # Static membership (Kafka's group.instance.id = <group>-<instance>): a restarted instance
    # gets its partitions back at once instead of after the dead one's session timeout; a
    # stopped one keeps them until its session times out (for detectors run by a supervisor).
    detector_static_membership: bool = False
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    commit_interval_ms: int = Field(default=50, ge=1)
    commit_records: int = Field(default=20_000, ge=1)
    # A commit still unfinished after this long is treated as fatal: the process exits so a
    # restart resumes from the last commit (librdkafka can block past its own timeout when
    # the coordinator moves, issues 5456 and 5511).
    commit_stuck_timeout_ms: int = Field(default=60_000, ge=1000)
    # An input partition read to its end and silent this long stops holding back the stages
    # keyed by payee or merchant (they wait for every partition to pass a time first).
    partition_idle_ms: int = Field(default=1000, ge=0)
    # An event time further ahead than this of the wall clock goes to the dead-letter topic
    # (event_time_skew); further ahead of its partition's stream time, it is decided at the
    # stream's time and flagged, so one record cannot hold the stages back.
    max_event_time_skew_ms: int = Field(default=3_600_000, ge=0)
    # Input pending and no decision committed for this long: the detector logs what it waits
    # for (stage, partition, upstream mark, records buffered); `fraudstream status` says stalled.
    stall_warning_ms: int = Field(default=30_000, ge=1000)
    # How often each detector publishes its health to <group>.status.
    status_interval_ms: int = Field(default=5_000, ge=100)
    # What the keyed stages of one process may buffer (records waiting for upstream marks):
    # past either bound the input partitions that are ahead are paused until it halves.
    max_buffered_records: int = Field(default=50_000, ge=1)
    max_buffered_bytes: int = Field(default=128 * 1024 * 1024, ge=1)
    # Local state snapshots (restart from one plus the changelog's tail): how often, right
    # after a commit (0: never), and where.
    snapshot_interval_ms: int = Field(default=30_000, ge=0)
    state_dir: str = ".fraudstream/state"
    # Where the lock files that keep one detector per group and instance (and one `run`) on
    # this machine are kept (default: <tmp>/fraudstream-locks).
    lock_dir: str | None = None
    # How long a starting detector waits for the broker (and its topics) before giving up.
    startup_timeout_ms: int = Field(default=60_000, ge=0)
    # Threads of the native pools (OpenMP, BLAS) in a detector, `train` or `backtest`: one by
    # default, so that N processes on N cores do not fight over them (scoring is compiled and
    # runs in the calling thread anyway).
    model_threads: int = Field(default=1, ge=1, le=256)
    # Fault tests only: abort about this share of transactions on purpose; make this share of
    # commits "time out" past their retries (having committed or not); the seed of those
    # draws (unset: at random, and logged), to replay a failing run.
    fault_abort_rate: float = Field(default=0.0, ge=0, le=1)
    fault_commit_timeout_rate: float = Field(default=0.0, ge=0, le=1)
    fault_injection_seed: int | None = None
    # Fault tests only: raise in the Nth batch read (0: never), as a bug would.
    fault_crash_at_batch: int = Field(default=0, ge=0)
    # Fault tests only: pause this long halfway through writing each state snapshot.
    fault_snapshot_write_delay_ms: int = Field(default=0, ge=0)

    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=5000, ge=0, le=65535)
    dashboard_history: int = Field(default=200, ge=1, le=10_000)
    dashboard_token: SecretStr | None = None  # when set, the page and stream require it

    # Prometheus metrics of `detect` and `alerts` at http://METRICS_HOST:METRICS_PORT/metrics
    # (unset: none). Two processes on one machine need two ports.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    # `fraudstream alerts`: its consumer group; fraud on one account within this many
    # seconds is one alert; at most this many alerts a minute per sink (past it, summaries);
    # the sinks (the log always; each of these when set); the page alerts link to.
    alerts_group: str = "fraudstream-alerts"
    alert_group_window: float = Field(default=60.0, ge=0, le=86_400)
    alert_rate_limit: int = Field(default=30, ge=1, le=100_000)
    alert_webhook_url: str | None = None
    alert_slack_webhook_url: SecretStr | None = None  # the URL is the credential
    alert_smtp_url: SecretStr | None = None  # smtp://user:pass@host:port or smtps://...
    alert_email_from: str | None = None
    alert_email_to: str | None = None  # comma-separated
    alert_dashboard_url: str | None = None  # default http://DASHBOARD_HOST:DASHBOARD_PORT

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
    for var, value in sorted(environ.items()):
        if not var.startswith("KAFKA_") or var in names or not value:
            continue
        if is_kafka_tool_variable(var):
            continue
        prop = var[6:].lower().replace("_", ".")
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
    return problems


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
