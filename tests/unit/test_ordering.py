"""The keyed-stage buffer: release order and exactly-once across a crash, for any interleaving."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudstream.schema import appendable, decode_transaction
from fraudstream.stream.ordering import (
    DATA,
    HOLD,
    INF,
    MARK,
    Chain,
    Envelope,
    HopTx,
    Lean,
    Meta,
    Orderer,
    decode_block,
    decode_meta,
    encode_block,
    encode_meta,
    extra_bytes,
)

Log = list[Envelope]


@st.composite
def logs(draw: st.DrawFn) -> tuple[int, Log]:
    """Several upstream tasks, each sending records with growing order keys (and marks after
    some of them), interleaved into one partition in an arbitrary order."""
    upstream = draw(st.integers(min_value=1, max_value=4))
    streams: list[Log] = []
    for u in range(upstream):
        t, marks, out = 0, 0, []
        for o in range(draw(st.integers(min_value=0, max_value=25))):
            t += draw(st.sampled_from([0, 0, 1, 5, 40]))
            env = Envelope(DATA, t, u, o, u, o + 1)  # numbered 1, 2, 3 … per upstream
            if draw(st.integers(0, 4)) == 0:  # a bundle: it holds (and counts) more payments
                env.more = [Lean(b"x")] * draw(st.integers(1, 3))
            out.append(env)
            if draw(st.booleans()):
                marks += 1
                out.append(Envelope(MARK, t, u, o, u, marks))
        out.append(Envelope(MARK, INF, u, 0, u, marks + 1))  # the end: idle
        streams.append(out)
    return upstream, _interleaved(draw, streams)


def _interleaved(draw: st.DrawFn, streams: list[Log]) -> Log:
    """The streams merged in an arbitrary order, each kept in its own."""
    log: Log = []
    cursors = [0] * len(streams)
    while any(c < len(s) for c, s in zip(cursors, streams, strict=True)):
        live = [i for i in range(len(streams)) if cursors[i] < len(streams[i])]
        i = draw(st.sampled_from(live))
        log.append(streams[i][cursors[i]])
        cursors[i] += 1
    return log


def _same(a: Meta, b: Meta) -> bool:
    """The same bookkeeping, whatever order its maps list their upstreams in."""
    return msgspec.structs.asdict(a) == msgspec.structs.asdict(b)


def _keys(envs: Log) -> list[tuple[int, int, int]]:
    return [e.order for e in envs]


@settings(max_examples=200, deadline=None)
@given(case=logs(), data=st.data())
def test_release_order_is_the_key_order_whatever_the_interleaving(
    case: tuple[int, Log], data: st.DataObject
) -> None:
    upstream, log = case
    orderer = Orderer(upstream, decode_meta(encode_meta_default()))
    released: Log = []
    for offset, env in enumerate(log):
        orderer.offer(env, offset)
        if data.draw(st.booleans()):
            released += orderer.release()
    released += orderer.release()
    expected = sorted(e.order for e in log if e.kind == DATA)
    assert _keys(released) == expected
    assert len(orderer) == 0


@settings(max_examples=200, deadline=None)
@given(case=logs(), data=st.data())
def test_the_oldest_buffered_offset_is_the_smallest_still_waiting(
    case: tuple[int, Log], data: st.DataObject
) -> None:
    """`oldest` (the offset a keyed task commits) against a plain scan of what waits, with
    several records per input offset as blocks bring them."""
    upstream, log = case
    orderer = Orderer(upstream, decode_meta(encode_meta_default()))
    waiting: dict[tuple[int, int, int], int] = {}  # order key -> input offset
    offset = 0
    for env in log:
        offset += data.draw(st.sampled_from([0, 1, 1, 3]))  # a block: one offset, many records
        orderer.offer(env, offset)
        if env.kind == DATA:
            waiting[env.order] = offset
        if data.draw(st.booleans()):
            for out in orderer.release():
                del waiting[out.order]
        assert orderer.oldest() == (min(waiting.values()) if waiting else None)


@settings(max_examples=200, deadline=None)
@given(case=logs(), data=st.data())
def test_a_crash_after_a_commit_neither_loses_nor_repeats(
    case: tuple[int, Log], data: st.DataObject
) -> None:
    upstream, log = case
    orderer = Orderer(upstream, decode_meta(encode_meta_default()))
    released: Log = []
    committed = (encode_meta_default(), 0, 0)  # (meta, input offset, records released)
    crash_at = data.draw(st.integers(min_value=0, max_value=len(log)))
    for offset, env in enumerate(log[:crash_at]):
        orderer.offer(env, offset)
        if data.draw(st.booleans()):
            released += orderer.release()
        if data.draw(st.booleans()):  # a commit, after a release (as the processor does)
            released += orderer.release()
            oldest = orderer.oldest()
            resume = oldest if oldest is not None else offset + 1
            committed = (encode_meta(orderer.committed_meta(resume)), resume, len(released))
    # crash: what was released after the last commit is gone with its transaction
    meta, resume, kept = committed
    released = released[:kept]
    orderer = Orderer(upstream, decode_meta(meta))
    for offset in range(resume, len(log)):
        orderer.offer(log[offset], offset)
        released += orderer.release()
    assert _keys(released) == sorted(e.order for e in log if e.kind == DATA)


def encode_meta_default() -> bytes:
    return encode_meta(Meta())


def _blocks(log: Log, data: st.DataObject) -> list[Log]:
    """The log as repartition records: runs of one upstream's data cut into blocks (one
    record each, sharing its offset), marks on their own, as the processor writes them."""
    records: list[Log] = []
    for env in log:
        last = records[-1] if records else None
        if (
            last is not None
            and env.kind == DATA
            and last[-1].kind == DATA
            and last[-1].u == env.u
            and data.draw(st.booleans())
        ):
            last.append(env)
        else:
            records.append([env])
    return records


@settings(max_examples=200, deadline=None)
@given(case=logs(), data=st.data())
def test_blocks_across_a_crash_neither_lose_nor_repeat(
    case: tuple[int, Log], data: st.DataObject
) -> None:
    """A block's envelopes share one offset: a commit inside a half-released block resumes
    at that block, and the envelopes released before are skipped when it is read again."""
    upstream, log = case
    records = _blocks(log, data)
    orderer = Orderer(upstream, decode_meta(encode_meta_default()))
    released: Log = []
    committed = (encode_meta_default(), 0, 0)
    crash_at = data.draw(st.integers(min_value=0, max_value=len(records)))
    for offset, block in enumerate(records[:crash_at]):
        for env in block:
            orderer.offer(env, offset)
        if data.draw(st.booleans()):
            released += orderer.release()
            oldest = orderer.oldest()
            resume = oldest if oldest is not None else offset + 1
            committed = (encode_meta(orderer.committed_meta(resume)), resume, len(released))
    meta, resume, kept = committed
    released = released[:kept]
    orderer = Orderer(upstream, decode_meta(meta))
    for offset in range(resume, len(records)):
        for env in records[offset]:
            orderer.offer(env, offset)
        released += orderer.release()
    assert _keys(released) == sorted(e.order for e in log if e.kind == DATA)
    assert [decode_block(encode_block(b)) for b in records] == records


def _two_buffers(
    case: tuple[int, Log], data: st.DataObject
) -> tuple[list[Log], int, Orderer, Orderer]:
    """A case's log, maybe with one upstream's record moved late (its run out of its own
    order), cut into blocks; a record size; two fresh buffers for it (plain, fast)."""
    upstream, log = case
    if data.draw(st.booleans()):
        log = log[:]
        i, j = sorted(
            data.draw(st.lists(st.integers(0, max(len(log) - 1, 0)), min_size=2, max_size=2))
        )
        if i < j and log[i].kind == DATA and log[j].kind == DATA and log[i].u == log[j].u:
            log[i], log[j] = log[j], log[i]
    records = _blocks(log, data)
    size = data.draw(st.integers(min_value=0, max_value=500))
    return records, size, Orderer(upstream, Meta()), Orderer(upstream, Meta())


def _commit_maybe_rewind(
    data: st.DataObject, plain: Orderer, fast: Orderer, offset: int, *, strict: bool
) -> int | None:
    """Maybe commit after the block at `offset` (both buffers committing the same
    bookkeeping: byte for byte if `strict`), then maybe rewind both to that commit: the
    offset to read from again, or None."""
    if not data.draw(st.booleans()):
        return None
    oldest = plain.oldest()
    resume = oldest if oldest is not None else offset + 1
    committed, other = plain.committed_meta(resume), fast.committed_meta(resume)
    if strict:
        assert encode_meta(other) == encode_meta(committed)
    else:
        assert _same(other, committed)
    if not data.draw(st.booleans()):
        return None
    meta = encode_meta(committed)
    plain.reset(decode_meta(meta))
    fast.reset(decode_meta(meta))
    return resume


@settings(max_examples=150, deadline=None)
@given(case=logs(), data=st.data())
def test_offering_a_block_at_once_is_offering_its_envelopes_one_by_one(
    case: tuple[int, Log], data: st.DataObject
) -> None:
    """`offer_block` (the keyed stages' path) against `offer` per envelope (the plain
    statement): the same releases, bookkeeping, buffered bytes and oldest offset at every
    step, across rewinds to a commit (records read again, some released before) and
    upstream runs out of their own order."""
    records, size, plain, fast = _two_buffers(case, data)
    offset = 0
    while offset < len(records):
        block = records[offset]
        for env in block:
            plain.offer(env, offset, size)
        fast.offer_block(block, offset, size)
        assert (len(fast), fast.bytes, fast.oldest()) == (len(plain), plain.bytes, plain.oldest())
        if data.draw(st.booleans()):
            out_plain, out_fast = plain.release(), fast.release()
            assert [(e.u, e.s) for e in out_fast] == [(e.u, e.s) for e in out_plain]
            assert encode_meta(fast.meta) == encode_meta(plain.meta)
            assert fast.holding == plain.holding
            resume = _commit_maybe_rewind(data, plain, fast, offset, strict=True)
            if resume is not None:
                offset = resume
                continue
        offset += 1
    assert [(e.u, e.s) for e in fast.release()] == [(e.u, e.s) for e in plain.release()]
    assert encode_meta(fast.meta) == encode_meta(plain.meta)


@settings(max_examples=200, deadline=None)
@given(case=logs(), data=st.data())
def test_releasing_with_the_bookkeeping_per_upstream_is_releasing_one_by_one(
    case: tuple[int, Log], data: st.DataObject
) -> None:
    """`release` (numbers, offsets and bytes settled per upstream and per offset) against
    `release_each` (one record at a time, the plain statement): the same records, bookkeeping,
    buffered bytes and oldest offset at every step (the bookkeeping's maps may list their
    upstreams in another order), across rewinds to a commit (records read
    again, some released before) and late records (numbers released out of order)."""
    records, size, plain, fast = _two_buffers(case, data)
    offset = 0
    while offset < len(records):
        plain.offer_block(records[offset], offset, size)
        fast.offer_block(records[offset], offset, size)
        if data.draw(st.booleans()):
            out_plain, out_fast = plain.release_each(), fast.release()
            assert [(e.u, e.s) for e in out_fast] == [(e.u, e.s) for e in out_plain]
            assert _same(fast.meta, plain.meta)
            assert (len(fast), fast.bytes, fast.oldest()) == (
                len(plain),
                plain.bytes,
                plain.oldest(),
            )
            resume = _commit_maybe_rewind(data, plain, fast, offset, strict=False)
            if resume is not None:
                offset = resume
                continue
        offset += 1
    assert [(e.u, e.s) for e in fast.release()] == [(e.u, e.s) for e in plain.release_each()]
    assert _same(fast.meta, plain.meta)
    assert (len(fast), fast.bytes, fast.oldest()) == (len(plain), plain.bytes, plain.oldest())


@st.composite
def one_partition_through_a_stage(draw: st.DrawFn) -> tuple[int, int, Log]:
    """One input partition's payments (offsets 0 … n-1, stream times that never go back) as
    its input task sends them on: runs of payments under the floor cut into bundles (the
    head an envelope, the rest in its `more`), each envelope to one of several upstream
    tasks of the output (the payee tasks, by the payee key), which send them on in order,
    with marks that never promise too much (one task's mark: its key of the last thing it
    sent, never above the lowest key still to come from the input); interleaved as they
    might reach the output's partition. Returns (upstream tasks, payments, the log)."""
    upstream = draw(st.integers(min_value=1, max_value=3))
    n = draw(st.integers(min_value=0, max_value=40))
    t, units = 0, []  # (key, payments' offsets)
    o = 0
    while o < n:
        t += draw(st.sampled_from([0, 0, 1, 7]))
        size = 1
        if draw(st.booleans()):  # a run under the floor, as one bundle
            size = draw(st.integers(min_value=1, max_value=min(5, n - o)))
        units.append(((t, 0, o), list(range(o, o + size))))
        o += size
    streams: list[Log] = [[] for _ in range(upstream)]
    seqs, marks = [0] * upstream, [0] * upstream
    for i, ((t, q, o), held) in enumerate(units):
        u = draw(st.integers(0, upstream - 1))
        seqs[u] += 1
        env = Envelope(DATA, t, q, o, u, seqs[u])
        env.more = [Lean(str(p).encode()) for p in held[1:]]
        streams[u].append(env)
        if draw(st.booleans()):  # everyone's mark: below what the input sends next
            nxt = units[i + 1][0] if i + 1 < len(units) else None
            for v in range(upstream):
                if nxt is None or draw(st.booleans()):
                    bound = (nxt[0], nxt[1], nxt[2] - 1) if nxt is not None else (INF, 0, 0)
                    marks[v] += 1
                    streams[v].append(Envelope(MARK, *bound, v, marks[v]))
    for v in range(upstream):
        marks[v] += 1
        streams[v].append(Envelope(MARK, INF, 0, 0, v, marks[v]))
    return upstream, n, _interleaved(draw, streams)


@settings(max_examples=300, deadline=None)
@given(case=one_partition_through_a_stage(), data=st.data())
def test_bundles_through_several_upstreams_come_out_in_input_order(
    case: tuple[int, int, Log], data: st.DataObject
) -> None:
    """The output's buffer releases a bundle in its head's place and the output writes its
    payments right after the head: whatever the upstream each envelope took, the order they
    met in and when the buffer releases, every payment comes out once, in input order; the
    buffer counts payments, bundles' too."""
    upstream, n, log = case
    orderer = Orderer(upstream, Meta())
    out: list[int] = []
    offered = 0
    for offset, env in enumerate(log):
        orderer.offer(env, offset, 10)
        offered += 1 + len(env.more) if env.kind == DATA else 0
        if data.draw(st.booleans()):
            for released in orderer.release():
                out += [released.o, *(int(m.value) for m in released.more)]
        assert len(orderer) == offered - len(out) and orderer.bytes == 10 * len(orderer)
    for released in orderer.release():
        out += [released.o, *(int(m.value) for m in released.more)]
    assert out == list(range(n))
    assert len(orderer) == 0 and orderer.bytes == 0 and orderer.oldest() is None


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=30))
def test_an_upstream_out_of_its_own_order_is_still_released_in_key_order(
    times: list[int],
) -> None:
    """Each upstream normally sends in key order (the buffer keeps a run per upstream); one
    that does not must not change the order out."""
    orderer = Orderer(2, Meta())
    for i, t in enumerate(times):
        orderer.offer(Envelope(DATA, t, i % 2, i, i % 2, i // 2 + 1), offset=i)
    for u in (0, 1):
        orderer.offer(Envelope(MARK, 25, u, 0, u, 1), offset=len(times))
    first = orderer.release()
    for u in (0, 1):
        orderer.offer(Envelope(MARK, INF, u, 0, u, 2), offset=len(times) + 1)
    out = first + orderer.release()
    assert [e.order for e in out] == sorted(e.order for e in out)
    bound = (25, 0, 0)  # the smaller of the two marks
    assert [e for e in out if e.order <= bound] == first
    assert len(out) == len(times) and not len(orderer)


def test_a_transaction_crosses_a_hop_unchanged() -> None:
    """A repartition topic carries a transaction as a plain array (`HopTx`): it arrives with
    the same fields and event time, and still says whether the input had a decision of its
    own (then the output cannot be the input's bytes with one appended)."""
    for raw in (
        b'{"source":"a","target":"b","amount":1.5,"currency":"EUR","lat":1.0,"lon":2.0}',
        b'{"source":"a","target":"b","amount":1.5,"currency":"EUR","decision":null}',
        b'{"source":"a","target":"b","amount":2,"currency":"EUR","timestamp":"2026-03-01T10:00:00+02:00"}',
    ):
        tx = decode_transaction(raw, topic="t", partition=1, offset=7).tx
        (env,) = decode_block(encode_block([Envelope(DATA, 1, 0, 7, 0, 1, HopTx.of(tx))]))
        assert env.tx is not None
        fields = msgspec.structs.asdict(tx)
        del fields["decision"]
        assert {k: getattr(env.tx, k) for k in fields} == fields
        assert env.tx.ts_ms == tx.ts_ms
        assert appendable(raw, env.tx) == appendable(raw, tx) == (b"decision" not in raw)


def test_a_hold_mark_is_a_mark_that_asks_to_hold_back() -> None:
    """HOLD moves the mark like MARK does, and the buffer remembers which upstreams asked to
    hold back until their next mark says otherwise."""
    orderer = Orderer(2, Meta())
    orderer.offer(Envelope(DATA, 5, 0, 1, 0, 1), offset=0)
    orderer.offer(Envelope(HOLD, 7, 0, 2, 0, 1), offset=1)
    orderer.offer(Envelope(MARK, 9, 1, 4, 1, 1), offset=2)
    assert orderer.holding == {0} and orderer.bound() == (7, 0, 2)
    assert [e.order for e in orderer.release()] == [(5, 0, 1)]
    orderer.offer(Envelope(MARK, 8, 0, 3, 0, 2), offset=3)
    assert orderer.holding == set() and orderer.bound() == (8, 0, 3)


def test_records_alike_up_to_their_envelopes_are_still_released() -> None:
    """`release` merges the runs by comparing entries; two that share their order key and
    input offset (which an origin record never does) fall back to sorting by order key."""
    orderer = Orderer(2, Meta())
    for u in (0, 1):
        orderer.offer(Envelope(DATA, 7, 0, 3, u, 1), offset=0)
    for u in (0, 1):
        orderer.offer(Envelope(MARK, INF, u, 0, u, 1), offset=1)
    assert [(e.u, e.s) for e in orderer.release()] == [(0, 1), (1, 1)]


@given(
    st.one_of(st.none(), st.binary(max_size=40)),
    st.one_of(
        st.none(),
        st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=30)))),
    ),
)
def test_a_records_extra_bytes_are_its_key_and_its_headers_utf8_names_and_values(
    key: bytes | None, headers: list[tuple[str, bytes | None]] | None
) -> None:
    """The key's length, and per header its name's UTF-8 size, its value's and 8 (the fast
    path takes an ASCII name's length without encoding it)."""
    plain = len(key or b"") + sum(
        len(name.encode()) + len(value or b"") + 8 for name, value in headers or []
    )
    assert extra_bytes(key, headers) == plain


@st.composite
def one_partition_by_several_paths(draw: st.DrawFn) -> tuple[int, list[Log]]:
    """What one output task reads: its input partition's records, numbered 1, 2, 3 … by the
    input task (`Envelope.c`; some bundles), each sent by one path (straight from the input
    task, or through one of several keyed tasks: each path keeps its own order), the paths'
    blocks interleaved in any order, and marks from the keyed tasks among them. Returns the
    count and the repartition records (blocks)."""
    paths = draw(st.integers(min_value=1, max_value=4))
    n = draw(st.integers(min_value=0, max_value=40))
    streams: list[Log] = [[] for _ in range(paths)]
    marks = [0] * paths
    for c in range(1, n + 1):
        p = draw(st.integers(0, paths - 1))
        env = Envelope(DATA, c // 3, 5, 100 + 2 * c, p, 0, c=c)  # offsets with gaps
        if draw(st.integers(0, 4)) == 0:  # a bundle: it holds (and counts) more payments
            env.more = [Lean(b"x")] * draw(st.integers(1, 3))
        streams[p].append(env)
        if p and draw(st.integers(0, 3)) == 0:  # keyed paths send marks too
            marks[p] += 1
            streams[p].append(Envelope(MARK, c // 3, p, c, p, marks[p]))
    records: list[Log] = []
    cursors = [0] * paths
    while any(k < len(s) for k, s in zip(cursors, streams, strict=True)):
        live = [i for i in range(paths) if cursors[i] < len(streams[i])]
        i = draw(st.sampled_from(live))
        take = draw(st.integers(1, 4))  # a block of up to 4 of one path's records
        block = streams[i][cursors[i] : cursors[i] + take]
        cursors[i] += len(block)
        if any(e.kind == MARK for e in block):  # marks travel alone
            records += [[e] for e in block]
        else:
            records.append(block)
    return n, records


def _numbers(envs: Log) -> list[int]:
    return [e.c for e in envs]


@settings(max_examples=300, deadline=None)
@given(case=one_partition_by_several_paths(), data=st.data())
def test_the_output_writes_one_input_partition_in_its_order_whatever_path_each_took(
    case: tuple[int, list[Log]], data: st.DataObject
) -> None:
    """`Chain` releases every record once, in the input task's numbering, however the paths
    interleave and whatever is read twice; what it still holds is counted (payments, bytes) and its oldest input offset
    is that of the oldest block with a record still held."""
    n, records = case
    chain = Chain(3, Meta())
    released: Log = []
    held: dict[int, int] = {}  # block offset -> records held
    for offset, block in enumerate(records):
        chain.offer_block(block, offset, 10)
        for env in block:
            if env.kind == DATA:
                held[offset] = held.get(offset, 0) + 1
        if data.draw(st.integers(0, 3)) == 0:  # a block read twice: nothing changes
            again = data.draw(st.integers(0, offset))
            chain.offer_block(records[again], again, 10)
        if data.draw(st.booleans()):
            out = chain.release()
            for env in out:
                at = next(o for o, b in enumerate(records) if any(e is env for e in b))
                held[at] -= 1
                if not held[at]:
                    del held[at]
            released += out
        assert chain.oldest() == (min(held) if held else None)
        waiting = [e for b in records[: offset + 1] for e in b if e.kind == DATA]
        waiting = [e for e in waiting if all(e is not r for r in released)]
        assert len(chain) == sum(1 + len(e.more) for e in waiting)
        assert chain.bytes == 10 * len(chain)
    released += chain.release()
    assert _numbers(released) == list(range(1, n + 1))
    assert chain.meta.chain == n and not len(chain) and chain.oldest() is None


@settings(max_examples=300, deadline=None)
@given(case=one_partition_by_several_paths(), data=st.data())
def test_the_output_across_crashes_neither_loses_nor_repeats(
    case: tuple[int, list[Log]], data: st.DataObject
) -> None:
    """Commits after any release, crashes after any block, reading again from the committed
    offset (blocks half released then are read again whole): every record out once, in
    order."""
    n, records = case
    committed = (encode_meta(Meta()), 0, 0)  # (meta, input offset, records released)
    chain = Chain(3, decode_meta(committed[0]))
    released: Log = []
    offset = 0
    crashes = 0
    while offset < len(records):
        chain.offer_block(records[offset], offset)
        offset += 1
        if data.draw(st.booleans()):
            released += chain.release()
        if data.draw(st.booleans()):  # a commit, after a release (as the processor does)
            released += chain.release()
            oldest = chain.oldest()
            resume = oldest if oldest is not None else offset
            committed = (encode_meta(chain.committed_meta(resume)), resume, len(released))
        if crashes < 3 and data.draw(st.integers(0, 5)) == 0:  # crash: back to the commit
            crashes += 1
            meta, offset, kept = committed
            released = released[:kept]
            chain = Chain(3, decode_meta(meta))
    released += chain.release()
    assert _numbers(released) == list(range(1, n + 1))


def test_a_bundle_in_the_chain_counts_its_payments() -> None:
    chain = Chain(1, Meta())
    head = Envelope(DATA, 0, 0, 7, 0, 0, c=2, more=[Lean(b"a"), Lean(b"b")])
    assert chain.held_from() is None
    chain.offer_block([head], 0, 5)
    assert len(chain) == 3 and chain.bytes == 15 and not chain.release()  # waits for 1
    assert chain.next_number() == 1 and chain.held_from() == 7  # 1 is before input offset 7
    chain.offer_block([Envelope(DATA, 0, 0, 3, 1, 0, c=1)], 1, 5)
    assert _numbers(chain.release()) == [1, 2] and not len(chain) and chain.bytes == 0
    chain.offer_block([Envelope(DATA, 0, 0, 3, 1, 0, c=1)], 2, 5)  # read again: skipped
    assert not len(chain) and chain.oldest() is None and chain.next_number() == 3
    assert chain.held_from() is None


@settings(max_examples=300, deadline=None)
@given(case=one_partition_by_several_paths(), data=st.data())
def test_numbers_that_never_come_are_written_without_and_late_ones_after_all(
    case: tuple[int, list[Log]], data: st.DataObject
) -> None:
    """Some records never arrive (a transaction the broker lost after it committed): once
    nothing more comes, `skip_gap` writes on without them, and `Meta.lost` says which; every
    record that did arrive goes out once, in order; one of the lost that comes after all is
    written then, once, and is no longer counted lost."""
    n, records = case
    gone = set(data.draw(st.lists(st.integers(1, max(n, 1)), max_size=6)))
    chain = Chain(3, Meta())
    came: Log = []
    for offset, block in enumerate(records):
        kept = [e for e in block if e.kind != DATA or e.c not in gone]
        came += [e for e in kept if e.kind == DATA]
        chain.offer_block(kept, offset)
        if data.draw(st.booleans()):
            assert not chain.late()
    released = chain.release()
    while chain.gap():
        first, last = chain.skip_gap() or (0, 0)
        assert first <= last and all(c in gone for c in range(first, last + 1))
        released += chain.release()
    assert _numbers(released) == sorted(e.c for e in came)
    missing = sorted(c for c in gone if c < max(_numbers(came), default=0))
    assert [c for a, b in chain.meta.lost for c in range(a, b + 1)] == missing
    assert not chain.gap() and not len(chain)
    if missing:  # one comes after all, twice (read again): written once, out of order
        c = data.draw(st.sampled_from(missing))
        late = Envelope(DATA, 0, 5, 100 + 2 * c, 0, 0, c=c)
        chain.offer_block([late], len(records))
        chain.offer_block([late], len(records) + 1)
        assert chain.late() == [c]
        assert _numbers(chain.release()) == [c] and not len(chain) and chain.oldest() is None
        assert [x for a, b in chain.meta.lost for x in range(a, b + 1)] == [
            x for x in missing if x != c
        ]
        chain.offer_block([late], len(records) + 2)  # and once out, skipped as any other
        assert not len(chain) and not chain.release()
