from __future__ import annotations

import gc
import json
import re
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudstream.schema import (
    VECTOR_AMOUNTS,
    Decision,
    InvalidTransaction,
    Reason,
    Transaction,
    decode_transaction,
    decode_transactions,
    encode_decided,
)

FOUR = b'{"source":"Jpe2zq1QDYTn","target":"lLbLnl0FSr7T","amount":254.83,"currency":"EUR"}'
DECISION = Decision("fraud", 1.0, [Reason("amount_ge_900", "amount 950.0 >= 900")], "v1")


def test_tutorial_four_field_form_is_valid_and_gets_id_and_time_from_the_record() -> None:
    decoded = decode_transaction(
        FOUR, topic="queueing.transactions", partition=2, offset=41, record_ts_ms=1_790_000_000_000
    )
    tx = decoded.tx
    assert (tx.source, tx.target, tx.amount, tx.currency) == (
        "Jpe2zq1QDYTn",
        "lLbLnl0FSr7T",
        254.83,
        "EUR",
    )
    assert tx.id == "queueing.transactions-2-41"
    assert tx.ts_ms == 1_790_000_000_000


def test_given_id_and_rfc3339_timestamp_are_kept() -> None:
    raw = (
        b'{"id":"tx-1","timestamp":"2026-11-24T10:00:00Z","source":"a","target":"b",'
        b'"amount":10,"currency":"USD","country":"FR","lat":48.85,"lon":2.35,'
        b'"merchant":"m1","device":"d1","channel":"card"}'
    )
    decoded = decode_transaction(raw, topic="t", offset=5, record_ts_ms=1)
    assert decoded.added == b""
    assert decoded.tx.id == "tx-1"
    assert decoded.tx.ts_ms == int(datetime(2026, 11, 24, 10, tzinfo=UTC).timestamp() * 1000)
    assert decoded.tx.country == "FR"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null_value"),
        (b"", "not_json"),
        (b"not json", "not_json"),
        (b"\xff\xfe\xfd", "not_utf8"),  # not text at all (the README's class for it)
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"source":"\xff","target":"b","amount":1,"currency":"EUR"}', "not_utf8"),
        (b"[1, 2]", "schema"),
        (b'{"target":"b","amount":1,"currency":"EUR"}', "schema"),
        (b'{"source":"a","target":"b","amount":"12","currency":"EUR"}', "schema"),
        (b'{"source":"","target":"b","amount":1,"currency":"EUR"}', "schema"),
        (b'{"source":"a","target":"b","amount":-5,"currency":"EUR"}', "invalid_amount"),
        (b'{"source":"a","target":"b","amount":0,"currency":"EUR"}', "invalid_amount"),
        (b'{"source":"a","target":"b","amount":1.005,"currency":"EUR"}', "invalid_amount"),
        (b'{"source":"a","target":"b","amount":1e-300,"currency":"EUR"}', "invalid_amount"),
        (b'{"source":"a","target":"b","amount":0.000000001,"currency":"EUR"}', "invalid_amount"),
        (b'{"source":"a","target":"b","amount":NaN,"currency":"EUR"}', "not_json"),
        (b'{"source":"a","target":"b","amount":1e999,"currency":"EUR"}', "schema"),
        (b'{"source":"a","target":"b","amount":1,"currency":"eur"}', "schema"),
        (b'{"source":"a","target":"b","amount":1,"currency":"ABC"}', "unknown_currency"),
        (b'{"source":"a","target":"b","amount":1,"currency":"EUR","lat":10}', "invalid_location"),
        (
            b'{"source":"a","target":"b","amount":1,"currency":"EUR","timestamp":"2026-01-01T00:00:00"}',
            "invalid_timestamp",
        ),
        (
            b'{"source":"a","target":"b","amount":1,"currency":"EUR","timestamp":1700000000}',
            "schema",
        ),
    ],
)
def test_invalid_input_is_rejected_with_its_kind(value: bytes | None, kind: str) -> None:
    with pytest.raises(InvalidTransaction) as info:
        decode_transaction(value)
    assert info.value.kind == kind
    assert str(info.value)


def test_an_amount_over_the_maximum_says_so() -> None:
    """1e23 is positive and finite: the message names the limit it passes."""
    with pytest.raises(InvalidTransaction, match="at most 1,000,000,000,000, got 1e"):
        decode_transaction(b'{"source":"a","target":"b","amount":1e23,"currency":"EUR"}')


def test_output_keeps_every_input_field_at_top_level_and_adds_the_decision() -> None:
    raw = FOUR[:-1] + b', "extra": {"k": [1, 2]}}\n'
    decoded = decode_transaction(
        raw, topic="q", partition=0, offset=7, record_ts_ms=1_790_000_000_123
    )
    out = json.loads(encode_decided(raw, decoded.added, DECISION, decoded.tx))
    assert out["source"] == "Jpe2zq1QDYTn" and out["amount"] == 254.83
    assert out["extra"] == {"k": [1, 2]}
    assert out["id"] == "q-0-7" and out["timestamp"] == 1_790_000_000_123
    assert out["decision"] == {
        "outcome": "fraud",
        "score": 1.0,
        "reasons": [{"rule": "amount_ge_900", "reason": "amount 950.0 >= 900"}],
        "rules_version": "v1",
    }


def test_a_decision_carried_by_the_input_is_replaced_not_duplicated() -> None:
    raw = (
        b'{"id":"x","timestamp":1790000000000,"source":"a","target":"b","amount":5,'
        b'"currency":"EUR","decision":{"outcome":"legit"}}'
    )
    decoded = decode_transaction(raw)
    out = encode_decided(raw, decoded.added, DECISION, decoded.tx)
    assert out.count(b'"decision"') == 1
    assert json.loads(out)["decision"]["outcome"] == "fraud"


@pytest.mark.parametrize(
    "given",
    [b'"id":null,', b'"timestamp":null,', b'"id" : null , "timestamp":null,', b'"memo":null,'],
)
def test_an_id_or_time_given_as_null_is_replaced_not_duplicated(given: bytes) -> None:
    """`"id":null` came out as `{"id":null,…,"id":"q-0-7",…}`: a reader keeping the first
    member got null. The derived id and time now replace the null ones."""
    raw = b"{" + given + b'"source":"a","target":"b","amount":5,"currency":"EUR","note":"null"}'
    decoded = decode_transaction(
        raw, topic="q", partition=0, offset=7, record_ts_ms=1_790_000_000_123
    )
    out = encode_decided(raw, decoded.added, DECISION, decoded.tx)
    pairs = json.loads(out, object_pairs_hook=lambda kv: kv)
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), out
    obj = json.loads(out)
    assert obj["id"] == "q-0-7" and obj["timestamp"] == 1_790_000_000_123
    assert obj["note"] == "null" and obj["decision"]["outcome"] == "fraud"


_spaces = st.sampled_from([b"", b" ", b"\n", b" \t\r\n "])


@given(
    members=st.dictionaries(
        st.text(max_size=8), st.integers() | st.text(max_size=8) | st.none(), max_size=4
    ),
    inside=_spaces,
    after=_spaces,
    added=st.sampled_from([b"", b'"id":"q-0-7",', b'"id":"q-0-7","timestamp":1790000000123,']),
    decisions=st.lists(
        st.builds(
            Decision,
            st.sampled_from(["legit", "fraud"]),
            st.floats(0, 1),
            st.lists(st.builds(Reason, st.text(max_size=8), st.text(max_size=20)), max_size=2),
            st.text(max_size=6),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_an_appended_decision_is_the_input_object_cut_before_its_brace_then_the_members(
    members: dict[str, object],
    inside: bytes,
    after: bytes,
    added: bytes,
    decisions: list[Decision],
) -> None:
    """encode_decided's fast path (one join, the decision's JSON kept while the same
    decision comes again), held to its plain statement byte for byte."""
    raw = msgspec.json.encode(members)[:-1] + inside + b"}" + after
    for decision in [*decisions, *decisions]:  # again: the kept JSON must not go stale
        inner = raw.rstrip()[:-1].rstrip()
        sep = b"" if inner.endswith(b"{") else b","
        plain = inner + sep + added + b'"decision":' + msgspec.json.encode(decision) + b"}"
        assert encode_decided(raw, added, decision) == plain
        assert json.loads(plain)["decision"] == msgspec.to_builtins(decision)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_either_decode_or_raise_invalid_transaction(value: bytes) -> None:
    try:
        decode_transaction(value)
    except InvalidTransaction as exc:
        assert exc.kind


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=5,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "source",
                "target",
                "amount",
                "currency",
                "id",
                "timestamp",
                "lat",
                "lon",
                "country",
                "x",
            ]
        ),
        json_values,
    )
)
def test_arbitrary_json_objects_never_escape_as_anything_but_invalid_transaction(
    obj: dict[str, object],
) -> None:
    raw = msgspec.json.encode(obj)
    try:
        decoded = decode_transaction(raw, topic="t", record_ts_ms=1_790_000_000_000)
    except InvalidTransaction:
        return
    out = json.loads(encode_decided(raw, decoded.added, DECISION, decoded.tx))
    assert out["decision"]["outcome"] == "fraud"


@given(
    amount_cents=st.integers(min_value=1, max_value=10**11),
    source=st.text(min_size=1, max_size=40),
)
def test_valid_transactions_round_trip(amount_cents: int, source: str) -> None:
    amount = amount_cents / 100
    raw = msgspec.json.encode(
        {"source": source, "target": "t", "amount": amount, "currency": "GBP"}
    )
    decoded = decode_transaction(raw, topic="t", record_ts_ms=1_790_000_000_000)
    assert decoded.tx.amount == amount
    out = json.loads(encode_decided(raw, decoded.added, DECISION, decoded.tx))
    assert out["source"] == source and out["amount"] == amount


class _PatternTransaction(msgspec.Struct, frozen=True, omit_defaults=True):
    """`Transaction` as it was typed before: `currency` and `country` as msgspec patterns."""

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    amount: float
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
    id: str | None = None
    timestamp: int | None = None
    country: Annotated[str, msgspec.Meta(pattern="^[A-Z]{2}$")] | None = None
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None


_pattern_decoder = msgspec.json.Decoder(_PatternTransaction)


def _by_patterns(value: bytes) -> tuple[str, str]:
    """The outcome of decoding `value` as before: the patterns, then `check`."""
    try:
        old = _pattern_decoder.decode(value)
    except msgspec.ValidationError as exc:
        return ("schema", str(exc))
    tx = Transaction(**msgspec.structs.asdict(old))
    try:
        tx.check()
    except InvalidTransaction as exc:
        return (exc.kind, str(exc))
    return ("ok", msgspec.json.encode(tx).decode())


def _now(value: bytes) -> tuple[str, str]:
    try:
        return ("ok", msgspec.json.encode(decode_transaction(value).tx).decode())
    except InvalidTransaction as exc:
        return (exc.kind, str(exc))


_codes = st.one_of(
    st.sampled_from(["EUR", "USD", "XXX", "ABC", "eur", "EU", "EURO", "ÉUR"]), st.text(max_size=4)
)
_countries = st.one_of(
    st.none(), st.sampled_from(["IT", "FR", "QQ", "it", "I", "ITA", "ÎT"]), st.text(max_size=3)
)


@settings(max_examples=500, deadline=None)
@given(
    currency=_codes,
    country=_countries,
    amount=st.sampled_from([12.5, 950.0, -1.0, 0.001, 1e13]),
    lat=st.sampled_from([None, 45.0, 95.0]),
)
def test_capital_letter_codes_are_checked_as_the_patterns_did(
    currency: str, country: str | None, amount: float, lat: float | None
) -> None:
    """`currency` and `country` checked in `Transaction.check` instead of as msgspec
    patterns: every record decodes, or is refused with the same class, as with the patterns;
    and with the same message when it has one problem only (with several, the first one named
    can differ). One difference, on purpose: a code with a trailing newline (`"IT\\n"`), which
    the patterns' `$` let through, is refused."""
    record: dict[str, object] = {
        "source": "a",
        "target": "b",
        "amount": amount,
        "currency": currency,
        "id": "x",
        "timestamp": 1_790_000_000_000,
    }
    if country is not None:
        record["country"] = country
    if lat is not None:
        record |= {"lat": lat, "lon": 9.0}
    value = msgspec.json.encode(record)
    now = _now(value)
    if currency.endswith("\n") or (country or "").endswith("\n"):
        assert now[0] == "schema", now
        return
    before = _by_patterns(value)
    assert now[0] == before[0], (now, before)
    shape_problems = sum(
        [
            not re.fullmatch("[A-Z]{3}", currency),
            country is not None and not re.fullmatch("[A-Z]{2}", country),
            lat == 95.0,
        ]
    )
    if shape_problems <= 1:
        assert now == before


_amounts = st.one_of(
    st.sampled_from(
        [12.5, 950.0, 0.01, 0.005, 1e12, 1e12 + 0.01, 1e13, 0.0, -1.0, 1e-300, 1e-9, 0.0099999999]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**13), max_value=10**13).map(lambda c: c / 100),
)
_wellformed = st.fixed_dictionaries(
    {
        "source": st.sampled_from(["a", "b"]),
        "target": st.just("t"),
        "amount": _amounts,
        "currency": _codes,
    },
    optional={
        "id": st.sampled_from(["x", 7]),
        "timestamp": st.sampled_from(
            [1_790_000_000_000, "2026-01-31T12:00:00Z", "2026-01-31T12:00:00", 5]
        ),
        "country": _countries,
        "lat": st.sampled_from([45.0, 95.0]),
        "lon": st.just(9.0),
    },
).map(msgspec.json.encode)
_records = st.one_of(
    _wellformed,
    st.sampled_from([None, b"", b"{", b"\xff\xfe", b"[]", b'{"amount": NaN}']),
    st.dictionaries(st.sampled_from(["source", "target", "amount", "currency"]), json_values).map(
        msgspec.json.encode
    ),
)


def _outcome(result: object) -> object:
    if isinstance(result, InvalidTransaction):
        return ("invalid", result.kind, str(result))
    return result


# Long batches mostly of well-formed records: about half of those parse, so that a good share
# of the batches have the VECTOR_AMOUNTS parsed records that take the vectorised pass
_mostly_wellformed = st.one_of(_wellformed, _wellformed, _wellformed, _records)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(_records, max_size=VECTOR_AMOUNTS)
    | st.lists(_mostly_wellformed, min_size=2 * VECTOR_AMOUNTS, max_size=4 * VECTOR_AMOUNTS)
)
def test_a_batch_decodes_as_each_record_alone(values: list[bytes | None]) -> None:
    """`decode_transactions` (the input stage's: amounts checked in one vectorised pass from
    VECTOR_AMOUNTS records, one by one below) gives each record what `decode_transaction`
    gives it alone: the same transaction and derived members, or the same error, kind and
    message."""
    offsets = list(range(40, 40 + len(values)))
    times = [1_790_000_000_000 + i for i in range(len(values))]
    alone = []
    for value, offset, ts in zip(values, offsets, times, strict=True):
        try:
            alone.append(
                decode_transaction(value, topic="in", partition=3, offset=offset, record_ts_ms=ts)
            )
        except InvalidTransaction as exc:
            alone.append(exc)  # type: ignore[arg-type]
    batch = decode_transactions(
        values, topic="in", partition=3, offsets=offsets, record_ts_ms=times
    )
    assert [_outcome(r) for r in batch] == [_outcome(r) for r in alone]


def test_a_batch_with_bad_records_leaves_nothing_for_the_garbage_collector() -> None:
    """An error kept for a bad record holds no traceback or context back to the decoding
    frame: the batch is freed as soon as it is dropped, not when the collector gets to it
    (which the detector's high thresholds make rare)."""
    values = [FOUR, b"not json", FOUR.replace(b"EUR", b"eur"), None, FOUR]
    gc.collect()
    gc.disable()
    try:
        out = decode_transactions(
            values, topic="in", partition=0, offsets=[1, 2, 3, 4, 5], record_ts_ms=[1] * 5
        )
        assert [type(o).__name__ for o in out].count("InvalidTransaction") == 3
        del out
        assert gc.collect() == 0
    finally:
        gc.enable()
