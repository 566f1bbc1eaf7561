"""A labelled transaction history from finforge (PyPI `finforge` 3.0.0), in fraudstream's
history format, for `fraudstream train`/`backtest` and the baseline scripts.

finforge simulates persona-driven users (student, salaried, freelancer, business owner,
household, retired) month by month, then appends fraud scenarios (card_fraud,
account_takeover, mule_account, refund_abuse, business_invoice_fraud) as extra rows, each
row flagged `is_fraud` with its `fraud_type`. It sizes a run by users x months, not by
transactions: the user count is estimated from `--count`, and whole users are then dropped
from the end until at most `--count` transactions are left.

Run it in its own environment (finforge needs pandas; fraudstream is not imported):

    python3 -m venv .venv-gen && .venv-gen/bin/pip install -r benchmarks/generators.lock
    .venv-gen/bin/python benchmarks/finforge_stream.py --out-dir data --count 500000 --seed 7

Writes, as JSON lines sorted by event time:
- OUT_DIR/finforge.jsonl: id, timestamp (epoch ms; finforge's naive times read as UTC),
  source (the payer), target (the payee), amount (positive), currency, merchant (finforge's
  counterparty name). A debit is the user paying the counterparty; a credit (income, refund,
  incoming transfer) is the counterparty paying the user. finforge gives no channel, country
  or device, and no currency: `--currency` names one (EUR, like fraudstream's simulator).
- OUT_DIR/finforge-labels.jsonl: one label per transaction, {id, is_fraud, known_ms,
  scenario (finforge's fraud_type, or null), target, merchant}, where known_ms is the
  transaction's time plus 7 days, the usual chargeback delay.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import pandas as pd
from finforge import DatasetGenerator
from history_files import LABEL_DELAY_MS, write_history

# finforge recomputes every user's balances one cell at a time (`DataFrame.at`). With pandas
# 3's default string columns (Arrow) each such write copies the column: 500,000 rows ran for
# over 30 minutes without finishing (2026-12-02). Plain object columns hold the same values.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the option is deprecated for pandas 4, which we do not use
    pd.set_option("future.infer_string", False)

TX_PER_USER_MONTH = 19.0  # measured on a mixed population with 1% fraud


def generate(count: int, months: int, fraud_rate: float, seed: int, start: str) -> pd.DataFrame:
    """finforge's rows for about `count` transactions: whole users, at most `count` rows."""
    users = max(6, math.ceil(count / (TX_PER_USER_MONTH * months) * 1.05))
    df = (
        DatasetGenerator(seed=seed, start_date=start)
        .with_users(users)
        .with_persona("mixed")
        .for_months(months)
        .with_fraud(rate=fraud_rate)
        .generate()
    )
    per_user = df.groupby("user_id", sort=True).size().cumsum()
    kept = per_user[per_user <= count].index
    df = df[df["user_id"].isin(kept) & (df["amount"].round(2) != 0)]
    if df.empty:
        raise SystemExit(f"--count {count} is less than one user's history")
    return df.sort_values("timestamp", kind="stable")  # finforge's order breaks ties


def records(df: pd.DataFrame, currency: str) -> tuple[list[dict], list[dict]]:
    """The transactions and their labels, in the history format."""
    epoch_ms = (df["timestamp"] - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1)
    txs, labels = [], []
    for row, ts in zip(df.itertuples(index=False), epoch_ms, strict=True):
        user, other, amount = str(row.user_id), str(row.merchant), round(float(row.amount), 2)
        source, target = (user, other) if amount < 0 else (other, user)
        tx_id = str(row.transaction_id)
        txs.append(
            {
                "id": tx_id,
                "timestamp": int(ts),
                "source": source,
                "target": target,
                "amount": abs(amount),
                "currency": currency,
                "merchant": other,
            }
        )
        fraud = bool(row.is_fraud)
        labels.append(
            {
                "id": tx_id,
                "is_fraud": fraud,
                "known_ms": int(ts) + LABEL_DELAY_MS,
                "scenario": str(row.fraud_type) if fraud else None,
                "target": target,
                "merchant": other,
            }
        )
    return txs, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=Path("data"))
    p.add_argument("--count", type=int, default=500_000, help="at most this many transactions")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--months", type=int, default=6, help="months of event time (1..60)")
    p.add_argument("--fraud-rate", type=float, default=0.01, help="finforge's fraud rate")
    p.add_argument("--start", default="2026-01-01", help="first day (YYYY-MM-DD)")
    p.add_argument("--currency", default="EUR")
    args = p.parse_args()

    began = time.monotonic()
    df = generate(args.count, args.months, args.fraud_rate, args.seed, args.start)
    txs, labels = records(df, args.currency)
    first, last = df["timestamp"].iloc[0].date(), df["timestamp"].iloc[-1].date()
    print(f"{len(txs)} transactions of {df['user_id'].nunique()} users, {first} to {last}")
    write_history(args.out_dir, "finforge", txs, labels, began)


if __name__ == "__main__":
    main()
