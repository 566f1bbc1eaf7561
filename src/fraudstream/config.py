"""Settings, read once from flags, the environment or a `.env` file.

Names are the tutorials' (`KAFKA_BROKER_URL`, `TRANSACTIONS_TOPIC`, ...). A bad value fails at
start with a message naming the key::

    settings = load_settings(transactions_per_second=500)
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fraudstream.errors import ConfigError

__all__ = ["Settings", "load_settings"]


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
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    commit_interval_ms: int = Field(default=100, ge=1)
    commit_records: int = Field(default=20_000, ge=1)
    # A commit still unfinished after this long is treated as fatal: the process exits so a
    # restart resumes from the last commit (librdkafka can block past its own timeout when
    # the coordinator moves, issues 5456 and 5511).
    commit_stuck_timeout_ms: int = Field(default=60_000, ge=1000)
    # An input partition read to its end and silent this long stops holding back the stages
    # keyed by payee or merchant (they wait for every partition to pass a time first).
    partition_idle_ms: int = Field(default=1000, ge=0)
    # How long a starting detector waits for the broker (and its topics) before giving up.
    startup_timeout_ms: int = Field(default=60_000, ge=0)
    # Fault tests only: raise in the Nth batch read (0: never), as a bug would.
    fault_crash_at_batch: int = Field(default=0, ge=0)

    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=5000, ge=0, le=65535)
    dashboard_history: int = Field(default=200, ge=1, le=10_000)
    dashboard_token: SecretStr | None = None  # when set, the page and stream require it

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
    """Build `Settings`; flags given as overrides win over the environment and `.env`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            secret = any(w in key for w in ("TOKEN", "PASSWORD", "SECRET", "KEY"))
            shown = "***" if secret else repr(err.get("input"))
            problems.append(f"{key}: {err['msg']} (got {shown})")
        raise ConfigError(
            "invalid configuration — fix these settings in the environment, .env or flags:\n  "
            + "\n  ".join(problems)
        ) from None
