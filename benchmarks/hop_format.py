"""What a hop's format costs: today's blocks of envelopes against envelopes as columns.

Issue 9's last unbuilt part is "envelopes as columns inside a block, the orderer over blocks".
Before building it, this measures what it could save, without Kafka: the envelopes that six
upstream tasks send one keyed-stage partition in one step (the `sim` profile, default rules:
no feature rows, no hits), encoded, decoded, offered to the keyed stage's buffer and released
in order-key order, per envelope, three ways:

- `envelopes`: the runtime's path (`encode_block` / `decode_block` of `Envelope`s,
  `Orderer.offer_block`, `Orderer.release`);
- `columns`: a prototype of the columnar block: one struct per upstream with a column per
  envelope field (order keys as int64 bytes, the transactions still as `HopTx`), its order
  keys checked in order with numpy, the released rows merged with one `np.lexsort` and every
  column gathered in that order;
- `columns, tx as columns`: the same with the transaction's fields as columns too (what a
  stage whose rules read columns would need), the ceiling of the format alone.

    python benchmarks/hop_format.py [--size 300] [--upstreams 6] [--runs 40]

Prints the best time per envelope of each part and path (the paths interleaved), and each
path's total against today's. Not a test, and the prototypes are not the runtime's code: no
skips after a rewind, no marks, no bookkeeping of numbers (which makes them look a little
better than a real one would be).
"""

from __future__ import annotations

import argparse
import operator
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from fraudstream.generator.app import records
from fraudstream.schema import LabelRecord, decode_transaction
from fraudstream.stream.ordering import (
    DATA,
    INF,
    MARK,
    Envelope,
    HopTx,
    Meta,
    Orderer,
    decode_block,
    encode_block,
)

Hit = tuple[str, float, str, bool, bool]


class _Shared(msgspec.Struct, array_like=True):
    """A prototype: one upstream's envelopes to one partition, a column per field (the
    fields every envelope has; the transaction's come after, per subclass)."""

    u: int
    s: int  # the first one's number; the rest follow one by one
    t: bytes  # int64 order keys
    q: bytes
    o: bytes
    kind: list[int]
    value: list[bytes]
    added: list[bytes]
    key: list[bytes | None]
    headers: list[list[tuple[str, bytes]] | None]
    parts: list[dict[str, bytes]]
    hits: list[list[Hit]]
    label: list[LabelRecord | None]
    note: list[str]


class Columns(_Shared, array_like=True):
    """The transactions as `HopTx`, as on today's repartition topics."""

    tx: list[HopTx | None]


class TxColumns(_Shared, array_like=True):
    """The transaction as columns too (amounts and times as bytes)."""

    source: list[str]
    target: list[str]
    amount: bytes
    currency: list[str]
    id: list[str | None]
    timestamp: bytes
    channel: list[str | None]
    country: list[str | None]
    lat: list[float | None]
    lon: list[float | None]
    merchant: list[str | None]
    device: list[str | None]


ORDER = ("t", "q", "o")
SCALARS = ("u", "s")
NUMBERS = {"amount": np.float64, "timestamp": np.int64}  # columns as bytes, besides ORDER


def _columnar(cls: type[msgspec.Struct]) -> Callable[..., Any]:
    """The prototype path for `cls`: encode each upstream's columns, decode them, check each
    in order, merge all with one lexsort and gather every column in that order."""
    fields = cls.__struct_fields__
    names = [f for f in fields if f not in (*ORDER, *SCALARS) and f not in NUMBERS]
    numbers = [f for f in fields if f in NUMBERS]
    encode = msgspec.msgpack.Encoder().encode
    decode = msgspec.msgpack.Decoder(list[cls]).decode  # type: ignore[valid-type]

    def run(blocks: list[Any]) -> tuple[float, float, float, Any]:
        t0 = time.perf_counter()
        wires = [encode([b]) for b in blocks]
        t1 = time.perf_counter()
        pieces = []
        for wire in wires:
            for cols in decode(wire):
                t, q, o = (np.frombuffer(getattr(cols, k), np.int64) for k in ORDER)
                dt = np.diff(t)
                if not (dt >= 0).all():
                    raise AssertionError("out of order")
                pieces.append((cols, t, q, o))
        t2 = time.perf_counter()
        t, q, o = (np.concatenate([p[i] for p in pieces]) for i in (1, 2, 3))
        perm = np.lexsort((o, q, t))
        gather = operator.itemgetter(*perm.tolist())
        out = {n: gather([x for p in pieces for x in getattr(p[0], n)]) for n in names}
        for n in numbers:
            column = np.concatenate([np.frombuffer(getattr(p[0], n), NUMBERS[n]) for p in pieces])
            out[n] = column[perm]
        out.update(t=t[perm], q=q[perm], o=o[perm])
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, out

    return run


def _envelopes(upstreams: int) -> Callable[..., Any]:
    def run(blocks: list[list[Envelope]]) -> tuple[float, float, float, Any]:
        t0 = time.perf_counter()
        wires = [encode_block(b) for b in blocks]
        t1 = time.perf_counter()
        orderer = Orderer(upstreams, Meta())
        for offset, wire in enumerate(wires):
            block = decode_block(wire)
            orderer.offer_block(block, offset, len(wire) // len(block))
        t2 = time.perf_counter()
        for u in range(upstreams):
            orderer.offer(Envelope(MARK, INF, u, 0, u, 1), len(wires))
        out = orderer.release()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, out

    return run


def _i64(values: list[int]) -> bytes:
    return np.array(values, dtype=np.int64).tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=300, help="envelopes per upstream (300)")
    ap.add_argument("--upstreams", type=int, default=6, help="upstream tasks (6)")
    ap.add_argument("--runs", type=int, default=40, help="timed rounds, best kept (40)")
    args = ap.parse_args()
    n, ups = args.size, args.upstreams

    src = records("sim", 1, lambda: 1_790_000_000_000)
    blocks: list[list[Envelope]] = []
    for u in range(ups):
        envs = []
        for i in range(n):
            _, value, _ = next(src)
            d = decode_transaction(value)
            tx = HopTx.of(d.tx)
            envs.append(Envelope(DATA, d.tx.ts_ms, u, 1000 + i, u, i + 1, tx, value, d.added))
        blocks.append(envs)

    def shared(envs: list[Envelope]) -> dict[str, Any]:
        return {
            "u": envs[0].u,
            "s": 1,
            "t": _i64([e.t for e in envs]),
            "q": _i64([e.q for e in envs]),
            "o": _i64([e.o for e in envs]),
            "kind": [e.kind for e in envs],
            "value": [e.value for e in envs],
            "added": [e.added for e in envs],
            "key": [e.key for e in envs],
            "headers": [e.headers for e in envs],
            "parts": [e.parts for e in envs],
            "hits": [e.hits for e in envs],
            "label": [e.label for e in envs],
            "note": [e.note for e in envs],
        }

    columns = [Columns(tx=[e.tx for e in envs], **shared(envs)) for envs in blocks]
    tx_fields = [f for f in HopTx.__struct_fields__ if f != "decision"]
    tx_columns = []
    for envs in blocks:
        txs: dict[str, Any] = {f: [getattr(e.tx, f) for e in envs] for f in tx_fields}
        txs["amount"] = np.array(txs["amount"], dtype=np.float64).tobytes()
        txs["timestamp"] = _i64([e.tx.ts_ms for e in envs])  # type: ignore[union-attr]
        tx_columns.append(TxColumns(**txs, **shared(envs)))

    paths: dict[str, tuple[Callable[..., Any], list[Any]]] = {
        "envelopes": (_envelopes(ups), blocks),
        "columns": (_columnar(Columns), columns),
        "columns, tx as columns": (_columnar(TxColumns), tx_columns),
    }
    # the same rows come out in the same order on every path
    want = [e.o for e in paths["envelopes"][0](blocks)[3]]
    for name in ("columns", "columns, tx as columns"):
        got = paths[name][0](paths[name][1])[3]["o"].tolist()
        if got != want:
            raise SystemExit(f"{name}: released in another order than the envelopes")
    best = {name: [float("inf")] * 3 for name in paths}
    for _ in range(args.runs):
        for name, (run, data) in paths.items():
            times = run(data)[:3]
            best[name] = [min(a, b) for a, b in zip(best[name], times, strict=True)]
    per = n * ups
    base = sum(best["envelopes"])
    print(f"{per} envelopes ({ups} upstreams x {n}), best of {args.runs}, ns per envelope")
    print(f"{'path':<24}{'encode':>8}{'decode+offer':>14}{'release':>9}{'total':>8}{'ratio':>7}")
    for name, times in best.items():
        ns = [x / per * 1e9 for x in times]
        print(
            f"{name:<24}{ns[0]:>8.0f}{ns[1]:>14.0f}{ns[2]:>9.0f}{sum(ns):>8.0f}"
            f"{sum(times) / base:>7.2f}"
        )


if __name__ == "__main__":
    main()
