"""Deterministic order for state keyed by something other than the input key.

A stage keyed by, say, the payee reads a repartition topic that every input partition writes
to; the order in which their records meet there depends on timing. To decide the same way
with one process or ten, a keyed stage buffers what it reads and releases it in *order-key*
order, `(time, origin partition, origin offset)`, only once every upstream task has promised
(with a mark) that nothing smaller will follow. `time` is the origin partition's stream time
(the largest event time seen so far), so within a partition the keys grow with the offset.

Exactly once across restarts: an upstream task numbers its data messages per downstream
partition (1, 2, 3 …); a stage remembers which numbers it has released (`done`, plus any
released out of order in `ahead`) and skips them when it reads them again after a rewind.
Its committed input offset is the smallest offset still buffered, so nothing unreleased is
ever skipped by the consumer.

This module is pure (no Kafka): the processor feeds it records and commits what it says.
"""

from __future__ import annotations

import heapq
import operator
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import msgspec

from fraudstream.schema import LabelRecord, Transaction

__all__ = [
    "BLOCK_BYTES",
    "DATA",
    "HOLD",
    "INF",
    "LABEL",
    "MARK",
    "Chain",
    "Envelope",
    "HopTx",
    "Key",
    "Lean",
    "Meta",
    "Orderer",
    "decode_block",
    "encode_block",
    "extra_bytes",
    "payments",
]

DATA, LABEL, MARK = 0, 1, 2
# A mark from an input or labels task of a process whose stages hold too much: "hold back
# what runs ahead" (every process whose keyed stage hears it pauses its inputs ahead of the
# slowest; see TaskManager.backpressure). Otherwise a mark like any other.
HOLD = 3
INF = 1 << 62  # the time of an idle upstream's mark: it holds nothing back
Key = tuple[int, int, int]  # (order time, origin partition, origin offset)


class HopTx(Transaction, array_like=True, gc=False, frozen=True, omit_defaults=True):
    """A transaction on a repartition topic: validated when it was read, so decoded as plain
    types (no patterns or bounds to check again) from an array (no field names on the wire).
    It is a `Transaction` to the engine. Made with `HopTx.of`."""

    source: str
    target: str
    amount: float
    currency: str
    id: str | None = None
    timestamp: int | datetime | None = None
    channel: str | None = None
    country: str | None = None
    lat: float | None = None
    lon: float | None = None
    merchant: str | None = None
    device: str | None = None
    decision: Any = None  # the input's own `decision` member in a list of one; None: absent

    @classmethod
    def of(cls, tx: Transaction) -> HopTx:
        fields: list[Any] = list(msgspec.structs.astuple(tx))
        carried = fields[-1]  # nearly always absent (UNSET, which an array cannot hold)
        fields[-1] = None if carried is msgspec.UNSET else [carried]
        return cls(*fields)

    def carries_decision(self) -> bool:
        return self.decision is not None


class Lean(msgspec.Struct, array_like=True, gc=False, omit_defaults=True):
    """A payment that crosses the stages in a bundle (`Envelope.more`): what the output
    writes it from. It reads like an envelope to the output (`tx`, `parts`: none)."""

    value: bytes
    added: bytes = b""
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    hits: list[tuple[str, float, str, bool, bool]] = []
    note: str = ""
    tx: ClassVar[None] = None  # (class attributes, not on the wire)
    parts: ClassVar[dict[str, bytes]] = {}


class Envelope(msgspec.Struct, array_like=True, omit_defaults=True):
    """One record on a repartition topic: a transaction on its way through the stages, a
    label verdict, or an upstream task's mark (its promise: nothing at or below `t, q, o`
    will follow)."""

    kind: int
    t: int
    q: int
    o: int
    u: int  # the upstream task (its partition) that sent it
    s: int  # DATA/LABEL: its number from `u` to this partition; MARK/HOLD: u's mark number
    tx: HopTx | None = None
    value: bytes = b""  # the input record as received (the output keeps it unchanged)
    added: bytes = b""  # JSON members derived for it (id, timestamp)
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    parts: dict[str, bytes] = {}  # feature rows by stage key, float64 bytes (`score_packed`)
    hits: list[tuple[str, float, str, bool, bool]] = []  # rule, weight, reason, allow, block
    label: LabelRecord | None = None
    note: str = ""  # why it is decided at its partition's stream time (event_time_skew)
    # A bundle: the payments right after this one in its input partition (no other of its
    # records between them), all under the last keyed stage's floor and so, like this one,
    # without their transaction. It travels as one envelope, in its head's place in the
    # order; the output writes them after it (see `Orderer`).
    more: list[Lean] = []
    # DATA from an input task: its number among the records (bundles count once) that task
    # sent toward the output stage, by whichever path (1, 2, …); the output's order (`Chain`)
    c: int = 0

    @property
    def order(self) -> Key:
        return (self.t, self.q, self.o)


class Meta(msgspec.Struct, omit_defaults=True):
    """A task's bookkeeping, committed in its changelog with its state."""

    stream_time: int = 0  # input tasks: the largest event time seen
    last_offset: int = -1  # the last offset of its input read (keyed stages: of its topic)
    source: str = ""  # input and labels tasks: the id of the topic `last_offset` is in
    seq: dict[int, int] = {}  # data messages sent, per downstream partition
    mark_seq: int = 0  # marks sent
    sent: Key | None = None  # the last mark sent
    done: dict[int, int] = {}  # per upstream: every data number up to this one released
    ahead: dict[int, list[int]] = {}  # per upstream: numbers released beyond `done`
    marks: dict[int, Key] = {}  # per upstream: its latest mark
    mark_seen: dict[int, int] = {}  # per upstream: the number of that mark
    # input tasks: the number (`Envelope.c`) of the last record sent toward the output;
    # output tasks: that of the last record released (`Chain`)
    chain: int = 0
    # output tasks: numbers it wrote on without (`Chain.skip_gap`), as (first, last) ranges;
    # one that comes after all is still written
    lost: list[tuple[int, int]] = []


# A repartition record is a block: the envelopes one task sends one downstream partition in
# one step (up to BLOCK_BYTES), so a hop costs one Kafka record per batch and partition, not
# one per transaction. Marks travel as blocks of one.
encode_block = msgspec.msgpack.Encoder().encode
decode_block = msgspec.msgpack.Decoder(list[Envelope]).decode
BLOCK_BYTES = 256 * 1024  # well under the broker's default record size limit (1 MiB)
encode_meta = msgspec.msgpack.Encoder().encode
decode_meta = msgspec.msgpack.Decoder(Meta).decode


# (t, q, o, input offset, envelope, size, payments): a bundle (`Envelope.more`) is one entry,
# of its payments' size, and counts them all
Entry = tuple[int, int, int, int, Envelope, int, int]


_order = operator.itemgetter(0, 1, 2)  # an entry's order key, (t, q, o)


def _merge(cut: list[Entry]) -> None:
    """Sort sorted runs of entries by order key (a merge), comparing the entries themselves:
    no key tuple made per entry. Two buffered entries never share (t, q, o) (an origin
    record is buffered once), so the order is the order key's. Were two to share it (a bug
    elsewhere), they would come out by input offset, and if that is shared too, the
    comparison would reach the envelopes, which do not compare: the entries are then sorted
    by order key alone (stable, from wherever the failed sort left them); never an error."""
    try:
        cut.sort()
    except TypeError:  # two entries alike up to the envelope: Envelopes do not compare
        cut.sort(key=_order)


_offset = operator.itemgetter(3)
_size = operator.itemgetter(5)
_payments = operator.itemgetter(6)
_more = operator.attrgetter("more")


def payments(block: list[Envelope]) -> int:
    """The payments a block carries (a bundle's all)."""
    return len(block) + sum(map(len, map(_more, block)))


def extra_bytes(key: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None) -> int:
    """What a record's key and headers add to its size on a repartition topic (both are
    nearly always small or absent, but may be as large as the input's producer made them)."""
    n = len(key) if key else 0
    if headers:  # (a loop, not sum() over a generator: half the time, per record per hop)
        for name, value in headers:
            # a name is nearly always ASCII: then its length is its size, nothing encoded
            n += len(name) if name.isascii() else len(name.encode())
            n += (len(value) if value else 0) + 8
    return n


_envelope = operator.itemgetter(4)


class Orderer:
    """The buffer of one keyed-stage task: `offer` what is read, `release` what may go.

    What one upstream task sends comes in its order-key order (it sends in the order it
    decides), so the buffer is a run per upstream: `release` cuts each run at the bound and
    merges the cuts (one sort of a few sorted runs). A run that arrives out of order (it
    should not) is sorted before it is cut: the order out never depends on it.

    A bundle (`Envelope.more`) is one entry, released in its head's place: its payments
    follow the head in the head's input partition with no other record of that partition
    between them, so the output (whose tasks each get one input partition) writes them right
    after the head and keeps the input order; no keyed stage reads them. `size` is the size
    of one payment on the wire; `len` counts payments, a bundle's all."""

    def __init__(self, upstream: int, meta: Meta) -> None:
        self.upstream = upstream
        self.meta = meta
        self._runs: dict[int, list[Entry]] = {}  # per upstream task, in order-key order
        self._unsorted: set[int] = set()  # upstreams whose run must be sorted before a cut
        self._count = 0
        self.holding: set[int] = set()  # upstreams whose latest mark asked to hold back (HOLD)
        self.bytes = 0  # the buffered records' size on the wire, for back-pressure
        # input offsets with records still buffered, and how many: `oldest` without a scan
        self._at: dict[int, int] = {}
        self._offsets: list[int] = []  # a heap of the keys of _at (and of some gone since)
        # The marks as they stood at the last commit's resume offset, and those read since:
        # a restart re-reads from that offset, so it must not know the later marks yet (it
        # would release re-read records as they come instead of in key order).
        self._base: tuple[dict[int, Key], dict[int, int]] = (dict(meta.marks), dict(meta.mark_seen))
        self._log: list[tuple[int, int, Key, int]] = []

    def __len__(self) -> int:
        return self._count

    def reset(self, meta: Meta) -> None:
        """Forget the buffer (the input is rewound to the committed offset)."""
        self.meta = meta
        self._runs.clear()
        self._unsorted.clear()
        self._count = 0
        self.holding.clear()
        self.bytes = 0
        self._at.clear()
        self._offsets.clear()
        self._base = (dict(meta.marks), dict(meta.mark_seen))
        self._log.clear()

    def offer(self, env: Envelope, offset: int, size: int = 0) -> None:
        m, u = self.meta, env.u
        if env.kind >= MARK:
            if env.s > m.mark_seen.get(u, 0):
                m.marks[u] = (env.t, env.q, env.o)
                m.mark_seen[u] = env.s
                self._log.append((offset, u, m.marks[u], env.s))
                if env.kind == HOLD:
                    self.holding.add(u)
                else:
                    self.holding.discard(u)
            return
        if env.s <= m.done.get(u, 0) or env.s in m.ahead.get(u, ()):
            return  # released before a rewind: already in the committed state and outputs
        k = 1 + len(env.more)  # payments in it
        entry = (env.t, env.q, env.o, offset, env, size * k, k)
        run = self._runs.get(u)
        if run is None:
            run = self._runs[u] = []
        elif run and entry[:3] < run[-1][:3]:
            self._unsorted.add(u)
        run.append(entry)
        self._hold(offset, 1, k, size)

    def _hold(self, offset: int, entries: int, payments: int, size: int) -> None:
        """`entries` more buffered from the record at input `offset`, carrying `payments`
        payments of `size` bytes each."""
        self._count += payments
        self.bytes += size * payments
        at = self._at
        n = at.get(offset)
        if n is None:
            at[offset] = entries
            heapq.heappush(self._offsets, offset)
        else:
            at[offset] = n + entries

    def _let_go(self, entry: Entry) -> None:
        """One buffered entry released."""
        self._count -= entry[6]
        self.bytes -= entry[5]
        at, offset = self._at, entry[3]
        n = at[offset] - 1
        if n:
            at[offset] = n
        else:
            del at[offset]

    def offer_block(self, block: list[Envelope], offset: int, size: int = 0) -> None:
        """`offer` of each envelope of one repartition record, in order (they share its
        offset): the same buffer, bookkeeping and skips, with the per-record work of a block
        of data done in one loop (a property test holds it to `offer`)."""
        m, runs, unsorted = self.meta, self._runs, self._unsorted
        done, ahead = m.done, m.ahead
        added = held = 0  # entries, payments
        for env in block:
            u = env.u
            if env.kind >= MARK:
                self.offer(env, offset, size)  # marks travel alone: nothing to gain
                continue
            s = env.s
            if s <= done.get(u, 0) or (ahead and s in ahead.get(u, ())):
                continue  # released before a rewind (see `offer`)
            t = env.t
            more = env.more
            k = 1 + len(more) if more else 1
            held += k
            entry = (t, env.q, env.o, offset, env, size * k, k)
            run = runs.get(u)
            if run is None:
                run = runs[u] = []
            elif run:
                last = run[-1]
                # (t, q, o) below the run's last? t alone nearly always tells
                if t < last[0] or (t == last[0] and entry[1:3] < last[1:3]):
                    unsorted.add(u)
            run.append(entry)
            added += 1
        if added:
            self._hold(offset, added, held, size)

    def bound(self) -> Key | None:
        """Nothing at or below this key can still arrive (None: an upstream is unheard)."""
        marks = self.meta.marks
        if len(marks) < self.upstream:
            return None
        return min(marks.values())

    def _cut(self) -> list[tuple[int, list[Entry]]]:
        """Each upstream's buffered records at or below the bound, taken out of its run (in
        its order-key order)."""
        bound = self.bound()
        if bound is None or not self._count:
            return []
        pieces: list[tuple[int, list[Entry]]] = []
        for u, run in self._runs.items():
            if not run:
                continue
            if u in self._unsorted:
                run.sort(key=_order)
                self._unsorted.discard(u)
            if run[-1][:3] <= bound:  # all of it
                pieces.append((u, run[:]))
                run.clear()
            else:
                i = bisect_right(run, bound, key=_order)
                if not i:
                    continue
                pieces.append((u, run[:i]))
                del run[:i]
        return pieces

    def release(self) -> list[Envelope]:
        """Every buffered record at or below the bound, in order-key order. The bookkeeping
        per upstream and per input offset, not per record (`release_each` is the plain
        statement; a property test holds the two equal)."""
        pieces = self._cut()
        if not pieces:
            return []
        if len(pieces) == 1:
            cut = pieces[0][1]
        else:
            cut = [entry for _, piece in pieces for entry in piece]
            _merge(cut)
        self._count -= sum(map(_payments, cut))
        self.bytes -= sum(map(_size, cut))
        at = self._at
        for offset, n in Counter(map(_offset, cut)).items():
            left = at[offset] - n
            if left:
                at[offset] = left
            else:
                del at[offset]
        m = self.meta
        for u, piece in pieces:
            numbers = [entry[4].s for entry in piece]
            done, k = m.done.get(u, 0), len(numbers)
            if u not in m.ahead and numbers == list(range(done + 1, done + k + 1)):
                m.done[u] = done + k  # the next numbers, in order: as `_done` one by one
            else:
                for s in numbers:
                    self._done(u, s)
        return list(map(_envelope, cut))

    def release_each(self) -> list[Envelope]:
        """`release`, stated plainly: the bookkeeping one record at a time."""
        pieces = self._cut()
        cut: list[Entry] = [entry for _, piece in pieces for entry in piece]
        if len(pieces) > 1:
            cut.sort(key=_order)  # a merge of sorted runs
        out: list[Envelope] = []
        for entry in cut:
            env = entry[4]
            self._let_go(entry)
            self._done(env.u, env.s)
            out.append(env)
        return out

    def _done(self, u: int, s: int) -> None:
        m = self.meta
        done = m.done.get(u, 0)
        if s == done + 1:
            done = s
            ahead = m.ahead.get(u)
            if ahead:
                while done + 1 in ahead:
                    done += 1
                    ahead.remove(done)
                if not ahead:
                    del m.ahead[u]
            m.done[u] = done
        else:  # released out of number order (an upstream's late record)
            m.ahead.setdefault(u, []).append(s)

    def committed_meta(self, resume: int) -> Meta:
        """The bookkeeping to commit with input offset `resume`: the marks read before it,
        everything else as it is now."""
        marks, seen = self._base
        keep = []
        for entry in self._log:
            offset, u, key, seq = entry
            if offset < resume:
                marks[u], seen[u] = key, seq
            else:
                keep.append(entry)
        self._log = keep
        return msgspec.structs.replace(self.meta, marks=dict(marks), mark_seen=dict(seen))

    def oldest(self) -> int | None:
        """The input offset of the oldest record still buffered (the offset to commit)."""
        offsets, at = self._offsets, self._at
        while offsets and offsets[0] not in at:  # released since
            heapq.heappop(offsets)
        return offsets[0] if offsets else None


class Chain(Orderer):
    """The output stage's buffer. That stage is partitioned like the input, so what one task
    reads all comes from one input partition, and its input task numbers every record it
    sends toward the output (`Envelope.c`: through the keyed stages, or straight to the
    output when no keyed stage needs it), so a record goes out once the one numbered before
    it has (`Meta.chain`). Input order comes back whatever path each record took and however
    the paths' blocks interleave; no mark is needed for it. Marks are still read, for
    back-pressure (HOLD) and `fraudstream status`.

    Exactly once across restarts: a record numbered at or below the last released is
    skipped (read again after a rewind), and so is one read twice; the committed offset is
    the oldest still buffered, as in `Orderer`.

    A number that never comes (its transaction's records lost by the broker: KAFKA-20734 in
    docs/delivery.md) would hold the partition for good: `skip_gap` writes on without it,
    which the runtime does once the gap has lasted OUTPUT_GAP_TIMEOUT_MS and the upstream
    marks say idle (`idle_upstream`: they may say so from an earlier quiet spell, hence the
    long wait). Should such a record come after all, it is written then, out of order, once
    (`late`)."""

    def __init__(self, upstream: int, meta: Meta) -> None:
        super().__init__(upstream, meta)
        self._waiting: dict[int, Entry] = {}  # by number
        self._late: dict[int, Entry] = {}  # numbers it wrote on without, come after all

    def reset(self, meta: Meta) -> None:
        super().reset(meta)
        self._waiting.clear()
        self._late.clear()

    def offer(self, env: Envelope, offset: int, size: int = 0) -> None:
        self.offer_block([env], offset, size)

    def offer_block(self, block: list[Envelope], offset: int, size: int = 0) -> None:
        waiting, last = self._waiting, self.meta.chain
        added = held = 0
        for env in block:
            if env.kind >= MARK:
                super().offer(env, offset, size)
                continue
            c = env.c
            into = waiting
            if c <= last:
                if not self.meta.lost or c in self._late or not self._was_lost(c):
                    continue  # released before a rewind, or read twice
                into = self._late
            elif c in waiting:
                continue  # read twice
            more = env.more
            k = 1 + len(more) if more else 1
            into[c] = (env.t, env.q, env.o, offset, env, size * k, k)
            held += k
            added += 1
        if added:
            self._hold(offset, added, held, size)

    def release(self) -> list[Envelope]:
        """Every buffered record whose predecessors have all gone out, in input order (and
        first any that came after its number was written on without: `late`)."""
        waiting = self._waiting
        out = self._release_late() if self._late else []
        c = self.meta.chain + 1
        entry = waiting.pop(c, None)
        if entry is None:
            return out
        while entry is not None:
            out.append(entry[4])
            self._let_go(entry)
            c += 1
            entry = waiting.pop(c, None)
        self.meta.chain = c - 1
        return out

    def next_number(self) -> int:
        """The number of the record it waits for next."""
        return self.meta.chain + 1

    def held_from(self) -> int | None:
        """The input offset of the lowest-numbered record it holds (the one it waits for
        comes before it in the input), or None when it holds none."""
        if not self._waiting:
            return None
        return self._waiting[min(self._waiting)][4].o

    def gap(self) -> bool:
        """Whether it holds records but not the next one (it holds none at or below the
        last released: those it had written on without wait apart, in `_late`)."""
        return bool(self._waiting) and self.meta.chain + 1 not in self._waiting

    def idle_upstream(self) -> bool:
        """Whether every upstream task has said it is idle (marks at INF)."""
        bound = self.bound()
        return bound is not None and bound[0] >= INF

    def skip_gap(self) -> tuple[int, int] | None:
        """Write on without the numbers missing before the lowest it holds: they are noted in
        `Meta.lost` (committed), and `release` then goes on. Returns the range skipped."""
        if not self.gap():
            return None
        first, last = self.meta.chain + 1, min(self._waiting) - 1
        self.meta.lost = [*self.meta.lost, (first, last)]
        self.meta.chain = last
        return first, last

    def late(self) -> list[int]:
        """Numbers it holds that it had written on without (released next, out of order)."""
        return sorted(self._late)

    def _was_lost(self, c: int) -> bool:
        return any(first <= c <= last for first, last in self.meta.lost)

    def _release_late(self) -> list[Envelope]:
        out = []
        for c in self.late():
            entry = self._late.pop(c)
            out.append(entry[4])
            self._let_go(entry)
            kept: list[tuple[int, int]] = []
            for first, last in self.meta.lost:  # c is no longer missing
                if first <= c <= last:
                    kept += [r for r in ((first, c - 1), (c + 1, last)) if r[0] <= r[1]]
                else:
                    kept.append((first, last))
            self.meta.lost = kept
        return out
