"""The tutorials' uniform random transactions: 12-character accounts, 1.00 to 1,000.00 EUR.

The range is the one the tutorials' docstring states (their code drew up to 10,000.00, which
made 91% of all transactions fraud under the 900 rule).
"""

from __future__ import annotations

import random
import string
import uuid

from fraudstream.schema import Transaction

__all__ = ["TutorialSource"]

_ACCOUNT_CHARS = string.digits + string.ascii_letters


class TutorialSource:
    """Random transactions; the same seed gives the same ids, accounts and amounts."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def _account(self) -> str:
        return "".join(self._rng.choices(_ACCOUNT_CHARS, k=12))

    def next(self, now_ms: int) -> Transaction:
        rng = self._rng
        return Transaction(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            timestamp=now_ms,
            source=self._account(),
            target=self._account(),
            amount=rng.randint(100, 100_000) / 100,
            currency="EUR",
        )
