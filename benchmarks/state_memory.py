"""Bytes of detection state per active account, with the default rules and the model features.

    python benchmarks/state_memory.py [--accounts 1000000]

Feeds one payment from each of N distinct accounts, spread over 30 days of event time (plus a
second payment for a tenth of them), through the engine, then measures the memory the engine's
state holds as the growth of the process's resident memory (VmRSS): the typed columns of every
table, the key index (hash -> row slots) and the windowed fan-in/out state.
Also times a dump of every account's row to bytes and a load back (the changelog's work).
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from synthetic import MONTH_MS, T0, one_payment_per_account

from fraudstream.detection import Engine, load_ruleset
from fraudstream.schema import Transaction


def rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1_000_000)
    args = parser.parse_args()
    ruleset = load_ruleset(Path(__file__).resolve().parents[1] / "rules" / "default.yaml")
    n = args.accounts
    txs = one_payment_per_account(n)
    second = [
        Transaction(
            id=f"u{i}",
            timestamp=T0 + MONTH_MS + i,
            source=t.source,
            target=t.target,
            merchant=t.merchant,
            amount=t.amount,
            currency="EUR",
            lat=t.lat,
            lon=t.lon,
            device=t.device,
        )
        for i, t in enumerate(txs[: n // 10])
    ]
    gc.collect()
    before = rss()
    engine = Engine.from_ruleset(ruleset, features=True)
    t = time.perf_counter()
    for i in range(0, n, 10_000):
        engine.decide(txs[i : i + 10_000])
    engine.decide(second)  # a second payment for a tenth of the accounts
    took = time.perf_counter() - t
    gc.collect()
    grown = rss() - before
    held = engine.state_bytes()
    accounts = engine.tables["source"]
    columns = accounts.nbytes()
    print(
        f"{len(accounts):,} active accounts, {len(engine.rules)} rules + model features; "
        f"decided {n + n // 10:,} payments in {took:.1f}s"
    )
    print(
        f"state held: {held / len(accounts):.0f} bytes per account in all "
        f"(account columns {columns / len(accounts):.0f} B/account; the rest is the key "
        f"index with its free slots, spare array room, the target/merchant tables and the "
        f"fan-in/out sets); resident memory grew {grown / len(accounts):.0f} B/account "
        f"(the peak, with transient objects and allocator slack)"
    )
    keys = [t.source for t in txs]
    t = time.perf_counter()
    blobs = [(k, accounts.dump_row(k)) for k in keys]
    dump = time.perf_counter() - t
    fresh = Engine.from_ruleset(ruleset, features=True).tables["source"]
    t = time.perf_counter()
    for k, b in blobs:
        fresh.load_row(k, b or b"")
    load = time.perf_counter() - t
    print(
        f"row size {len(blobs[0][1] or b'')} bytes; dump {len(keys) / dump:,.0f} keys/s, "
        f"restore {len(keys) / load:,.0f} keys/s"
    )


if __name__ == "__main__":
    main()
