"""A labelled transaction history from synccfd (PyPI `synccfd` 0.1.0), in fraudstream's
history format, for `fraudstream train`/`backtest` and the baseline scripts.

synccfd is the card fraud simulator of Le Borgne et al.'s handbook, extended with
Card-Present (CP) and Card-Not-Present (CNP) payments and Brazilian geography: customers
and terminals are placed around Brazilian cities (population-weighted), and each customer
pays, day by day, at a terminal within 10 km (CP) or at any terminal (CNP). It then labels
four fraud scenarios: 1 any amount above 220; 2 every payment at 2 terminals drawn each
day, for 28 days; 3 a third of the payments of 3 customers drawn each day, for 14 days,
turned CNP at a random terminal, shipped to the fraudster, amount x5; 4 every payment of 3
customers drawn each day, for 5 days, moved onto the first of those days, at the
fraudster's terminals, amount x5. Scenarios 3 and 4 replace payments, they add none.

A run is sized by customers x days (two terminals per customer, as in the handbook): the
customer count is estimated from `--count`, and whole customers are then dropped from the
end until at most `--count` transactions are left. Fraud is drawn in absolute numbers per
day, not per customer, so the fraud share grows as runs get smaller: 2.9% of 500,000
transactions over 150 days, 57% of 20,000. `--seed` only moves the places of customers and
terminals, hence which terminals they use: synccfd seeds the customers' habits and each
day's fraud draws itself, the same in every run (seeds 7 and 8 share 82% of payments).

Run it in its own environment (synccfd needs geopandas; fraudstream is not imported):

    python3 -m venv .venv-gen && .venv-gen/bin/pip install -r benchmarks/generators.lock
    .venv-gen/bin/python benchmarks/synccfd_stream.py --out-dir data --count 500000 --seed 7

Writes, as JSON lines sorted by event time:
- OUT_DIR/synccfd.jsonl: id (synccfd's TRANSACTION_ID), timestamp (epoch ms; synccfd's
  naive times read as UTC, to the second), source (the customer, i.e. the card), target and
  merchant (the terminal), amount, currency (`--currency`: synccfd has none), lat/lon in
  degrees (`--location auto`: the terminal for a CP payment, the shipping address for a CNP
  one; `terminal`; or `none`). Payments of 0.00 are left out.
- OUT_DIR/synccfd-labels.jsonl: one label per transaction, {id, is_fraud, known_ms,
  scenario (synccfd's TX_FRAUD_SCENARIO, as "2_compromised_terminal" etc., or null), target,
  merchant}, where known_ms is the transaction's time plus 7 days, the usual chargeback delay.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import pandas as pd
from history_files import LABEL_DELAY_MS, write_history
from synccfd import DatasetGenerator

TX_PER_CUSTOMER_DAY = 1.96  # measured: synccfd draws 0..4 a day, a few at invalid times
SCENARIOS = {
    1: "1_high_amount",
    2: "2_compromised_terminal",
    3: "3_stolen_card_number",
    4: "4_stolen_card",
}


def generate(
    count: int, days: int, terminals_per_customer: float, seed: int, start: str
) -> pd.DataFrame:
    """synccfd's rows for about `count` transactions: whole customers, at most `count` rows."""
    customers = max(2, math.ceil(count / (TX_PER_CUSTOMER_DAY * days) * 1.05))
    generator = DatasetGenerator(
        n_customers=customers,
        n_terminals=max(1, round(customers * terminals_per_customer)),
        nb_days=days,
        start_date=start,
        random_state=seed,
    )
    with contextlib.redirect_stdout(sys.stderr):  # its progress; stdout is the summary
        df = generator.generate()[2]
    per_customer = df.groupby("CUSTOMER_ID", sort=True).size().cumsum()
    kept = per_customer[per_customer <= count].index
    df = df[df["CUSTOMER_ID"].isin(kept) & (df["TX_AMOUNT"].round(2) > 0)]
    if df.empty:
        raise SystemExit(f"--count {count} is less than one customer's history")
    # scenario 4 moves payments in time: sort again, ties in synccfd's (chronological) id order
    return df.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")


def records(df: pd.DataFrame, currency: str, location: str) -> tuple[list[dict], list[dict]]:
    """The transactions and their labels, in the history format."""
    epoch_ms = (df["TX_DATETIME"] - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1)
    txs, labels = [], []
    for row, ts in zip(df.itertuples(index=False), epoch_ms, strict=True):
        tx_id, terminal = str(row.TRANSACTION_ID), str(row.TERMINAL_ID)
        tx = {
            "id": tx_id,
            "timestamp": int(ts),
            "source": str(row.CUSTOMER_ID),
            "target": terminal,
            "amount": round(float(row.TX_AMOUNT), 2),
            "currency": currency,
            "merchant": terminal,
        }
        if location != "none":
            at_terminal = location == "terminal" or row.TX_TYPE == "CP"
            lat, lon = (
                (row.TX_TERM_LAT, row.TX_TERM_LONG)
                if at_terminal
                else (row.TX_SHIPP_LAT, row.TX_SHIPP_LONG)
            )
            tx["lat"], tx["lon"] = round(float(lat), 5), round(float(lon), 5)
        txs.append(tx)
        fraud = bool(row.TX_FRAUD)
        scenario = int(row.TX_FRAUD_SCENARIO)
        labels.append(
            {
                "id": tx_id,
                "is_fraud": fraud,
                "known_ms": int(ts) + LABEL_DELAY_MS,
                "scenario": SCENARIOS.get(scenario, str(scenario)) if fraud else None,
                "target": terminal,
                "merchant": terminal,
            }
        )
    return txs, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=Path("data"))
    p.add_argument("--count", type=int, default=500_000, help="at most this many transactions")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=150, help="days of event time")
    p.add_argument(
        "--terminals-per-customer", type=float, default=2.0, help="the handbook's 2 (10k/5k)"
    )
    p.add_argument("--start", default="2026-01-01", help="first day (YYYY-MM-DD)")
    p.add_argument("--currency", default="EUR")
    p.add_argument(
        "--location",
        choices=["auto", "terminal", "none"],
        default="auto",
        help="lat/lon: terminal (CP) or shipping address (CNP); the terminal; or none",
    )
    args = p.parse_args()
    if args.count < 1 or args.days < 1 or args.terminals_per_customer <= 0:
        p.error("--count, --days and --terminals-per-customer must be positive")

    began = time.monotonic()
    df = generate(args.count, args.days, args.terminals_per_customer, args.seed, args.start)
    txs, labels = records(df, args.currency, args.location)
    first, last = df["TX_DATETIME"].iloc[0], df["TX_DATETIME"].iloc[-1]
    print(
        f"{len(txs)} transactions of {df['CUSTOMER_ID'].nunique()} customers at "
        f"{df['TERMINAL_ID'].nunique()} terminals, {first} to {last} "
        f"({(last - first) / pd.Timedelta(days=1):.1f} days)"
    )
    write_history(args.out_dir, "synccfd", txs, labels, began)


if __name__ == "__main__":
    main()
