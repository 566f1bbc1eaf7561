"""Keyed event-time state, stored compactly: one row per key, typed columns.

A `Table` maps a key (an account, a target, ...) to a row number; each column is an
`array.array` of one machine type, so an account's state costs its bytes, not Python objects.
Rows are recycled when a key has been idle longer than the table's retention (in event time).
`Table.dump_row` / `load_row` turn one key's state into bytes and back (for a changelog).

    accounts = Table("source", retention_ms=400 * DAY)
    last_ts = accounts.column("last_ts", "q", default=0)
    row = accounts.row("ab12", now_ms)
    last_ts[row] = now_ms
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field

__all__ = ["DAY", "HOUR", "MINUTE", "Column", "Table", "Tables"]

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass
class Column:
    name: str
    typecode: str
    default: int | float
    data: array  # type: ignore[type-arg]


class Table:
    """Rows of typed columns keyed by a string; idle keys are evicted in event time."""

    def __init__(self, key: str, *, retention_ms: int) -> None:
        self.key = key
        self.retention_ms = retention_ms
        self.index: dict[str, int] = {}
        self.columns: dict[str, Column] = {}
        self._free: list[int] = []
        self._size = 0
        self._seen = self.column("_seen", "q", 0)  # last event time touching the row

    def column(self, name: str, typecode: str, default: int | float) -> array:  # type: ignore[type-arg]
        """Declare (or get) a column; returns its array, indexed by row."""
        if name in self.columns:
            return self.columns[name].data
        data = array(typecode, [default]) * self._size if self._size else array(typecode)
        self.columns[name] = Column(name, typecode, default, data)
        return data

    def row(self, key: str, ts: int) -> int:
        """The key's row, created with defaults when new; marks it seen at `ts`."""
        index = self.index
        r = index.get(key)
        if r is None:
            r = self._new_row()
            index[key] = r
        seen = self._seen
        if ts > seen[r]:
            seen[r] = ts
        return r

    def find(self, key: str) -> int | None:
        return self.index.get(key)

    def _new_row(self) -> int:
        if self._free:
            r = self._free.pop()
            for col in self.columns.values():
                col.data[r] = col.default
            return r
        r = self._size
        self._size += 1
        for col in self.columns.values():
            col.data.append(col.default)
        return r

    def evict(self, now_ms: int) -> int:
        """Forget keys idle for longer than the retention; returns how many."""
        horizon = now_ms - self.retention_ms
        seen = self._seen
        old = [k for k, r in self.index.items() if seen[r] < horizon]
        for k in old:
            self._free.append(self.index.pop(k))
        return len(old)

    def __len__(self) -> int:
        return len(self.index)

    # --- compact serialisation of one key's state ------------------------------------------

    def _struct(self) -> struct.Struct:
        return struct.Struct("<" + "".join(c.typecode for c in self.columns.values()))

    def dump_row(self, key: str) -> bytes | None:
        r = self.index.get(key)
        if r is None:
            return None
        return self._struct().pack(*(c.data[r] for c in self.columns.values()))

    def load_row(self, key: str, blob: bytes) -> None:
        values = self._struct().unpack(blob)
        r = self.index.get(key)
        if r is None:
            r = self._new_row()
            self.index[key] = r
        for col, value in zip(self.columns.values(), values, strict=True):
            col.data[r] = value

    def nbytes(self) -> int:
        """Bytes held by the columns (the index dict is measured separately)."""
        return sum(c.data.itemsize * len(c.data) for c in self.columns.values())


@dataclass
class Tables:
    """The engine's tables, one per key field, created on first use."""

    retention_ms: int = 400 * DAY
    tables: dict[str, Table] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Table:
        t = self.tables.get(key)
        if t is None:
            t = self.tables[key] = Table(key, retention_ms=self.retention_ms)
        return t

    def evict(self, now_ms: int) -> int:
        return sum(t.evict(now_ms) for t in self.tables.values())
