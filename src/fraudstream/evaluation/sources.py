"""Recorded history for backtests, training and evaluation: files (JSON lines, CSV, Parquet)
or Kafka topics, read back into transactions, labels and decisions.

CSV and Parquet columns are mapped to the transaction schema by name; `--columns` renames
(`id=tx_id,source=from_account,timestamp=ts`). Timestamps may be epoch milliseconds or
RFC 3339 text.
"""

from __future__ import annotations

import contextlib
import csv
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from fraudstream.config import Settings
from fraudstream.detection import Label
from fraudstream.errors import FraudstreamError, TopicNotFoundError
from fraudstream.schema import (
    InvalidTransaction,
    Transaction,
    complete_label,
    decode_label,
    decode_transaction,
    event_time_ms,
)
from fraudstream.stream import read_topic

__all__ = ["iter_records", "read_decisions", "read_labels", "read_transactions"]

_NUMERIC = {"amount", "lat", "lon"}
# A source with one of these endings, or a '/' (never in a topic name), is a file.
_FILE_SUFFIXES = {".jsonl", ".json", ".ndjson", ".txt", ".csv", ".parquet"}
_FORMATS = "a .jsonl, .csv or .parquet file, or a topic"


def iter_records(
    source: str, settings: Settings | None, columns: dict[str, str] | None = None
) -> Iterator[tuple[bytes | None, str, int, int, int]]:
    """(value, topic, partition, offset, record time) from a file path or a topic name."""
    path = Path(source)
    if path.exists():
        suffix = path.suffix.lower()
        try:
            if suffix in (".csv", ".parquet"):
                rows = (_csv_rows if suffix == ".csv" else _parquet_rows)(path, columns)
                for i, row in enumerate(rows):
                    yield msgspec.json.encode(row), path.name, 0, i, 0
            else:
                with open(path, "rb") as f:
                    for i, line in enumerate(f):
                        if line.strip():
                            yield line, path.name, 0, i, 0
        except OSError as exc:
            raise FraudstreamError(
                f"cannot read {source}: {exc.strerror or exc} — give {_FORMATS}"
            ) from None
        return
    if "/" in source or path.suffix.lower() in _FILE_SUFFIXES:
        raise FraudstreamError(f"{source}: no such file — check the path, or give {_FORMATS}")
    if settings is None:
        raise FraudstreamError(f"{source} is not a file (and no Kafka settings to read a topic)")
    try:
        for value, p, off, ts in read_topic(settings, source):
            yield value, source, p, off, ts
    except TopicNotFoundError:
        raise FraudstreamError(
            f"{source} is neither a file nor an existing topic at "
            f"{settings.kafka_broker_url} — give {_FORMATS}"
        ) from None


def _rename(row: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    if columns:
        inverse = {v: k for k, v in columns.items()}
        row = {inverse.get(k, k): v for k, v in row.items()}
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v is None or v == "":
            continue
        if k in _NUMERIC or (k == "timestamp" and isinstance(v, str) and v.isdigit()):
            # not a number: kept as text, so the schema counts the record invalid, as any other
            with contextlib.suppress(ValueError):
                v = float(v) if k in _NUMERIC else int(v)
        out[k] = v
    return out


def _csv_rows(path: Path, columns: dict[str, str] | None) -> Iterator[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as exc:
                raise FraudstreamError(
                    f"{path}, line {reader.line_num + 1}: not UTF-8 CSV ({exc}) — save it as "
                    "UTF-8 CSV with a header row, or give a .jsonl or .parquet file"
                ) from None
            yield _rename(row, columns)


def _parquet_rows(path: Path, columns: dict[str, str] | None) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches()
        for batch in batches:
            for row in batch.to_pylist():
                if hasattr(row.get("timestamp"), "timestamp"):
                    row["timestamp"] = int(row["timestamp"].timestamp() * 1000)
                yield _rename(row, columns)
    except pa.ArrowException as exc:
        raise FraudstreamError(
            f"{path} is not a readable Parquet file ({exc}) — give {_FORMATS}"
        ) from None


def read_transactions(
    source: str, settings: Settings | None = None, columns: dict[str, str] | None = None
) -> tuple[list[Transaction], Counter[str]]:
    """Valid transactions in event-time order (stable), and the invalid records skipped, by
    class (the dead-letter topic's `error.class`)."""
    txs: list[Transaction] = []
    invalid: Counter[str] = Counter()
    for value, topic, p, off, ts in iter_records(source, settings, columns):
        try:
            txs.append(
                decode_transaction(value, topic=topic, partition=p, offset=off, record_ts_ms=ts).tx
            )
        except InvalidTransaction as exc:
            invalid[exc.kind] += 1
    txs.sort(key=lambda t: event_time_ms(t.timestamp))
    return txs, invalid


def complete_labels(
    labels: dict[str, Label], transactions: Sequence[Transaction]
) -> tuple[dict[str, Label], Counter[str]]:
    """Labels with their defaults applied from the transactions they label: known when
    published (`published_ms`, else the transaction's time) unless `known_ms` says, and the
    transaction's payee, merchant and time when the label does not give them. Also returns what
    was skipped or defaulted, by reason: `label_without_transaction` (no such id: nothing to
    learn from it), `known_when_published` (no `known_ms`)."""
    by_id = {t.id: t for t in transactions if t.id is not None}
    out: dict[str, Label] = {}
    counts: Counter[str] = Counter()
    for tx_id, label in labels.items():
        tx = by_id.get(tx_id)
        if tx is None:
            counts["label_without_transaction"] += 1
            continue
        if label.known_ms is None:
            counts["known_when_published"] += 1
        published = label.published_ms if label.published_ms is not None else tx.ts_ms
        out[tx_id] = complete_label(
            label, published_ms=published, target=tx.target, merchant=tx.merchant, tx_ms=tx.ts_ms
        )
    return out, counts


def read_labels(
    source: str, settings: Settings | None = None, columns: dict[str, str] | None = None
) -> dict[str, Label]:
    """Labels by transaction id, as given (`complete_labels` applies the defaults)."""
    out: dict[str, Label] = {}
    for value, topic, p, off, _ in iter_records(source, settings, columns):
        if not value:
            continue
        try:
            raw = msgspec.json.decode(value)
            if not isinstance(raw, dict):
                raise InvalidTransaction("schema", f"a JSON {type(raw).__name__}, not an object")
            flag = raw.get("is_fraud")
            if isinstance(flag, (str, int)) and not isinstance(flag, bool):
                raw["is_fraud"] = str(flag).strip().lower() in ("1", "true", "yes")
            for k in ("known_ms", "published_ms"):  # CSV gives text, JSON may give 1.0
                v = raw.get(k)
                if isinstance(v, float) or (isinstance(v, str) and v.isdigit()):
                    raw[k] = int(v)
            label = decode_label(msgspec.json.encode(raw))
        except (msgspec.MsgspecError, InvalidTransaction) as exc:
            raise FraudstreamError(
                f"{_where(source, topic, p, off)} is not a label ({exc}) — labels are JSON "
                'objects like {"id": "t1", "is_fraud": true}; check --labels'
            ) from None
        out[label.id] = label
    return out


def _where(source: str, topic: str, partition: int, offset: int) -> str:
    """A record's place, as its owner would look for it (a file's line, or a topic's offset)."""
    suffix = Path(source).suffix.lower()
    if not Path(source).exists():
        return f"{topic} partition {partition} offset {offset}"
    if suffix == ".parquet":
        return f"{source}, row {offset + 1}"
    return f"{source}, line {offset + (2 if suffix == '.csv' else 1)}"  # CSV: after its header


def read_decisions(
    sources: Iterable[str], settings: Settings | None = None
) -> dict[str, dict[str, Any]]:
    """Decided transactions (detector output) by id, from topics or JSON-lines files."""
    out: dict[str, dict[str, Any]] = {}
    for source in sources:
        for value, topic, p, off, _ in iter_records(source, settings):
            if value:
                try:
                    record = msgspec.json.decode(value)
                except msgspec.DecodeError as exc:
                    raise FraudstreamError(
                        f"{_where(source, topic, p, off)} is not JSON ({exc}) — --decisions "
                        "takes the detector's output: its topics, or JSON lines read from them"
                    ) from None
                if isinstance(record, dict) and "decision" in record and "id" in record:
                    out[record["id"]] = record
    return out
