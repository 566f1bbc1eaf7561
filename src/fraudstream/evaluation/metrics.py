"""Detection quality: decisions joined with ground truth, overall, per scenario and per rule,
and the card precision@k per day (an investigation team's budget: of each day's k cards with
the highest scores, how many had fraud that day)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = ["TOP_K", "Outcome", "Report", "card_precision_at_k", "format_report", "report"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One transaction: the truth, and what was decided."""

    is_fraud: bool
    scenario: str | None
    flagged: bool
    score: float
    rules: tuple[str, ...]
    ts_ms: int | None = None  # event time and card (source account): for precision@k per day
    card: str | None = None


TOP_K = 100  # cards an investigation team checks a day (the literature's card precision@100)
DAY_MS = 86_400_000


def card_precision_at_k(rows: list[Outcome], k: int = TOP_K) -> dict[str, Any] | None:
    """Each day (UTC), every card's highest score that day; of the k cards ranked highest,
    the share that had fraud that day (of all its cards when it had fewer than k); the mean
    over the days and its spread. None without event times and cards."""
    days: dict[int, dict[str, list[Any]]] = defaultdict(dict)
    for o in rows:
        if o.ts_ms is None or o.card is None:
            return None
        cards = days[o.ts_ms // DAY_MS]
        best = cards.get(o.card)
        if best is None:
            cards[o.card] = [o.score, o.is_fraud]
        else:
            best[0] = max(best[0], o.score)
            best[1] = best[1] or o.is_fraud
    if not days:
        return None
    per_day = []
    for cards in days.values():
        top = sorted(cards.values(), key=lambda c: -c[0])[:k]
        per_day.append(sum(1 for _, fraud in top if fraud) / len(top))
    values = np.array(per_day)
    return {
        "k": k,
        "mean": round(float(values.mean()), 4),
        "std": round(float(values.std()), 4),
        "days": len(per_day),
    }


Report = dict[str, Any]


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def report(outcomes: Iterable[Outcome], k: int = TOP_K) -> Report:
    rows = list(outcomes)
    tp = sum(1 for o in rows if o.flagged and o.is_fraud)
    fp = sum(1 for o in rows if o.flagged and not o.is_fraud)
    fn = sum(1 for o in rows if not o.flagged and o.is_fraud)
    tn = len(rows) - tp - fp - fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = round(2 * precision * recall / (precision + recall), 4) if precision and recall else None
    y = np.fromiter((o.is_fraud for o in rows), dtype=bool, count=len(rows))
    s = np.fromiter((o.score for o in rows), dtype=float, count=len(rows))
    both = 0 < y.sum() < len(rows)
    per_scenario: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    for o in rows:
        if o.is_fraud:
            name = o.scenario or "unknown"
            totals[name] += 1
            caught[name] += o.flagged
    for name in sorted(totals):
        per_scenario[name] = {
            "fraud": totals[name],
            "caught": caught[name],
            "recall": _ratio(caught[name], totals[name]),
        }
    fired: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o in rows:
        for r in o.rules:
            fired[r][0] += 1
            fired[r][1] += o.is_fraud
    fraud_total = int(y.sum())
    per_rule = {
        r: {"fired": n, "on_fraud": k, "precision": _ratio(k, n), "recall": _ratio(k, fraud_total)}
        for r, (n, k) in sorted(fired.items())
    }
    return {
        "transactions": len(rows),
        "fraud": fraud_total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "alert_rate": _ratio(tp + fp, len(rows)),
        "roc_auc": round(float(roc_auc_score(y, s)), 4) if both else None,
        "average_precision": round(float(average_precision_score(y, s)), 4) if both else None,
        "card_precision_at_k": card_precision_at_k(rows, k),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "per_scenario": per_scenario,
        "per_rule": per_rule,
    }


def _fmt(x: object) -> str:
    return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


def _per_day(r: Report) -> list[str]:
    lines = []
    cp = r.get("card_precision_at_k")
    if cp:
        lines.append(
            f"card precision@{cp['k']} per day {cp['mean']:.4f} (± {cp['std']:.4f} over "
            f"{cp['days']} days)"
        )
    cal = r.get("calibration")
    if cal:
        lines.append(
            f"calibration: mean probability {cal['mean_probability']:.5f}, fraud rate "
            f"{cal['fraud_rate']:.5f}, Brier score {cal['brier']:.5f}"
        )
    return lines


def format_report(r: Report) -> str:
    c = r["confusion"]
    lines = [
        f"transactions {r['transactions']:,}   fraud {r['fraud']:,}",
        f"precision {_fmt(r['precision'])}   recall {_fmt(r['recall'])}   F1 {_fmt(r['f1'])}   "
        f"alert rate {_fmt(r['alert_rate'])}",
        f"ROC AUC {_fmt(r['roc_auc'])}   average precision {_fmt(r['average_precision'])}",
        *_per_day(r),
        "",
        "confusion          flagged    passed",
        f"  fraud        {c['tp']:>10,} {c['fn']:>9,}",
        f"  legit        {c['fp']:>10,} {c['tn']:>9,}",
        "",
        f"{'scenario':<28}{'fraud':>8}{'caught':>8}{'recall':>8}",
    ]
    for name, s in r["per_scenario"].items():
        lines.append(f"{name:<28}{s['fraud']:>8,}{s['caught']:>8,}{_fmt(s['recall']):>8}")
    lines += ["", f"{'rule':<28}{'fired':>9}{'on fraud':>9}{'precision':>10}{'recall':>8}"]
    for name, s in r["per_rule"].items():
        lines.append(
            f"{name:<28}{s['fired']:>9,}{s['on_fraud']:>9,}"
            f"{_fmt(s['precision']):>10}{_fmt(s['recall']):>8}"
        )
    return "\n".join(lines)
