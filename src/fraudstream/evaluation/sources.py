"""Recorded history for backtests, training and evaluation: files (JSON lines, CSV, Parquet)
or Kafka topics, read back into transactions, labels and decisions.

CSV and Parquet columns are mapped to the transaction schema by name; `--columns` renames
(`id=tx_id,source=from_account,timestamp=ts`). Timestamps may be epoch milliseconds or
RFC 3339 text.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Consumer, TopicPartition

from fraudstream.config import Settings
from fraudstream.detection import Label
from fraudstream.errors import FraudstreamError
from fraudstream.schema import (
    InvalidTransaction,
    Transaction,
    decode_label,
    decode_transaction,
    event_time_ms,
)
from fraudstream.stream import consumer_config

__all__ = ["iter_records", "read_decisions", "read_labels", "read_transactions"]

_NUMERIC = {"amount", "lat", "lon"}


def _topic_values(settings: Settings, topic: str) -> Iterator[tuple[bytes | None, int, int, int]]:
    """Every committed record of a topic, from the beginning to its end when reading starts."""
    consumer = Consumer(
        consumer_config(
            settings, "fraudstream-reader", group_id=f"fraudstream-reader-{uuid.uuid4()}"
        )
    )
    try:
        md = consumer.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise FraudstreamError(
                f"{topic} is neither a file nor an existing topic at {settings.kafka_broker_url}"
            )
        ends = {}
        for p in md.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, -2) for p in ends])
        idle = 0
        while ends and idle < 3:  # transaction markers keep positions one short: idle ends it
            msgs = consumer.consume(num_messages=10_000, timeout=1.0)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                if msg.error() is not None:
                    continue
                p, off = int(msg.partition() or 0), int(msg.offset() or 0)
                yield msg.value(), p, off, msg.timestamp()[1]
                if p in ends and off + 1 >= ends[p]:
                    del ends[p]
    finally:
        consumer.close()


def iter_records(
    source: str, settings: Settings | None, columns: dict[str, str] | None = None
) -> Iterator[tuple[bytes | None, str, int, int, int]]:
    """(value, topic, partition, offset, record time) from a file path or a topic name."""
    path = Path(source)
    if path.exists():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".parquet"):
            rows = _csv_rows(path, columns) if suffix == ".csv" else _parquet_rows(path, columns)
            for i, row in enumerate(rows):
                yield msgspec.json.encode(row), path.name, 0, i, 0
        else:
            with open(path, "rb") as f:
                for i, line in enumerate(f):
                    if line.strip():
                        yield line, path.name, 0, i, 0
        return
    if settings is None:
        raise FraudstreamError(f"{source} is not a file (and no Kafka settings to read a topic)")
    for value, p, off, ts in _topic_values(settings, source):
        yield value, source, p, off, ts


def _rename(row: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    if columns:
        inverse = {v: k for k, v in columns.items()}
        row = {inverse.get(k, k): v for k, v in row.items()}
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v is None or v == "":
            continue
        if k in _NUMERIC or (k == "timestamp" and isinstance(v, str) and v.isdigit()):
            v = float(v) if k in _NUMERIC else int(v)
        out[k] = v
    return out


def _csv_rows(path: Path, columns: dict[str, str] | None) -> Iterator[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield _rename(row, columns)


def _parquet_rows(path: Path, columns: dict[str, str] | None) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            if hasattr(row.get("timestamp"), "timestamp"):
                row["timestamp"] = int(row["timestamp"].timestamp() * 1000)
            yield _rename(row, columns)


def read_transactions(
    source: str, settings: Settings | None = None, columns: dict[str, str] | None = None
) -> tuple[list[Transaction], int]:
    """Valid transactions in event-time order (stable), and how many records were invalid."""
    txs: list[Transaction] = []
    invalid = 0
    for value, topic, p, off, ts in iter_records(source, settings, columns):
        try:
            txs.append(
                decode_transaction(value, topic=topic, partition=p, offset=off, record_ts_ms=ts).tx
            )
        except InvalidTransaction:
            invalid += 1
    txs.sort(key=lambda t: event_time_ms(t.timestamp))
    return txs, invalid


def read_labels(
    source: str, settings: Settings | None = None, columns: dict[str, str] | None = None
) -> dict[str, Label]:
    """Labels by transaction id. Without `known_ms`, a label counts as known from the start."""
    out: dict[str, Label] = {}
    for value, *_ in iter_records(source, settings, columns):
        if not value:
            continue
        raw = msgspec.json.decode(value)
        if isinstance(raw.get("is_fraud"), (str, int)) and not isinstance(raw["is_fraud"], bool):
            raw["is_fraud"] = str(raw["is_fraud"]).strip().lower() in ("1", "true", "yes")
        if isinstance(raw.get("known_ms"), float):
            raw["known_ms"] = int(raw["known_ms"])
        label = decode_label(msgspec.json.encode(raw))
        out[label.id] = label
    return out


def read_decisions(
    sources: Iterable[str], settings: Settings | None = None
) -> dict[str, dict[str, Any]]:
    """Decided transactions (detector output) by id, from topics or JSON-lines files."""
    out: dict[str, dict[str, Any]] = {}
    for source in sources:
        for value, *_ in iter_records(source, settings):
            if value:
                record = msgspec.json.decode(value)
                if isinstance(record, dict) and "decision" in record and "id" in record:
                    out[record["id"]] = record
    return out
