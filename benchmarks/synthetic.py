"""Synthetic payments shared by the benchmarks: one payment per account over a month."""

from __future__ import annotations

from fraudstream.schema import Transaction

T0 = 1_780_000_000_000
MONTH_MS = 30 * 86_400_000


def one_payment_per_account(n: int, start: int = 0, stop: int | None = None) -> list[Transaction]:
    """Payments i in [start, stop) of n: account i pays shop i % 5000, spread over 30 days."""
    step = MONTH_MS // n
    return [
        Transaction(
            id=f"t{i}",
            timestamp=T0 + i * step,
            source=f"acct{i:08d}",
            target=f"m{i % 5000}",
            merchant=f"m{i % 5000}",
            amount=10.0 + i % 500,
            currency="EUR",
            lat=48.8,
            lon=2.3,
            device=f"d{i}",
        )
        for i in range(start, n if stop is None else min(stop, n))
    ]
