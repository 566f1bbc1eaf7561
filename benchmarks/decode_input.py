"""Decoding the input alone (no Kafka): `decode_transaction` (JSON to a validated
`Transaction`) over simulated transactions, best of N runs; and, where the checkout has it,
`decode_transactions` over batches of `--batch` (what the input stage calls).

    python benchmarks/decode_input.py [--count 20000] [--runs 7] [--batch 160]
    PYTHONPATH=<another checkout>/src python benchmarks/decode_input.py   # its figure

The `sim` profile sets every field (country, place, device, ...). Compare two versions by
running it with each checkout's `src` first on PYTHONPATH, alternately. Not a test.
"""

from __future__ import annotations

import argparse
import time

import fraudstream
from fraudstream import schema
from fraudstream.generator.app import records
from fraudstream.schema import decode_transaction


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=160)
    args = parser.parse_args()
    source = records("sim", 1, lambda: 1_790_000_000_000)
    values = [next(source)[1] for _ in range(args.count)]
    best = float("inf")
    for _ in range(args.runs):
        start = time.perf_counter()
        for value in values:
            decode_transaction(value)
        best = min(best, time.perf_counter() - start)
    print(f"{best / len(values) * 1e9:.0f} ns per transaction ({fraudstream.__file__})")
    batched = getattr(schema, "decode_transactions", None)
    if batched is None:
        return
    n = args.batch
    cuts = [values[i : i + n] for i in range(0, len(values), n)]
    best = float("inf")
    for _ in range(args.runs):
        start = time.perf_counter()
        for cut in cuts:
            offsets = list(range(len(cut)))
            batched(cut, topic="t", partition=0, offsets=offsets, record_ts_ms=offsets)
        best = min(best, time.perf_counter() - start)
    print(f"{best / len(values) * 1e9:.0f} ns per transaction in batches of {n}")


if __name__ == "__main__":
    main()
