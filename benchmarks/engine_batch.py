"""The detection engine alone (no Kafka): the batch path against one transaction at a time.

    python benchmarks/engine_batch.py [--count 200000] [--rules rules/default.yaml]
        [--batch 1000] [--transactions] [--features]

Simulated transactions (the `sim` profile), decided in batches of 1,000 (`--batch`) by two
engines of the same rule set: `compiled=True` (velocity rules as compiled kernels over the
batch, for every batch size: the detector scores batches under `EACH_BELOW` one at a time) and
`compiled=False` (`score_each`, the reference); `--transactions`: each batch in a
transaction of its own, its changelog records made, as a detector's input task runs it;
`--features`: the model's features computed too (as `train` does; no model needed). Both
in this process, one after the other, best of 3 runs each on fresh engines; prints µs per
transaction and the ratio, and checks that both decided the same. Not a test: figures go
in docs/performance.md with the machine.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from pathlib import Path

import msgspec

from fraudstream.detection import Engine, load_ruleset
from fraudstream.generator.app import records
from fraudstream.schema import Transaction


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rules", type=Path, default=Path("rules/default.yaml"))
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--transactions", action="store_true")
    parser.add_argument("--features", action="store_true")
    args = parser.parse_args()
    batch = args.batch
    decode = msgspec.json.Decoder(Transaction).decode
    source = records("sim", 7, lambda: 0)
    txs = [decode(next(source)[1]) for _ in range(args.count)]
    ruleset = load_ruleset(args.rules, require_model=not args.features)
    features = True if args.features else None
    results = {}
    for compiled in (True, False) * 3:
        make = functools.partial(
            Engine.from_ruleset, ruleset, compiled=compiled, features=features, each_below=0
        )
        engine = make()
        engine.decide(txs[:batch])  # compile the kernels (cached on disk after the first run)
        engine = make()
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(txs), batch):
            if args.transactions:
                engine.begin()
            out += (
                engine.score(txs[i : i + batch]) if features else engine.decide(txs[i : i + batch])
            )
            if args.transactions:
                engine.changes()
                engine.commit()
        took = (time.perf_counter() - t0) / len(txs) * 1e6
        best, _ = results.get(compiled, (float("inf"), None))
        results[compiled] = (min(best, took), out)
    fast, plain = results[True], results[False]
    assert fast[1] == plain[1], "the batch path decided differently"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.count:,} sim transactions, {args.rules}, "
        f"batches of {batch:,}{' in transactions' if args.transactions else ''}"
        f"{', with the features' if features else ''}"
    )
    print(f"one at a time: {plain[0]:6.2f} µs/tx")
    print(f"batch path:    {fast[0]:6.2f} µs/tx  ({plain[0] / fast[0]:.2f}x)")


if __name__ == "__main__":
    main()
