"""fraudstream: real-time fraud detection on Apache Kafka."""

from fraudstream.config import Settings, load_settings
from fraudstream.errors import (
    BrokerError,
    ConfigError,
    FraudstreamError,
    KafkaUnavailableError,
    ProcessingError,
)
from fraudstream.schema import Decision, InvalidTransaction, Reason, Transaction

__all__ = [
    "BrokerError",
    "ConfigError",
    "Decision",
    "FraudstreamError",
    "InvalidTransaction",
    "KafkaUnavailableError",
    "ProcessingError",
    "Reason",
    "Settings",
    "Transaction",
    "load_settings",
]

__version__ = "0.1.0"
