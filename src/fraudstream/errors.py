"""One root exception; each subclass says what to do next."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "FraudstreamError",
    "KafkaUnavailableError",
    "PortInUseError",
    "ProcessingError",
    "TopicNotFoundError",
    "not_utf8",
]


class FraudstreamError(Exception):
    """Root of every error fraudstream raises on purpose."""


class ConfigError(FraudstreamError):
    """A setting is missing or invalid; the message names the key."""


class TopicNotFoundError(FraudstreamError):
    """A topic to read does not exist on the broker."""


class PortInUseError(ConfigError):
    """The dashboard's port is taken: `dashboard` could not bind it, or `run` found something
    answering there (and then started nothing)."""

    def __init__(self, port: int, then: str = "") -> None:
        super().__init__(
            f"port {port} is in use — stop what uses it or pass --port N (DASHBOARD_PORT)"
            + (f". {then}" if then else "")
        )
        self.port = port


class BrokerError(FraudstreamError):
    """The local Apache Kafka broker could not be fetched, started or stopped."""


class KafkaUnavailableError(FraudstreamError):
    """No Kafka broker answers at the configured address."""

    def __init__(self, url: str, detail: str = "") -> None:
        hint = (
            f"no Kafka broker answers at {url} — start one with `fraudstream broker start`, "
            "or point KAFKA_BROKER_URL at your cluster"
        )
        super().__init__(f"{hint} ({detail})" if detail else hint)
        self.url = url


class ProcessingError(FraudstreamError):
    """The stream loop hit an error it cannot recover from (fatal or fenced producer)."""


def not_utf8(exc: UnicodeDecodeError) -> str:
    """What to do about a file that is not UTF-8 text (e.g. saved as Latin-1)."""
    bad = exc.object[exc.start : exc.start + 1].hex()
    return f"not UTF-8 text (byte 0x{bad} at offset {exc.start}): save the file as UTF-8"
