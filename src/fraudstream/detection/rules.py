"""Rule types. Each rule sees one transaction at a time, in event time, and may fire a `Hit`.

Stateful rules keep their per-key state in the engine's `Tables` (compact columns), read it,
then update it with the transaction — so a rule sees every earlier transaction of its key,
whatever batch it came in.

    rule = Velocity("burst", key="source", window_ms=HOUR, max_count=10, weight=0.6)
    rule.bind(tables)
    hit = rule.apply(tx, tx.ts_ms)   # Hit(rule="burst", weight=0.6, reason="12 payments ...")
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import sys
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Protocol

import numpy as np

from fraudstream.detection.geo import km_between
from fraudstream.detection.kernels import dormant, small_then_large, travel, velocity_window
from fraudstream.detection.state import DAY, HOUR, MINUTE, Table, Tables
from fraudstream.schema import Transaction

__all__ = [
    "OPERATORS",
    "UNCHECKED",
    "DormantAccount",
    "FanIn",
    "Hit",
    "ImpossibleTravel",
    "ListMatch",
    "Rule",
    "Segment",
    "SmallThenLarge",
    "Sparse",
    "ThresholdRule",
    "Velocity",
    "describe_state",
    "human_duration",
    "short",
    "state_id",
    "threshold_problems",
    "tutorial_rules",
    "velocity_problems",
]


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    weight: float
    reason: str
    allow: bool = False  # an allow-list hit: the transaction is legit whatever else fired
    block: bool = False  # a block-list hit: fraud whatever the score (wins over allow)


class Rule(Protocol):
    """What the engine needs of a rule."""

    id: str
    weight: float

    def bind(self, tables: Tables) -> None: ...

    def apply(self, tx: Transaction, ts: int) -> Hit | None: ...


Sparse = list[tuple[int, Hit]]  # (index in the batch, hit) of the transactions that fired


def state_id(rule: Rule) -> str:
    """The name a rule's own state is stored under (its columns `<state id>.<column>`, its
    fan-in/out sets in the changelog): its `id`, then, for a rule whose state means something
    only for some of its parameters (`state_params`: a velocity ring's bucket width, the idle
    time that woke a dormant account, ...), a digest of those, as in `burst_1h@fa1d51af`.
    Change one of them and the state stored before is no longer the rule's: it starts over,
    where reading it under the new parameters would misread it. Its limits, weight and the
    parameters that only read the state (`max_count`, `within`, ...) keep the same id."""
    params = getattr(rule, "state_params", None)
    if params is None:
        return rule.id
    canonical = json.dumps(params(), sort_keys=True, separators=(",", ":"))
    return f"{rule.id}@{zlib.crc32(canonical.encode()):08x}"


def describe_state(rule: Rule) -> str:
    """What `state_id` digests, for people: "velocity: key=source, window=2 h, buckets=6, ..."."""
    params = getattr(rule, "state_params", None)
    if params is None:
        return "no state of its own"
    shown = []
    for name, value in params().items():
        if name == "type":
            continue
        if name.endswith("_ms"):
            name, value = name[: -len("_ms")], human_duration(int(value))
        shown.append(f"{name}={value}")
    return f"{params()['type']}: " + ", ".join(shown)


class Segment:
    """A run of transactions in which no eviction falls, as columns for the rules' batch
    paths (`apply_batch`): each column is built once, on first use, and shared.

    `rows(table, picked)` is `table.row(key, t)` for the picked transactions, in order; the
    rows found are remembered per table for the whole segment (rows stay where they are
    until an eviction), so a transaction's key is looked up once whatever the rules."""

    __slots__ = (
        "_amounts",
        "_cents",
        "_fields",
        "_present",
        "_rows",
        "_times",
        "ts",
        "txs",
    )

    def __init__(self, txs: Sequence[Transaction], ts: Sequence[int]) -> None:
        self.txs = txs
        self.ts = ts
        self._fields: dict[str, list[Any]] = {}
        self._present: dict[str, np.ndarray[Any, Any]] = {}
        self._rows: dict[str, np.ndarray[Any, Any]] = {}  # per table: -1 = not looked up
        self._times: np.ndarray[Any, Any] | None = None
        self._amounts: np.ndarray[Any, Any] | None = None
        self._cents: np.ndarray[Any, Any] | None = None

    def __len__(self) -> int:
        return len(self.txs)

    def field(self, name: str) -> list[Any]:
        """Each transaction's `name` (None where it has none)."""
        values = self._fields.get(name)
        if values is None:
            values = self._fields[name] = list(map(operator.attrgetter(name), self.txs))
        return values

    def present(self, name: str) -> np.ndarray[Any, Any]:
        """Where `name` is given (not None)."""
        mask = self._present.get(name)
        if mask is None:
            values = self.field(name)
            mask = self._present[name] = np.fromiter(
                map(operator.is_not, values, itertools.repeat(None)), np.bool_, len(values)
            )
        return mask

    @property
    def times(self) -> np.ndarray[Any, Any]:
        if self._times is None:
            self._times = np.array(self.ts, dtype=np.int64)
        return self._times

    @property
    def amounts(self) -> np.ndarray[Any, Any]:
        if self._amounts is None:
            self._amounts = np.array(self.field("amount"), dtype=np.float64)
        return self._amounts

    @property
    def cents(self) -> np.ndarray[Any, Any]:
        """`round(amount * 100)`, as `apply` rounds (half to even)."""
        if self._cents is None:
            self._cents = np.rint(self.amounts * 100).astype(np.int64)
        return self._cents

    def floats(self, name: str, picked: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        values = self.field(name)
        return np.array([values[k] for k in picked.tolist()], dtype=np.float64)

    def rows(self, table: Table, picked: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        found = self._rows.get(table.key)
        if found is None:
            found = self._rows[table.key] = np.full(len(self.txs), -1, dtype=np.int64)
        todo = picked[found[picked] < 0]  # not looked up by an earlier rule
        if todo.size:
            keys = self.field(table.key)
            found[todo] = table.rows([keys[k] for k in todo.tolist()], self.times[todo])
        rows: np.ndarray[Any, Any] = found[picked]
        return rows


def short(value: object) -> str:
    """An account id cut for a reason line: 'ab12cd34ef56' -> 'ab12cd…'."""
    text = str(value)
    return text if len(text) <= 8 else text[:6] + "…"


def human_duration(ms: int) -> str:
    for unit, size in (("d", DAY), ("h", HOUR), ("min", MINUTE)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms / 1000:g} s"


def _money(x: float) -> str:
    return f"{x:,.2f}"


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
    "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}


# The fields a threshold compares, by the kind of value they hold once decoded. The event
# time is not one of them (text or epoch milliseconds; the window rules are about time), nor is
# `decision` (an input's own is never trusted).
NUMBER_FIELDS = frozenset({"amount", "lat", "lon"})
TEXT_FIELDS = frozenset(
    {"source", "target", "currency", "id", "channel", "country", "merchant", "device"}
)
ORDERING = frozenset({">=", ">", "<=", "<"})
UNCHECKED: Any = object()  # a threshold's value not given: nothing to check


def threshold_problems(field: Any, op: Any, value: Any = UNCHECKED) -> list[str]:
    """Everything wrong with a threshold rule's field, operator and value, [] if nothing
    (a field or operator of None, a value UNCHECKED: not given, nothing to check). A value
    that does not fit its field or operator is refused here: the detector would otherwise
    fail on the first payment it compares, or (a text where `in` takes a list: its letters)
    flag payments the rule never meant."""
    problems = []
    known_op = isinstance(op, str) and op in OPERATORS
    if op is not None and not known_op:
        problems.append(f"unknown operator {op!r}; use one of {list(OPERATORS)}")
    if field is None:
        return problems
    if not (isinstance(field, str) and field in NUMBER_FIELDS | TEXT_FIELDS):
        if isinstance(field, str) and field in Transaction.__struct_fields__:
            problems.append(
                f"field {field!r} cannot be compared; use one of "
                f"{sorted(NUMBER_FIELDS)} or {sorted(TEXT_FIELDS)}"
            )
        else:
            problems.append(f"transactions have no field {field!r}")
        return problems
    if not known_op:
        return problems
    number = field in NUMBER_FIELDS
    if op in ORDERING and not number:
        problems.append(f"{field} is text: compare it with ==, !=, in or not in, not {op}")
        return problems
    if value is UNCHECKED:
        return problems
    kind = "a number" if number else "text"
    if op in ("in", "not in"):
        if not isinstance(value, list) or not value:
            problems.append(
                f"value: {op} takes a list, e.g. [{'100, 200' if number else 'EUR, USD'}], "
                f"got {value!r}"
            )
        elif wrong := [v for v in value if not _fits(v, number)]:
            problems.append(f"value: each item must be {kind}{_hint(wrong[0])}, got {wrong[0]!r}")
    elif not _fits(value, number):
        problems.append(f"value: {field} {op} takes {kind}{_hint(value)}, got {value!r}")
    return problems


def _fits(value: Any, number: bool) -> bool:
    if number:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _hint(value: Any) -> str:
    """YAML reads a bare yes/no/on/off (NO is Norway) as true/false."""
    return (
        " (quote it: YAML reads a bare yes, no, on or off as true or false)"
        if isinstance(value, bool)
        else ""
    )


@dataclass(slots=True)
class ThresholdRule:
    """Fires when ``tx.<field> <op> <value>`` holds (a missing optional field never fires)."""

    id: str
    field: str
    op: str
    value: Any
    weight: float = 1.0
    _compare: Callable[[Any, Any], bool] = dc_field(init=False, repr=False)

    def __post_init__(self) -> None:
        if problems := threshold_problems(self.field, self.op, self.value):
            raise ValueError("; ".join(problems))
        if self.op in ("in", "not in"):
            self.value = frozenset(self.value)
        self._compare = OPERATORS[self.op]

    def bind(self, tables: Tables) -> None:
        return None

    def apply(self, tx: Transaction, ts: int) -> Hit | None:
        actual = getattr(tx, self.field)
        if actual is None or not self._compare(actual, self.value):
            return None
        shown = sorted(self.value) if isinstance(self.value, frozenset) else self.value
        return Hit(self.id, self.weight, f"{self.field} {actual} {self.op} {shown}")

    def apply_batch(self, seg: Segment) -> Sparse:
        compare, value = self._compare, self.value
        txs, ts = seg.txs, seg.ts
        return [
            (k, self.apply(txs[k], ts[k]))  # type: ignore[misc]
            for k, v in enumerate(seg.field(self.field))
            if v is not None and compare(v, value)
        ]


class _Nothing:
    """A column that is not kept: reads 0, ignores writes."""

    def __getitem__(self, row: int) -> int:
        return 0

    def __setitem__(self, row: int, value: int) -> None:
        return None


_NOTHING = _Nothing()


def velocity_problems(
    window_ms: int | None, buckets: int | None, max_count: Any, max_sum: Any
) -> list[str]:
    """Everything wrong with a velocity rule's limits and window, [] if nothing (a window or
    buckets of None: not known, not checked)."""
    problems = []
    if max_count is None and max_sum is None:
        problems.append("give max_count, max_sum or both")
    if buckets is not None and buckets < 1:
        problems.append(f"buckets must be 1 or more, got {buckets}")
    elif window_ms is not None and buckets is not None and window_ms % buckets:
        problems.append(f"window must split into {buckets} equal buckets")
    return problems


@dataclass(slots=True)
class Velocity:
    """Count and/or sum of payments per key over a sliding event-time window.

    The window is kept as `buckets` time buckets (a ring), so the state per key is fixed-size;
    the count covers the current bucket and the `buckets - 1` before it.
    """

    id: str
    key: str
    window_ms: int
    max_count: int | None = None
    max_sum: float | None = None
    weight: float = 1.0
    buckets: int = 6
    min_amount: float = 0.0  # count only payments in [min_amount, max_amount)
    max_amount: float = math.inf
    _cols: list[Any] = dc_field(default_factory=list, repr=False)
    _table: Any = dc_field(default=None, repr=False)
    _head: Any = dc_field(default=None, repr=False)
    _width: int = 0

    def __post_init__(self) -> None:
        if problems := velocity_problems(
            self.window_ms, self.buckets, self.max_count, self.max_sum
        ):
            raise ValueError("; ".join(problems))
        self._width = self.window_ms // self.buckets

    def state_params(self) -> dict[str, object]:
        """What its state means depends on (see `state_id`): the ring (window, buckets: a
        slot is a bucket id modulo `buckets`, the head a bucket id of the width), the
        payments it counts and which of counts and sums it keeps. Not the limits' values."""
        return {
            "type": "velocity",
            "key": self.key,
            "window_ms": int(self.window_ms),
            "buckets": int(self.buckets),
            "min_amount": float(self.min_amount),
            "max_amount": float(self.max_amount),
            "counts": self.max_count is not None,
            "sums": self.max_sum is not None,
        }

    def bind(self, tables: Tables) -> None:
        # A ring of `buckets` slots per key: the newest bucket id, then per slot a count
        # (2 bytes, for max_count) and a sum in cents (4 bytes, for max_sum) — only the ones
        # the limits need are kept.
        t = self._table = tables[self.key]
        name = state_id(self)
        self._head = t.column(f"{name}.head", "i", -1)
        counts, sums = self.max_count is not None, self.max_sum is not None
        self._cols = [
            (
                t.column(f"{name}.n{i}", "H", 0) if counts else _NOTHING,
                t.column(f"{name}.s{i}", "i", 0) if sums else _NOTHING,
            )
            for i in range(self.buckets)
        ]

    def apply(self, tx: Transaction, ts: int) -> Hit | None:
        key = getattr(tx, self.key)
        if key is None or not self.min_amount <= tx.amount < self.max_amount:
            return None
        row = self._table.row(key, ts)
        buckets, cols = self.buckets, self._cols
        bid = ts // self._width
        head = self._head[row]
        if bid > head:  # the window moves on: empty the slots it passes
            for b in range(max(head + 1, bid - buckets + 1), bid + 1):
                n, s = cols[b % buckets]
                n[row] = s[row] = 0
            self._head[row] = head = bid
        if bid > head - buckets:  # else older than the whole window: it counts nowhere
            n, s = cols[bid % buckets]
            n[row] = min(n[row] + 1, 65_535)
            s[row] = min(s[row] + round(tx.amount * 100), 2**31 - 1)
        count = total = 0
        for b in range(max(bid, head) - buckets + 1, min(bid, head) + 1):
            if b > head - buckets:
                n, s = cols[b % buckets]
                count += n[row]
                total += s[row]
        return self._hit(key, count, total, tx.currency)

    def _hit(self, key: str, count: int, total: int, currency: str) -> Hit | None:
        """The hit for a payment whose window holds `count` payments and `total` cents."""
        if self.max_count is not None and count > self.max_count:
            span, who = human_duration(self.window_ms), f"{self.key} {short(key)}"
            band = ""
            if self.min_amount > 0 or self.max_amount < math.inf:
                band = f" of {_money(self.min_amount)} to {_money(self.max_amount)}"
            return Hit(
                self.id,
                self.weight,
                f"{count} payments{band} in {span} from {who}, limit {self.max_count}",
            )
        if self.max_sum is not None and total / 100 > self.max_sum:
            span, who = human_duration(self.window_ms), f"{self.key} {short(key)}"
            return Hit(
                self.id,
                self.weight,
                f"{_money(total / 100)} {currency} in {span} "
                f"from {who}, limit {_money(self.max_sum)}",
            )
        return None

    def apply_batch(self, seg: Segment) -> Sparse:
        """`apply` to each transaction in order, the window arithmetic in one compiled pass:
        the same state and hits."""
        amounts = seg.amounts
        picked = np.flatnonzero(
            seg.present(self.key) & (self.min_amount <= amounts) & (amounts < self.max_amount)
        )
        if not picked.size:
            return []
        counts, totals = velocity_window(
            seg.rows(self._table, picked),
            seg.times[picked],
            seg.cents[picked],
            self._width,
            self.buckets,
            self._head,
            [n for n, _ in self._cols] if self.max_count is not None else None,
            [s for _, s in self._cols] if self.max_sum is not None else None,
            view=self._table.view,
        )
        fired = np.zeros(len(picked), dtype=bool)
        if self.max_count is not None:
            fired |= counts > self.max_count
        if self.max_sum is not None:
            fired |= totals / 100 > self.max_sum
        keys, txs, out = seg.field(self.key), seg.txs, []
        for j in np.flatnonzero(fired).tolist():
            k = int(picked[j])
            hit = self._hit(keys[k], int(counts[j]), int(totals[j]), txs[k].currency)
            assert hit is not None
            out.append((k, hit))
        return out


@dataclass(slots=True)
class FanIn:
    """N distinct counterparties paying one key (fan-in) or paid by one key (fan-out).

    fan-in: key=target, by=source; fan-out: key=source, by=target. With `same_amount`,
    only payments of exactly the same amount count together (the tutorial's
    50 payments of 1000 EUR).
    Only payments of at least `min_amount` are tracked, which keeps the state small.
    """

    id: str
    key: str
    by: str
    window_ms: int
    min_distinct: int
    same_amount: bool = False
    min_amount: float = 0.0
    weight: float = 1.0
    _seen: dict[str, dict[str, int]] = dc_field(default_factory=dict, repr=False)
    # While a transaction is open: each group touched -> a copy of it before (None: new).
    journal: dict[str, dict[str, int] | None] | None = dc_field(default=None, repr=False)
    _last_sweep: int = 0
    _sweep_at_begin: int = 0

    def state_params(self) -> dict[str, object]:
        """What its sets mean depends on (see `state_id`): which payments they hold (key, by,
        grouped by amount, from `min_amount`) and over what window they were trimmed. Not
        `min_distinct` (with it, only how soon members already out of the window go)."""
        return {
            "type": "fan",
            "key": self.key,
            "by": self.by,
            "window_ms": int(self.window_ms),
            "same_amount": bool(self.same_amount),
            "min_amount": float(self.min_amount),
        }

    def bind(self, tables: Tables) -> None:
        return None

    def apply(self, tx: Transaction, ts: int) -> Hit | None:
        key, other = getattr(tx, self.key), getattr(tx, self.by)
        if key is None or other is None or tx.amount < self.min_amount:
            return None
        group = f"{key}|{tx.amount:.2f}" if self.same_amount else key
        members = self._seen.get(group)
        if self.journal is not None and group not in self.journal:
            self.journal[group] = dict(members) if members is not None else None
        if members is None:
            members = self._seen[group] = {}
        if members.get(other, -1) < ts:
            members[other] = ts
        horizon = ts - self.window_ms
        distinct = sum(1 for t in members.values() if horizon < t <= ts)
        if len(members) > 2 * self.min_distinct:  # trim what fell out of the window
            for k in [k for k, t in members.items() if t <= horizon]:
                del members[k]
        if ts - self._last_sweep > self.window_ms:
            self._sweep(horizon)
            self._last_sweep = ts
        if distinct >= self.min_distinct:
            amount = f" of {_money(tx.amount)} {tx.currency}" if self.same_amount else ""
            verb = "paying" if self.key == "target" else "paid by"
            return Hit(
                self.id,
                self.weight,
                f"{distinct} distinct {self.by}s {verb} {self.key} {short(key)}{amount} "
                f"in {human_duration(self.window_ms)}, limit {self.min_distinct - 1}",
            )
        return None

    def apply_batch(self, seg: Segment) -> Sparse:
        """`apply` to the transactions it tracks (both keys given, at least `min_amount`), in
        order: the others change nothing and never fire, so they are skipped in one numpy
        pass instead of one call each."""
        picked = np.flatnonzero(
            seg.present(self.key) & seg.present(self.by) & (seg.amounts >= self.min_amount)
        )
        txs, ts, out = seg.txs, seg.ts, []
        for k in picked.tolist():
            hit = self.apply(txs[k], ts[k])
            if hit is not None:
                out.append((k, hit))
        return out

    def _sweep(self, horizon: int) -> None:
        for group in [g for g, m in self._seen.items() if max(m.values()) <= horizon]:
            if self.journal is not None and group not in self.journal:
                self.journal[group] = dict(self._seen[group])
            del self._seen[group]

    # --- transactions and the changelog ----------------------------------------------------

    def begin(self) -> None:
        self.journal = {}
        self._sweep_at_begin = self._last_sweep

    def changes(self) -> list[tuple[str, dict[str, int] | None]]:
        """Each group touched in the open transaction, as it is now (None: gone)."""
        return [(g, self._seen.get(g)) for g in self.journal or ()]

    def rollback(self) -> None:
        journal, self.journal = self.journal or {}, None
        self._last_sweep = self._sweep_at_begin  # a redo sweeps where the first try did
        for group, before in journal.items():
            if before is None:
                self._seen.pop(group, None)
            else:
                self._seen[group] = before

    def commit(self) -> None:
        self.journal = None

    def swept(self) -> int | None:
        """When it last swept, if it did in the open transaction (else None). The sweep drops
        whole groups gone out of the window of the payment that ran it; a payment later in
        the stream but earlier in time (a late one) would have counted their members, so
        when it sweeps is part of the state: a restore that forgot it swept at its first
        payment, and a late payment then decided otherwise than without the restart."""
        return self._last_sweep if self._last_sweep != self._sweep_at_begin else None

    def load_sweep(self, at: int) -> None:
        self._last_sweep = self._sweep_at_begin = at

    def load_group(self, group: str, members: dict[str, int] | None) -> None:
        if members is None:
            self._seen.pop(group, None)
        else:
            self._seen[group] = members

    def allocated(self) -> int:
        """Bytes of the windowed counterparty sets (keys counted too)."""
        return sys.getsizeof(self._seen) + sum(
            sys.getsizeof(g) + sys.getsizeof(m) + sum(sys.getsizeof(k) for k in m)
            for g, m in self._seen.items()
        )


@dataclass(slots=True)
class DormantAccount:
    """Payments of at least `min_amount` by a key that woke up after `idle_ms` of silence:
    the first one, and the others within `awake_ms` of waking."""

    id: str
    key: str
    idle_ms: int
    min_amount: float
    weight: float = 1.0
    awake_ms: int = DAY
    _table: Any = dc_field(default=None, repr=False)
    _last: Any = dc_field(default=None, repr=False)
    _woke: Any = dc_field(default=None, repr=False)
    _idle: Any = dc_field(default=None, repr=False)

    def state_params(self) -> dict[str, object]:
        """What its own columns (when the key woke, after how long) mean depends on: the idle
        time that counts as waking (see `state_id`). The last activity is shared by every
        dormant rule on the key, and means the same for all."""
        return {"type": "dormant", "key": self.key, "idle_ms": int(self.idle_ms)}

    def bind(self, tables: Tables) -> None:
        self._table = tables[self.key]
        name = state_id(self)
        self._last = self._table.column("last_ts", "q", 0)
        self._woke = self._table.column(f"{name}.woke_ts", "q", 0)
        self._idle = self._table.column(f"{name}.idle_d", "i", 0)

    def apply(self, tx: Transaction, ts: int) -> Hit | None:
        key = getattr(tx, self.key)
        if key is None:
            return None
        row = self._table.row(key, ts)
        last = self._last[row]
        if ts > last:
            self._last[row] = ts
        if last and ts - last >= self.idle_ms:
            self._woke[row], self._idle[row] = ts, (ts - last) // DAY
        woke = self._woke[row]
        if woke and tx.amount >= self.min_amount and 0 <= ts - woke <= self.awake_ms:
            return self._hit(tx, key, self._idle[row])
        return None

    def _hit(self, tx: Transaction, key: str, idle_days: int) -> Hit:
        return Hit(
            self.id,
            self.weight,
            f"{_money(tx.amount)} {tx.currency} from {self.key} {short(key)}, "
            f"active again after {idle_days} days without activity",
        )

    def apply_batch(self, seg: Segment) -> Sparse:
        picked = np.flatnonzero(seg.present(self.key))
        if not picked.size:
            return []
        rows = seg.rows(self._table, picked)
        fired, idle_days = dormant(
            rows,
            seg.times[picked],
            seg.amounts[picked] >= self.min_amount,
            int(self.idle_ms),
            int(self.awake_ms),
            self._last,
            self._woke,
            self._idle,
            view=self._table.view,
        )
        keys, txs = seg.field(self.key), seg.txs
        return [
            (k, self._hit(txs[k], keys[k], int(idle_days[j])))
            for j in np.flatnonzero(fired).tolist()
            for k in (int(picked[j]),)
        ]


@dataclass(slots=True)
class SmallThenLarge:
    """Card testing: a payment of at most `small_max`, then one of `large_min` or more."""

    id: str
    key: str
    small_max: float
    large_min: float
    within_ms: int
    weight: float = 1.0
    _table: Any = dc_field(default=None, repr=False)
    _small: Any = dc_field(default=None, repr=False)

    def state_params(self) -> dict[str, object]:
        """What its column (the time of the last small payment) means depends on: what is
        small (see `state_id`). Not `large_min` or `within`: they only read it."""
        return {"type": "small_then_large", "key": self.key, "small_max": float(self.small_max)}

    def bind(self, tables: Tables) -> None:
        self._table = tables[self.key]
        self._small = self._table.column(f"{state_id(self)}.small_ts", "q", 0)

    def apply(self, tx: Transaction, ts: int) -> Hit | None:
        key = getattr(tx, self.key)
        if key is None:
            return None
        row = self._table.row(key, ts)
        if tx.amount <= self.small_max:
            self._small[row] = max(self._small[row], ts)
            return None
        small = self._small[row]
        if small and tx.amount >= self.large_min and 0 <= ts - small <= self.within_ms:
            return self._hit(tx, key, ts - small)
        return None

    def _hit(self, tx: Transaction, key: str, after_ms: int) -> Hit:
        return Hit(
            self.id,
            self.weight,
            f"{_money(tx.amount)} {tx.currency} {human_duration(max(after_ms, 1000))} "
            f"after a test payment of at most {_money(self.small_max)} "
            f"from {self.key} {short(key)}",
        )

    def apply_batch(self, seg: Segment) -> Sparse:
        picked = np.flatnonzero(seg.present(self.key))
        if not picked.size:
            return []
        rows = seg.rows(self._table, picked)
        times = seg.times[picked]
        fired, small_at = small_then_large(
            rows,
            times,
            seg.amounts[picked],
            float(self.small_max),
            float(self.large_min),
            int(self.within_ms),
            self._small,
            view=self._table.view,
        )
        keys, txs = seg.field(self.key), seg.txs
        return [
            (k, self._hit(txs[k], keys[k], int(times[j] - small_at[j])))
            for j in np.flatnonzero(fired).tolist()
            for k in (int(picked[j]),)
        ]


@dataclass(slots=True)
class ImpossibleTravel:
    """Two payments of one key from places too far apart for the time between them.

    Its columns (the key's last place and when) are shared by every travel rule on the key
    and mean the same whatever the speed and distance limits: none of its own (`state_id`)."""

    id: str
    key: str
    max_speed_kmh: float
    min_distance_km: float = 100.0
    weight: float = 1.0
    _table: Any = dc_field(default=None, repr=False)
    _cols: Any = dc_field(default=None, repr=False)

    def bind(self, tables: Tables) -> None:
        t = self._table = tables[self.key]
        self._cols = (
            t.column("lat", "f", 0.0),
            t.column("lon", "f", 0.0),
            t.column("loc_ts", "q", 0),
        )

    def apply(self, tx: Transaction, ts: int) -> Hit | None:
        key = getattr(tx, self.key)
        if key is None or tx.lat is None or tx.lon is None:
            return None
        row = self._table.row(key, ts)
        lat, lon, when = self._cols
        prev_ts = when[row]
        hit = None
        if prev_ts and ts >= prev_ts:
            km = km_between(lat[row], lon[row], tx.lat, tx.lon)
            hours = max((ts - prev_ts) / HOUR, 1 / 60)
            if km >= self.min_distance_km and km / hours > self.max_speed_kmh:
                hit = self._hit(key, km, ts - prev_ts)
        if ts >= prev_ts:
            lat[row], lon[row], when[row] = tx.lat, tx.lon, ts
        return hit

    def _hit(self, key: str, km: float, after_ms: int) -> Hit:
        hours = max(after_ms / HOUR, 1 / 60)
        return Hit(
            self.id,
            self.weight,
            f"{km:,.0f} km in {human_duration(max(after_ms, 1000))} "
            f"from {self.key} {short(key)} ({km / hours:,.0f} km/h, "
            f"limit {self.max_speed_kmh:,.0f})",
        )

    def apply_batch(self, seg: Segment) -> Sparse:
        picked = np.flatnonzero(seg.present(self.key) & seg.present("lat") & seg.present("lon"))
        if not picked.size:
            return []
        rows = seg.rows(self._table, picked)
        times = seg.times[picked]
        lat, lon, when = self._cols
        fired, km, prev_at = travel(
            rows,
            times,
            seg.floats("lat", picked),
            seg.floats("lon", picked),
            float(self.max_speed_kmh),
            float(self.min_distance_km),
            lat,
            lon,
            when,
            view=self._table.view,
        )
        keys = seg.field(self.key)
        return [
            (k, self._hit(keys[k], float(km[j]), int(times[j] - prev_at[j])))
            for j in np.flatnonzero(fired).tolist()
            for k in (int(picked[j]),)
        ]


@dataclass(slots=True)
class ListMatch:
    """`tx.<field>` is on a reference list; optionally only between two dates (a lockdown).

    With `allow`, a match makes the transaction legit whatever else fired (an allow-list);
    with `block`, fraud whatever the score (a block list; it wins over an allow-list).
    """

    id: str
    field: str
    values: Collection[str]
    list_name: str
    weight: float = 1.0
    allow: bool = False
    block: bool = False
    from_ms: int | None = None
    until_ms: int | None = None

    def bind(self, tables: Tables) -> None:
        self.values = frozenset(self.values)

    def apply(self, tx: Transaction, ts: int) -> Hit | None:
        value = getattr(tx, self.field)
        if value is None or value not in self.values:
            return None
        if (self.from_ms is not None and ts < self.from_ms) or (
            self.until_ms is not None and ts >= self.until_ms
        ):
            return None
        action = " (blocked: fraud whatever the score)" if self.block else ""
        return Hit(
            self.id,
            self.weight,
            f"{self.field} {short(value)} is on the list {self.list_name}{action}",
            allow=self.allow,
            block=self.block,
        )

    def apply_batch(self, seg: Segment) -> Sparse:
        values, txs, ts = self.values, seg.txs, seg.ts
        field = seg.field(self.field)
        assert isinstance(values, frozenset)  # made one by `bind`
        if values.isdisjoint(field):  # nearly always: nobody in the batch is on the list
            return []
        out = []
        for k, v in enumerate(field):
            if v is not None and v in values:
                hit = self.apply(txs[k], ts[k])
                if hit is not None:
                    out.append((k, hit))
        return out


def tutorial_rules() -> list[Rule]:
    """The tutorials' single rule: an amount of 900 or more is fraud."""
    return [ThresholdRule("amount_ge_900", "amount", ">=", 900, weight=1.0)]


RULE_TYPES: Mapping[str, type] = {
    "threshold": ThresholdRule,
    "velocity": Velocity,
    "fan_in": FanIn,
    "fan_out": FanIn,
    "dormant": DormantAccount,
    "small_then_large": SmallThenLarge,
    "impossible_travel": ImpossibleTravel,
    "list": ListMatch,
}
