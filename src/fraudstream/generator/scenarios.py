"""Labelled fraud scenarios, injected into the simulated world's traffic.

Each scenario starts at the current simulated time and returns its transactions (event time,
fields) — possibly spread over minutes or a day. Labels never travel in the transactions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fraudstream.generator.world import CITIES, FAR_CITIES, LOCKDOWN, World

__all__ = ["SCENARIOS", "Event", "mean_size"]

Event = tuple[int, dict[str, Any]]
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR


def _place(w: World, far: bool, not_city: int) -> tuple[str, str, float, float]:
    if far:
        return w.rng.choice(FAR_CITIES)
    choices = [c for i, c in enumerate(CITIES) if i != not_city]
    return w.rng.choice(choices)


def _at(place: tuple[str, str, float, float], w: World) -> dict[str, Any]:
    _, country, lat, lon = place
    return {
        "country": country,
        "lat": round(lat + w.rng.uniform(-0.05, 0.05), 4),
        "lon": round(lon + w.rng.uniform(-0.05, 0.05), 4),
    }


def stolen_card_spree(w: World, now: int) -> list[Event]:
    """A stolen card: many payments in a short time, in another place, on a new device."""
    rng = w.rng
    victim = w.pick_account()
    place = _place(w, rng.random() < 0.5, victim.city)
    device = "d-" + w._id(10)
    t, out = now, []
    for _ in range(rng.randint(6, 14)):
        t += rng.randint(1, 8) * MIN
        shop = "m-" + w._id(8)
        out.append(
            (
                t,
                {
                    "source": victim.id,
                    "target": shop,
                    "merchant": shop,
                    "amount": w.amount(250, 0.5),
                    "currency": "EUR",
                    "channel": "card",
                    "device": device,
                    **_at(place, w),
                },
            )
        )
    return out


def card_testing(w: World, now: int) -> list[Event]:
    """Tiny test payments online, then large ones within minutes."""
    rng = w.rng
    victim = w.pick_account()
    place = _place(w, True, victim.city)
    device = "d-" + w._id(10)
    t, out = now, []
    for _ in range(rng.randint(2, 4)):
        t += rng.randint(20, 180) * 1000
        shop = w.shops[rng.randrange(len(w.shops) - len(w.closed))].id
        out.append(
            (
                t,
                {
                    "source": victim.id,
                    "target": shop,
                    "merchant": shop,
                    "amount": round(rng.uniform(0.1, 1.99), 2),
                    "currency": "EUR",
                    "channel": "online",
                    "device": device,
                    **_at(place, w),
                },
            )
        )
    for _ in range(rng.randint(1, 2)):
        t += rng.randint(2, 20) * MIN
        shop = "m-" + w._id(8)
        out.append(
            (
                t,
                {
                    "source": victim.id,
                    "target": shop,
                    "merchant": shop,
                    "amount": round(rng.uniform(300, 2000), 2),
                    "currency": "EUR",
                    "channel": "online",
                    "device": device,
                    **_at(place, w),
                },
            )
        )
    return out


def mule_fan_in(w: World, now: int) -> list[Event]:
    """The tutorials' pattern: ~50 accounts each pay one new account exactly 1000 € in 24 h."""
    rng = w.rng
    mule = w._id(12)
    out = []
    for _ in range(rng.randint(40, 60)):
        a = w.pick_account()
        out.append(
            (
                now + rng.randrange(DAY),
                {
                    "source": a.id,
                    "target": mule,
                    "amount": 1000.0,
                    "currency": "EUR",
                    "channel": "transfer",
                    "device": a.devices[0],
                    **_at(CITIES[a.city], w),
                },
            )
        )
    return out


def account_takeover(w: World, now: int) -> list[Event]:
    """New device, new place, unusually large transfers to a new payee."""
    rng = w.rng
    victim = w.pick_account()
    place = _place(w, rng.random() < 0.7, victim.city)
    device, payee = "d-" + w._id(10), w._id(12)
    t, out = now, []
    for _ in range(rng.randint(1, 3)):
        t += rng.randint(1, 20) * MIN
        amount = round(max(500.0, victim.median_amount * rng.uniform(8, 20)), 2)
        out.append(
            (
                t,
                {
                    "source": victim.id,
                    "target": payee,
                    "amount": amount,
                    "currency": "EUR",
                    "channel": "transfer",
                    "device": device,
                    **_at(place, w),
                },
            )
        )
    return out


def dormant_reactivation(w: World, now: int) -> list[Event]:
    """An account silent for months suddenly pays large amounts."""
    rng = w.rng
    ready = [a for a in w.dormant if a.dormant_after_ms and now - a.dormant_after_ms > 95 * DAY]
    if not ready:
        return []
    a = ready.pop(rng.randrange(len(ready)))
    w.dormant.remove(a)
    t, out = now, []
    device = a.devices[0] if rng.random() < 0.5 else "d-" + w._id(10)
    for _ in range(rng.randint(1, 3)):
        t += rng.randint(5, 90) * MIN
        payee = w._id(12)
        out.append(
            (
                t,
                {
                    "source": a.id,
                    "target": payee,
                    "amount": round(rng.uniform(500, 3000), 2),
                    "currency": "EUR",
                    "channel": "transfer",
                    "device": device,
                    **_at(CITIES[a.city], w),
                },
            )
        )
    return out


def structuring(w: World, now: int) -> list[Event]:
    """Many payments just under a 10,000 reporting limit within two days."""
    rng = w.rng
    a = w.pick_account()
    payees = [w._id(12) for _ in range(rng.randint(2, 4))]
    t, out = now, []
    for _ in range(rng.randint(4, 8)):
        t += rng.randint(30, 480) * MIN
        out.append(
            (
                t,
                {
                    "source": a.id,
                    "target": rng.choice(payees),
                    "amount": round(rng.uniform(9_000, 9_990), 2),
                    "currency": "EUR",
                    "channel": "transfer",
                    "device": a.devices[0],
                    **_at(CITIES[a.city], w),
                },
            )
        )
    return out


def lockdown_closed_merchant(w: World, now: int) -> list[Event]:
    """Payments at a shop that was closed by the lockdown (laundering through it)."""
    rng = w.rng
    if not LOCKDOWN[0] <= now < LOCKDOWN[1]:
        return []
    shop = rng.choice(w.closed)
    out = []
    for _ in range(rng.randint(1, 3)):
        a = w.pick_account()
        out.append(
            (
                now + rng.randrange(6 * HOUR),
                {
                    "source": a.id,
                    "target": shop.id,
                    "merchant": shop.id,
                    "amount": w.amount(120, 0.8),
                    "currency": "EUR",
                    "channel": "card",
                    "device": a.devices[0],
                    **_at(CITIES[shop.city], w),
                },
            )
        )
    return out


SCENARIOS: dict[str, Callable[[World, int], list[Event]]] = {
    "stolen_card_spree": stolen_card_spree,
    "card_testing": card_testing,
    "mule_fan_in": mule_fan_in,
    "account_takeover": account_takeover,
    "dormant_reactivation": dormant_reactivation,
    "structuring": structuring,
    "lockdown_closed_merchant": lockdown_closed_merchant,
}
# compromised_merchant labels ordinary traffic at a skimmed shop: see Simulator.

_MEAN_SIZE = {
    "stolen_card_spree": 10,
    "card_testing": 4.5,
    "mule_fan_in": 50,
    "account_takeover": 2,
    "dormant_reactivation": 2,
    "structuring": 6,
    "lockdown_closed_merchant": 2,
}


def mean_size(name: str) -> float:
    return _MEAN_SIZE[name]


def poisson_gap(rng: Any, rate: float) -> float:
    return rng.expovariate(rate) if rate > 0 else math.inf
