"""Transaction and decision types, and the JSON codec for both.

A transaction is a JSON object. The tutorials' four-field form
``{"source", "target", "amount", "currency"}`` is valid as it is: a missing ``id`` or
``timestamp`` is derived from where the record sits in Kafka (see `Transaction.complete`).

    tx = decode_transaction(b'{"source":"a","target":"b","amount":12.5,"currency":"EUR"}')
"""

from __future__ import annotations

import math
import operator
import string
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import numpy as np
import pycountry

__all__ = [
    "CURRENCIES",
    "MAX_INPUT_BYTES",
    "MAX_RECORD_BYTES",
    "Decision",
    "Decoded",
    "InvalidTransaction",
    "LabelRecord",
    "Reason",
    "Transaction",
    "appendable",
    "complete_label",
    "decode_label",
    "decode_transaction",
    "decode_transactions",
    "encode_decided",
    "event_time_ms",
]

# ISO 4217 alphabetic codes, from pycountry's copy of the standard.
CURRENCIES: frozenset[str] = frozenset(c.alpha_3 for c in pycountry.currencies)
_TWO_CAPITALS = frozenset(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
# `currency` and `country` are capital letters (three, two): checked in `Transaction.check`,
# not as a msgspec pattern, whose regular expression was half of the input's decoding time
# (benchmarks/decode_input.py); the error is the one the pattern gave.
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]
# Epoch milliseconds, from 2000-01-01 to 2100-01-01: anything else is a unit mistake.
EpochMs = Annotated[int, msgspec.Meta(ge=946_684_800_000, lt=4_102_444_800_000)]

MAX_AMOUNT = 1e12

# The largest record the detector's producer sends (its `message.max.bytes`: the broker's
# must allow it too), and the largest input value it takes: an output is the input's bytes
# with the decision added, a dead letter carries headers, a hop an envelope's fields, so
# an input within a few bytes of the limit could not be written on (the detector stopped at
# it, and at every restart); larger ones are dead-lettered as `too_large`.
MAX_RECORD_BYTES = 4 * 1024 * 1024
MAX_INPUT_BYTES = MAX_RECORD_BYTES - 64 * 1024


class InvalidTransaction(ValueError):
    """The bytes are not a valid transaction; `kind` names the class of problem."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Transaction(msgspec.Struct, frozen=True, omit_defaults=True):
    """One payment. `timestamp` is its event time: RFC 3339 text or epoch milliseconds."""

    source: Text
    target: Text
    amount: float
    currency: str
    id: Text | None = None
    timestamp: EpochMs | datetime | None = None
    channel: Text | None = None
    country: str | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None
    merchant: Text | None = None
    device: Text | None = None
    # Present only to detect inputs that already carry one; never trusted or passed on.
    decision: Any = msgspec.UNSET

    def check(self, *, amount_checked: bool = False) -> None:
        """Rules msgspec constraints cannot express (or not as fast). `amount_checked`: the
        amount is known to pass (`amounts_valid`), so its clauses are skipped."""
        currency = self.currency
        # every ISO code is three capitals: the set lookup spares the character test
        if currency not in CURRENCIES and not _capitals(currency, 3):
            raise InvalidTransaction("schema", _not_capitals("currency", 3))
        country = self.country
        if country is not None and country not in _TWO_CAPITALS:
            raise InvalidTransaction("schema", _not_capitals("country", 2))
        if not amount_checked:
            _check_amount(self.amount)
        if currency not in CURRENCIES:
            raise InvalidTransaction(
                "unknown_currency", f"currency {self.currency!r} is not an ISO 4217 code"
            )
        if (self.lat is None) != (self.lon is None):
            raise InvalidTransaction("invalid_location", "lat and lon must be given together")
        if isinstance(self.timestamp, datetime) and self.timestamp.tzinfo is None:
            raise InvalidTransaction(
                "invalid_timestamp", "timestamp must carry a time zone, e.g. 2026-01-31T12:00:00Z"
            )

    def carries_decision(self) -> bool:
        """Whether the input had a `decision` member of its own (to be overwritten)."""
        return self.decision is not msgspec.UNSET

    @property
    def ts_ms(self) -> int:
        """Event time in epoch milliseconds (after `complete`, never None)."""
        return event_time_ms(self.timestamp)


def _check_amount(amount: float) -> None:
    if not math.isfinite(amount) or amount <= 0:
        raise InvalidTransaction(
            "invalid_amount", f"amount must be positive and finite, got {amount!r}"
        )
    if amount > MAX_AMOUNT:
        raise InvalidTransaction(
            "invalid_amount", f"amount must be at most {MAX_AMOUNT:,.0f}, got {amount!r}"
        )
    cents = amount * 100
    whole = round(cents)
    # (a whole cent at least: 1e-300 is near 0 cents, and no payment)
    if abs(cents - whole) > 1e-6 * max(1.0, cents) or whole < 1:
        raise InvalidTransaction(
            "invalid_amount", f"amount must have at most two decimals, got {amount!r}"
        )


# From this many records a batch's amounts are checked in one numpy pass (`amounts_valid`:
# about 9 µs whatever the count, against about 0.35 µs per amount checked alone)
VECTOR_AMOUNTS = 24


def amounts_valid(amounts: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Where `_check_amount` passes, for many amounts in one pass: the same float operations
    (NaN fails every comparison, infinity is over the maximum; `np.round` rounds half to
    even as `round` does, and a cent count under 1e14 is exact either way)."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaN, and cents past the float range
        cents = amounts * 100
        whole = np.round(cents)
        near = (np.abs(cents - whole) <= 1e-6 * np.maximum(1.0, cents)) & (whole >= 1)
        ok: np.ndarray[Any, Any] = (amounts > 0) & (amounts <= MAX_AMOUNT) & near
    return ok


def _capitals(text: str, n: int) -> bool:
    """`text` is `n` capital letters A to Z."""
    return len(text) == n and text.isascii() and text.isalpha() and text.isupper()


def _not_capitals(field: str, n: int) -> str:
    return f"Expected `str` matching regex '^[A-Z]{{{n}}}$' - at `$.{field}`"


def event_time_ms(ts: int | datetime | None) -> int:
    if ts is None:
        raise ValueError("transaction has no timestamp yet; call complete() first")
    if isinstance(ts, int):
        return ts
    return int(ts.timestamp() * 1000)


class Reason(msgspec.Struct, frozen=True):
    """One rule that fired, and why, in a line a human reads."""

    rule: str
    reason: str


class Decision(msgspec.Struct, frozen=True):
    outcome: Literal["legit", "fraud"]
    score: float
    reasons: list[Reason]
    rules_version: str


class LabelRecord(msgspec.Struct, frozen=True):
    """Ground truth for one transaction, on the labels topic (keyed by transaction id)."""

    id: Text
    is_fraud: bool
    # when the verdict became known (event time); absent: when it was published (live: its
    # published_ms, else the record's time; history: published_ms, else the transaction's)
    known_ms: int | None = None
    scenario: str | None = None
    target: str | None = None
    merchant: str | None = None
    # when the verdict was published, in event time (default: the record's timestamp); it
    # takes its place among the transactions there, and takes effect from known_ms on
    published_ms: int | None = None
    # who gave the verdict, when an analyst did (the dashboard's review queue)
    reviewer: str | None = None
    # when the labelled transaction happened (event time), if the label says; history files
    # fill it from the transaction. The features date a payee's or shop's latest fraud by it
    tx_ms: int | None = None


_label_decoder = msgspec.json.Decoder(LabelRecord)


def complete_label(
    label: LabelRecord,
    *,
    published_ms: int,
    target: str | None = None,
    merchant: str | None = None,
    tx_ms: int | None = None,
) -> LabelRecord:
    """The label with its defaults applied: known when published (when `known_ms` is absent),
    and the payee, merchant and time of its transaction when it does not give them."""
    return msgspec.structs.replace(
        label,
        known_ms=published_ms if label.known_ms is None else label.known_ms,
        target=label.target if label.target is not None else target,
        merchant=label.merchant if label.merchant is not None else merchant,
        tx_ms=label.tx_ms if label.tx_ms is not None else tx_ms,
    )


def decode_label(value: bytes | None) -> LabelRecord:
    if value is None:
        raise InvalidTransaction("null_value", "label record has no value")
    try:
        return _label_decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise InvalidTransaction("schema", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _undecodable(value, exc) from None


def _undecodable(value: bytes, exc: Exception) -> InvalidTransaction:
    """`not_utf8` when the bytes are not UTF-8 text at all, else `not_json` (msgspec reports
    both as malformed JSON)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InvalidTransaction("not_utf8", f"not UTF-8 text: {bad}")
    return InvalidTransaction("not_json", str(exc))


_decoder = msgspec.json.Decoder(Transaction)
_encoder = msgspec.json.Encoder()


class Decoded(NamedTuple):
    """A valid transaction, and the JSON members (``b'"id":…,'``) derived for it, if any."""

    tx: Transaction
    added: bytes


def decode_transaction(
    value: bytes | None,
    *,
    topic: str = "",
    partition: int = 0,
    offset: int = 0,
    record_ts_ms: int = 0,
) -> Decoded:
    """Decode and validate one record value; fill a missing id or timestamp from the record.

    Raises `InvalidTransaction` for anything that is not a valid transaction.
    """
    tx = _parse(value)
    tx.check()
    return _complete(tx, topic, partition, offset, record_ts_ms)


def decode_transactions(
    values: Sequence[bytes | None],
    *,
    topic: str,
    partition: int,
    offsets: Sequence[int],
    record_ts_ms: Sequence[int],
) -> list[Decoded | InvalidTransaction]:
    """`decode_transaction` of each record of one partition: what it returns, or the
    `InvalidTransaction` it raises, in order. The amounts are checked in one vectorised pass
    (`amounts_valid`); a record whose amount fails is checked whole, as alone, so each error
    is the one `decode_transaction` gives (a property test holds them equal)."""
    out: list[Any] = []
    txs: list[Transaction] = []
    at: list[int] = []
    for value in values:
        try:
            tx = _parse(value)
        except InvalidTransaction as exc:
            out.append(_kept(exc))
            continue
        at.append(len(out))
        out.append(tx)
        txs.append(tx)
    if not txs:
        return out
    if len(txs) >= VECTOR_AMOUNTS:
        amounts = np.fromiter(map(operator.attrgetter("amount"), txs), np.float64, len(txs))
        fines = amounts_valid(amounts).tolist()
    else:  # a few: each checked as alone (`check` does it), cheaper than numpy's passes
        fines = [False] * len(txs)
    made = tuple.__new__  # a `Decoded` without its Python-level constructor
    for i, tx, fine in zip(at, txs, fines, strict=True):
        try:
            tx.check(amount_checked=fine)
        except InvalidTransaction as exc:
            out[i] = _kept(exc)
            continue
        if tx.id is not None and tx.timestamp is not None:  # nearly always: nothing to fill
            out[i] = made(Decoded, (tx, b""))
        else:
            out[i] = _complete(tx, topic, partition, offsets[i], record_ts_ms[i])
    return out


def _kept(exc: InvalidTransaction) -> InvalidTransaction:
    """`exc`, to keep among a batch's results: without its traceback or the error it replaced
    (whose traceback), which hold the decoding frame, so the batch would wait in a reference
    cycle for the garbage collector instead of going when dropped."""
    exc.__traceback__ = None
    exc.__context__ = None
    return exc


def _parse(value: bytes | None) -> Transaction:
    if value is None:
        raise InvalidTransaction("null_value", "record has no value (null / tombstone)")
    if len(value) > MAX_INPUT_BYTES:
        raise InvalidTransaction(
            "too_large",
            f"record of {len(value):,} bytes: the detector takes at most {MAX_INPUT_BYTES:,} "
            f"(its producer's message.max.bytes, {MAX_RECORD_BYTES:,}, less room for the "
            "decision it adds); shorten the record",
        )
    try:
        return _decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise InvalidTransaction("schema", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _undecodable(value, exc) from None


def _complete(
    tx: Transaction, topic: str, partition: int, offset: int, record_ts_ms: int
) -> Decoded:
    """A missing id or timestamp filled from where the record sits, and the JSON members
    derived (appended to the output)."""
    if tx.id is not None and tx.timestamp is not None:
        return Decoded(tx, b"")
    added = b""
    tx_id, ts = tx.id, tx.timestamp
    if tx_id is None:
        tx_id = f"{topic}-{partition}-{offset}"
        added += b'"id":' + _encoder.encode(tx_id) + b","
    if ts is None:
        ts = _record_time(record_ts_ms)
        added += b'"timestamp":' + _encoder.encode(ts) + b","
    return Decoded(msgspec.structs.replace(tx, id=tx_id, timestamp=ts), added)


def _record_time(record_ts_ms: int) -> int:
    if record_ts_ms <= 0:  # a record without a timestamp: keep event time well defined
        return int(datetime.now(UTC).timestamp() * 1000)
    return record_ts_ms


def appendable(raw: bytes, tx: Transaction) -> bool:
    """Whether the output can be the input's bytes with members appended: it is a plain
    object without a `decision` of its own, nor an `id` or `timestamp` given as null, whose
    derived values would be appended beside them (nearly always)."""
    return (
        not tx.carries_decision()
        and (raw.endswith(b"}") or raw.rstrip().endswith(b"}"))
        and not (b"null" in raw and _null_id_or_time(raw))
    )


def _null_id_or_time(raw: bytes) -> bool:
    """Whether the JSON object `raw` has `id` or `timestamp` as null (a rare input)."""
    obj = msgspec.json.decode(raw)
    return isinstance(obj, dict) and any(
        name in obj and obj[name] is None for name in ("id", "timestamp")
    )


def encode_decided(
    raw: bytes, added: bytes, decision: Decision, tx: Transaction | None = None
) -> bytes:
    """The output value: the input object, all its fields at top level, plus `decision`.

    The input is validated JSON, so the fast path appends to its bytes instead of re-encoding
    it: unknown fields pass through untouched. Derived `id`/`timestamp` (`added`) are appended
    too. `tx`, the decoded input, is needed only when the input is not `appendable`; pass None
    once that was checked.
    """
    if tx is not None and not appendable(raw, tx):
        # Rare: the input carries its own "decision" (overwritten) — rebuild the object.
        obj = msgspec.json.decode(raw)
        obj["id"], obj["timestamp"] = tx.id, tx.timestamp
        obj["decision"] = decision
        return _encoder.encode(obj)
    inner = raw.rstrip()[:-1].rstrip()
    global _last_decision
    last = _last_decision  # one read: another thread may replace it meanwhile
    if last[0] is not decision:  # most records share one decision: nothing fired
        last = _last_decision = (decision, b'"decision":' + _encoder.encode(decision) + b"}")
    if inner.endswith(b"{"):  # an empty object
        return b"".join((inner, added, last[1]))
    return b"".join((inner, b",", added, last[1]))


# The last decision encoded, as the output's last member and closing brace (held, so `is`
# cannot meet another object at its address). Decisions are frozen and never changed once made.
_last_decision: tuple[Decision | None, bytes] = (None, b"")
