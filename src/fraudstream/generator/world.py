"""A simulated world: accounts with habits, merchants in cities, a day-and-night rhythm.

Normal traffic comes from `World.next_normal`; labelled fraud from `scenarios`. Time is the
simulation's own clock (event time), starting at `start_ms`, independent of the wall clock.
"""

from __future__ import annotations

import bisect
import math
import random
import string
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CITIES", "FAR_CITIES", "LOCKDOWN", "Account", "Merchant", "World"]

# (name, country, lat, lon)
CITIES: tuple[tuple[str, str, float, float], ...] = (
    ("Paris", "FR", 48.857, 2.352),
    ("Lyon", "FR", 45.764, 4.836),
    ("Berlin", "DE", 52.520, 13.405),
    ("Munich", "DE", 48.137, 11.575),
    ("Madrid", "ES", 40.417, -3.704),
    ("Barcelona", "ES", 41.385, 2.173),
    ("Rome", "IT", 41.903, 12.496),
    ("Milan", "IT", 45.464, 9.190),
    ("Amsterdam", "NL", 52.368, 4.904),
    ("Brussels", "BE", 50.850, 4.352),
    ("Lisbon", "PT", 38.722, -9.139),
    ("Vienna", "AT", 48.208, 16.374),
    ("Warsaw", "PL", 52.230, 21.012),
    ("Dublin", "IE", 53.350, -6.260),
)
FAR_CITIES: tuple[tuple[str, str, float, float], ...] = (
    ("Lagos", "NG", 6.524, 3.379),
    ("Bangkok", "TH", 13.756, 100.502),
    ("Sao Paulo", "BR", -23.551, -46.633),
    ("Manila", "PH", 14.600, 120.984),
    ("Moscow", "RU", 55.756, 37.617),
    ("Jakarta", "ID", -6.208, 106.846),
)
# Share of the day's payments in each UTC hour: quiet nights, busy lunch and evening.
HOURLY = (
    0.3,
    0.2,
    0.15,
    0.1,
    0.1,
    0.2,
    0.5,
    1.0,
    1.4,
    1.5,
    1.6,
    1.8,
    2.0,
    1.8,
    1.6,
    1.5,
    1.6,
    1.8,
    2.0,
    1.9,
    1.6,
    1.2,
    0.8,
    0.5,
)
_HOURLY_MEAN = sum(HOURLY) / 24
# The lockdown of the simulated year: 2026-03-16 to 2026-05-11 (UTC), as in rules/lists.yaml.
LOCKDOWN = (1_773_619_200_000, 1_778_457_600_000)
_CHARS = string.ascii_letters + string.digits


@dataclass(slots=True)
class Account:
    id: str
    city: int
    devices: tuple[str, ...]
    median_amount: float
    per_day: float
    favourites: list[int]
    dormant_after_ms: int | None = None  # silent after this time (a dormant account)


@dataclass(slots=True)
class Merchant:
    id: str
    city: int
    scale: float


@dataclass
class World:
    seed: int = 0
    accounts: int = 20_000
    merchants: int = 2_000
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    dormant_share: float = 0.03
    rng: random.Random = field(init=False)
    people: list[Account] = field(init=False)
    shops: list[Merchant] = field(init=False)
    now_ms: int = field(init=False)
    dormant: list[Account] = field(init=False)  # silent accounts a scenario may wake up

    def __post_init__(self) -> None:
        rng = self.rng = random.Random(self.seed)
        self.shops = [
            Merchant("m-" + self._id(8), rng.randrange(len(CITIES)), rng.lognormvariate(0, 0.6))
            for _ in range(self.merchants)
        ]
        # Shops closed during the lockdown, with well-known ids (rules/lists.yaml names them).
        self.closed = [Merchant(f"m-closed-{i:03d}", i % len(CITIES), 1.0) for i in range(20)]
        self.shops += self.closed
        by_city: dict[int, list[int]] = {}
        for i, m in enumerate(self.shops):
            by_city.setdefault(m.city, []).append(i)
        self.by_city = by_city
        self.people = []
        for _ in range(self.accounts):
            city = rng.randrange(len(CITIES))
            local = by_city.get(city) or list(range(len(self.shops)))
            devices = tuple("d-" + self._id(10) for _ in range(rng.choice((1, 1, 2))))
            dormant = None
            per_day = rng.lognormvariate(-1.3, 0.7)
            if rng.random() < self.dormant_share:  # active for a few weeks, then silent
                dormant = self.start_ms + rng.randrange(10, 30) * 86_400_000
                per_day = max(per_day, 0.5)
            self.people.append(
                Account(
                    self._id(12),
                    city,
                    devices,
                    median_amount=rng.lognormvariate(3.4, 0.7),
                    per_day=per_day,
                    favourites=rng.sample(local, min(len(local), rng.randint(4, 12))),
                    dormant_after_ms=dormant,
                )
            )
        self._cumulative = list(_accumulate(a.per_day for a in self.people))
        self.total_per_day = self._cumulative[-1]
        self.now_ms = self.start_ms
        self.dormant = [a for a in self.people if a.dormant_after_ms is not None]

    def _id(self, n: int) -> str:
        return "".join(self.rng.choices(_CHARS, k=n))

    def is_closed(self, merchant: str, ts: int) -> bool:
        return merchant.startswith("m-closed-") and LOCKDOWN[0] <= ts < LOCKDOWN[1]

    def city_of(self, account: Account) -> tuple[str, str, float, float]:
        return CITIES[account.city]

    def advance(self) -> int:
        """Move the clock to the next normal payment (a Poisson process with a daily rhythm)."""
        hour = (self.now_ms // 3_600_000) % 24
        per_ms = self.total_per_day * HOURLY[hour] / _HOURLY_MEAN / 86_400_000
        self.now_ms += max(1, round(self.rng.expovariate(per_ms)))
        return self.now_ms

    def pick_account(self) -> Account:
        x = self.rng.random() * self.total_per_day
        return self.people[bisect.bisect_right(self._cumulative, x)]

    def amount(self, median: float, spread: float = 0.6) -> float:
        return round(max(1.0, self.rng.lognormvariate(math.log(median), spread)), 2)

    def next_normal(self) -> dict[str, Any] | None:
        """One ordinary payment at the current time, or None (a dormant account stayed quiet)."""
        rng = self.rng
        a = self.pick_account()
        if a.dormant_after_ms is not None and self.now_ms > a.dormant_after_ms:
            return None
        tx: dict[str, Any] = {"source": a.id, "currency": "EUR"}
        if rng.random() < 0.15:  # a transfer to another person
            other = self.people[rng.randrange(len(self.people))]
            tx |= {
                "target": other.id,
                "channel": "transfer",
                "amount": self.amount(a.median_amount * 1.5, 0.8),
            }
            _, country, lat, lon = CITIES[a.city]
        else:
            online = rng.random() < 0.3
            if rng.random() < 0.85:
                m = self.shops[rng.choice(a.favourites)]
            elif online:
                m = self.shops[rng.randrange(len(self.shops))]
            else:
                local = self.by_city.get(a.city) or a.favourites
                m = self.shops[rng.choice(local)]
            if self.is_closed(m.id, self.now_ms):  # nobody honest pays a closed shop
                return None
            # card-present payments happen at the shop; online ones where the payer is
            _, country, lat, lon = CITIES[a.city if online else m.city]
            tx |= {
                "target": m.id,
                "merchant": m.id,
                "channel": "online" if online else "card",
                "amount": self.amount(a.median_amount * m.scale),
            }
        tx |= {
            "country": country,
            "lat": round(lat + rng.uniform(-0.05, 0.05), 4),
            "lon": round(lon + rng.uniform(-0.05, 0.05), 4),
            "device": a.devices[0] if rng.random() < 0.9 else a.devices[-1],
        }
        return tx


def _accumulate(values: object) -> list[float]:
    total, out = 0.0, []
    for v in values:  # type: ignore[attr-defined]
        total += v
        out.append(total)
    return out
