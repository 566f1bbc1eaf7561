"""Keyed event-time state, stored compactly: one row per key, typed columns.

A `Table` maps a key (an account, a target, ...) to a row number; each column is an
`array.array` of one machine type, so an account's state costs its bytes, not Python objects.
Rows are recycled when a key has been idle longer than the table's retention (in event time).
`Table.dump_row` / `load_row` turn one key's state into bytes and back (for a changelog):
the columns packed after a 4-byte layout id. `describe()` says which columns a layout id
stands for; a row of another layout (rules changed since it was written) is loaded column by
column, by name, once its description is known (`learn_layout`): columns in both keep their
values (same name and type), new ones start from defaults, dropped ones are ignored.

    accounts = Table("source", retention_ms=400 * DAY)
    last_ts = accounts.column("last_ts", "q", default=0)
    row = accounts.row("ab12", now_ms)
    last_ts[row] = now_ms
"""

from __future__ import annotations

import itertools
import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numba
import numpy as np

from fraudstream.detection.keyhash import key_hash, key_hashes
from fraudstream.errors import FraudstreamError

__all__ = ["DAY", "HOUR", "MINUTE", "Column", "KeyIndex", "LayoutError", "Table", "Tables"]

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


class LayoutError(FraudstreamError):
    """A stored row of a layout whose description was never seen."""


_LAYOUT = struct.Struct("<I")
# Below this many rows, `Table._images` packs rows one by one (about 0.06 µs per column and
# row) rather than gathering columns with numpy (about 1.1 µs per column, 0.2 µs per row):
# measured on tables of 20 to 48 columns, the two cross between 10 and 20 rows
IMAGE_ROWS = 16
# A table's columns grow by this many rows at least (an eighth of them beyond that), so that
# its numpy views (`Table.view`) outlive most steps: each costs about 0.8 µs to make
GROW_ROWS = 256
_DTYPES = {code: np.dtype(code) for code in "bBhHiIlLqQfd"}


@dataclass
class Column:
    name: str
    typecode: str
    default: int | float
    data: array  # type: ignore[type-arg]


class KeyIndex:
    """Key -> row, as an open-addressing table of (64-bit key hash, row): 12 bytes a slot,
    at most half full, instead of a dict holding every key string (~130 bytes a key).

    Two keys with the same 64-bit hash would share a row; with a million keys the chance
    that any pair does is about 3 in 100 million. The hashes are `keyhash.key_hash`'s: keyed
    with this installation's secret, so a snapshot of the index is valid in the next process.
    """

    def __init__(self, capacity: int = 16) -> None:
        size = 16
        while size < 2 * capacity:
            size *= 2
        self._hashes = array("q", [0]) * size
        self._rows = array("i", [0]) * size
        self._mask = size - 1
        self._count = 0
        # numpy views of the two arrays (`find_all`), made once: both arrays are replaced,
        # never resized, when the index grows (`_rebuild`) or loads, which drop the views
        self._views: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None = None

    def __len__(self) -> int:
        return self._count

    def get(self, key: str) -> int | None:
        return self.lookup(key_hash(key))

    def lookup(self, h: int) -> int | None:
        """The row of the key whose hash is `h` (`key_hash`), None if absent."""
        hashes, mask = self._hashes, self._mask
        i = h & mask
        while True:
            x = hashes[i]
            if x == h:
                return self._rows[i]
            if x == 0:
                return None
            i = (i + 1) & mask

    def find_all(self, hashes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """`get` of many keys given as their hashes (`key_hashes`): each one's row, -1 where
        absent, in one compiled pass."""
        out = np.empty(hashes.shape[0], dtype=np.int64)
        views = self._views
        if views is None:
            views = self._views = (
                np.frombuffer(self._hashes, dtype=np.int64),
                np.frombuffer(self._rows, dtype=np.int32),
            )
        _probe(hashes, views[0], views[1], self._mask, out)
        return out

    def put(self, key: str, row: int) -> None:
        """Add a key that is not in the index yet."""
        self.insert(key_hash(key), row)

    def insert(self, h: int, row: int) -> None:
        """`put` of a key given as its hash."""
        if 2 * (self._count + 1) > len(self._hashes):
            self._rebuild(2 * (self._count + 1))
        self._insert(h, row)

    def _insert(self, h: int, row: int) -> None:
        hashes, mask = self._hashes, self._mask
        i = h & mask
        while hashes[i] != 0:
            i = (i + 1) & mask
        hashes[i], self._rows[i] = h, row
        self._count += 1

    def allocated(self) -> int:
        return sys.getsizeof(self._hashes) + sys.getsizeof(self._rows)

    def rows(self) -> list[int]:
        """The row of every key."""
        return [r for h, r in zip(self._hashes, self._rows, strict=True) if h != 0]

    def stale_rows(self, seen: array, horizon: int) -> list[int]:  # type: ignore[type-arg]
        """Rows whose last event time is before `horizon`, in slot order (one numpy pass)."""
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        rows = np.frombuffer(self._rows, dtype=np.int32)[hashes != 0]
        last = np.frombuffer(seen, dtype=np.int64)
        stale: list[int] = rows[last[rows] < horizon].tolist()
        del hashes, last  # views of the arrays: they may grow again
        return stale

    def stale_hashes(self, seen: array, horizon: int) -> np.ndarray[Any, Any]:  # type: ignore[type-arg]
        """The key hashes of `stale_rows`' rows, but those never seen (`seen` 0: a key put
        back to defaults, as good as absent), in one numpy pass."""
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        used = hashes != 0
        rows = np.frombuffer(self._rows, dtype=np.int32)[used]
        last = np.frombuffer(seen, dtype=np.int64)[rows]
        stale: np.ndarray[Any, Any] = hashes[used][(last < horizon) & (last > 0)].copy()
        del hashes, last  # views of the arrays: they may grow again
        return stale

    def _rebuild(self, capacity: int, drop: frozenset[int] = frozenset()) -> None:
        """Re-insert every entry (but rows in `drop`) into a table for `capacity` keys."""
        fresh = KeyIndex(capacity)
        for h, r in zip(self._hashes, self._rows, strict=True):  # no list: no memory peak
            if h != 0 and r not in drop:
                fresh._insert(h, r)
        self._hashes, self._rows = fresh._hashes, fresh._rows
        self._mask, self._count = fresh._mask, fresh._count
        self._views = None

    def dump(self) -> tuple[bytes, bytes, int, int]:
        """The index as raw arrays (its hashes are `key_hash`'s: valid only where that gives
        the same values, see `Engine.layout`)."""
        return self._hashes.tobytes(), self._rows.tobytes(), self._mask, self._count

    def load(self, dumped: tuple[bytes, bytes, int, int]) -> None:
        hashes, rows, self._mask, self._count = dumped
        self._views = None
        self._hashes = array("q")
        self._hashes.frombytes(hashes)
        self._rows = array("i")
        self._rows.frombytes(rows)

    def drop_rows(self, rows: list[int]) -> None:
        """Forget the keys of these rows (after an eviction)."""
        if rows:
            self._rebuild(self._count - len(rows), frozenset(rows))


class Table:
    """Rows of typed columns keyed by a string; idle keys are evicted in event time."""

    def __init__(self, key: str, *, retention_ms: int) -> None:
        self.key = key
        self.retention_ms = retention_ms
        self.index = KeyIndex()
        self.columns: dict[str, Column] = {}
        self._free: list[int] = []
        self._size = 0  # rows made (in use or free)
        self._capacity = 0  # rows every column holds: `_size` and a reserve of defaults
        # numpy views of the columns, by id of their array (`view`); dropped before the
        # columns grow (an array refuses to resize while a view of it exists)
        self._views: dict[int, np.ndarray[Any, Any]] = {}
        self._packer: struct.Struct | None = None
        self._arrays: list[array] = []  # type: ignore[type-arg]  # the columns' arrays, in order (`_dump`)
        self._image: np.dtype[Any] | None = None  # a packed row as a numpy record (`_images`)
        self._layout_id: int | None = None
        # other layouts seen: their packing and (name, typecode) of their columns
        self._layouts: dict[int, tuple[struct.Struct, list[tuple[str, str]]]] = {}
        # While a transaction is open: each key touched -> its row before (None: it was new).
        self.journal: dict[str, bytes | None] | None = None
        self._seen = self.column("_seen", "q", 0)  # last event time touching the row

    def column(self, name: str, typecode: str, default: int | float) -> array:  # type: ignore[type-arg]
        """Declare (or get) a column; returns its array, indexed by row."""
        if name in self.columns:
            return self.columns[name].data
        data = array(typecode, [default]) * self._capacity if self._capacity else array(typecode)
        self.columns[name] = Column(name, typecode, default, data)
        self._packer = None
        self._image = None
        self._layout_id = None
        return data

    def row(self, key: str, ts: int) -> int:
        """The key's row, created with defaults when new; marks it seen at `ts`."""
        index = self.index
        h = key_hash(key)
        r = index.lookup(h)
        journal = self.journal
        if journal is not None and key not in journal:
            journal[key] = None if r is None else self._dump(r)
        if r is None:
            r = self._new_row()
            index.insert(h, r)
        seen = self._seen
        if ts > seen[r]:
            seen[r] = ts
        return r

    def rows(self, keys: list[str], ts: Sequence[int]) -> np.ndarray[Any, Any]:
        """`row(key, t)` for each pair in order, the keys looked up and the rows marked seen
        in compiled passes; only keys new to the table, and the before-images of the rows a
        transaction touches first (packed in one pass), are handled one by one. The same
        rows, index and journal as `row` called on each pair in order (a property test)."""
        n = len(keys)
        hashes = key_hashes(keys)
        found = self.index.find_all(hashes)
        journal = self.journal
        if journal is not None:
            at = dict(zip(keys, found.tolist(), strict=True))  # each key once, in order
            first = [k for k in at if k not in journal]
            if first:
                # new (its row is made below): None; else its image, taken before the rows
                # change (`seen` is part of them)
                journal.update(dict.fromkeys(first))
                existing = [k for k in first if at[k] >= 0]
                if existing:
                    images = self._images([at[k] for k in existing])
                    journal.update(zip(existing, images, strict=True))
        missing = np.flatnonzero(found < 0)
        if missing.size:  # new keys: a row each, in order of first sight, as `row` makes them
            made: dict[str, int] = {}
            index = self.index
            for k in missing.tolist():
                key = keys[k]
                r = made.get(key)
                if r is None:
                    r = made[key] = self._new_row()
                    index.insert(int(hashes[k]), r)
                found[k] = r
        _see(found, np.fromiter(ts, np.int64, n), self.view(self._seen))
        return found

    def find(self, key: str) -> int | None:
        return self.index.get(key)

    def _new_row(self) -> int:
        if self._free:
            r = self._free.pop()
            for col in self.columns.values():
                col.data[r] = col.default
            return r
        r = self._size
        if r == self._capacity:  # a reserve of rows at once: columns grow seldom
            more = max(GROW_ROWS, self._capacity // 8)
            self._views.clear()
            for col in self.columns.values():
                col.data.extend(array(col.typecode, [col.default]) * more)
            self._capacity += more
        self._size += 1
        return r

    def view(self, data: array) -> np.ndarray[Any, Any]:  # type: ignore[type-arg]
        """A numpy view of one of its columns (writes go to the column), made once and kept
        until the columns grow: hold none past a call that may add a row (`row`, `rows`,
        `load_row`), which would otherwise fail to grow them."""
        views = self._views
        v = views.get(id(data))
        if v is None:
            # (a view of another table's column, kept here, would stop that table growing)
            assert any(c.data is data for c in self.columns.values()), "not this table's"
            v = views[id(data)] = np.frombuffer(data, dtype=_DTYPES[data.typecode])
        return v

    def evict(self, now_ms: int) -> int:
        """Forget keys idle for longer than the retention; returns how many."""
        horizon = now_ms - self.retention_ms
        stale = self.index.stale_rows(self._seen, horizon)
        self.index.drop_rows(stale)
        self._free += stale
        return len(stale)

    def stale_hashes(self, now_ms: int) -> np.ndarray[Any, Any]:
        """The key hashes of the rows `evict(now_ms)` would forget that hold something (a
        key restored from a tombstone is kept as a row of defaults: nothing to delete)."""
        return self.index.stale_hashes(self._seen, now_ms - self.retention_ms)

    def __len__(self) -> int:
        return len(self.index)

    # --- the whole table at once (a local snapshot) ---------------------------------------

    def layout(self) -> list[tuple[str, str]]:
        """Its columns' names and types, in order."""
        return [(c.name, c.typecode) for c in self.columns.values()]

    def dump(self) -> dict[str, object]:
        """The rows made (not the reserve of defaults after them: `load` makes it again as
        the columns grow)."""
        n = self._size
        return {
            "size": n,
            "free": list(self._free),
            "index": self.index.dump(),
            "columns": {c.name: self.view(c.data)[:n].tobytes() for c in self.columns.values()},
        }

    def load(self, dumped: dict[str, object]) -> None:
        """Replace the contents in place (rules hold the column arrays themselves). A dump
        may hold a reserve of rows after `size` (one written before 2026-12-06): kept."""
        self._size = dumped["size"]  # type: ignore[assignment]
        self._free = list(dumped["free"])  # type: ignore[call-overload]
        self.index.load(dumped["index"])  # type: ignore[arg-type]
        blobs: dict[str, bytes] = dumped["columns"]  # type: ignore[assignment]
        self._views.clear()
        for col in self.columns.values():
            fresh = array(col.typecode)
            fresh.frombytes(blobs[col.name])
            col.data[:] = fresh
            self._capacity = len(fresh)
        self.journal = None

    # --- compact serialisation of one key's state ------------------------------------------

    def _struct(self) -> struct.Struct:
        if self._packer is None:
            codes = "".join(c.typecode for c in self.columns.values())
            self._packer = struct.Struct("<I" + codes)  # the layout id, then the columns
            self._arrays = [c.data for c in self.columns.values()]
        return self._packer

    def describe(self) -> bytes:
        """The columns a row of this layout holds: [[name, typecode], ...] as JSON."""
        return msgspec.json.encode([[c.name, c.typecode] for c in self.columns.values()])

    @property
    def layout_id(self) -> int:
        """A 32-bit id of the columns (names and types, in order), first in every row."""
        if self._layout_id is None:
            self._layout_id = zlib.crc32(self.describe())
        return self._layout_id

    def learn_layout(self, description: bytes) -> None:
        """Know rows of another layout (a `describe()` of it) from now on."""
        columns: list[list[str]] = msgspec.json.decode(description)
        codes = "".join(code for _, code in columns)
        packer = struct.Struct("<I" + codes)
        self._layouts[zlib.crc32(description)] = (packer, [(name, code) for name, code in columns])

    def reset_row(self, key: str, h: int = 0) -> None:
        """Put a key's row back to defaults (as good as absent: every rule reads defaults as
        'nothing seen'). `h`: the key's hash, when known (`key_hash`)."""
        r = self.index.lookup(h or key_hash(key))
        if r is not None:
            for col in self.columns.values():
                col.data[r] = col.default

    # --- transactions: undo what an aborted transaction changed -----------------------------

    def begin(self) -> None:
        self.journal = {}

    def touched(self) -> list[str]:
        return list(self.journal or ())

    def rollback(self) -> None:
        journal, self.journal = self.journal or {}, None
        for key, before in journal.items():
            if before is None:
                self.reset_row(key)
            else:
                self.load_row(key, before)

    def commit(self) -> None:
        self.journal = None

    def dump_row(self, key: str) -> bytes | None:
        r = self.index.get(key)
        return None if r is None else self._dump(r)

    def _dump(self, r: int) -> bytes:
        # each column's value by `map` over the arrays, not a generator over the columns:
        # 1.5 vs 2.2 µs a row of 44 columns (docs/performance.md)
        packer = self._struct()
        return packer.pack(
            self.layout_id, *map(operator.getitem, self._arrays, itertools.repeat(r))
        )

    def dump_rows(self, keys: list[str]) -> list[bytes | None]:
        """`dump_row` of each key, the columns gathered in one pass (numpy)."""
        found = self.index.find_all(key_hashes(keys)).tolist()
        rows = [r for r in found if r >= 0]
        if not rows:
            return [None] * len(keys)
        images = iter(self._images(rows))
        return [None if r < 0 else next(images) for r in found]

    def _images(self, rows: list[int]) -> list[bytes]:
        """Each row packed as `dump_row` packs it: a few rows one by one, more with the
        columns gathered in one numpy pass (about 1 µs per column whatever the rows, so a
        table of 30 to 50 columns is faster row by row below IMAGE_ROWS)."""
        if len(rows) < IMAGE_ROWS:
            return [self._dump(r) for r in rows]
        cols = list(self.columns.values())
        if self._image is None:
            fields = [("\x00layout", "<u4")] + [(c.name, "<" + c.typecode) for c in cols]
            self._image = np.dtype(fields)
        packed = np.empty(len(rows), dtype=self._image)
        packed["\x00layout"] = self.layout_id
        at = np.array(rows, dtype=np.intp)
        view = self.view
        for c in cols:
            packed[c.name] = view(c.data)[at]
        # each record as its bytes: numpy cuts them (a void item's value is its bytes)
        images: list[bytes] = packed.view(np.dtype((np.void, packed.dtype.itemsize))).tolist()
        return images

    def load_row(self, key: str, blob: bytes, h: int = 0) -> None:
        """Set a key's row from `dump_row`'s bytes. `h`: the key's hash, when known."""
        (layout,) = _LAYOUT.unpack_from(blob)
        h = h or key_hash(key)
        r = self.index.lookup(h)
        if layout == self.layout_id:
            values = self._struct().unpack(blob)
            if r is None:
                r = self._new_row()
                self.index.insert(h, r)
            for col, value in zip(self.columns.values(), values[1:], strict=True):
                col.data[r] = value
            return
        other = self._layouts.get(layout)
        if other is None:
            raise LayoutError(
                f"a stored row of table {self.key!r} has a layout ({layout:08x}) that is "
                "described nowhere: the changelog was written by another version of fraudstream"
            )
        packer, names = other
        if r is None:
            r = self._new_row()
            self.index.insert(h, r)
        else:  # columns the old layout lacks start from their defaults
            for col in self.columns.values():
                col.data[r] = col.default
        for (name, code), value in zip(names, packer.unpack(blob)[1:], strict=True):
            kept = self.columns.get(name)
            if kept is not None and kept.typecode == code:  # same name, same type: kept
                kept.data[r] = value

    def nbytes(self) -> int:
        """Bytes the columns hold: the rows made and the reserve after them."""
        return sum(c.data.itemsize * len(c.data) for c in self.columns.values())

    def allocated(self) -> int:
        """Bytes the table holds in memory: columns (with their spare room) and key index."""
        return (
            sum(sys.getsizeof(c.data) for c in self.columns.values())
            + self.index.allocated()
            + sys.getsizeof(self._free)
        )


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


@numba.njit(cache=True, nogil=True)
def _probe(hashes: Any, slots: Any, rows: Any, mask: int, out: Any) -> None:  # pragma: no cover
    for j in range(hashes.shape[0]):
        h = hashes[j]
        i = h & mask
        while True:
            x = slots[i]
            if x == h:
                out[j] = rows[i]
                break
            if x == 0:
                out[j] = -1
                break
            i = (i + 1) & mask


@numba.njit(cache=True, nogil=True)
def _see(rows: Any, ts: Any, seen: Any) -> None:  # pragma: no cover
    for j in range(rows.shape[0]):
        r, t = rows[j], ts[j]
        if t > seen[r]:
            seen[r] = t
