"""The simulator: ordinary traffic from `World`, labelled fraud from `scenarios`, in time order.

sim = Simulator(seed=7, fraud_rate=0.01)
for tx, label in sim.take(1000):   # tx: dict (the transaction), label: dict (ground truth)
    ...
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fraudstream.generator.scenarios import DAY, SCENARIOS, mean_size, poisson_gap
from fraudstream.generator.world import World

__all__ = ["Simulator"]

COMPROMISE_DAYS = (14, 28)


@dataclass
class Simulator:
    seed: int = 0
    fraud_rate: float = 0.01  # share of transactions that are fraud (all scenarios together)
    accounts: int = 20_000
    merchants: int = 2_000
    label_delay_ms: int = 2 * DAY  # mean delay of a fraud verdict (chargeback, review)
    # Going on from an earlier run (`resume_point`): its clock from here, its ids numbered from
    # `first`, the same world with traffic of its own (else the run would replay the first).
    start_ms: int | None = None
    first: int = 1
    world: World = field(init=False)

    def __post_init__(self) -> None:
        if self.start_ms is None:
            self.world = World(self.seed, self.accounts, self.merchants)
        else:
            self.world = World(self.seed, self.accounts, self.merchants, self.start_ms)
            self.world.rng.seed(f"{self.seed}/{self.start_ms}/{self.first}")
        w = self.world
        share = self.fraud_rate / (len(SCENARIOS) + 1)
        # scenario starts per ordinary transaction
        self._rates = {name: share / mean_size(name) for name in SCENARIOS}
        self._next = {name: poisson_gap(w.rng, r) for name, r in self._rates.items()}
        # skimmed shops: starts per day so that their traffic is `share` of all transactions
        per_shop_day = w.total_per_day * 0.85 / len(w.shops)
        mean_days = sum(COMPROMISE_DAYS) / 2
        self._compromise_per_day = share * w.total_per_day / (per_shop_day * mean_days)
        gap = poisson_gap(w.rng, self._compromise_per_day)  # inf when fraud_rate is 0
        self._next_compromise = w.start_ms + int(gap * DAY) if math.isfinite(gap) else 2**62
        self.compromised: dict[str, tuple[int, int]] = {}
        self._heap: list[tuple[int, int, dict[str, Any], str]] = []
        self._seq = itertools.count()
        self._normal = 0
        self._n = self.first - 1

    def _label(self, tx: dict[str, Any], scenario: str | None) -> dict[str, Any]:
        rng = self.world.rng
        ts = tx["timestamp"]
        if scenario is None:
            known = ts + 60 * DAY  # a payment nobody disputed is settled after two months
        else:
            known = ts + int(self.label_delay_ms * rng.uniform(0.25, 1.75))
        return {
            "id": tx["id"],
            "is_fraud": scenario is not None,
            "scenario": scenario,
            "known_ms": known,
            "published_ms": ts,
            "tx_ms": ts,
            "target": tx["target"],
            "merchant": tx.get("merchant"),
        }

    def _emit(
        self, ts: int, tx: dict[str, Any], scenario: str | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        self._n += 1
        tx = {"id": f"s{self.seed}-{self._n}", "timestamp": ts, **tx}
        return tx, self._label(tx, scenario)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        w = self.world
        heap = self._heap
        while True:
            ts = w.advance()
            while heap and heap[0][0] <= ts:
                t, _, tx, scenario = heapq.heappop(heap)
                yield self._emit(t, tx, scenario)
            while self._next_compromise <= ts:
                shop = w.shops[w.rng.randrange(len(w.shops) - len(w.closed))]
                days = w.rng.randint(*COMPROMISE_DAYS)
                self.compromised[shop.id] = (
                    self._next_compromise,
                    self._next_compromise + days * DAY,
                )
                self._next_compromise += int(poisson_gap(w.rng, self._compromise_per_day) * DAY) + 1
            normal = w.next_normal()
            if normal is None:
                continue
            tx = normal
            self._normal += 1
            for name, at in self._next.items():
                if self._normal >= at:
                    for t, ftx in SCENARIOS[name](w, ts):
                        heapq.heappush(heap, (t, next(self._seq), ftx, name))
                    self._next[name] = at + poisson_gap(w.rng, self._rates[name])
            window = self.compromised.get(tx.get("merchant") or "")
            skimmed = window is not None and window[0] <= ts < window[1]
            yield self._emit(ts, tx, "compromised_merchant" if skimmed else None)

    def take(self, n: int) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        return itertools.islice(iter(self), n)
